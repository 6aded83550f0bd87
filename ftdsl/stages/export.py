"""The `export` stage and its artifacts: `OnnxModel` (format = onnx) and `ExportedFile` (the rest).

An export takes what the data block reads, raw (SPEC §6): features models take ``x`` (float32
``[B, *input_shape]``; the normalization is inside the graph), text models take ``input_ids``
and ``attention_mask`` (int64 ``[B, S]``) and ship their tokenizer beside the file. The batch
axis is dynamic (and the sequence axis for text), so any batch size runs.

Files under ``out/<stage>/`` (and copied to ``path`` when the block sets one)::

    onnx(opset)    model.onnx (one file, weights inside) + tokenizer/ (text) + onnx.json
    torchscript    model.pt (torch.jit.trace)            + tokenizer/ (text) + export.json
    pt2            model.pt2 (torch.export.save)          + tokenizer/ (text) + export.json
    safetensors    model.safetensors + spec.json (TorchModel.load reads the folder) + tokenizer/
    hf             hf/ (save_pretrained: config, weights, tokenizer; pretrained models only)

plus ``verify.json`` when ``verify`` is set. A user ``path`` gets the main file (or folder)
written atomically; a text model's tokenizer goes beside it as ``<stem>.tokenizer/``.

``verify = true`` compares the export with PyTorch on random but valid inputs (features:
noise at the scale of the data's normalization; text: token ids within the vocabulary with
random lengths) at three batch sizes; ``verify = { data = d.test, atol, rtol }`` uses up to
256 real rows of that split, tokenized with the model's tokenizer. A difference beyond
``|ort - torch| <= atol + rtol * |torch|`` is StageError FTP502 (exit 3).

Exporter choice and the reasons for it: see :mod:`ftdsl.stages.onnx_utils`.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ftdsl.errors import FtdslError, ResourceError, StageError

__all__ = ["OnnxModel", "ExportedFile", "run", "verify_onnx", "VERIFY_ATOL", "VERIFY_RTOL", "FORMAT_VERSION"]

FORMAT_VERSION = 1
VERIFY_ATOL = 1e-4  # the schema's defaults for `verify = true`
VERIFY_RTOL = 1e-3
VERIFY_MAX_ROWS = 256  # real rows used by `verify = { data = ... }`
RANDOM_BATCHES = (1, 5, 16)  # batch sizes of `verify = true` (features); text uses TEXT_BATCHES
TEXT_BATCHES = ((1, 7), (4, 16), (9, 40))  # (batch size, longest sequence) before the model's limit
ONNX_FILE = "model.onnx"
DEFAULT_FILES = {"onnx": ONNX_FILE, "torchscript": "model.pt", "pt2": "model.pt2",
                 "safetensors": "model.safetensors", "hf": "hf"}
_TOKENIZER = "tokenizer"


# --------------------------------------------------------------------------------------------
# small helpers


def _tokenizer_files():
    from ftdsl.stages.model import TOKENIZER_FILES

    return TOKENIZER_FILES


def _copy_tokenizer(src: Path | None, dst: Path) -> Path | None:
    """Copy the tokenizer files of ``src`` into ``dst`` (created); None when there is none."""
    if src is None or not Path(src).is_dir():
        return None
    src, dst = Path(src), Path(dst)
    if src.resolve() == dst.resolve():
        return dst
    dst.mkdir(parents=True, exist_ok=True)
    for name in _tokenizer_files():
        if (src / name).is_file():
            _io(lambda n=name: shutil.copyfile(src / n, dst / n), dst / name)
    return dst


def _link_or_copy(src: Path, dst: Path) -> None:
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
        _io(lambda: shutil.copyfile(src, dst), dst)


def _copy_tree(src: Path, dst: Path) -> None:
    if Path(src).resolve() == Path(dst).resolve():
        return
    if dst.exists():
        shutil.rmtree(dst)
    _io(lambda: shutil.copytree(src, dst), dst)


def _io(fn: Callable[[], Any], path: Path):
    """Run a write; a full disk / size limit / read-only folder becomes FTP505 / FTP508."""
    from ftdsl.runtime.atomic import as_resource_error

    try:
        return fn()
    except FtdslError:
        raise
    except Exception as e:
        mapped = as_resource_error(e, path)
        if mapped is not None:
            raise mapped from e
        raise


def _write_bytes(path: Path, data: bytes) -> None:
    from ftdsl.runtime.atomic import write_bytes_atomic

    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(path, data)


def _write_json(path: Path, obj: Any) -> None:
    from ftdsl.runtime.atomic import write_json_atomic
    from ftdsl.stages.outputs import json_safe

    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, json_safe(obj))


def _read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def _load_tokenizer_dir(tok_dir: Path | None, pretrained: bool):
    if tok_dir is None or not Path(tok_dir).is_dir():
        return None
    if pretrained or not (Path(tok_dir) / "tokenizer.json").is_file():
        from ftdsl.stages.model import quiet_transformers

        with quiet_transformers() as transformers:
            return transformers.AutoTokenizer.from_pretrained(str(tok_dir))
    from ftdsl.stages.data import load_tokenizer

    return load_tokenizer(tok_dir)


def _fmt(v: float) -> str:
    return f"{v:.3g}"


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
        return _load_tokenizer_dir(self.tokenizer_dir, self.meta.get("source_kind") == "pretrained")

    # -- persistence -----------------------------------------------------------------------

    def save(self, dir: Path) -> None:
        dir = Path(dir)
        dir.mkdir(parents=True, exist_ok=True)
        _link_or_copy(self.onnx_path, dir / ONNX_FILE)
        if self.data_path is not None:
            _link_or_copy(self.data_path, dir / (ONNX_FILE + ".data"))
        if self.tokenizer_dir is not None:
            _copy_tokenizer(self.tokenizer_dir, dir / _TOKENIZER)
        meta = {**self.meta, "format_version": FORMAT_VERSION, "metrics": self.metrics}
        _write_json(dir / "onnx.json", meta)

    @classmethod
    def load(cls, dir: Path) -> "OnnxModel":
        dir = Path(dir)
        meta = _read_json(dir / "onnx.json")
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{dir}: unsupported OnnxModel format {meta.get('format_version')!r}")
        if not (dir / ONNX_FILE).is_file():
            raise ValueError(f"{dir}: {ONNX_FILE} is missing")
        tok = dir / _TOKENIZER
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
                _copy_tree(src, files / rel)
            elif src.is_file():
                _link_or_copy(src, files / rel)
        _write_json(dir / "export.json", {**self.meta, "format_version": FORMAT_VERSION, "metrics": self.metrics})

    @classmethod
    def load(cls, dir: Path) -> "ExportedFile":
        dir = Path(dir)
        meta = _read_json(dir / "export.json")
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{dir}: unsupported ExportedFile format {meta.get('format_version')!r}")
        art = cls(dir / "files", meta)
        missing = [str(p) for p in art.files if not p.exists()]
        if missing:
            raise ValueError(f"{dir}: missing {missing[0]}")
        return art

    def __repr__(self) -> str:  # pragma: no cover
        return f"ExportedFile({self.format}: {self.path})"


# --------------------------------------------------------------------------------------------
# Inputs: examples for the exporter, random and real batches for `verify`


def _text_limits(src, module) -> tuple[int, int, int]:
    """(vocab size, pad id, hard sequence limit or 0) of a text model."""
    spec = src.spec
    net = getattr(module, "net", None)
    cfg = getattr(net, "config", None)
    vocab = spec.get("vocab_size") or getattr(cfg, "vocab_size", None)
    if not vocab:
        raise StageError("FTP530", "cannot tell this text model's vocabulary size; it cannot be exported")
    pad = spec.get("pad_id")
    if pad is None:
        pad = getattr(cfg, "pad_token_id", None)
    limit = 0
    if spec.get("source") == "arch" and spec.get("arch", {}).get("$call") == "transformer":
        limit = int(getattr(net, "max_len", 0) or spec["arch"].get("max_len", 128))
    elif cfg is not None:
        limit = int(getattr(cfg, "max_position_embeddings", 0) or 0)
        if getattr(cfg, "model_type", "") in ("roberta", "xlm-roberta", "camembert") and limit:
            limit -= 2  # position ids start after the padding index
    return int(vocab), int(pad or 0), limit


def _text_batch(g, vocab: int, pad: int, batch: int, length: int, *, full_first: bool = True):
    import torch

    # avoid the pad id as a real token; lengths in [1, length], the first row full length
    lo = 1 if pad == 0 else 0
    ids = torch.randint(lo, vocab, (batch, length), generator=g, dtype=torch.int64)
    ids = torch.where(ids == pad, torch.full_like(ids, (pad + 1) % vocab), ids)
    lengths = torch.randint(1, length + 1, (batch,), generator=g)
    if full_first:
        lengths[0] = length
    mask = (torch.arange(length).unsqueeze(0) < lengths.unsqueeze(1)).to(torch.int64)
    ids = torch.where(mask.bool(), ids, torch.full_like(ids, pad))
    return {"input_ids": ids, "attention_mask": mask}


def _features_batch(g, module, batch: int, shape) -> dict:
    import torch

    x = torch.randn((batch, *shape), generator=g, dtype=torch.float32)
    mean, std = getattr(module, "norm_mean", None), getattr(module, "norm_std", None)
    if mean is not None and std is not None:  # at the scale of the data the model was trained on
        x = x * std.float() + mean.float()
    return {"x": x}


def example_inputs(src, module, seed: int = 0) -> dict:
    """A small batch the exporter traces with: batch 2 (not 1: torch.export specializes sizes
    0 and 1) and, for text, 8 tokens (different from the batch size), the second row padded."""
    import torch

    g = torch.Generator().manual_seed(int(seed))
    if module.modality == "text":
        vocab, pad, limit = _text_limits(src, module)
        length = min(8, limit) if limit else 8
        return _text_batch(g, vocab, pad, 2, max(length, 1))
    return _features_batch(g, module, 2, _input_shape(src))


def _input_shape(src) -> tuple[int, ...]:
    shape = src.spec.get("input_shape")
    if not shape:
        raise StageError("FTP530", "this model has no input shape (is it trained?); it cannot be exported")
    return tuple(int(s) for s in shape)


def random_batches(src, module, seed: int) -> list[dict]:
    """`verify = true`: valid random inputs at three batch sizes (and three lengths for text)."""
    import torch

    g = torch.Generator().manual_seed(int(seed) + 1)
    if module.modality == "text":
        vocab, pad, limit = _text_limits(src, module)
        cap = int(src.spec.get("max_length") or 0) or limit or 64
        if limit:
            cap = min(cap, limit)
        return [_text_batch(g, vocab, pad, b, max(1, min(length, cap))) for b, length in TEXT_BATCHES]
    shape = _input_shape(src)
    return [_features_batch(g, module, b, shape) for b in RANDOM_BATCHES]


def data_batches(src, module, dataset, split_name: str, where: str) -> list[dict]:
    """`verify = { data = d.split }`: up to VERIFY_MAX_ROWS real rows, the first alone (batch 1)
    and the rest in batches of 32, tokenized with the model's tokenizer."""
    from ftdsl.stages.batching import iter_batches

    split = dataset.split(split_name) if hasattr(dataset, "split") else dataset.splits[split_name]
    if split is None or len(split) == 0:
        raise StageError("FTP510", f"verify: split `{where}` is empty")
    n = min(len(split), VERIFY_MAX_ROWS)
    sub = split.subset(np.arange(n))
    tokenizer = max_length = None
    if module.modality == "text":
        if sub.texts is None:
            raise StageError("FTP510", f"verify: `{where}` holds features, but the model takes text")
        tokenizer = src.load_tokenizer()
        if tokenizer is None and getattr(dataset, "tokenizer_dir", None) is not None:
            from ftdsl.stages.data import load_tokenizer

            tokenizer = load_tokenizer(dataset.tokenizer_dir)
        if tokenizer is None:
            raise StageError("FTP510", f"verify: the model has no tokenizer to read the texts of `{where}`")
        max_length = src.spec.get("max_length") or getattr(dataset, "max_length", None)
    else:
        if sub.features is None:
            raise StageError("FTP510", f"verify: `{where}` holds text, but the model takes features")
        want = _input_shape(src)
        if tuple(sub.features.shape[1:]) != want:
            raise StageError("FTP510", f"verify: rows of `{where}` have shape {tuple(sub.features.shape[1:])}, "
                                       f"the model takes {want}")
    out: list[dict] = []
    parts = [sub.subset([0])] + ([sub.subset(np.arange(1, n))] if n > 1 else [])
    for part, bs in zip(parts, (1, 32)):
        for b in iter_batches(part, batch_size=bs, shuffle=False, tokenizer=tokenizer, max_length=max_length):
            out.append({k: v for k, v in b.items() if k in ("x", "input_ids", "attention_mask")})
    return out


