"""Diagnostics for the editor and the quick fixes of their "did you mean" hints.

A diagnostic whose hint is "did you mean `x`?" (an unknown attribute, argument, reference or enum
value) carries the replacement in the LSP diagnostic's `data`, so a code action can apply it
without re-running the front end: the diagnostic's range is replaced by the suggestion (quoted
when the range is a string literal).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from ftdsl.lsp.positions import LineIndex

_MEAN = re.compile(r"did you mean (`[^`]+`(?:\s*(?:,|or)\s*`[^`]+`)*)")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")
SEVERITY = {"error": 1, "warning": 2, "info": 3}


def suggestions(hint: str | None) -> list[str]:
    m = _MEAN.search(hint or "")
    return re.findall(r"`([^`]+)`", m.group(1)) if m else []


def fixes(hint: str | None, written: str) -> list[str]:
    """Replacements for the text `written` at the diagnostic's span (empty when not a plain word)."""
    out = []
    for s in suggestions(hint):
        if written.startswith('"') and written.endswith('"') and len(written) >= 2:
            out.append('"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"')
        elif _IDENT.fullmatch(written) and _IDENT.fullmatch(s):
            out.append(s)
    return out


def _same(file: str, path: Path) -> bool:
    return Path(os.path.abspath(file)) == path


def to_lsp(diags, path: Path, index: LineIndex, use_at=None) -> list[dict]:
    """The front end's diagnostics that belong to `path`, as LSP `Diagnostic` objects (JSON shape).

    One in a `use`d file is shown, with its `file:line:col`, on the `use` that brings the file in
    (`use_at(file path)` gives that line's (start, end) code-point offsets, or None), else on
    line 1, so an error in an included file is never silently missing."""
    out = []
    for d in diags:
        s = d.span
        written = ""
        if s is not None and _same(s.file, path):
            (l0, c0), (l1, c1) = index.span_range(s)
            written = index.text[index.offset(l0, c0):index.offset(l1, c1)] if l0 == l1 else ""
            message = d.message
        else:
            at = use_at(Path(os.path.abspath(s.file))) if s is not None and use_at is not None else None
            (l0, c0), (l1, c1) = (index.offset_position(at[0]), index.offset_position(at[1])) if at else ((0, 0), (0, 0))
            message = f"{s.file}:{s.line}:{s.col}: {d.message}" if s is not None else d.message
        if d.hint:
            message += f"\nhelp: {d.hint}"
        item = {"range": {"start": {"line": l0, "character": c0}, "end": {"line": l1, "character": c1}},
                "severity": SEVERITY.get(d.severity, 3), "code": d.code, "source": "ftdsl", "message": message}
        related = [lab for lab in d.secondary if lab.span is not None and _same(lab.span.file, path)]
        if related:
            item["relatedInformation"] = [
                {"location": {"uri": path.as_uri(), "range": _range(index, lab.span)}, "message": lab.message or "here"}
                for lab in related]
        fx = fixes(d.hint, written)
        if fx:
            item["data"] = {"fixes": fx}
        out.append(item)
    return out


def _range(index: LineIndex, span) -> dict:
    (l0, c0), (l1, c1) = index.span_range(span)
    return {"start": {"line": l0, "character": c0}, "end": {"line": l1, "character": c1}}


def code_actions(uri: str, diagnostics: list[dict]) -> list[dict]:
    """Quick fixes (LSP `CodeAction`s, JSON shape) for the diagnostics the client sends back."""
    out = []
    for d in diagnostics:
        data = d.get("data")
        fixes = data.get("fixes") if isinstance(data, dict) else None
        for fix in fixes or ():
            out.append({"title": f"Replace with {fix}", "kind": "quickfix", "isPreferred": len(fixes) == 1,
                        "diagnostics": [d], "edit": {"changes": {uri: [{"range": d["range"], "newText": fix}]}}})
    return out
