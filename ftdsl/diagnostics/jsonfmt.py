"""Diagnostics as JSON, versioned like `terraform validate -json` (formats.md §1), for stdout.

```json
{"format_version": "1.0", "valid": false, "error_count": 1, "warning_count": 0,
 "diagnostics": [{"severity": "error", "code": "FTP201", "name": "unknown-attribute",
   "summary": "unknown attribute `epoch` in `train finetune`", "detail": "did you mean `epochs`?",
   "notes": [],
   "range": {"filename": "pipelines/sentiment.ftp",
             "start": {"line": 21, "column": 3, "byte": 412},
             "end": {"line": 21, "column": 8, "byte": 417}}}]}
```

`summary` is the message, `detail` the hint (or null), `notes` the extra notes. Lines and
columns are 1-based (columns in code points, `end` exclusive); `byte` is the 0-based UTF-8
byte offset in the file, or null when the file's text is unknown. `range` is null for a
diagnostic without a location. The output is always one valid JSON document.

Public: `json_document(diags, sources) -> dict`, `render_json(diags, sources, stream)`.
"""

from __future__ import annotations

import json
from typing import Iterable, Mapping, TextIO

from ftdsl.diagnostics import Diagnostic
from ftdsl.diagnostics.render import byte_offsets, counts, sort_diagnostics
from ftdsl.syntax.ast import Span

FORMAT_VERSION = "1.0"


def _range(span: Span | None, sources: Mapping[str, str]) -> dict | None:
    if span is None:
        return None
    b0, b1 = byte_offsets(span, sources)
    return {
        "filename": span.file,
        "start": {"line": span.line, "column": span.col, "byte": b0},
        "end": {"line": span.end_line, "column": span.end_col, "byte": b1},
    }


def diagnostic_dict(d: Diagnostic, sources: Mapping[str, str]) -> dict:
    return {
        "severity": d.severity,
        "code": d.code,
        "name": d.name,
        "summary": d.message,
        "detail": d.hint or None,
        "notes": list(d.notes),
        "range": _range(d.span, sources),
    }


def json_document(diags: Iterable[Diagnostic], sources: Mapping[str, str] | None = None) -> dict:
    sources = sources or {}
    diags = sort_diagnostics(diags)
    errors, warnings, _ = counts(diags)
    return {
        "format_version": FORMAT_VERSION,
        "valid": errors == 0,
        "error_count": errors,
        "warning_count": warnings,
        "diagnostics": [diagnostic_dict(d, sources) for d in diags],
    }


def render_json(diags: Iterable[Diagnostic], sources: Mapping[str, str] | None, stream: TextIO) -> None:
    stream.write(json.dumps(json_document(diags, sources), indent=2, ensure_ascii=False) + "\n")
