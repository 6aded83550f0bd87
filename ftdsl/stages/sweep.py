"""The `sweep` stage: hyperparameter search over a `train` (or `distill`) stage.

The executor hands a sweep its *target's* inputs (``inputs["model"]``, ``inputs["data"]``, ...)
and ``attrs["$target"] = {"name", "kind", "config"}`` with the target's lowered attributes. Each
trial is the target's stage function run on a deep copy of that config with the ``over`` paths
set:

* ``"optimizer.lr" = [..]`` sets ``config["optimizer"]["lr"]`` (an argument of the constructor
  in effect); ``"batch" = [..]`` sets ``config["batch"]``; ``"early_stop.patience"`` a key of a
  struct attribute.
* ``"optimizer" = ["adam", "sgd"]`` switches the constructor, with its defaults (the same
  lowered value as writing ``adam()``). Longer paths are applied after shorter ones, so
  ``"optimizer" = ["sgd"], "optimizer.lr" = [0.1]`` means ``sgd(lr = 0.1)``.
* Values are type-checked against the schema (``batch`` gets ints; ranges are enforced) before
  any trial trains. Unknown paths are FTP212 with "did you mean".

Strategies: ``grid`` (every combination, the first path varying slowest), ``random(n, seed)``
(n distinct combinations drawn with ``numpy.random.default_rng(seed)``), ``optuna(n, seed)``
(TPE, ``suggest_categorical`` per path, in-memory study, one job).

Resume: each trial runs with its own ``work_dir`` (``<work>/trials/<i>``, so a killed trial
resumes from its checkpoint) and ``out_dir`` (``<out>/trials/<i>``). A finished trial is
recorded in ``<work>/trials.json`` (atomically) after its artifact is saved to
``<work>/trials/<i>/artifact`` and its outputs to ``<work>/trials/<i>/out``; a rerun skips it
(``"resumed": true`` in the trials table). An optuna study is not persisted: it is rebuilt by
replaying ask/tell with the recorded results, which reproduces the sampler's sequence exactly
(stack.md §12: a freshly seeded sampler does not continue a loaded study).

A trial whose training raises a StageError (NaN loss, ...) is recorded as failed and the sweep
goes on; if every trial fails the sweep fails. Outputs: ``trials.json``, ``trials.md``,
``sweep.png``, ``metrics.json`` and each trial's own outputs under ``trials/<i>/``.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import hashlib
import itertools
import json
import math
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any

from ftdsl.errors import StageError
from ftdsl.ir import schema as S

__all__ = ["run", "KILL_ENV", "sweep_paths", "apply_params"]

KILL_ENV = "FTDSL_TEST_SWEEP_KILL_AFTER_TRIAL"  # tests: SIGKILL ourselves once trial N is recorded
STATE_FORMAT = 1
TARGET_KINDS = ("train", "distill")


class _Bad(Exception):
    """A value that does not fit a schema type (message without the path)."""


# --------------------------------------------------------------------------------------------
# Attribute paths


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, dict) and "$call" in v:
        return f"{v['$call']}()"
    return str(v)


def _unwrap(t: S.Type, want: type) -> S.Type | None:
    if isinstance(t, want):
        return t
    if isinstance(t, S.OneOf):
        for o in t.options:
            if isinstance(o, want):
                return o
    return None


def _ctor_of(value: Any, family: str) -> S.Ctor | None:
    name = value.get("$call") if isinstance(value, dict) else value if isinstance(value, str) else None
    return S.CONSTRUCTORS.get(family, {}).get(name) if name else None


def _children(field: S.Field, value: Any) -> list[S.Field]:
    """The fields one level below `field` whose current value is `value` (ctor args, struct keys)."""
    ct = _unwrap(field.type, S.CtorT)
    if ct is not None:
        ctor = _ctor_of(value, ct.family)
        if ctor is not None:
            return list(ctor.args)
    st = _unwrap(field.type, S.StructT)
    if st is not None and isinstance(value, dict) and "$call" not in value:
        return list(st.fields)
    return []


def _sweepable(field: S.Field) -> bool:
    return not isinstance(field.type, (S.RefT, S.MapT))


def _scalar(t: S.Type) -> bool:
    """Whether an `over` value (a number, string or boolean) can set a field of type `t`."""
    if isinstance(t, S.OneOf):
        return any(_scalar(o) for o in t.options)
    return isinstance(t, (S.Int, S.Float, S.Str, S.PathT, S.Bool, S.Enum, S.CtorT))


def sweep_paths(kind: str, config: dict) -> list[str]:
    """Every attribute path a sweep over a `kind` stage configured as `config` can set."""
    out: list[str] = []

    def walk(fields, cfg, prefix):
        for f in fields:
            if not _sweepable(f):
                continue
            path = f"{prefix}{f.name}"
            if _scalar(f.type):
                out.append(path)
            value = cfg.get(f.name) if isinstance(cfg, dict) else None
            walk(_children(f, value), value, path + ".")

    walk(S.KINDS[kind].fields, config, "")
    return out


def _resolve(kind: str, config: dict, path: str) -> tuple[dict, str, S.Field]:
    """(the dict holding the last key, the last key, its schema field) for `path` in `config`.
    Raises _Bad with the reason when the path names nothing."""
    parts = path.split(".")
    fields = S.KINDS[kind].fields
    holder: Any = config
    field: S.Field | None = None
    for i, part in enumerate(parts):
        field = next((f for f in fields if f.name == part), None)
        if field is None or not _sweepable(field):
            where = ".".join(parts[:i])
            raise _Bad(f"`{part}` is not an attribute of {'`' + where + '`' if where else kind}")
        if i == len(parts) - 1:
            break
        value = holder.get(part)
        fields = _children(field, value)
        if not fields:
            here = ".".join(parts[: i + 1])
            if value is None and (_unwrap(field.type, S.CtorT) or _unwrap(field.type, S.StructT)):
                raise _Bad(f"`{here}` is not set in the target, so `{path}` has nothing to change; "
                           f"set `{here}` in the target (or sweep `{here}` itself)")
            raise _Bad(f"`{here}` has no attributes below it")
        holder = value
    assert field is not None
    return holder, parts[-1], field


def _coerce(v: Any, t: S.Type, nullable: bool = True) -> Any:
    """`v` as a lowered value of type `t`; raises _Bad."""
    if v is None:
        if nullable:
            return None
        raise _Bad("cannot be null")
    if isinstance(t, S.OneOf):
        for o in sorted(t.options, key=lambda o: 0 if isinstance(o, S.Enum) else 1):
            try:
                return _coerce(v, o, nullable)
            except _Bad:
                continue
        raise _Bad(f"expects {t.describe()}, found {_fmt(v)}")
    if isinstance(t, S.Int):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise _Bad(f"expects {t.describe()}, found {_fmt(v)!r}")
        if isinstance(v, float):
            if not v.is_integer():
                raise _Bad(f"expects an integer, found {_fmt(v)}")
            v = int(v)
        if (t.min is not None and v < t.min) or (t.max is not None and v > t.max):
            raise _Bad(f"must be {t.describe().removeprefix('an integer ')}, found {v}")
        return v
    if isinstance(t, S.Float):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise _Bad(f"expects {t.describe()}, found {_fmt(v)!r}")
        x = float(v)
        bad = (not math.isfinite(x)
               or (t.min is not None and (x < t.min or (t.min_open and x == t.min)))
               or (t.max is not None and (x > t.max or (t.max_open and x == t.max))))
        if bad:
            raise _Bad(f"must be {t.describe().removeprefix('a number ')}, found {_fmt(x)}")
        return x
    if isinstance(t, (S.Str, S.PathT)):
        if not isinstance(v, str):
            raise _Bad(f"expects {t.describe()}, found {_fmt(v)}")
        return v
    if isinstance(t, S.Bool):
        if not isinstance(v, bool):
            raise _Bad(f"expects {t.describe()}, found {_fmt(v)}")
        return v
    if isinstance(t, S.Enum):
        if not isinstance(v, str) or v not in t.choices:
            raise _Bad(f"expects {t.describe()}, found {_fmt(v)!r}" + _dym(str(v), t.choices))
        return v
    if isinstance(t, S.CtorT):
        family = S.CONSTRUCTORS.get(t.family, {})
        if not isinstance(v, str) or v not in family:
            what = t.family.replace("_", " ")
            raise _Bad(f"expects {'an' if what[:1] in 'aeiou' else 'a'} {what} name ({', '.join(family)}), "
                       f"found {_fmt(v)!r}" + _dym(str(v), family))
        from ftdsl.ir.convert import default_value
        from ftdsl.ir.lower import lower_value

        return lower_value(default_value(S.Field("", t, v)))
    raise _Bad(f"cannot be swept ({t.describe()})")


def _dym(word: str, options) -> str:
    close = difflib.get_close_matches(word, list(options), n=3, cutoff=0.6)
    return f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""


def apply_params(kind: str, config: dict, params: dict[str, Any]) -> dict:
    """A deep copy of `config` with each `path -> value` of `params` set, shorter paths first.
    Raises _Bad naming the path on an unknown path, a bad value or a missing required argument."""
    cfg = copy.deepcopy(config)
    switched: list[str] = []
    for path in sorted(params, key=lambda p: p.count(".")):
        try:
            holder, key, field = _resolve(kind, cfg, path)
            holder[key] = _coerce(params[path], field.type, field.nullable and not field.required)
        except _Bad as e:
            raise _Bad(f"`{path}` = {_fmt(params[path])}: {e}") from None
        if isinstance(holder[key], dict) and "$call" in holder[key]:
            switched.append(path)
    for path in switched:
        holder, key, field = _resolve(kind, cfg, path)
        ct = _unwrap(field.type, S.CtorT)
        ctor = _ctor_of(holder[key], ct.family) if ct else None
        for a in ctor.args if ctor else ():
            if a.required and holder[key].get(a.name) is None:
                raise _Bad(f"`{path}` = {holder[key]['$call']}: `{holder[key]['$call']}` needs `{a.name}`; "
                           f"add `\"{path}.{a.name}\" = [..]` to `over`")
    return cfg


# --------------------------------------------------------------------------------------------
# The search space


class _Space:
    def __init__(self, name: str, target: dict, over: dict):
        self.kind, self.base = target["kind"], target["config"]
        self.target_name = target["name"]
        if not isinstance(over, dict) or not over:
            raise StageError("FTP212", f"sweep `{name}`: `over` names no attribute paths",
                             hint='e.g. over = { "optimizer.lr" = [1e-4, 1e-3] }')
        self.paths = list(over)
        self.values: list[list[Any]] = []
        valid = sweep_paths(self.kind, self.base)
        switch_values = {p: vs for p, vs in over.items() if "." not in p}
        for path in self.paths:
            vals = over[path]
            if not isinstance(vals, list) or not vals:
                raise StageError("FTP212", f"sweep `{name}`: `over.\"{path}\"` must be a non-empty list of values")
            self.values.append(list(vals))
            # Validate the path (and every value) against the base config, or against each
            # constructor the sweep itself switches the parent attribute to.
            bases = [self.base]
            head = path.split(".")[0]
            if "." in path and head in switch_values:
                bases = []
                for sv in switch_values[head]:
                    try:
                        bases.append(apply_params(self.kind, self.base, {head: sv}))
                    except _Bad:
                        pass
                bases = bases or [self.base]
            reasons = []
            for cfg in bases:
                try:
                    _resolve(self.kind, cfg, path)
                    break
                except _Bad as e:
                    reasons.append(str(e))
            else:
                close = difflib.get_close_matches(path, valid, n=3, cutoff=0.6)
                hint = ("did you mean " + " or ".join(f"`{c}`" for c in close) + "? " if close else "")
                raise StageError(
                    "FTP212", f"sweep `{name}`: `over` names `{path}`, which {self.kind} `{self.target_name}` "
                    f"does not have ({reasons[0]})",
                    hint=hint + "valid paths: " + ", ".join(valid))
            for j, v in enumerate(vals):
                errs = []
                for cfg in bases:
                    try:
                        _, _, field = _resolve(self.kind, cfg, path)
                        c = _coerce(v, field.type, field.nullable and not field.required)
                        if not isinstance(c, dict):  # `batch` = 8.0 -> 8; a constructor stays its name
                            self.values[-1][j] = c
                        break
                    except _Bad as e:
                        errs.append(str(e))
                else:
                    raise StageError("FTP212", f"sweep `{name}`: `over.\"{path}\"` value {j + 1} ({_fmt(v)}): "
                                               f"`{path}` {errs[0]}",
                                     hint=f"every value of `{path}` must fit the {self.kind} schema")
        total = 1
        for vs in self.values:
            total *= len(vs)
        self.total = total

    def params(self, combo: tuple[int, ...]) -> dict[str, Any]:
        return {p: self.values[k][i] for k, (p, i) in enumerate(zip(self.paths, combo))}

    def decode(self, flat: int) -> tuple[int, ...]:
        """The `flat`-th combination in grid order (the first path varies slowest)."""
        out = []
        for vs in reversed(self.values):
            flat, r = divmod(flat, len(vs))
            out.append(r)
        return tuple(reversed(out))


def _strategy(value: Any) -> dict:
    if isinstance(value, str):
        value = {"$call": value}
    if not isinstance(value, dict) or value.get("$call") not in ("grid", "random", "optuna"):
        raise StageError("FTP215", f"unknown sweep strategy {value!r}",
                         hint="use grid, random(n, seed) or optuna(n, seed)")
    return value


# --------------------------------------------------------------------------------------------
# State (trials.json in the work dir)


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


class _State:
    def __init__(self, work_dir: Path, signature: str):
        self.path = work_dir / "trials.json"
        self.signature = signature
        self.trials: dict[str, dict] = {}
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            data = None
        if isinstance(data, dict) and data.get("format") == STATE_FORMAT and data.get("signature") == signature:
            self.trials = {str(k): v for k, v in (data.get("trials") or {}).items() if isinstance(v, dict)}

    def get(self, i: int, params: dict) -> dict | None:
        rec = self.trials.get(str(i))
        if rec is None or _canonical(rec.get("params")) != _canonical(_json_safe(params)):
            return None
        return rec

    def put(self, i: int, rec: dict) -> None:
        from ftdsl.runtime.atomic import write_json_atomic

        self.trials[str(i)] = rec
        write_json_atomic(self.path, {"format": STATE_FORMAT, "signature": self.signature, "trials": self.trials})


from ftdsl.runtime.atomic import json_safe as _json_safe  # noqa: E402


# --------------------------------------------------------------------------------------------
# The sweep


class _Sweep:
    def __init__(self, inputs: dict, attrs: dict, ctx):
        target = attrs.get("$target")
        if not isinstance(target, dict) or "config" not in target:
            raise StageError("FTP530", f"sweep `{ctx.name}`: the executor passed no target configuration",
                             hint="this version of the executor cannot run sweeps")
        if target.get("kind") not in TARGET_KINDS:
            raise StageError("FTP209", f"sweep `{ctx.name}`: `target` must be a train or distill stage, "
                                       f"not {target.get('kind')} `{target.get('name')}`",
                             hint="point `target` at the train stage whose settings you want to search")
        self.inputs, self.attrs, self.ctx = inputs, attrs, ctx
        self.target = target
        self.space = _Space(ctx.name, target, attrs.get("over"))
        self.strategy = _strategy(attrs.get("strategy") or "grid")
        self.metric = str(attrs.get("metric") or "")
        self.mode = attrs.get("mode") or "max"
        if self.mode not in ("min", "max"):
            raise StageError("FTP202", f"sweep `{ctx.name}`: mode must be min or max, not {self.mode!r}")
        from ftdsl.stages import STAGES, load_object

        try:
            self.fn = load_object(STAGES[target["kind"]])
        except ModuleNotFoundError as e:
            if not (e.name or "").startswith("ftdsl.stages"):
                raise
            raise StageError("FTP530", f"sweep `{ctx.name}`: `{target['kind']}` stages cannot run in this version "
                                       "of ftdsl", hint="sweep a train stage instead") from None
        self.work = Path(ctx.work_dir)
        self.out = Path(ctx.out_dir)
        sig = {"target": {"kind": target["kind"], "config": target["config"]}, "over": attrs.get("over"),
               "strategy": self.strategy, "seed": int(getattr(ctx, "seed", 0) or 0),
               "device": getattr(ctx, "device", None)}
        self.state = _State(self.work, hashlib.sha256(_canonical(sig).encode()).hexdigest())
        self.records: list[dict] = []
        self.kill_after = int(os.environ.get(KILL_ENV, "0") or 0)
        self.log = ctx.reporter.log

    # -- one trial --------------------------------------------------------------------------

    def trial(self, i: int, n: int, params: dict) -> dict:
        """Run (or resume, or reuse) trial `i` of `n`; returns its record."""
        shown = " ".join(f"{p}={_fmt(v)}" for p, v in params.items())
        rec = self.state.get(i, params)
        if rec is not None:
            rec = {**rec, "resumed": True}
            self._restore_outputs(i)
            self.records.append(rec)
            self.log(f"trial {i}/{n}: {shown} -> {self._result(rec)} (resumed: finished by an earlier run)")
            return rec
        same = next((r for r in self.records if _canonical(r["params"]) == _canonical(_json_safe(params))
                     and r.get("same_as") is None), None)
        if same is not None:  # optuna may propose a combination again: training is deterministic
            rec = {**{k: v for k, v in same.items() if k not in ("resumed", "seconds")}, "trial": i,
                   "same_as": same["trial"], "seconds": 0.0}
            self.state.put(i, rec)
            self.records.append(rec)
            self.log(f"trial {i}/{n}: {shown} -> {self._result(rec)} (same as trial {same['trial']})")
            return rec
        try:
            cfg = apply_params(self.target["kind"], self.target["config"], params)
        except _Bad as e:
            raise StageError("FTP212", f"sweep `{self.ctx.name}` trial {i}: {e}") from None
        tdir = self.work / "trials" / str(i)
        tout = self.out / "trials" / str(i)
        tdir.mkdir(parents=True, exist_ok=True)
        tout.mkdir(parents=True, exist_ok=True)
        tctx = dataclasses.replace(self.ctx, name=f"{self.ctx.name}[{i}]", out_dir=tout, work_dir=tdir)
        self.log(f"trial {i}/{n}: {shown}")
        t0 = time.perf_counter()
        rec = {"trial": i, "params": _json_safe(params), "status": "ok", "metric": None, "metrics": {},
               "error": None, "same_as": None}
        try:
            art = self.fn(self.inputs, cfg, tctx)
        except StageError as e:
            rec.update(status="failed", error={"code": e.code, "message": e.message})
        else:
            metrics = dict(getattr(art, "metrics", None) or {})
            if self.metric not in metrics:
                avail = ", ".join(sorted(k for k, v in metrics.items() if isinstance(v, (int, float))))
                close = difflib.get_close_matches(self.metric, list(metrics), n=3, cutoff=0.6)
                raise StageError(
                    "FTP210", f"sweep `{self.ctx.name}`: trial {i} produced no metric `{self.metric}`",
                    hint=("did you mean " + " or ".join(f"`{c}`" for c in close) + "? " if close else "")
                    + f"the {self.target['kind']} stage produces: {avail or 'nothing'}")
            value = metrics[self.metric]
            value = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
            rec["metrics"] = _json_safe(metrics)
            if value is None or not math.isfinite(value):
                rec.update(status="failed", error={"code": "FTP501", "message": f"{self.metric} is {value}"})
            else:
                rec["metric"] = value
                dst = tdir / "artifact"
                tmp = tdir / "artifact.tmp"
                shutil.rmtree(tmp, ignore_errors=True)
                art.save(tmp)
                shutil.rmtree(dst, ignore_errors=True)
                os.rename(tmp, dst)
        rec["seconds"] = round(time.perf_counter() - t0, 3)
        # keep the trial's outputs where a resumed sweep finds them (the out dir is a fresh temp)
        saved = tdir / "out"
        shutil.rmtree(saved, ignore_errors=True)
        if tout.is_dir():
            shutil.copytree(tout, saved)
        self.state.put(i, rec)  # the commit point: a rerun skips this trial from now on
        shutil.rmtree(tdir / "checkpoints", ignore_errors=True)
        self.records.append(rec)
        self.log(f"trial {i}/{n}: {shown} -> {self._result(rec)}")
        if self.kill_after and i == self.kill_after:  # tests: die as if killed between trials
            os.kill(os.getpid(), signal.SIGKILL)
        return rec

    def _result(self, rec: dict) -> str:
        if rec["status"] == "ok":
            return f"{self.metric} {rec['metric']:.6g}"
        err = rec.get("error") or {}
        return f"failed ({err.get('code', '?')}: {err.get('message', '')})"

    def _restore_outputs(self, i: int) -> None:
        saved = self.work / "trials" / str(i) / "out"
        if saved.is_dir():
            dst = self.out / "trials" / str(i)
            shutil.rmtree(dst, ignore_errors=True)
            shutil.copytree(saved, dst)

    # -- strategies -------------------------------------------------------------------------

    def run(self):
        kind = self.strategy["$call"]
        sp = self.space
        if kind == "grid":
            combos = list(itertools.product(*[range(len(v)) for v in sp.values]))
            for i, c in enumerate(combos, 1):
                self.trial(i, len(combos), sp.params(c))
        elif kind == "random":
            n, seed = int(self.strategy.get("n") or 1), int(self.strategy.get("seed") or 0)
            k = min(n, sp.total)
            if k < n:
                self.log(f"random(n = {n}): only {sp.total} distinct combinations; running all of them")
            import numpy as np

            rng = np.random.default_rng(seed)
            flats = rng.choice(sp.total, size=k, replace=False)
            for i, flat in enumerate(flats, 1):
                self.trial(i, k, sp.params(sp.decode(int(flat))))
        else:
            self._optuna(int(self.strategy.get("n") or 1), int(self.strategy.get("seed") or 0))
        return self._finish()

    def _optuna(self, n: int, seed: int) -> None:
        import warnings

        import optuna
        from optuna.trial import TrialState

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        sampler = optuna.samplers.TPESampler(seed=seed)
        study = optuna.create_study(direction="maximize" if self.mode == "max" else "minimize", sampler=sampler)
        sp = self.space
        for i in range(1, n + 1):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                t = study.ask()
                combo = []
                for path, vals in zip(sp.paths, sp.values):
                    choices = _distinct(vals)
                    v = t.suggest_categorical(path, choices)
                    combo.append(next(j for j, x in enumerate(vals) if type(x) is type(v) and x == v))
            rec = self.trial(i, n, sp.params(tuple(combo)))
            if rec["status"] == "ok":
                study.tell(t, rec["metric"])
            else:
                study.tell(t, state=TrialState.FAIL)

    # -- the result -------------------------------------------------------------------------

    def _finish(self):
        from ftdsl.stages.model import TorchModel

        ok = [r for r in self.records if r["status"] == "ok"]
        n = len(self.records)
        if not ok:
            first = self.records[0]["error"] if self.records else {"code": "FTP501", "message": "no trials"}
            self._write_outputs(None)
            lines = "; ".join(f"trial {r['trial']}: {r['error']['code']}" for r in self.records[:8])
            raise StageError(first.get("code", "FTP501"),
                             f"sweep `{self.ctx.name}`: all {n} trials failed (trial 1: {first.get('message')})",
                             hint=f"{lines}; see {self.ctx.name}/trials.md")
        sign = 1 if self.mode == "max" else -1
        best = max(ok, key=lambda r: (sign * r["metric"], -r["trial"]))
        src = best["trial"] if best.get("same_as") is None else best["same_as"]
        self._write_outputs(best)
        art = TorchModel.load(self.work / "trials" / str(src) / "artifact")
        art.metrics = {**{k: v for k, v in best["metrics"].items() if isinstance(v, (int, float))},
                       "sweep.best_trial": best["trial"], "sweep.trials": n,
                       "sweep.failed": n - len(ok)}
        self._write_json(self.out / "metrics.json", art.metrics)
        shown = " ".join(f"{p}={_fmt(v)}" for p, v in best["params"].items())
        self.log(f"best: trial {best['trial']}/{n}: {shown} -> {self.metric} {best['metric']:.6g}"
                 + (f" ({n - len(ok)} failed)" if n - len(ok) else ""))
        return art

    def _write_json(self, path: Path, obj) -> None:
        from ftdsl.runtime.atomic import write_json_atomic

        write_json_atomic(path, _json_safe(obj), durable=False)

    def _write_outputs(self, best: dict | None) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        table = {
            "target": self.target["name"], "kind": self.target["kind"], "metric": self.metric, "mode": self.mode,
            "strategy": self.strategy, "over": dict(zip(self.space.paths, self.space.values)),
            "best_trial": best["trial"] if best else None,
            "trials": [{**r, "resumed": bool(r.get("resumed"))} for r in self.records],
        }
        self._write_json(self.out / "trials.json", table)
        (self.out / "trials.md").write_text(self._markdown(best), encoding="utf-8")
        try:
            (self.out / "sweep.png").write_bytes(self._plot(best))
        except Exception as e:  # noqa: BLE001 - a plot is never worth failing the sweep
            self.log(f"could not draw sweep.png: {type(e).__name__}: {e}")

    def _markdown(self, best: dict | None) -> str:
        paths = self.space.paths
        head = ["trial", *paths, self.metric, "status"]
        rows = []
        for r in self.records:
            status = r["status"]
            if r["status"] == "failed":
                status = f"failed ({(r.get('error') or {}).get('code', '?')})"
            if r.get("same_as"):
                status += f", same as {r['same_as']}"
            if r.get("resumed"):
                status += ", resumed"
            if best is not None and r["trial"] == best["trial"]:
                status += ", **best**"
            metric = f"{r['metric']:.6g}" if r["metric"] is not None else "-"
            rows.append([str(r["trial"]), *(_fmt(r["params"].get(p)) for p in paths), metric, status])
        lines = [f"# sweep `{self.ctx.name}` over {self.target['kind']} `{self.target['name']}`", "",
                 f"strategy: {_fmt_call(self.strategy)}; metric: `{self.metric}` ({self.mode})", ""]
        lines.append("| " + " | ".join(f"`{h}`" if h in paths else h for h in head) + " |")
        lines.append("|" + "|".join("---:" if h in ("trial", self.metric) else "---" for h in head) + "|")
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
        errors = [r for r in self.records if r["status"] == "failed" and r.get("error")]
        if errors:
            lines += ["", "Failures:", ""]
            lines += [f"- trial {r['trial']}: {r['error']['code']}: {r['error']['message']}" for r in errors]
        return "\n".join(lines) + "\n"

    def _plot(self, best: dict | None) -> bytes:
        import io

        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        recs = self.records
        numeric = [p for p, vs in zip(self.space.paths, self.space.values)
                   if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vs)]
        scatter = 1 <= len(numeric) <= 2 and len(numeric) == len(self.space.paths)
        ncols = 2 if scatter else 1
        fig = Figure(figsize=(5.5 * ncols, 4), dpi=100)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot(1, ncols, 1)
        ok = [r for r in recs if r["status"] == "ok"]
        ax.plot([r["trial"] for r in ok], [r["metric"] for r in ok], "o-", label=self.metric)
        bad = [r for r in recs if r["status"] != "ok"]
        if bad:
            lo = min((r["metric"] for r in ok), default=0.0)
            ax.plot([r["trial"] for r in bad], [lo] * len(bad), "x", color="red", label="failed")
        if best is not None:
            ax.plot([best["trial"]], [best["metric"]], "*", markersize=16, color="gold", markeredgecolor="black",
                    label="best")
        ax.set_xlabel("trial")
        ax.set_ylabel(self.metric)
        ax.set_xticks([r["trial"] for r in recs])
        ax.grid(alpha=0.3)
        ax.legend()
        if scatter:
            ax2 = fig.add_subplot(1, 2, 2)

            def log_axis(set_scale, path):
                vs = [float(v) for v in self.space.values[self.space.paths.index(path)]]
                if min(vs) > 0 and max(vs) / min(vs) >= 20:
                    set_scale("log")

            xs = [float(r["params"][numeric[0]]) for r in ok]
            if len(numeric) == 1:
                ax2.scatter(xs, [r["metric"] for r in ok])
                ax2.set_xlabel(numeric[0])
                ax2.set_ylabel(self.metric)
            else:
                ys = [float(r["params"][numeric[1]]) for r in ok]
                sc = ax2.scatter(xs, ys, c=[r["metric"] for r in ok], cmap="viridis", s=60)
                fig.colorbar(sc, ax=ax2, label=self.metric)
                if bad:
                    ax2.scatter([float(r["params"][numeric[0]]) for r in bad],
                                [float(r["params"][numeric[1]]) for r in bad], marker="x", color="red")
                ax2.set_xlabel(numeric[0])
                ax2.set_ylabel(numeric[1])
                log_axis(ax2.set_yscale, numeric[1])
            log_axis(ax2.set_xscale, numeric[0])
            for r in ok:
                y = r["metric"] if len(numeric) == 1 else float(r["params"][numeric[1]])
                ax2.annotate(str(r["trial"]), (float(r["params"][numeric[0]]), y), textcoords="offset points",
                             xytext=(4, 4), fontsize=8)
            ax2.grid(alpha=0.3)
        fig.suptitle(f"sweep {self.ctx.name}: {self.metric} ({self.mode})")
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        return buf.getvalue()


def _distinct(vals: list) -> list:
    out: list = []
    for v in vals:
        if not any(type(x) is type(v) and x == v for x in out):
            out.append(v)
    return out


def _fmt_call(call: dict) -> str:
    args = ", ".join(f"{k} = {_fmt(v)}" for k, v in call.items() if k != "$call")
    return f"{call['$call']}({args})" if args else call["$call"]


def run(inputs: dict[str, object], attrs: dict, ctx):
    """Search `attrs["over"]` for the target train/distill stage; returns the best trial's model."""
    return _Sweep(inputs, attrs, ctx).run()
