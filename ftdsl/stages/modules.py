"""The modules a TorchModel builds: ``FtdslModule`` and its two kinds, and ``materialize`` (a fresh,
seeded from-scratch module for a complete ``arch`` spec).

``FeaturesModule.forward(x)`` takes raw features (the data's normalization is inside, as buffers,
so exports take raw inputs); ``TextModule.forward(input_ids, attention_mask)`` token ids. Both
return logits (or regression values).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["FtdslModule", "FeaturesModule", "TextModule", "materialize", "task_outputs"]


class FtdslModule(nn.Module):
    """Base of the modules a TorchModel builds. ``net`` is the wrapped network (an ftdsl net or
    a transformers model); parameter names under it are what ``freeze`` globs match."""

    modality: str = "features"
    input_names: tuple[str, ...] = ()

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net


class FeaturesModule(FtdslModule):
    """``forward(x)``: raw float features ``[B, *input_shape]`` -> outputs ``[B, k]``."""

    modality = "features"
    input_names = ("x",)

    def __init__(self, net: nn.Module, input_shape, norm_mean=None, norm_std=None):
        super().__init__(net)
        shape = tuple(int(s) for s in input_shape)
        mean = torch.zeros(shape) if norm_mean is None else torch.as_tensor(norm_mean, dtype=torch.float32).reshape(shape)
        std = torch.ones(shape) if norm_std is None else torch.as_tensor(norm_std, dtype=torch.float32).reshape(shape)
        std = torch.where(std.abs() < 1e-12, torch.ones_like(std), std)  # constant features
        self.register_buffer("norm_mean", mean.clone())
        self.register_buffer("norm_std", std.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.norm_mean) / self.norm_std)


class TextModule(FtdslModule):
    """``forward(input_ids, attention_mask)`` (int64 ``[B, S]``) -> logits ``[B, k]``."""

    modality = "text"
    input_names = ("input_ids", "attention_mask")

    def __init__(self, net: nn.Module, *, hf: bool):
        super().__init__(net)
        self.hf = bool(hf)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if self.hf:
            return self.net(input_ids=input_ids, attention_mask=attention_mask).logits
        return self.net(input_ids, attention_mask)


def task_outputs(task: dict) -> int:
    return int(task["labels"] if task["$call"] == "classify" else task["outputs"])


def materialize(spec: dict, *, seed: int, norm_mean=None, norm_std=None) -> FtdslModule:
    """A fresh from-scratch module for a complete ``arch`` spec: seeded, then ``init`` applied."""
    from ftdsl.stages import nets

    torch.manual_seed(int(seed))
    out = task_outputs(spec["task"])
    arch = spec["arch"]
    if arch["$call"] in nets.TEXT_ARCHS:
        net = nets.build_net(arch, out, vocab_size=spec["vocab_size"], pad_id=spec.get("pad_id") or 0)
        module: FtdslModule = TextModule(net, hf=False)
    else:
        net = nets.build_net(arch, out, input_shape=spec["input_shape"])
        module = FeaturesModule(net, spec["input_shape"], norm_mean, norm_std)
    nets.apply_init(module.net, spec.get("init", "default"))
    return module
