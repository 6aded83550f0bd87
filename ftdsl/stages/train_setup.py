"""Preparing a model for training: freezing parameters by glob, adapters (peft, through
``ftdsl.stages.adapters``), regression targets. Each function changes the module or split it is given and says what it did.
"""

from __future__ import annotations

import fnmatch

from ftdsl.errors import StageError
from ftdsl.stages.modules import FtdslModule

__all__ = ["to_regression", "freeze", "apply_lora", "adalora_state", "restore_adalora"]


def to_regression(data, split):
    from ftdsl.stages.dataset import Split, regression_targets

    return Split(split.features, split.texts, regression_targets(data, split), split.rows, split.source)


def _strip(name: str) -> str:
    """Parameter names as users write them: without the wrapper's ``net.`` or peft's prefixes."""
    for p in ("net.", "base_model.model."):
        if name.startswith(p):
            name = name[len(p):]
    return name


def freeze(module: FtdslModule, globs: list[str]) -> int:
    names = [(n, _strip(n), p) for n, p in module.named_parameters()]
    frozen = 0
    for g in globs:
        hits = [(n, p) for n, short, p in names if fnmatch.fnmatchcase(short, g) or fnmatch.fnmatchcase(n, g)]
        if not hits:
            import difflib

            shown = [s for _, s, _ in names]
            close = difflib.get_close_matches(g, shown, n=3, cutoff=0.4)
            raise StageError(
                "FTP510", f"freeze glob {g!r} matches no parameter",
                hint=("did you mean " + ", ".join(repr(c) for c in close) + "? " if close else "")
                + "parameters look like " + ", ".join(repr(s) for s in shown[:4]),
            )
        for _, p in hits:
            if p.requires_grad:
                p.requires_grad_(False)
                frozen += p.numel()
    return frozen


def apply_lora(module: FtdslModule, call: dict, total_steps: int, *, task: str = "classify", seed: int = 0,
               base_weights: dict | None = None) -> None:
    """Attach the adapter ``call`` (`lora`, `adalora`, `ia3`, `prefix`) through peft; the trained
    artifact keeps it apart from the base (``ftdsl.stages.adapters``)."""
    from ftdsl.stages import adapters

    adapters.attach(module, call, task, total_steps, seed=seed, base_weights=base_weights)


def adalora_state(module, lora: dict | None) -> tuple[dict, dict]:
    """AdaLoRA's importance scores and rank pattern live outside the state dict: tensors, JSON."""
    if not (lora and lora["$call"] == "adalora"):
        return {}, {}
    base = module.net.base_model
    ra = base.rankallocator
    tensors = {f"adalora.{kind}.{name}": t for kind in ("ipt", "exp_avg_ipt", "exp_avg_unc")
               for name, t in getattr(ra, kind).items()}
    pattern = base.peft_config[base.trainable_adapter_name].rank_pattern
    return tensors, {"adalora_rank_pattern": pattern}


def restore_adalora(module, lora: dict | None, tensors: dict, extra: dict, device) -> None:
    if not (lora and lora["$call"] == "adalora"):
        return
    base = module.net.base_model
    ra = base.rankallocator
    ra.reset_ipt()
    for key, t in tensors.items():
        if key.startswith("adalora."):
            _, kind, name = key.split(".", 2)
            getattr(ra, kind)[name] = t.to(device)
    base.peft_config[base.trainable_adapter_name].rank_pattern = extra.get("adalora_rank_pattern")
