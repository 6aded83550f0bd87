"""The ``token_classify`` task: one tag per word (named-entity tagging) with a token-classification
head (``AutoModelForTokenClassification``), from records ``{"tokens": [word, ...], "tags": [tag,
...]}`` of the ``tagged`` modality.

Tags: a tag is the index of its name in the task's ``labels`` list; an integer tag that is not a
name is taken as an index into ``labels`` (``0`` is ``labels[0]``). Any other tag is StageError
FTP510 naming the tag, its rows and file lines, and the known labels (:meth:`TokenClassify.check_data`).

Alignment (:func:`encode_words`): the words are tokenized as pre-split words
(``is_split_into_words=True``, a fast tokenizer's ``word_ids()``); the FIRST sub-token of each
word carries the word's tag, its other sub-tokens and the tokenizer's special tokens
(``[CLS]``/``[SEP]``) carry ``IGNORE``. A word the tokenizer turns into no token at all (a lone
zero-width or control character) is given the unknown token, so every word has a position,
a label and a prediction.

Long rows: no word is ever dropped. A row whose sub-tokens (plus the special tokens) do not fit
in ``max_length`` is split into several examples at word boundaries, each wrapped in the special
tokens; a cut is moved back, where it can be, so it does not fall inside a gold entity (before an
``I-`` tag). Only the second and later sub-tokens of a single word longer than a whole window are
cut (they carry no label). Teacher-forced metrics treat each piece as a sequence; ``predict_tags``
puts the pieces of a row back together (one tag per word of the row).

Metrics: ``loss`` (mean cross-entropy over labelled words), ``token_accuracy`` (over words),
``entity_precision`` / ``entity_recall`` / ``entity_f1`` (``seqeval``'s default mode, micro
averaged, through ``ftdsl.stages.seq_metrics.entity_scores``, on the word-level tags). Labels
without a ``B-``/``I-`` prefix (the IO scheme, ``PER``/``LOC``/``O``) count a run of one tag as
one entity (:func:`chunk_tags`); seqeval itself would read ``PER`` as chunk tag ``P`` of type ``ER``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from ftdsl.errors import StageError
from ftdsl.stages.tasks import IGNORE
from ftdsl.stages.tasks.common import TokenCrossEntropy, collate, special_ids

__all__ = ["TASK", "TokenClassify", "tag_index", "encode_words", "encode_records", "Piece", "predict_tags", "label_names",
           "entity_metrics", "chunk_tags", "check_tags"]

BAD_DATA = "FTP510"
_SHOWN = 5  # rows named per unknown tag


def label_names(task: dict) -> list[str]:
    return [str(x) for x in task.get("labels") or []]


def tag_index(labels: Sequence[str]) -> dict[str, int]:
    """tag as written -> label index: the names, then integer indices that are not names."""
    index = {str(n): i for i, n in enumerate(labels)}
    for i in range(len(labels)):
        index.setdefault(str(i), i)
    return index


@dataclass
class Piece:
    """One example made from (part of) a row: its ids, labels, and where its words sit."""

    row: int  # position of the row in the split / record list
    input_ids: list[int]
    labels: list[int]
    words: list[int] = field(default_factory=list)  # the row's word numbers in this piece
    positions: list[int] = field(default_factory=list)  # the token position of each one's first sub-token


def _specials(tokenizer: Any) -> tuple[list[int], list[int]]:
    """(prefix, suffix) special-token ids the tokenizer puts around a row of words."""
    cached = getattr(tokenizer, "_ftdsl_word_specials", None)
    if cached is not None:
        return cached
    enc = tokenizer([["a"]], is_split_into_words=True, add_special_tokens=True)
    ids, wids = list(enc["input_ids"][0]), enc.word_ids(0)
    first = next(i for i, w in enumerate(wids) if w is not None)
    last = max(i for i, w in enumerate(wids) if w is not None)
    out = ([int(x) for x in ids[:first]], [int(x) for x in ids[last + 1:]])
    try:
        tokenizer._ftdsl_word_specials = out
    except Exception:  # noqa: BLE001 - a tokenizer that refuses attributes: recompute next time
        pass
    return out


def _check_fast(tokenizer: Any) -> None:
    if not getattr(tokenizer, "is_fast", False):
        raise StageError("FTP530", f"token_classify needs a fast tokenizer (word alignment), but the model's is "
                         f"{type(tokenizer).__name__}", hint="use a model folder with a tokenizer.json")


def _word_pieces(tokenizer: Any, rows: list[list[str]]) -> list[list[list[int]]]:
    """The sub-token ids of every word of every row (no special tokens)."""
    if not rows:
        return []
    enc = tokenizer([list(map(str, r)) for r in rows], is_split_into_words=True, add_special_tokens=False,
                    verbose=False)
    unk = tokenizer.unk_token_id
    unk = int(unk) if isinstance(unk, int) else special_ids(tokenizer)["pad"]
    out = []
    for r, words in enumerate(rows):
        per: list[list[int]] = [[] for _ in words]
        for tid, w in zip(enc["input_ids"][r], enc.word_ids(r)):
            if w is not None:
                per[w].append(int(tid))
        out.append([p if p else [unk] for p in per])
    return out


def _limit(tokenizer: Any, max_length: int | None) -> int | None:
    if max_length:
        return int(max_length)
    m = getattr(tokenizer, "model_max_length", None)
    return int(m) if isinstance(m, int) and 0 < m < 1_000_000 else None


def encode_words(tokenizer: Any, row: int, pieces: list[list[int]], tag_ids: list[int] | None,
                 max_length: int | None, *, entity_starts: list[bool] | None = None) -> list[Piece]:
    """The examples of one row: ``pieces`` are its words' sub-token ids, ``tag_ids`` their label
    indices (None: unlabeled, for prediction); ``entity_starts[j]``: a cut may fall before word
    ``j`` (False inside a gold entity). See the module docstring."""
    prefix, suffix = _specials(tokenizer)
    limit = _limit(tokenizer, max_length)
    budget = None if limit is None else max(1, limit - len(prefix) - len(suffix))
    words = [p if budget is None else p[:budget] for p in pieces]
    n = len(words)
    # windows [start, end) of words, greedily filled, cuts moved back out of entities
    windows: list[tuple[int, int]] = []
    start = 0
    while start < n:
        end, used = start, 0
        while end < n and (budget is None or used + len(words[end]) <= budget):
            used += len(words[end])
            end += 1
        if end < n and entity_starts is not None:
            back = end
            while back > start + 1 and not entity_starts[back]:
                back -= 1
            if entity_starts[back]:
                end = back
        windows.append((start, end))
        start = end
    out = []
    for s, e in windows or [(0, 0)]:
        ids, labels = list(prefix), [IGNORE] * len(prefix)
        piece = Piece(row, ids, labels)
        for j in range(s, e):
            piece.words.append(j)
            piece.positions.append(len(ids))
            ids.extend(words[j])
            labels.append(IGNORE if tag_ids is None else int(tag_ids[j]))
            labels.extend([IGNORE] * (len(words[j]) - 1))
        ids.extend(suffix)
        labels.extend([IGNORE] * len(suffix))
        out.append(piece)
    return out


def encode_records(tokenizer: Any, records: list[dict], labels: Sequence[str] | None,
                   max_length: int | None) -> list[Piece]:
    """Every row's pieces, in order (``labels`` None or a record without tags: unlabeled)."""
    _check_fast(tokenizer)
    index = tag_index(labels) if labels is not None else None
    pieces = _word_pieces(tokenizer, [list(r["tokens"]) for r in records])
    out: list[Piece] = []
    for r, (rec, words) in enumerate(zip(records, pieces)):
        tags = rec.get("tags") if index is not None else None
        tag_ids = None if tags is None else [index[str(t)] for t in tags]
        starts = None if tags is None else [not str(t).startswith("I-") for t in tags]
        out.extend(encode_words(tokenizer, r, words, tag_ids, max_length, entity_starts=starts))
    return out


