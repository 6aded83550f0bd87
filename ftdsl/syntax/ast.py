"""AST of a .ftp file: immutable nodes that keep their source span.

The AST is purely syntactic: it records what was written and where. Meaning (which names are
block kinds, what a reference points at) is decided later, in `ftdsl.ir.resolve`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union


@dataclass(frozen=True, slots=True)
class Span:
    """A region of one file. Lines and columns are 1-based; `end_col` is exclusive."""

    file: str
    line: int
    col: int
    end_line: int
    end_col: int
    start: int = 0  # character offsets; end exclusive
    end: int = 0

    @staticmethod
    def point(file: str, line: int, col: int, offset: int = 0) -> "Span":
        return Span(file, line, col, line, col + 1, offset, offset + 1)

    def to(self, other: "Span") -> "Span":
        return Span(self.file, self.line, self.col, other.end_line, other.end_col, self.start, other.end)


@dataclass(frozen=True, slots=True)
class Number:
    value: int | float
    text: str
    span: Span


@dataclass(frozen=True, slots=True)
class String:
    value: str
    span: Span


@dataclass(frozen=True, slots=True)
class Bool:
    value: bool
    span: Span


@dataclass(frozen=True, slots=True)
class Null:
    span: Span


@dataclass(frozen=True, slots=True)
class Ref:
    """`name` or `name.part.part`; `spans` holds one span per part."""

    parts: tuple[str, ...]
    spans: tuple[Span, ...]
    span: Span

    @property
    def dotted(self) -> str:
        return ".".join(self.parts)


@dataclass(frozen=True, slots=True)
class ListV:
    items: tuple["Value", ...]
    span: Span


@dataclass(frozen=True, slots=True)
class Entry:
    key: str
    key_span: Span
    value: "Value"
    quoted: bool = False


@dataclass(frozen=True, slots=True)
class DictV:
    entries: tuple[Entry, ...]
    span: Span


@dataclass(frozen=True, slots=True)
class KwArg:
    name: str
    name_span: Span
    value: "Value"


@dataclass(frozen=True, slots=True)
class Call:
    name: str
    name_span: Span
    args: tuple["Value", ...]
    kwargs: tuple[KwArg, ...]
    span: Span


Value = Union[Number, String, Bool, Null, Ref, ListV, DictV, Call]


@dataclass(frozen=True, slots=True)
class Attr:
    name: str
    name_span: Span
    value: Value
    span: Span


@dataclass(frozen=True, slots=True)
class Block:
    """`KIND NAME { attrs }`; `pipeline NAME { ... }` is a Block with kind "pipeline"."""

    kind: str
    kind_span: Span
    name: str
    name_span: Span
    attrs: tuple[Attr, ...]
    span: Span


@dataclass(frozen=True, slots=True)
class Param:
    name: str
    name_span: Span
    value: Value
    span: Span


@dataclass(frozen=True, slots=True)
class Use:
    path: str
    path_span: Span
    span: Span


@dataclass(frozen=True, slots=True)
class Header:
    version: Number
    span: Span


Item = Union[Block, Param, Use, Header]


@dataclass(frozen=True, slots=True)
class Comment:
    text: str
    span: Span


@dataclass(frozen=True, slots=True)
class File:
    path: str
    items: tuple[Item, ...]
    comments: tuple[Comment, ...]
    source: str
