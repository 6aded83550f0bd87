"""GitHub Actions annotations (formats.md §3)."""

from __future__ import annotations

import io

from ftdsl.diagnostics import INFO, Diagnostic, make
from ftdsl.diagnostics.github import annotation, escape_data, escape_property, github_lines, render_github
from ftdsl.syntax.ast import Span


def test_escaping_functions():
    assert escape_data("100% a\r\nb: c, d") == "100%25 a%0D%0Ab: c, d"
    assert escape_property("100% a\r\nb: c, d") == "100%25 a%0D%0Ab%3A c%2C d"
    assert escape_data("%0A") == "%250A"  # `%` first: no double decoding


def test_annotation_exact():
    d = make("FTP201", "unknown attribute `epoch` in `train finetune`", Span("pipelines/sentiment.ftp", 21, 3, 21, 8),
             hint="did you mean `epochs`?")
    assert annotation(d) == (
        "::error file=pipelines/sentiment.ftp,line=21,endLine=21,col=3,endColumn=8,"
        "title=ftdsl FTP201 (unknown-attribute)::unknown attribute `epoch` in `train finetune`; "
        "did you mean `epochs`?")


def test_annotation_escapes_properties_and_message():
    d = make("FTP101", "expected `}`\nfound EOF 100%", Span("pipelines/a,b:c.ftp", 3, 5, 3, 9))
    assert annotation(d) == (
        "::error file=pipelines/a%2Cb%3Ac.ftp,line=3,endLine=3,col=5,endColumn=9,"
        "title=ftdsl FTP101 (unexpected-token)::expected `}`%0Afound EOF 100%25")
    d = make("FTP201", "a, b: c", Span("x.ftp", 1, 1, 1, 2), hint="x\r\ny")
    assert annotation(d).endswith("::a, b: c; x%0D%0Ay")


def test_no_columns_on_multiline_span():
    d = make("FTP205", "cycle", Span("a.ftp", 3, 5, 6, 2))
    line = annotation(d)
    assert "line=3,endLine=6," in line and "col=" not in line and "endColumn=" not in line


def test_levels_and_no_span():
    w = make("FTP221", "w", Span("a.ftp", 1, 1, 1, 2))
    i = Diagnostic("FTP090", INFO, "i", Span("a.ftp", 2, 1, 2, 2))
    n = make("FTP213", "no stages", None)
    assert annotation(w).startswith("::warning file=a.ftp,")
    assert annotation(i).startswith("::notice file=a.ftp,")
    assert annotation(n) == "::warning title=ftdsl FTP213 (no-stages)::no stages"


def test_zero_width_span_gets_one_column():
    d = make("FTP001", "gone", Span("a.ftp", 1, 1, 1, 1))
    assert ",col=1,endColumn=2," in annotation(d)


def test_ten_per_level_then_a_notice():
    errs = [make("FTP201", f"e{i}", Span("a.ftp", i + 1, 1, i + 1, 2)) for i in range(13)]
    warns = [make("FTP221", f"w{i}", Span("b.ftp", i + 1, 1, i + 1, 2)) for i in range(11)]
    lines = github_lines(list(reversed(errs + warns)))
    assert sum(ln.startswith("::error ") for ln in lines) == 10
    assert sum(ln.startswith("::warning ") for ln in lines) == 10
    # the first ten of each level, in sorted order
    assert [ln.rsplit("::", 1)[1] for ln in lines if ln.startswith("::error ")] == [f"e{i}" for i in range(10)]
    assert lines[-2:] == [
        "::notice::3 more errors not shown; run ftdsl lint --format sarif for all",
        "::notice::1 more warning not shown; run ftdsl lint --format sarif for all",
    ]


def test_exactly_ten_has_no_notice():
    errs = [make("FTP201", f"e{i}", Span("a.ftp", i + 1, 1, i + 1, 2)) for i in range(10)]
    lines = github_lines(errs)
    assert len(lines) == 10 and not any(ln.startswith("::notice") for ln in lines)


def test_render_writes_lines():
    buf = io.StringIO()
    render_github([make("FTP213", "x", None)], {}, buf)
    assert buf.getvalue() == "::warning title=ftdsl FTP213 (no-stages)::x\n"
    buf = io.StringIO()
    render_github([], {}, buf)
    assert buf.getvalue() == ""
