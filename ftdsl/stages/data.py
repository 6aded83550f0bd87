"""The `data` stage: read a source, type the labels (or read the records of a structured
modality: instructions, text pairs, tagged words), make seeded splits, (optionally) train a
WordPiece or byte-level BPE tokenizer. Produces a `Dataset` artifact (docs/internals.md §2).

Module map: the artifact and the checks downstream stages run against it are in
`ftdsl.stages.dataset` (its validated load in `dataset_check`), the readers in `_sources`, the
tokenizer in `ftdsl.stages.tokenizer`, the records in `_records`, batching (torch) in `ftdsl.stages.batching`; other modules
import those names from their own modules, not from here. No torch here.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from ftdsl.errors import StageError
from ftdsl.stages import _sources as S
from ftdsl.stages._records import read_records, record_modality
from ftdsl.stages._sources import BAD_DATA, Part, Table
from ftdsl.stages.dataset import SPLIT_ORDER, Dataset, Split, record_texts
from ftdsl.stages.tokenizer import train_bpe, train_wordpiece

DEFAULT_SPLIT = {"train": 0.8, "valid": 0.1, "test": 0.1}  # `source` without `split`


# --------------------------------------------------------------------------------------------
# The stage


def _part_from_table(table: Table, *, text: str | None, label, features: list[str] | None) -> Part:
    label_cols = [label] if isinstance(label, str) else list(label)
    if text is not None:
        texts = S.text_column(table, text)
        feats = None
        names = None
    else:
        if features is None:
            names = [c for c in table.columns if c not in label_cols]
            implicit = True
        else:
            names = list(features)
            implicit = False
        if not names:
            raise StageError(
                BAD_DATA,
                f"{table.where()}: no feature columns (the file has only {', '.join(f'`{c}`' for c in table.columns)})",
                "set `features = [..]`, or `text = \"column\"` for text data",
            )
        for c in names:
            table.require(c, "feature")
        for c in label_cols:
            table.require(c, "label")
        hint = (
            f"`features` is not set, so every column except {', '.join(f'`{c}`' for c in label_cols)} "
            "is a feature; list the numeric ones in `features = [..]`, or set `text = \"column\"`"
            if implicit else None
        )
        cols = [S.numeric_column(table, c, "feature", hint) for c in names]
        feats = np.stack(cols, axis=1).astype(np.float32)
        texts = None
    for c in label_cols:
        table.require(c, "label")
    if len(label_cols) == 1:
        raw = table.data[label_cols[0]]
    else:  # several target columns: regression [n, k]
        raw = np.stack([S.numeric_column(table, c, "label") for c in label_cols], axis=1).astype(np.float32)
    return Part(
        table.shown, feats, texts, raw, table.where, label_column=", ".join(label_cols),
        feature_names=names, rows=np.arange(1, table.n + 1, dtype=np.int64),
        lines=None if table.lines is None else np.asarray([ln or 0 for ln in table.lines], dtype=np.int64),
    )


def _parse_label(v: Any) -> tuple[str, Any] | None:
    """("int", i) / ("float", f) / ("str", s), or None for a missing value."""
    if isinstance(v, (bool, np.bool_)):
        return ("int", int(v))
    if isinstance(v, (int, np.integer)):
        return ("int", int(v))
    if isinstance(v, (float, np.floating)):
        f = float(v)
        if math.isnan(f):
            return None
        if math.isinf(f):
            return ("str", str(v))
        return ("int", int(f)) if f.is_integer() else ("float", f)
    if v is None:
        return None
    if isinstance(v, str):
        s = v.strip()
        if not s:
            return None
        try:
            return ("int", int(s))
        except ValueError:
            pass
        try:
            f = float(s)
        except ValueError:
            return ("str", s)
        if math.isfinite(f):
            return ("int", int(f)) if f.is_integer() else ("float", f)
        return ("str", s)
    return ("str", json.dumps(v) if isinstance(v, (list, dict)) else str(v))


def _finalize_labels(parts: list[Part]) -> tuple[list[np.ndarray], list[str] | None, int | None]:
    """Type the labels of all parts together: classify (int64 [n]) or regress (float32 [n, k])."""
    if all(isinstance(p.labels_raw, np.ndarray) and p.labels_raw.ndim == 2 for p in parts):
        return [p.labels_raw.astype(np.float32) for p in parts], None, None
    if any(isinstance(p.labels_raw, np.ndarray) and p.labels_raw.ndim == 2 for p in parts):
        raise StageError(BAD_DATA, "the splits disagree on the label columns")
    parsed: list[list[tuple[str, Any]]] = []
    kinds: set[str] = set()
    for p in parts:
        raw = p.labels_raw.tolist() if isinstance(p.labels_raw, np.ndarray) else p.labels_raw
        out = []
        for i, v in enumerate(raw):
            r = _parse_label(v)
            if r is None:
                raise StageError(
                    BAD_DATA,
                    f"{p.where(i, p.label_column)}: missing label",
                    "every row needs a label; remove the row or fill it in",
                )
            out.append(r)
            kinds.add(r[0])
        parsed.append(out)
    if kinds == {"int"}:
        values = [np.asarray([v for _, v in out], dtype=np.int64) for out in parsed]
        lo = min(int(a.min()) for a in values)
        hi = max(int(a.max()) for a in values)
        preset = parts[0].label_names if all(p.label_names == parts[0].label_names for p in parts) else None
        if lo >= 0:
            k = hi + 1
            names = preset if preset is not None and len(preset) == k else [str(c) for c in range(k)]
            return values, names, k
        uniq = np.unique(np.concatenate(values))
        return [np.searchsorted(uniq, a).astype(np.int64) for a in values], [str(u) for u in uniq], len(uniq)
    if kinds <= {"int", "float"}:
        return [np.asarray([v for _, v in out], dtype=np.float32)[:, None] for out in parsed], None, None
    # text (or mixed) labels: sorted unique strings
    strs = [[v if kind == "str" else str(v) for kind, v in out] for out in parsed]
    uniq = sorted({s for out in strs for s in out})
    index = {s: j for j, s in enumerate(uniq)}
    return [np.asarray([index[s] for s in out], dtype=np.int64) for out in strs], uniq, len(uniq)


def _unlabeled_part(table: Table, texts: list[str] | None, records: list[dict] | None) -> Part:
    n = table.n
    return Part(
        table.shown, None, texts, np.zeros(n, dtype=np.int64), table.where, label_column=None,
        rows=np.arange(1, n + 1, dtype=np.int64),
        lines=None if table.lines is None else np.asarray([ln or 0 for ln in table.lines], dtype=np.int64),
        records=records, labeled=False,
    )


def _load_part(call: dict, ctx, attrs: dict, rec_modality: str | None) -> Part:
    kind = call.get("$call") if isinstance(call, dict) else None
    if kind in ("csv", "jsonl", "parquet"):
        table = S.read_file_call(call, Path(ctx.pipeline_dir))
        if rec_modality is not None:
            return _unlabeled_part(table, None, read_records(table, rec_modality, attrs))
        label = attrs.get("label") or "label"
        text = attrs.get("text")
        if text is not None and label == "label" and "label" not in table.data:
            # plain text (causal_lm): the default label column is absent, so the rows have no labels
            return _unlabeled_part(table, S.text_column(table, text), None)
        return _part_from_table(table, text=text, label=label, features=attrs.get("features"))
    if kind in ("sklearn", "synthetic"):
        if rec_modality is not None:
            raise StageError(BAD_DATA, f"{S.describe(call)} yields numeric features, not "
                                       f"{rec_modality.replace('_', ' ')} columns",
                             "read a jsonl/csv/parquet file: `source = jsonl(\"...\")`")
        if attrs.get("text"):
            raise StageError(BAD_DATA, f"{S.describe(call)} has no text column; remove `text`")
        part = S.load_sklearn(call.get("name")) if kind == "sklearn" else S.load_synthetic(call, ctx.seed)
        return part
    raise StageError(BAD_DATA, f"unknown data source {call!r}")


def _proportions(split: Any, names: list[str]) -> dict[str, float]:
    props: dict[str, float] = {}
    for name in names:
        v = split[name]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            raise StageError(
                BAD_DATA,
                f"split `{name}` = {v!r}: a split proportion must be a positive number",
                "e.g. split = { train = 0.8, valid = 0.1, test = 0.1 }",
            )
        props[name] = float(v)
    total = sum(props.values())
    return {k: v / total for k, v in props.items()}


def _counts(n: int, props: dict[str, float]) -> dict[str, int]:
    """Largest-remainder rounding of n * proportion; sums to n exactly."""
    exact = {k: n * p for k, p in props.items()}
    counts = {k: int(math.floor(v)) for k, v in exact.items()}
    rest = n - sum(counts.values())
    canon = _ordered(props)
    order = sorted(props, key=lambda k: (-round(exact[k] - counts[k], 9), canon.index(k)))
    for k in order[:rest]:
        counts[k] += 1
    return counts


def _carve(part_n: int, labels: np.ndarray | None, props: dict[str, float], rng: np.random.Generator,
           shown: str, raw_props: dict[str, Any]) -> dict[str, np.ndarray]:
    """Seeded (and, for class labels, stratified) division of range(part_n) by proportions."""
    counts = _counts(part_n, props)
    for name, c in counts.items():
        if c == 0:
            raise StageError(
                BAD_DATA,
                f"split `{name}` is empty: `{shown}` has {part_n} rows, and split "
                f"{name} = {raw_props[name]} of them rounds to 0",
                f"give `{name}` a larger proportion, or use more data",
            )
    perm = rng.permutation(part_n)
    if labels is not None and labels.ndim == 1:
        # Stratify: rank every row within its class (in random order) by (i + 0.5) / n_class,
        # then sort all rows by that rank. Each class is spread evenly over the order, so cutting
        # it at the global counts gives every split its share of every class.
        lab = labels[perm]
        order_in_class = np.argsort(lab, kind="stable")
        rank = np.empty(part_n, dtype=np.float64)
        _, starts, sizes = np.unique(lab[order_in_class], return_index=True, return_counts=True)
        for s, size in zip(starts, sizes):
            pos = order_in_class[s: s + size]
            rank[pos] = (np.arange(size) + 0.5) / size
        perm = perm[np.lexsort((np.arange(part_n), rank))]
    out: dict[str, np.ndarray] = {}
    start = 0
    for name, c in counts.items():
        out[name] = np.sort(perm[start: start + c])
        start += c
    return out


def _ordered(names) -> list[str]:
    names = list(names)
    return [n for n in SPLIT_ORDER if n in names] + [n for n in names if n not in SPLIT_ORDER]


def run(inputs: dict[str, object], attrs: dict, ctx) -> Dataset:
    source = attrs.get("source")
    explicit = {n: attrs.get(n) for n in SPLIT_ORDER if attrs.get(n)}
    split_spec = attrs.get("split")
    if split_spec is not None and not isinstance(split_spec, dict):
        raise StageError(BAD_DATA, "`split` must be a dict like { train = 0.8, valid = 0.1, test = 0.1 }")
    if split_spec is not None:  # lowered structs carry every key; unset ones are None
        split_spec = {k: v for k, v in split_spec.items() if v is not None} or None
    text_col = attrs.get("text")
    if text_col is not None and attrs.get("features"):
        raise StageError(BAD_DATA, "set either `text` or `features`, not both")
    sampler = attrs.get("sampler") or "shuffle"
    rec_modality = record_modality(attrs)

    # --- which splits come from where --------------------------------------------------
    # carve: the splits divided out of `base` by proportion; explicit files give the rest.
    if source is not None:
        base_call = source
        split_spec = split_spec or dict(DEFAULT_SPLIT)
        carve = [n for n in split_spec if n not in explicit]
        props = _proportions(split_spec, carve) if carve else {}
        if not carve:
            ctx.reporter.log("data: every split comes from its own file; `source` is not used")
            base_call = None
    else:
        if not explicit:
            raise StageError(BAD_DATA, "the data block needs a `source` (or `train = csv(..)`)")
        base_call = None
        carve, props = [], {}
        if split_spec:
            extra = [n for n in split_spec if n not in explicit]
            if extra:
                if "train" not in explicit:
                    raise StageError(
                        BAD_DATA,
                        f"split {', '.join(f'`{n}`' for n in extra)} has no file and there is no "
                        "`source` or `train` file to divide",
                    )
                base_call = explicit.pop("train")
                raw = dict(split_spec)
                if "train" not in raw:
                    rest = 1.0 - sum(float(raw[n]) for n in extra if isinstance(raw[n], (int, float)))
                    if rest <= 0:
                        raise StageError(
                            BAD_DATA,
                            f"the proportions of {', '.join(extra)} leave nothing of the train file for `train`",
                            "add `train = ..` to `split`, or make the others smaller",
                        )
                    raw["train"] = rest
                    split_spec = raw
                carve = ["train"] + extra
                props = _proportions(raw, carve)

    # --- load ---------------------------------------------------------------------------
    parts: list[tuple[str | None, Part]] = []  # (split name or None for the carved base, part)
    if base_call is not None:
        parts.append((None, _load_part(base_call, ctx, attrs, rec_modality)))
    for name, call in explicit.items():
        parts.append((name, _load_part(call, ctx, attrs, rec_modality)))
    labeled = all(p.labeled for _, p in parts)
    if labeled:
        label_arrays, label_names, num_classes = _finalize_labels([p for _, p in parts])
    else:
        if rec_modality is None:  # plain text: every file without the label column, or every file with it
            with_labels = [p for _, p in parts if p.labeled]
            if with_labels:
                bare = next(p for _, p in parts if not p.labeled)
                raise StageError(
                    BAD_DATA,
                    f"`{bare.source}` has no column `label`, but `{with_labels[0].source}` has one: "
                    "the files disagree on whether the rows are labelled",
                    "give every file the label column, or none (plain text for causal_lm)",
                )
        label_arrays, label_names, num_classes = [p.labels_raw for _, p in parts], None, None

    shapes = {tuple(p.features.shape[1:]) for _, p in parts if p.features is not None}
    if len(shapes) > 1:
        raise StageError(BAD_DATA, f"the data files have different feature shapes: {sorted(shapes)}")
    modality = rec_modality or ("text" if text_col is not None else "features")
    for _, p in parts:
        if p.feature_names and parts[0][1].feature_names and p.feature_names != parts[0][1].feature_names:
            raise StageError(
                BAD_DATA, f"`{p.source}` has feature columns {p.feature_names}, but "
                f"`{parts[0][1].source}` has {parts[0][1].feature_names}",
            )

    # --- split ----------------------------------------------------------------------------
    rng = np.random.default_rng(int(ctx.seed))
    splits: dict[str, Split] = {}
    for (name, part), labels in zip(parts, label_arrays):
        whole = Split(part.features, part.texts, labels, part.rows, part.source, part.lines, part.records)
        if name is not None:
            splits[name] = whole
            continue
        strat = labels if num_classes is not None else None
        raw_props = {k: (split_spec or {}).get(k, props[k]) for k in props}
        for sname, idx in _carve(len(whole), strat, props, rng, part.source, raw_props).items():
            splits[sname] = whole.subset(idx)
    splits = {n: splits[n] for n in _ordered(splits)}

    # --- normalization stats (train only) ----------------------------------------------------
    norm_mean = norm_std = None
    first = next(iter(splits.values()))
    if modality == "features" and "train" in splits:
        x = splits["train"].features.astype(np.float64)
        mean = x.mean(axis=0)
        std = x.std(axis=0)
        std[std <= 1e-6 * np.maximum(1.0, np.abs(mean))] = 1.0
        norm_mean, norm_std = mean.astype(np.float32), std.astype(np.float32)

    if sampler == "balanced" and not labeled:
        raise StageError(
            BAD_DATA,
            f"sampler = balanced needs class labels, but the rows are {_describe_unlabeled(modality)} without labels",
            "use sampler = shuffle",
        )
    if sampler == "balanced" and num_classes is None:
        raise StageError(
            BAD_DATA,
            "sampler = balanced needs class labels, but the labels are real numbers (regression)",
            "use sampler = shuffle",
        )

    # --- tokenizer --------------------------------------------------------------------------
    max_length = attrs.get("max_length")
    tok_dir = None
    tok = attrs.get("tokenizer")
    if tok:
        if modality == "features":
            raise StageError(BAD_DATA, "`tokenizer` needs text data: set `text = \"column\"`")
        if "train" not in splits:
            raise StageError(BAD_DATA, "`tokenizer` is trained on the `train` split, and there is none")
        from ftdsl.ir.lower import complete_call

        tok = complete_call(tok, "tokenizer")  # defaults from the schema, the one declaration
        train = splits["train"]
        texts = train.texts if train.texts is not None else record_texts(train.records)
        if tok.get("$call") == "bpe":
            tok_dir = train_bpe(texts, int(tok["vocab"]), Path(ctx.out_dir) / "tokenizer", max_length=max_length)
        else:
            tok_dir = train_wordpiece(
                texts, int(tok["vocab"]), Path(ctx.out_dir) / "tokenizer",
                lowercase=bool(tok["lowercase"]), max_length=max_length,
            )

    label_attr = attrs.get("label") or "label"
    if not labeled:
        label_col = None
    elif source is not None and source.get("$call") in ("sklearn", "synthetic"):
        label_col = "target"
    else:
        label_col = label_attr if isinstance(label_attr, str) else ", ".join(label_attr)
    main = base_call or source or explicit.get("train") or next(iter(explicit.values()))
    sizes = ", ".join(f"{n} {len(sp)}" for n, sp in splits.items())
    if not labeled:
        kind = _describe_unlabeled(modality)
    else:
        kind = f"{num_classes} classes" if num_classes is not None else "regression"
    ctx.reporter.log(f"data: {S.describe(main)}: {sizes} rows; {kind}")
    return Dataset(
        splits=splits,
        modality=modality,
        input_shape=None if first.features is None else tuple(int(d) for d in first.features.shape[1:]),
        label_names=label_names,
        num_classes=num_classes,
        norm_mean=norm_mean,
        norm_std=norm_std,
        max_length=max_length,
        sampler=sampler,
        tokenizer_dir=tok_dir,
        source=S.describe(main),
        label_column=label_col,
        text_column=text_col,
        feature_names=parts[0][1].feature_names if modality == "features" else None,
        labeled=labeled,
    )


def _describe_unlabeled(modality: str) -> str:
    return {"text": "plain text", "instructions": "instruction records", "text_pairs": "text pairs",
            "tagged": "tagged words"}.get(modality, modality)