# --------------------------------------------------------------------------------------------
# Verification


def _parity_error(what: str, label: str, p, hint: str | None = None) -> StageError:
    extra = f"; {p.nonfinite} non-finite values differ" if p.nonfinite else ""
    return StageError(
        "FTP502",
        f"{what} of `{label}` differs from PyTorch: max abs diff {_fmt(p.max_abs)} (atol {_fmt(p.atol)}), "
        f"max rel diff {_fmt(p.max_rel)} (rtol {_fmt(p.rtol)}) on {p.rows} rows{extra}",
        hint=hint or ("the exported graph does not compute what the PyTorch model computes: try another opset "
                      "(`format = onnx(opset = 18)`), or, if the difference is only rounding, loosen the tolerance "
                      "with `verify = { atol = ..., rtol = ... }`; the export was not kept"),
    )


def verify_onnx(model: OnnxModel, module, batches: list[dict], *, atol: float, rtol: float,
                label: str = "model"):
    """Compare ``model`` (onnxruntime) with ``module`` (PyTorch) on ``batches``; returns the
    :class:`~ftdsl.stages.onnx_utils.Parity`, or raises StageError FTP502 with the diffs."""
    from ftdsl.stages.onnx_utils import parity

    try:
        p = parity(model.session(), module, batches, atol=atol, rtol=rtol)
    except StageError:
        raise
    except Exception as e:  # ORT refused a batch shape, or the output shape differs
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:400]
        raise StageError(
            "FTP502", f"ONNX export of `{label}` fails in onnxruntime on verification inputs: {first}",
            hint="the graph may have a fixed batch size or sequence length baked in; try another opset, "
                 "or another format (pt2, torchscript)") from e
    if not p.ok:
        raise _parity_error("ONNX export", label, p)
    return p


