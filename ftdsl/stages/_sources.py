"""Readers behind the `data` stage: csv / jsonl / parquet files, sklearn toy sets, synthetic data.

Every reader returns a `Table` (named columns of raw Python values, or numpy arrays for parquet
numeric columns) or a `Part` (already numeric: sklearn and synthetic sources). All user-caused
failures are `StageError`s: FTP511 for a file that cannot be found or opened, FTP510 for bad
content, with the file, the row and the column in the message. No torch here.
"""

from __future__ import annotations

import csv
import difflib
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ftdsl.errors import StageError
from ftdsl.paths import read_regular_bytes
from ftdsl.ir.schema.modality import SKLEARN_DATASETS

BAD_DATA = "FTP510"
NOT_FOUND = "FTP511"

SKLEARN_SETS = tuple(SKLEARN_DATASETS)  # the schema's table (classes, shape, modality of each)


def resolve_input(pipeline_dir: Path, p: str) -> Path:
    """Resolve a path written in the pipeline against its folder (ftdsl.paths.resolve_input)."""
    from ftdsl.paths import resolve_input as _resolve_input

    return _resolve_input(pipeline_dir, p)


# --------------------------------------------------------------------------------------------
# Tables


@dataclass
class Table:
    """Raw columns of one file. `lines[i]` is the file line where data row i+1 ends (or None)."""

    shown: str  # the path as written in the pipeline, for messages
    columns: list[str]
    data: dict[str, Any]  # column -> list of raw values (None = missing) or np.ndarray
    lines: list[int] | None = None
    hint_extra: str | None = None  # e.g. "looks tab-separated"

    @property
    def n(self) -> int:
        if not self.columns:
            return 0
        return len(self.data[self.columns[0]])

    def where(self, i: int | None = None, column: str | None = None) -> str:
        """"`data/x.csv`, row 17 (line 18), column `age`" for data row index i (0-based)."""
        out = f"`{self.shown}`"
        if i is not None:
            out += f", row {i + 1}"
            if self.lines is not None and self.lines[i] is not None:
                out += f" (line {self.lines[i]})"
        if column is not None:
            out += f", column `{column}`"
        return out

    def require(self, column: str, role: str) -> Any:
        """The values of `column`, or FTP510 listing the columns there are (+ did you mean)."""
        if column in self.data:
            return self.data[column]
        avail = ", ".join(f"`{c}`" for c in self.columns) or "(none)"
        close = difflib.get_close_matches(column, self.columns, n=1, cutoff=0.6)
        if not close:  # case-insensitive match ("Label" vs "label")
            close = [c for c in self.columns if c.lower() == column.lower()][:1]
        hint = f"did you mean `{close[0]}`?" if close else None
        if self.hint_extra:
            hint = f"{hint} {self.hint_extra}" if hint else self.hint_extra
        raise StageError(
            BAD_DATA,
            f"{self.where()}: no column `{column}` (the {role}); available columns: {avail}",
            hint,
        )


def _fmt_value(v: Any) -> str:
    s = repr(v) if isinstance(v, str) else json.dumps(v) if isinstance(v, (list, dict)) else repr(v)
    return s if len(s) <= 60 else s[:57] + "..."


def _is_missing(v: Any) -> bool:
    if v is None:
        return True
    if isinstance(v, str) and v.strip() == "":
        return True
    if isinstance(v, float) and math.isnan(v):
        return True
    return False


