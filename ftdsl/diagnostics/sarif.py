"""SARIF 2.1.0 for GitHub code scanning and other tools (formats.md §4), for stdout.

One run; `tool.driver.rules` holds one reportingDescriptor per code used (sorted by code), and
each result points at its rule by `ruleId` and `ruleIndex`. Columns are Unicode code points
(`run.columnKind = "unicodeCodePoints"`), 1-based, `endColumn` exclusive. Artifact URIs are
the repo-relative POSIX paths of the spans (percent-encoded where a URI needs it) relative to
`%SRCROOT%`. Secondary labels become `relatedLocations`. A diagnostic without a span has no
`locations`.

`partialFingerprints["ftdslRuleLine/v1"]` is `<code>:<file>:<key>` where `key` is the
diagnostic's `fingerprint` if set, otherwise a hash of the (whitespace-trimmed) source line, so
an alert survives lines moving; a repeat of the same value in one log gets `:2`, `:3`...

Public: `sarif_log(diags, sources, *, tool_version=None) -> dict`, `render_sarif(diags, sources, stream)`.
"""

from __future__ import annotations

import hashlib
import json
from typing import Iterable, Mapping, TextIO
from urllib.parse import quote

from ftdsl.diagnostics import Diagnostic, Label
from ftdsl.diagnostics.render import line_text, sort_diagnostics
from ftdsl.syntax.ast import Span

SCHEMA_URI = "https://json.schemastore.org/sarif-2.1.0.json"
INFORMATION_URI = "https://ftdsl.dev"
HELP_URI = "https://ftdsl.dev/diagnostics#{anchor}"
FINGERPRINT_KEY = "ftdslRuleLine/v1"
SRCROOT = "%SRCROOT%"

_LEVEL = {"error": "error", "warning": "warning", "info": "note"}


def level(severity: str) -> str:
    return _LEVEL.get(severity, "warning")


def _rule(code: str) -> dict:
    from ftdsl.diagnostics.codes import CODES

    c = CODES.get(code)
    rule: dict = {"id": code}
    if c is None:
        rule["name"] = "unknown"
        rule["helpUri"] = HELP_URI.format(anchor=code.lower())
        return rule
    rule["name"] = c.name
    rule["shortDescription"] = {"text": c.summary}
    rule["fullDescription"] = {"text": c.why or c.summary}
    rule["defaultConfiguration"] = {"level": level(c.severity)}
    rule["helpUri"] = HELP_URI.format(anchor=code.lower())
    parts = [p for p in (c.why,
                         f"Example:\n{c.example}" if c.example else "",
                         f"Instead:\n{c.instead}" if c.instead else "") if p]
    if parts:
        rule["help"] = {"text": "\n\n".join(parts)}
    return rule


def _uri(path: str) -> str:
    return quote(path.replace("\\", "/"), safe="/")


def _location(span: Span, message: str = "") -> dict:
    region = {"startLine": span.line, "startColumn": span.col,
              "endLine": max(span.end_line, span.line),
              "endColumn": span.end_col if (span.end_line, span.end_col) >= (span.line, span.col) else span.col}
    loc: dict = {"physicalLocation": {"artifactLocation": {"uri": _uri(span.file), "uriBaseId": SRCROOT},
                                      "region": region}}
    if message:
        loc["message"] = {"text": message}
    return loc


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def fingerprint(d: Diagnostic, sources: Mapping[str, str]) -> str:
    """`<code>:<file>:<fingerprint or hash of the trimmed source line (or of the message)>`."""
    file = d.span.file if d.span else ""
    key = d.fingerprint
    if not key:
        text = line_text(sources, d.span.file, d.span.line) if d.span else None
        key = _short_hash(" ".join(text.split())) if text is not None else _short_hash(d.message)
    return f"{d.code}:{file}:{key}"


def _result(d: Diagnostic, rule_index: int, sources: Mapping[str, str]) -> dict:
    message = d.message + (f"; {d.hint}" if d.hint else "")
    res: dict = {"ruleId": d.code, "ruleIndex": rule_index, "level": level(d.severity),
                 "message": {"text": message}}
    if d.span is not None:
        res["locations"] = [_location(d.span)]
        related = [_related(i, lab) for i, lab in enumerate(d.secondary)]
        if related:
            res["relatedLocations"] = related
    return res


def _related(i: int, lab: Label) -> dict:
    loc = _location(lab.span, lab.message)
    loc["id"] = i
    return loc


def sarif_log(diags: Iterable[Diagnostic], sources: Mapping[str, str] | None = None, *,
              tool_version: str | None = None) -> dict:
    """The SARIF log as plain dicts (validates against the OASIS 2.1.0 schema)."""
    if tool_version is None:
        from ftdsl import __version__ as tool_version
    sources = sources or {}
    diags = sort_diagnostics(diags)
    codes = sorted({d.code for d in diags})
    index = {c: i for i, c in enumerate(codes)}
    results = []
    seen: dict[str, int] = {}
    for d in diags:
        res = _result(d, index[d.code], sources)
        fp = fingerprint(d, sources)
        seen[fp] = seen.get(fp, 0) + 1
        if seen[fp] > 1:
            fp = f"{fp}:{seen[fp]}"
        res["partialFingerprints"] = {FINGERPRINT_KEY: fp}
        results.append(res)
    driver = {"name": "ftdsl", "version": tool_version, "informationUri": INFORMATION_URI,
              "rules": [_rule(c) for c in codes]}
    return {
        "$schema": SCHEMA_URI,
        "version": "2.1.0",
        "runs": [{"tool": {"driver": driver}, "columnKind": "unicodeCodePoints", "results": results}],
    }


def render_sarif(diags: Iterable[Diagnostic], sources: Mapping[str, str] | None, stream: TextIO, *,
                 tool_version: str | None = None) -> None:
    stream.write(json.dumps(sarif_log(diags, sources, tool_version=tool_version), indent=2,
                            ensure_ascii=False) + "\n")
