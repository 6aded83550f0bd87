"""JSON renderer (formats.md §1, terraform validate -json style)."""

from __future__ import annotations

import io
import json

from ftdsl.diagnostics import INFO, Diagnostic, make
from ftdsl.diagnostics.jsonfmt import json_document, render_json
from ftdsl.diagnostics.render import byte_offsets, render
from ftdsl.syntax.ast import Span
from ftdsl.syntax.parser import parse


def _doc(diags, sources=None):
    buf = io.StringIO()
    render_json(diags, sources, buf)
    return json.loads(buf.getvalue())


def test_structure():
    src = "train t {\n  epoch = 3\n}\n"
    d = make("FTP201", "unknown attribute `epoch`", Span("p.ftp", 2, 3, 2, 8, 12, 17), hint="did you mean `epochs`?",
             notes=["n"])
    doc = _doc([d], {"p.ftp": src})
    assert doc == {
        "format_version": "1.0", "valid": False, "error_count": 1, "warning_count": 0,
        "diagnostics": [{
            "severity": "error", "code": "FTP201", "name": "unknown-attribute",
            "summary": "unknown attribute `epoch`", "detail": "did you mean `epochs`?", "notes": ["n"],
            "range": {"filename": "p.ftp", "start": {"line": 2, "column": 3, "byte": 12},
                      "end": {"line": 2, "column": 8, "byte": 17}}}]}


def test_empty_is_valid():
    assert _doc([]) == {"format_version": "1.0", "valid": True, "error_count": 0, "warning_count": 0,
                        "diagnostics": []}


def test_no_span_and_unknown_source():
    d1 = make("FTP213", "no stages", None)
    d2 = make("FTP001", "cannot read `gone.ftp`", Span("gone.ftp", 1, 1, 1, 1))
    doc = _doc([d1, d2], {})
    assert doc["valid"] is False and doc["error_count"] == 1 and doc["warning_count"] == 1
    assert doc["diagnostics"][0]["range"] is None and doc["diagnostics"][0]["detail"] is None
    r = doc["diagnostics"][1]["range"]
    assert r["start"] == {"line": 1, "column": 1, "byte": None}


def test_warnings_only_is_valid():
    doc = json_document([make("FTP221", "w", None), Diagnostic("FTP090", INFO, "i")])
    assert doc["valid"] is True and doc["warning_count"] == 1 and doc["error_count"] == 0


def test_byte_offsets_after_emoji_and_crlf():
    src = "model m {\r\n  name = \"\U0001F600\u00e9\" @\r\n}\r\n"
    _, (d,) = parse(src, "e.ftp")
    r = _doc([d], {"e.ftp": src})["diagnostics"][0]["range"]
    i = src.index("@")
    assert r["start"]["byte"] == len(src[:i].encode("utf-8")) == i + 3 + 1
    assert r["end"]["byte"] == r["start"]["byte"] + 1
    assert src.encode("utf-8")[r["start"]["byte"]:r["end"]["byte"]] == b"@"
    assert (r["start"]["line"], r["start"]["column"]) == (2, 15)


def test_byte_offsets_from_line_col_when_offsets_unset():
    src = "ab\n\u00e9\u00e9xy\n"
    sp = Span("a.ftp", 2, 3, 2, 5)  # start/end left at 0
    assert byte_offsets(sp, {"a.ftp": src}) == (3 + 4, 3 + 4 + 2)


def test_sorted_and_valid_json_with_odd_text():
    ds = [make("FTP202", "b \"quoted\" \\ \n newline", Span("b.ftp", 1, 1, 1, 2)),
          make("FTP201", "a \U0001F600", Span("a.ftp", 1, 1, 1, 2))]
    buf = io.StringIO()
    render("json", ds, {}, buf)
    doc = json.loads(buf.getvalue())
    assert [d["code"] for d in doc["diagnostics"]] == ["FTP201", "FTP202"]
    assert doc["diagnostics"][1]["summary"] == "b \"quoted\" \\ \n newline"