class TokenClassify:
    name = "token_classify"
    auto_class = "AutoModelForTokenClassification"
    input_names = ("input_ids", "attention_mask")
    generative = False

    def check_data(self, data: Any, task: dict) -> None:
        labels = label_names(task)
        dup = sorted({n for n in labels if labels.count(n) > 1})
        if dup:
            raise StageError(BAD_DATA, f"token_classify(labels = [...]) names {', '.join(map(repr, dup))} twice",
                             hint="list each tag once")
        if getattr(data, "modality", None) != "tagged":
            raise StageError(
                BAD_DATA,
                f"task token_classify(...) learns from tagged words, but data `{data.source}` is {data.modality} data",
                hint='name both columns in the data block: `tokens = "tokens", tags = "tags"` (jsonl lists)',
            )
        check_tags(data.splits, getattr(data, "source", None), labels)

    def encode(self, data: Any, split: Any, tokenizer: Any, task: dict, max_length: int | None) -> list[dict[str, list[int]]]:
        labels = label_names(task)
        if split.records and any("tags" in r for r in split.records):  # also data check_data has not seen
            check_tags({"": split}, getattr(data, "source", None) or split.source, labels)
        pieces = encode_records(tokenizer, split.records or [], labels, max_length)
        return [{"input_ids": p.input_ids, "labels": p.labels} for p in pieces]

    def length_note(self, split: Any, examples: list, task: dict, max_length: int | None) -> str | None:
        """What ``max_length`` did to a split (the trainer logs it): rows split into pieces."""
        rows, pieces = len(split.records or []), len(examples)
        if pieces <= rows:
            return None
        return (f"{rows} rows became {pieces} examples: rows longer than max_length = {max_length} tokens are split "
                "at word boundaries (no word is dropped)")

    def collate(self, examples: list[dict[str, list[int]]], pad_id: int) -> dict[str, Any]:
        return collate(examples, pad_id)

    def criterion(self) -> Any:
        return TokenCrossEntropy()

    def batch_stats(self, logits: Any, y: Any) -> Any:
        """``{"nll", "n", "true": [[label, ...] per example], "pred": [...]}`` over labelled words."""
        import torch

        with torch.no_grad():
            flat = logits.reshape(-1, logits.shape[-1]).float()
            target = y.reshape(-1).to(flat.device)
            keep = target != IGNORE
            nll = float(torch.nn.functional.cross_entropy(flat[keep], target[keep], reduction="sum")) \
                if bool(keep.any()) else 0.0
            pred = logits.argmax(-1).to(y.device)
            mask = y != IGNORE
            true_rows = [y[b][mask[b]].tolist() for b in range(y.shape[0])]
            pred_rows = [pred[b][mask[b]].tolist() for b in range(y.shape[0])]
        return {"nll": nll, "n": int(mask.sum()), "true": true_rows, "pred": pred_rows}

    def metrics(self, parts: Any, task: dict) -> dict[str, float]:
        names = label_names(task)
        nll = sum(float(p["nll"]) for p in parts)
        n = sum(int(p["n"]) for p in parts)
        true = [r for p in parts for r in p["true"]]
        pred = [r for p in parts for r in p["pred"]]
        if n == 0:
            nan = float("nan")
            return {"loss": nan, "token_accuracy": nan, "entity_precision": nan, "entity_recall": nan, "entity_f1": nan}
        correct = sum(int(a == b) for t, q in zip(true, pred) for a, b in zip(t, q))
        out = {"loss": nll / n, "token_accuracy": correct / n}
        out.update(entity_metrics(true, pred, names))
        return out


