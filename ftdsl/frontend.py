"""The front end in one call: read, parse, resolve, check. Never imports torch.

`compile_pipeline(path, overrides)` returns a `Compiled` with the program (None when it could not
be built), every diagnostic sorted by location, the sources read (for snippets) and the graph.
"""

from __future__ import annotations

import gc
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from ftdsl.check import check
from ftdsl.check.context import CheckContext
from ftdsl.diagnostics import Diagnostic
from ftdsl.ir.nodes import Program
from ftdsl.ir.resolve import resolve


@dataclass
class Compiled:
    program: Program | None
    diagnostics: list[Diagnostic]
    sources: dict[str, str] = field(default_factory=dict)
    graph: CheckContext | None = None

    @property
    def errors(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.severity == "error"]

    @property
    def ok(self) -> bool:
        return self.program is not None and not self.errors


def compile_pipeline(path: str | Path, overrides=(), text: str | None = None) -> Compiled:
    with no_gc():
        return _compile(path, overrides, text)


@contextmanager
def no_gc():
    """Pause the cyclic garbage collector: the front end allocates hundreds of thousands of small
    acyclic objects, and on a 10,000-line file the collector's repeated full scans cost more than
    the parsing itself. Reference counting still frees everything."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _compile(path, overrides, text) -> Compiled:
    r = resolve(path, overrides, text=text)
    diags = list(r.diagnostics)
    ctx = None
    # Syntax recovery keeps the items that parsed, so they are checked like any others. The broken
    # items are missing from the program: rules that judge the whole pipeline by what is absent
    # (no stages, unused blocks and params) would only blame the syntax error on good code.
    syntax_error = any(d.severity == "error" and d.code[3] in "01" for d in diags)
    if r.program is not None:
        more, ctx = check(r.program)
        if syntax_error:
            more = [d for d in more if d.code not in _PILE_ON]
        diags.extend(more)
    diags = _dedupe(diags)
    # A misspelled reference makes its intended target look unused: when an FTP204 already
    # suggests a name, don't also warn that the name is unused.
    suggested = {m for d in diags if d.code == "FTP204" and d.hint for m in re.findall(r"`([^`]+)`", d.hint)}
    if suggested:
        diags = [d for d in diags if not (d.code in ("FTP220", "FTP221") and
                                          set(re.findall(r"`([^`]+)`", d.message)) & suggested)]
    from ftdsl.check.suppress import apply as apply_suppressions

    diags = apply_suppressions(diags, r.sources)
    diags.sort(key=lambda d: d.sort_key())
    return Compiled(r.program, diags, r.sources, ctx)


_PILE_ON = frozenset({"FTP213", "FTP220", "FTP221"})


def _dedupe(diags):
    seen, out = set(), []
    for d in diags:
        k = (d.code, d.message, d.span)
        if k not in seen:
            seen.add(k)
            out.append(d)
    return out