def _verify_generic(what: str, label: str, reference, candidate, batches, atol, rtol):
    """Same check for the non-ONNX formats (the file reloaded vs the PyTorch module)."""
    import torch

    from ftdsl.stages.onnx_utils import compare_outputs

    names = list(reference.input_names)

    def call(m):
        def f(b):  # positional: a reloaded pt2 module does not keep the argument names
            with torch.inference_mode():
                return m(*(b[n] for n in names)).float().numpy()
        return f

    try:
        p = compare_outputs(call(reference), call(candidate), batches, atol=atol, rtol=rtol)
    except StageError:
        raise
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:400]
        raise StageError("FTP502", f"{what} of `{label}` fails on verification inputs: {first}",
                         hint="the file may have a fixed batch size or sequence length baked in; "
                              "try `format = pt2` or `onnx`") from e
    if not p.ok:
        raise _parity_error(what, label, p, hint="the reloaded export does not compute what the PyTorch model "
                                                 "computes; try another format")
    return p


def _verify_settings(v) -> dict | None:
    if v is None or v is False:
        return None
    if v is True:
        return {"data": None, "atol": VERIFY_ATOL, "rtol": VERIFY_RTOL}
    if isinstance(v, dict):
        return {"data": v.get("data"), "atol": float(v.get("atol", VERIFY_ATOL) if v.get("atol") is not None
                                                    else VERIFY_ATOL),
                "rtol": float(v.get("rtol", VERIFY_RTOL) if v.get("rtol") is not None else VERIFY_RTOL)}
    raise StageError("FTP530", f"verify must be true or {{ data, atol, rtol }}, got {v!r}")


