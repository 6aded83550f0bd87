"""The typed IR: immutable values checked against the schema, and one node type per block kind.

Everything here is a frozen dataclass. The IR was first written as pydantic models, but importing
pydantic and building the model classes cost ~110 ms of CPU per `ftdsl lint` (measured: a 30-line
lint took 0.29 s with them and 0.18 s without, against a 0.3 s budget including interpreter
start-up), and nothing here needs pydantic's validation: the schema pass in `ir/convert.py` checks
every value and reports problems with spans. Every node keeps the span of the source that
produced it, so a later error can point at the line that caused it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Union


from ftdsl.syntax.ast import Span


@dataclass(frozen=True, slots=True)
class Lit:
    """A literal: number, string, bool or null."""

    value: Any
    span: Span | None


@dataclass(frozen=True, slots=True)
class Sym:
    """An enum symbol such as `auto` or `max`."""

    name: str
    span: Span | None


@dataclass(frozen=True, slots=True)
class CallV:
    """A constructor call with every argument present (defaults filled in)."""

    name: str
    args: tuple[tuple[str, "Value"], ...]
    span: Span | None
    written: frozenset[str] = frozenset()

    def get(self, name: str, default=None):
        for k, v in self.args:
            if k == name:
                return v
        return default


@dataclass(frozen=True, slots=True)
class RefV:
    """A reference to a block (`base`) or to a split of a data block (`reviews.test`)."""

    target: str
    split: str | None
    span: Span | None


@dataclass(frozen=True, slots=True)
class ListIR:
    items: tuple["Value", ...]
    span: Span | None


@dataclass(frozen=True, slots=True)
class DictIR:
    entries: tuple[tuple[str, "Value"], ...]
    span: Span | None
    key_spans: tuple[Span | None, ...] = ()

    def get(self, name: str, default=None):
        for k, v in self.entries:
            if k == name:
                return v
        return default


Value = Union[Lit, Sym, CallV, RefV, ListIR, DictIR]


@dataclass(frozen=True, slots=True)
class AttrIR:
    """One attribute of a block (a plain dataclass: a big pipeline has tens of thousands)."""

    name: str
    value: Any  # Value
    span: Span | None = None  # the whole `name = value`
    name_span: Span | None = None
    written: bool = True  # False: filled from the schema default


@dataclass(frozen=True, kw_only=True)
class BlockIR:
    """A block of any kind; the subclasses below fix `kind` (one node type per block kind)."""

    kind: str
    name: str
    span: Span | None = None
    name_span: Span | None = None
    kind_span: Span | None = None
    attrs: dict[str, AttrIR] = field(default_factory=dict)
    mentioned: tuple[str, ...] = ()  # every attribute name written, valid or not (for follow-up rules)

    def value(self, name: str):
        a = self.attrs.get(name)
        return a.value if a else None

    def written(self, name: str) -> bool:
        a = self.attrs.get(name)
        return bool(a and a.written)


@dataclass(frozen=True, kw_only=True)
class PipelineBlock(BlockIR):
    kind: Literal["pipeline"] = "pipeline"


@dataclass(frozen=True, kw_only=True)
class DataBlock(BlockIR):
    kind: Literal["data"] = "data"


@dataclass(frozen=True, kw_only=True)
class ModelBlock(BlockIR):
    kind: Literal["model"] = "model"


@dataclass(frozen=True, kw_only=True)
class TrainBlock(BlockIR):
    kind: Literal["train"] = "train"


@dataclass(frozen=True, kw_only=True)
class DistillBlock(BlockIR):
    kind: Literal["distill"] = "distill"


@dataclass(frozen=True, kw_only=True)
class PruneBlock(BlockIR):
    kind: Literal["prune"] = "prune"


@dataclass(frozen=True, kw_only=True)
class QuantizeBlock(BlockIR):
    kind: Literal["quantize"] = "quantize"


@dataclass(frozen=True, kw_only=True)
class ExportBlock(BlockIR):
    kind: Literal["export"] = "export"


@dataclass(frozen=True, kw_only=True)
class EvaluateBlock(BlockIR):
    kind: Literal["evaluate"] = "evaluate"


@dataclass(frozen=True, kw_only=True)
class SweepBlock(BlockIR):
    kind: Literal["sweep"] = "sweep"


BLOCK_MODELS: dict[str, type[BlockIR]] = {
    "pipeline": PipelineBlock, "data": DataBlock, "model": ModelBlock, "train": TrainBlock,
    "distill": DistillBlock, "prune": PruneBlock, "quantize": QuantizeBlock, "export": ExportBlock,
    "evaluate": EvaluateBlock, "sweep": SweepBlock,
}


@dataclass(frozen=True, kw_only=True)
class ParamIR:
    name: str
    value: Any  # Value (after --set)
    span: Span | None = None
    name_span: Span | None = None
    overridden: bool = False


@dataclass(frozen=True, kw_only=True)
class Program:
    """A whole resolved pipeline: the root file plus everything it `use`s."""

    path: str  # the root file as the user named it
    root_dir: str  # absolute folder of the root file: paths in the pipeline are relative to it
    pipeline: PipelineBlock | None = None
    params: dict[str, ParamIR] = field(default_factory=dict)
    blocks: dict[str, BlockIR] = field(default_factory=dict)  # stage blocks in source order
    files: tuple[str, ...] = ()  # every file read (root first)
    param_uses: dict[str, int] = field(default_factory=dict)  # how many references each param has

    def setting(self, name: str, default=None):
        if self.pipeline is None or name not in self.pipeline.attrs:
            return default
        v = self.pipeline.attrs[name].value
        return v.value if isinstance(v, Lit) else (v.name if isinstance(v, Sym) else default)
