"""FTP212 for sweeps: every `over` path must name a settable attribute of the target, and every
value must fit it, so a typo fails at lint time instead of after the target has trained."""

from __future__ import annotations

from ftdsl.diagnostics import make
from ftdsl.ir.convert import did_you_mean
from ftdsl.ir.lower import lower_value, stage_config
from ftdsl.ir.nodes import DictIR, ListIR, RefV


def sweep_over_paths(ctx):
    """FTP212: `over` names an attribute path the target does not have, or a value it cannot take."""
    # The path logic lives with the sweep stage (torch-free module), so lint and run agree.
    blocks = ctx.program.blocks
    for name, b in blocks.items():
        if b.kind != "sweep":
            continue
        target, over = b.value("target"), b.value("over")
        if not isinstance(target, RefV) or target.target not in blocks or not isinstance(over, DictIR):
            continue
        tb = blocks[target.target]
        if tb.kind not in ("train", "distill"):
            continue  # FTP209 already
        from ftdsl.stages.sweep import _Bad, apply_params, sweep_paths

        cfg = stage_config(tb)
        valid = sweep_paths(tb.kind, cfg)
        spans = over.key_spans or (None,) * len(over.entries)
        for (path, values), span in zip(over.entries, spans):
            if path not in valid:
                yield make("FTP212", f"`{name}.over`: `{path}` is not an attribute of `{tb.kind} {tb.name}`",
                           span or b.name_span, label="unknown attribute path",
                           hint=did_you_mean(path, valid) or "sweepable: " + ", ".join(valid[:12]))
                continue
            for v in values.items if isinstance(values, ListIR) else ():
                try:
                    apply_params(tb.kind, cfg, {path: lower_value(v)})
                except _Bad as e:
                    yield make("FTP212", f"`{name}.over`: {e}", v.span or span, label="cannot be set on the target")
