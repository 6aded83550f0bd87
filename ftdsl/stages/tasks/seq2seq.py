"""The ``seq2seq`` task: an encoder-decoder (T5/BART family, ``AutoModelForSeq2SeqLM``) learns to
write ``target`` from ``source`` (records ``{"source", "target"}`` of the ``text_pairs`` modality).

Encoding (one example per row):

* ``input_ids``: the source as the tokenizer encodes a text (its own special tokens: T5 ends with
  ``</s>``, BART wraps in ``<s> .. </s>``), with the end-of-sequence token appended when the
  tokenizer did not add it (a ``bpe`` tokenizer adds nothing), cut to ``max_length`` tokens
  keeping that final token.
* ``labels`` (``y`` in a batch): the target encoded the same way, cut to the task's
  ``max_target_length`` (the end-of-sequence token kept last), so the model learns where a text
  ends; every target token carries loss.
* ``decoder_labels``: the same target ids, a module input. The model's decoder input is the
  target shifted right behind the model's own decoder start token; :class:`SeqModule` builds it
  with :func:`decoder_inputs` (the model's ``prepare_decoder_input_ids_from_labels``: T5 starts
  from ``<pad>``, BART from ``</s>``) so training, teacher-forced evaluation and ``generate``
  all use the start token of the model's config. ``y[b, i]`` is the target of decoder position
  ``i``, aligned with the logits as every task's.

Metrics (teacher forced, every token of the target): ``loss``, ``perplexity``,
``token_accuracy`` (``common.lm_metrics``). Generated-text metrics (``exact_match``,
``rouge_l``, ``bleu``) come from ``ftdsl.stages.tasks.generation``, which calls
:meth:`Seq2Seq.generation_inputs` so a row is generated from exactly the source ids it was trained
on, and compares with :meth:`Seq2Seq.references`.
"""

from __future__ import annotations

from typing import Any

from ftdsl.errors import StageError
from ftdsl.stages.tasks.common import TokenCrossEntropy, collate, lm_metrics, token_stats

__all__ = ["TASK", "Seq2Seq", "decoder_inputs", "source_ids", "target_ids"]

BAD_DATA = "FTP510"


def _eos(tokenizer: Any) -> int | None:
    e = getattr(tokenizer, "eos_token_id", None)
    return int(e) if isinstance(e, int) else None


def _fit(ids: list[int], limit: int | None, eos: int | None) -> list[int]:
    """``ids`` ending with ``eos`` (appended when missing) and at most ``limit`` long (the end
    token kept last when cut)."""
    ids = [int(i) for i in ids]
    if eos is not None and (not ids or ids[-1] != eos):
        ids.append(eos)
    if limit is not None and len(ids) > limit:
        ids = ids[: limit - 1] + [eos] if eos is not None else ids[:limit]
    return ids


def _encode_texts(tokenizer: Any, texts: list[str], limit: int | None) -> list[list[int]]:
    if not texts:
        return []
    enc = tokenizer([str(t) for t in texts], add_special_tokens=True, verbose=False)["input_ids"]
    eos = _eos(tokenizer)
    return [_fit(list(ids), limit, eos) for ids in enc]


def source_ids(tokenizer: Any, texts: list[str], max_length: int | None) -> list[list[int]]:
    """The encoder input of each source text (what training and generation both use)."""
    return _encode_texts(tokenizer, texts, max_length)


def target_ids(tokenizer: Any, texts: list[str], max_target_length: int | None) -> list[list[int]]:
    """The decoder target of each target text (ends with the end-of-sequence token)."""
    return _encode_texts(tokenizer, texts, max_target_length)