def numeric_column(table: Table, column: str, role: str = "feature", hint: str | None = None) -> np.ndarray:
    """float64 [n] of a column; FTP510 naming the first bad row otherwise."""
    vals = table.require(column, role)
    arr: np.ndarray | None = None
    if isinstance(vals, np.ndarray) and vals.dtype.kind in "fiub":
        arr = vals.astype(np.float64)
    else:
        try:
            arr = np.asarray(vals, dtype=np.float64)
            if arr.ndim != 1:
                arr = None
        except (ValueError, TypeError, OverflowError):
            arr = None
    if arr is not None and np.isfinite(arr).all():
        return arr
    # slow path: find the first offending value and name it
    seq = vals.tolist() if isinstance(vals, np.ndarray) else vals
    for i, v in enumerate(seq):
        if _is_missing(v):
            raise StageError(BAD_DATA, f"{table.where(i, column)}: missing value", hint)
        if isinstance(v, bool):
            continue
        try:
            f = float(v)
        except (ValueError, TypeError, OverflowError):
            raise StageError(
                BAD_DATA,
                f"{table.where(i, column)}: could not convert {_fmt_value(v)} to a number",
                hint,
            ) from None
        if not math.isfinite(f):
            raise StageError(
                BAD_DATA, f"{table.where(i, column)}: {_fmt_value(v)} is not a finite number", hint
            )
    raise AssertionError("unreachable: numeric conversion failed without a bad value")  # pragma: no cover


def text_column(table: Table, column: str) -> list[str]:
    vals = table.require(column, "text")
    out: list[str] = []
    for i, v in enumerate(vals.tolist() if isinstance(vals, np.ndarray) else vals):
        if v is None or (isinstance(v, float) and math.isnan(v)):
            raise StageError(BAD_DATA, f"{table.where(i, column)}: missing text")
        if isinstance(v, (list, dict)):
            raise StageError(
                BAD_DATA, f"{table.where(i, column)}: expected text, found {_fmt_value(v)}"
            )
        out.append(v if isinstance(v, str) else str(v))
    return out


# --------------------------------------------------------------------------------------------
# File readers


def _read_text(path: Path, shown: str) -> str:
    if not path.exists():
        raise StageError(
            NOT_FOUND,
            f"data file `{shown}` not found (looked for {path})",
            "paths in a pipeline are relative to the .ftp file's folder",
        )
    if path.is_dir():
        raise StageError(NOT_FOUND, f"`{shown}` is a folder, not a data file ({path})")
    _require_regular(path, shown)
    try:
        raw = read_regular_bytes(path)  # checked again on the open descriptor: no FIFO swapped in
    except OSError as e:
        raise StageError(NOT_FOUND, f"cannot read `{shown}` ({path}): {e.strerror or e}") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise StageError(
            BAD_DATA,
            f"`{shown}`, line {line}: not UTF-8 text (byte {e.start})",
            "save the file as UTF-8",
        ) from None


def _require_regular(path: Path, shown: str) -> None:
    """FTP004 before opening a FIFO, device or socket (reading one never ends)."""
    from ftdsl.paths import require_regular_file

    try:
        require_regular_file(path, what="data file", shown=shown, error=StageError)
    except OSError as e:
        raise StageError(NOT_FOUND, f"cannot read `{shown}` ({path}): {e.strerror or e}") from None


def read_csv(path: Path, shown: str, delimiter: str = ",", header: bool = True) -> Table:
    """Read a delimited file. A tab delimiter means TSV: no quoting, fields split on every tab."""
    if not isinstance(delimiter, str) or len(delimiter) != 1:
        raise StageError(
            BAD_DATA,
            f"`{shown}`: the delimiter must be one character, got {delimiter!r}",
            'write csv(path, delimiter = "\\t") for tab-separated files',
        )
    text = _read_text(path, shown)
    if not text.strip():
        raise StageError(BAD_DATA, f"`{shown}` is empty")
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, quoting=quoting, strict=True)
    records: list[list[str]] = []
    lines: list[int] = []
    try:
        for rec in reader:
            if not rec or (len(rec) == 1 and rec[0].strip() == ""):
                continue  # blank line
            records.append(rec)
            lines.append(reader.line_num)
    except csv.Error as e:
        raise StageError(BAD_DATA, f"`{shown}`, line {reader.line_num}: malformed CSV ({e})") from None
    if header:
        names = [c.strip() for c in records[0]]
        head_line = lines[0]
        records, lines = records[1:], lines[1:]
        for j, c in enumerate(names):
            if not c:
                names[j] = f"column{j + 1}"
        seen: set[str] = set()
        for c in names:
            if c in seen:
                raise StageError(
                    BAD_DATA, f"`{shown}`, line {head_line}: the header names column `{c}` twice"
                )
            seen.add(c)
    else:
        width = len(records[0])
        names = [f"c{j}" for j in range(width)]
    hint_extra = None
    if len(names) == 1 and delimiter != "\t" and "\t" in records_head(text):
        hint_extra = 'the file looks tab-separated: use csv(path, delimiter = "\\t")'
    if not records:
        raise StageError(BAD_DATA, f"`{shown}` has a header but no data rows")
    width = len(names)
    cols: list[list[str]] = [[] for _ in range(width)]
    for i, rec in enumerate(records):
        if len(rec) != width:
            raise StageError(
                BAD_DATA,
                f"`{shown}`, row {i + 1} (line {lines[i]}): expected {width} fields, found {len(rec)}",
                hint_extra
                or (f'is the delimiter right? (now "{delimiter}")' if len(rec) > width else None),
            )
        for j, v in enumerate(rec):
            cols[j].append(v)
    return Table(shown, names, dict(zip(names, cols)), lines, hint_extra)


