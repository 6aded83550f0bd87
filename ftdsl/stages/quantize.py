"""The `quantize` stage and the `QuantizedTorchModel` artifact.

What a stage gets depends on its ``from`` (SPEC §4; the result is the same kind as the input):

An **OnnxModel** (an ``export`` with ``format = onnx(...)``) is quantized by onnxruntime's
quantizer, the deployment path:

* ``dynamic(dtype, per_channel)``: ``onnxruntime.quantization.quantize_dynamic`` (weights int8
  or uint8, activations quantized at run time; QOperator format: MatMulInteger / ConvInteger).
  Best for transformers and MLPs (stack.md §2: MiniLM 2.2x faster, 91 -> 23 MB). Convolutions
  become ConvInteger, which onnxruntime runs 2-6x *slower*: the stage warns and suggests
  ``static``.
* ``static(calibrate, samples)``: ``quantize_static`` in QDQ format, per channel, int8
  activations and weights, MinMax calibration on up to ``samples`` rows of the ``calibrate``
  split (drawn with the pipeline seed; text is tokenized with the model's tokenizer, features
  are passed raw: the normalization is inside the graph). Suits CNNs; it wrecks transformer
  accuracy (MiniLM: cosine 0.44), so the stage warns for text models.
* ``fp16``: every float tensor converted to float16 by onnxruntime's converter
  (``onnxruntime.transformers.float16``) with float32 inputs and outputs kept, so callers feed
  the same arrays. If onnxruntime's CPU provider cannot run that graph, the weights alone are
  stored as float16 with a Cast back to float32 in front of their users (half the file; float32
  compute); ``meta["quantization"]["fp16"]`` says which (``"graph"`` or ``"weights"``).

Before int8 quantization the graph goes through ``quant_pre_process`` (shape inference and
onnxruntime's basic optimizations; ``skip_symbolic_shape=True``, which transformers need); when
that fails the original graph is quantized and ``quantization.preprocessed`` is false. The
quantizer's ~130 root-logger warnings, its prints and Python warnings are silenced.

The result is an ``OnnxModel`` (``model.onnx`` + ``onnx.json`` + ``tokenizer/``) whose
``meta["quantization"]`` is ``{"method", "dtype", "per_channel", "format", "preprocessed",
"from", ...}``.

A **TorchModel** is quantized in PyTorch, into a :class:`QuantizedTorchModel`:

* ``dynamic(dtype = int8, per_channel)``: ``torch.ao.quantization.quantize_dynamic`` of every
  ``nn.Linear`` (int8 weights, per channel or per tensor; activations quantized per batch).
  Runs about 2x faster on CPU, but cannot be exported to ONNX (lint FTP207), trained, pruned or
  quantized again. ``dtype = uint8`` is FTP530 (PyTorch stores dynamic weights as int8 only).
* ``static(calibrate, samples)``: features models (mlp, cnn) only: FX graph-mode quantization
  (``torch.ao.quantization.quantize_fx``, the default ``x86`` qconfig mapping: int8 activations
  with histogram observers, per-channel int8 weights) calibrated on up to ``samples`` rows of
  the split. PT2E (torchao) would be the successor; torchao is not a dependency. A text model
  is FTP530 with a hint (use ``dynamic``, or export to ONNX and quantize that), and so is a
  network FX cannot trace.
* ``fp16``: the weights in float16; ``build()`` returns a module that takes and returns float32
  (features are normalized in float32, then cast).

A QuantizedTorchModel is saved without pickle: the float weights (``model.safetensors``, as a
TorchModel saves them) plus ``quantization.json`` (the recipe) and, for ``static``,
``observers.safetensors`` (the calibrated activation ranges and histograms, plain float
tensors). ``build()`` rebuilds the float module and applies the same quantization, which is
deterministic, so a reload computes exactly what the stage computed. ``size_bytes`` is the
quantized size (int8 weights, a float32 scale and an int32 zero point per channel (or tensor),
and the float tensors left), not the file's; ``num_params`` counts the quantized weights too.
torch.ao's quantization is deprecated upstream (still present in torch 2.13); its deprecation
warnings are silenced.

Reports: ``out/<stage>/quantize.json``: method, sizes before and after, compression, and the
parity of the quantized model against the float one (max / mean abs difference of the outputs,
top-1 agreement for classifiers) on the calibration rows (``static``) or on random valid inputs
at the data's scale; the artifact's ``metrics`` carry the same numbers (``size_mb``,
``size_before_mb``, ``compression``, ``parity.max_abs_diff``, ``parity.top1_agreement``, ...).
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from ftdsl.errors import FtdslError, StageError

__all__ = ["run", "QuantizedTorchModel", "quantize_module", "quantized_size_bytes", "parameter_count",
           "quiet_quantizer", "FORMAT_VERSION"]

FORMAT_VERSION = 1
QUANT_FILE = "quantization.json"
OBSERVERS_FILE = "observers.safetensors"
REPORT_FILE = "quantize.json"
RANDOM_ROWS = (1, 7, 64, 128)  # batch sizes of the random parity inputs (200 rows)
CALIB_BATCH = 32
# ONNX ops that onnxruntime's dynamic quantizer turns into slow integer kernels on CPU
_SLOW_DYNAMIC_OPS = ("Conv", "ConvTranspose")


# --------------------------------------------------------------------------------------------
# Small helpers


def _label(attrs: dict) -> str:
    ref = attrs.get("from")
    return ref.get("$ref", "model") if isinstance(ref, dict) else str(ref or "model")


def _method(attrs: dict) -> dict:
    m = attrs.get("method")
    if isinstance(m, str):
        m = {"$call": m}
    if not isinstance(m, dict) or m.get("$call") not in ("dynamic", "static", "fp16"):
        raise StageError("FTP530", f"quantize: method must be dynamic(...), static(...) or fp16, got {m!r}")
    out = dict(m)
    if out["$call"] == "dynamic":
        out.setdefault("dtype", "int8")
        out.setdefault("per_channel", True)
    elif out["$call"] == "static":
        out.setdefault("samples", 256)
    return out


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:400]


def _resource(e: BaseException, path: Path):
    from ftdsl.runtime.atomic import as_resource_error

    return as_resource_error(e, path)


@contextlib.contextmanager
def quiet_quantizer():
    """Silence onnxruntime's quantizer (and torch.ao's deprecation warning): its warnings go
    through the *root* logger (``logging.warning``), so logging below ERROR is disabled for the
    duration; a NullHandler keeps ``logging.warning`` from installing a stderr handler on the
    root logger for good (``basicConfig``). Prints and Python warnings are captured too."""
    from ftdsl.stages.onnx_utils import quiet_exporter

    root = logging.getLogger()
    added = None
    if not root.handlers:
        added = logging.NullHandler()
        root.addHandler(added)
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with quiet_exporter() as buf:
            yield buf
    finally:
        logging.disable(previous)
        if added is not None:
            root.removeHandler(added)


def _write_json(path: Path, obj: Any) -> None:
    from ftdsl.stages.export import _write_json as w

    w(path, obj)


def _is_classifier(task: Any) -> bool:
    return not isinstance(task, dict) or task.get("$call", "classify") == "classify"


class _Agreement:
    """Max / mean abs difference and top-1 agreement of a candidate vs a reference output."""

    def __init__(self, classify: bool):
        self.classify = classify
        self.max_abs = 0.0
        self.sum_abs = 0.0
        self.values = 0
        self.rows = 0
        self.agree = 0
        self.nonfinite = 0
        self.ref_max = 0.0

    def add(self, ref: np.ndarray, got: np.ndarray) -> None:
        ref = np.asarray(ref, dtype=np.float64)
        got = np.asarray(got, dtype=np.float64)
        if ref.shape != got.shape:
            raise ValueError(f"the quantized model's output has shape {got.shape}, the float model's {ref.shape}")
        fin = np.isfinite(got)
        self.nonfinite += int((~fin).sum())
        diff = np.abs(np.where(fin, got, 0.0) - ref)
        if diff.size:
            self.max_abs = max(self.max_abs, float(diff.max()))
            self.sum_abs += float(diff.sum())
            self.ref_max = max(self.ref_max, float(np.abs(ref).max()))
        self.values += int(diff.size)
        n = int(ref.shape[0]) if ref.ndim else 1
        self.rows += n
        if self.classify and ref.ndim == 2 and ref.shape[1] > 1:
            self.agree += int((ref.argmax(1) == got.argmax(1)).sum())

    def as_dict(self, data: str) -> dict:
        if not self.rows:
            return {"data": data, "rows": 0, "note": "no inputs to compare with the float model"}
        d = {"data": data, "rows": self.rows, "max_abs_diff": self.max_abs,
             "mean_abs_diff": self.sum_abs / max(1, self.values), "max_abs_output": self.ref_max,
             "nonfinite": self.nonfinite}
        if self.classify:
            d["top1_agreement"] = self.agree / max(1, self.rows)
        return d


def _parity_metrics(p: dict) -> dict:
    if not p["rows"]:
        return {"parity.rows": 0}
    m = {"parity.max_abs_diff": p["max_abs_diff"], "parity.mean_abs_diff": p["mean_abs_diff"],
         "parity.rows": p["rows"]}
    if "top1_agreement" in p:
        m["parity.top1_agreement"] = p["top1_agreement"]
    return m


def _summary(label: str, what: str, before: int, after: int, parity: dict) -> str:
    from ftdsl.runtime.atomic import format_bytes

    line = (f"quantized `{label}` ({what}): {format_bytes(before)} -> {format_bytes(after)} "
            f"({before / max(1, after):.2f}x smaller)")
    if not parity["rows"]:
        return line + "; not compared with the float model (no inputs)"
    line += f"; vs float on {parity['rows']} rows ({parity['data']}): max abs diff {parity['max_abs_diff']:.3g}"
    if "top1_agreement" in parity:
        line += f", top-1 agreement {parity['top1_agreement']:.1%}"
    if parity.get("nonfinite"):
        line += f"; warning: {parity['nonfinite']} outputs are NaN or infinite"
    return line


# --------------------------------------------------------------------------------------------
# Input batches: calibration rows, random rows


def _calibration_batches(src, dataset, attrs_method: dict, seed: int, *,
                         batch: int = CALIB_BATCH) -> tuple[list[dict], str]:
    """Up to ``samples`` rows of the ``calibrate`` split (a seeded draw), as numpy feed dicts
    keyed by the model's input names; text tokenized with the model's tokenizer."""
    from ftdsl.stages.batching import iter_batches

    ref = attrs_method.get("calibrate") or {}
    where = f"{ref.get('$ref', 'data')}.{ref.get('split', '?')}"
    if dataset is None:  # pragma: no cover - the executor always passes it
        raise StageError("FTP530", f"quantize: calibration data `{where}` was not passed to the stage")
    split = dataset.split(ref["split"]) if hasattr(dataset, "split") else dataset.splits[ref["split"]]
    if split is None or len(split) == 0:
        raise StageError("FTP510", f"quantize: the calibration split `{where}` is empty")
    n = min(len(split), int(attrs_method.get("samples") or 256))
    rng = np.random.default_rng(int(seed))
    idx = np.sort(rng.choice(len(split), size=n, replace=False)) if n < len(split) else np.arange(n)
    sub = split.subset(idx)
    modality = src.spec.get("modality") or "features"
    tokenizer = max_length = None
    if modality == "text":
        if sub.texts is None:
            raise StageError("FTP510", f"quantize: `{where}` holds features, but the model takes text")
        tokenizer = src.load_tokenizer()
        if tokenizer is None and getattr(dataset, "tokenizer_dir", None) is not None:
            from ftdsl.stages.data import load_tokenizer

            tokenizer = load_tokenizer(dataset.tokenizer_dir)
        if tokenizer is None:
            raise StageError("FTP510", f"quantize: the model has no tokenizer to read the texts of `{where}`")
        max_length = src.spec.get("max_length") or getattr(dataset, "max_length", None)
    else:
        if sub.features is None:
            raise StageError("FTP510", f"quantize: `{where}` holds text, but the model takes features")
        want = tuple(int(s) for s in (src.spec.get("input_shape") or ()))
        if want and tuple(sub.features.shape[1:]) != want:
            raise StageError("FTP510", f"quantize: rows of `{where}` have shape {tuple(sub.features.shape[1:])}, "
                                       f"the model takes {want}")
    out = []
    for b in iter_batches(sub, batch_size=batch, shuffle=False, tokenizer=tokenizer, max_length=max_length):
        out.append({k: v.numpy() for k, v in b.items() if k in ("x", "input_ids", "attention_mask")})
    return out, where


def _onnx_norm(proto) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The feature normalization a features export carries as initializers (`norm_mean`, `norm_std`)."""
    from onnx import numpy_helper

    found = {}
    for init in proto.graph.initializer:
        if init.name in ("norm_mean", "norm_std"):
            found[init.name] = numpy_helper.to_array(init).astype(np.float32)
    return found.get("norm_mean"), found.get("norm_std")


