"""What `plan` can tell before running about sweeps and interrupted trainings. No torch, no numpy.

* A waiting checkpoint: a stage that will run and whose work folder (``work/<key>/checkpoints/
  step-N/state.json``, runtime/checkpoint.py) holds a checkpoint resumes from step N of M: N
  and M are read from the checkpoint's JSON state (M is ``extra.total_steps``; checkpoints of
  earlier versions derive it from the step/epoch ratio of their history and the config).
* A sweep's trials: ``grid`` and seeded ``random`` enumerate their configurations exactly as the
  stage will (``sweep_space``), so each trial's key (``plan.trial_key``) says whether it is
  cached, produced earlier in this run by a plain block with the same configuration, failed in
  an earlier run, or will run (resuming or not). ``optuna``'s later trials depend on results:
  the trials an earlier run of the same study recorded and that are cached are counted, the rest
  is "up to" the remainder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["waiting_checkpoint", "annotate", "kept_keys"]

MAX_LISTED = 5000  # trials of one grid/random sweep whose keys plan computes (about 50 us each)


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def waiting_checkpoint(work: Path) -> dict | None:
    """``{"step": N, "of": M or None}`` for the newest checkpoint under ``work/checkpoints``."""
    found = []
    for state in work.glob("checkpoints/step-*/state.json"):
        try:
            found.append((int(state.parent.name.removeprefix("step-")), state))
        except ValueError:
            continue
    for step, path in sorted(found, reverse=True):
        state = _read(path)
        if not isinstance(state, dict) or not isinstance(state.get("step"), int):
            continue
        return {"step": state["step"], "of": _total_steps(state)}
    return None


def _total_steps(state: dict) -> int | None:
    extra = state.get("extra") if isinstance(state.get("extra"), dict) else {}
    total = extra.get("total_steps")
    if isinstance(total, int) and total > 0:
        return total
    # checkpoints written before `total_steps` was recorded: steps per epoch from the history
    attrs = ((state.get("config") or {}).get("attrs") or {}) if isinstance(state.get("config"), dict) else {}
    per_epoch = None
    for r in reversed(state.get("history") or []):
        if isinstance(r, dict) and r.get("split") == "train" and isinstance(r.get("epoch"), (int, float)) \
                and r["epoch"] > 0:
            per_epoch = round(r["step"] / r["epoch"])
            break
    totals = [attrs["max_steps"]] if isinstance(attrs.get("max_steps"), int) else []
    if per_epoch and isinstance(attrs.get("epochs"), int):
        totals.append(attrs["epochs"] * per_epoch)
    return min(totals) if totals else None


def resume_text(r: dict) -> str:
    return f"resume from step {r['step']}" + (f" of {r['of']}" if r.get("of") else "")


def annotate(stages: list, cache, pipeline_abs: str) -> None:
    """Set `resume` and (for sweeps) `trials` on the planned stages that will run."""
    if cache is None:
        return
    by_name = {s.name: s for s in stages}
    produced: dict[str, str] = {}  # keys the stages before this one will produce -> stage name
    for st in stages:
        if st.will_run:
            st.resume = waiting_checkpoint(cache.work_root / st.key)
            if st.kind == "sweep":
                st.trials = _sweep_trials(st, by_name, cache, produced, pipeline_abs)
            produced[st.key] = st.name


def _sweep_trials(st, by_name: dict, cache, produced: dict[str, str], pipeline_abs: str) -> dict | None:
    from ftdsl.errors import FtdslError
    from ftdsl.plan import trial_key
    from ftdsl.stages.sweep_paths import Bad, apply_params
    from ftdsl.stages.sweep_space import Space, strategy_of

    ref = st.config.get("target")
    target = by_name.get(ref.get("$ref")) if isinstance(ref, dict) else None
    if target is None or target.kind not in ("train", "distill"):
        return None
    try:
        space = Space(st.name, {"name": target.name, "kind": target.kind, "config": target.config},
                      st.config.get("over"))
        strategy = strategy_of(st.config.get("strategy") or "grid")
    except FtdslError:
        return None
    kind = strategy["$call"]
    n = int(strategy.get("n") or 1)
    if kind == "grid":
        draws = space.grid()
    elif kind == "random":
        draws = list(space.random(n, int(strategy.get("seed") or 0)))
    else:
        draws = None
    keys: list[str] = []
    if draws is not None and len(draws) > MAX_LISTED:  # hashing that many configurations would slow plan down
        return {"strategy": kind, "trials": len(draws), "exact": False, "cached": 0, "from_stages": {}, "failed": 0,
                "resume": [], "to_run": len(draws)}
    if draws is not None:
        for params in draws:
            try:
                keys.append(trial_key(target.payload, apply_params(target.kind, target.config, params)))
            except Bad:
                return None
        exact, total = True, len(keys)
    else:
        keys, total, exact = _recorded_optuna_keys(st, target, strategy, cache, pipeline_abs), n, False
        keys = keys[:n]
    out = {"strategy": kind, "trials": total, "exact": exact, "cached": 0, "from_stages": {}, "failed": 0,
           "resume": [], "to_run": 0}
    seen: set[str] = set()
    for i, key in enumerate(keys, 1):
        if key in seen or cache.has(key):
            out["cached"] += 1
        elif key in produced:
            out["from_stages"][produced[key]] = out["from_stages"].get(produced[key], 0) + 1
        elif isinstance(_read(cache.work_root / key / "failed.json"), dict):
            out["failed"] += 1
        else:
            out["to_run"] += 1
            r = waiting_checkpoint(cache.work_root / key)
            if r:
                out["resume"].append({"trial": i, **r})
        seen.add(key)
    if not exact:  # optuna: what the recorded prefix does not cover may run
        out["to_run"] += total - len(keys)
    return out


def _recorded_optuna_keys(st, target, strategy: dict, cache, pipeline_abs: str) -> list[str]:
    """The trial keys an earlier run of the same study recorded, in order: from this sweep's
    interrupted work folder, else from the last published run of the stage."""
    from ftdsl.ir import schema as S
    from ftdsl.stages.sweep_study import study_id

    metric = str(st.config.get("metric") or "")
    mode = st.config.get("mode") or (S.metric_mode(metric) if hasattr(S, "metric_mode") else "max")
    study = study_id(target.payload, st.config.get("over"), strategy, metric, mode)
    tables = [_read(cache.work_root / st.key / "study.json")]
    prev = cache.last_run(pipeline_abs, st.name)
    if isinstance(prev, dict) and isinstance(prev.get("key"), str):
        try:
            tables.append(_read(cache.entry_dir(prev["key"]) / "out" / "trials.json"))
        except ValueError:
            pass
    for t in tables:
        if isinstance(t, dict) and t.get("study") == study and isinstance(t.get("trials"), list):
            keys = [r.get("key") for r in t["trials"] if isinstance(r, dict)]
            if all(isinstance(k, str) for k in keys):
                return keys
    return []


def trials_text(t: dict) -> str:
    """`4 of 5 trials cached, 1 to run (1 resumes from step 8 of 24)`."""
    parts = []
    reused = t["cached"] + sum(t["from_stages"].values())
    if t["exact"]:
        parts.append(f"{reused} of {t['trials']} trials cached")
    else:
        parts.append(f"{reused} trials cached")
    if t["from_stages"]:
        parts[-1] += " (" + ", ".join(f"{k} by `{s}`" for s, k in t["from_stages"].items()) + " in this run)"
    if t["failed"]:
        parts.append(f"{t['failed']} failed before")
    parts.append(f"{'' if t['exact'] else 'up to '}{t['to_run']} to run")
    text = ", ".join(parts)
    if t["resume"]:
        r = t["resume"]
        text += f" ({len(r)} resume{'s' if len(r) == 1 else ''}: " + ", ".join(
            f"trial {x['trial']} from step {x['step']}" + (f" of {x['of']}" if x.get("of") else "") for x in r) + ")"
    return text


def kept_keys(stages: list, cache) -> set[str]:
    """The keys `cache gc --keep FILE` keeps: each stage's, and for a cached sweep the keys of
    the trials its entry recorded (entries a later version of the sweep, or a plain block, reuses)."""
    keys = {s.key for s in stages}
    for s in stages:
        if s.kind != "sweep":
            continue
        try:
            table = _read(cache.entry_dir(s.key) / "out" / "trials.json")
        except ValueError:
            continue
        rows = table.get("trials") if isinstance(table, dict) else None
        for r in rows if isinstance(rows, list) else []:
            if isinstance(r, dict) and isinstance(r.get("key"), str):
                keys.add(r["key"])
    return keys