def records_head(text: str) -> str:
    return text.split("\n", 1)[0]


def read_jsonl(path: Path, shown: str) -> Table:
    text = _read_text(path, shown)
    if not text.strip():
        raise StageError(BAD_DATA, f"`{shown}` is empty")
    rows: list[dict] = []
    lines: list[int] = []
    for ln, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise StageError(
                BAD_DATA,
                f"`{shown}`, row {len(rows) + 1} (line {ln}): invalid JSON ({e.msg}, column {e.colno})",
                "each line of a .jsonl file is one JSON object",
            ) from None
        if not isinstance(obj, dict):
            raise StageError(
                BAD_DATA,
                f"`{shown}`, row {len(rows) + 1} (line {ln}): expected a JSON object, found {type(obj).__name__}",
            )
        rows.append(obj)
        lines.append(ln)
    names: list[str] = []
    seen: set[str] = set()
    for obj in rows:
        for k in obj:
            if k not in seen:
                seen.add(k)
                names.append(k)
    data = {c: [obj.get(c) for obj in rows] for c in names}
    return Table(shown, names, data, lines)


def read_parquet(path: Path, shown: str) -> Table:
    if not path.exists() or path.is_dir():
        _read_text(path, shown)  # raises the not-found / folder error
    _require_regular(path, shown)
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as e:
        raise StageError(BAD_DATA, f"`{shown}`: cannot read it as Parquet ({e})") from None
    if table.num_rows == 0:
        raise StageError(BAD_DATA, f"`{shown}` has no rows")
    data: dict[str, Any] = {}
    for name in table.column_names:
        col = table.column(name)
        t = col.type
        if col.null_count == 0 and (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)):
            data[name] = col.to_numpy()
        else:
            data[name] = col.to_pylist()
    return Table(shown, list(table.column_names), data, None)


# --------------------------------------------------------------------------------------------
# Ready-made sources (sklearn, synthetic)


@dataclass
class Part:
    """Rows from one source, typed except for the labels (mapped later, across all parts)."""

    source: str  # for messages
    features: np.ndarray | None  # float32 [n, *shape]
    texts: list[str] | None
    labels_raw: Any  # list / ndarray of raw label values, or float ndarray [n, k] for regress
    where: Callable[[int | None, str | None], str]
    label_column: str | None = None
    label_names: list[str] | None = None  # preset names (sklearn target_names)
    feature_names: list[str] | None = None
    rows: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    lines: np.ndarray | None = None  # int64 [n]: file line of each row (0 = unknown), for messages
    records: list[dict] | None = None  # the structured modalities' rows (ftdsl.stages._records)
    labeled: bool = True  # False: no label column (labels_raw is zeros)

    @property
    def n(self) -> int:
        return len(self.labels_raw)


def _simple_where(name: str) -> Callable[[int | None, str | None], str]:
    def where(i: int | None = None, column: str | None = None) -> str:
        out = f"`{name}`"
        if i is not None:
            out += f", row {i + 1}"
        if column is not None:
            out += f", column `{column}`"
        return out

    return where


