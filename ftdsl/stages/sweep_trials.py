"""Running one sweep trial as the ordinary cached stage it expands to.

A trial is the target's stage (``train``/``distill``) with the trial's values set. Its cache key
is the key ``plan`` gives a plain block with that configuration (:func:`ftdsl.plan.trial_key`:
the target's payload with the trial's attributes), so a trial whose configuration already ran —
earlier in this sweep, in an earlier version of the sweep, or as a plain ``train`` block — is
loaded from the cache instead of trained, and a finished trial is a cache entry any later run
(or plain block) reuses. The entry is built exactly as the executor builds a stage's entry
(``artifact/``, ``out/``, the metrics in the manifest), in the trial key's work dir, so a killed
trial resumes from its checkpoint (and ``plan`` shows it).

Two things are not cache entries: a trial that failed (``failed.json`` in the key's work dir:
a later sweep does not train a known failure again) and a trial Optuna's pruner stopped
(``pruned.json``, valid for the same study only; its checkpoints stay, so a plain block with
that configuration resumes from them).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import shutil
import time
from pathlib import Path
from typing import Any, Callable

from ftdsl.errors import StageError
from ftdsl.runtime.atomic import json_safe, write_json_atomic
from ftdsl.stages.sweep_paths import Bad, apply_params, fmt

__all__ = ["TrialPruned", "TrialRunner", "waiting_step"]

FAILED = "failed.json"
PRUNED = "pruned.json"


class TrialPruned(Exception):
    """Raised from the training loop's evaluation hook when the pruner stops a trial."""

    def __init__(self, step: int):
        super().__init__(step)
        self.step = step


