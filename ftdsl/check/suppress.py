"""`# ftdsl: ignore[FTP220]` (this line or the next) and `# ftdsl: ignore-file[FTP221]` comments.

Codes or names are accepted (`ignore[unused-block]`); `-- reason` may follow. A suppression that
silences nothing is FTP090.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ftdsl.diagnostics import Diagnostic, make
from ftdsl.diagnostics.codes import CODES, NAMES
from ftdsl.syntax.ast import Span

_RE = re.compile(r"#\s*ftdsl:\s*(ignore|ignore-file)\[([^\]]*)\]")


@dataclass
class _Sup:
    file: str
    line: int  # the comment's line
    col: int
    end_col: int
    whole_file: bool
    codes: tuple[str, ...]
    own_line: bool  # the comment is alone on its line: it applies to the next line
    used: bool = False
    errors: list = field(default_factory=list)  # errors it tried to silence (errors cannot be)


def _scan(file: str, text: str) -> list[_Sup]:
    from ftdsl.syntax.parser import _find_comments

    out = []
    line, last = 1, 0
    for start, end in _find_comments(text):
        m = _RE.search(text, start, end)
        if not m:
            continue
        line += text.count("\n", last, start)  # comments come in order: count lines incrementally
        last = start
        line_start = text.rfind("\n", 0, start) + 1
        codes = tuple(NAMES.get(c.strip(), c.strip()) for c in m.group(2).split(",") if c.strip())
        out.append(_Sup(file, line, start - line_start + 1, end - line_start + 1, m.group(1) == "ignore-file", codes,
                        text[line_start:start].strip() == ""))
    return out


def apply(diags: list[Diagnostic], sources: dict[str, str]) -> list[Diagnostic]:
    sups: list[_Sup] = []
    for f, text in sources.items():
        if "ftdsl:" in text:
            sups.extend(_scan(f, text))
    if not sups:
        return diags
    # Index the comments by the lines they cover, so each diagnostic looks at a few candidates
    # (20,000 suppressed lines used to cost 20,000 x 20,000 comparisons).
    covers: dict[tuple[str, int], list[int]] = {}
    whole: dict[str, list[int]] = {}
    for i, s in enumerate(sups):
        if s.whole_file:
            whole.setdefault(s.file, []).append(i)
            continue
        covers.setdefault((s.file, s.line), []).append(i)
        if s.own_line:
            covers.setdefault((s.file, s.line + 1), []).append(i)
    kept: list[Diagnostic] = []
    for d in diags:
        hit = None
        if d.span is not None:
            cands = covers.get((d.span.file, d.span.line), []) + whole.get(d.span.file, [])
            for i in sorted(cands):  # the first matching comment in file order, as before
                if d.code in sups[i].codes:
                    hit = sups[i]
                    break
        if hit is not None and d.severity != "error":
            hit.used = True
            continue
        if hit is not None:
            hit.errors.append(d.code)
        kept.append(d)
    for s in sups:
        span = Span(s.file, s.line, s.col, s.line, s.end_col)
        unknown = [c for c in s.codes if c not in CODES]
        for c in unknown:
            kept.append(make("FTP090", f"unknown code `{c}` in a suppression comment", span, label="unknown code"))
        if s.errors and not s.used:
            kept.append(make("FTP090", f"{', '.join(sorted(set(s.errors)))} is an error and cannot be suppressed",
                             span, label="errors cannot be suppressed", hint="fix the error instead"))
        elif not s.used and not unknown:
            kept.append(make("FTP090", f"suppression of {', '.join(s.codes) or 'nothing'} matches no diagnostic", span,
                             label="unused suppression", hint="remove the comment"))
    return kept