def load_sklearn(name: str) -> Part:
    if name not in SKLEARN_SETS:
        close = difflib.get_close_matches(str(name), SKLEARN_SETS, n=1)
        raise StageError(
            BAD_DATA,
            f"unknown sklearn dataset {name!r}; available: {', '.join(SKLEARN_SETS)}",
            f"did you mean {close[0]!r}?" if close else None,
        )
    from sklearn import datasets

    loader = getattr(datasets, f"load_{name}")
    b = loader()
    if name == "digits":
        x = np.asarray(b.images, dtype=np.float32)[:, None, :, :]  # [n, 1, 8, 8]
    else:
        x = np.asarray(b.data, dtype=np.float32)
    y = np.asarray(b.target, dtype=np.int64)
    names = [str(t) for t in b.target_names]
    feat = [str(f) for f in getattr(b, "feature_names", [])] or None
    src = f"sklearn({name})"
    return Part(
        src, np.ascontiguousarray(x), None, y, _simple_where(src),
        label_names=names, feature_names=feat if name != "digits" else None,
        rows=np.arange(1, len(y) + 1, dtype=np.int64),
    )


def load_synthetic(call: dict, default_seed: int) -> Part:
    from ftdsl.ir.lower import complete_call

    call = complete_call(call, "source")  # defaults from the schema, the one declaration
    task = call["task"]
    n, k, classes = int(call["n"]), int(call["features"]), int(call["classes"])
    seed = call.get("seed")
    seed = default_seed if seed is None else int(seed)
    src = f"synthetic({task})"
    if n < 1 or k < 1:
        raise StageError(BAD_DATA, f"{src}: n and features must be at least 1 (n = {n}, features = {k})")
    from sklearn import datasets

    if task == "regress":
        x, y = datasets.make_regression(
            n_samples=n, n_features=k, n_informative=max(1, k // 2), noise=0.1, random_state=seed
        )
        labels = np.asarray(y, dtype=np.float32).reshape(n, 1)
    elif task == "classify":
        if classes < 2:
            raise StageError(BAD_DATA, f"{src}: classes must be at least 2 (got {classes})")
        need = max(2, math.ceil(math.log2(classes)))
        if need > k:
            raise StageError(
                BAD_DATA,
                f"{src}: {classes} classes need at least {need} features (got {k})",
                f"use features = {need} or more",
            )
        informative = min(k, max(need, k // 2))
        redundant = min(2, k - informative)
        x, y = datasets.make_classification(
            n_samples=n, n_features=k, n_informative=informative, n_redundant=redundant,
            n_repeated=0, n_classes=classes, n_clusters_per_class=1, random_state=seed,
        )
        labels = np.asarray(y, dtype=np.int64)
    else:
        raise StageError(BAD_DATA, f"synthetic(task = {task!r}): task must be classify or regress")
    return Part(
        src, np.ascontiguousarray(x, dtype=np.float32), None, labels, _simple_where(src),
        label_names=[str(c) for c in range(classes)] if task == "classify" else None,
        feature_names=[f"x{j}" for j in range(k)],
        rows=np.arange(1, n + 1, dtype=np.int64),
    )


def read_file_call(call: dict, pipeline_dir: Path) -> Table:
    kind = call.get("$call")
    p = call.get("path")
    if not isinstance(p, str) or not p:
        raise StageError(BAD_DATA, f"{kind}(...) needs a path")
    path = resolve_input(pipeline_dir, p)
    if kind == "csv":
        from ftdsl.ir.lower import complete_call

        call = complete_call(call, "source")  # defaults from the schema
        header = call["header"]
        return read_csv(path, p, call["delimiter"] or ",", True if header is None else bool(header))
    if kind == "jsonl":
        return read_jsonl(path, p)
    if kind == "parquet":
        return read_parquet(path, p)
    raise StageError(BAD_DATA, f"unknown data source {kind!r}")  # pragma: no cover


def describe(call: dict) -> str:
    kind = call.get("$call")
    if kind in ("csv", "jsonl", "parquet"):
        return str(call.get("path"))
    if kind == "sklearn":
        return f"sklearn({call.get('name')})"
    return f"{kind}({call.get('task', '')})"
