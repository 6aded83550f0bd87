"""Canonical layout of a .ftp file (`ftdsl fmt`), comments kept.

Public: `format_source(text, path)`, `format_file(file)`, `WIDTH`.

Layout, in short:

- items in their original order; one blank line around every block; between `param`, `use` and
  header lines the user's blank lines are kept, at most one;
- `KIND NAME {`, one attribute per line indented by two spaces, `}`; `KIND NAME {}` when empty;
  blank lines between attributes are kept (at most one), never after `{` or before `}`;
- values inline (`[a, b]`, `{ a = 1 }`, `f(x, k = 1)`) when the line fits in `WIDTH` columns
  and nothing inside carries a comment, otherwise one element per line, each followed by a
  comma, indented two more spaces;
- numbers keep their spelling, strings are re-quoted with `\\"`, `\\\\`, `\\n`, `\\t`, quoted
  dict keys stay quoted.

Comments are attached by position, from the source text:

- a comment on the line where an element (item, attribute, list element, dict entry, call
  argument) ends *trails* that element and is printed after it, two spaces apart;
- a comment on the line of an opening `{`, `[` or `(` trails that bracket;
- any other comment *leads* the next element of the innermost body (file, block, list, dict or
  call) that contains it, on its own line; after the last element it stays before the closing
  bracket, or at the end of the file;
- a comment inside an element but outside any of its bodies (`data # c` NEWLINE `x { }`,
  `lr = # c` NEWLINE `3e-5`) cannot keep its place and leads that element instead.

Every comment is printed exactly once, its trailing whitespace removed, so the formatter is
idempotent: `format_source(format_source(x)) == format_source(x)`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ftdsl.diagnostics import ERROR, Diagnostic
from ftdsl.syntax import ast as A
from ftdsl.syntax.parser import parse

__all__ = ["WIDTH", "format_file", "format_source"]

WIDTH = 100
INDENT = "  "

_BLANK = re.compile(r"\n[ \t\f\r\v]*\n")
_CONTAINERS = (A.ListV, A.DictV, A.Call)


def format_source(text: str, path: str = "<string>") -> tuple[str | None, list[Diagnostic]]:
    """Format `text`. Returns (formatted text, diagnostics); the text is None when `text` has
    syntax errors, and the diagnostics say why (nothing is formatted on a partial parse)."""
    if text.startswith("\ufeff"):
        text = text[1:]
    text = text.replace("\r\n", "\n")
    file, diags = parse(text, path)
    if file is None or any(d.severity == ERROR for d in diags):
        return None, list(diags)
    return format_file(file), list(diags)


def format_file(file: A.File) -> str:
    """The canonical text of a parsed file (LF line ends, one final newline; "" when empty)."""
    return _Formatter(file).run()


# --- comment attachment ----------------------------------------------------------------------


@dataclass
class _Slot:
    """One element of a body and the comments that belong to it."""

    node: object
    leading: list[tuple[str, bool]] = field(default_factory=list)  # (text, blank line before)
    trailing: str | None = None
    blank: bool = False  # blank line right before the element (after its leading comments)


@dataclass
class _Body:
    """The inside of a file, block, list, dict or call."""

    open_comment: str | None = None  # trails the opening bracket
    slots: list[_Slot] = field(default_factory=list)
    dangling: list[tuple[str, bool]] = field(default_factory=list)  # before the closing bracket

    def has_own_comments(self) -> bool:
        return bool(self.open_comment or self.dangling
                    or any(s.leading or s.trailing for s in self.slots))


def _start(node) -> int:
    if isinstance(node, A.Entry):
        return node.key_span.start
    if isinstance(node, A.KwArg):
        return node.name_span.start
    return node.span.start


def _end(node) -> int:
    if isinstance(node, (A.Entry, A.KwArg)):
        return node.value.span.end
    return node.span.end


def _children(node) -> list:
    if isinstance(node, A.File):
        return list(node.items)
    if isinstance(node, A.Block):
        return list(node.attrs)
    if isinstance(node, A.ListV):
        return list(node.items)
    if isinstance(node, A.DictV):
        return list(node.entries)
    if isinstance(node, A.Call):
        # The AST splits positional and keyword arguments; print them as written.
        return sorted([*node.args, *node.kwargs], key=_start)
    return []


def _owned_container(child):
    """The block, list, dict or call whose body lies inside `child`, if any."""
    if isinstance(child, (A.Block, *_CONTAINERS)):
        return child
    if isinstance(child, (A.Attr, A.Param, A.Entry, A.KwArg)) and isinstance(child.value, _CONTAINERS):
        return child.value
    return None


def _clean(comment: A.Comment) -> str:
    return comment.text.rstrip()


class _Formatter:
    def __init__(self, file: A.File):
        self.file = file
        self.src = file.source
        self.bodies: dict[int, _Body] = {}
        self.children: dict[int, list] = {}
        self._commented: dict[int, bool] = {}

    # Positions of brackets --------------------------------------------------------------------

    def _skip(self, i: int) -> int:
        """Index of the next token at or after `i` (skips whitespace and comments)."""
        src, n = self.src, len(self.src)
        while i < n:
            c = src[i]
            if c == "#":
                j = src.find("\n", i)
                i = n if j < 0 else j
            elif c in " \t\f\r\n":
                i += 1
            else:
                return i
        return n

    def _body_range(self, node) -> tuple[int | None, int]:
        """(offset of the opening bracket or None for the file, offset of the closing one)."""
        if isinstance(node, A.File):
            return None, len(self.src) + 1
        if isinstance(node, (A.Block, A.Call)):
            return self._skip(node.name_span.end), node.span.end - 1
        return node.span.start, node.span.end - 1

    def _newline_between(self, a: int, b: int) -> bool:
        return "\n" in self.src[a:b]

    def _blank_between(self, a: int, b: int) -> bool:
        return bool(_BLANK.search(self.src, a, b)) if b > a else False

    # Attachment -------------------------------------------------------------------------------

    def attach(self, node, comments: list[A.Comment]) -> None:
        """Build the body of `node` and, recursively, of every container inside it."""
        opened = self._body_range(node)[0]
        kids = _children(node)
        self.children[id(node)] = kids
        starts = [_start(k) for k in kids]
        ends = [_end(k) for k in kids]
        inner: list[list[A.Comment]] = [[] for _ in kids]
        between: list[list[A.Comment]] = [[] for _ in range(len(kids) + 1)]
        k = 0
        for c in comments:  # sorted by offset, as are the children
            pos = c.span.start
            while k < len(kids) and ends[k] <= pos:
                k += 1
            if k < len(kids) and starts[k] <= pos:
                inner[k].append(c)
            else:
                between[k].append(c)

        body = _Body()
        prev_end = None if opened is None else opened + 1  # end of the last thing placed
        prev_elem_end = prev_end  # end of the last element (or of the opening bracket)
        for i in range(len(kids) + 1):
            pending: list[tuple[str, bool]] = []
            for j, c in enumerate(between[i]):
                pos = c.span.start
                same_line = prev_elem_end is not None and not self._newline_between(prev_elem_end, pos)
                if j == 0 and same_line:
                    if i == 0:
                        body.open_comment = _clean(c)
                    else:
                        body.slots[-1].trailing = _clean(c)
                else:
                    blank = prev_end is not None and self._blank_between(prev_end, pos)
                    pending.append((_clean(c), blank))
                prev_end = c.span.end
            if i == len(kids):
                body.dangling = pending
                break
            child = kids[i]
            slot = _Slot(child, leading=pending)
            slot.blank = prev_end is not None and self._blank_between(prev_end, starts[i])
            owned = _owned_container(child)
            o, cl = self._body_range(owned) if owned is not None else (None, None)
            nested: list[A.Comment] = []
            for c in inner[i]:
                if o is not None and o < c.span.start < cl:
                    nested.append(c)
                else:  # between the tokens of the element itself: it leads the element
                    slot.leading.append((_clean(c), slot.blank))
                    slot.blank = False  # the blank line, if any, goes before these comments
            if owned is not None:
                self.attach(owned, nested)
            body.slots.append(slot)
            prev_end = prev_elem_end = ends[i]
        self.bodies[id(node)] = body

    def commented(self, node) -> bool:
        """Whether a comment is attached anywhere inside the container `node`."""
        key = id(node)
        got = self._commented.get(key)
        if got is None:
            body = self.bodies[key]
            got = body.has_own_comments() or any(
                self.commented(c) for s in body.slots if (c := _owned_container(s.node)) is not None)
            self._commented[key] = got
        return got

    # Printing ---------------------------------------------------------------------------------

    def run(self) -> str:
        file = self.file
        self.attach(file, sorted(file.comments, key=lambda c: c.span.start))
        body = self.bodies[id(file)]
        out: list[str] = []

        def emit(line: str, blank: bool) -> None:
            if out and blank:
                out.append("")
            out.append(line)

        prev = None
        for slot in body.slots:
            sep = prev is not None and (isinstance(prev, A.Block) or isinstance(slot.node, A.Block))
            for text, blank in slot.leading:
                emit(text, blank or sep)
                sep = False
            text = self.item(slot.node)
            if slot.trailing:
                text += "  " + slot.trailing
            emit(text, slot.blank or sep)
            prev = slot.node
        for text, blank in body.dangling:
            emit(text, blank)
        return "\n".join(out) + "\n" if out else ""

    def item(self, node) -> str:
        if isinstance(node, A.Header):
            return f"ftp {node.version.text}"
        if isinstance(node, A.Use):
            return f"use {_quote(node.path)}"
        if isinstance(node, A.Param):
            head = f"param {node.name} = "
            return head + self.value(node.value, "", len(head), 0)
        assert isinstance(node, A.Block)
        head = f"{node.kind} {node.name} {{"
        body = self.bodies[id(node)]
        if not body.slots and not body.has_own_comments():
            return head + "}"
        lines = [head + (f"  {body.open_comment}" if body.open_comment else "")]
        inner = INDENT
        for slot in body.slots:
            for text, blank in slot.leading:
                if blank and len(lines) > 1:
                    lines.append("")
                lines.append(inner + text)
            attr = slot.node
            prefix = f"{inner}{attr.name} = "
            line = prefix + self.value(attr.value, inner, len(prefix), 0)
            if slot.trailing:
                line += "  " + slot.trailing
            if slot.blank and len(lines) > 1:
                lines.append("")
            lines.append(line)
        for text, blank in body.dangling:
            if blank and len(lines) > 1:
                lines.append("")
            lines.append(inner + text)
        lines.append("}")
        return "\n".join(lines)

    def value(self, v, indent: str, col: int, suffix: int) -> str:
        """`v` printed at column `col` of a line indented by `indent`, followed by `suffix`
        characters; lines after the first carry their own indentation."""
        if not isinstance(v, _CONTAINERS):
            return _scalar(v)
        if not self.commented(v):
            flat = self.inline(v)
            if col + len(flat) + suffix <= WIDTH:
                return flat
        return self.broken(v, indent)

    def inline(self, v) -> str:
        if not isinstance(v, _CONTAINERS):
            return _scalar(v)
        parts = [self.element_inline(c) for c in self.children[id(v)]]
        if isinstance(v, A.ListV):
            return "[" + ", ".join(parts) + "]"
        if isinstance(v, A.DictV):
            return "{ " + ", ".join(parts) + " }" if parts else "{}"
        return f"{v.name}(" + ", ".join(parts) + ")"

    def element_inline(self, node) -> str:
        return _prefix(node) + self.inline(_element_value(node))

    def broken(self, v, indent: str) -> str:
        body = self.bodies[id(v)]
        if isinstance(v, A.ListV):
            opening, closing = "[", "]"
        elif isinstance(v, A.DictV):
            opening, closing = "{", "}"
        else:
            opening, closing = f"{v.name}(", ")"
        inner = indent + INDENT
        lines = [opening + (f"  {body.open_comment}" if body.open_comment else "")]
        for slot in body.slots:
            lines.extend(inner + text for text, _ in slot.leading)
            node = slot.node
            prefix = _prefix(node)
            line = inner + prefix + self.value(_element_value(node), inner, len(inner) + len(prefix), 1) + ","
            if slot.trailing:
                line += "  " + slot.trailing
            lines.append(line)
        lines.extend(inner + text for text, _ in body.dangling)
        lines.append(indent + closing)
        return "\n".join(lines)


def _element_value(node):
    return node.value if isinstance(node, (A.Entry, A.KwArg)) else node


def _prefix(node) -> str:
    if isinstance(node, A.Entry):
        return f"{_quote(node.key) if node.quoted else node.key} = "
    if isinstance(node, A.KwArg):
        return f"{node.name} = "
    return ""


def _scalar(v) -> str:
    if isinstance(v, A.Number):
        return v.text
    if isinstance(v, A.String):
        return _quote(v.value)
    if isinstance(v, A.Bool):
        return "true" if v.value else "false"
    if isinstance(v, A.Null):
        return "null"
    if isinstance(v, A.Ref):
        return v.dotted
    raise TypeError(f"not a value: {v!r}")


_ESCAPE = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\t": "\\t"}


def _quote(s: str) -> str:
    return '"' + "".join(_ESCAPE.get(ch, ch) for ch in s) + '"'
