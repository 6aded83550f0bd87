"""Structured pruning that shrinks: remove attention heads, FFN rows, MLP units and CNN channels.

``structured(amount, what, criterion)`` ranks the *units* of each prunable group (an attention
layer's heads, a transformer layer's FFN rows, a hidden Linear's units, a convolution's output
channels) by the ``criterion`` norm of their weights and removes the fraction ``amount`` of the
lowest in every group (at least one unit stays). Removing a unit slices its producer's output rows
(and bias) and its consumer's input columns, so the result is a smaller dense model.

Two views of the same choice, both public so tests can compare them:

* :func:`mask` zeroes the chosen units' producer *weights* in place and keeps the model dense
  (what ``ln_structured`` does; a zeroed unit still outputs ``act(bias)``).
* :func:`shrink` removes them; what a removed unit still contributed through its bias is folded
  into the consumer's bias (``W_out[:, dead] @ act(b_in[dead])``), so the shrunk model computes
  what the masked one does. A removed head contributes ``W_o[:, head] @ b_v[head]`` (its attention
  weights sum to 1 over values that are all ``b_v``). Convolutions fold nothing (zero padding makes a
  constant channel non-constant at the borders): their dead channels' bias (and BatchNorm scale and
  shift) are zeroed by :func:`mask` too, so both views output ``act(0) = 0`` there.

The new shapes are recorded in the artifact's spec (``spec["shrunk"]``: tensor name -> shape, and
per-layer attention head counts); :func:`apply_record` rebuilds them on load before the weights
are read, so a shrunk model saves, loads, exports and quantizes like any other.

Families (registry :data:`FAMILIES`; the first whose ``detect`` matches is used):

* ``bert``: Hugging Face encoders with BERT's module names (``attention.self.query/key/value``,
  ``attention.output.dense``, ``intermediate.dense``, ``output.dense``): BERT, RoBERTa, MiniLM,
  ELECTRA...: ``heads`` and ``ffn``.
* ``chain``: ftdsl's ``mlp`` and ``cnn`` nets (a forward-ordered chain of layers): ``units`` and
  ``channels``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

__all__ = ["FAMILIES", "Family", "Group", "family_of", "plan", "mask", "shrink", "apply_record", "PARTS"]

PARTS = ("heads", "ffn", "units", "channels", "vocab")  # vocab: ftdsl.stages.prune_vocab
_ELEMENTWISE = (nn.ReLU, nn.GELU, nn.Tanh, nn.SiLU, nn.Sigmoid, nn.LeakyReLU, nn.ELU, nn.Dropout, nn.Identity)
_POOLS = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)
_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@dataclass
class Group:
    """One set of units removed together.

    ``producers``: ``(qualified module name, rows per unit)`` whose weight rows (dim 0) and bias
    entries belong to the units; ``consumers``: ``(name, columns per unit)`` whose weight columns
    (dim 1) read them; ``norms``: BatchNorm layers between. ``fold(bias_vector)`` gives what a
    dead unit still outputs from its producer bias (None: nothing is folded, the bias is zeroed);
    ``fold_from`` names the producer whose bias is folded.
    """

    part: str
    name: str
    units: int
    producers: list[tuple[str, int]]
    consumers: list[tuple[str, int]]
    norms: list[str] = field(default_factory=list)
    fold: Callable[[torch.Tensor], torch.Tensor] | None = None
    fold_from: str | None = None
    heads_module: str | None = None  # bert self-attention whose head count changes
    drop: list[int] = field(default_factory=list)


# --------------------------------------------------------------------------------------------
# Families


@dataclass(frozen=True)
class Family:
    name: str
    parts: tuple[str, ...]
    detect: Callable[[nn.Module], bool]
    groups: Callable[[nn.Module], list[Group]]


def _bert_layers(net: nn.Module) -> list[tuple[str, nn.Module]]:
    out = []
    for name, m in net.named_modules():
        att = getattr(m, "attention", None)
        if (att is not None and hasattr(att, "self") and hasattr(getattr(att, "self"), "query")
                and hasattr(att, "output") and isinstance(getattr(att.output, "dense", None), nn.Linear)
                and isinstance(getattr(getattr(m, "intermediate", None), "dense", None), nn.Linear)
                and isinstance(getattr(getattr(m, "output", None), "dense", None), nn.Linear)):
            out.append((name, m))
    return out


def _bert_groups(net: nn.Module) -> list[Group]:
    groups: list[Group] = []
    for name, layer in _bert_layers(net):
        p = f"{name}." if name else ""
        sa = layer.attention.self
        hs = int(sa.attention_head_size)
        heads = sa.query.out_features // hs
        groups.append(Group("heads", f"{p}attention", heads,
                            [(f"{p}attention.self.{x}", hs) for x in ("query", "key", "value")],
                            [(f"{p}attention.output.dense", hs)], fold=lambda b: b,
                            fold_from=f"{p}attention.self.value", heads_module=f"{p}attention.self"))
        act = layer.intermediate.intermediate_act_fn
        groups.append(Group("ffn", f"{p}intermediate", layer.intermediate.dense.out_features,
                            [(f"{p}intermediate.dense", 1)], [(f"{p}output.dense", 1)],
                            fold=lambda b, act=act: act(b), fold_from=f"{p}intermediate.dense"))
    return groups


def _is_chain_net(net: nn.Module) -> bool:
    return type(net).__module__ == "ftdsl.stages.nets" and type(net).__name__ in ("MLP", "CNN")


def _chain_groups(net: nn.Module) -> list[Group]:
    """Producer -> (elementwise, pool, BatchNorm, Flatten)* -> consumer, in registration order
    (the forward order of ftdsl's MLP and CNN)."""
    leaves = [(n, m) for n, m in net.named_modules() if n and not list(m.children())]
    groups: list[Group] = []
    for i, (name, m) in enumerate(leaves):
        if not isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)) or name.split(".")[0] == "head":
            continue
        if isinstance(m, nn.modules.conv._ConvNd) and m.groups != 1:
            continue
        between: list[nn.Module] = []
        norms: list[str] = []
        flatten = False
        consumer = None
        for n2, m2 in leaves[i + 1:]:
            if isinstance(m2, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
                consumer = (n2, m2)
                break
            if isinstance(m2, _BN):
                norms.append(n2)
            elif isinstance(m2, nn.Flatten):
                flatten = True
            elif not isinstance(m2, _ELEMENTWISE + _POOLS):
                break
            between.append(m2)
        if consumer is None:
            continue
        cname, cm = consumer
        conv = isinstance(m, nn.modules.conv._ConvNd)
        units = m.out_channels if conv else m.out_features
        if isinstance(cm, nn.modules.conv._ConvNd):
            if cm.groups != 1 or cm.in_channels != units:
                continue
            per = 1
        else:
            if cm.in_features % units:
                continue
            per = cm.in_features // units
            if per != 1 and not (conv and flatten):
                continue
        fold = None
        if not conv and not norms and isinstance(cm, nn.Linear):
            fold = _through([x for x in between if not isinstance(x, _POOLS + (nn.Dropout,))])

        groups.append(Group("channels" if conv else "units", name, units, [(name, 1)], [(cname, per)],
                            norms=norms, fold=fold, fold_from=name if fold else None))
    return groups


def _through(mods: list[nn.Module]) -> Callable[[torch.Tensor], torch.Tensor]:
    """What a unit with zero weights outputs: its bias through the elementwise layers after it."""
    def fold(b: torch.Tensor) -> torch.Tensor:
        for m in mods:
            b = m(b)
        return b
    return fold


FAMILIES: list[Family] = [
    Family("bert", ("heads", "ffn"), lambda net: bool(_bert_layers(net)), _bert_groups),
    Family("chain", ("units", "channels"), _is_chain_net, _chain_groups),
]


def _net(module: nn.Module) -> nn.Module:
    return getattr(module, "net", module)


def family_of(module: nn.Module) -> Family | None:
    net = _net(module)
    return next((f for f in FAMILIES if f.detect(net)), None)


# --------------------------------------------------------------------------------------------
# Choosing units


def _rows(w: torch.Tensor, unit: int, per: int) -> torch.Tensor:
    return w[unit * per:(unit + 1) * per]


def _cols(w: torch.Tensor, unit: int, per: int) -> torch.Tensor:
    return w[:, unit * per:(unit + 1) * per]


def plan(module: nn.Module, amount: float, parts: tuple[str, ...], criterion: str = "l2") -> list[Group]:
    """The groups of ``module`` for ``parts``, each with ``drop`` (the units to remove): the
    ``round(amount * units)`` with the smallest ``criterion`` norm of their producer rows and
    consumer columns, at most ``units - 1``."""
    fam = family_of(module)
    if fam is None:
        return []
    net = _net(module)
    p = 1 if criterion == "l1" else 2
    groups = [g for g in fam.groups(net) if g.part in parts]
    with torch.no_grad():
        for g in groups:
            scores = []
            for u in range(g.units):
                parts_ = [_rows(net.get_submodule(n).weight, u, per).flatten() for n, per in g.producers]
                parts_ += [_cols(net.get_submodule(n).weight, u, per).flatten() for n, per in g.consumers]
                scores.append(float(torch.linalg.vector_norm(torch.cat(parts_).float(), ord=p)))
            k = min(int(round(amount * g.units)), g.units - 1)
            order = sorted(range(g.units), key=lambda u: (scores[u], u))
            g.drop = sorted(order[:k])
    return groups


def _unit_index(units: list[int], per: int) -> torch.Tensor:
    return torch.tensor([u * per + j for u in units for j in range(per)], dtype=torch.long)


# --------------------------------------------------------------------------------------------
# The two views


def mask(module: nn.Module, groups: list[Group]) -> None:
    """Zero the dropped units' producer weights in place (the dense equivalent of :func:`shrink`)."""
    net = _net(module)
    with torch.no_grad():
        for g in groups:
            if not g.drop:
                continue
            for n, per in g.producers:
                m = net.get_submodule(n)
                idx = _unit_index(g.drop, per)
                m.weight[idx] = 0
                if g.fold is None and m.bias is not None:
                    m.bias[idx] = 0
            if g.fold is None:
                for n in g.norms:
                    bn = net.get_submodule(n)
                    idx = _unit_index(g.drop, 1)
                    if bn.weight is not None:
                        bn.weight[idx] = 0
                        bn.bias[idx] = 0


def _set(m: nn.Module, pname: str, value: torch.Tensor) -> None:
    old = getattr(m, pname)
    if isinstance(old, nn.Parameter):
        setattr(m, pname, nn.Parameter(value.contiguous(), requires_grad=old.requires_grad))
    else:
        m._buffers[pname] = value.contiguous()


def _sync_attrs(m: nn.Module) -> None:
    """Module attributes that describe the weight's shape follow it."""
    if isinstance(m, nn.Linear):
        m.out_features, m.in_features = m.weight.shape
    elif isinstance(m, nn.modules.conv._ConvNd):
        m.out_channels, m.in_channels = m.weight.shape[0], m.weight.shape[1] * m.groups
    elif isinstance(m, _BN):
        m.num_features = (m.weight if m.weight is not None else m.running_mean).shape[0]
    elif isinstance(m, nn.Embedding):  # a trimmed vocabulary (prune_vocab)
        m.num_embeddings, m.embedding_dim = m.weight.shape


def shrink(module: nn.Module, groups: list[Group]) -> dict:
    """Remove the dropped units physically; returns the record :func:`apply_record` rebuilds
    (``{"family", "tensors": {name: shape}, "heads": {self-attention: count}}``, names relative to
    ``module``)."""
    net = _net(module)
    prefix = "net." if net is not module else ""
    fam = family_of(module)
    touched: set[str] = set()
    heads: dict[str, int] = {}
    with torch.no_grad():
        # last group first: a unit's fold reads its producer's bias as the masked model has it,
        # before an earlier group's fold adds to that bias
        for g in reversed(groups):
            if not g.drop:
                continue
            keep_units = [u for u in range(g.units) if u not in set(g.drop)]
            if g.fold is not None and g.fold_from is not None:
                src = net.get_submodule(g.fold_from)
                per_src = dict(g.producers)[g.fold_from]
                if src.bias is not None:
                    for n, per in g.consumers:
                        c = net.get_submodule(n)
                        dead = _unit_index(g.drop, per)
                        contrib = c.weight[:, dead] @ g.fold(src.bias[_unit_index(g.drop, per_src)]).to(c.weight.dtype)
                        if c.bias is None:
                            c.bias = nn.Parameter(torch.zeros(c.weight.shape[0], dtype=c.weight.dtype))
                        c.bias.add_(contrib)
            for n, per in g.producers:
                m = net.get_submodule(n)
                idx = _unit_index(keep_units, per)
                _set(m, "weight", m.weight[idx])
                if m.bias is not None:
                    _set(m, "bias", m.bias[idx])
                _sync_attrs(m)
                touched.add(n)
            for n in g.norms:
                bn = net.get_submodule(n)
                idx = _unit_index(keep_units, 1)
                for pn in ("weight", "bias", "running_mean", "running_var"):
                    if getattr(bn, pn, None) is not None:
                        _set(bn, pn, getattr(bn, pn)[idx])
                _sync_attrs(bn)
                touched.add(n)
            for n, per in g.consumers:
                c = net.get_submodule(n)
                _set(c, "weight", c.weight[:, _unit_index(keep_units, per)])
                _sync_attrs(c)
                touched.add(n)
            if g.heads_module is not None:
                sa = net.get_submodule(g.heads_module)
                sa.num_attention_heads = len(keep_units)
                sa.all_head_size = len(keep_units) * int(sa.attention_head_size)
                heads[prefix + g.heads_module] = len(keep_units)
    tensors: dict[str, list[int]] = {}
    for n in sorted(touched):
        for pn, t in list(net.get_submodule(n).named_parameters(recurse=False)) + \
                list(net.get_submodule(n).named_buffers(recurse=False)):
            if t is not None:
                tensors[f"{prefix}{n}.{pn}"] = list(t.shape)
    _uniform_config(net)
    return {"family": fam.name if fam else None, "tensors": tensors, "heads": heads}


def _uniform_config(net: nn.Module) -> None:
    """A Hugging Face config states one FFN width: set it when every layer has the same, so the
    config alone rebuilds the FFN (``save_pretrained`` folders stay loadable for ``ffn``)."""
    cfg = getattr(net, "config", None)
    layers = _bert_layers(net)
    if cfg is None or not layers or not hasattr(cfg, "intermediate_size"):
        return
    widths = {layer.intermediate.dense.out_features for _, layer in layers}
    if len(widths) == 1 and cfg.intermediate_size != next(iter(widths)):
        import copy

        cfg = copy.deepcopy(cfg)  # the source artifact may share the config object
        cfg.intermediate_size = widths.pop()
        net.config = cfg


def apply_record(module: nn.Module, record: dict | None) -> None:
    """Give ``module`` (freshly built from the unpruned spec) the shapes ``record`` lists, before
    its weights are loaded. Uninitialized tensors on the module's device (meta stays meta)."""
    if not record:
        return
    touched = set()
    for name, shape in (record.get("tensors") or {}).items():
        mod_name, _, pname = name.rpartition(".")
        m = module.get_submodule(mod_name)
        old = getattr(m, pname, None)
        if old is None:
            if pname == "bias":  # a consumer that got a folded bias it did not have
                old = m.weight
            else:
                raise KeyError(name)
        if list(old.shape) != list(shape):
            new = torch.empty(tuple(shape), dtype=old.dtype, device=old.device)
            if isinstance(old, nn.Parameter) or pname == "bias":
                setattr(m, pname, nn.Parameter(new, requires_grad=getattr(old, "requires_grad", True)))
            else:
                m._buffers[pname] = new
        touched.add(mod_name)
    for n in touched:
        _sync_attrs(module.get_submodule(n))
    for name, count in (record.get("heads") or {}).items():
        sa = module.get_submodule(name)
        sa.num_attention_heads = int(count)
        sa.all_head_size = int(count) * int(sa.attention_head_size)
