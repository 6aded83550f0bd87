"""`quantize` of an OnnxModel: onnxruntime's quantizer (see :mod:`ftdsl.stages.quantize`).

**Which int8 format, and why it is the same on every CPU.** Dynamic quantization quantizes
activations to uint8 at run time; the weights' type is the choice. On x86 CPUs without VNNI
(AVX2-only, and AVX-512 before Cascade Lake) onnxruntime's U8S8 kernels multiply with
VPMADDUBSW, which adds each pair of u8 x s8 products into a *saturating* int16: with 8-bit
weights a pair reaches 255 * 127 * 2 = 64,770 and is clamped, and the model's outputs move
(the digits/synthetic MLP test: max logit difference 1.81 instead of 0.08). onnxruntime's
documentation ("Quantize ONNX models", "When and why do I need to try U8U8?") names two cures:
``reduce_range`` (7-bit weights) or the U8U8 format. A model quantized on one machine runs on
others, so the stage chooses the format by where the model may run, not where it is quantized:

* ``dtype = int8``: int8 weights in 7 bits (``reduce_range=True``, weights in [-64, 64]): a pair
  is at most 255 * 64 * 2 = 32,640 <= 32,767, so no x86 kernel saturates, and VNNI CPUs keep the
  fast U8S8 kernel. Measured cost of the lost bit: none visible in accuracy (docs/benchmarks.md).
* ``dtype = uint8``: U8U8 (uint8 weights, 8 bits): the kernels widen to 16 bits first and never
  saturate; slower than U8S8 on VNNI CPUs.
* ``static``: QDQ with int8 weights, also in 7 bits, for the same reason (onnxruntime runs S8S8
  through its U8S8 kernels on x86).

The stage checks the result: every int8 weight a MatMulInteger / ConvInteger / QLinear op reads
must be within [-64, 64] (``quantization.max_abs_weight``), and the agreement with the float graph
is judged by :mod:`ftdsl.stages.quant_verify`. ``onnx.json``'s ``quantization`` records the
format (``weight_bits``, ``reduce_range``, ``weights``, ``saturation_free``, ``why``) and the ISA
of the machine that quantized it (``quantized_on``).

``dynamic(fuse = true)`` (the default) quantizes a transformer's fused graph
(:mod:`ftdsl.stages.onnx_fusion`: onnxruntime contrib ops, ``QAttention`` with 7-bit weights
too, so the file needs onnxruntime); ``quantization.fusion`` records the fused operators or why
the graph was not fused, and a fused graph onnxruntime cannot quantize falls back to the
unfused one. ``fuse = false`` keeps standard ONNX operators only.
"""

from __future__ import annotations

import json
import platform
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from ftdsl.errors import FtdslError, StageError
from ftdsl.stages.export_artifacts import raise_if_resource
from ftdsl.stages.quant_common import REPORT_FILE, first_line, is_classifier, label_of, quiet_quantizer

__all__ = ["run_onnx", "int8_format", "cpu_isa", "max_abs_int8_weight"]

# ONNX ops that onnxruntime's dynamic quantizer turns into slow integer kernels on CPU
_SLOW_DYNAMIC_OPS = ("Conv", "ConvTranspose")
SAFE_INT8 = 64  # |weight| <= 64: 255 * 64 * 2 = 32,640 fits VPMADDUBSW's int16 pair sums
_INTEGER_OPS = {"MatMulInteger": 1, "ConvInteger": 1, "QLinearMatMul": 3, "QLinearConv": 3,
                "DynamicQuantizeMatMul": 1, "MatMulIntegerToFloat": 1, "QAttention": 1}


def cpu_isa() -> dict:
    """The x86 features that decide onnxruntime's integer kernels, from /proc/cpuinfo."""
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:  # pragma: no cover - not Linux
        pass
    vnni = "avx512_vnni" in flags or "avx_vnni" in flags
    isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else platform.machine() or "unknown"
    return {"machine": platform.machine(), "isa": isa + (" + VNNI" if vnni else ""), "vnni": vnni,
            "avx512_bf16": "avx512_bf16" in flags, "amx": "amx_tile" in flags}