def _text_vocab(src, proto) -> tuple[int, int]:
    """(vocabulary size, pad id) of a text export: from its metadata (from-scratch models), else
    its tokenizer (pretrained models), else the largest 2-D initializer a Gather reads (the
    token embedding)."""
    vocab = int(src.meta.get("vocab_size") or 0)
    pad = src.meta.get("pad_id")
    if vocab < 2 or pad is None:
        try:
            tok = src.load_tokenizer()
        except Exception:  # noqa: BLE001 - a broken tokenizer only costs the parity inputs
            tok = None
        if tok is not None:
            if vocab < 2:
                vocab = int(len(tok)) if hasattr(tok, "__len__") else int(getattr(tok, "vocab_size", 0) or 0)
                if vocab < 2 and hasattr(tok, "get_vocab_size"):
                    vocab = int(tok.get_vocab_size())
            if pad is None:
                pad = getattr(tok, "pad_token_id", None)
    if vocab < 2:
        shapes = {i.name: list(i.dims) for i in proto.graph.initializer}
        for n in proto.graph.node:
            if n.op_type == "Gather" and n.input and len(shapes.get(n.input[0], [])) == 2:
                vocab = max(vocab, int(shapes[n.input[0]][0]))
    return vocab, int(pad or 0)


def _onnx_random_batches(src, proto, seed: int) -> list[dict]:
    """Random valid inputs for an OnnxModel: features at the data's scale (from the graph's
    normalization), text token ids within the vocabulary with random lengths."""
    rng = np.random.default_rng(int(seed) + 11)
    meta = src.meta
    if (meta.get("modality") or "features") == "text":
        vocab, pad = _text_vocab(src, proto)
        if vocab < 2:
            return []
        cap = int(meta.get("max_length") or 0) or 32
        out = []
        for b, length in ((1, 7), (8, min(16, cap)), (16, min(40, cap))):
            length = max(1, min(length, cap))
            ids = rng.integers(1 if pad == 0 else 0, vocab, size=(b, length), dtype=np.int64)
            ids[ids == pad] = (pad + 1) % vocab
            lengths = rng.integers(1, length + 1, size=b)
            lengths[0] = length
            mask = (np.arange(length)[None, :] < lengths[:, None]).astype(np.int64)
            out.append({"input_ids": np.where(mask == 1, ids, pad).astype(np.int64), "attention_mask": mask})
        return out
    shape = tuple(int(s) for s in (meta.get("input_shape") or ()))
    if not shape:
        return []
    mean, std = _onnx_norm(proto)
    out = []
    for b in RANDOM_ROWS:
        x = rng.standard_normal((b, *shape)).astype(np.float32)
        if mean is not None and std is not None and mean.size == int(np.prod(shape)):
            x = x * std.reshape(shape) + mean.reshape(shape)
        out.append({"x": x.astype(np.float32)})
    return out


