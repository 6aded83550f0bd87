"""A sweep's search space and the trials a strategy draws from it, without torch or numpy.

Each ``over`` path maps to a list of values or to a distribution (``uniform(lo, hi)``,
``loguniform(lo, hi)``, ``int_range(lo, hi, step)``; the same semantics as Optuna's
``FloatDistribution``/``IntDistribution``: bounds inclusive, ``int_range`` takes
``lo, lo + step, ..., hi``). ``grid`` needs finite spaces (lists and ``int_range``) and tries
every combination, the first path varying slowest. ``random(n, seed)`` draws trial after trial
from ``random.Random(seed)`` using only ``random()`` (whose sequence Python keeps stable), so the
first k trials of ``n = 5`` are those of ``n = 4`` and ``plan`` can list them without running
anything; a finite space never repeats a combination. ``optuna`` asks Optuna with
:meth:`Space.optuna_distributions` (see ``sweep_study``).

Everything here is checked twice: by the checker at lint time (with spans) and by the stage.
"""

from __future__ import annotations

import difflib
import itertools
import math
import random
from dataclasses import dataclass
from typing import Any, Iterator

from ftdsl.errors import StageError
from ftdsl.ir import schema as S
from ftdsl.stages.sweep_paths import Bad, apply_params, coerce, fmt, resolve, sweep_paths

__all__ = ["Dist", "Space", "bases_for", "strategy_of", "DIST_CALLS", "dist_of", "space_problem", "STRATEGIES"]

DIST_CALLS = ("uniform", "loguniform", "int_range")
STRATEGIES = ("grid", "random", "optuna")


