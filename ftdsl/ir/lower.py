"""IR values -> the plain JSON-able configuration a stage receives (docs/internals.md §1).

The same form is hashed for cache keys, so it never contains spans: reformatting a file never
invalidates the cache.
"""

from __future__ import annotations

from ftdsl.ir.nodes import BlockIR, CallV, DictIR, ListIR, Lit, RefV, Sym
from ftdsl.ir import schema as S
from ftdsl.ir.schema.metrics import DEFAULT_EVALUATE, metric_mode


def lower_value(v):
    if isinstance(v, Lit):
        return v.value
    if isinstance(v, Sym):
        return v.name
    if isinstance(v, CallV):
        out = {"$call": v.name}
        for k, x in v.args:
            out[k] = lower_value(x)
        return out
    if isinstance(v, RefV):
        return {"$ref": v.target, "split": v.split} if v.split else {"$ref": v.target}
    if isinstance(v, ListIR):
        return [lower_value(x) for x in v.items]
    if isinstance(v, DictIR):
        return {k: lower_value(x) for k, x in v.entries}
    if v is None:
        return None
    raise TypeError(f"not an IR value: {v!r}")  # pragma: no cover


def stage_config(block: BlockIR, program=None) -> dict:
    """Every attribute of a block, lowered (defaults included), in schema order.

    Defaults that depend on another attribute are filled here too, so that `plan` shows (and the
    cache key hashes) what the stage will use: `early_stop.mode` and a sweep's `mode` come from
    the metric registry's direction (`valid.loss` -> `min`, `valid.accuracy` -> `max`).
    """
    cfg = {name: lower_value(a.value) for name, a in block.attrs.items()}
    fill_derived(block.kind, cfg, task=_task_of(program, block) if program is not None else None)
    return cfg


def _task_of(program, block: BlockIR) -> str | None:
    """The task (`classify` / `regress`) of the models an `evaluate` block compares, when they agree."""
    if block.kind != "evaluate":
        return None
    from ftdsl.check.graph import model_task

    models = block.value("models")
    tasks = {model_task(program, r.target) for r in getattr(models, "items", ()) if isinstance(r, RefV)}
    return tasks.pop() if len(tasks) == 1 else None


def fill_derived(kind: str, cfg: dict, task: str | None = None) -> dict:
    """Fill the defaults that the schema derives from other values (in place; returns `cfg`).
    `task`: the models' task, for an `evaluate` block's metrics (classify when unknown)."""
    if kind in ("train", "distill"):
        es = cfg.get("early_stop")
        if isinstance(es, dict) and es.get("mode") is None and isinstance(es.get("metric"), str):
            cfg["early_stop"] = {**es, "mode": metric_mode(es["metric"])}
    elif kind == "sweep" and cfg.get("mode") is None and isinstance(cfg.get("metric"), str):
        cfg["mode"] = metric_mode(cfg["metric"])
    elif kind == "evaluate" and cfg.get("metrics") is None:
        cfg["metrics"] = list(DEFAULT_EVALUATE.get(task or "classify", DEFAULT_EVALUATE["classify"]))
    return cfg


def default_of(kind: str, attr: str):
    """The lowered schema default of a block attribute (`default_of("train", "batch")` -> 32)."""
    from ftdsl.ir.convert import default_value

    f = S.KINDS[kind].field(attr)
    if f is None:
        raise KeyError(f"{kind} has no attribute {attr!r}")
    return lower_value(default_value(f))


def complete_attrs(kind: str, attrs: dict) -> dict:
    """`attrs` with every attribute of `kind` present: missing ones get the schema's lowered default
    (what `stage_config` gives a block that does not write them). For stages called directly
    (tests, sweeps) with a partial configuration; a lowered configuration comes back unchanged."""
    out = dict(attrs)
    for f in S.KINDS[kind].fields:
        if f.name not in out:
            out[f.name] = default_of(kind, f.name)
    return fill_derived(kind, out)


def complete_call(value, family: str) -> dict:
    """A lowered constructor call with every argument the schema declares.

    `value` is a lowered call, a bare constructor name, or None (the family's attribute default
    cannot be known here: pass the name). Arguments missing from it (a stage called directly, a
    spec saved by an older version) get the schema's defaults, so that an engine never needs a
    default of its own. A name the schema does not know is returned as given.
    """
    from ftdsl.ir.convert import default_value

    call = {"$call": value} if isinstance(value, str) else dict(value)
    ctor = S.CONSTRUCTORS.get(family, {}).get(call.get("$call"))
    if ctor is None:
        return call
    for a in ctor.args:
        if a.name not in call and not a.required:
            call[a.name] = lower_value(default_value(a))
    return call


def flatten(cfg, prefix: str = "") -> dict[str, object]:
    """`{"optimizer": {"$call": "adamw", "lr": 3e-5}}` -> `{"optimizer": "adamw(...)", "optimizer.lr": 3e-5}`."""
    out: dict[str, object] = {}
    if isinstance(cfg, dict) and "$ref" in cfg:
        out[prefix] = cfg["$ref"] + (f".{cfg['split']}" if cfg.get("split") else "")
        return out
    if isinstance(cfg, dict):
        if "$call" in cfg and prefix:
            out[prefix] = f"{cfg['$call']}(...)"
        for k, v in cfg.items():
            if k == "$call":
                continue
            out.update(flatten(v, f"{prefix}.{k}" if prefix else k))
        return out
    out[prefix] = cfg
    return out