# --------------------------------------------------------------------------------------------
# ONNX: onnxruntime's quantizer


def _already_quantized(proto) -> bool:
    ops = {n.op_type for n in proto.graph.node}
    return bool(ops & {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger",
                       "ConvInteger", "QLinearMatMul", "QLinearConv"})


def _preprocess(src_path: Path, dst: Path) -> tuple[Path, str | None]:
    """``quant_pre_process`` (symbolic shape inference skipped); the original on failure."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        with quiet_quantizer():
            quant_pre_process(str(src_path), str(dst), skip_symbolic_shape=True)
        if dst.is_file():
            return dst, None
        return src_path, "quant_pre_process wrote nothing"  # pragma: no cover
    except FtdslError:
        raise
    except Exception as e:  # noqa: BLE001 - pre-processing is an optimization; quantize the original
        mapped = _resource(e, dst)
        if mapped is not None:
            raise mapped from e
        return src_path, f"{type(e).__name__}: {_first_line(e)}"


def _reader(batches: list[dict], input_names: list[str]):
    """A CalibrationDataReader over prepared feed dicts."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter(batches)

        def get_next(self):
            b = next(self._it, None)
            return None if b is None else {k: b[k] for k in input_names}

        def rewind(self):
            self._it = iter(batches)

    return Reader()


