"""Human-readable diagnostics in the rustc/ruff style (formats.md §2), for stderr.

```
error[FTP201]: unknown attribute `epoch` in `train finetune`
  --> pipelines/sentiment.ftp:21:3
   |
20 |   model = base, data = reviews
21 |   epoch = 3, batch = 32
   |   ^^^^^ unknown attribute
   |
   = help: did you mean `epochs`?

Found 1 error.
```

Public:
- `render_text(diags, sources, stream, *, color=None, summary=True)`: the full form.
- `render_concise(diags, sources, stream, *, color=None, summary=True)`: `file:line:col: error[FTP201] message`.
- `format_text(diags, sources, *, color=False, summary=True) -> str` and `format_concise(...) -> str`.
- `summary_line(diags) -> str`: `Found 1 error and 2 warnings.` / `All checks passed.`

Snippets show one line of context before the primary line, and the lines of secondary labels
in the same file (`-` markers); a secondary label in another file gets its own `::: file:l:c`
section. Tabs are expanded to 4-column stops and wide characters (emoji, CJK) count two cells,
so carets line up in a terminal. Control and bidi-override characters in the source or in
messages are shown as visible placeholders, never written raw to the terminal.

Colour uses rich, with user text appended to `rich.text.Text` objects rather than spliced into
markup: no markup parsing happens at all, so `[bold]`, `[/]`, a trailing backslash (which
`rich.markup.escape` doubles or drops) and `:smile:` are all printed verbatim; highlighting and
emoji codes are off as well.
"""

from __future__ import annotations

import io
from typing import Iterable, Mapping, TextIO

from rich.cells import cell_len

from ftdsl.diagnostics import Diagnostic
from ftdsl.diagnostics.render import counts, plural, should_color, sort_diagnostics, source_lines
from ftdsl.syntax.ast import Span

TAB_WIDTH = 4

_STYLE = {
    "error": "bold red",
    "warning": "bold yellow",
    "info": "bold cyan",
    "lineno": "bold blue",
    "secondary": "bold blue",
    "message": "bold",
    "help": "bold cyan",
    "note": "bold",
}

Seg = tuple[str | None, str]  # (style key or None, text)
Row = list[Seg]


# --- sanitising ------------------------------------------------------------------------------

