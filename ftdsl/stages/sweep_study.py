"""The state of a sweep's study: its identity, and Optuna's ask/tell loop rebuilt from results.

An Optuna study is never stored. It is rebuilt on every run by replaying ask/tell in order
with each trial's result — a cached trial's metric and evaluation curve come from its cache
entry, a failed or pruned trial's from its record — which reproduces the sampler's sequence
exactly (stack.md §12: a freshly seeded sampler does not continue a loaded study). Because the
sequence does not depend on `n`, raising `optuna(n = 4)` to `n = 5` replays the four finished
trials from the cache and trains only the fifth.

The pruner (``pruner = median``, Optuna's MedianPruner) sees the per-evaluation values of the
sweep's metric (`valid.*`, reported by the training loop at each epoch or `eval_every`); a
pruned trial stops, keeps its checkpoints and is recorded for this study (its identity:
everything about the sweep except `n`).
"""

from __future__ import annotations

import warnings
from typing import Any

from ftdsl.runtime.atomic import json_safe

__all__ = ["study_id", "run_optuna"]


def study_id(target_payload: dict, over: Any, strategy: dict, metric: str, mode: str) -> str:
    """What makes two sweeps the same study, whatever their `n`."""
    from ftdsl.plan import stage_key

    return stage_key({"target": target_payload, "over": json_safe(over),
                      "strategy": {k: v for k, v in strategy.items() if k != "n"}, "metric": metric, "mode": mode})


def _pruner(strategy: dict):
    import optuna

    if (strategy.get("pruner") or "none") == "median":
        return optuna.pruners.MedianPruner()
    return optuna.pruners.NopPruner()


def run_optuna(sweep, n: int, seed: int) -> None:
    """`n` trials of Optuna's TPE through `sweep.runner`, replaying finished ones from the cache."""
    import optuna
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize" if sweep.mode == "max" else "minimize",
                                sampler=optuna.samplers.TPESampler(seed=seed), pruner=_pruner(sweep.strategy))
    dists = sweep.space.optuna_distributions()
    for i in range(1, n + 1):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t = study.ask(fixed_distributions=dists)
        params = sweep.space.from_optuna(t.params)
        reported: set[int] = set()

        def report(step: int, value: float, t=t, reported=reported) -> bool:
            if step in reported:
                return False
            reported.add(step)
            t.report(value, step)
            return t.should_prune()

        rec = sweep.runner.run(i, n, params, study=sweep.study, report=report)
        # replay what the training reported (or would have: a cached trial, a resumed one's
        # steps before the resume); steps reported live are not reported twice
        for step, value in rec.get("curve") or []:
            report(int(step), float(value))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if rec["status"] == "ok":
                study.tell(t, rec["metric"])
            elif rec["status"] == "pruned":
                study.tell(t, state=TrialState.PRUNED)
            else:
                study.tell(t, state=TrialState.FAIL)
        sweep.after_trial(i)
