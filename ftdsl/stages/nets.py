"""From-scratch architectures for `model { arch = ... }`.

Every net maps its input to ``[batch, out_dim]`` outputs (logits or regression values). Feature
nets (MLP, CNN) take a float tensor ``[batch, *input_shape]``, already normalized by the
wrapper; text nets (RNN, TransformerEncoder) take ``input_ids`` and ``attention_mask``
``[batch, seq]``. The final layer is always called ``head`` (LoRA keeps it trainable).

No constructor here has a default: the schema (``ftdsl/ir/schema``) is the one declaration of
each architecture's arguments, and ``build_net`` fills what a lowered call leaves out from it
(tests/test_schema_contract.py ties the two).
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["MLP", "CNN", "RNN", "TransformerEncoder", "ARCHS", "build_net", "apply_init"]

_ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh}  # = the schema's `mlp(activation)` choices
CELLS = {"lstm": nn.LSTM, "gru": nn.GRU}  # = the schema's `rnn(cell)` choices


def _activation(name: str) -> nn.Module:
    try:
        return _ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(f"unknown activation {name!r} (use one of {', '.join(_ACTIVATIONS)})") from None


class MLP(nn.Module):
    """Flatten, then ``Linear -> activation -> dropout`` per hidden size, then a linear head."""

    def __init__(self, input_shape, out_dim: int, *, hidden, dropout: float, activation: str):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = int(math.prod(input_shape))
        for h in hidden:
            layers += [nn.Linear(width, int(h)), _activation(activation)]
            if dropout:
                layers.append(nn.Dropout(dropout))
            width = int(h)
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class CNN(nn.Module):
    """``conv -> ReLU -> max-pool`` per channel count, then ``Linear -> ReLU -> head``.

    Input ``(C, H, W)`` uses Conv2d; a flat input ``(n,)`` is read as one channel of length n
    with Conv1d. Convolutions keep the size ("same" padding); a 2x pool follows each one while
    every spatial side is at least 2.
    """

    def __init__(self, input_shape, out_dim: int, *, channels, kernel: int, hidden: int, dropout: float):
        super().__init__()
        shape = tuple(int(s) for s in input_shape)
        if len(shape) == 3:
            in_ch, spatial, conv, pool = shape[0], list(shape[1:]), nn.Conv2d, nn.MaxPool2d
        elif len(shape) == 1:
            in_ch, spatial, conv, pool = 1, [shape[0]], nn.Conv1d, nn.MaxPool1d
        elif len(shape) == 2:  # (C, L): a multichannel sequence
            in_ch, spatial, conv, pool = shape[0], [shape[1]], nn.Conv1d, nn.MaxPool1d
        else:
            raise ValueError(f"cnn needs an input of shape (C, H, W) or (n,), got {shape}")
        self.flat_input = len(shape) == 1
        layers: list[nn.Module] = []
        for ch in channels:
            layers += [conv(in_ch, int(ch), int(kernel), padding=int(kernel) // 2), nn.ReLU()]
            if all(s >= 2 for s in spatial):
                layers.append(pool(2))
                spatial = [s // 2 for s in spatial]
            in_ch = int(ch)
        layers.append(nn.Flatten())
        self.features = nn.Sequential(*layers)
        width = in_ch * int(math.prod(spatial))
        fc: list[nn.Module] = [nn.Linear(width, int(hidden)), nn.ReLU()]
        if dropout:
            fc.append(nn.Dropout(dropout))
        self.fc = nn.Sequential(*fc)
        self.head = nn.Linear(int(hidden), out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.flat_input:
            x = x.unsqueeze(1)
        return self.head(self.fc(self.features(x)))


def _masked_mean(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.to(h.dtype).unsqueeze(-1)
    return (h * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)


class RNN(nn.Module):
    """Token embedding, LSTM/GRU, mean over the real (unmasked) positions, linear head.

    Sequences are right-padded and not packed (packing does not export to ONNX); a
    unidirectional RNN never sees the padding before a real token.
    """

    def __init__(self, vocab_size: int, out_dim: int, *, cell: str, hidden: int, layers: int,
                 bidirectional: bool, pad_id: int, embed: int | None, dropout: float):
        super().__init__()
        cls = CELLS.get(cell)
        if cls is None:
            raise ValueError(f"unknown rnn cell {cell!r} (use lstm or gru)")
        width = int(embed if embed is not None else hidden)  # `embed = null`: as wide as the RNN
        self.embed = nn.Embedding(vocab_size, width, padding_idx=pad_id)
        # dropout between stacked layers (PyTorch's RNN dropout) and before the head
        self.rnn = cls(width, int(hidden), num_layers=int(layers), batch_first=True,
                       bidirectional=bool(bidirectional), dropout=float(dropout) if int(layers) > 1 else 0.0)
        self.drop = nn.Dropout(float(dropout))
        self.head = nn.Linear(int(hidden) * (2 if bidirectional else 1), out_dim)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h, _ = self.rnn(self.embed(input_ids))
        return self.head(self.drop(_masked_mean(h, attention_mask)))


class TransformerEncoder(nn.Module):
    """Token + learned position embeddings, pre-norm ``nn.TransformerEncoder``, masked mean, head."""

    def __init__(self, vocab_size: int, out_dim: int, *, layers: int, dim: int, heads: int,
                 ff: int, max_len: int, dropout: float, pad_id: int):
        super().__init__()
        self.max_len = int(max_len)
        self.embed = nn.Embedding(vocab_size, int(dim), padding_idx=pad_id)
        self.pos = nn.Embedding(self.max_len, int(dim))
        layer = nn.TransformerEncoderLayer(int(dim), int(heads), int(ff), dropout=dropout,
                                           batch_first=True, norm_first=True)
        # enable_nested_tensor=False: the nested fast path changes numerics and does not export.
        self.encoder = nn.TransformerEncoder(layer, int(layers), enable_nested_tensor=False)
        self.norm = nn.LayerNorm(int(dim))
        self.head = nn.Linear(int(dim), out_dim)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)
        h = self.embed(input_ids) + self.pos(positions)
        h = self.encoder(h, src_key_padding_mask=attention_mask == 0)
        return self.head(_masked_mean(self.norm(h), attention_mask))


ARCHS = {"mlp": MLP, "cnn": CNN, "rnn": RNN, "transformer": TransformerEncoder}
TEXT_ARCHS = frozenset({"rnn", "transformer"})


def build_net(arch: dict, out_dim: int, *, input_shape=None, vocab_size: int | None = None, pad_id: int = 0) -> nn.Module:
    """Instantiate the lowered ``arch`` call (``{"$call": "mlp", ...}``) for ``out_dim`` outputs.

    Arguments the call leaves out get the schema's defaults (a spec saved by an older version)."""
    from ftdsl.ir.lower import complete_call

    full = complete_call(arch, "arch")
    name = full["$call"]
    args = {k: v for k, v in full.items() if k != "$call"}
    if name in TEXT_ARCHS:
        return ARCHS[name](int(vocab_size), out_dim, pad_id=pad_id, **args)
    if name in ARCHS:
        return ARCHS[name](tuple(input_shape), out_dim, **args)
    raise ValueError(f"unknown architecture {name!r}")