def waiting_step(work: Path) -> int | None:
    """The step of the newest checkpoint under `work` (JSON only), or None."""
    from ftdsl.plan_trials import waiting_checkpoint

    found = waiting_checkpoint(work)
    return found["step"] if found else None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def curve(entry: Path, metric: str) -> list[list]:
    """[[step, value], ...] of `metric` (`valid.accuracy`) from an entry's `out/metrics.jsonl`."""
    split, _, key = metric.partition(".")
    out: list[list] = []
    if split != "valid":  # only evaluations are reported (the train loss is averaged differently)
        return out
    try:
        lines = (entry / "out" / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    except OSError:
        return out
    for line in lines:
        try:
            r = json.loads(line)
        except ValueError:
            continue
        v = r.get(key) if isinstance(r, dict) and r.get("split") == split else None
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            out.append([int(r.get("step", 0)), float(v)])
    return out


class TrialRunner:
    """Runs (or reuses) trials of one sweep. `report(step, value) -> bool` (optional, per trial)
    receives the intermediate `metric` values at each evaluation; True prunes the trial."""

    def __init__(self, sweep_ctx, target: dict, inputs: dict, fn: Callable, cache, metric: str, out: Path,
                 log: Callable[[str], None]):
        self.ctx, self.target, self.inputs, self.fn = sweep_ctx, target, inputs, fn
        self.cache, self.metric, self.out, self.log = cache, metric, out, log
        self.records: list[dict] = []
        self.forced = bool(target.get("forced"))  # `--force SWEEP`: train every trial again

    def key_of(self, params: dict) -> tuple[dict, str]:
        from ftdsl.plan import trial_key

        try:
            cfg = apply_params(self.target["kind"], self.target["config"], params)
        except Bad as e:
            raise StageError("FTP212", f"sweep `{self.ctx.name}`: {e}") from None
        return cfg, trial_key(self.target["payload"], cfg)

    def entry(self, rec: dict) -> Path:
        return self.cache.entry_dir(rec["key"])

    # -- one trial ------------------------------------------------------------------------------

    def run(self, i: int, n: int | str, params: dict, *, study: str = "",
            report: Callable[[int, float], bool] | None = None) -> dict:
        shown = " ".join(f"{p}={fmt(v)}" for p, v in params.items())
        cfg, key = self.key_of(params)
        rec = {"trial": i, "params": json_safe(params), "key": key, "config": json_safe(cfg), "status": "ok",
               "metric": None, "metrics": {}, "error": None, "source": "trained", "same_as": None,
               "resumed_from": None, "seconds": 0.0, "curve": []}
        same = next((r for r in self.records if r["key"] == key and r["same_as"] is None), None)
        work = self.cache.work_root / key
        if self.forced and same is None:
            self.cache.remove(key)
            for name in (FAILED, PRUNED):
                (work / name).unlink(missing_ok=True)
        pruned = _read_json(work / PRUNED)
        if same is not None:  # optuna may propose a configuration again: it is the same stage
            rec.update({k: same[k] for k in ("status", "metric", "metrics", "error", "curve")},
                       source="same", same_as=same["trial"])
            note = f"same as trial {same['trial']}"
        elif (hit := self.cache.lookup(key, label=f"{self.ctx.name}[{i}]")) is not None:
            self._done(rec, hit)
            rec["source"] = "cached"
            note = "cached"
        elif isinstance(failed := _read_json(work / FAILED), dict) and "code" in failed:
            rec.update(status="failed", error={"code": failed["code"], "message": failed.get("message", "")},
                       source="recorded")
            note = "failed in an earlier run"
        elif study and isinstance(pruned, dict) and pruned.get("study") == study and pruned.get("trial") == i:
            rec.update(status="pruned", curve=pruned.get("curve") or [], source="recorded")
            note = "pruned in an earlier run"
        else:
            self.log(f"trial {i}/{n}: {shown}" + (f" (resuming from step {s})" if (s := waiting_step(work)) else ""))
            rec["resumed_from"] = waiting_step(work)
            self._train(i, rec, cfg, key, study, report)
            note = ""
        self._copy_outputs(i, rec)
        self.records.append(rec)
        self.log(f"trial {i}/{n}: {shown} -> {self.result(rec)}" + (f" ({note})" if note else ""))
        return rec

    def _train(self, i: int, rec: dict, cfg: dict, key: str, study: str, report) -> None:
        name = f"{self.ctx.name}[{i}]"
        meta = {"stage": name, "kind": self.target["kind"], "sweep": self.ctx.name, "metrics": {}}
        split, _, mkey = self.metric.partition(".")

        def on_eval(step: int, evals: dict) -> None:
            v = (evals.get(split) or {}).get(mkey) if split == "valid" else None
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                rec["curve"].append([int(step), float(v)])
                if report is not None and report(int(step), float(v)):
                    raise TrialPruned(step)

        def compute(tmp: Path) -> None:
            tctx = dataclasses.replace(self.ctx, name=name, kind=self.target["kind"], out_dir=tmp / "out",
                                       work_dir=self.cache.work_dir(key), key=key, on_eval=on_eval)
            tctx.out_dir.mkdir(parents=True, exist_ok=True)
            art = self.fn(self.inputs, cfg, tctx)
            (tmp / "artifact").mkdir()
            art.save(tmp / "artifact")
            meta["metrics"] = json_safe(getattr(art, "metrics", None) or {})

        t0 = time.perf_counter()
        try:
            entry, _ = self.cache.get_or_compute(key, compute, meta, label=name)
        except TrialPruned as e:
            rec.update(status="pruned", error={"code": "pruned", "message": f"pruned at step {e.step}"})
            if study:
                write_json_atomic(self.cache.work_root / key / PRUNED,
                                  {"study": study, "trial": i, "step": e.step, "curve": rec["curve"]}, durable=False)
        except StageError as e:
            rec.update(status="failed", error={"code": e.code, "message": e.message})
            write_json_atomic(self.cache.work_root / key / FAILED, {"code": e.code, "message": e.message},
                              durable=False)
        else:
            self._done(rec, entry)
        rec["seconds"] = round(time.perf_counter() - t0, 3)

    def _done(self, rec: dict, entry: Path) -> None:
        """Fill `rec` from a published entry: its metrics, the sweep metric, its curve."""
        try:
            metrics = json.loads((entry / "manifest.json").read_text(encoding="utf-8")).get("meta", {}).get("metrics")
        except (OSError, ValueError):
            metrics = None
        metrics = metrics if isinstance(metrics, dict) else {}
        if self.metric not in metrics:
            avail = ", ".join(sorted(k for k, v in metrics.items() if isinstance(v, (int, float))))
            close = difflib.get_close_matches(self.metric, list(metrics), n=3, cutoff=0.6)
            raise StageError(
                "FTP210", f"sweep `{self.ctx.name}`: trial {rec['trial']} produced no metric `{self.metric}`",
                hint=("did you mean " + " or ".join(f"`{c}`" for c in close) + "? " if close else "")
                + f"the {self.target['kind']} stage produces: {avail or 'nothing'}")
        value = metrics[self.metric]
        value = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
        rec["metrics"] = metrics
        rec["curve"] = curve(entry, self.metric) or rec["curve"]
        if value is None or not math.isfinite(value):
            rec.update(status="failed", error={"code": "FTP501", "message": f"{self.metric} is {value}"})
        else:
            rec["metric"] = value

    def _copy_outputs(self, i: int, rec: dict) -> None:
        """The trial's own outputs (metrics, curves) under the sweep's `out/trials/<i>/`."""
        if not self.cache.has(rec["key"]):
            return
        src = self.entry(rec) / "out"
        if src.is_dir():
            dst = self.out / "trials" / str(i)
            shutil.rmtree(dst, ignore_errors=True)
            shutil.copytree(src, dst)

    def result(self, rec: dict) -> str:
        if rec["status"] == "ok":
            return f"{self.metric} {rec['metric']:.6g}"
        if rec["status"] == "pruned":
            last = rec["curve"][-1] if rec["curve"] else None
            return "pruned" + (f" at step {last[0]} ({self.metric} {last[1]:.6g})" if last else "")
        err = rec.get("error") or {}
        return f"failed ({err.get('code', '?')}: {err.get('message', '')})"