def check_tags(splits: dict, source: str | None, labels: list[str]) -> None:
    """FTP510 for a row whose words and tags differ in number, or for tags not in ``labels``
    (each named with its rows and lines, the known labels listed)."""
    index = tag_index(labels)
    unknown: dict[str, list[str]] = {}
    counts: dict[str, int] = {}
    for name, split in splits.items():
        if split.records is None:
            raise StageError(BAD_DATA, f"the {name} split of `{source}` carries no tagged words",
                             hint="run the data stage again (its cache entry predates tagged data)")
        other = split.source if split.source and split.source != source else None
        for i, rec in enumerate(split.records):
            tokens, tags = rec.get("tokens") or [], rec.get("tags") or []
            where = (f"`{other}` " if other else "") + split.where(i)
            if len(tokens) != len(tags):
                raise StageError(BAD_DATA, f"`{other or source}` {split.where(i)}: {len(tokens)} words but "
                                 f"{len(tags)} tags", hint="every word needs exactly one tag")
            for t in tags:
                t = str(t)
                if t not in index:
                    counts[t] = counts.get(t, 0) + 1
                    places = unknown.setdefault(t, [])
                    if len(places) < _SHOWN and (not places or places[-1] != where):
                        places.append(where)
    if unknown:
        raise StageError(BAD_DATA, _unknown_message(source, unknown, counts, labels), hint=_unknown_hint(unknown, labels))