# init schemes: the schema's `init` symbols (without `default`) and `init` constructors
INITS = {
    "xavier_uniform": nn.init.xavier_uniform_,
    "xavier_normal": nn.init.xavier_normal_,
    "kaiming": lambda w: nn.init.kaiming_normal_(w, nonlinearity="relu"),
    "normal": lambda w, std: nn.init.normal_(w, mean=0.0, std=float(std)),
}
INIT_CALLS = frozenset({"normal"})  # schemes that take arguments (constructors in the schema)


def apply_init(module: nn.Module, init) -> None:
    """Re-initialize weights: every weight matrix/kernel (ndim >= 2) by the scheme, biases to 0.

    ``"default"`` keeps PyTorch's per-layer defaults. Normalization layers (1-d weights) are
    left alone. Draws from the global torch RNG: seed it first.
    """
    if init in (None, "default"):
        return
    if isinstance(init, dict) or init in INIT_CALLS:  # a constructor (`normal(std = ...)`): complete it
        from ftdsl.ir.lower import complete_call

        init = complete_call(init, "init")
        name, kw = init["$call"], {k: v for k, v in init.items() if k != "$call"}
    else:
        name, kw = init, {}
    if name not in INITS:
        raise ValueError(f"unknown init {name!r} (use default, {', '.join(INITS)})")
    fn = INITS[name]
    with torch.no_grad():
        for mod in module.modules():
            if isinstance(mod, (nn.LayerNorm, nn.BatchNorm1d, nn.BatchNorm2d, nn.GroupNorm)):
                continue
            for pname, p in mod.named_parameters(recurse=False):
                if p.ndim >= 2:
                    fn(p, **kw)
                elif "bias" in pname:
                    p.zero_()
            if isinstance(mod, nn.Embedding) and mod.padding_idx is not None:
                mod.weight[mod.padding_idx].zero_()