def _verification_batches(settings, src, module, inputs, ctx) -> tuple[list[dict], str]:
    ref = settings.get("data")
    if ref:
        dataset = inputs.get("verify.data")
        where = f"{ref.get('$ref')}.{ref.get('split')}"
        if dataset is None:  # pragma: no cover - the executor always passes it
            raise StageError("FTP530", f"verify: data `{where}` was not passed to the stage")
        return data_batches(src, module, dataset, ref["split"], where), where
    return random_batches(src, module, ctx.seed), "random"


# --------------------------------------------------------------------------------------------
# The stage


def _format(v) -> tuple[str, dict]:
    if isinstance(v, str):
        return v, {"opset": 17} if v == "onnx" else {}
    if isinstance(v, dict) and v.get("$call"):
        return v["$call"], {k: x for k, x in v.items() if k != "$call"}
    raise StageError("FTP530", f"format must be onnx(opset), torchscript, pt2, safetensors or hf, got {v!r}")


def _label(attrs: dict) -> str:
    ref = attrs.get("from")
    return ref.get("$ref", "model") if isinstance(ref, dict) else str(ref or "model")


def _base_meta(src, module, label: str, ctx) -> dict:
    spec = src.spec
    meta = {
        "inputs": list(module.input_names),
        "output": "logits",
        "modality": module.modality,
        "task": spec.get("task"),
        "input_shape": spec.get("input_shape"),
        "max_length": spec.get("max_length"),
        "label_names": spec.get("label_names"),
        "vocab_size": spec.get("vocab_size"),
        "pad_id": spec.get("pad_id"),
        "source": {"stage": label, "trained_by": spec.get("trained_by"), "kind": spec.get("source"),
                   "arch": (spec.get("arch") or {}).get("$call") if spec.get("source") == "arch" else None,
                   "pretrained": spec.get("pretrained")},
        "source_kind": spec.get("source"),
        "stage": ctx.name,
        "key": getattr(ctx, "key", ""),
    }
    try:
        import torch

        meta["torch"] = torch.__version__
    except ImportError:  # pragma: no cover
        pass
    return meta