def _fp16_weights_only(proto):
    """Float32 initializers stored as float16, each followed by a Cast back to float32 (graph
    inputs and outputs and all computation stay float32): half the file on any provider."""
    import onnx
    from onnx import helper, numpy_helper

    g = proto.graph
    casts = []
    keep = []
    for init in g.initializer:
        if init.data_type == onnx.TensorProto.FLOAT and int(np.prod(init.dims or [1])) >= 16:
            arr = numpy_helper.to_array(init)
            half = numpy_helper.from_array(np.clip(arr, -65504, 65504).astype(np.float16), init.name + "__fp16")
            keep.append(half)
            casts.append(helper.make_node("Cast", [half.name], [init.name], to=onnx.TensorProto.FLOAT,
                                          name=init.name + "__cast_fp32"))
        else:
            keep.append(init)
    del g.initializer[:]
    g.initializer.extend(keep)
    nodes = casts + list(g.node)
    del g.node[:]
    g.node.extend(nodes)
    return proto


def _to_fp16(proto, probe: list[dict]) -> tuple[Any, str, str | None]:
    """(fp16 proto, "graph" | "weights", why the full conversion was not used)."""
    import copy

    import onnxruntime as ort

    from onnxruntime.transformers.float16 import convert_float_to_float16

    why = None
    try:
        with quiet_quantizer():
            converted = convert_float_to_float16(copy.deepcopy(proto), keep_io_types=True)
            so = ort.SessionOptions()
            so.log_severity_level = 3
            sess = ort.InferenceSession(converted.SerializeToString(), sess_options=so,
                                        providers=["CPUExecutionProvider"])
            names = [i.name for i in sess.get_inputs()]
            for b in probe[:2]:
                sess.run(None, {n: b[n] for n in names})
        return converted, "graph", None
    except Exception as e:  # noqa: BLE001 - CPU kernels missing for some fp16 op: weights only
        why = f"{type(e).__name__}: {_first_line(e)}"
    return _fp16_weights_only(copy.deepcopy(proto)), "weights", why


