"""The `data` stage: read a source, type the labels, make seeded splits, (optionally) train a
WordPiece tokenizer. Produces a `Dataset` artifact (docs/internals.md §2).

Saved form (`Dataset.save(dir)`), never pickle:

    dir/dataset.json          metadata (modality, shapes, label names, split sizes, ...)
    dir/arrays.safetensors    "<split>.features" / ".labels" / ".rows", "norm_mean", "norm_std"
    dir/texts.json            {"<split>": [str, ...]}            (text data only)
    dir/tokenizer/            tokenizer.json + tokenizer_config.json (when a tokenizer was trained)

Batching helpers (`iter_batches`, `tokenize_split`, `num_batches`, ...) live in
`ftdsl.stages.batching` (torch) and are re-exported here lazily.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ftdsl.errors import StageError
from ftdsl.stages import _sources as S
from ftdsl.stages._sources import BAD_DATA, NOT_FOUND, Part, Table  # noqa: F401  (re-export)

FORMAT_VERSION = 1
SPLIT_ORDER = ("train", "valid", "test")
DEFAULT_SPLIT = {"train": 0.8, "valid": 0.1, "test": 0.1}  # `source` without `split`
SPECIAL_TOKENS = {
    "pad_token": "[PAD]",
    "unk_token": "[UNK]",
    "cls_token": "[CLS]",
    "sep_token": "[SEP]",
    "mask_token": "[MASK]",
}


# --------------------------------------------------------------------------------------------
# The artifact


@dataclass(eq=False)  # numpy fields: compare explicitly, not with ==
class Split:
    features: np.ndarray | None  # float32 [n, *input_shape], raw (not normalized)
    texts: list[str] | None  # raw text
    labels: np.ndarray  # int64 [n] (classify) or float32 [n, k] (regress)
    rows: np.ndarray  # int64 [n]: 1-based data row in `source` (for messages)
    source: str | None = None  # the file these rows come from (None: Dataset.source)
    _cache: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, idx) -> "Split":
        idx = np.asarray(idx, dtype=np.int64)
        return Split(
            None if self.features is None else np.ascontiguousarray(self.features[idx]),
            None if self.texts is None else [self.texts[i] for i in idx],
            np.ascontiguousarray(self.labels[idx]),
            np.ascontiguousarray(self.rows[idx]),
            self.source,
        )


@dataclass(eq=False)
class Dataset:
    splits: dict[str, Split]
    modality: str  # "features" | "text"
    input_shape: tuple[int, ...] | None
    label_names: list[str] | None  # index -> original label value (classify)
    num_classes: int | None
    norm_mean: np.ndarray | None  # per-feature (shape input_shape), from the train split
    norm_std: np.ndarray | None
    max_length: int | None
    sampler: str  # "shuffle" | "balanced"
    tokenizer_dir: Path | None
    source: str  # the file as written, or "sklearn(digits)"
    # extras beyond internals.md §2 (all optional)
    label_column: str | None = None
    text_column: str | None = None
    feature_names: list[str] | None = None

    @property
    def task(self) -> str:
        return "classify" if self.num_classes is not None else "regress"

    @property
    def num_outputs(self) -> int:
        """classify: the number of classes; regress: the number of target columns."""
        if self.num_classes is not None:
            return self.num_classes
        first = next(iter(self.splits.values()))
        return int(first.labels.shape[1]) if first.labels.ndim == 2 else 1

    def split(self, name: str) -> Split:
        if name not in self.splits:
            raise StageError(
                BAD_DATA,
                f"data from `{self.source}` has no `{name}` split (it has: {', '.join(self.splits)})",
            )
        return self.splits[name]

    # ---- persistence -------------------------------------------------------------------

    def save(self, dir: Path) -> None:
        from safetensors.numpy import save_file

        dir = Path(dir)
        dir.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, np.ndarray] = {}
        texts: dict[str, list[str]] = {}
        splits_meta: dict[str, dict] = {}
        for name, sp in self.splits.items():
            arrays[f"{name}.labels"] = np.ascontiguousarray(sp.labels)
            arrays[f"{name}.rows"] = np.ascontiguousarray(sp.rows, dtype=np.int64)
            if sp.features is not None:
                arrays[f"{name}.features"] = np.ascontiguousarray(sp.features, dtype=np.float32)
            if sp.texts is not None:
                texts[name] = list(sp.texts)
            splits_meta[name] = {
                "n": len(sp),
                "features": sp.features is not None,
                "texts": sp.texts is not None,
                "source": sp.source,
            }
        if self.norm_mean is not None:
            arrays["norm_mean"] = np.ascontiguousarray(self.norm_mean, dtype=np.float32)
            arrays["norm_std"] = np.ascontiguousarray(self.norm_std, dtype=np.float32)
        save_file(arrays, str(dir / "arrays.safetensors"))
        if texts:
            (dir / "texts.json").write_text(json.dumps(texts, ensure_ascii=False), encoding="utf-8")
        has_tok = False
        if self.tokenizer_dir is not None:
            src = Path(self.tokenizer_dir)
            dst = dir / "tokenizer"
            if src.resolve() != dst.resolve():
                if dst.exists():
                    shutil.rmtree(dst)
                shutil.copytree(src, dst)
            has_tok = True
        meta = {
            "format_version": FORMAT_VERSION,
            "splits": splits_meta,
            "modality": self.modality,
            "input_shape": None if self.input_shape is None else list(self.input_shape),
            "label_names": self.label_names,
            "num_classes": self.num_classes,
            "max_length": self.max_length,
            "sampler": self.sampler,
            "tokenizer": has_tok,
            "source": self.source,
            "label_column": self.label_column,
            "text_column": self.text_column,
            "feature_names": self.feature_names,
        }
        (dir / "dataset.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")

    @classmethod
    def load(cls, dir: Path) -> "Dataset":
        from safetensors.numpy import load_file

        dir = Path(dir)
        meta = json.loads((dir / "dataset.json").read_text(encoding="utf-8"))
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{dir}: unsupported Dataset format {meta.get('format_version')!r}")
        arrays = load_file(str(dir / "arrays.safetensors"))
        texts = {}
        if (dir / "texts.json").exists():
            texts = json.loads((dir / "texts.json").read_text(encoding="utf-8"))
        splits: dict[str, Split] = {}
        for name, sm in meta["splits"].items():
            labels = arrays[f"{name}.labels"]
            rows = arrays[f"{name}.rows"]
            feats = arrays.get(f"{name}.features") if sm["features"] else None
            txt = texts.get(name) if sm["texts"] else None
            n = sm["n"]
            if len(labels) != n or len(rows) != n or (feats is not None and len(feats) != n) or (
                sm["texts"] and (txt is None or len(txt) != n)
            ):
                raise ValueError(f"{dir}: split `{name}` is inconsistent with dataset.json")
            splits[name] = Split(feats, txt, labels, rows, sm.get("source"))
        tok = dir / "tokenizer"
        return cls(
            splits=splits,
            modality=meta["modality"],
            input_shape=None if meta["input_shape"] is None else tuple(meta["input_shape"]),
            label_names=meta["label_names"],
            num_classes=meta["num_classes"],
            norm_mean=arrays.get("norm_mean"),
            norm_std=arrays.get("norm_std"),
            max_length=meta["max_length"],
            sampler=meta["sampler"],
            tokenizer_dir=tok if meta.get("tokenizer") and tok.is_dir() else None,
            source=meta["source"],
            label_column=meta.get("label_column"),
            text_column=meta.get("text_column"),
            feature_names=meta.get("feature_names"),
        )


# --------------------------------------------------------------------------------------------
# Checks used by downstream stages


def check_labels(dataset: Dataset, num_labels: int, task: str | None = None) -> None:
    """Raise FTP510 when the labels don't fit a `classify(labels = N)` (or `regress(outputs = N)`)
    head, naming the file, the first offending row and the label column."""
    col = dataset.label_column or "label"
    task = task or dataset.task
    if task == "regress":
        if dataset.num_classes is not None and dataset.label_names is not None:
            return  # integer labels used as regression targets: see regression_targets()
        k = dataset.num_outputs
        if k != num_labels:
            raise StageError(
                BAD_DATA,
                f"`{dataset.source}`: the data has {k} regression target column(s) but the model "
                f"predicts regress(outputs = {num_labels})",
                f"use regress(outputs = {k})",
            )
        return
    if dataset.num_classes is None:
        raise StageError(
            BAD_DATA,
            f"`{dataset.source}`, column `{col}`: labels are real numbers (a regression target), "
            f"but the model is classify(labels = {num_labels})",
            "use task = regress(outputs = 1), or integer / text labels for classification",
        )
    for name, sp in dataset.splits.items():
        bad = np.nonzero((sp.labels < 0) | (sp.labels >= num_labels))[0]
        if bad.size:
            i = int(bad[0])
            v = int(sp.labels[i])
            shown = dataset.label_names[v] if dataset.label_names and 0 <= v < len(dataset.label_names) else str(v)
            src = sp.source or dataset.source
            raise StageError(
                BAD_DATA,
                f"`{src}`, row {int(sp.rows[i])}, column `{col}` ({name} split): label {shown!r} "
                f"is class {v}, outside the model's classify(labels = {num_labels}) "
                f"(classes 0..{num_labels - 1}); {bad.size} row(s) in this split are outside",
                f"the data has {dataset.num_classes} classes: use classify(labels = {dataset.num_classes})",
            )


def regression_targets(dataset: Dataset, split: Split) -> np.ndarray:
    """float32 [n, k] targets for a regress head, also from integer labels typed as classes."""
    if split.labels.ndim == 2:
        return split.labels.astype(np.float32)
    if dataset.label_names is not None:
        try:
            values = np.asarray([float(v) for v in dataset.label_names], dtype=np.float32)
            return values[split.labels][:, None]
        except ValueError:
            pass
    raise StageError(
        BAD_DATA,
        f"`{dataset.source}`, column `{dataset.label_column or 'label'}`: text labels cannot be "
        "regression targets",
    )


# --------------------------------------------------------------------------------------------
# Tokenizer


def train_wordpiece(texts: list[str], vocab: int, out_dir: Path, *, lowercase: bool = True,
                    max_length: int | None = None) -> Path:
    """Train a BERT-style WordPiece tokenizer ([PAD]=0, [UNK], [CLS] x [SEP]) and save it."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    specials = [SPECIAL_TOKENS[k] for k in ("pad_token", "unk_token", "cls_token", "sep_token", "mask_token")]
    tk = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tk.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
    tk.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(vocab_size=int(vocab), special_tokens=specials, show_progress=False)
    tk.train_from_iterator(texts, trainer=trainer, length=len(texts))
    cls_id, sep_id = tk.token_to_id("[CLS]"), tk.token_to_id("[SEP]")
    tk.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    tk.decoder = decoders.WordPiece(prefix="##")
    assert tk.token_to_id("[PAD]") == 0
    out_dir = Path(out_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    tk.save(str(out_dir / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": int(max_length) if max_length else 512,
        "do_lower_case": lowercase,
        "clean_up_tokenization_spaces": False,
        **SPECIAL_TOKENS,
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=1), encoding="utf-8")
    (out_dir / "special_tokens_map.json").write_text(json.dumps(SPECIAL_TOKENS, indent=1), encoding="utf-8")
    return out_dir


def load_tokenizer(path_or_dir: str | Path):
    """A `transformers.PreTrainedTokenizerFast` from a folder holding tokenizer.json (or the file)."""
    p = Path(path_or_dir)
    file = p / "tokenizer.json" if p.is_dir() else p
    if not file.is_file():
        raise StageError(NOT_FOUND, f"no tokenizer at {p} (expected tokenizer.json)")
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer.from_file(str(file))
    specials = {k: v for k, v in SPECIAL_TOKENS.items() if tk.token_to_id(v) is not None}
    max_len = None
    cfg = file.parent / "tokenizer_config.json"
    if cfg.is_file():
        try:
            max_len = json.loads(cfg.read_text(encoding="utf-8")).get("model_max_length")
        except (ValueError, OSError):
            max_len = None
    kwargs: dict[str, Any] = dict(specials)
    if isinstance(max_len, int):
        kwargs["model_max_length"] = max_len
    return PreTrainedTokenizerFast(tokenizer_object=tk, **kwargs)


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


def _load_part(call: dict, ctx, attrs: dict) -> Part:
    kind = call.get("$call") if isinstance(call, dict) else None
    if kind in ("csv", "jsonl", "parquet"):
        table = S.read_file_call(call, Path(ctx.pipeline_dir))
        label = attrs.get("label") or "label"
        return _part_from_table(table, text=attrs.get("text"), label=label, features=attrs.get("features"))
    if kind in ("sklearn", "synthetic"):
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
        parts.append((None, _load_part(base_call, ctx, attrs)))
    for name, call in explicit.items():
        parts.append((name, _load_part(call, ctx, attrs)))
    label_arrays, label_names, num_classes = _finalize_labels([p for _, p in parts])

    shapes = {tuple(p.features.shape[1:]) for _, p in parts if p.features is not None}
    if len(shapes) > 1:
        raise StageError(BAD_DATA, f"the data files have different feature shapes: {sorted(shapes)}")
    modality = "text" if text_col is not None else "features"
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
        whole = Split(part.features, part.texts, labels, part.rows, part.source)
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
        if modality != "text":
            raise StageError(BAD_DATA, "`tokenizer` needs text data: set `text = \"column\"`")
        if "train" not in splits:
            raise StageError(BAD_DATA, "`tokenizer` is trained on the `train` split, and there is none")
        from ftdsl.ir.lower import complete_call

        tok = complete_call(tok, "tokenizer")  # defaults from the schema, the one declaration
        vocab, lowercase = tok["vocab"], tok["lowercase"]
        tok_dir = train_wordpiece(
            splits["train"].texts, int(vocab), Path(ctx.out_dir) / "tokenizer",
            lowercase=bool(lowercase), max_length=max_length,
        )

    label_attr = attrs.get("label") or "label"
    if source is not None and source.get("$call") in ("sklearn", "synthetic"):
        label_col = "target"
    else:
        label_col = label_attr if isinstance(label_attr, str) else ", ".join(label_attr)
    main = base_call or source or explicit.get("train") or next(iter(explicit.values()))
    sizes = ", ".join(f"{n} {len(sp)}" for n, sp in splits.items())
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
    )


_BATCHING = {"iter_batches", "tokenize_split", "num_batches", "padding_stats", "batch_indices", "pad_token_id"}


def __getattr__(name: str):  # lazy re-export: importing data.py does not import torch
    if name in _BATCHING:
        from ftdsl.stages import batching

        return getattr(batching, name)
    raise AttributeError(name)