def run(inputs: dict, attrs: dict, ctx):
    src = inputs["from"]
    label = _label(attrs)
    if not getattr(src, "trained", False) or not hasattr(src, "build"):
        raise StageError("FTP510", f"`{label}` is an untrained model; export a `train` stage instead",
                         hint=f"train it first: `train t {{ model = {label}, data = ... }}`, then "
                              "`export ... { from = t }`")
    fmt, args = _format(attrs.get("format", "onnx"))
    if fmt not in DEFAULT_FILES:
        raise StageError("FTP530", f"unknown export format `{fmt}` (use onnx, torchscript, pt2, safetensors or hf)")
    if fmt == "hf" and src.spec.get("source") != "pretrained":
        what = (src.spec.get("arch") or {}).get("$call", "an architecture")
        raise StageError(
            "FTP530", f"`format = hf` writes a Hugging Face folder, but `{label}` is built from scratch "
                      f"(`arch = {what}(...)`), not from a pretrained Hugging Face model",
            hint="use `format = safetensors` (weights + spec), `onnx(...)` or `pt2` for a from-scratch model")
    settings = _verify_settings(attrs.get("verify"))
    if attrs.get("path"):  # refuse a path outside the pipeline's folder before the work, not after
        from ftdsl.paths import resolve_output

        resolve_output(Path(ctx.pipeline_dir), attrs["path"])
    module = src.build()
    module.eval()
    out = Path(ctx.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = _base_meta(src, module, label, ctx)
    ctx.reporter.start(None, f"export {label} ({fmt})")
    if fmt == "onnx":
        art = _run_onnx(src, module, args, meta, settings, inputs, label, ctx)
    else:
        art = _run_file(fmt, src, module, meta, settings, inputs, label, ctx)
    if attrs.get("path"):
        _write_user_copy(art, attrs["path"], ctx)
    return art


def _run_onnx(src, module, args, meta, settings, inputs, label, ctx) -> OnnxModel:
    from ftdsl.stages.onnx_utils import export_onnx, serialize

    opset = int(args.get("opset") or 17)
    out = Path(ctx.out_dir)
    example = example_inputs(src, module, ctx.seed)
    names = list(module.input_names)
    max_seq = _text_limits(src, module)[2] if module.modality == "text" else None
    t0 = time.perf_counter()
    try:
        proto, exporter, log = export_onnx(module, [example[n] for n in names], input_names=names,
                                           opset=opset, max_seq=max_seq or None)
    except RuntimeError as e:
        raise StageError("FTP530", f"cannot export `{label}` to ONNX (opset {opset}): {str(e)[:600]}",
                         hint="try another opset (`format = onnx(opset = 18)`), or `format = pt2`") from e
    export_s = time.perf_counter() - t0
    if exporter != "dynamo":
        first = (log.splitlines() or ["?"])[0]
        ctx.reporter.log(f"warning: the dynamo exporter could not export `{label}` ({first}); used the "
                         "deprecated TorchScript-based exporter instead")
    import onnx

    for k, v in (("ftdsl.stage", ctx.name), ("ftdsl.source", label), ("ftdsl.modality", module.modality),
                 ("ftdsl.task", json.dumps(meta.get("task"), sort_keys=True)),
                 ("ftdsl.inputs", ",".join(names))):
        p = proto.metadata_props.add()
        p.key, p.value = k, v
    proto.producer_name = proto.producer_name or "ftdsl"
    try:
        if proto.ByteSize() < 2_000_000_000:  # the checker takes a proto only below protobuf's limit
            onnx.checker.check_model(proto)
    except Exception as e:  # noqa: BLE001 - an invalid graph is the exporter's fault; say so clearly
        raise StageError("FTP530", f"the ONNX exporter produced an invalid model for `{label}`: "
                                   f"{str(e).strip().splitlines()[0][:300]}",
                         hint="try another opset (`format = onnx(opset = 18)`)") from e
    model_bytes, data_bytes = serialize(proto)
    del proto
    if data_bytes is not None:  # pragma: no cover - > 2 GB models only
        _write_bytes(out / (ONNX_FILE + ".data"), data_bytes)
    _write_bytes(out / ONNX_FILE, model_bytes)
    tok = _copy_tokenizer(src.tokenizer_dir, out / _TOKENIZER) if module.modality == "text" else None
    meta.update({"format": "onnx", "opset": opset, "exporter": exporter, "quantization": None,
                 "external_data": data_bytes is not None})
    art = OnnxModel(out / ONNX_FILE, meta, tok)
    metrics = {"size_mb": art.size_bytes / 1e6, "export_s": export_s}
    if settings is not None:
        batches, where = _verification_batches(settings, src, module, inputs, ctx)
        t1 = time.perf_counter()
        p = verify_onnx(art, module, batches, atol=settings["atol"], rtol=settings["rtol"], label=label)
        metrics.update(_verify_metrics(p, time.perf_counter() - t1))
        _write_json(out / "verify.json", {**p.as_dict(), "data": where, "format": "onnx", "opset": opset,
                                          "exporter": exporter, "onnxruntime": _ort_version()})
    art.metrics = metrics
    _write_json(out / "onnx.json", {**meta, "format_version": FORMAT_VERSION, "metrics": metrics})
    ctx.reporter.log(_summary_line(label, f"{ONNX_FILE} (opset {opset}, {exporter})", art.size_bytes, metrics))
    return art


def _verify_metrics(p, secs: float) -> dict:
    return {"verify.max_abs_diff": p.max_abs, "verify.max_rel_diff": p.max_rel, "verify.rows": p.rows,
            "verify.atol": p.atol, "verify.rtol": p.rtol, "verify_s": secs}


def _summary_line(label: str, what: str, size: int, metrics: dict) -> str:
    from ftdsl.runtime.atomic import format_bytes

    line = f"exported `{label}` to {what}, {format_bytes(size)} in {metrics.get('export_s', 0):.1f}s"
    if "verify.rows" in metrics:
        line += (f"; verified on {metrics['verify.rows']} rows: max abs diff {_fmt(metrics['verify.max_abs_diff'])}, "
                 f"max rel diff {_fmt(metrics['verify.max_rel_diff'])}")
    return line


def _ort_version() -> str | None:
    try:
        import onnxruntime

        return onnxruntime.__version__
    except ImportError:  # pragma: no cover
        return None


# -- torchscript / pt2 / safetensors / hf -----------------------------------------------------


def _dynamic_shapes(module, names, src):
    import torch

    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    if module.modality == "text":
        limit = _text_limits(src, module)[2]
        seq = torch.export.Dim("seq", min=1, max=limit or (1 << 14))
        return tuple({0: batch, 1: seq} for _ in names)
    return tuple({0: batch} for _ in names)


def _run_file(fmt, src, module, meta, settings, inputs, label, ctx) -> ExportedFile:
    import torch

    out = Path(ctx.out_dir)
    names = list(module.input_names)
    example = example_inputs(src, module, ctx.seed)
    ex = tuple(example[n] for n in names)
    main = DEFAULT_FILES[fmt]
    files = [main]
    t0 = time.perf_counter()
    reload: Callable[[], Any] | None = None
    from ftdsl.stages.onnx_utils import quiet_exporter

    try:
        if fmt == "torchscript":
            with quiet_exporter(), torch.inference_mode(False), torch.no_grad():
                traced = torch.jit.trace(module, ex, check_trace=False, strict=False)
                buf = io.BytesIO()
                torch.jit.save(traced, buf)
            data = buf.getvalue()
            _write_bytes(out / main, data)

            def reload():
                with quiet_exporter():
                    return torch.jit.load(io.BytesIO(data), map_location="cpu")
        elif fmt == "pt2":
            with quiet_exporter():
                ep = torch.export.export(module, ex, dynamic_shapes=_dynamic_shapes(module, names, src))
                buf = io.BytesIO()
                torch.export.save(ep, buf)
            data = buf.getvalue()
            _write_bytes(out / main, data)

            def reload():
                with quiet_exporter():
                    return torch.export.load(io.BytesIO(data)).module()
        elif fmt == "safetensors":
            from safetensors.torch import save as st_save

            state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
            spec = {**src.spec, "format_version": 1, "trained": True}
            spec_json = json.dumps(spec, indent=1, sort_keys=True, default=str)
            _write_bytes(out / main, st_save(state, metadata={"format": "pt", "ftdsl_spec": spec_json}))
            _write_bytes(out / "spec.json", spec_json.encode("utf-8"))
            files.append("spec.json")
            hf_cfg = getattr(getattr(module, "net", None), "config", None)
            if getattr(module, "hf", False) and hf_cfg is not None:
                _io(lambda: hf_cfg.save_pretrained(str(out / "hf_config")), out / "hf_config")
                files.append("hf_config")

            def reload():
                from safetensors.torch import load_file

                from ftdsl.stages.model import TorchModel

                return TorchModel(spec, load_file(str(out / main)),
                                  hf_config=out / "hf_config" if (out / "hf_config").is_dir() else None).build()
        elif fmt == "hf":
            from ftdsl.stages.model import quiet_transformers

            folder = out / main
            tmp = out / f".{main}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            with quiet_transformers(), quiet_exporter():
                _io(lambda: module.net.save_pretrained(str(tmp)), tmp)
                tk = src.load_tokenizer()
                if tk is not None:
                    _io(lambda: tk.save_pretrained(str(tmp)), tmp)
            shutil.rmtree(folder, ignore_errors=True)
            os.replace(tmp, folder)

            def reload():
                from ftdsl.stages.model import TextModule, load_hf_model

                return TextModule(load_hf_model(folder, src.spec["task"]), hf=True).eval()
    except (FtdslError, KeyboardInterrupt):
        raise
    except Exception as e:
        mapped = _resource(e, out / main)
        if mapped is not None:
            raise mapped from e
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:400]
        raise StageError("FTP530", f"cannot export `{label}` as {fmt}: {type(e).__name__}: {first}",
                         hint="try `format = onnx(...)` or `format = safetensors`") from e
    export_s = time.perf_counter() - t0
    if module.modality == "text" and fmt != "hf" and _copy_tokenizer(src.tokenizer_dir, out / _TOKENIZER):
        files.append(_TOKENIZER)
    meta.update({"format": fmt, "main": main, "files": files})
    art = ExportedFile(out, meta)
    metrics = {"size_mb": art.size_bytes / 1e6, "export_s": export_s}
    if settings is not None:
        batches, where = _verification_batches(settings, src, module, inputs, ctx)
        t1 = time.perf_counter()
        with quiet_exporter():
            candidate = reload()
        p = _verify_generic(f"`{fmt}` export", label, module, candidate, batches, settings["atol"], settings["rtol"])
        metrics.update(_verify_metrics(p, time.perf_counter() - t1))
        _write_json(out / "verify.json", {**p.as_dict(), "data": where, "format": fmt})
    art.metrics = metrics
    _write_json(out / "export.json", {**meta, "format_version": FORMAT_VERSION, "metrics": metrics})
    ctx.reporter.log(_summary_line(label, main, art.size_bytes, metrics))
    return art