def _run_onnx(src, method: dict, inputs: dict, attrs: dict, ctx):
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

    from ftdsl.stages.export import ONNX_FILE, OnnxModel, _copy_tokenizer, _write_bytes
    from ftdsl.stages.onnx_utils import serialize

    label = _label(attrs)
    kind = method["$call"]
    if (src.meta.get("quantization") or None) is not None:
        raise StageError("FTP530", f"`{label}` is already quantized ({src.meta['quantization'].get('method')}); "
                                   "quantizing it again only loses accuracy",
                         hint="quantize the float export: `from = <the export stage>`")
    out = Path(ctx.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    proto = onnx.load(str(src.onnx_path))
    if _already_quantized(proto):
        raise StageError("FTP530", f"`{label}` already holds quantized operators; quantize the float export",
                         hint="quantize the output of an `export` stage")
    modality = src.meta.get("modality") or "features"
    ops = {n.op_type for n in proto.graph.node}
    calib: list[dict] = []
    where = "random inputs"
    if kind == "static":
        calib, where = _calibration_batches(src, inputs.get("method.calibrate"), method, ctx.seed)
        if modality == "text":
            ctx.reporter.log("warning: static int8 quantization usually costs transformers much accuracy "
                             "(activation ranges are wide); `method = dynamic()` suits text models")
    elif kind == "dynamic" and ops & set(_SLOW_DYNAMIC_OPS):
        ctx.reporter.log("warning: dynamic quantization turns convolutions into ConvInteger, which onnxruntime "
                         "runs slower than float on CPU; `method = static(calibrate = DATA.valid)` suits CNNs")
    probe = calib or _onnx_random_batches(src, proto, ctx.seed)
    ctx.reporter.start(None, f"quantize {label} ({kind})")
    work = Path(ctx.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="quantize-", dir=work))
    qinfo: dict[str, Any] = {"method": kind, "from": label, "backend": "onnxruntime",
                             "onnxruntime": ort.__version__}
    t0 = time.perf_counter()
    try:
        external = src.data_path is not None
        if kind == "fp16":
            qproto, how, why = _to_fp16(proto, probe)
            qinfo.update({"dtype": "float16", "per_channel": None, "fp16": how})
            if why:
                ctx.reporter.log(f"note: onnxruntime's CPU provider cannot run the full float16 graph ({why}); "
                                 "stored the weights as float16 with float32 compute instead")
                qinfo["fp16_fallback_reason"] = why
        else:
            pre, pre_err = (src.onnx_path, "skipped: external data") if external else \
                _preprocess(src.onnx_path, tmp / "pre.onnx")
            qinfo["preprocessed"] = pre_err is None
            if pre_err:
                qinfo["preprocess_error"] = pre_err
            dst = tmp / "quantized.onnx"
            with quiet_quantizer():
                if kind == "dynamic":
                    dtype = str(method.get("dtype") or "int8")
                    per_channel = bool(method.get("per_channel", True))
                    quantize_dynamic(str(pre), str(dst), per_channel=per_channel,
                                     weight_type=QuantType.QUInt8 if dtype == "uint8" else QuantType.QInt8,
                                     use_external_data_format=external)
                    qinfo.update({"dtype": dtype, "per_channel": per_channel, "format": "QOperator",
                                  "activations": "dynamic uint8"})
                else:
                    quantize_static(str(pre), str(dst), _reader(calib, list(src.inputs)),
                                    quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QInt8,
                                    weight_type=QuantType.QInt8, use_external_data_format=external)
                    qinfo.update({"dtype": "int8", "per_channel": True, "format": "QDQ", "activations": "int8",
                                  "calibrate": where, "calibration": "minmax",
                                  "calibration_rows": sum(len(next(iter(b.values()))) for b in calib)})
            qproto = onnx.load(str(dst))
    except FtdslError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    except Exception as e:
        shutil.rmtree(tmp, ignore_errors=True)
        mapped = _resource(e, tmp)
        if mapped is not None:
            raise mapped from e
        raise StageError("FTP530", f"onnxruntime could not quantize `{label}` ({kind}): {type(e).__name__}: "
                                   f"{_first_line(e)}",
                         hint="try another method (`dynamic()` quantizes weights only), or re-export with "
                              "another opset") from e
    quantize_s = time.perf_counter() - t0
    try:
        for k, v in (("ftdsl.stage", ctx.name), ("ftdsl.quantization", json.dumps(qinfo, sort_keys=True))):
            entry = next((p for p in qproto.metadata_props if p.key == k), None)
            if entry is None:
                entry = qproto.metadata_props.add()
                entry.key = k
            entry.value = v
        model_bytes, data_bytes = serialize(qproto)
        del qproto
        if data_bytes is not None:  # pragma: no cover - > 2 GB models only
            _write_bytes(out / (ONNX_FILE + ".data"), data_bytes)
        _write_bytes(out / ONNX_FILE, model_bytes)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    tok = _copy_tokenizer(src.tokenizer_dir, out / "tokenizer") if src.tokenizer_dir is not None else None
    meta = {k: v for k, v in src.meta.items() if k not in ("metrics", "format_version")}
    meta.update({"quantization": qinfo, "stage": ctx.name, "key": getattr(ctx, "key", ""), "quantized_from": label})
    art = OnnxModel(out / ONNX_FILE, meta, tok)

    # parity vs the float graph
    agreement = _Agreement(_is_classifier(meta.get("task")))
    try:
        names = [i.name for i in art.session().get_inputs()]
        for b in probe:
            agreement.add(src.predict({n: b[n] for n in names}), art.predict({n: b[n] for n in names}))
    except StageError:
        raise
    except Exception as e:
        raise StageError("FTP502", f"the quantized `{label}` fails in onnxruntime: {_first_line(e)}",
                         hint="try another method (`dynamic()`), or re-export with another opset") from e
    parity = agreement.as_dict(where)
    before, after = int(src.size_bytes), int(art.size_bytes)
    metrics = {"size_mb": after / 1e6, "size_before_mb": before / 1e6, "compression": before / max(1, after),
               "quantize_s": quantize_s, **_parity_metrics(parity)}
    art.metrics = metrics
    _write_json(out / "onnx.json", {**meta, "format_version": 1, "metrics": metrics})
    _write_json(out / REPORT_FILE, {"from": label, "kind": "onnx", "method": method, "quantization": qinfo,
                                    "size_before_bytes": before, "size_after_bytes": after,
                                    "compression": before / max(1, after), "parity": parity,
                                    "quantize_s": quantize_s})
    ctx.reporter.log(_summary(label, _describe(qinfo), before, after, parity))
    return art


def _describe(q: dict) -> str:
    if q["method"] == "fp16":
        return "float16" + (" weights" if q.get("fp16") == "weights" else "")
    what = f"{q['method']} {q.get('dtype')}"
    if q.get("per_channel") is not None:
        what += ", per channel" if q.get("per_channel") else ", per tensor"
    return what


# --------------------------------------------------------------------------------------------
# PyTorch: the QuantizedTorchModel artifact


def _torch_method(method: dict) -> dict:
    """The canonical PyTorch quantization recipe saved with the artifact."""
    import torch

    kind = method["$call"]
    if kind == "dynamic":
        return {"method": "dynamic", "dtype": "int8", "per_channel": bool(method.get("per_channel", True)),
                "modules": ["Linear"], "backend": "torch.ao.quantization.quantize_dynamic"}
    if kind == "static":
        ref = method.get("calibrate") or {}
        engine = "x86" if "x86" in torch.backends.quantized.supported_engines else "qnnpack"
        return {"method": "static", "dtype": "int8", "per_channel": engine == "x86", "qconfig": engine,
                "calibrate": f"{ref.get('$ref', 'data')}.{ref.get('split', '?')}",
                "samples": int(method.get("samples") or 256), "backend": "torch.ao.quantization.quantize_fx"}
    return {"method": "fp16", "dtype": "float16", "per_channel": None, "backend": "torch"}


