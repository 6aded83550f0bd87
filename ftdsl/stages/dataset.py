"""The `Dataset` artifact (docs/internals.md §2): splits of features or texts with typed labels,
its saved form, and the checks downstream stages run against it.

Saved form (`Dataset.save(dir)`), never pickle:

    dir/dataset.json          metadata (modality, shapes, label names, split sizes, ...)
    dir/arrays.safetensors    "<split>.features" / ".labels" / ".rows" (/ ".lines"), "norm_mean", "norm_std"
    dir/texts.json            {"<split>": [str, ...]}            (text data only)
    dir/records.json          {"<split>": [{...}, ...]}          (instructions, text_pairs, tagged)
    dir/tokenizer/            tokenizer.json + tokenizer_config.json (when a tokenizer was trained)

`Dataset.load` validates everything it reads (structure, dtypes, shapes, finite values, label
ranges): a cache entry whose checksums match but whose content is not a valid dataset raises
StageError FTP503, so the executor quarantines it and computes it again (never exit 70).
No torch here.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ftdsl.errors import StageError
from ftdsl.ir.schema.modality import CHAT_ROLES

__all__ = ["Split", "Dataset", "check_labels", "regression_targets", "record_texts", "FORMAT_VERSION",
           "SPLIT_ORDER", "ROLES", "RECORD_MODALITIES"]

BAD_DATA = "FTP510"
FORMAT_VERSION = 1
SPLIT_ORDER = ("train", "valid", "test")
_EXAMPLES = 5  # offending rows shown in a message
ROLES = CHAT_ROLES  # the roles a chat message may have (the schema's table)
# modalities whose rows are `Split.records` (formats: ftdsl/stages/tasks/__init__.py)
RECORD_MODALITIES = ("instructions", "text_pairs", "tagged")


@dataclass(eq=False)  # numpy fields: compare explicitly, not with ==
class Split:
    features: np.ndarray | None  # float32 [n, *input_shape], raw (not normalized)
    texts: list[str] | None  # raw text
    labels: np.ndarray  # int64 [n] (classify) or float32 [n, k] (regress)
    rows: np.ndarray  # int64 [n]: 1-based data row in `source` (for messages)
    source: str | None = None  # the file these rows come from (None: Dataset.source)
    lines: np.ndarray | None = None  # int64 [n]: the file line of each row (csv, jsonl), for messages
    # one dict per row for the structured modalities (instructions, text_pairs, tagged):
    # {"prompt", "response"} | {"messages": [{"role", "content"}, ...]} | {"source", "target"} |
    # {"tokens": [str, ...], "tags": [str, ...]}
    records: list[dict] | None = None
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
            None if self.lines is None else np.ascontiguousarray(self.lines[idx]),
            None if self.records is None else [self.records[i] for i in idx],
        )

    def where(self, i: int) -> str:
        """"row 17 (line 18)" for position i of this split."""
        out = f"row {int(self.rows[i])}"
        if self.lines is not None and int(self.lines[i]) > 0:
            out += f" (line {int(self.lines[i])})"
        return out


@dataclass(eq=False)
class Dataset:
    splits: dict[str, Split]
    modality: str  # "features" | "text" | "instructions" | "text_pairs" | "tagged"
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
    # False for data without labels: plain text with no label column, and the record modalities
    # (their labels array is zeros, num_classes None)
    labeled: bool = True

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
        records: dict[str, list[dict]] = {}
        splits_meta: dict[str, dict] = {}
        for name, sp in self.splits.items():
            arrays[f"{name}.labels"] = np.ascontiguousarray(sp.labels)
            arrays[f"{name}.rows"] = np.ascontiguousarray(sp.rows, dtype=np.int64)
            if sp.lines is not None:
                arrays[f"{name}.lines"] = np.ascontiguousarray(sp.lines, dtype=np.int64)
            if sp.features is not None:
                arrays[f"{name}.features"] = np.ascontiguousarray(sp.features, dtype=np.float32)
            if sp.texts is not None:
                texts[name] = list(sp.texts)
            if sp.records is not None:
                records[name] = list(sp.records)
            splits_meta[name] = {
                "n": len(sp),
                "features": sp.features is not None,
                "texts": sp.texts is not None,
                "records": sp.records is not None,
                "source": sp.source,
            }
        if self.norm_mean is not None:
            arrays["norm_mean"] = np.ascontiguousarray(self.norm_mean, dtype=np.float32)
            arrays["norm_std"] = np.ascontiguousarray(self.norm_std, dtype=np.float32)
        save_file(arrays, str(dir / "arrays.safetensors"))
        if texts:
            (dir / "texts.json").write_text(json.dumps(texts, ensure_ascii=False), encoding="utf-8")
        if records:
            (dir / "records.json").write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
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
            "labeled": self.labeled,
        }
        (dir / "dataset.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")

    @classmethod
    def load(cls, dir: Path) -> "Dataset":
        """The dataset saved in ``dir``; StageError FTP503 if anything in it is not what ``save``
        writes (the caller treats the cache entry as corrupt and recomputes it)."""
        from ftdsl.stages import dataset_check as check

        return check.load(cls, Split, Path(dir))


# --------------------------------------------------------------------------------------------
# Checks used by downstream stages


def _int_label_values(dataset: Dataset) -> np.ndarray | None:
    """class index -> the integer label written in the data, when the labels were integers."""
    names = dataset.label_names
    if not names:
        return None
    try:
        values = [int(n) for n in names]
    except (TypeError, ValueError):
        return None
    if [str(v) for v in values] != list(names):
        return None  # e.g. sklearn's "setosa", or "01"
    return np.asarray(values, dtype=np.int64)


def _label_shown(dataset: Dataset, cls_index: int) -> str:
    names = dataset.label_names
    if names and 0 <= cls_index < len(names):
        return repr(names[cls_index]) if _int_label_values(dataset) is None else names[cls_index]
    return str(cls_index)


def _label_order(s: str) -> tuple:
    try:
        return (0, int(s), s)
    except ValueError:
        return (1, 0, s)


def check_labels(dataset: Dataset, num_labels: int, task: str | None = None) -> None:
    """Raise FTP510 when the labels don't fit a `classify(labels = N)` (or `regress(outputs = N)`)
    head. For classification it names the offending label values as written in the file and the
    rows (and file lines) that hold them: a few examples and the count."""
    col = dataset.label_column or "label"
    if not dataset.labeled:
        what = ("has no label column" if dataset.modality == "text"
                else f"holds {dataset.modality.replace('_', ' ')} records, not labelled rows")
        raise StageError(
            BAD_DATA,
            f"`{dataset.source}` {what}, but the model is "
            f"{'regress' if (task or 'classify') == 'regress' else 'classify'}(...) and needs a label per row",
            "set `label = \"column\"` to the label column of the file, or use a task for this data "
            "(`causal_lm()` for plain text)" if dataset.modality == "text" else
            "use the task for this data: `causal_lm()` (instructions), `seq2seq()` (text pairs), "
            "`token_classify(labels = [..])` (tagged words)",
        )
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
    values = _int_label_values(dataset)
    # Integer labels are class numbers: a value outside 0..N-1 is wrong, whatever the others are
    # (the data stage renumbers labels that include negatives, so compare the values as written).
    if values is not None:
        bad_class = (values < 0) | (values >= num_labels)
    else:
        bad_class = np.arange(dataset.num_classes) >= num_labels
    if dataset.num_classes <= num_labels and values is not None and np.any(values < 0):
        bad_class[:] = False  # e.g. {-1, 1} as classify(labels = 2): renumbered 0, 1, no row is outside
    offending: list[tuple[str, int, str, str, str]] = []  # (source, row, where, split, label)
    for name, sp in dataset.splits.items():
        lab = np.asarray(sp.labels, dtype=np.int64)
        idx = np.nonzero((lab < 0) | (lab >= len(bad_class)) | bad_class[np.clip(lab, 0, len(bad_class) - 1)])[0]
        for i in idx.tolist():
            offending.append((sp.source or dataset.source, int(sp.rows[i]), sp.where(i), name,
                              _label_shown(dataset, int(lab[i]))))
    if not offending:
        return
    offending.sort(key=lambda t: (t[0], t[1]))
    sources = sorted({o[0] for o in offending})
    one_source = len(sources) == 1
    examples = "; ".join(
        f"{'' if one_source else f'`{src}` '}{where} has {label} ({split} split)"
        for src, _, where, split, label in offending[:_EXAMPLES]
    )
    more = f"; and {len(offending) - _EXAMPLES} more" if len(offending) > _EXAMPLES else ""
    distinct = sorted({o[4] for o in offending}, key=_label_order)
    head = f"`{sources[0]}`, column `{col}`" if one_source else f"column `{col}`"
    message = (
        f"{head}: {len(offending)} row(s) have a label outside the model's classify(labels = {num_labels}) "
        f"(classes 0..{num_labels - 1}): {examples}{more}; label(s) outside: {', '.join(distinct)}"
    )
    if values is not None:
        all_values = ", ".join(str(v) for v in sorted(values.tolist()))
        hint = (f"the data has {dataset.num_classes} distinct labels ({all_values}): fix or remove the rows above, "
                f"or use classify(labels = {dataset.num_classes})")
    else:
        hint = f"the data has {dataset.num_classes} classes: use classify(labels = {dataset.num_classes})"
    raise StageError(BAD_DATA, message, hint)


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


def record_texts(records: list[dict]) -> list[str]:
    """Every text of the records, one string per field (prompt, response, each message's content,
    source, target; a tagged row's words joined by spaces): what a tokenizer is trained on."""
    out: list[str] = []
    for r in records:
        if "messages" in r:
            out.extend(m["content"] for m in r["messages"])
        elif "prompt" in r:
            out.extend((r["prompt"], r["response"]))
        elif "source" in r:
            out.extend((r["source"], r["target"]))
        elif "tokens" in r:
            out.append(" ".join(r["tokens"]))
    return out
