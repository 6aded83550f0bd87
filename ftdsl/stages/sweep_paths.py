"""Sweep attribute paths: which paths of a train/distill configuration a sweep may set, and a
copy of the configuration with a trial's values set (type-checked against the schema).

* ``"optimizer.lr"`` sets ``config["optimizer"]["lr"]`` (an argument of the constructor in
  effect); ``"batch"`` sets ``config["batch"]``; ``"early_stop.patience"`` a key of a struct.
* ``"optimizer" = ["adam", "sgd"]`` switches the constructor, with its defaults (the same lowered
  value as writing ``adam()``). Longer paths are applied after shorter ones, so
  ``"optimizer" = ["sgd"], "optimizer.lr" = [0.1]`` means ``sgd(lr = 0.1)``.

No torch, no numpy: the checker and ``plan`` use this module too, so lint, plan and run agree.
"""

from __future__ import annotations

import copy
import difflib
import math
from typing import Any

from ftdsl.ir import schema as S

__all__ = ["Bad", "apply_params", "sweep_paths", "resolve", "coerce", "fmt", "did_you_mean"]


class Bad(Exception):
    """A value that does not fit a schema type (message without the path)."""


# Attribute paths


def fmt(v: Any) -> str:
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


def resolve(kind: str, config: dict, path: str) -> tuple[dict, str, S.Field]:
    """(the dict holding the last key, the last key, its schema field) for `path` in `config`.
    Raises Bad with the reason when the path names nothing."""
    parts = path.split(".")
    fields = S.KINDS[kind].fields
    holder: Any = config
    field: S.Field | None = None
    for i, part in enumerate(parts):
        field = next((f for f in fields if f.name == part), None)
        if field is None or not _sweepable(field):
            where = ".".join(parts[:i])
            raise Bad(f"`{part}` is not an attribute of {'`' + where + '`' if where else kind}")
        if i == len(parts) - 1:
            break
        value = holder.get(part)
        fields = _children(field, value)
        if not fields:
            here = ".".join(parts[: i + 1])
            if value is None and (_unwrap(field.type, S.CtorT) or _unwrap(field.type, S.StructT)):
                raise Bad(f"`{here}` is not set in the target, so `{path}` has nothing to change; "
                           f"set `{here}` in the target (or sweep `{here}` itself)")
            raise Bad(f"`{here}` has no attributes below it")
        holder = value
    assert field is not None
    return holder, parts[-1], field


def coerce(v: Any, t: S.Type, nullable: bool = True) -> Any:
    """`v` as a lowered value of type `t`; raises Bad."""
    if v is None:
        if nullable:
            return None
        raise Bad("cannot be null")
    if isinstance(t, S.OneOf):
        for o in sorted(t.options, key=lambda o: 0 if isinstance(o, S.Enum) else 1):
            try:
                return coerce(v, o, nullable)
            except Bad:
                continue
        raise Bad(f"expects {t.describe()}, found {fmt(v)}")
    if isinstance(t, S.Int):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise Bad(f"expects {t.describe()}, found {fmt(v)!r}")
        if isinstance(v, float):
            if not v.is_integer():
                raise Bad(f"expects an integer, found {fmt(v)}")
            v = int(v)
        if (t.min is not None and v < t.min) or (t.max is not None and v > t.max):
            raise Bad(f"must be {t.describe().removeprefix('an integer ')}, found {v}")
        return v
    if isinstance(t, S.Float):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise Bad(f"expects {t.describe()}, found {fmt(v)!r}")
        x = float(v)
        bad = (not math.isfinite(x)
               or (t.min is not None and (x < t.min or (t.min_open and x == t.min)))
               or (t.max is not None and (x > t.max or (t.max_open and x == t.max))))
        if bad:
            raise Bad(f"must be {t.describe().removeprefix('a number ')}, found {fmt(x)}")
        return x
    if isinstance(t, (S.Str, S.PathT)):
        if not isinstance(v, str):
            raise Bad(f"expects {t.describe()}, found {fmt(v)}")
        return v
    if isinstance(t, S.Bool):
        if not isinstance(v, bool):
            raise Bad(f"expects {t.describe()}, found {fmt(v)}")
        return v
    if isinstance(t, S.Enum):
        if not isinstance(v, str) or v not in t.choices:
            raise Bad(f"expects {t.describe()}, found {fmt(v)!r}" + did_you_mean(str(v), t.choices))
        return v
    if isinstance(t, S.CtorT):
        family = S.CONSTRUCTORS.get(t.family, {})
        if not isinstance(v, str) or v not in family:
            what = t.family.replace("_", " ")
            raise Bad(f"expects {'an' if what[:1] in 'aeiou' else 'a'} {what} name ({', '.join(family)}), "
                       f"found {fmt(v)!r}" + did_you_mean(str(v), family))
        from ftdsl.ir.convert import default_value
        from ftdsl.ir.lower import lower_value

        return lower_value(default_value(S.Field("", t, v)))
    raise Bad(f"cannot be swept ({t.describe()})")


def did_you_mean(word: str, options) -> str:
    close = difflib.get_close_matches(word, list(options), n=3, cutoff=0.6)
    return f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""


def apply_params(kind: str, config: dict, params: dict[str, Any]) -> dict:
    """A deep copy of `config` with each `path -> value` of `params` set, shorter paths first.
    Raises Bad naming the path on an unknown path, a bad value or a missing required argument."""
    cfg = copy.deepcopy(config)
    switched: list[str] = []
    for path in sorted(params, key=lambda p: p.count(".")):
        try:
            holder, key, field = resolve(kind, cfg, path)
            holder[key] = coerce(params[path], field.type, field.nullable and not field.required)
        except Bad as e:
            raise Bad(f"`{path}` = {fmt(params[path])}: {e}") from None
        if isinstance(holder[key], dict) and "$call" in holder[key]:
            switched.append(path)
    for path in switched:
        holder, key, field = resolve(kind, cfg, path)
        ct = _unwrap(field.type, S.CtorT)
        ctor = _ctor_of(holder[key], ct.family) if ct else None
        for a in ctor.args if ctor else ():
            if a.required and holder[key].get(a.name) is None:
                raise Bad(f"`{path}` = {holder[key]['$call']}: `{holder[key]['$call']}` needs `{a.name}`; "
                           f"add `\"{path}.{a.name}\" = [..]` to `over`")
    return cfg


