"""Prediction input: CSV / TSV / JSONL rows read as a stream, each with its file line, and the
conversion of a row into what the model takes — the same columns and value rules as the data
stage (``ftdsl.stages._sources``: numbers from numeric strings, booleans and numbers; text as a
string), so a row that trains is a row that predicts.

A row that cannot be read (bad JSON, a missing column, a value of the wrong type) becomes a
:class:`BadRow` carrying its line; the engine skips it or stops, per ``--on-error``. A problem of
the whole file (no header, not UTF-8 where CSV needs it, an empty file, a header without a
needed column) is fatal at once. No torch here.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from ftdsl.errors import FtdslError, UsageError

BAD_INPUT = "FTP561"
FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
SHAPELESS_KEY = "features"  # data without column names (sklearn digits): the row gives them as one list


class BadRow(Exception):
    """A row that cannot be read or converted; ``line`` is its file line."""

    def __init__(self, line: int, message: str):
        super().__init__(message)
        self.line = line
        self.message = message


@dataclass
class Row:
    line: int  # the file line where the row ends (1-based)
    number: int  # the data row (1-based, header and blank lines not counted)
    values: dict[str, Any]


def input_format(path: str, given: str | None) -> str:
    if given:
        return given
    fmt = FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        raise UsageError("FTP001", f"cannot tell the format of `{path}` from its extension",
                         hint="name it .csv, .tsv or .jsonl, or pass --input-format csv|tsv|jsonl")
    return fmt


class Source:
    """The rows of one file, streamed; ``done_bytes``/``total_bytes`` drive the progress bar."""

    def __init__(self, path: str, fmt: str):
        from ftdsl.paths import open_regular, require_regular_file

        self.shown = path
        self.fmt = fmt
        try:
            st = require_regular_file(path, what="input file", shown=path, error=UsageError)
            self._fh = open_regular(path)
        except FileNotFoundError:
            raise UsageError("FTP001", f"no such file: {path}") from None
        except OSError as e:
            raise UsageError("FTP001", f"cannot read {path}: {e.strerror or e}") from None
        self.total_bytes = st.st_size
        self.done_bytes = 0
        self.columns: list[str] | None = None  # CSV header (JSONL: per row)
        self.header_line = 0

    def close(self) -> None:
        self._fh.close()

    def where(self, line: int) -> str:
        return f"{self.shown}:{line}"

    def fatal(self, line: int, message: str, hint: str | None = None) -> FtdslError:
        return FtdslError(BAD_INPUT, f"{self.where(line)}: {message}" if line else f"{self.shown}: {message}", hint)

    # -- raw lines --------------------------------------------------------------------------

    def _byte_lines(self) -> Iterator[bytes]:
        for raw in self._fh:
            self.done_bytes += len(raw)
            yield raw

    def rows(self) -> Iterator[Row | BadRow]:
        """Rows in file order; a BadRow for each row that cannot be read. Fatal problems raise."""
        if self.fmt == "jsonl":
            return self._jsonl()
        return self._csv("\t" if self.fmt == "tsv" else ",")

    def _jsonl(self) -> Iterator[Row | BadRow]:
        n = 0
        for ln, raw in enumerate(self._byte_lines(), start=1):
            if ln == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            if not raw.strip():
                continue
            n += 1
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield BadRow(ln, f"not UTF-8 text (byte {e.start} of the line)")
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as e:
                yield BadRow(ln, f"invalid JSON ({e.msg}, column {e.colno})")
                continue
            if not isinstance(obj, dict):
                yield BadRow(ln, f"expected a JSON object, found {_json_type(obj)}")
                continue
            yield Row(ln, n, obj)
        if n == 0:
            raise self.fatal(0, "the input is empty (no rows)", "give one JSON object per line")

    def _csv(self, delimiter: str) -> Iterator[Row | BadRow]:
        state = {"line": 0}

        def lines() -> Iterator[str]:
            for raw in self._byte_lines():
                state["line"] += 1
                if state["line"] == 1 and raw.startswith(b"\xef\xbb\xbf"):
                    raw = raw[3:]
                try:
                    yield raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise self.fatal(state["line"], f"not UTF-8 text (byte {e.start} of the line)",
                                     "save the file as UTF-8") from None

        quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
        reader = csv.reader(lines(), delimiter=delimiter, quoting=quoting, strict=True)
        n = 0
        while True:
            try:
                rec = next(reader)
            except StopIteration:
                break
            except csv.Error as e:
                if self.columns is None:
                    raise self.fatal(reader.line_num, f"malformed CSV header ({e})") from None
                n += 1
                yield BadRow(reader.line_num, f"malformed CSV ({e})")
                continue
            if not rec or (len(rec) == 1 and rec[0].strip() == ""):
                continue
            if self.columns is None:
                self.columns = [c.strip() or f"column{j + 1}" for j, c in enumerate(rec)]
                self.header_line = reader.line_num
                continue
            n += 1
            if len(rec) != len(self.columns):
                yield BadRow(reader.line_num, f"expected {len(self.columns)} fields (the header's), found {len(rec)}")
                continue
            yield Row(reader.line_num, n, dict(zip(self.columns, rec)))
        if self.columns is None:
            raise self.fatal(0, "the input is empty (no header, no rows)", "the first line names the columns")
        if n == 0:
            raise self.fatal(self.header_line, "the input has a header but no rows")


def _json_type(v: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(v), "a number")


def _shown(v: Any) -> str:
    s = json.dumps(v) if not isinstance(v, str) else repr(v)
    return s if len(s) <= 60 else s[:57] + "..."


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, str) and v.strip() == "") or (isinstance(v, float) and math.isnan(v))


# --------------------------------------------------------------------------------------------
# Rows -> model inputs. INPUT_KINDS: modality -> a factory of converters; the generative and
# token families (prompt / source columns, word lists) add theirs here.


def _number(row: Row, column: str) -> float:
    if column not in row.values:
        raise BadRow(row.line, f"no column `{column}` (a feature); the row has: "
                               + (", ".join(f"`{c}`" for c in row.values) or "(nothing)"))
    v = row.values[column]
    if _missing(v):
        raise BadRow(row.line, f"column `{column}`: missing value")
    if isinstance(v, (list, dict)):
        raise BadRow(row.line, f"column `{column}`: expected a number, found {_shown(v)}")
    try:
        f = float(v)
    except (TypeError, ValueError, OverflowError):
        raise BadRow(row.line, f"column `{column}`: could not convert {_shown(v)} to a number") from None
    if not math.isfinite(f):
        raise BadRow(row.line, f"column `{column}`: {_shown(v)} is not a finite number")
    return f


def features_converter(names: list[str] | None, input_shape) -> Callable[[Row], np.ndarray]:
    shape = tuple(int(s) for s in (input_shape or ([len(names)] if names else [])))
    size = int(np.prod(shape)) if shape else 0

    def named(row: Row) -> np.ndarray:
        return np.asarray([_number(row, c) for c in names], dtype=np.float32).reshape(shape)

    def listed(row: Row) -> np.ndarray:
        v = row.values.get(SHAPELESS_KEY)
        if v is None:
            raise BadRow(row.line, f"no column `{SHAPELESS_KEY}` (the data has no column names: give the "
                                   f"{size} inputs as one list)")
        if isinstance(v, str):
            try:
                v = json.loads(v)
            except json.JSONDecodeError:
                raise BadRow(row.line, f"column `{SHAPELESS_KEY}`: expected a list of {size} numbers") from None
        if not isinstance(v, list) or len(v) != size:
            raise BadRow(row.line, f"column `{SHAPELESS_KEY}`: expected a list of {size} numbers, found "
                                   f"{_shown(v)}")
        tmp = Row(row.line, row.number, {f"{SHAPELESS_KEY}[{i}]": x for i, x in enumerate(v)})
        return np.asarray([_number(tmp, f"{SHAPELESS_KEY}[{i}]") for i in range(size)],
                          dtype=np.float32).reshape(shape)

    return named if names else listed


def text_converter(column: str) -> Callable[[Row], str]:
    def convert(row: Row) -> str:
        if column not in row.values:
            raise BadRow(row.line, f"no column `{column}` (the text); the row has: "
                                   + (", ".join(f"`{c}`" for c in row.values) or "(nothing)"))
        v = row.values[column]
        if v is None or (isinstance(v, float) and math.isnan(v)):
            raise BadRow(row.line, f"column `{column}`: missing text")
        if isinstance(v, (list, dict)):
            raise BadRow(row.line, f"column `{column}`: expected text, found {_shown(v)}")
        return v if isinstance(v, str) else str(v)

    return convert


INPUT_KINDS: dict[str, Callable[..., Callable[[Row], Any]]] = {
    "features": lambda schema: features_converter(schema.feature_names, schema.input_shape),
    "text": lambda schema: text_converter(schema.text_column),
}


@dataclass
class InputSchema:
    """What a row must hold: the data stage's columns, as the model was trained on them."""

    modality: str  # "features" | "text"
    feature_names: list[str] | None = None
    input_shape: Any = None
    text_column: str | None = None

    @property
    def columns(self) -> list[str]:
        if self.modality == "text":
            return [self.text_column] if self.text_column else []
        return list(self.feature_names or [SHAPELESS_KEY])

    def converter(self) -> Callable[[Row], Any]:
        return INPUT_KINDS[self.modality](self)


def check_header(source: Source, schema: InputSchema) -> None:
    """A CSV header without a needed column is fatal (every row would fail), at the header's line."""
    if source.columns is None:
        return
    missing = [c for c in schema.columns if c not in source.columns]
    if missing:
        import difflib

        close = difflib.get_close_matches(missing[0], source.columns, n=1, cutoff=0.6)
        raise source.fatal(source.header_line,
                           f"no column {', '.join(f'`{c}`' for c in missing[:5])} (the model's "
                           f"{'text' if schema.modality == 'text' else 'features'}); the header has: "
                           + ", ".join(f"`{c}`" for c in source.columns),
                           f"did you mean `{close[0]}`?" if close else
                           f"the model reads {', '.join(f'`{c}`' for c in schema.columns[:8])}")
