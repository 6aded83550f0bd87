"""Pick an output format and write diagnostics to a stream; helpers shared by the renderers.

Public:
- `render(fmt, diags, sources, stream, *, color=None)`: one entry point for the CLI.
- `FORMATS`: the names `render` accepts.
- `should_color(stream, environ=None)`: the NO_COLOR / TERM=dumb / tty decision.

Every renderer takes diagnostics plus `sources`, a dict from `span.file` to the file's text (used
to show the source line, compute byte offsets and fingerprints); a file missing from `sources`
degrades gracefully (no snippet, `byte: null`, a message-based fingerprint).
"""

from __future__ import annotations

import os
from bisect import bisect_right
from functools import lru_cache
from typing import Iterable, Mapping, Sequence, TextIO

from ftdsl.diagnostics import ERROR, INFO, WARNING, Diagnostic
from ftdsl.syntax.ast import Span

FORMATS = ("text", "full", "concise", "json", "github", "sarif")


def render(fmt: str, diags: Iterable[Diagnostic], sources: Mapping[str, str] | None, stream: TextIO, *,
           color: bool | None = None) -> None:
    """Write `diags` to `stream` in format `fmt` (see `FORMATS`; "full" is an alias of "text").

    `color` matters only for text/concise: None decides from the stream and the environment.
    """
    sources = sources or {}
    diags = list(diags)
    if fmt in ("text", "full"):
        from ftdsl.diagnostics.text import render_text

        render_text(diags, sources, stream, color=color)
    elif fmt == "concise":
        from ftdsl.diagnostics.text import render_concise

        render_concise(diags, sources, stream, color=color)
    elif fmt == "json":
        from ftdsl.diagnostics.jsonfmt import render_json

        render_json(diags, sources, stream)
    elif fmt == "github":
        from ftdsl.diagnostics.github import render_github

        render_github(diags, sources, stream)
    elif fmt == "sarif":
        from ftdsl.diagnostics.sarif import render_sarif

        render_sarif(diags, sources, stream)
    else:
        raise ValueError(f"unknown output format {fmt!r}; expected one of: {', '.join(FORMATS)}")


# --- shared helpers ----------------------------------------------------------------------------

def sort_diagnostics(diags: Iterable[Diagnostic]) -> list[Diagnostic]:
    """Sort by (file, line, col, code); stable for equal keys. Span-less diagnostics come first."""
    return sorted(diags, key=Diagnostic.sort_key)


def should_color(stream: TextIO, environ: Mapping[str, str] | None = None) -> bool:
    """Colour only for a terminal: NO_COLOR (any value) beats FORCE_COLOR; TERM=dumb disables it."""
    env = os.environ if environ is None else environ
    if env.get("NO_COLOR", ""):
        return False
    if env.get("TERM", "") in ("dumb", "unknown"):
        return False
    if env.get("FORCE_COLOR", "") or env.get("TTY_COMPATIBLE", "") == "1":
        return True
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except (ValueError, OSError):  # closed or detached stream
        return False


def counts(diags: Iterable[Diagnostic]) -> tuple[int, int, int]:
    """(errors, warnings, infos)."""
    e = w = i = 0
    for d in diags:
        if d.severity == ERROR:
            e += 1
        elif d.severity == WARNING:
            w += 1
        elif d.severity == INFO:
            i += 1
    return e, w, i


@lru_cache(maxsize=4)
def _split(text: str) -> tuple[str, ...]:
    return tuple(ln[:-1] if ln.endswith("\r") else ln for ln in text.split("\n"))


@lru_cache(maxsize=4)
def _line_starts(text: str) -> tuple[list[int], list[int]]:
    """Character and UTF-8 byte offsets of every line start (lines split on `\\n`)."""
    chars, bytes_ = [0], [0]
    pos = bpos = 0
    for ln in text.split("\n"):
        pos += len(ln) + 1
        bpos += len(ln.encode("utf-8", "surrogatepass")) + 1
        chars.append(pos)
        bytes_.append(bpos)
    return chars[:-1], bytes_[:-1]


def source_lines(sources: Mapping[str, str], file: str) -> Sequence[str] | None:
    """The file's lines without their terminators (`\\n`, `\\r\\n`); None if the text is unknown.

    Lines are split on `\\n` only, as the lexer counts them, so a lone `\\r` stays in its line.
    """
    text = sources.get(file)
    return None if text is None else _split(text)


def line_text(sources: Mapping[str, str], file: str, line: int) -> str | None:
    lines = source_lines(sources, file)
    if lines is None or not 1 <= line <= len(lines):
        return None
    return lines[line - 1]


def _offsets_known(span: Span) -> bool:
    # A span built by hand often leaves start/end at 0; trust them only when they can be right.
    if span.end < span.start or span.start < 0:
        return False
    return not (span.start == 0 and span.end == 0 and (span.line, span.col) != (1, 1))


def char_offset(text: str, line: int, col: int) -> int:
    """Character offset of a 1-based (line, col in code points) position, clamped to its line."""
    starts, _ = _line_starts(text)
    if line > len(starts):
        return len(text)
    start = starts[max(line, 1) - 1]
    nxt = starts[line] if line < len(starts) else len(text)
    return min(start + max(col - 1, 0), nxt)


def _byte_of(text: str, off: int) -> int:
    starts, bstarts = _line_starts(text)
    i = bisect_right(starts, off) - 1
    return bstarts[i] + len(text[starts[i]:off].encode("utf-8", "surrogatepass"))


def byte_offsets(span: Span, sources: Mapping[str, str]) -> tuple[int | None, int | None]:
    """UTF-8 byte offsets of the span's start and end (end exclusive); None when the text is unknown.

    Uses the span's character offsets; when they look unset (0, 0 away from 1:1), the line/column.
    """
    text = sources.get(span.file)
    if text is None:
        return None, None
    if _offsets_known(span):
        s, e = min(span.start, len(text)), min(span.end, len(text))
    else:
        s = char_offset(text, span.line, span.col)
        e = max(s, char_offset(text, span.end_line, span.end_col))
    return _byte_of(text, s), _byte_of(text, e)


def plural(n: int, word: str, words: str | None = None) -> str:
    return f"{n} {word if n == 1 else (words or word + 's')}"
