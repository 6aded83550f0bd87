"""AST of a .ftp file: immutable nodes that keep their source span.

The AST is purely syntactic: it records what was written and where. Meaning (which names are
block kinds, what a reference points at) is decided later, in `ftdsl.ir.resolve`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
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


# One literal of a packed list (see `PackedItems`); the lexer only packs runs whose every element
# matches its stricter pattern, so this one never sees anything else.
_LITERAL = re.compile(r'[+-]?[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?|"[^"\\\n]*"|true|false|null')


class PackedItems(Sequence):
    """The items of a long list of plain literals (`[1, 2, 3, ...]`), kept as a region of the source
    and built on demand. The lexer packs such runs (`syntax/lexer.py`): a 2-million-element list
    costs no token, parser step or node per element until something reads it, and a reader that
    iterates builds one element at a time. It behaves as a tuple of `Number`, `String`, `Bool` and
    `Null` nodes with exact spans."""

    __slots__ = ("text", "path", "start", "end", "line", "line_start", "_len")

    def __init__(self, text: str, path: str, start: int, end: int, line: int, line_start: int):
        self.text, self.path, self.start, self.end = text, path, start, end
        self.line, self.line_start = line, line_start  # line number at `start` and that line's offset
        self._len = -1

    def __iter__(self):
        text, path = self.text, self.path
        line, ls, last = self.line, self.line_start, self.start
        for m in _LITERAL.finditer(text, self.start, self.end):
            s, e = m.span()
            nl = text.count("\n", last, s)
            if nl:
                line += nl
                ls = text.rfind("\n", last, s) + 1
            last = s
            span = Span(path, line, s - ls + 1, line, e - ls + 1, s, e)
            v = m.group()
            c = v[0]
            if c == '"':
                yield String(v[1:-1], span)
            elif c == "t" or c == "f":
                yield Bool(c == "t", span)
            elif c == "n":
                yield Null(span)
            elif "." in v or "e" in v or "E" in v:
                yield Number(float(v), v, span)
            else:
                yield Number(int(v), v, span)

    def __len__(self) -> int:
        if self._len < 0:
            self._len = sum(1 for _ in _LITERAL.finditer(self.text, self.start, self.end))
        return self._len

    def __getitem__(self, i):
        if isinstance(i, slice):
            return tuple(self)[i]
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(i)
        for j, x in enumerate(self):
            if j == i:
                return x

    def __eq__(self, other):
        if isinstance(other, (tuple, PackedItems)):
            return tuple(self) == tuple(other)
        return NotImplemented

    def __hash__(self):
        return hash(tuple(self))

    def __repr__(self):
        return f"PackedItems({self.path}:{self.line}, {self.end - self.start} chars)"


@dataclass(frozen=True, slots=True)
class ListV:
    items: "tuple[Value, ...] | PackedItems"
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


@dataclass(frozen=True, slots=True)
class Invalid:
    """A value that could not be built (an overflowing number, a bad escape, a positional argument
    after a keyword): its diagnostic is already reported, so later phases skip it silently."""

    span: Span


Value = Union[Number, String, Bool, Null, Ref, ListV, DictV, Call, Invalid]


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
    # Names of blocks and params lost to syntax errors (`parse(..., recover=True)`): references to
    # them are not reported as undefined, the broken item is the error.
    broken: frozenset[str] = frozenset()
