"""Reading a saved `Dataset` back, trusting nothing in it (issue 6: every load validates).

A cache entry is checksummed, but a checksum only proves the bytes are the ones published (or
that someone fixed up the manifest too). So the load checks what the data stage guarantees:
the metadata's types, that `arrays.safetensors` parses, every array's dtype and shape, that
features and regression targets are finite (NaN/Inf rows are refused, like FTP507 for
weights), that class labels are within the classes, that texts are strings and that records have
their modality's form (``record_problem``). Any failure is
StageError FTP503: the executor quarantines the entry and computes the stage again.
No torch here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ftdsl.errors import StageError

__all__ = ["load", "record_problem"]

FORMAT_VERSION = 1
_HINT = "the cache entry is damaged; ftdsl recomputes it (or rerun the data stage with --force)"


class _Bad(Exception):
    """Why a saved dataset is not valid (a short phrase)."""


def _need(cond: bool, why: str) -> None:
    if not cond:
        raise _Bad(why)


def _opt_int(v: Any, lo: int = 1) -> bool:
    return v is None or (type(v) is int and v >= lo)


def _str_list(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise _Bad(f"`{path.name}` is missing") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise _Bad(f"`{path.name}` is not valid JSON ({str(e)[:80]})") from None


def record_problem(modality: str, rec: Any) -> str | None:
    """What is wrong with ``rec`` as a record of ``modality`` (the form the data stage writes,
    ftdsl/stages/tasks/__init__.py), or None when it is valid."""
    from ftdsl.ir.schema.modality import CHAT_ROLES as ROLES

    if not isinstance(rec, dict):
        return "a record is not an object"
    if modality == "instructions":
        if set(rec) == {"prompt", "response"}:
            return None if isinstance(rec["prompt"], str) and isinstance(rec["response"], str) \
                else "a prompt or response is not text"
        msgs = rec.get("messages")
        if set(rec) != {"messages"} or not isinstance(msgs, list) or not msgs:
            return "an instruction record has neither prompt/response nor a non-empty messages list"
        for m in msgs:
            if not (isinstance(m, dict) and set(m) == {"role", "content"} and m["role"] in ROLES
                    and isinstance(m["content"], str)):
                return "a chat message is not a {role, content} object with a known role"
        return None
    if modality == "text_pairs":
        ok = set(rec) == {"source", "target"} and isinstance(rec["source"], str) and isinstance(rec["target"], str)
        return None if ok else "a text pair is not {source, target} texts"
    if modality == "tagged":
        toks, tags = rec.get("tokens"), rec.get("tags")
        if set(rec) != {"tokens", "tags"} or not _str_list(toks) or not _str_list(tags):
            return "a tagged record is not {tokens, tags} lists of strings"
        if not toks or len(toks) != len(tags) or not all(t.strip() for t in toks):
            return "a tagged record has no words, an empty word, or a tag count unlike its word count"
        return None
    return f"modality {modality!r} has no records"


def _check_meta(meta: Any) -> None:
    _need(isinstance(meta, dict), "dataset.json is not an object")
    _need(meta.get("format_version") == FORMAT_VERSION,
          f"unsupported Dataset format {meta.get('format_version')!r}")
    splits = meta.get("splits")
    _need(isinstance(splits, dict) and bool(splits), "dataset.json lists no splits")
    for name, sm in splits.items():
        _need(isinstance(sm, dict) and type(sm.get("n")) is int and sm["n"] >= 0
              and isinstance(sm.get("features"), bool) and isinstance(sm.get("texts"), bool)
              and isinstance(sm.get("records", False), bool)
              and (sm.get("source") is None or isinstance(sm.get("source"), str)),
              f"the record of split `{name}` is malformed")
    from ftdsl.ir.schema.modality import MODALITIES

    _need(meta.get("modality") in MODALITIES, f"unknown modality {meta.get('modality')!r}")
    _need(isinstance(meta.get("labeled", True), bool), "labeled is malformed")
    if meta.get("labeled", True) is False:
        _need(meta.get("num_classes") is None and meta.get("label_names") is None,
              "an unlabeled dataset has label names")
    shape = meta.get("input_shape")
    _need(shape is None or (isinstance(shape, list) and all(type(d) is int and d > 0 for d in shape)),
          "input_shape is malformed")
    _need(meta.get("label_names") is None or _str_list(meta["label_names"]), "label_names is malformed")
    _need(_opt_int(meta.get("num_classes")) and _opt_int(meta.get("max_length")), "a count is malformed")
    if meta.get("num_classes") is not None and meta.get("label_names") is not None:
        _need(len(meta["label_names"]) == meta["num_classes"], "label_names and num_classes disagree")
    _need(meta.get("sampler") in ("shuffle", "balanced"), f"unknown sampler {meta.get('sampler')!r}")
    _need(isinstance(meta.get("source"), str), "source is malformed")
    for k in ("label_column", "text_column"):
        _need(meta.get(k) is None or isinstance(meta[k], str), f"{k} is malformed")
    _need(meta.get("feature_names") is None or _str_list(meta["feature_names"]), "feature_names is malformed")


def _read_arrays(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    if not path.is_file():
        raise _Bad("arrays.safetensors is missing")
    try:
        return load_file(str(path))
    except Exception as e:  # SafetensorError (Rust) and friends: not a valid safetensors file
        raise _Bad(f"arrays.safetensors is not a valid safetensors file ({str(e)[:120]})") from None


def _finite(a: np.ndarray, what: str) -> None:
    if a.dtype.kind == "f" and a.size and not np.isfinite(a).all():
        flat = np.nonzero(~np.isfinite(a.reshape(a.shape[0], -1)).all(axis=1))[0] if a.ndim > 1 else \
            np.nonzero(~np.isfinite(a))[0]
        raise _Bad(f"{what} contains NaN or infinite values ({flat.size} row(s), first at index {int(flat[0])})")


def _check_split(name: str, sm: dict, meta: dict, arrays: dict, texts: dict, records: dict) -> tuple:
    n = sm["n"]
    labels = arrays.get(f"{name}.labels")
    rows = arrays.get(f"{name}.rows")
    lines = arrays.get(f"{name}.lines")
    _need(labels is not None and rows is not None, f"split `{name}` has no labels or rows")
    _need(rows.dtype == np.int64 and rows.shape == (n,), f"`{name}.rows` has the wrong dtype or shape")
    _need(lines is None or (lines.dtype == np.int64 and lines.shape == (n,)), f"`{name}.lines` is malformed")
    k = meta.get("num_classes")
    if meta.get("labeled", True) is False:
        _need(labels.dtype == np.int64 and labels.shape == (n,) and not labels.any(),
              f"`{name}.labels` of unlabeled data are not {n} zeros")
    elif k is not None:
        _need(labels.dtype == np.int64 and labels.shape == (n,), f"`{name}.labels` are not {n} class numbers")
        _need(n == 0 or (int(labels.min()) >= 0 and int(labels.max()) < k),
              f"`{name}.labels` has a class outside 0..{k - 1}")
    else:
        _need(labels.dtype == np.float32 and labels.ndim == 2 and labels.shape[0] == n,
              f"`{name}.labels` are not {n} rows of regression targets")
        _finite(labels, f"`{name}.labels`")
    feats = None
    if sm["features"]:
        feats = arrays.get(f"{name}.features")
        shape = meta.get("input_shape")
        _need(feats is not None and feats.dtype == np.float32, f"`{name}.features` is missing or not float32")
        _need(feats.shape[0] == n and (shape is None or list(feats.shape[1:]) == shape),
              f"`{name}.features` has shape {list(feats.shape)}, expected [{n}, {', '.join(map(str, shape or []))}]")
        _finite(feats, f"`{name}.features`")
    txt = None
    if sm["texts"]:
        txt = texts.get(name)
        _need(_str_list(txt) and len(txt) == n, f"texts.json has no {n} texts for split `{name}`")
    recs = None
    if sm.get("records", False):
        recs = records.get(name)
        _need(isinstance(recs, list) and len(recs) == n, f"records.json has no {n} records for split `{name}`")
        for i, r in enumerate(recs):
            why = record_problem(meta["modality"], r)
            _need(why is None, f"records.json, split `{name}`, record {i + 1}: {why}")
    _need(feats is not None or txt is not None or recs is not None,
          f"split `{name}` has neither features, texts nor records")
    return feats, txt, labels, rows, lines, recs


def _check_tokenizer(tok: Path) -> None:
    data = _read_json(tok / "tokenizer.json")
    _need(isinstance(data, dict) and isinstance(data.get("model"), dict), "tokenizer/tokenizer.json is malformed")
    from tokenizers import Tokenizer

    try:
        Tokenizer.from_str(json.dumps(data))
    except Exception as e:  # the Rust parser's own error type
        raise _Bad(f"tokenizer/tokenizer.json does not load ({str(e)[:120]})") from None


def load(cls, split_cls, dir: Path):
    """``cls`` (Dataset) read from ``dir``; StageError FTP503 naming what is wrong."""
    try:
        meta = _read_json(dir / "dataset.json")
        _check_meta(meta)
        arrays = _read_arrays(dir / "arrays.safetensors")
        texts: dict = {}
        if (dir / "texts.json").exists():
            texts = _read_json(dir / "texts.json")
            _need(isinstance(texts, dict), "texts.json is not an object")
        records: dict = {}
        if (dir / "records.json").exists():
            records = _read_json(dir / "records.json")
            _need(isinstance(records, dict), "records.json is not an object")
        splits = {}
        for name, sm in meta["splits"].items():
            feats, txt, labels, rows, lines, recs = _check_split(name, sm, meta, arrays, texts, records)
            splits[name] = split_cls(feats, txt, labels, rows, sm.get("source"), lines, recs)
        mean, std = arrays.get("norm_mean"), arrays.get("norm_std")
        _need((mean is None) == (std is None), "only one of norm_mean / norm_std is saved")
        if mean is not None:
            shape = tuple(meta.get("input_shape") or ())
            _need(mean.dtype == np.float32 and std.dtype == np.float32 and mean.shape == shape == std.shape,
                  "norm_mean / norm_std have the wrong dtype or shape")
            _finite(mean[None], "norm_mean")
            _finite(std[None], "norm_std")
            _need(bool((std > 0).all()), "norm_std has a zero or negative entry")
        tok = dir / "tokenizer"
        if meta.get("tokenizer"):
            _need(tok.is_dir(), "the tokenizer/ folder is missing")
            _check_tokenizer(tok)
    except _Bad as e:
        raise StageError("FTP503", f"the saved dataset in {dir} is corrupt: {e}", hint=_HINT) from None
    return cls(
        splits=splits,
        modality=meta["modality"],
        input_shape=None if meta.get("input_shape") is None else tuple(meta["input_shape"]),
        label_names=meta.get("label_names"),
        num_classes=meta.get("num_classes"),
        norm_mean=mean,
        norm_std=std,
        max_length=meta.get("max_length"),
        sampler=meta["sampler"],
        tokenizer_dir=tok if meta.get("tokenizer") else None,
        source=meta["source"],
        label_column=meta.get("label_column"),
        text_column=meta.get("text_column"),
        feature_names=meta.get("feature_names"),
        labeled=meta.get("labeled", True),
    )
