"""Preparing a model for training: freezing parameters by glob, LoRA/AdaLoRA adapters (peft),
regression targets. Each function changes the module or split it is given and says what it did.
"""

from __future__ import annotations

import fnmatch
import warnings
from typing import Any

from torch import nn

from ftdsl.errors import StageError
from ftdsl.stages.modules import FtdslModule, TextModule
from ftdsl.stages.pretrained import quiet_transformers

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


def _lora_targets(net: nn.Module) -> list[str]:
    """Default LoRA targets of a from-scratch net: its Linear layers, except the head and the
    projections inside nn.MultiheadAttention (which bypasses their forward)."""
    mha = [n for n, m in net.named_modules() if isinstance(m, nn.MultiheadAttention)]
    return [n for n, m in net.named_modules()
            if isinstance(m, nn.Linear) and n != "head" and not any(n.startswith(p + ".") for p in mha)]


def apply_lora(module: FtdslModule, call: dict, total_steps: int) -> None:
    import peft

    hf = isinstance(module, TextModule) and module.hf
    targets = list(call.get("targets") or []) or (None if hf else _lora_targets(module.net))
    common: dict[str, Any] = {"target_modules": targets}
    if hf:
        common["task_type"] = peft.TaskType.SEQ_CLS  # keeps the new classifier trainable
    else:
        common["modules_to_save"] = ["head"]
    if call["$call"] == "lora":
        cfg = peft.LoraConfig(r=int(call["r"]), lora_alpha=float(call["alpha"]),
                              lora_dropout=float(call["dropout"]), **common)
    elif call["$call"] == "adalora":
        tinit, tfinal = total_steps // 10, total_steps // 5
        if tinit >= total_steps - tfinal:
            tinit, tfinal = 0, 0
        cfg = peft.AdaLoraConfig(init_r=int(call["r"]), target_r=int(call["target_r"]),
                                 total_step=max(1, total_steps), tinit=tinit, tfinal=tfinal, **common)
    else:
        raise TypeError(f"unknown adapter {call['$call']!r}")  # the schema guarantees a known one (FTP215)
    try:
        with quiet_transformers(), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # transformers deprecations peft triggers
            module.net = peft.get_peft_model(module.net, cfg)
    except ValueError as e:
        names = [n for n, _ in module.net.named_modules() if n][:8]
        raise StageError("FTP510", f"{call['$call']}(targets = {targets}): {str(e).splitlines()[0]}",
                         hint="targets are module names such as " + ", ".join(names)) from e




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
