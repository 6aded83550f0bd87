"""Fused transformer graphs for onnxruntime, before int8 quantization (`quantize`, ``fuse = true``).

onnxruntime runs a transformer fastest when each layer's attention, LayerNorm, GELU and bias
additions are single contrib operators (``Attention``, ``SkipLayerNormalization``,
``BiasGelu``, ...), and its dynamic quantizer turns a packed-QKV ``Attention`` into
``QAttention`` (int8 QKV projection fused with the attention itself). Two tools do the fusions:

1. **onnxscript's ORT fusions** (``onnxscript.rewriter.ort_fusions.optimize_for_ort``), which
   know the graphs torch's dynamo exporter writes (ftdsl's default exporter). onnxruntime's
   own optimizer (step 2) finds no ``Attention`` in a dynamo graph (measured: MiniLM, 0 of 6).
2. **onnxruntime's transformer optimizer** (``onnxruntime.transformers.optimizer.optimize_model``,
   ``model_type = "bert"``, ``opt_level = 1``: portable constant folding, which packs the QKV
   weights into one initializer) for the remaining fusions; ``num_heads`` / ``hidden_size`` come
   from the export's record of the model's config (0 = detected from the graph).
3. **A QAttention-ready mask**: the dynamo graph feeds each ``Attention`` an additive
   ``attention_bias`` computed from the ``attention_mask`` input only; ``QAttention`` takes a
   ``mask_index`` instead. When the bias depends on no graph input but ``attention_mask``
   (a padding mask, the same for every layer) and the layer is not unidirectional, the bias is
   replaced by the 2-D mask itself (``Cast`` to int32) and equal ``qkv_hidden_sizes`` are dropped,
   so the quantizer emits ``QAttention``; otherwise ``Attention`` stays float (said in the record).

The fused float graph is then checked against the unfused one on the probe inputs
(``|fused - float| <= 1e-4 + 1e-3 |float|``, export's default verify budget): a fused graph that
disagrees, or a step that fails, is never quantized; the stage quantizes the unfused graph and
records why. Graphs that are not transformers (features models, no ``Softmax``) are not fused,
and the record says so. The record (``onnx.json`` -> ``fusion``) is :func:`fuse` 's return value.
"""

from __future__ import annotations

import time
from pathlib import Path

__all__ = ["fuse", "FUSED_OPS"]

# onnxruntime's contrib ops that count as fusions in the record
FUSED_OPS = ("Attention", "MultiHeadAttention", "EmbedLayerNormalization", "SkipLayerNormalization",
             "LayerNormalization", "BiasGelu", "FastGelu", "Gelu", "GemmFastGelu", "SkipSimplifiedLayerNormalization",
             "SimplifiedLayerNormalization")
FUSED_ATOL, FUSED_RTOL = 1e-4, 1e-3
_MASK_INPUT = "attention_mask"


def _skip(why: str) -> dict:
    return {"applied": False, "why": why}


def _ancestor_inputs(graph, name: str) -> set[str]:
    """The graph inputs ``name`` is computed from."""
    producers = {o: n for n in graph.node for o in n.output}
    inputs = {i.name for i in graph.input}
    seen, stack, found = set(), [name], set()
    while stack:
        t = stack.pop()
        if t in seen or not t:
            continue
        seen.add(t)
        if t in inputs:
            found.add(t)
        n = producers.get(t)
        if n is not None:
            stack.extend(n.input)
    return found


def _mask_index(proto) -> str:
    """Make every ``Attention`` quantizable (see the module docstring); returns what was done."""
    from onnx import TensorProto, helper

    g = proto.graph
    attn = [n for n in g.node if n.op_type == "Attention" and n.domain == "com.microsoft"]
    if not attn:
        return "no Attention"
    if _MASK_INPUT not in {i.name for i in g.input}:
        return f"kept: no `{_MASK_INPUT}` input"
    biases = set()
    for n in attn:
        attrs = {a.name: a for a in n.attribute}
        if "unidirectional" in attrs and attrs["unidirectional"].i:
            return "kept: unidirectional attention"
        if "qkv_hidden_sizes" in attrs and len(set(attrs["qkv_hidden_sizes"].ints)) != 1:
            return "kept: unequal q/k/v sizes"
        extra = list(n.input)[3:]
        if len(extra) > 3 or (len(extra) > 1 and extra[1]):
            return "kept: Attention with past state"
        if len(extra) == 3 and extra[2]:
            if extra[0]:
                return "kept: Attention with both mask_index and attention_bias"
            biases.add(extra[2])
    if not biases:
        return "mask_index as fused (QAttention-ready)"
    if len(biases) > 1 or any(_ancestor_inputs(g, b) != {_MASK_INPUT} for b in biases):
        return "kept: the attention bias is not a padding mask of `attention_mask`"
    cast_out = "ftdsl_mask_index"
    g.node.insert(0, helper.make_node("Cast", [_MASK_INPUT], [cast_out], to=TensorProto.INT32, name="ftdsl_mask_index"))
    for n in attn:
        ins = list(n.input)[:3] + [cast_out]
        del n.input[:]
        n.input.extend(ins)
        keep = [a for a in n.attribute if a.name != "qkv_hidden_sizes"]
        del n.attribute[:]
        n.attribute.extend(keep)
    return "mask_index from attention_mask (QAttention-ready)"