@dataclass(frozen=True)
class Dist:
    """A distribution over one attribute: ``uniform``, ``loguniform`` or ``int_range``."""

    kind: str
    lo: float | int
    hi: float | int
    step: int = 1

    @property
    def finite(self) -> bool:
        return self.kind == "int_range"

    @property
    def count(self) -> int:
        return int((self.hi - self.lo) // self.step) + 1 if self.finite else 0

    def values(self) -> list[int]:
        return [int(self.lo + i * self.step) for i in range(self.count)]

    def sample(self, u: float) -> float | int:
        """The value at quantile-like position ``u`` in [0, 1)."""
        if self.kind == "int_range":
            return int(self.lo + self.step * min(int(u * self.count), self.count - 1))
        if self.kind == "loguniform":
            lo, hi = math.log(self.lo), math.log(self.hi)
            return min(max(math.exp(lo + u * (hi - lo)), float(self.lo)), float(self.hi))
        return float(self.lo) + u * (float(self.hi) - float(self.lo))

    def contains(self, v: Any) -> bool:
        if self.kind == "int_range":
            return isinstance(v, int) and self.lo <= v <= self.hi and (v - self.lo) % self.step == 0
        return isinstance(v, float) and self.lo <= v <= self.hi

    def optuna(self):
        from optuna.distributions import FloatDistribution, IntDistribution

        if self.kind == "int_range":
            return IntDistribution(int(self.lo), int(self.hi), step=int(self.step))
        return FloatDistribution(float(self.lo), float(self.hi), log=self.kind == "loguniform")

    def describe(self) -> str:
        if self.kind == "int_range":
            return f"int_range({self.lo}, {self.hi}, {self.step})"
        return f"{self.kind}({fmt(float(self.lo))}, {fmt(float(self.hi))})"


def dist_of(call: dict) -> Dist:
    """A lowered ``uniform``/``loguniform``/``int_range`` call as a Dist; raises Bad when its
    arguments cannot describe a range (lo >= hi, loguniform from 0, step < 1, ...)."""
    kind = call.get("$call")
    lo, hi = call.get("lo"), call.get("hi")
    if kind not in DIST_CALLS:
        raise Bad(f"`{kind}` is not a search space (use a list, {', '.join(DIST_CALLS)})")
    num = (int,) if kind == "int_range" else (int, float)
    if any(isinstance(x, bool) or not isinstance(x, num) for x in (lo, hi)):
        what = "integers" if kind == "int_range" else "numbers"
        raise Bad(f"`{kind}(lo, hi)` needs {what} for `lo` and `hi`, found {fmt(lo)}, {fmt(hi)}")
    if not lo < hi:
        raise Bad(f"`{kind}({fmt(lo)}, {fmt(hi)})`: `lo` must be less than `hi`")
    if kind == "loguniform" and lo <= 0:
        raise Bad(f"`loguniform({fmt(lo)}, {fmt(hi)})`: `lo` must be > 0 (a log scale starts above zero)")
    step = call.get("step", 1)
    if kind == "int_range":
        if isinstance(step, bool) or not isinstance(step, int) or step < 1:
            raise Bad(f"`int_range({lo}, {hi}, {fmt(step)})`: `step` must be an integer >= 1")
        if (hi - lo) % step:
            last = lo + (hi - lo) // step * step
            raise Bad(f"`int_range({lo}, {hi}, {step})`: `hi - lo` is not a multiple of `step` "
                      f"(the last value would be {last}; write `int_range({lo}, {last}, {step})`)")
        return Dist(kind, int(lo), int(hi), int(step))
    return Dist(kind, float(lo), float(hi))


def _numeric(t: S.Type) -> type | None:
    """int or float when `t` (or an option of it) is a number type, else None."""
    if isinstance(t, S.OneOf):
        for o in t.options:
            n = _numeric(o)
            if n is not None:
                return n
        return None
    return int if isinstance(t, S.Int) else float if isinstance(t, S.Float) else None


def space_problem(dist: Dist, field: S.Field) -> str | None:
    """Why `dist` cannot set `field` (its type or range), or None."""
    num = _numeric(field.type)
    if num is None:
        return f"`{dist.kind}` draws numbers, but the attribute expects {field.type.describe()}; use a list of values"
    if num is int and not dist.finite:
        return (f"`{dist.kind}` draws real numbers, but the attribute expects an integer; "
                f"use `int_range({int(dist.lo)}, {int(dist.hi)}, 1)`")
    for end in (dist.lo, dist.hi):
        try:
            coerce(float(end) if num is float else end, field.type, False)
        except Bad as e:
            return f"the bound {fmt(end)} is out of range: the attribute {e}"
    return None


def bases_for(kind: str, base: dict, path: str, switch_values: dict[str, list]) -> list[dict]:
    """The configurations `path` is checked against: the target's, or each constructor the sweep
    itself switches the parent attribute to (`"optimizer" = ["sgd"], "optimizer.momentum" = ...`)."""
    head = path.split(".")[0]
    if "." not in path or head not in switch_values:
        return [base]
    bases = []
    for sv in switch_values[head]:
        try:
            bases.append(apply_params(kind, base, {head: sv}))
        except Bad:
            pass
    return bases or [base]


def strategy_of(value: Any) -> dict:
    if isinstance(value, str):
        value = {"$call": value}
    if not isinstance(value, dict) or value.get("$call") not in STRATEGIES:
        raise StageError("FTP215", f"unknown sweep strategy {value!r}",
                         hint="use grid, random(n, seed) or optuna(n, seed)")
    return value


class Space:
    """The validated ``over`` of a sweep: per path, a list of typed values or a Dist."""

    def __init__(self, name: str, target: dict, over: Any):
        self.kind, self.base = target["kind"], target["config"]
        self.target_name = target["name"]
        if not isinstance(over, dict) or not over:
            raise StageError("FTP212", f"sweep `{name}`: `over` names no attribute paths",
                             hint='e.g. over = { "optimizer.lr" = [1e-4, 1e-3] }')
        self.paths = list(over)
        self.values: list[list[Any] | Dist] = []
        valid = sweep_paths(self.kind, self.base)
        switch_values = {p: vs for p, vs in over.items() if "." not in p and isinstance(vs, list)}
        for path in self.paths:
            vals = over[path]
            bases = self._bases(path, switch_values)
            fields = self._fields(name, path, bases, valid)
            if isinstance(vals, dict) and "$call" in vals:
                self.values.append(self._dist(name, path, vals, fields))
            elif isinstance(vals, list) and vals:
                self.values.append(self._list(name, path, list(vals), bases))
            else:
                raise StageError("FTP212", f"sweep `{name}`: `over.\"{path}\"` must be a non-empty list of values "
                                           "or a range (uniform, loguniform, int_range)")

    # -- validation ---------------------------------------------------------------------------

    def _bases(self, path: str, switch_values: dict) -> list[dict]:
        return bases_for(self.kind, self.base, path, switch_values)

    def _fields(self, name: str, path: str, bases: list[dict], valid: list[str]) -> list[S.Field]:
        reasons, fields = [], []
        for cfg in bases:
            try:
                fields.append(resolve(self.kind, cfg, path)[2])
            except Bad as e:
                reasons.append(str(e))
        if fields:
            return fields
        close = difflib.get_close_matches(path, valid, n=3, cutoff=0.6)
        hint = "did you mean " + " or ".join(f"`{c}`" for c in close) + "? " if close else ""
        raise StageError("FTP212", f"sweep `{name}`: `over` names `{path}`, which {self.kind} `{self.target_name}` "
                                   f"does not have ({reasons[0]})", hint=hint + "valid paths: " + ", ".join(valid))

    def _list(self, name: str, path: str, vals: list, bases: list[dict]) -> list:
        for j, v in enumerate(vals):
            errs = []
            for cfg in bases:
                try:
                    _, _, field = resolve(self.kind, cfg, path)
                    c = coerce(v, field.type, field.nullable and not field.required)
                    if not isinstance(c, dict):  # `batch` = 8.0 -> 8; a constructor stays its name
                        vals[j] = c
                    break
                except Bad as e:
                    errs.append(str(e))
            else:
                raise StageError("FTP212", f"sweep `{name}`: `over.\"{path}\"` value {j + 1} ({fmt(v)}): "
                                           f"`{path}` {errs[0]}",
                                 hint=f"every value of `{path}` must fit the {self.kind} schema")
        return vals

    def _dist(self, name: str, path: str, call: dict, fields: list[S.Field]) -> Dist:
        try:
            d = dist_of(call)
        except Bad as e:
            raise StageError("FTP216", f"sweep `{name}`: `over.\"{path}\"`: {e}") from None
        problem = space_problem(d, fields[0])
        if problem:
            raise StageError("FTP216", f"sweep `{name}`: `over.\"{path}\"` = {d.describe()}: {problem}")
        return d

    # -- the trials -----------------------------------------------------------------------------

    @property
    def finite(self) -> bool:
        return all(isinstance(v, list) or v.finite for v in self.values)

    @property
    def total(self) -> int | None:
        """The number of distinct combinations (None for a continuous space)."""
        if not self.finite:
            return None
        n = 1
        for v in self.values:
            n *= len(v) if isinstance(v, list) else v.count
        return n

    def _options(self, k: int) -> list:
        v = self.values[k]
        return v if isinstance(v, list) else v.values()

    def grid(self) -> list[dict[str, Any]]:
        """Every combination, the first path varying slowest."""
        if not self.finite:
            cont = [p for p, v in zip(self.paths, self.values) if isinstance(v, Dist) and not v.finite]
            raise StageError("FTP216", f"`grid` cannot enumerate the continuous range of `{cont[0]}`",
                             hint="use lists of values with grid, or random(n, seed) / optuna(n, seed) for ranges")
        options = [self._options(k) for k in range(len(self.paths))]
        return [dict(zip(self.paths, combo)) for combo in itertools.product(*options)]

    def random(self, n: int, seed: int) -> Iterator[dict[str, Any]]:
        """Up to `n` trials drawn with ``random.Random(seed)``: a prefix-stable sequence (the first
        k trials do not depend on n); a finite space yields each combination at most once."""
        rng = random.Random(int(seed))
        total = self.total
        k = n if total is None else min(n, total)
        seen: set[str] = set()
        drawn = 0
        while drawn < k:
            params = {}
            for path, v in zip(self.paths, self.values):
                u = rng.random()
                params[path] = v[min(int(u * len(v)), len(v) - 1)] if isinstance(v, list) else v.sample(u)
            if total is not None:
                sig = repr([(type(x).__name__, x) for x in params.values()])
                if sig in seen:
                    continue
                seen.add(sig)
            drawn += 1
            yield params

    def optuna_distributions(self) -> dict:
        from optuna.distributions import CategoricalDistribution

        return {p: CategoricalDistribution(_distinct(v)) if isinstance(v, list) else v.optuna()
                for p, v in zip(self.paths, self.values)}

    def from_optuna(self, params: dict) -> dict[str, Any]:
        """Optuna's suggested values as trial params (a categorical choice is the list's own value)."""
        out = {}
        for p, v in zip(self.paths, self.values):
            x = params[p]
            if isinstance(v, list):
                x = next(c for c in v if type(c) is type(x) and c == x)
            elif v.finite:
                x = int(x)
            else:
                x = float(x)
            out[p] = x
        return out

    def shown(self) -> dict[str, Any]:
        """`over` as written, for the trial table (a range as its call)."""
        return {p: v if isinstance(v, list) else v.describe() for p, v in zip(self.paths, self.values)}

    def numeric_paths(self) -> list[str]:
        return [p for p, v in zip(self.paths, self.values)
                if isinstance(v, Dist) or all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)]

    def log_scaled(self, path: str) -> bool:
        v = self.values[self.paths.index(path)]
        if isinstance(v, Dist):
            return v.kind == "loguniform"
        vs = [float(x) for x in v]
        return min(vs) > 0 and max(vs) / min(vs) >= 20


def _distinct(vals: list) -> list:
    out: list = []
    for v in vals:
        if not any(type(x) is type(v) and x == v for x in out):
            out.append(v)
    return out
