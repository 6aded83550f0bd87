"""The artifacts an `export` writes: `OnnxModel` (format = onnx) and `ExportedFile` (the rest),
and the file helpers every stage that writes them uses (`quantize` writes OnnxModels too).

Writes go through :func:`guarded_io` (a full disk, a file-size limit or a read-only folder
becomes FTP505 / FTP508) and :mod:`ftdsl.runtime.atomic` (JSON and bytes are written atomically).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ftdsl.errors import FtdslError, StageError
from ftdsl.stages.artifacts import copy_tokenizer_files, load_tokenizer_dir

__all__ = ["OnnxModel", "ExportedFile", "FORMAT_VERSION", "ONNX_FILE", "TOKENIZER_DIR", "copy_tokenizer",
           "link_or_copy", "copy_tree", "guarded_io", "raise_if_resource", "write_bytes", "write_json", "read_json"]

FORMAT_VERSION = 1
ONNX_FILE = "model.onnx"
TOKENIZER_DIR = "tokenizer"

# --------------------------------------------------------------------------------------------
# file helpers


def copy_tokenizer(src: Path | None, dst: Path) -> Path | None:
    """Copy the tokenizer files of ``src`` into ``dst`` (created); None when there is none."""
    if src is None or not Path(src).is_dir():
        return None
    return copy_tokenizer_files(src, dst, lambda f, t: guarded_io(lambda: shutil.copyfile(f, t), t))


def link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link (same filesystem: no second copy of a large model) or copy."""
    src, dst = Path(src), Path(dst)
    if src.resolve() == dst.resolve():
        return
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        dst.unlink()
    try:
        os.link(src, dst)
    except OSError:
        guarded_io(lambda: shutil.copyfile(src, dst), dst)


def copy_tree(src: Path, dst: Path) -> None:
    if Path(src).resolve() == Path(dst).resolve():
        return
    if dst.exists():
        shutil.rmtree(dst)
    guarded_io(lambda: shutil.copytree(src, dst), dst)


def raise_if_resource(e: BaseException, path: Path) -> None:
    """Raise ``e`` as FTP505 / FTP508 when it is a full disk, a size limit or a read-only folder."""
    from ftdsl.runtime.atomic import as_resource_error

    mapped = as_resource_error(e, path)
    if mapped is not None:
        raise mapped from e


def guarded_io(fn: Callable[[], Any], path: Path):
    """Run a write; a full disk / size limit / read-only folder becomes FTP505 / FTP508."""
    try:
        return fn()
    except FtdslError:
        raise
    except Exception as e:
        raise_if_resource(e, path)
        raise


def write_bytes(path: Path, data: bytes) -> None:
    from ftdsl.runtime.atomic import write_bytes_atomic

    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(path, data)


def write_json(path: Path, obj: Any) -> None:
    from ftdsl.runtime.atomic import write_json_atomic
    from ftdsl.stages.outputs import json_safe

    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, json_safe(obj))


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def _read_meta(dir: Path, name: str, kind: str) -> dict:
    meta = read_json(dir / name)
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{dir}: unsupported {kind} format {meta.get('format_version')!r}")
    return meta


# --------------------------------------------------------------------------------------------
# Artifacts