def quantize_module(module, recipe: dict, observers: dict | None = None):
    """Apply ``recipe`` (see :func:`_torch_method`) to a float FtdslModule; returns the module to
    use (the same object for dynamic, quantized in place; a float16 wrapper for fp16; an FX
    GraphModule for static, whose activation ranges are ``observers``, see :func:`calibrate_static`)."""
    import torch
    from torch import nn

    module.eval()
    if recipe["method"] == "static":
        if observers is None:
            raise StageError("FTP503", "a statically quantized model without its calibration (observers.safetensors)",
                             hint="rerun the quantize stage with --force")
        prepared = _prepare_static(module, recipe)
        missing, unexpected = prepared.load_state_dict(observers, strict=False)
        if unexpected or any(k.startswith("activation_post_process") for k in missing):
            raise StageError("FTP503", "the saved calibration does not fit the model "
                                       f"(unexpected {list(unexpected)[:3]}, missing {list(missing)[:3]})",
                             hint="rerun the quantize stage with --force")
        return _convert_static(prepared, module)
    if recipe["method"] == "dynamic":
        with quiet_quantizer():
            from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig
            from torch.ao.quantization import quantize_dynamic

            qconfig = per_channel_dynamic_qconfig if recipe.get("per_channel") else default_dynamic_qconfig
            q = quantize_dynamic(module, {nn.Linear: qconfig}, dtype=torch.qint8, inplace=True)
        _no_transformer_fast_path(q)
        return q.eval()
    if recipe["method"] == "fp16":
        return _half(module).eval()
    raise StageError("FTP530", f"unknown PyTorch quantization {recipe.get('method')!r}")  # pragma: no cover


def _example(module):
    import torch

    return (torch.zeros((2, *tuple(module.norm_mean.shape)), dtype=torch.float32),)


def _prepare_static(module, recipe: dict):
    """FX graph-mode preparation (observers inserted) of a features module."""
    import torch

    from ftdsl.stages.model import FeaturesModule

    if not isinstance(module, FeaturesModule):
        raise StageError("FTP530", "static int8 quantization in PyTorch is for features models (mlp, cnn)",
                         hint="export the model to ONNX and quantize that, or use `method = dynamic()` "
                              "(static int8 also costs transformers much accuracy)")
    engine = recipe.get("qconfig") or "x86"
    if engine not in torch.backends.quantized.supported_engines:  # pragma: no cover - other CPUs
        raise StageError("FTP530", f"this PyTorch has no `{engine}` quantized engine "
                                   f"(it has {', '.join(torch.backends.quantized.supported_engines)})",
                         hint="rerun the quantize stage on this machine with --force")
    with quiet_quantizer():
        from torch.ao.quantization import get_default_qconfig_mapping
        from torch.ao.quantization.quantize_fx import prepare_fx

        torch.backends.quantized.engine = engine
        return prepare_fx(module, get_default_qconfig_mapping(engine), _example(module))


def _convert_static(prepared, float_module):
    with quiet_quantizer():
        from torch.ao.quantization.quantize_fx import convert_fx

        q = convert_fx(prepared)
    q.modality, q.input_names = float_module.modality, tuple(float_module.input_names)
    return q.eval()


def calibrate_static(module, recipe: dict, batches: list[dict]) -> dict:
    """Run ``batches`` through the observed ``module``; returns the observers' state (plain
    float tensors: ranges and histograms), which :func:`quantize_module` turns into the same
    quantized model every time."""
    import torch

    prepared = _prepare_static(module, recipe)
    with torch.inference_mode(), quiet_quantizer():
        for b in batches:
            prepared(torch.from_numpy(np.ascontiguousarray(b["x"])))
    return {k: v.detach().clone().contiguous() for k, v in prepared.state_dict().items()
            if "activation_post_process" in k and isinstance(v, torch.Tensor)}


def _skip_fast_path(module, args, output):
    return None


def _no_transformer_fast_path(module) -> None:
    """``nn.TransformerEncoderLayer``'s inference fast path reads ``linear1.weight.device``, but
    a dynamically quantized Linear's ``weight`` is a method: the layer then fails. A forward hook
    on the layer (any hook turns the fast path off, see torch/nn/modules/transformer.py) and
    ``use_nested_tensor = False`` on the encoder make them take the regular path."""
    from torch import nn

    for m in module.modules():
        if isinstance(m, nn.TransformerEncoder):
            m.use_nested_tensor = False
        elif isinstance(m, nn.TransformerEncoderLayer) and callable(getattr(m.linear1, "weight", None)):
            m.register_forward_hook(_skip_fast_path)


def _half(module):
    from ftdsl.stages.model import FeaturesModule, TextModule

    features, text = _half_classes()
    if isinstance(module, FeaturesModule):
        return features(module)
    if isinstance(module, TextModule):
        return text(module)
    raise StageError("FTP530", f"fp16 quantization of a {type(module).__name__} is not supported")  # pragma: no cover


_HALF: tuple = ()


def _half_classes():
    """(HalfFeatures, HalfText), defined on first use (torch is imported lazily here)."""
    global _HALF
    if _HALF:
        return _HALF
    import torch

    from ftdsl.stages.model import FeaturesModule, TextModule

    class HalfFeatures(FeaturesModule):
        """float16 network; float32 raw features in, normalized in float32, float32 out."""

        def __init__(self, inner):
            shape = tuple(inner.norm_mean.shape)
            super().__init__(inner.net.half(), shape, inner.norm_mean.float(), inner.norm_std.float())

        def forward(self, x):
            z = (x.float() - self.norm_mean) / self.norm_std
            return self.net(z.to(torch.float16)).float()

    class HalfText(TextModule):
        """float16 network; token ids in, float32 out."""

        def __init__(self, inner):
            super().__init__(inner.net.half(), hf=inner.hf)

        def forward(self, input_ids, attention_mask):
            return super().forward(input_ids, attention_mask).float()

    _HALF = (HalfFeatures, HalfText)
    return _HALF