_BIDI = set("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def _visible(ch: str) -> str:
    """A harmless stand-in for characters that would move the cursor, colour or reorder text."""
    o = ord(ch)
    if o < 0x20:
        return chr(0x2400 + o)  # control pictures: ␀ ␁ ... ␟
    if o == 0x7F:
        return "\u2421"  # ␡
    if 0x80 <= o < 0xA0 or ch in _BIDI or 0xD800 <= o < 0xE000:
        return "\ufffd"
    return ch


def clean(text: str) -> str:
    """`text` with control, bidi-override and lone-surrogate characters replaced (newlines and tabs kept)."""
    if text.isprintable():
        return text
    return "".join(c if c in "\n\t" else _visible(c) for c in text)


def _display(line: str) -> tuple[str, list[int]]:
    """The line as shown (tabs expanded, controls replaced) and, per character, its start cell.

    `cells` has `len(line) + 1` entries; the last is the width of the whole line.
    """
    out: list[str] = []
    cells = [0]
    pos = 0
    for ch in line:
        if ch == "\t":
            shown = " " * (TAB_WIDTH - pos % TAB_WIDTH)
        else:
            shown = _visible(ch)
        out.append(shown)
        pos += len(shown) if ch == "\t" else cell_len(shown)
        cells.append(pos)
    return "".join(out), cells


def _cell(cells: list[int], col: int) -> int:
    """Display cell of 1-based column `col`, extrapolating past the end of the line."""
    n = len(cells) - 1
    i = max(col - 1, 0)
    return cells[min(i, n)] + max(0, i - n)


# --- building one diagnostic -----------------------------------------------------------------

def _sev(d: Diagnostic) -> str:
    return d.severity if d.severity in ("error", "warning", "info") else "error"


def _loc(span: Span) -> str:
    return f"{span.file}:{span.line}:{span.col}"


class _Label:
    __slots__ = ("span", "message", "primary")

    def __init__(self, span: Span, message: str, primary: bool):
        self.span, self.message, self.primary = span, message, primary


def _marker_row(lab: _Label, cells: list[int], line_len: int, gutter: Row, sev: str) -> Row:
    sp = lab.span
    start = _cell(cells, sp.col)
    end = _cell(cells, sp.end_col) if sp.end_line == sp.line else _cell(cells, line_len + 1)
    width = max(1, end - start)
    mark = ("^" if lab.primary else "-") * width
    style = sev if lab.primary else "secondary"
    row: Row = [*gutter, (None, " " * start), (style, mark)]
    if lab.message:
        row.append((style, " " + clean(lab.message)))
    return row


def _snippet(labels: list[_Label], lines: list[str], w: int, sev: str, primary_context: bool) -> list[Row]:
    """Rows for one file: numbered source lines with marker rows under them."""
    shown: set[int] = set()
    for lab in labels:
        shown.add(lab.span.line)
        if lab.primary and primary_context and lab.span.line > 1:
            shown.add(lab.span.line - 1)
    shown = {n for n in shown if 1 <= n <= len(lines)}
    blank: Row = [("lineno", " " * (w + 1) + "|")]
    marker_gutter: Row = [("lineno", " " * (w + 1) + "| ")]
    rows: list[Row] = [list(blank)]
    prev = None
    for n in sorted(shown):
        if prev is not None and n > prev + 1:
            rows.append([("lineno", "...")])
        prev = n
        here = sorted((lab for lab in labels if lab.span.line == n),
                      key=lambda lab: (lab.span.col, not lab.primary))
        line, here = _clip(lines[n - 1], here)
        text, cells = _display(line)
        row: Row = [("lineno", f"{n:>{w}} |")]
        if text.strip():
            row.append((None, " " + text.rstrip()))
        rows.append(row)
        for lab in here:
            rows.append(_marker_row(lab, cells, len(line), marker_gutter, sev))
    return rows


MAX_SHOWN = 160  # characters of one source line in a snippet


def _clip(line: str, labels: list[_Label]) -> tuple[str, list[_Label]]:
    """A window of a very long line (a 4 MB one-line list) around its labels, `…` marking the cut,
    with the labels' columns moved into it: rendering stays fast and readable."""
    if len(line) <= MAX_SHOWN:
        return line, labels
    first = min((lab.span.col for lab in labels), default=1) - 1
    lo = max(0, first - 40)
    hi = min(len(line), lo + MAX_SHOWN)
    lead = 1 if lo else 0
    shown = ("\u2026" if lo else "") + line[lo:hi] + ("\u2026" if hi < len(line) else "")

    def move(col: int) -> int:
        return min(max(col - lo + lead, 1), len(shown) + 1)

    moved = []
    for lab in labels:
        sp = lab.span
        end = sp.end_col if sp.end_line == sp.line else len(line) + 1
        span = Span(sp.file, sp.line, move(sp.col), sp.line, move(end), sp.start, sp.end)
        moved.append(_Label(span, lab.message, lab.primary))
    return shown, moved


def _footer(kind: str, text: str, w: int) -> list[Row]:
    head = " " * (w + 1) + "= "
    parts = clean(text).split("\n")
    rows: list[Row] = [[("lineno", head), (kind, kind + ":"), (None, " " + parts[0])]]
    indent = " " * (len(head) + len(kind) + 2)
    for p in parts[1:]:
        rows.append([(None, indent + p)])
    return rows


def diagnostic_rows(d: Diagnostic, sources: Mapping[str, str]) -> list[Row]:
    """The styled rows of one diagnostic (without the blank line that follows it)."""
    sev = _sev(d)
    rows: list[Row] = [[(sev, f"{sev}[{d.code}]"), ("message", ": " + clean(d.message))]]
    sp = d.span
    footers = ([("help", d.hint)] if d.hint else []) + [("note", n) for n in d.notes]
    if sp is None:
        w = 1
        for kind, text in footers:
            rows.extend(_footer(kind, text, w))
        return rows

    primary = _Label(sp, d.label, True)
    prim_lines = source_lines(sources, sp.file)
    if prim_lines is not None and not 1 <= sp.line <= len(prim_lines):
        prim_lines = None
    same: list[_Label] = [primary] if prim_lines is not None else []
    others: dict[str, list[_Label]] = {}
    for lab in d.secondary:
        s = lab.span
        if s.file == sp.file and prim_lines is not None and 1 <= s.line <= len(prim_lines):
            same.append(_Label(s, lab.message, False))
        else:
            others.setdefault(s.file, []).append(_Label(s, lab.message, False))

    numbers = [sp.line] + [lab.span.line for lab in d.secondary]
    w = max(len(str(n)) for n in numbers)

    rows.append([("lineno", " " * w + "--> "), (None, clean(_loc(sp)))])
    has_snippet = prim_lines is not None
    if has_snippet:
        rows.extend(_snippet(same, prim_lines, w, sev, primary_context=True))
    for file in sorted(others):
        labs = sorted(others[file], key=lambda lab: (lab.span.line, lab.span.col))
        rows.append([("lineno", " " * w + "::: "), (None, clean(_loc(labs[0].span)))])
        lines = source_lines(sources, file)
        known = [lab for lab in labs if lines is not None and 1 <= lab.span.line <= len(lines)]
        if known:
            has_snippet = True
            rows.extend(_snippet(known, lines, w, sev, primary_context=False))
        for lab in labs:
            if lab not in known and lab.message:
                rows.extend(_footer("note", f"{_loc(lab.span)}: {lab.message}", w))
    if footers:
        if has_snippet:
            rows.append([("lineno", " " * (w + 1) + "|")])
        for kind, text in footers:
            rows.extend(_footer(kind, text, w))
    return rows


def summary_line(diags: Iterable[Diagnostic]) -> str:
    """`Found 1 error.`, `Found 2 errors and 1 warning.`, ... or `All checks passed.`"""
    e, w, i = counts(diags)
    parts = [p for n, p in ((e, plural(e, "error")), (w, plural(w, "warning")),
                            (i, plural(i, "info message"))) if n]
    if not parts:
        return "All checks passed."
    joined = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return f"Found {joined}."


# --- output ----------------------------------------------------------------------------------

def _plain(row: Row) -> str:
    return "".join(t for _, t in row).rstrip()


def _rich_text(row: Row):
    from rich.text import Text

    segs = list(row)
    # Trailing spaces are dropped exactly as in plain mode.
    while segs and not segs[-1][1].rstrip():
        segs.pop()
    if segs:
        segs[-1] = (segs[-1][0], segs[-1][1].rstrip())
    text = Text(end="\n", no_wrap=True)
    for style, t in segs:
        if t:
            text.append(t, _STYLE[style] if style else None)
    return text


class _Writer:
    def __init__(self, stream: TextIO, color: bool):
        self.stream = stream
        self.console = None
        if color:
            from rich.console import Console

            # The caller decided on colour: ignore NO_COLOR/TERM here (should_color reads them).
            self.console = Console(file=stream, force_terminal=True, color_system="standard", no_color=False,
                                   highlight=False, emoji=False, markup=False, soft_wrap=True,
                                   legacy_windows=False, width=10_000)

    def row(self, row: Row) -> None:
        self.rows([row])

    def rows(self, rows: list[Row]) -> None:
        if self.console is None:
            self.stream.write("".join(_plain(r) + "\n" for r in rows))
        elif rows:
            from rich.text import Text

            # One print per block: much faster than one per row.
            self.console.print(Text("\n", end="\n").join(_rich_text(r) for r in rows))

    def blank(self) -> None:
        self.stream.write("\n")


def _color(stream: TextIO, color: bool | None) -> bool:
    return should_color(stream) if color is None else color


def render_text(diags: Iterable[Diagnostic], sources: Mapping[str, str], stream: TextIO, *,
                color: bool | None = None, summary: bool = True) -> None:
    """Write every diagnostic in the full rustc-style form, each followed by a blank line, then the summary."""
    diags = sort_diagnostics(diags)
    out = _Writer(stream, _color(stream, color))
    for d in diags:
        out.rows(diagnostic_rows(d, sources))
        out.blank()
    if summary:
        out.row([(None, summary_line(diags))])


def concise_row(d: Diagnostic) -> Row:
    sev = _sev(d)
    msg = clean(d.message).replace("\n", " ")
    row: Row = []
    if d.span is not None:
        row.append((None, clean(_loc(d.span)) + ": "))
    row += [(sev, f"{sev}[{d.code}]"), (None, " " + msg)]
    return row


def render_concise(diags: Iterable[Diagnostic], sources: Mapping[str, str] | None, stream: TextIO, *,
                   color: bool | None = None, summary: bool = True) -> None:
    """One line per diagnostic, `file:line:col: error[FTP201] message`, then the summary."""
    diags = sort_diagnostics(diags)
    out = _Writer(stream, _color(stream, color))
    out.rows([concise_row(d) for d in diags])
    if summary:
        out.row([(None, summary_line(diags))])


def format_text(diags: Iterable[Diagnostic], sources: Mapping[str, str], *, color: bool = False,
                summary: bool = True) -> str:
    buf = io.StringIO()
    render_text(diags, sources, buf, color=color, summary=summary)
    return buf.getvalue()


def format_concise(diags: Iterable[Diagnostic], sources: Mapping[str, str] | None = None, *,
                   color: bool = False, summary: bool = True) -> str:
    buf = io.StringIO()
    render_concise(diags, sources, buf, color=color, summary=summary)
    return buf.getvalue()