def _is_transformer(meta: dict, proto) -> str | None:
    """None when the graph is a transformer worth fusing, else why not."""
    if (meta.get("modality") or "features") != "text":
        return f"not a transformer graph ({meta.get('modality') or 'features'} model): nothing to fuse"
    if not any(n.op_type == "Softmax" for n in proto.graph.node):
        return "no attention (Softmax) in the graph: nothing to fuse"
    return None


def fuse(src_path: Path, meta: dict, dst: Path, probe: list[dict], reference) -> tuple[Path | None, dict]:
    """Fuse the transformer graph at ``src_path`` into ``dst``; ``(dst or None, record)``.

    ``reference(feed) -> ndarray`` runs the unfused float graph; the fused one must agree with it
    on ``probe`` (feed dicts). None: quantize the unfused graph (the record says why).
    """
    import onnx

    from ftdsl.stages.quant_common import first_line, quiet_quantizer

    proto = onnx.load(str(src_path))
    why = _is_transformer(meta, proto)
    if why:
        return None, _skip(why)
    cfg = meta.get("transformer") or {}
    heads, hidden = int(cfg.get("num_heads") or 0), int(cfg.get("hidden_size") or 0)
    rec: dict = {"num_heads": heads or "detected", "hidden_size": hidden or "detected"}
    t0 = time.perf_counter()
    work = dst.parent
    try:
        with quiet_quantizer():
            step1 = work / "fuse-onnxscript.onnx"
            try:
                import onnx_ir as ir
                from onnxscript.rewriter.ort_fusions import optimize_for_ort

                model, counts = optimize_for_ort(ir.from_proto(proto))
                onnx.save(ir.to_proto(model), str(step1))
                rec["onnxscript_rules"] = {k: int(v) for k, v in sorted(counts.items()) if v}
            except ImportError as e:  # pragma: no cover - onnxscript ships with torch's exporter
                rec["onnxscript_rules"] = f"skipped: {first_line(e)}"
                step1 = src_path
            del proto
            from onnxruntime.transformers.optimizer import optimize_model

            opt = optimize_model(str(step1), model_type="bert", num_heads=heads, hidden_size=hidden, opt_level=1)
            rec["mask"] = _mask_index(opt.model)
            opt.prune_graph()
            ops: dict[str, int] = {}
            for n in opt.model.graph.node:
                if n.op_type in FUSED_OPS:
                    ops[n.op_type] = ops.get(n.op_type, 0) + 1
            stats = {k: int(v) for k, v in (opt.get_fused_operator_statistics() or {}).items() if v}
            opt.save_model_to_file(str(dst))
    except Exception as e:  # noqa: BLE001 - fusion is an optimization: quantize the unfused graph
        from ftdsl.stages.export_artifacts import raise_if_resource

        raise_if_resource(e, dst.parent)
        return None, {**_skip(f"fusion failed: {type(e).__name__}: {first_line(e)}"), **rec}
    rec["fuse_s"] = round(time.perf_counter() - t0, 3)
    rec["operators"] = stats or ops
    if not any(k in (stats or ops) for k in ("Attention", "MultiHeadAttention", "SkipLayerNormalization",
                                              "BiasGelu", "FastGelu", "Gelu")):
        return None, {**_skip("onnxruntime found no transformer pattern to fuse"), **rec}
    from ftdsl.stages.agreement import Parity
    from ftdsl.stages.onnx_utils import session

    try:
        sess = session(dst)
        names = [i.name for i in sess.get_inputs()]
        p = Parity(FUSED_ATOL, FUSED_RTOL)
        for b in probe:
            feed = {n: b[n] for n in names}
            p.add(reference(feed), sess.run(None, feed)[0])
    except Exception as e:  # noqa: BLE001 - onnxruntime cannot run the fused graph: do without
        return None, {**_skip(f"the fused graph fails in onnxruntime: {type(e).__name__}: {first_line(e)}"), **rec}
    rec["verify"] = {"rows": p.rows, "max_abs_diff": p.max_abs, "atol": FUSED_ATOL, "rtol": FUSED_RTOL,
                     "passed": p.ok}
    if not p.ok:
        return None, {**_skip(f"the fused float graph differs from the export by up to {p.max_abs:.3g}"), **rec}
    return dst, {"applied": True, "tools": ["onnxscript.rewriter.ort_fusions",
                                            "onnxruntime.transformers.optimizer (bert, opt_level 1)"], **rec}