def int8_format(dtype: str) -> dict:
    """The weight format for ``dtype`` (see the module docstring): quantizer arguments + record."""
    if dtype == "uint8":
        return {"weight_type": "QUInt8", "reduce_range": False,
                "record": {"weights": "uint8 (U8U8)", "weight_bits": 8, "reduce_range": False,
                           "why": "uint8 weights: onnxruntime's U8U8 kernels widen to 16 bits and never saturate"}}
    return {"weight_type": "QInt8", "reduce_range": True,
            "record": {"weights": "int8 in 7 bits (U8S8, reduce_range)", "weight_bits": 7, "reduce_range": True,
                       "why": "7-bit int8 weights keep the U8S8 pair sums within int16 (255*64*2 = 32640) "
                              "on CPUs without VNNI, where onnxruntime's kernels would saturate 8-bit "
                              "weights; VNNI CPUs run the same file at the same speed"}}


def max_abs_int8_weight(proto) -> int | None:
    """The largest |int8 weight| an integer op of ``proto`` reads from an initializer (None: no
    int8 weights, e.g. U8U8 or fp16)."""
    from onnx import TensorProto, numpy_helper

    inits = {i.name: i for i in proto.graph.initializer}
    # DequantizeLinear of an int8 initializer (QDQ) feeds the op in QDQ graphs: count those too
    dq_inputs = {n.output[0]: n.input[0] for n in proto.graph.node if n.op_type == "DequantizeLinear"}
    names = set()
    for n in proto.graph.node:
        pos = _INTEGER_OPS.get(n.op_type)
        if pos is not None and len(n.input) > pos:
            names.add(n.input[pos])
        elif n.op_type in ("MatMul", "Gemm", "Conv") and len(n.input) > 1 and n.input[1] in dq_inputs:
            names.add(dq_inputs[n.input[1]])
    best = None
    for name in names:
        init = inits.get(name)
        if init is not None and init.data_type == TensorProto.INT8:
            m = int(np.abs(numpy_helper.to_array(init).astype(np.int32)).max(initial=0))
            best = m if best is None else max(best, m)
    return best


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
        raise_if_resource(e, dst)
        return src_path, f"{type(e).__name__}: {first_line(e)}"


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
            from ftdsl.stages.onnx_utils import ort_feed

            for b in probe[:2]:  # (ort_feed fills a causal LM decoder's empty pasts and positions)
                sess.run(None, ort_feed(sess, b))
        return converted, "graph", None
    except Exception as e:  # noqa: BLE001 - CPU kernels missing for some fp16 op: weights only
        why = f"{type(e).__name__}: {first_line(e)}"
    return _fp16_weights_only(copy.deepcopy(proto)), "weights", why


def _calibration(src, inputs: dict, method: dict, seed: int) -> tuple[list[dict], str]:
    from ftdsl.stages.probe_inputs import split_batches

    ref = method.get("calibrate") or {}
    where = f"{ref.get('$ref', 'data')}.{ref.get('split', '?')}"
    dataset = inputs.get("method.calibrate")
    if dataset is None:  # pragma: no cover - the executor always passes it
        raise TypeError(f"quantize: calibration data `{where}` was not passed to the stage")
    return split_batches(src, dataset, ref["split"], where, what="quantize", rows=int(method["samples"]),
                         seed=seed, as_numpy=True), where


def _set_metadata(proto, items) -> None:
    for k, v in items:
        entry = next((p for p in proto.metadata_props if p.key == k), None)
        if entry is None:
            entry = proto.metadata_props.add()
            entry.key = k
        entry.value = v


