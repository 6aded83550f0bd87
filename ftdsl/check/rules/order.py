"""FTP207: stages chained in an order that cannot work (e.g. ONNX export of a PyTorch-quantized model)."""

from __future__ import annotations

from ftdsl.diagnostics import make
from ftdsl.ir.nodes import CallV, RefV


def stage_order(ctx):
    """FTP207: a quantized TorchModel can be evaluated, but not exported to ONNX, trained, pruned or re-quantized."""
    prog = ctx.program
    for name, b in prog.blocks.items():
        for attr in ("from", "model", "student", "teacher"):
            ref = b.value(attr)
            if not isinstance(ref, RefV) or ctx.types.get(ref.target) != "QuantizedTorchModel":
                continue
            if b.kind == "export":
                fmt = b.value("format")
                if isinstance(fmt, CallV) and fmt.name in ("safetensors", "pt2", "hf"):
                    yield make("FTP207", f"`export {name}`: a model quantized in PyTorch cannot be exported as "
                                         f"`{fmt.name}`", fmt.span or ref.span, label="not for quantized models",
                               hint="export the float model (then quantize the ONNX graph), or use "
                                    "`format = torchscript()`")
                if isinstance(fmt, CallV) and fmt.name == "onnx":
                    q = prog.blocks[ref.target]
                    before = q.value("from")
                    src = before.target if isinstance(before, RefV) else "MODEL"
                    yield make("FTP207", f"`export {name}` exports `{ref.target}`, a model quantized in PyTorch, to ONNX",
                               ref.span, label="quantized in PyTorch",
                               hint=f"export first, then quantize the ONNX graph: `export {name} {{ from = {src} }}` "
                                    f"and `quantize {ref.target} {{ from = {name}, method = dynamic() }}`")
            elif b.kind in ("train", "distill", "prune", "quantize"):
                what = {"quantize": "quantize it again", "prune": "prune it"}.get(b.kind, "train it")
                yield make("FTP207", f"`{b.kind} {name}` would {what}, but `{ref.target}` is already quantized",
                           ref.span, label="already quantized",
                           hint="quantize last: train, prune and distill the float model first")
