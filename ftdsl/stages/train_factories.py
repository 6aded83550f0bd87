"""The train stage's factories: optimizers, learning-rate schedules and losses, by name.

Extension points are plain dicts: ``OPTIMIZERS``, ``SCHEDULES``, ``LOSSES`` (name -> builder);
:func:`build_optim` turns a lowered train config into the optimizer, scheduler, scaler and
criterion of one run.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from ftdsl.errors import StageError

from ftdsl.ir.schema.modality import TASK_LOSS

__all__ = ["OPTIMIZERS", "SCHEDULES", "LOSSES", "call_of", "build_optim"]


def _fused_ok(groups) -> bool:
    """Fused Adam(W) needs floating-point parameters on one CPU/CUDA device."""
    params = [p for g in groups for p in g["params"]]
    devices = {p.device.type for p in params}
    return bool(params) and len(devices) == 1 and devices <= {"cpu", "cuda"} and all(p.is_floating_point()
                                                                                   for p in params)


OPTIMIZERS: dict[str, Callable[[list[dict], dict], torch.optim.Optimizer]] = {
    # fused=True: one kernel over all parameters (Hugging Face Trainer's default, adamw_torch_fused);
    # the per-tensor loop cost MiniLM 94 ms per step on this CPU (bench/train_overhead.py).
    "adamw": lambda groups, c: torch.optim.AdamW(groups, lr=c["lr"], weight_decay=c["weight_decay"],
                                                 fused=_fused_ok(groups)),
    "adam": lambda groups, c: torch.optim.Adam(groups, lr=c["lr"], weight_decay=c["weight_decay"],
                                               fused=_fused_ok(groups)),
    "sgd": lambda groups, c: torch.optim.SGD(
        groups, lr=c["lr"], momentum=c["momentum"], weight_decay=c["weight_decay"],
        nesterov=bool(c["nesterov"])),
}


def _warmup_steps(w: float | int | None, total: int) -> int:
    if not w:
        return 0
    return int(round(w * total)) if w < 1 else int(w)


def _with_warmup(warmup: int, after: Callable[[int], float]) -> Callable[[int], float]:
    # nanoGPT's warmup: the first step already has a small, non-zero learning rate.
    return lambda s: (s + 1) / (warmup + 1) if s < warmup else after(s)


def _constant(c: dict, total: int, base_lr: float):
    return _with_warmup(_warmup_steps(c.get("warmup"), total), lambda s: 1.0)


def _linear(c: dict, total: int, base_lr: float):
    w = _warmup_steps(c.get("warmup"), total)
    return _with_warmup(w, lambda s: max(0.0, (total - s) / max(1, total - w)))


def _cosine(c: dict, total: int, base_lr: float):
    w = _warmup_steps(c.get("warmup"), total)
    floor = min(1.0, float(c.get("min_lr") or 0.0) / base_lr) if base_lr > 0 else 0.0

    def after(s: int) -> float:
        progress = min(1.0, (s - w) / max(1, total - w))
        return floor + 0.5 * (1.0 - floor) * (1.0 + math.cos(math.pi * progress))

    return _with_warmup(w, after)


def _step_decay(c: dict, total: int, base_lr: float):
    every, gamma = int(c["every"]), float(c["gamma"])
    return _with_warmup(_warmup_steps(c.get("warmup"), total), lambda s: gamma ** (s // every))


# name -> (call, total_steps, base_lr) -> (step -> lr factor); wrapped in a LambdaLR
SCHEDULES: dict[str, Callable[[dict, int, float], Callable[[int], float]]] = {
    "constant": _constant,
    "linear": _linear,
    "cosine": _cosine,
    "step": _step_decay,
}


def _class_weights(c: dict, info: dict) -> torch.Tensor | None:
    w = c.get("weights")
    n = info["num_outputs"]
    if w is None:
        return None
    if w == "balanced":  # sklearn's "balanced": n_samples / (n_classes * count)
        counts = np.bincount(info["train_labels"], minlength=n).astype(np.float64)
        weights = counts.sum() / (n * np.maximum(counts, 1.0))
        return torch.tensor(weights, dtype=torch.float32)
    if isinstance(w, (list, tuple)):
        if len(w) != n:
            raise StageError("FTP510", f"cross_entropy(weights = [...]) has {len(w)} values for {n} classes")
        return torch.tensor([float(x) for x in w], dtype=torch.float32)
    raise StageError("FTP510", f"cross_entropy(weights = {w!r}): use balanced or a list of {n} numbers")


def _cross_entropy(c: dict, info: dict) -> nn.Module:
    if info["task"] != "classify":
        raise StageError("FTP510", "loss = cross_entropy needs task = classify(...); use mse for regression")
    return nn.CrossEntropyLoss(weight=_class_weights(c, info), label_smoothing=float(c.get("label_smoothing") or 0.0))


class _BCE(nn.Module):
    """BCE with logits; class labels become one-hot targets (one sigmoid per class)."""

    def __init__(self, num_outputs: int, classify: bool):
        super().__init__()
        self.n, self.classify = num_outputs, classify
        self.fn = nn.BCEWithLogitsLoss()

    def forward(self, logits, y):
        target = nn.functional.one_hot(y, self.n).to(logits.dtype) if self.classify else y.to(logits.dtype)
        return self.fn(logits, target)


def _mse(c: dict, info: dict) -> nn.Module:
    if info["task"] != "regress":
        raise StageError("FTP510", "loss = mse needs task = regress(...); use cross_entropy for classification")
    return nn.MSELoss()


# name -> (call, info) -> criterion(logits_fp32, y)
LOSSES: dict[str, Callable[[dict, dict], nn.Module]] = {
    "cross_entropy": _cross_entropy,
    "bce": lambda c, info: _BCE(info["num_outputs"], info["task"] == "classify"),
    "mse": _mse,
}




def call_of(value: Any, default: str) -> dict:
    """Lowered call value (or a bare name, or None for ``default``) as ``{"$call": name, ...}`` with
    every argument: what the call leaves out comes from the schema, the one declaration of defaults."""
    from ftdsl.ir.lower import complete_call
    from ftdsl.ir.schema import all_constructors

    return complete_call(default if value is None else value, all_constructors()[default].family)


def build_optim(module: nn.Module, attrs: dict, *, total_steps: int, device: str, precision: str, task: str,
                num_outputs: int, train_labels) -> tuple[list, Any, Any, Any, nn.Module]:
    """``(params, optimizer, scheduler, scaler, criterion)`` for training ``module`` with ``attrs``."""
    opt_call = call_of(attrs.get("optimizer"), "adamw")
    decay, no_decay = [], []
    for _, p in module.named_parameters():
        if p.requires_grad:
            # nanoGPT: weight decay on matrices and kernels only, not on biases and norms
            (decay if p.ndim >= 2 else no_decay).append(p)
    wd = float(opt_call.get("weight_decay") or 0.0)
    groups = [g for g in ({"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0})
              if g["params"]]
    if opt_call["$call"] not in OPTIMIZERS:
        raise TypeError(f"unknown optimizer {opt_call['$call']!r}")  # the schema guarantees a known one (FTP215)
    try:
        optimizer = OPTIMIZERS[opt_call["$call"]](groups, opt_call)
    except ValueError as e:
        raise StageError("FTP510", f"optimizer {opt_call['$call']}(...): {e}") from e
    sched_call = call_of(attrs.get("schedule"), "constant")
    if sched_call["$call"] not in SCHEDULES:
        raise TypeError(f"unknown schedule {sched_call['$call']!r}")  # the schema guarantees a known one (FTP215)
    lambdas = [SCHEDULES[sched_call["$call"]](sched_call, total_steps, float(g["lr"])) for g in optimizer.param_groups]
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)
    scaler = torch.amp.GradScaler(device, enabled=precision == "fp16")
    from ftdsl.stages.tasks import get_task, is_seq_task

    if is_seq_task(task):  # token tasks bring their own token-level cross-entropy
        if attrs.get("loss") is not None:
            name = attrs["loss"]["$call"] if isinstance(attrs["loss"], dict) else attrs["loss"]
            raise StageError("FTP247", f"loss = {name} cannot be set for task = {task}(...): it trains with its own "
                             "token-level cross-entropy", hint="remove `loss`")
        return decay + no_decay, optimizer, scheduler, scaler, get_task(task).criterion().to(device)
    loss_call = call_of(attrs.get("loss"), TASK_LOSS[task])
    if loss_call["$call"] not in LOSSES:
        raise TypeError(f"unknown loss {loss_call['$call']!r}")  # the schema guarantees a known one (FTP215)
    info = {"task": task, "num_outputs": num_outputs, "train_labels": train_labels}
    criterion = LOSSES[loss_call["$call"]](loss_call, info).to(device)
    return decay + no_decay, optimizer, scheduler, scaler, criterion