class OnnxModel:
    """An ONNX graph (one file, weights inside) + its metadata + the tokenizer (text models).

    ``meta`` (saved as ``onnx.json``): ``inputs`` (``["x"]`` or ``["input_ids",
    "attention_mask"]``), ``output`` (``"logits"``), ``modality``, ``task`` (the lowered call,
    e.g. ``{"$call": "classify", "labels": 3}``), ``input_shape``, ``opset``, ``quantization``
    (None here; the ONNX quantizer sets it), ``source`` (the stage it came from), and
    ``max_length`` / ``label_names`` / ``vocab_size`` where known. Other producers (ONNX
    quantization) build one with ``OnnxModel(path, meta, tokenizer_dir)`` and may add ``metrics``.
    """

    def __init__(self, onnx_path: Path, meta: dict, tokenizer_dir: Path | None = None, *,
                 metrics: dict | None = None):
        self.onnx_path = Path(onnx_path)
        self.meta = dict(meta)
        self.tokenizer_dir = Path(tokenizer_dir) if tokenizer_dir is not None else None
        self.metrics = dict(metrics if metrics is not None else self.meta.get("metrics") or {})
        self._sessions: dict = {}

    # -- queries ---------------------------------------------------------------------------

    trained = True  # an export is always of a trained model (the evaluate stage asks)

    @property
    def inputs(self) -> list[str]:
        return list(self.meta.get("inputs") or (["input_ids", "attention_mask"] if self.modality == "text" else ["x"]))

    @property
    def output(self) -> str:
        return self.meta.get("output") or "logits"

    @property
    def modality(self) -> str:
        return self.meta.get("modality") or "features"

    @property
    def task(self) -> dict:
        return self.meta.get("task") or {"$call": "classify"}

    @property
    def input_shape(self):
        return self.meta.get("input_shape")

    @property
    def spec(self) -> dict:
        """TorchModel-like view (``modality``, ``task``, ``input_shape``, ``max_length``)."""
        return {k: self.meta.get(k) for k in ("modality", "task", "input_shape", "max_length", "label_names",
                                              "vocab_size")}

    @property
    def data_path(self) -> Path | None:
        """External weights (only for a model over protobuf's 2 GB limit), else None."""
        p = self.onnx_path.with_name(self.onnx_path.name + ".data")
        return p if p.is_file() else None

    @property
    def size_bytes(self) -> int:
        n = self.onnx_path.stat().st_size
        if self.data_path is not None:
            n += self.data_path.stat().st_size
        return n

    def session(self, threads: int | None = None):
        """The onnxruntime InferenceSession (CPU provider), opened once per thread setting."""
        if threads not in self._sessions:
            from ftdsl.stages.onnx_utils import session

            try:
                self._sessions[threads] = session(self.onnx_path, threads=threads)
            except Exception as e:
                first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
                raise StageError("FTP503", f"onnxruntime cannot load {self.onnx_path}: {first}",
                                 hint="rerun the stage that wrote it with --force") from e
        return self._sessions[threads]

    def predict(self, inputs: dict[str, Any], *, threads: int | None = None) -> np.ndarray:
        """Logits (or regression values) for ``inputs``: numpy arrays (or torch tensors) keyed by
        the graph's input names; cast to the graph's dtypes."""
        from ftdsl.stages.onnx_utils import ort_feed

        sess = self.session(threads)
        return sess.run([sess.get_outputs()[0].name], ort_feed(sess, inputs))[0]

    def load_tokenizer(self):
        """The tokenizer saved beside the model (text models), or None."""
        return load_tokenizer_dir(self.tokenizer_dir, pretrained=self.meta.get("source_kind") == "pretrained")

    # -- persistence -----------------------------------------------------------------------

    def save(self, dir: Path) -> None:
        dir = Path(dir)
        dir.mkdir(parents=True, exist_ok=True)
        link_or_copy(self.onnx_path, dir / ONNX_FILE)
        if self.data_path is not None:
            link_or_copy(self.data_path, dir / (ONNX_FILE + ".data"))
        if self.tokenizer_dir is not None:
            copy_tokenizer(self.tokenizer_dir, dir / TOKENIZER_DIR)
        meta = {**self.meta, "format_version": FORMAT_VERSION, "metrics": self.metrics}
        write_json(dir / "onnx.json", meta)

    @classmethod
    def load(cls, dir: Path) -> "OnnxModel":
        dir = Path(dir)
        meta = _read_meta(dir, "onnx.json", "OnnxModel")
        if not (dir / ONNX_FILE).is_file():
            raise ValueError(f"{dir}: {ONNX_FILE} is missing")
        tok = dir / TOKENIZER_DIR
        return cls(dir / ONNX_FILE, meta, tok if tok.is_dir() else None)

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return f"OnnxModel({self.onnx_path}, opset={self.meta.get('opset')}, inputs={self.inputs})"


class ExportedFile:
    """A torchscript / pt2 / safetensors / hf export: files under ``root`` + ``export.json``.

    ``meta``: ``format``, ``main`` (the main file or folder, relative to root), ``files``
    (everything that belongs to the export, relative), ``modality``, ``task``, ``inputs``,
    ``source``. Loading never deserializes the model (no unpickling): only paths and metadata.
    """

    trained = True

    def __init__(self, root: Path, meta: dict, *, metrics: dict | None = None):
        self.root = Path(root)
        self.meta = dict(meta)
        self.metrics = dict(metrics if metrics is not None else self.meta.get("metrics") or {})

    @property
    def format(self) -> str:
        return self.meta["format"]

    @property
    def path(self) -> Path:
        return self.root / self.meta["main"]

    @property
    def files(self) -> list[Path]:
        return [self.root / f for f in self.meta.get("files", [self.meta["main"]])]

    @property
    def size_bytes(self) -> int:
        total = 0
        for p in self.files:
            if p.is_dir():
                total += sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
            elif p.is_file():
                total += p.stat().st_size
        return total

    def save(self, dir: Path) -> None:
        dir = Path(dir)
        files = dir / "files"
        files.mkdir(parents=True, exist_ok=True)
        for rel in self.meta.get("files", [self.meta["main"]]):
            src = self.root / rel
            if src.is_dir():
                copy_tree(src, files / rel)
            elif src.is_file():
                link_or_copy(src, files / rel)
        write_json(dir / "export.json", {**self.meta, "format_version": FORMAT_VERSION, "metrics": self.metrics})

    @classmethod
    def load(cls, dir: Path) -> "ExportedFile":
        dir = Path(dir)
        meta = _read_meta(dir, "export.json", "ExportedFile")
        art = cls(dir / "files", meta)
        missing = [str(p) for p in art.files if not p.exists()]
        if missing:
            raise ValueError(f"{dir}: missing {missing[0]}")
        return art

    def __repr__(self) -> str:  # pragma: no cover
        return f"ExportedFile({self.format}: {self.path})"
