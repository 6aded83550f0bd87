"""Prediction records and the files they are written to.

``TASK_OUTPUTS`` is the registry of task families: ``task -> TaskOutput``, where ``records``
turns one batch of raw model outputs into one JSON-ready record per row and ``flat`` turns a
record into CSV cells. Today: ``classify`` (label name + probabilities, softmax of the logits)
and ``regress`` (the values, named by the target columns). The generative and token-level
families (``causal_lm``/``seq2seq``: generated text; ``token_classify``: tags) make their records
from rows rather than from an output array: ``ftdsl.predict.seq`` (its ``flat`` writes tokens and
tags as JSON lists in CSV); they share the file writers.

Every record starts with ``row`` (the 1-based data row of the input) and ``line`` (its file
line), so a prediction can be joined back to its input even when bad rows were skipped.

Writers: ``jsonl`` (one object per line) and ``csv`` (a header from the first record). A file
output is written to a temporary file beside it and renamed into place when complete (atomic:
an interrupted predict never leaves half a file under the final name).
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TextIO

import numpy as np

from ftdsl.errors import UsageError


@dataclass
class TaskOutput:
    records: Callable[[np.ndarray, "OutputContext"], list[dict]]
    flat: Callable[[dict], dict]


@dataclass
class OutputContext:
    label_names: list[str] | None = None  # classify: class index -> name
    target_names: list[str] | None = None  # regress: output index -> name
    digits: int | None = None  # round probabilities / values (None: full float precision)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _round(v: float, digits: int | None) -> float:
    return float(v) if digits is None else round(float(v), digits)


def _classify(out: np.ndarray, ctx: OutputContext) -> list[dict]:
    probs = softmax(out)
    k = probs.shape[1]
    names = ctx.label_names if ctx.label_names and len(ctx.label_names) == k else [str(i) for i in range(k)]
    top = probs.argmax(axis=1)
    return [{"label": names[int(t)], "probabilities": {n: _round(p, ctx.digits) for n, p in zip(names, row)}}
            for t, row in zip(top, probs)]


def _classify_flat(rec: dict) -> dict:
    out = {k: v for k, v in rec.items() if k != "probabilities"}
    out.update({f"prob_{n}": p for n, p in rec["probabilities"].items()})
    return out


def _regress(out: np.ndarray, ctx: OutputContext) -> list[dict]:
    out = np.asarray(out, dtype=np.float64).reshape(out.shape[0], -1)
    k = out.shape[1]
    if k == 1:
        return [{"value": _round(r[0], ctx.digits)} for r in out]
    names = ctx.target_names if ctx.target_names and len(ctx.target_names) == k else [str(i) for i in range(k)]
    return [{"values": {n: _round(v, ctx.digits) for n, v in zip(names, r)}} for r in out]


def _regress_flat(rec: dict) -> dict:
    if "values" not in rec:
        return dict(rec)
    out = {k: v for k, v in rec.items() if k != "values"}
    out.update({f"value_{n}": v for n, v in rec["values"].items()})
    return out


TASK_OUTPUTS: dict[str, TaskOutput] = {
    "classify": TaskOutput(_classify, _classify_flat),
    "regress": TaskOutput(_regress, _regress_flat),
}


def task_output(task: str) -> TaskOutput:
    if task not in TASK_OUTPUTS:
        raise UsageError("FTP562", f"predict cannot write `{task}` predictions yet",
                         hint="predict supports: " + ", ".join(TASK_OUTPUTS))
    return TASK_OUTPUTS[task]


# --------------------------------------------------------------------------------------------
# Files

OUTPUT_FORMATS = ("jsonl", "csv")


def output_format(path: str | None, given: str | None) -> str:
    if given:
        return given
    if path is None or path == "-":
        return "jsonl"
    ext = Path(path).suffix.lower()
    if ext in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    if ext == ".csv":
        return "csv"
    raise UsageError("FTP001", f"cannot tell the output format of `{path}` from its extension",
                     hint="name it .jsonl or .csv, or pass --format jsonl|csv")


class Writer:
    def __init__(self, stream: TextIO, fmt: str, flat: Callable[[dict], dict]):
        self.stream, self.fmt, self.flat = stream, fmt, flat
        self._csv: csv.DictWriter | None = None
        self.count = 0

    def write(self, records: list[dict]) -> None:
        if self.fmt == "jsonl":
            self.stream.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        else:
            for r in records:
                row = self.flat(r)
                if self._csv is None:
                    self._csv = csv.DictWriter(self.stream, fieldnames=list(row), lineterminator="\n")
                    self._csv.writeheader()
                self._csv.writerow(row)
        self.count += len(records)
        self.stream.flush()


class AtomicOutput:
    """A text file written under a temporary name beside ``path`` and renamed into place by
    ``commit()``; ``discard()`` removes it. Disk full / not writable: ResourceError (FTP505/508)."""

    def __init__(self, path: str):
        from ftdsl.runtime.atomic import as_resource_error

        self.path = Path(path)
        parent = self.path.parent if str(self.path.parent) else Path(".")
        if not parent.is_dir():
            raise UsageError("FTP001", f"cannot write {path}: no folder {parent}")
        try:
            fd, self.tmp = tempfile.mkstemp(dir=self.path.parent if str(self.path.parent) else ".",
                                            prefix=f".{self.path.name}.", suffix=".tmp")
        except OSError as e:
            raise (as_resource_error(e, self.path) or e) from None
        self.stream = io.open(fd, "w", encoding="utf-8", newline="")

    def commit(self) -> None:
        from ftdsl.runtime.atomic import as_resource_error, fsync_dir

        try:
            self.stream.flush()
            os.fsync(self.stream.fileno())
            os.fchmod(self.stream.fileno(), 0o666 & ~_umask())
            self.stream.close()
            os.replace(self.tmp, self.path)
            fsync_dir(self.path.parent if str(self.path.parent) else ".")
        except OSError as e:
            self.discard()
            raise (as_resource_error(e, self.path) or e) from None

    def discard(self) -> None:
        try:
            self.stream.close()
        except OSError:
            pass
        try:
            os.unlink(self.tmp)
        except OSError:
            pass


def _umask() -> int:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    return 0o022