def _quantize_int8(kind: str, method: dict, pre: Path, dst: Path, calib: list[dict], where: str, src,
                   external: bool) -> dict:
    """onnxruntime's quantize_dynamic / quantize_static into ``dst``; returns the record."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

    if kind == "dynamic":
        dtype = str(method["dtype"])
        per_channel = bool(method["per_channel"])
        fmt = int8_format(dtype)
        with quiet_quantizer():
            quantize_dynamic(str(pre), str(dst), per_channel=per_channel, reduce_range=fmt["reduce_range"],
                             weight_type=getattr(QuantType, fmt["weight_type"]), use_external_data_format=external)
        return {"dtype": dtype, "per_channel": per_channel, "format": "QOperator", "activations": "dynamic uint8",
                **fmt["record"]}
    fmt = int8_format("int8")
    with quiet_quantizer():
        quantize_static(str(pre), str(dst), _reader(calib, list(src.inputs)), quant_format=QuantFormat.QDQ,
                        per_channel=True, reduce_range=True, activation_type=QuantType.QInt8,
                        weight_type=QuantType.QInt8, use_external_data_format=external)
    return {"dtype": "int8", "per_channel": True, "format": "QDQ", "activations": "int8", "calibrate": where,
            "calibration": "minmax", "calibration_rows": sum(len(next(iter(b.values()))) for b in calib),
            **fmt["record"]}


def _fuse(src, method: dict, kind: str, external: bool, tmp: Path, probe: list[dict], ctx):
    """(fused graph or None, fusion record or None) for an int8 ``dynamic`` quantization
    (:mod:`ftdsl.stages.onnx_fusion`); ``fuse = false`` or another method: (None, None)."""
    if kind != "dynamic" or not method.get("fuse", True):
        return None, ({"applied": False, "why": "fuse = false"} if kind == "dynamic" else None)
    if external:  # pragma: no cover - > 2 GB models only
        return None, {"applied": False, "why": "skipped: external data (> 2 GB)"}
    from ftdsl.stages.onnx_fusion import fuse

    fused, rec = fuse(Path(src.onnx_path), src.meta, tmp / "fused.onnx", probe, lambda feed: src.predict(feed))
    if not rec.get("applied") and src.meta.get("modality") == "text":
        ctx.reporter.log(f"note: quantizing the unfused graph ({rec.get('why')})")
    return fused, rec


def run_onnx(src, method: dict, inputs: dict, attrs: dict, ctx):
    import onnx
    import onnxruntime as ort

    from ftdsl.stages.agreement import Parity
    from ftdsl.stages.export_artifacts import ONNX_FILE, OnnxModel, copy_tokenizer, write_bytes, write_json
    from ftdsl.stages.onnx_utils import serialize
    from ftdsl.stages.probe_inputs import onnx_random_batches
    from ftdsl.stages.quant_verify import check_budget, describe, parity_metrics, summary_line

    label = label_of(attrs)
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
        calib, where = _calibration(src, inputs, method, ctx.seed)
        if modality == "text":
            ctx.reporter.log("warning: static int8 quantization usually costs transformers much accuracy "
                             "(activation ranges are wide); `method = dynamic()` suits text models")
    elif kind == "dynamic" and ops & set(_SLOW_DYNAMIC_OPS):
        ctx.reporter.log("warning: dynamic quantization turns convolutions into ConvInteger, which onnxruntime "
                         "runs slower than float on CPU; `method = static(calibrate = DATA.valid)` suits CNNs")
    probe = calib or onnx_random_batches(src, proto, ctx.seed)
    ctx.reporter.start(None, f"quantize {label} ({kind})")
    work = Path(ctx.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="quantize-", dir=work))
    qinfo: dict[str, Any] = {"method": kind, "from": label, "backend": "onnxruntime",
                             "onnxruntime": ort.__version__, "quantized_on": cpu_isa()}
    try:
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
                fused, fusion = _fuse(src, method, kind, external, tmp, probe, ctx)
                if fusion is not None:
                    qinfo["fusion"] = fusion
                if fused is not None:  # the optimizer's basic level replaces quant_pre_process
                    try:
                        qinfo.update(_quantize_int8(kind, method, fused, tmp / "quantized.onnx", calib, where, src,
                                                    external))
                        qinfo["preprocessed"] = True
                    except FtdslError:
                        raise
                    except Exception as e:  # noqa: BLE001 - quantize the unfused graph instead
                        raise_if_resource(e, tmp)
                        qinfo["fusion"] = {**fusion, "applied": False, "why": "onnxruntime could not quantize the "
                                           f"fused graph: {type(e).__name__}: {first_line(e)}"}
                        fused = None
                if fused is None:
                    pre, pre_err = (src.onnx_path, "skipped: external data") if external else \
                        _preprocess(src.onnx_path, tmp / "pre.onnx")
                    qinfo["preprocessed"] = pre_err is None
                    if pre_err:
                        qinfo["preprocess_error"] = pre_err
                    qinfo.update(_quantize_int8(kind, method, pre, tmp / "quantized.onnx", calib, where, src,
                                                external))
                qproto = onnx.load(str(tmp / "quantized.onnx"))
                biggest = max_abs_int8_weight(qproto)
                qinfo["max_abs_weight"] = biggest
                qinfo["saturation_free"] = biggest is None or biggest <= SAFE_INT8
        except FtdslError:
            raise
        except Exception as e:
            raise_if_resource(e, tmp)
            raise StageError("FTP530", f"onnxruntime could not quantize `{label}` ({kind}): {type(e).__name__}: "
                                       f"{first_line(e)}",
                             hint="try another method (`dynamic()` quantizes weights only), or re-export with "
                                  "another opset") from e
        quantize_s = time.perf_counter() - t0
        if qinfo.get("saturation_free") is False:  # pragma: no cover - the quantizer ignored reduce_range
            raise StageError("FTP502", f"the quantized `{label}` holds int8 weights up to {qinfo['max_abs_weight']}; "
                                       f"above {SAFE_INT8} they saturate on x86 CPUs without VNNI",
                             hint="use `dynamic(dtype = uint8)`; nothing was kept")
        _set_metadata(qproto, (("ftdsl.stage", ctx.name), ("ftdsl.quantization", json.dumps(qinfo, sort_keys=True))))
        model_bytes, data_bytes = serialize(qproto)
        del qproto
        # checked from the work folder: nothing reaches out/ unless it agrees with the float graph
        if data_bytes is not None:  # pragma: no cover - > 2 GB models only
            write_bytes(tmp / "model" / (ONNX_FILE + ".data"), data_bytes)
        write_bytes(tmp / "model" / ONNX_FILE, model_bytes)
        meta = {k: v for k, v in src.meta.items() if k not in ("metrics", "format_version")}
        meta.update({"quantization": qinfo, "stage": ctx.name, "key": getattr(ctx, "key", ""),
                     "quantized_from": label})
        checked = OnnxModel(tmp / "model" / ONNX_FILE, meta, None)
        agreement = Parity(classify=is_classifier(meta.get("task")))
        try:
            names = [i.name for i in checked.session().get_inputs()]
            for b in probe:
                feed = {n: b[n] for n in names if n in b}  # predict fills a decoder's pasts and positions
                agreement.add(src.predict(feed), checked.predict(feed))
        except StageError:
            raise
        except Exception as e:
            raise StageError("FTP502", f"the quantized `{label}` fails in onnxruntime: {first_line(e)}",
                             hint="try another method (`dynamic()`), or re-export with another opset") from e
        parity = agreement.summary(where)
        parity["budget"] = check_budget(agreement, kind, label, where, describe(qinfo))
        if data_bytes is not None:  # pragma: no cover - > 2 GB models only
            write_bytes(out / (ONNX_FILE + ".data"), data_bytes)
        write_bytes(out / ONNX_FILE, model_bytes)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    tok = copy_tokenizer(src.tokenizer_dir, out / "tokenizer") if src.tokenizer_dir is not None else None
    art = OnnxModel(out / ONNX_FILE, meta, tok)
    before, after = int(src.size_bytes), int(art.size_bytes)
    metrics = {"size_mb": after / 1e6, "size_before_mb": before / 1e6, "compression": before / max(1, after),
               "quantize_s": quantize_s, **parity_metrics(parity)}
    art.metrics = metrics
    write_json(out / "onnx.json", {**meta, "format_version": 1, "metrics": metrics})
    write_json(out / REPORT_FILE, {"from": label, "kind": "onnx", "method": method, "quantization": qinfo,
                                   "size_before_bytes": before, "size_after_bytes": after,
                                   "compression": before / max(1, after), "parity": parity,
                                   "quantize_s": quantize_s})
    fusion = qinfo.get("fusion") or {}
    fused = ", fused: " + ", ".join(f"{v} {k}" for k, v in (fusion.get("operators") or {}).items()) \
        if fusion.get("applied") else ""
    ctx.reporter.log(summary_line(label, describe(qinfo) + fused, before, after, parity))
    return art