def _unknown_message(source: str, unknown: dict[str, list[str]], counts: dict[str, int], labels: list[str]) -> str:
    parts = []
    for t, places in unknown.items():
        more = counts[t] - len(places)
        parts.append(f"`{t}` at {', '.join(places)}" + (f" and {more} more" if more > 0 else ""))
    n = len(unknown)
    return (f"`{source}`: {n} tag{'s' if n > 1 else ''} not in token_classify(labels = [...]): " + "; ".join(parts)
            + f". The labels are: {', '.join(labels)}")


def _unknown_hint(unknown: dict[str, list[str]], labels: list[str]) -> str:
    import difflib

    close = [(t, difflib.get_close_matches(t, labels, n=1, cutoff=0.8)) for t in unknown]
    means = "; ".join(f"`{t}`: did you mean `{c[0]}`?" for t, c in close if c)
    return (means + "; else " if means else "") + "add the tag to `labels`, or correct the data"


_PREFIXES = ("B-", "I-", "E-", "S-", "L-", "U-")  # what seqeval reads as chunk tags


def chunk_tags(row: Sequence[str]) -> list[str]:
    """Tags as seqeval reads them: ``O`` and prefixed tags (``B-PER``) as they are; a tag without
    a prefix (the IO scheme: ``PER``) starts an entity unless the word before has the same tag
    (``PER PER LOC`` -> ``B-PER I-PER B-LOC``), where seqeval would take its first letter for
    the chunk tag."""
    out, prev = [], None
    for t in row:
        if t == "O" or t.startswith(_PREFIXES):
            out.append(t)
        else:
            out.append(("I-" if prev == t else "B-") + t)
        prev = t
    return out


def entity_metrics(true: list[list[int]], pred: list[list[int]], names: Sequence[str]) -> dict[str, float]:
    """seqeval's entity precision/recall/F1 of label-index sequences (rows without words
    skipped; tags without a B-/I- prefix through :func:`chunk_tags`)."""
    from ftdsl.stages.seq_metrics import entity_scores

    def tags(row):
        return chunk_tags([names[i] if 0 <= i < len(names) else "O" for i in row])

    keep = [i for i, t in enumerate(true) if t]
    return entity_scores([tags(true[i]) for i in keep], [tags(pred[i]) for i in keep])


def predict_tags(module: Any, tokenizer: Any, records: list[dict], task: dict, *, max_length: int | None = None,
                 batch: int = 32, device: str = "cpu", probs: bool = False) -> list[Any]:
    """The predicted tag name of every word of every record (``{"tokens": [...]}``; tags, when
    present, are not read): one list per record. ``probs``: (tags, the probability of each
    chosen tag) per record instead. Long rows are predicted in pieces and joined back, so every
    word has a tag."""
    import torch

    names = label_names(task)
    pieces = encode_records(tokenizer, records, None, max_length)
    pad = special_ids(tokenizer)["pad"]
    tags: list[list[str | None]] = [[None] * len(r["tokens"]) for r in records]
    scores: list[list[float]] = [[0.0] * len(r["tokens"]) for r in records]
    was_training = getattr(module, "training", False)
    module.eval()
    try:
        with torch.inference_mode():
            for s in range(0, len(pieces), max(1, batch)):
                chunk = pieces[s:s + batch]
                b = collate([{"input_ids": p.input_ids, "labels": p.labels} for p in chunk], pad)
                logits = module(input_ids=b["input_ids"].to(device), attention_mask=b["attention_mask"].to(device))
                p_all = torch.softmax(logits.float(), dim=-1).cpu().numpy()
                for k, piece in enumerate(chunk):
                    for w, pos in zip(piece.words, piece.positions):
                        row = p_all[k, pos]
                        j = int(np.argmax(row))
                        tags[piece.row][w] = names[j] if j < len(names) else str(j)
                        scores[piece.row][w] = float(row[j])
    finally:
        if was_training:
            module.train()
    if probs:
        return [(t, sc) for t, sc in zip(tags, scores)]
    return tags


TASK = TokenClassify()
