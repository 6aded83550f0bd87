"""IR values -> the plain JSON-able configuration a stage receives (docs/internals.md §1).

The same form is hashed for cache keys, so it never contains spans: reformatting a file never
invalidates the cache.
"""

from __future__ import annotations

from ftdsl.ir.nodes import BlockIR, CallV, DictIR, ListIR, Lit, RefV, Sym


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


def stage_config(block: BlockIR) -> dict:
    """Every attribute of a block, lowered (defaults included), in schema order."""
    return {name: lower_value(a.value) for name, a in block.attrs.items()}


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