def _resource(e: BaseException, path: Path) -> ResourceError | None:
    from ftdsl.runtime.atomic import as_resource_error

    return as_resource_error(e, path)


# -- the user's `path` --------------------------------------------------------------------------


def _write_user_copy(art, path: str, ctx) -> None:
    """Write the main file (or folder) at ``path`` (relative to the pipeline's folder), atomically;
    a text model's tokenizer goes beside it as ``<stem>.tokenizer/``. FTP303 if it escapes."""
    from ftdsl.paths import resolve_output

    root = Path(ctx.pipeline_dir)
    src_main = art.onnx_path if isinstance(art, OnnxModel) else art.path
    if (str(path).endswith("/") or resolve_output(root, path).is_dir()) and not src_main.is_dir():
        path = str(path).rstrip("/") + "/" + src_main.name  # a folder: the file goes inside it
    dest = resolve_output(root, path)
    _io(lambda: dest.parent.mkdir(parents=True, exist_ok=True), dest.parent)
    dest = resolve_output(root, path)  # again, right before writing: the folder may have changed
    if src_main.is_dir():
        _replace_dir(src_main, dest)
    else:
        _io(lambda: _atomic_copy(src_main, dest), dest)
        data = src_main.with_name(src_main.name + ".data")
        if data.is_file():  # pragma: no cover - > 2 GB models only
            _io(lambda: _atomic_copy(data, dest.with_name(dest.name + ".data")), dest)
    tok = art.tokenizer_dir if isinstance(art, OnnxModel) else (
        art.root / _TOKENIZER if (art.root / _TOKENIZER).is_dir() else None)
    if tok is not None and not src_main.is_dir():
        _replace_dir(tok, dest.with_name(dest.stem + ".tokenizer"))
    ctx.reporter.log(f"wrote {dest}")


def _atomic_copy(src: Path, dest: Path) -> None:
    import tempfile

    from ftdsl.runtime.atomic import fsync_dir

    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f, open(src, "rb") as r:
            shutil.copyfileobj(r, f, 1 << 20)
            f.flush()
            os.fchmod(f.fileno(), 0o644)
            os.fsync(f.fileno())
        os.replace(tmp, dest)
        tmp = None
        fsync_dir(dest.parent)
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


def _replace_dir(src: Path, dest: Path) -> None:
    """Copy folder ``src`` to ``dest`` (a user's `path`) under the rules of `out/` (runtime/outdir.py):
    built beside it and swapped in whole; a folder in the way that ftdsl did not create (no ownership
    marker, a symlink, files added by hand) is FTP516 and left untouched; disk full is FTP505."""
    from ftdsl.runtime import outdir

    outdir.publish(dest.parent, dest.name, src, None)  # no key: always copied (the stage just ran)
