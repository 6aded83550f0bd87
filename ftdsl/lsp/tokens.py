"""Semantic tokens: the scan's roles as LSP token types, delta-encoded.

Tokens never span lines in this language (strings and comments end at the line end), so each is
one (line, start, length) triple in the negotiated position encoding.
"""

from __future__ import annotations

from ftdsl.lsp.positions import LineIndex, units
from ftdsl.lsp.scan import Scan

TYPES = ["keyword", "class", "property", "function", "parameter", "variable", "enumMember", "string", "number",
         "comment", "type"]
MODIFIERS = ["declaration", "defaultLibrary"]

_ROLE = {"keyword": "keyword", "kind": "keyword", "blockname": "class", "paramname": "variable", "attr": "property",
         "key": "property", "kwarg": "parameter", "ctor": "function", "enum": "enumMember", "ref": "variable",
         "refpart": "property", "usepath": "string"}
_KIND = {"string": "string", "number": "number", "comment": "comment"}


def classify(tok, kinds: dict[str, str]) -> tuple[str, int] | None:
    """(token type, modifier bits) of one scanned token, or None for punctuation."""
    if tok.role == "ref" and kinds.get(tok.text, "param") != "param":
        return "class", 0
    if tok.role in ("blockname", "paramname"):
        return _ROLE[tok.role], 1
    if tok.role == "ctor":
        return "function", 2
    t = _ROLE.get(tok.role) or _KIND.get(tok.kind)
    return (t, 0) if t else None


def encode(text: str, index: LineIndex, kinds: dict[str, str]) -> list[int]:
    data: list[int] = []
    prev_line = prev_col = 0
    for tok in Scan(text).toks:
        c = classify(tok, kinds)
        if c is None:
            continue
        line, col = index.offset_position(tok.start)
        length = units(tok.text, index.encoding)
        data += [line - prev_line, col - prev_col if line == prev_line else col, length, TYPES.index(c[0]), c[1]]
        prev_line, prev_col = line, col
    return data