def quantized_size_bytes(module) -> int:
    """Bytes of a quantized module's weights: each dynamically quantized Linear counts its int8
    weight, a float32 scale and an int32 zero point per output channel (or one per tensor) and
    its float32 bias; every other parameter and buffer counts its own element size."""
    import torch

    total = 0
    counted: set[int] = set()
    for m in module.modules():
        packed = getattr(m, "_packed_params", None)
        if packed is not None and callable(getattr(m, "weight", None)):
            w = m.weight()
            total += w.numel() * w.element_size()
            if w.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric,
                               torch.per_channel_affine_float_qparams):
                total += w.q_per_channel_scales().numel() * 8  # float32 scale + int32 zero point
            else:
                total += 8
            b = m.bias()
            if b is not None:
                total += b.numel() * 4
            for t in list(m.parameters(recurse=False)) + list(m.buffers(recurse=False)):
                counted.add(id(t))
    for t in list(module.parameters()) + list(module.buffers()):
        if id(t) not in counted:
            counted.add(id(t))
            total += t.numel() * t.element_size()
    return int(total)


def parameter_count(module) -> int:
    """Parameters of a (possibly quantized) module, counting each quantized Linear's weight and
    bias (``module.parameters()`` does not list them)."""
    total = 0
    seen: set[int] = set()
    for m in module.modules():
        if getattr(m, "_packed_params", None) is not None and callable(getattr(m, "weight", None)):
            total += m.weight().numel()
            b = m.bias()
            total += 0 if b is None else b.numel()
    for t in module.parameters():
        if id(t) not in seen:
            seen.add(id(t))
            total += t.numel()
    return int(total)


class QuantizedTorchModel:
    """A TorchModel quantized in PyTorch: the float model (spec + safetensors weights +
    tokenizer, saved as a TorchModel saves itself) and the quantization recipe. ``build()``
    applies the recipe to the rebuilt float module, deterministically; nothing is pickled.

    Saved form: the TorchModel files (``spec.json``, ``model.safetensors``, ``tokenizer/``,
    ``hf_config/``) + ``quantization.json`` (``recipe``, ``size_bytes``, ``metrics``).
    """

    trained = True

    def __init__(self, base, recipe: dict, *, size_bytes: int | None = None, num_params: int | None = None,
                 metrics: dict | None = None, observers: dict | None = None, observers_path: Path | None = None):
        self.base = base
        self.recipe = dict(recipe)
        self._observers = observers
        self._observers_path = observers_path
        self._size = size_bytes
        self._params = num_params
        self.metrics = dict(metrics or {})

    # -- TorchModel-like queries -------------------------------------------------------------

    @property
    def spec(self) -> dict:
        return {**self.base.spec, "quantization": self.recipe}

    @property
    def task(self) -> dict:
        return self.base.task

    @property
    def modality(self) -> str | None:
        return self.base.modality

    @property
    def tokenizer_dir(self):
        return self.base.tokenizer_dir

    @property
    def method(self) -> str:
        return self.recipe["method"]

    def load_tokenizer(self):
        return self.base.load_tokenizer()

    def float_state_dict(self):
        """The float weights the quantization is applied to."""
        return self.base.state_dict()

    def observers(self) -> dict | None:
        """Static quantization: the calibrated observers' state (read on first use)."""
        if self._observers is None and self._observers_path is not None:
            from safetensors.torch import load_file

            try:
                self._observers = load_file(str(self._observers_path))
            except Exception as e:
                raise StageError("FTP503", f"cannot read {self._observers_path}: {e}",
                                 hint="rerun the quantize stage with --force") from e
        return self._observers

    def build(self):
        """The quantized module (CPU, eval mode): the float model rebuilt, then quantized."""
        return quantize_module(self.base.build(), self.recipe, self.observers())

    @property
    def size_bytes(self) -> int:
        """The quantized weights' size in bytes (see :func:`quantized_size_bytes`)."""
        if self._size is None:
            self._size = quantized_size_bytes(self.build())
        return int(self._size)

    @property
    def num_params(self) -> int:
        """Parameters, quantized ones included (``build().parameters()`` misses those)."""
        if self._params is None:
            self._params = parameter_count(self.build())
        return int(self._params)

    # -- persistence -------------------------------------------------------------------------

    def save(self, dir: Path) -> None:
        from ftdsl.stages.model import TorchModel

        dir = Path(dir)
        dir.mkdir(parents=True, exist_ok=True)
        base = self.base
        TorchModel(base.spec, base.state_dict(), tokenizer_dir=base.tokenizer_dir, hf_config=base.hf_config,
                   metrics={}).save(dir)
        obs = self.observers()
        if obs is not None:
            from safetensors.torch import save_file

            save_file(obs, str(dir / OBSERVERS_FILE), metadata={"format": "pt"})
        _write_json(dir / QUANT_FILE, {"format_version": FORMAT_VERSION, "recipe": self.recipe,
                                       "size_bytes": self.size_bytes, "num_params": self.num_params,
                                       "metrics": self.metrics})

    @classmethod
    def load(cls, dir: Path) -> "QuantizedTorchModel":
        from ftdsl.stages.model import TorchModel

        dir = Path(dir)
        q = json.loads((dir / QUANT_FILE).read_text(encoding="utf-8"))
        if q.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{dir}: unsupported QuantizedTorchModel format {q.get('format_version')!r}")
        base = TorchModel.load(dir)
        if not base.trained:
            raise ValueError(f"{dir}: the float weights are missing")
        obs = dir / OBSERVERS_FILE
        if q["recipe"].get("method") == "static" and not obs.is_file():
            raise ValueError(f"{dir}: {OBSERVERS_FILE} is missing")
        return cls(base, q["recipe"], size_bytes=q.get("size_bytes"), num_params=q.get("num_params"),
                   metrics=q.get("metrics") or {}, observers_path=obs if obs.is_file() else None)

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return f"QuantizedTorchModel({self.recipe.get('method')}, {self.base!r})"


