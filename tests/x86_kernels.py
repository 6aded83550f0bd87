"""An independent model of onnxruntime's integer matrix multiply on x86 CPUs without VNNI.

On AVX2 (and AVX-512 before VNNI) onnxruntime's U8S8 kernels multiply raw uint8 activations by
raw int8 weights with VPMADDUBSW, which adds each adjacent pair of products into a *saturating*
int16, and only then sums the pairs in int32 (VPMADDWD). A pair sum beyond [-32768, 32767] is
clamped: 255 * 127 * 2 = 64,770 can be, 255 * 64 * 2 = 32,640 (7-bit weights, `reduce_range`)
cannot. U8U8 widens both to 16 bits first and never saturates. Zero points are applied from row
and column sums in int32, exactly. (onnxruntime docs, "Quantize ONNX models", section "When and
why do I need to try U8U8?".)

A VNNI CPU cannot run those kernels, so the tests evaluate a quantized graph with onnx's
reference evaluator and this MatMulInteger to see what such a CPU computes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def saturating_matmul_integer(a, b, a_zero_point=None, b_zero_point=None) -> np.ndarray:
    """MatMulInteger(a, b, a_zp, b_zp) as a non-VNNI x86 CPU computes it (see the module doc)."""
    a, b = np.asarray(a), np.asarray(b)
    ai, bi = a.astype(np.int32), b.astype(np.int32)
    k = ai.shape[-1]
    if b.dtype == np.int8 and a.dtype == np.uint8:
        if k % 2:
            ai = np.concatenate([ai, np.zeros((*ai.shape[:-1], 1), np.int32)], -1)
            bi2 = np.concatenate([bi, np.zeros((1, bi.shape[-1]), np.int32)], 0)
        else:
            bi2 = bi
        flat = ai.reshape(-1, ai.shape[-1])
        be, bo = bi2[0::2], bi2[1::2]
        acc = np.empty((flat.shape[0], bi.shape[-1]), np.int64)
        chunk = max(1, (1 << 22) // max(1, be.size))  # rows per step: about 16 MB of int32 pairs
        for s in range(0, flat.shape[0], chunk):  # [rows, pairs, N] in chunks: memory stays small
            rows = flat[s:s + chunk]
            pair = rows[:, 0::2, None] * be[None] + rows[:, 1::2, None] * bo[None]
            acc[s:s + chunk] = np.clip(pair, -32768, 32767).sum(1)
        acc = acc.reshape(*ai.shape[:-1], bi.shape[-1])
    else:  # u8 x u8 (and anything else): exact
        acc = ai.astype(np.int64) @ bi.astype(np.int64)
    ai, bi = a.astype(np.int64), b.astype(np.int64)
    azp = np.int64(0) if a_zero_point is None else np.asarray(a_zero_point).astype(np.int64)
    bzp = np.zeros(bi.shape[-1], np.int64) if b_zero_point is None else \
        np.broadcast_to(np.asarray(b_zero_point).astype(np.int64).reshape(-1), (bi.shape[-1],))
    acc = acc - azp * bi.sum(0) - ai.sum(-1, keepdims=True) * bzp + azp * bzp * k
    return acc.astype(np.int32)


def non_vnni_runner(path: str | Path):
    """``run(feed) -> first output`` of the ONNX file at ``path`` as a non-VNNI x86 CPU computes it."""
    from onnx.reference import ReferenceEvaluator
    from onnx.reference.op_run import OpRun

    class MatMulInteger(OpRun):
        op_domain = ""

        def _run(self, a, b, a_zero_point=None, b_zero_point=None):
            return (saturating_matmul_integer(a, b, a_zero_point, b_zero_point),)

    ref = ReferenceEvaluator(str(path), new_ops=[MatMulInteger, _dequantize_linear()])
    return lambda feed: ref.run(None, feed)[0]


def exact_runner(path: str | Path):
    """The same graph with onnx's own (exact) MatMulInteger: checks the emulation's plumbing."""
    from onnx.reference import ReferenceEvaluator

    ref = ReferenceEvaluator(str(path), new_ops=[_dequantize_linear()])
    return lambda feed: ref.run(None, feed)[0]


def _dequantize_linear():
    """DequantizeLinear for any opset (onnx's reference evaluator lacks the opset-13 one that
    a quantized embedding Gather uses)."""
    from onnx.reference.op_run import OpRun

    class DequantizeLinear(OpRun):
        op_domain = ""

        def _run(self, x, x_scale, x_zero_point=None, axis=None, block_size=None, output_dtype=None):
            x = np.asarray(x).astype(np.float32)
            scale = np.asarray(x_scale, dtype=np.float32)
            zp = np.zeros_like(scale) if x_zero_point is None else np.asarray(x_zero_point).astype(np.float32)
            if scale.ndim == 1 and scale.size > 1:
                shape = [1] * x.ndim
                shape[(1 if axis is None else axis) % x.ndim] = -1
                scale, zp = scale.reshape(shape), zp.reshape(shape)
            return (((x - zp) * scale).astype(np.float32),)

    return DequantizeLinear


def saturation_stats(path: str | Path, feed: dict) -> dict:
    """For graphs the reference evaluator cannot run (MiniLM): onnxruntime computes the exact
    graph with every MatMulInteger's activation input exposed, and each MatMulInteger is then
    recomputed with and without saturation. Returns the share of int16 pair sums that saturate
    and the largest change of a MatMulInteger output relative to its largest |value| (the error
    one layer would get; it is not propagated through the rest of the graph)."""
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    proto = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    nodes = [n for n in proto.graph.node if n.op_type == "MatMulInteger"]
    wanted = sorted({x for n in nodes for x in n.input if x and x not in inits})
    have = {o.name for o in proto.graph.output}
    for name in wanted:
        if name not in have:
            proto.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    outs = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {n: feed[n] for n in names})))
    pairs = saturated = 0
    worst = 0.0
    for n in nodes:
        args = [outs.get(x, inits.get(x)) if x else None for x in n.input] + [None] * (4 - len(n.input))
        a, b, azp, bzp = args[:4]
        exact = a.astype(np.int64).reshape(-1, a.shape[-1]) @ b.astype(np.int64)
        sat = saturating_matmul_integer(a.reshape(-1, a.shape[-1]), b)  # zero points 0: raw products
        pairs += exact.size * ((a.shape[-1] + 1) // 2)
        if b.dtype == np.int8:
            ai = a.reshape(-1, a.shape[-1]).astype(np.int32)
            bi = b.astype(np.int32)
            if ai.shape[-1] % 2:
                ai = np.concatenate([ai, np.zeros((ai.shape[0], 1), np.int32)], 1)
                bi = np.concatenate([bi, np.zeros((1, bi.shape[1]), np.int32)], 0)
            step = max(1, (1 << 22) // max(1, bi.size // 2))
            for s in range(0, ai.shape[0], step):
                r = ai[s:s + step]
                pair = r[:, 0::2, None] * bi[0::2][None] + r[:, 1::2, None] * bi[1::2][None]
                saturated += int(((pair > 32767) | (pair < -32768)).sum())
        scale = max(1.0, float(np.abs(exact).max()))
        worst = max(worst, float(np.abs(sat.astype(np.int64) - exact).max()) / scale)
    return {"matmuls": len(nodes), "pair_sums": int(pairs), "saturated_pair_sums": saturated,
            "saturated_share": saturated / max(1, pairs), "max_layer_rel_error": worst}
