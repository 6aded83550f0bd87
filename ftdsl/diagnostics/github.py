"""GitHub Actions workflow commands (formats.md §3), for stdout.

```
::error file=pipelines/a.ftp,line=3,endLine=3,col=5,endColumn=9,title=ftdsl FTP201 (unknown-attribute)::message; hint
```

- Escaping follows `@actions/core`, `%` first: data `%`->`%25`, `\\r`->`%0D`, `\\n`->`%0A`;
  property values also `:`->`%3A`, `,`->`%2C`.
- `endColumn` is exclusive (as ruff writes it); a span spanning lines gets no `col`/`endColumn`.
- GitHub shows at most 10 annotations per level per step: the first `LIMIT` of each level are
  printed (in sorted order), then one `::notice::` line per level saying how many were left out.
- Severities: error -> `::error`, warning -> `::warning`, info -> `::notice`.

Public: `annotation(diag) -> str`, `github_lines(diags, ...) -> list[str]`,
`render_github(diags, sources, stream)`, `escape_data`, `escape_property`.
"""

from __future__ import annotations

from typing import Iterable, Mapping, TextIO

from ftdsl.diagnostics import Diagnostic
from ftdsl.diagnostics.render import plural, sort_diagnostics

LIMIT = 10
MORE_HINT = "run ftdsl lint --format sarif for all"

_COMMAND = {"error": "error", "warning": "warning", "info": "notice"}
_NOUN = {"error": ("error", "errors"), "warning": ("warning", "warnings"), "notice": ("notice", "notices")}


def escape_data(s: str) -> str:
    return s.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def escape_property(s: str) -> str:
    return escape_data(s).replace(":", "%3A").replace(",", "%2C")


def _command(d: Diagnostic) -> str:
    return _COMMAND.get(d.severity, "error")


def annotation(d: Diagnostic) -> str:
    """One `::error ...::message` line for `d` (no trailing newline)."""
    props: list[tuple[str, str]] = []
    sp = d.span
    if sp is not None:
        props += [("file", sp.file), ("line", str(sp.line)), ("endLine", str(max(sp.end_line, sp.line)))]
        if sp.end_line == sp.line:
            props += [("col", str(sp.col)), ("endColumn", str(max(sp.end_col, sp.col + 1)))]
    props.append(("title", f"ftdsl {d.code} ({d.name})"))
    message = d.message + (f"; {d.hint}" if d.hint else "")
    joined = ",".join(f"{k}={escape_property(v)}" for k, v in props)
    return f"::{_command(d)} {joined}::{escape_data(message)}"


def github_lines(diags: Iterable[Diagnostic], *, limit: int = LIMIT, more_hint: str = MORE_HINT) -> list[str]:
    out: list[str] = []
    shown: dict[str, int] = {}
    hidden: dict[str, int] = {}
    for d in sort_diagnostics(diags):
        level = _command(d)
        if shown.get(level, 0) < limit:
            shown[level] = shown.get(level, 0) + 1
            out.append(annotation(d))
        else:
            hidden[level] = hidden.get(level, 0) + 1
    for level in ("error", "warning", "notice"):
        n = hidden.get(level, 0)
        if n:
            one, many = _NOUN[level]
            out.append(f"::notice::{escape_data(plural(n, 'more ' + one, 'more ' + many))} not shown; "
                       f"{escape_data(more_hint)}")
    return out


def render_github(diags: Iterable[Diagnostic], sources: Mapping[str, str] | None, stream: TextIO, *,
                  limit: int = LIMIT, more_hint: str = MORE_HINT) -> None:
    for line in github_lines(diags, limit=limit, more_hint=more_hint):
        stream.write(line + "\n")
