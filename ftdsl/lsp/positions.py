"""Positions: the front end counts columns in code points (Python string indices), LSP counts in
UTF-16 code units by default (or UTF-8 bytes / UTF-32 when the client negotiates them).

A character outside the Basic Multilingual Plane (an emoji) is one code point but two UTF-16 units
and four UTF-8 bytes, so every column after one on the same line differs. `LineIndex` converts both
ways for one text. Pure Python, no pygls: the conversions are tested on their own.
"""

from __future__ import annotations

from bisect import bisect_right

UTF16, UTF8, UTF32 = "utf-16", "utf-8", "utf-32"


def units(s: str, encoding: str = UTF16) -> int:
    """The length of `s` in the encoding's code units."""
    if encoding == UTF32:
        return len(s)
    if encoding == UTF8:
        return len(s.encode("utf-8", "surrogatepass"))
    return len(s) + sum(1 for c in s if ord(c) > 0xFFFF)


class LineIndex:
    """Line starts of a text (lines end at `\\n`, as the front end counts them)."""

    def __init__(self, text: str, encoding: str = UTF16):
        self.text = text
        self.encoding = encoding
        self.starts = [0]
        i = text.find("\n")
        while i >= 0:
            self.starts.append(i + 1)
            i = text.find("\n", i + 1)

    def line_text(self, line0: int) -> str:
        if line0 >= len(self.starts):
            return ""
        s = self.starts[line0]
        e = self.starts[line0 + 1] - 1 if line0 + 1 < len(self.starts) else len(self.text)
        return self.text[s:e]

    # --- front end -> LSP ------------------------------------------------------------------

    def position(self, line1: int, col1: int) -> tuple[int, int]:
        """A front-end (1-based line, 1-based code-point column) as an LSP (line, character)."""
        line0 = max(line1 - 1, 0)
        if line0 >= len(self.starts):
            return len(self.starts) - 1, units(self.line_text(len(self.starts) - 1), self.encoding)
        text = self.line_text(line0)
        return line0, units(text[: max(col1 - 1, 0)], self.encoding)

    def offset_position(self, offset: int) -> tuple[int, int]:
        """A code-point offset into the text as an LSP (line, character)."""
        line0 = bisect_right(self.starts, offset) - 1
        return line0, units(self.text[self.starts[line0]:offset], self.encoding)

    def span_range(self, span) -> tuple[tuple[int, int], tuple[int, int]]:
        """A `Span`'s LSP range (start, end)."""
        return self.position(span.line, span.col), self.position(span.end_line, span.end_col)

    # --- LSP -> front end ------------------------------------------------------------------

    def offset(self, line0: int, character: int) -> int:
        """An LSP (line, character) as a code-point offset into the text (clamped to the line)."""
        if line0 >= len(self.starts):
            return len(self.text)
        text = self.line_text(line0)
        if self.encoding == UTF32:
            return self.starts[line0] + min(character, len(text))
        n = 0
        for i, c in enumerate(text):
            if n >= character:
                return self.starts[line0] + i
            n += units(c, self.encoding)
        return self.starts[line0] + len(text)

    def end(self) -> tuple[int, int]:
        """The LSP position just past the last character."""
        return self.offset_position(len(self.text))
