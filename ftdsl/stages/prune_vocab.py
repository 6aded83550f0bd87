"""Vocabulary trimming: ``structured(what = [..., vocab])`` keeps only the embedding rows a task uses.

Half of a small pretrained encoder can be its word-embedding table (all-MiniLM-L6-v2: 30,522 x 384
= 11.7 M of 22.7 M parameters), which removing heads and FFN rows does not touch. A classifier
fine-tuned on one domain uses a small part of a 30k WordPiece vocabulary; trimming keeps:

* every token id the model's tokenizer produces on the **train split** of the prune stage's
  ``recover.data`` (never valid or test), with special tokens, untruncated;
* every special token (``added_tokens``, the post-processor's ``[CLS]``/``[SEP]``, the model's
  unknown token);
* every single-character token and every ``##`` + single-character continuation, so a word the
  train split never had still tokenizes into kept pieces (WordPiece falls back to shorter pieces)
  and never into ``[UNK]`` where the original tokenizer had none, as long as the original vocabulary
  spells each of its characters as a piece of its own (``prune.json`` counts the characters it
  does not: ``chars_without_piece``);
* for BPE, every token a kept token is merged from (a merge's parts, back to single characters or
  bytes), and only the merges whose result stays: a byte-level BPE spells any text with its 256
  byte symbols, so nothing becomes unknown.

Ids keep their order (``[PAD]`` stays 0 when it was 0), so the trimmed model with the trimmed
tokenizer computes, on every text of the train split, exactly what the original model computes
with the original tokenizer: WordPiece's greedy longest match never chose a removed token there,
and BPE never applied a removed merge there (every merge it applied built a kept token).
The word-embedding rows are sliced, ``config.vocab_size`` (and the special token ids of the config)
follow, the new shape goes into ``spec["shrunk"]`` (rebuilt by ``prune_shrink.apply_record``), and
the tokenizer folder is rewritten: ``tokenizer.json`` through the ``tokenizers`` library's JSON
(model vocabulary, ``added_tokens``, the post-processor's and the padding's ids), ``vocab.txt`` and
``tokenizer_config.json``'s ``added_tokens_decoder`` (BPE: ``vocab.json`` and ``merges.txt``). Every
write is atomic.

Supported: Hugging Face models whose input embedding is not tied to an output layer (encoders with
a classification or token head) with a WordPiece or BPE fast tokenizer (``tokenizer.json``). Anything else
is FTP530 before anything is written. ``amount`` does not apply: the data decides what stays.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ftdsl.errors import StageError

__all__ = ["SUPPORTED_MODELS", "Plan", "prepare", "trim"]

SUPPORTED_MODELS = ("WordPiece", "BPE")  # tokenizers model types whose vocabulary ftdsl rewrites
_CONFIG_IDS = ("pad_token_id", "bos_token_id", "eos_token_id", "sep_token_id", "cls_token_id",
               "unk_token_id", "mask_token_id")


class Plan:
    """What :func:`prepare` checked: the module's word embedding and the tokenizer's JSON."""

    def __init__(self, embedding: nn.Embedding, name: str, tok_json: dict, tok_dir: Path):
        self.embedding, self.name, self.tok_json, self.tok_dir = embedding, name, tok_json, tok_dir


def _fail(msg: str, hint: str) -> StageError:
    return StageError("FTP530", f"structured(what = vocab): {msg}", hint=hint)


def prepare(module: nn.Module, tokenizer_dir: Path | None, data: Any) -> Plan:
    """Check, before anything is changed or written, that vocabulary trimming applies: a Hugging
    Face model with an untied word embedding, a WordPiece ``tokenizer.json``, and train texts."""
    hint = "leave `vocab` out of `what` (heads and ffn still shrink the model)"
    net = getattr(module, "net", None)
    emb = net.get_input_embeddings() if hasattr(net, "get_input_embeddings") else None
    if not getattr(module, "hf", False) or not isinstance(emb, nn.Embedding):
        raise _fail("the model has no Hugging Face word-embedding table to trim", hint)
    out = net.get_output_embeddings() if hasattr(net, "get_output_embeddings") else None
    if out is not None:
        raise _fail(f"`{type(net).__name__}` predicts tokens through an output layer over its vocabulary "
                    "(tied to the embedding); trimming would change what it can write", hint)
    if tokenizer_dir is None or not (Path(tokenizer_dir) / "tokenizer.json").is_file():
        raise _fail("the model has no fast tokenizer (`tokenizer.json`) whose vocabulary ftdsl can rewrite", hint)
    tj = json.loads((Path(tokenizer_dir) / "tokenizer.json").read_text(encoding="utf-8"))
    kind = (tj.get("model") or {}).get("type")
    if kind not in SUPPORTED_MODELS:
        raise _fail(f"vocabulary trimming is not supported for a `{kind}` tokenizer (supported: "
                    f"{', '.join(SUPPORTED_MODELS)})", hint)
    if data is None:  # pragma: no cover - run_structured refuses first (FTP510)
        raise StageError("FTP510", "structured(what = vocab) needs the data the model is fine-tuned on")
    name = next(n for n, m in module.named_modules() if m is emb)
    return Plan(emb, name, tj, Path(tokenizer_dir))


# --------------------------------------------------------------------------------------------
# Texts and ids


def _tokenizer(tj: dict):
    from tokenizers import Tokenizer

    tk = Tokenizer.from_str(json.dumps(tj))
    tk.no_padding()
    tk.no_truncation()
    return tk


def _encode(tk, split) -> list[list[int]]:
    """Token ids (with special tokens, untruncated) of every row of a split."""
    if getattr(split, "texts", None) is not None:
        return [e.ids for e in tk.encode_batch(list(split.texts))]
    records = getattr(split, "records", None) or []
    words = [list(map(str, r["tokens"])) for r in records if "tokens" in r]
    if words:
        return [e.ids for e in tk.encode_batch(words, is_pretokenized=True)]
    texts = [str(v) for r in records for k, v in r.items() if isinstance(v, str)]
    texts += [m["content"] for r in records for m in r.get("messages", [])]
    return [e.ids for e in tk.encode_batch(texts)]


def _special_ids(tj: dict, vocab: dict[str, int]) -> set[int]:
    ids = {int(t["id"]) for t in tj.get("added_tokens") or []}
    unk = (tj.get("model") or {}).get("unk_token")
    if unk in vocab:
        ids.add(vocab[unk])

    def walk(pp: Any) -> None:
        if not isinstance(pp, dict):
            return
        for st in (pp.get("special_tokens") or {}).values():  # TemplateProcessing
            ids.update(int(i) for i in st.get("ids", []))
        for k in ("sep", "cls"):  # BertProcessing, RobertaProcessing: [token, id]
            if isinstance(pp.get(k), list) and len(pp[k]) == 2:
                ids.add(int(pp[k][1]))
        for p in pp.get("processors") or []:  # Sequence
            walk(p)

    walk(tj.get("post_processor"))
    pad = tj.get("padding")
    if isinstance(pad, dict) and pad.get("pad_id") is not None:
        ids.add(int(pad["pad_id"]))
    return ids


def _merge_parts(m: Any) -> tuple[str, str]:
    """A BPE merge as ``(left, right)``: tokenizers writes ``["a", "b"]`` (>= 0.20) or ``"a b"``."""
    if isinstance(m, str):
        a, _, b = m.partition(" ")
        return a, b
    return str(m[0]), str(m[1])


def _bpe_closure(model: dict, keep: set[int]) -> set[int]:
    """``keep`` with every token a kept token is merged from: merges in reverse rank order (a
    merge's parts are made by earlier merges), so one pass reaches single symbols."""
    vocab = model["vocab"]
    keep = set(keep)
    for m in reversed(model.get("merges") or []):
        a, b = _merge_parts(m)
        if vocab.get(a + b) in keep:
            keep.update(vocab[x] for x in (a, b) if x in vocab)
    return keep


def _remap_ids(tj: dict, new_id: dict[int, int]) -> dict:
    """The tokenizer JSON with its ids renumbered (``new_id``: old -> new; every id is kept)."""
    tj = copy.deepcopy(tj)
    vocab = tj["model"]["vocab"]
    kept = {t for t, i in vocab.items() if i in new_id}
    tj["model"]["vocab"] = {t: new_id[i] for t, i in sorted(vocab.items(), key=lambda x: x[1]) if i in new_id}
    if "merges" in tj["model"]:  # BPE: only the merges that build a kept token from kept parts
        tj["model"]["merges"] = [m for m in tj["model"]["merges"]
                                 if (lambda a, b: a in kept and b in kept and a + b in kept)(*_merge_parts(m))]
    tj["added_tokens"] = [t for t in tj.get("added_tokens") or [] if int(t["id"]) in new_id]  # past the table: gone
    for t in tj["added_tokens"]:
        t["id"] = new_id[int(t["id"])]

    def walk(pp: Any) -> None:
        if not isinstance(pp, dict):
            return
        for st in (pp.get("special_tokens") or {}).values():
            st["ids"] = [new_id[int(i)] for i in st.get("ids", [])]
        for k in ("sep", "cls"):
            if isinstance(pp.get(k), list) and len(pp[k]) == 2:
                pp[k][1] = new_id[int(pp[k][1])]
        for p in pp.get("processors") or []:
            walk(p)

    walk(tj.get("post_processor"))
    pad = tj.get("padding")
    if isinstance(pad, dict) and pad.get("pad_id") is not None:
        pad["pad_id"] = new_id[int(pad["pad_id"])]
    return tj


# --------------------------------------------------------------------------------------------
# Trimming


def _write_tokenizer(plan: Plan, tj_new: dict, keep: list[int], new_id: dict[int, int], dst: Path) -> None:
    from ftdsl.runtime.atomic import write_text_atomic
    from ftdsl.stages.artifacts import TOKENIZER_FILES

    dst.mkdir(parents=True, exist_ok=True)
    old_tokens = {i: t for t, i in plan.tok_json["model"]["vocab"].items()}
    old_tokens.update({int(t["id"]): t["content"] for t in plan.tok_json.get("added_tokens") or []
                       if int(t["id"]) not in old_tokens})
    for name in TOKENIZER_FILES:
        src = plan.tok_dir / name
        if name == "tokenizer.json":
            write_text_atomic(dst / name, json.dumps(tj_new, ensure_ascii=False, indent=2))
        elif not src.is_file():
            continue
        elif name == "vocab.txt":
            write_text_atomic(dst / name, "".join(old_tokens[i] + "\n" for i in keep))
        elif name == "vocab.json" and tj_new["model"]["type"] == "BPE":
            write_text_atomic(dst / name, json.dumps(tj_new["model"]["vocab"], ensure_ascii=False))
        elif name == "merges.txt" and tj_new["model"]["type"] == "BPE":
            write_text_atomic(dst / name, "#version: 0.2\n" + "".join(
                " ".join(_merge_parts(m)) + "\n" for m in tj_new["model"]["merges"]))
        elif name in ("vocab.json", "merges.txt", "spiece.model", "sentencepiece.bpe.model", "tokenizer.model"):
            continue  # another model's vocabulary: not what tokenizer.json uses
        elif name == "tokenizer_config.json":
            cfg = json.loads(src.read_text(encoding="utf-8"))
            dec = cfg.get("added_tokens_decoder")
            if isinstance(dec, dict):
                cfg["added_tokens_decoder"] = {str(new_id[int(k)]): v for k, v in dec.items() if int(k) in new_id}
            write_text_atomic(dst / name, json.dumps(cfg, ensure_ascii=False, indent=2))
        elif name == "added_tokens.json":
            added = json.loads(src.read_text(encoding="utf-8"))
            write_text_atomic(dst / name, json.dumps({t: new_id[int(i)] for t, i in added.items()
                                                      if int(i) in new_id}, ensure_ascii=False, indent=2))
        else:
            write_text_atomic(dst / name, src.read_text(encoding="utf-8"))


def _retarget_config(net: nn.Module, rows: int, new_id: dict[int, int]) -> None:
    """``config.vocab_size`` and its special token ids follow; a copy, on every submodule that shares it."""
    old = getattr(net, "config", None)
    if old is None:
        return
    cfg = copy.deepcopy(old)
    cfg.vocab_size = rows
    for k in _CONFIG_IDS:
        v = getattr(cfg, k, None)
        if isinstance(v, int) and not isinstance(v, bool):
            setattr(cfg, k, new_id.get(v, v if v < rows else None))
    for m in net.modules():
        if getattr(m, "config", None) is old:
            m.config = cfg


def trim(module: nn.Module, plan: Plan, data: Any, dst: Path) -> tuple[dict, dict, Path]:
    """Trim ``module``'s vocabulary to what ``data``'s train split uses (see the module docstring);
    writes the trimmed tokenizer into ``dst``. Returns ``(record, report, tokenizer folder)``: the
    record's ``tensors`` give the embedding's new shape (names relative to ``module``); when the
    train split uses every row, nothing changes (the original folder, an empty record)."""
    tj = plan.tok_json
    model = tj["model"]
    vocab: dict[str, int] = model["vocab"]
    bpe = model.get("type") == "BPE"
    prefix = str(model.get("continuing_subword_prefix") or ("" if bpe else "##"))
    suffix = str(model.get("end_of_word_suffix") or "")
    rows = plan.embedding.num_embeddings
    tk = _tokenizer(tj)
    train_ids = _encode(tk, data.split("train"))
    used = {i for ids in train_ids for i in ids}
    singles = {i for t, i in vocab.items() if len(t) == 1 or (prefix and t.startswith(prefix) and len(t) == len(prefix) + 1)
               or (suffix and t.endswith(suffix) and len(t) == len(suffix) + 1)}
    specials = _special_ids(tj, vocab)
    keep_set = used | specials | singles
    if bpe:
        keep_set = _bpe_closure(model, keep_set)
    keep = sorted(i for i in keep_set if i < rows)
    new_id = {old: new for new, old in enumerate(keep)}
    if len(keep) == rows:  # nothing to trim: the model and its tokenizer stay as they are
        return {"tensors": {}}, {"before": rows, "after": rows, "embedding_params_removed": 0,
                                 "train_tokens_used": len(used), "note": "the train split uses every token"}, plan.tok_dir

    tj_new = _remap_ids(tj, new_id)
    tk_new = _tokenizer(tj_new)
    # the guarantee, checked: every train text gives the same tokens, renumbered
    again = _encode(tk_new, data.split("train"))
    outside = sum(1 for a, b in zip(train_ids, again) if [new_id.get(i, -1) for i in a] != b)
    if outside:  # pragma: no cover - the tokenizer chose only kept tokens there
        raise StageError("FTP530", f"structured(what = vocab): {outside} train texts tokenize differently after "
                         "trimming (a bug)", hint="leave `vocab` out of `what`")
    valid = None
    if "valid" in getattr(data, "splits", {}):
        v_old, v_new = _encode(tk, data.split("valid")), _encode(tk_new, data.split("valid"))
        changed = sum(1 for a, b in zip(v_old, v_new) if [new_id.get(i, -1) for i in a] != b)
        valid = {"rows": len(v_old), "rows_changed": changed,
                 "tokens_removed": sum(1 for ids in v_old for i in ids if i not in new_id)}
    # characters an unseen word may need spelled alone: a word's first character as itself, a later
    # one as a continuation; the original vocabulary lacking such a piece is the only way to [UNK]
    added = {t["content"] for t in tj.get("added_tokens") or []}
    if bpe:  # merges start from single symbols: those the vocabulary lacks
        no_piece = sorted({c for t in vocab if t not in added for c in t if c not in vocab})
    else:
        first = {t[0] for t in vocab if t and not t.startswith(prefix) and t not in added}
        later = {c for t in vocab if t not in added for c in (t[len(prefix):] if t.startswith(prefix) else t[1:])}
        no_piece = sorted({c for c in first if c not in vocab} | {c for c in later if prefix + c not in vocab})

    emb, dim = plan.embedding, plan.embedding.embedding_dim
    with torch.no_grad():
        idx = torch.tensor(keep, dtype=torch.long, device=emb.weight.device)
        emb.weight = nn.Parameter(emb.weight[idx].contiguous(), requires_grad=emb.weight.requires_grad)
    emb.num_embeddings = len(keep)
    if emb.padding_idx is not None:
        emb.padding_idx = new_id.get(int(emb.padding_idx))
    _retarget_config(module.net, len(keep), new_id)
    _write_tokenizer(plan, tj_new, keep, new_id, dst)
    record = {"tensors": {f"{plan.name}.weight": [len(keep), dim]}}
    report = {"before": rows, "after": len(keep), "embedding_params_removed": (rows - len(keep)) * dim,
              "train_tokens_used": len(used), "kept_special": len(specials),
              "kept_single_char": len(singles), "train_rows_changed": outside, "valid": valid,
              "chars_without_piece": len(no_piece), "tokenizer": str(model.get("type"))}
    return record, report, dst
