"""Early stopping: keep the best weights by a metric, stop after `patience` evaluations without
improvement. The state it needs (best value, its step, evaluations without improvement, the best
weights) lives in the loop's :class:`~ftdsl.stages.train_state.LoopState`."""

from __future__ import annotations

import math
from typing import Callable

from ftdsl.ir.schema.metrics import better, metric_mode

__all__ = ["early_stop"]



def early_stop(es: dict | None, state, step: int, evals: dict[str, dict], weights: Callable[[], dict],
               log: Callable[[str], None]) -> bool:
    """Record ``evals`` (``{"valid": {"loss": ..}, "train": {..}}``) at ``step``; True to stop.
    ``weights()`` returns a CPU copy of the current weights, kept when they are the best so far."""
    if not es:
        return False
    metric = es.get("metric", "valid.loss")
    split, _, key = metric.partition(".")
    value = evals.get(split, {}).get(key)
    if value is None or not math.isfinite(value):
        return False
    # the lowering fills `mode` from the schema's metric registry; a direct caller may leave it out
    mode = es.get("mode") or metric_mode(metric)
    delta = float(es.get("min_delta") or 0.0)
    best = state.best
    if best is None or better(mode, value, best["value"], delta):
        state.best = {"metric": metric, "value": value, "step": step, "bad": 0}
        state.best_state = weights()
        return False
    best["bad"] += 1
    if best["bad"] >= int(es.get("patience", 2)):
        log(f"early stop at step {step}: {metric} has not improved for {best['bad']} evaluations "
            f"(best {best['value']:.6g} at step {best['step']})")
        return True
    return False
