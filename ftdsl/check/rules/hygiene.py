"""Warnings about leftovers and risky settings: FTP220, FTP221, FTP230, FTP231."""

from __future__ import annotations

from ftdsl.diagnostics import make
from ftdsl.ir.nodes import Lit, Sym


def unused_blocks(ctx):
    """FTP220: a `data` or `model` block that no stage uses."""
    used = {e.src for e in ctx.edges}
    for name, b in ctx.program.blocks.items():
        if b.kind in ("data", "model") and name not in used:
            yield make("FTP220", f"{b.kind} block `{name}` is not used by any stage", b.name_span, label="unused",
                       hint=f"reference it (`{'data' if b.kind == 'data' else 'model'} = {name}`) or remove it")


def unused_params(ctx):
    """FTP221: a param nothing refers to."""
    for name, p in ctx.program.params.items():
        if not ctx.program.param_uses.get(name):
            yield make("FTP221", f"param `{name}` is never used", p.name_span, label="unused",
                       hint=f"refer to it as `{name}` in an attribute, or remove it")


def export_without_verify(ctx):
    """FTP230: an export that is not checked against PyTorch."""
    for name, b in ctx.program.blocks.items():
        if b.kind != "export":
            continue
        v = b.value("verify")
        if isinstance(v, Lit) and v.value in (False, None):
            yield make("FTP230", f"`export {name}` is not verified", b.name_span, label="no `verify`",
                       hint="add `verify = true` to compare the export with PyTorch on real inputs")


def fp16_on_cpu(ctx):
    """FTP231: fp16 autocast on a CPU is very slow."""
    dev = ctx.program.setting("device", "auto")
    if dev != "cpu":
        return
    for name, b in ctx.program.blocks.items():
        v = b.value("precision") if b.kind in ("train", "distill") else None
        if isinstance(v, Sym) and v.name == "fp16":
            yield make("FTP231", f"`{name}` uses fp16 with `device = cpu`: about 18x slower than fp32", v.span,
                       label="slow on CPU", hint="use `precision = auto` (bf16 where the CPU supports it)")
