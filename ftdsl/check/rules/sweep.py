"""Sweeps at lint time: every `over` path must name a settable attribute of the target and every
value fit it (FTP212); every range must be a non-empty range of the attribute's type, and `grid`
can only enumerate finite spaces (FTP216). So a typo fails at lint time instead of after the
target has trained. The logic is the sweep stage's own (torch-free modules), so lint and run agree.
"""

from __future__ import annotations

from ftdsl.diagnostics import make
from ftdsl.ir.convert import did_you_mean
from ftdsl.ir.lower import lower_value, stage_config
from ftdsl.ir.nodes import CallV, DictIR, ListIR, RefV


def sweep_over_paths(ctx):
    """FTP212/FTP216: `over` names a path the target does not have, a value or range it cannot take."""
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
        from ftdsl.stages.sweep_paths import Bad, apply_params, resolve, sweep_paths
        from ftdsl.stages.sweep_space import bases_for, dist_of, space_problem

        cfg = stage_config(tb)
        switch = {p: [lower_value(x) for x in v.items] for p, v in over.entries
                  if "." not in p and isinstance(v, ListIR)}
        spans = over.key_spans or (None,) * len(over.entries)
        continuous = []
        for (path, values), span in zip(over.entries, spans):
            bases = bases_for(tb.kind, cfg, path, switch)  # a switched constructor has other arguments
            valid = list(dict.fromkeys(q for base in bases for q in sweep_paths(tb.kind, base)))
            if path not in valid:
                yield make("FTP212", f"`{name}.over`: `{path}` is not an attribute of `{tb.kind} {tb.name}`",
                           span or b.name_span, label="unknown attribute path",
                           hint=did_you_mean(path, valid) or "sweepable: " + ", ".join(valid[:12]))
                continue
            if isinstance(values, CallV):
                where = values.span or span or b.name_span
                try:
                    dist = dist_of(lower_value(values))
                except Bad as e:
                    yield make("FTP216", f"`{name}.over.\"{path}\"`: {e}", where, label="empty or invalid range")
                    continue
                field = None
                for base in bases:
                    try:
                        field = resolve(tb.kind, base, path)[2]
                        break
                    except Bad:
                        continue
                problem = space_problem(dist, field) if field is not None else None
                if problem:
                    yield make("FTP216", f"`{name}.over.\"{path}\"` = {dist.describe()}: {problem}", where,
                               label="does not fit the attribute")
                elif not dist.finite:
                    continuous.append((path, dist, where))
                continue
            for v in values.items if isinstance(values, ListIR) else ():
                errors = []
                for base in bases:
                    try:
                        apply_params(tb.kind, base, {path: lower_value(v)})
                        break
                    except Bad as e:
                        errors.append(e)
                else:
                    yield make("FTP212", f"`{name}.over`: {errors[0]}", v.span or span,
                               label="cannot be set on the target")
        strategy = b.value("strategy")
        is_grid = strategy is None or (isinstance(strategy, CallV) and strategy.name == "grid")
        if continuous and is_grid:
            path, dist, where = continuous[0]
            s_span = getattr(strategy, "span", None)
            yield make("FTP216", f"`{name}`: `grid` cannot enumerate `{path}` = {dist.describe()}, a continuous range",
                       s_span or where, label="grid needs lists of values",
                       hint=f"use `strategy = random(n = 8, seed = 0)` or `optuna(n = 8)` to draw from the range, "
                            f"or list the values to try: `\"{path}\" = [...]`")