def decoder_inputs(net: Any, labels: Any) -> Any:
    """The decoder input ids of a batch of target ids ``[B, T]``: shifted right one position
    behind the model's decoder start token (``prepare_decoder_input_ids_from_labels`` of
    transformers' seq2seq models, which a PEFT wrapper forwards; otherwise the config's
    ``decoder_start_token_id``)."""
    fn = getattr(net, "prepare_decoder_input_ids_from_labels", None)
    if callable(fn):
        return fn(labels=labels)
    cfg = getattr(net, "config", None)
    start = getattr(cfg, "decoder_start_token_id", None)
    pad = getattr(cfg, "pad_token_id", None)
    if start is None:
        start = pad if pad is not None else 0
    out = labels.new_full(labels.shape, int(start))
    out[:, 1:] = labels[:, :-1]
    return out.masked_fill(out < 0, int(pad if pad is not None else 0))


class Seq2Seq:
    name = "seq2seq"
    auto_class = "AutoModelForSeq2SeqLM"
    input_names = ("input_ids", "attention_mask", "decoder_labels")
    generative = True

    def check_data(self, data: Any, task: dict) -> None:
        if getattr(data, "modality", None) != "text_pairs":
            raise StageError(
                BAD_DATA,
                f"task seq2seq(...) learns from source/target text pairs, but data `{data.source}` is "
                f"{data.modality} data",
                hint='name both columns in the data block: `text = "source_column", target = "target_column"`',
            )
        for name, split in data.splits.items():
            if split.records is None:
                raise StageError(BAD_DATA, f"the {name} split of `{data.source}` carries no text pairs",
                                 hint="run the data stage again (its cache entry predates text pairs)")

    def encode(self, data: Any, split: Any, tokenizer: Any, task: dict, max_length: int | None) -> list[dict[str, list[int]]]:
        records = split.records or []
        src = source_ids(tokenizer, [r["source"] for r in records], max_length)
        tgt = target_ids(tokenizer, [r["target"] for r in records], _target_limit(task))
        return [{"input_ids": s, "decoder_labels": t, "labels": list(t)} for s, t in zip(src, tgt)]

    def length_note(self, split: Any, examples: list, task: dict, max_length: int | None) -> str | None:
        """What the length limits did to a split (the trainer logs it)."""
        n, limit = len(examples), _target_limit(task)
        src = sum(1 for e in examples if max_length and len(e["input_ids"]) >= max_length)
        tgt = sum(1 for e in examples if limit and len(e["labels"]) >= limit)
        parts = ([f"{src} of {n} sources reach max_length = {max_length}"] if src else []) + \
            ([f"{tgt} of {n} targets reach max_target_length = {limit}"] if tgt else [])
        return " and ".join(parts) + " (longer texts are cut, keeping the end-of-sequence token)" if parts else None

    def collate(self, examples: list[dict[str, list[int]]], pad_id: int) -> dict[str, Any]:
        # decoder_labels' padding is never read: the decoder is causal and the padded positions
        # carry IGNORE in y
        return collate(examples, pad_id)

    def criterion(self) -> Any:
        return TokenCrossEntropy()

    def batch_stats(self, logits: Any, y: Any) -> Any:
        return token_stats(logits, y)

    def metrics(self, parts: Any, task: dict) -> dict[str, float]:
        return lm_metrics(parts)

    # ---- generation (ftdsl.stages.tasks.generation, evaluate and predict) -----------------------

    def generation_inputs(self, split: Any, tokenizer: Any, task_cfg: dict) -> list[tuple[list[int], str | None, str]]:
        """(source ids, reference target or None, source text) per row: the encoder input of
        training (``task_cfg["max_length"]``, when the caller sets it, cuts the source as training
        did)."""
        records = split.records if getattr(split, "records", None) is not None else \
            [{"source": t} for t in (split.texts or [])]
        srcs = [str(r.get("source", r.get("text", ""))) for r in records]
        ids = source_ids(tokenizer, srcs, task_cfg.get("max_length"))
        return [(i, (None if r.get("target") is None else str(r["target"])), s) for i, r, s in zip(ids, records, srcs)]

    def references(self, split: Any) -> list[str]:
        """The target text of each row (what generated texts are compared with)."""
        return [str(r["target"]) for r in (split.records or [])]


def _target_limit(task: dict) -> int | None:
    v = task.get("max_target_length", 128)
    return None if v is None else int(v)


TASK = Seq2Seq()
