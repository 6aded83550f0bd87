"""The `sweep` stage: hyperparameter search over a `train` (or `distill`) stage.

The executor hands a sweep its *target's* inputs (``inputs["model"]``, ``inputs["data"]``, ...)
and ``attrs["$target"] = {"name", "kind", "config", "payload", "forced"}``: the target's lowered
attributes, the payload its cache key hashes, and whether the sweep runs because of ``--force``
(its trials then train again); ``ctx.cache`` is the run's cache. Each trial is
the target's stage run on a copy of that config with the ``over`` paths set
(:mod:`ftdsl.stages.sweep_paths`), drawn from the search space by the strategy
(:mod:`ftdsl.stages.sweep_space`): ``grid``, ``random(n, seed)``, ``optuna(n, seed, pruner)``
(:mod:`ftdsl.stages.sweep_study`).

A trial is an ordinary cached stage (:mod:`ftdsl.stages.sweep_trials`): its key is the key of
the train stage it expands to, so any trial whose configuration already ran — in this sweep,
an earlier version of it, or a plain `train` block — is reused, and a killed trial resumes from
its checkpoint. A trial whose training raises a StageError (NaN loss, ...) is recorded as failed
and the sweep goes on; if every trial fails the sweep fails. Outputs: ``trials.json`` (the trial
table: values, configuration, key, metrics, source), ``trials.md``, ``sweep.png``,
``metrics.json`` and each trial's own outputs under ``trials/<i>/``.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

from ftdsl.errors import StageError
from ftdsl.ir import schema as S
from ftdsl.runtime.atomic import json_safe, write_json_atomic
from ftdsl.stages.sweep_paths import Bad, apply_params, fmt, sweep_paths
from ftdsl.stages.sweep_report import write_outputs
from ftdsl.stages.sweep_space import Space, strategy_of
from ftdsl.stages.sweep_study import run_optuna, study_id
from ftdsl.stages.sweep_trials import TrialRunner

__all__ = ["run", "KILL_ENV", "sweep_paths", "apply_params", "Bad", "TARGET_KINDS"]

_Bad = Bad  # the name the checker and older tests import
KILL_ENV = "FTDSL_TEST_SWEEP_KILL_AFTER_TRIAL"  # tests: SIGKILL ourselves once trial N is done
TARGET_KINDS = ("train", "distill")


class _Sweep:
    def __init__(self, inputs: dict, attrs: dict, ctx):
        target = attrs.get("$target")
        if not isinstance(target, dict) or "config" not in target or "payload" not in target:
            raise StageError("FTP530", f"sweep `{ctx.name}`: the executor passed no target configuration",
                             hint="this version of the executor cannot run sweeps")
        if target.get("kind") not in TARGET_KINDS:
            raise StageError("FTP209", f"sweep `{ctx.name}`: `target` must be a train or distill stage, "
                                       f"not {target.get('kind')} `{target.get('name')}`",
                             hint="point `target` at the train stage whose settings you want to search")
        cache = getattr(ctx, "cache", None)
        if cache is None:
            raise StageError("FTP530", f"sweep `{ctx.name}`: the executor passed no cache for the trials",
                             hint="this version of the executor cannot run sweeps")
        self.ctx, self.target = ctx, target
        self.space = Space(ctx.name, target, attrs.get("over"))
        self.strategy = strategy_of(attrs.get("strategy") or "grid")
        self.metric = str(attrs.get("metric") or "")
        self.mode = attrs.get("mode") or S.metric_mode(self.metric)  # the lowering fills it; the registry decides
        if self.mode not in ("min", "max"):
            raise StageError("FTP202", f"sweep `{ctx.name}`: mode must be min or max, not {self.mode!r}")
        from ftdsl.stages import STAGES, load_object

        try:
            fn = load_object(STAGES[target["kind"]])
        except ModuleNotFoundError as e:
            if not (e.name or "").startswith("ftdsl.stages"):
                raise
            raise StageError("FTP530", f"sweep `{ctx.name}`: `{target['kind']}` stages cannot run in this version "
                                       "of ftdsl", hint="sweep a train stage instead") from None
        self.out = Path(ctx.out_dir)
        self.log = ctx.reporter.log
        self.study = study_id(target["payload"], attrs.get("over"), self.strategy, self.metric, self.mode)
        self.runner = TrialRunner(ctx, target, inputs, fn, cache, self.metric, self.out, self.log)
        self.kill_after = int(os.environ.get(KILL_ENV, "0") or 0)

    def after_trial(self, i: int) -> None:
        # the study so far, where `plan` looks for an interrupted sweep's trials (work dir of its key)
        write_json_atomic(Path(self.ctx.work_dir) / "study.json",
                          {"study": self.study, "trials": [{"trial": r["trial"], "key": r["key"]}
                                                           for r in self.runner.records]}, durable=False)
        if self.kill_after and i == self.kill_after:  # tests: die as if killed between trials
            os.kill(os.getpid(), signal.SIGKILL)

    def counts(self) -> dict[str, int]:
        recs = self.runner.records
        return {"trials": len(recs), "trained": sum(r["source"] == "trained" for r in recs),
                "cached": sum(r["source"] != "trained" for r in recs),
                "failed": sum(r["status"] == "failed" for r in recs),
                "pruned": sum(r["status"] == "pruned" for r in recs)}

    def run(self):
        kind = self.strategy["$call"]
        n = int(self.strategy.get("n") or 1)
        if kind == "grid":
            combos = self.space.grid()
            for i, params in enumerate(combos, 1):
                self.runner.run(i, len(combos), params)
                self.after_trial(i)
        elif kind == "random":
            draws = list(self.space.random(n, int(self.strategy.get("seed") or 0)))
            if len(draws) < n:
                self.log(f"random(n = {n}): only {len(draws)} distinct combinations; running all of them")
            for i, params in enumerate(draws, 1):
                self.runner.run(i, len(draws), params, study=self.study)
                self.after_trial(i)
        else:
            run_optuna(self, n, int(self.strategy.get("seed") or 0))
        return self._finish()

    def _finish(self):
        from ftdsl.stages.artifacts import artifact_class

        TorchModel = artifact_class("TorchModel")

        recs = self.runner.records
        ok = [r for r in recs if r["status"] == "ok"]
        c = self.counts()
        if not ok:
            write_outputs(self, None)
            first = next((r["error"] for r in recs if r.get("error")), None) or {"code": "FTP501",
                                                                                 "message": "no trials"}
            lines = "; ".join(f"trial {r['trial']}: {(r['error'] or {}).get('code')}" for r in recs[:8])
            raise StageError(first.get("code", "FTP501") if first.get("code") != "pruned" else "FTP501",
                             f"sweep `{self.ctx.name}`: all {len(recs)} trials failed (trial 1: {first.get('message')})",
                             hint=f"{lines}; see {self.ctx.name}/trials.md")
        sign = 1 if self.mode == "max" else -1
        best = max(ok, key=lambda r: (sign * r["metric"], -r["trial"]))
        write_outputs(self, best)
        art = TorchModel.load(self.runner.entry(best) / "artifact")
        art.metrics = {**{k: v for k, v in best["metrics"].items() if isinstance(v, (int, float))},
                       "sweep.best_trial": best["trial"], "sweep.trials": c["trials"],
                       "sweep.failed": c["failed"], "sweep.pruned": c["pruned"], "sweep.trained": c["trained"],
                       "sweep.cached": c["cached"]}
        write_json_atomic(self.out / "metrics.json", json_safe(art.metrics), durable=False)
        shown = " ".join(f"{p}={fmt(v)}" for p, v in best["params"].items())
        bad = c["failed"] + c["pruned"]
        self.log(f"best: trial {best['trial']}/{c['trials']}: {shown} -> {self.metric} {best['metric']:.6g}"
                 + (f" ({bad} failed or pruned)" if bad else "")
                 + f"; {c['trained']} trained, {c['cached']} reused")
        return art


def run(inputs: dict[str, object], attrs: dict, ctx):
    """Search `attrs["over"]` for the target train/distill stage; returns the best trial's model."""
    return _Sweep(inputs, attrs, ctx).run()
