"""One internal diagnostic, rendered as text, json, github or sarif (see the submodules).

Errors are values until the CLI: the front end collects `Diagnostic`s and keeps going, so one
run of `lint` reports every problem in a file.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ftdsl.syntax.ast import Span

ERROR = "error"
WARNING = "warning"
INFO = "info"


@dataclass(frozen=True)
class Label:
    span: Span
    message: str = ""


@dataclass(frozen=True)
class Diagnostic:
    code: str
    severity: str
    message: str
    span: Span | None = None
    label: str = ""  # short text under the caret
    hint: str | None = None  # rendered as `= help: ...`
    notes: tuple[str, ...] = ()
    secondary: tuple[Label, ...] = field(default=())
    fingerprint: str = ""  # stable identity for SARIF partialFingerprints

    @property
    def name(self) -> str:
        from ftdsl.diagnostics.codes import CODES

        c = CODES.get(self.code)
        return c.name if c else "unknown"

    def sort_key(self):
        s = self.span
        return (s.file if s else "", s.line if s else 0, s.col if s else 0, self.code)


def make(code: str, message: str, span: Span | None = None, *, label: str = "", hint: str | None = None,
         notes: tuple[str, ...] | list[str] = (), secondary=(), severity: str | None = None,
         fingerprint: str = "") -> Diagnostic:
    """Build a diagnostic whose severity defaults to the one registered for `code`."""
    from ftdsl.diagnostics.codes import CODES

    sev = severity or CODES[code].severity
    return Diagnostic(code, sev, message, span, label, hint, tuple(notes), tuple(secondary), fingerprint)


def count(diags, severity: str) -> int:
    return sum(1 for d in diags if d.severity == severity)