def _run_torch(src, method: dict, inputs: dict, attrs: dict, ctx):
    import torch

    from ftdsl.stages.export import random_batches

    label = _label(attrs)
    kind = method["$call"]
    if not getattr(src, "trained", False):
        raise StageError("FTP510", f"quantize: `{label}` is an untrained model; there are no weights to quantize",
                         hint="quantize a trained model: `from = <a train, prune or distill stage>`")
    if kind == "static" and src.modality != "features":
        ref = method.get("calibrate") or {}
        data = f"{ref.get('$ref', 'DATA')}.{ref.get('split', 'valid')}"
        raise StageError(
            "FTP530", f"static int8 quantization in PyTorch is for features models (mlp, cnn); `{label}` takes text",
            hint=f"use `method = dynamic()` (static int8 costs transformers much accuracy), or export it to ONNX "
                 f"and quantize that: `export e {{ from = {label}, format = onnx() }}` and "
                 f"`quantize ... {{ from = e, method = static(calibrate = {data}) }}`")
    if kind == "dynamic" and str(method.get("dtype") or "int8") != "int8":
        raise StageError("FTP530", f"PyTorch's dynamic quantization stores weights as int8 only, not "
                                   f"{method.get('dtype')}",
                         hint="use `method = dynamic(dtype = int8)`, or export to ONNX and quantize that "
                              "(onnxruntime takes uint8 weights)")
    recipe = _torch_method(method)
    ctx.reporter.start(None, f"quantize {label} ({kind})")
    t0 = time.perf_counter()
    float_module = src.build()
    before = sum(t.numel() * t.element_size() for t in (src.state_dict() or {}).values())
    observers = None
    probe, where = None, "random inputs"
    if kind == "static":
        batches, where = _calibration_batches(src, inputs.get("method.calibrate"), method, ctx.seed)
        recipe["calibration_rows"] = sum(len(b["x"]) for b in batches)
        try:
            observers = calibrate_static(src.build(), recipe, batches)
            qmodule = quantize_module(src.build(), recipe, observers)
        except FtdslError:
            raise
        except Exception as e:  # FX cannot trace this network
            raise StageError("FTP530", f"PyTorch cannot quantize `{label}` statically: {type(e).__name__}: "
                                       f"{_first_line(e)}",
                             hint=f"export it to ONNX and quantize that (`export e {{ from = {label}, format = "
                                  "onnx() }`, then `quantize ... { from = e, method = static(...) }`), or use "
                                  "`method = dynamic()`") from e
        probe = [{"x": torch.from_numpy(b["x"])} for b in batches]
    else:
        qmodule = quantize_module(src.build(), recipe)
    quantize_s = time.perf_counter() - t0
    after = quantized_size_bytes(qmodule)
    agreement = _Agreement(_is_classifier(src.task))
    names = list(float_module.input_names)
    with torch.inference_mode():
        for b in probe or random_batches(src, float_module, ctx.seed):
            args = [b[n] for n in names]
            agreement.add(float_module(*args).float().numpy(), qmodule(*args).float().numpy())
    parity = agreement.as_dict(where)
    metrics = {"size_mb": after / 1e6, "size_before_mb": before / 1e6, "compression": before / max(1, after),
               "quantize_s": quantize_s, **_parity_metrics(parity)}
    for k in ("valid.accuracy", "test.accuracy", "valid.mse", "test.mse"):
        if isinstance(src.metrics.get(k), (int, float)):
            metrics[f"before.{k}"] = src.metrics[k]
    art = QuantizedTorchModel(src, recipe, size_bytes=after, num_params=parameter_count(qmodule), metrics=metrics,
                              observers=observers)
    out = Path(ctx.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _write_json(out / REPORT_FILE, {"from": label, "kind": "torch", "method": method, "quantization": recipe,
                                    "size_before_bytes": before, "size_after_bytes": after,
                                    "compression": before / max(1, after), "parity": parity,
                                    "quantize_s": quantize_s, "torch": torch.__version__})
    ctx.reporter.log(_summary(label, _describe(recipe), before, after, parity))
    return art


# --------------------------------------------------------------------------------------------
# The stage


def _is_onnx(art) -> bool:
    from ftdsl.stages.export import OnnxModel

    return isinstance(art, OnnxModel)


def run(inputs: dict, attrs: dict, ctx):
    """Quantize ``inputs["from"]``: an OnnxModel with onnxruntime, a TorchModel in PyTorch."""
    src = inputs.get("from")
    method = _method(attrs)
    label = _label(attrs)
    if _is_onnx(src):
        return _run_onnx(src, method, inputs, attrs, ctx)
    if isinstance(src, QuantizedTorchModel):
        raise StageError("FTP207", f"`{label}` is already quantized in PyTorch",
                         hint="quantize the float model, once")
    from ftdsl.stages.model import TorchModel

    if isinstance(src, TorchModel):
        return _run_torch(src, method, inputs, attrs, ctx)
    raise StageError("FTP530", f"quantize: `{label}` is a {type(src).__name__}; quantize a trained model or an "
                               "ONNX export (`export ... {{ format = onnx() }}`)")
