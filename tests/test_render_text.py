"""Human text and concise renderers (formats.md §2, §8)."""

from __future__ import annotations

import io
import re

import pytest

from ftdsl.diagnostics import INFO, Diagnostic, Label, make
from ftdsl.diagnostics.render import FORMATS, render, should_color, sort_diagnostics
from ftdsl.diagnostics.text import (clean, format_concise, format_text, render_concise, render_text,
                                    summary_line)
from ftdsl.syntax.ast import Span
from ftdsl.syntax.parser import parse

ANSI = re.compile(r"\x1b\[[0-9;]*m")

SPEC_SRC = ("ftp 1\n" + "#\n" * 17 + "train finetune {\n  model = base, data = reviews\n"
            "  epoch = 3, batch = 32\n}\n")


def spec_diag():
    return make("FTP201", "unknown attribute `epoch` in `train finetune`",
                Span("pipelines/sentiment.ftp", 21, 3, 21, 8), label="unknown attribute",
                hint="did you mean `epochs`?",
                notes=["valid attributes: accumulate, batch, clip, data, epochs, ..."])


def test_spec_example_exactly():
    out = format_text([spec_diag()], {"pipelines/sentiment.ftp": SPEC_SRC})
    assert out == (
        "error[FTP201]: unknown attribute `epoch` in `train finetune`\n"
        "  --> pipelines/sentiment.ftp:21:3\n"
        "   |\n"
        "20 |   model = base, data = reviews\n"
        "21 |   epoch = 3, batch = 32\n"
        "   |   ^^^^^ unknown attribute\n"
        "   |\n"
        "   = help: did you mean `epochs`?\n"
        "   = note: valid attributes: accumulate, batch, clip, data, epochs, ...\n"
        "\n"
        "Found 1 error.\n"
    )


def W(line=1, code="FTP221", sev=None):
    return make(code, "w", Span("a.ftp", line, 1, line, 2), severity=sev)


@pytest.mark.parametrize("diags, expected", [
    ([], "All checks passed."),
    ([W(code="FTP201")], "Found 1 error."),
    ([W(code="FTP201"), W(code="FTP201")], "Found 2 errors."),
    ([W()], "Found 1 warning."),
    ([W(), W()], "Found 2 warnings."),
    ([W(code="FTP201"), W()], "Found 1 error and 1 warning."),
    ([W(code="FTP201"), W(), W()], "Found 1 error and 2 warnings."),
    ([W(code="FTP201"), W(code="FTP201"), W()], "Found 2 errors and 1 warning."),
    ([W(code="FTP201"), W(), W(sev=INFO)], "Found 1 error, 1 warning and 1 info message."),
])
def test_summary(diags, expected):
    assert summary_line(diags) == expected
    assert format_text(diags, {}).splitlines()[-1] == expected


def test_empty_prints_only_all_checks_passed():
    assert format_text([], {}) == "All checks passed.\n"
    assert format_concise([], {}) == "All checks passed.\n"


def test_no_span_prints_header_and_help_only():
    d = make("FTP213", "the file defines no stages", None, hint="add a stage", notes=["n1"])
    assert format_text([d], {}, summary=False) == (
        "warning[FTP213]: the file defines no stages\n  = help: add a stage\n  = note: n1\n\n")


def test_unknown_source_prints_location_without_snippet():
    d = make("FTP001", "cannot read `x.ftp`", Span("x.ftp", 1, 1, 1, 1), hint="check the path")
    assert format_text([d], {}, summary=False) == (
        "error[FTP001]: cannot read `x.ftp`\n --> x.ftp:1:1\n  = help: check the path\n\n")


def test_line_out_of_range_does_not_crash():
    d = make("FTP201", "m", Span("a.ftp", 50, 1, 50, 2))
    out = format_text([d], {"a.ftp": "one line\n"})
    assert "a.ftp:50:1" in out and "^" not in out


def _caret_cells(out: str, lineno: int) -> tuple[str, str]:
    lines = out.splitlines()
    i = next(k for k, ln in enumerate(lines) if re.match(rf"\s*{lineno} \|", ln))
    return lines[i], lines[i + 1]


def test_tabs_expanded_and_caret_aligned():
    src = "train t {\n\tmodel = base\n\t\tepochs = 3;\n}\n"
    _, diags = parse(src, "t.ftp")
    out = format_text(diags, {"t.ftp": src})
    code, marks = _caret_cells(out, 3)
    assert "\t" not in out
    assert code.index(";") == marks.index("^")
    assert code == "3 |         epochs = 3;"


def test_emoji_before_error_is_two_cells_wide():
    from rich.cells import cell_len

    src = "model m {\n  name = \"\U0001F600\U0001F600\" @\n}\n"
    _, diags = parse(src, "e.ftp")
    (d,) = diags
    assert (d.span.line, d.span.col) == (2, 15)  # code points
    code, marks = _caret_cells(format_text(diags, {"e.ftp": src}), 2)
    assert cell_len(code[:code.index("@")]) == marks.index("^")


def test_crlf_source_has_no_carriage_returns():
    src = "data d {\r\n  x = 1\r\n  y = @\r\n}\r\n"
    _, diags = parse(src, "c.ftp")
    out = format_text(diags, {"c.ftp": src})
    assert "\r" not in out
    code, marks = _caret_cells(out, 3)
    assert code == "3 |   y = @" and code.index("@") == marks.index("^")


def test_caret_length_is_span_length_and_at_least_one():
    src = "abc defgh\n"
    long = make("FTP201", "m", Span("a.ftp", 1, 5, 1, 10, 4, 9))
    empty = make("FTP201", "m", Span("a.ftp", 1, 4, 1, 4, 3, 3))
    assert _caret_cells(format_text([long], {"a.ftp": src}), 1)[1].endswith("|     ^^^^^")
    assert _caret_cells(format_text([empty], {"a.ftp": src}), 1)[1].endswith("|    ^")


def test_multiline_span_carets_to_end_of_first_line():
    src = "prune a {\n  from = b\n}\n"
    d = make("FTP205", "cycle", Span("a.ftp", 1, 7, 3, 2, 6, 22), label="here")
    code, marks = _caret_cells(format_text([d], {"a.ftp": src}), 1)
    assert marks == "  |       ^^^ here"


def test_eof_span_past_end_of_line():
    src = "train t {\n  epochs = 3\n"
    _, diags = parse(src, "e.ftp")
    code, marks = _caret_cells(format_text(diags, {"e.ftp": src}), 2)
    assert marks.index("^") == len(code) and marks.count("^") == 1


def test_secondary_labels_same_file_and_other_file():
    src = "model base {\n}\ntrain t {\n  model = bsae\n}\n"
    other = "x\nmodel base {}\n"
    d = make("FTP204", "`bsae` is not defined", Span("a.ftp", 4, 11, 4, 15), label="here",
             secondary=[Label(Span("a.ftp", 1, 7, 1, 11), "similar"), Label(Span("b.ftp", 2, 7, 2, 11), "also")])
    out = format_text([d], {"a.ftp": src, "b.ftp": other}, summary=False)
    assert out == (
        "error[FTP204]: `bsae` is not defined\n"
        " --> a.ftp:4:11\n"
        "  |\n"
        "1 | model base {\n"
        "  |       ---- similar\n"
        "...\n"
        "3 | train t {\n"
        "4 |   model = bsae\n"
        "  |           ^^^^ here\n"
        " ::: b.ftp:2:7\n"
        "  |\n"
        "2 | model base {}\n"
        "  |       ---- also\n"
        "\n")


def test_secondary_in_unknown_file_becomes_a_note():
    d = make("FTP204", "m", Span("a.ftp", 1, 1, 1, 2), secondary=[Label(Span("zz.ftp", 3, 4, 3, 5), "there")])
    out = format_text([d], {"a.ftp": "x\n"}, summary=False)
    assert " ::: zz.ftp:3:4\n" in out and "= note: zz.ftp:3:4: there" in out


def test_sorted_by_file_line_col_code():
    a = make("FTP202", "a", Span("b.ftp", 1, 1, 1, 2))
    b = make("FTP201", "b", Span("b.ftp", 1, 1, 1, 2))
    c = make("FTP201", "c", Span("a.ftp", 9, 1, 9, 2))
    d = make("FTP201", "d", Span("b.ftp", 1, 0, 1, 2))
    assert [x.message for x in sort_diagnostics([a, b, c, d])] == ["c", "d", "b", "a"]
    out = format_concise([a, b, c, d])
    assert out.splitlines()[:4] == ["a.ftp:9:1: error[FTP201] c", "b.ftp:1:0: error[FTP201] d",
                                    "b.ftp:1:1: error[FTP201] b", "b.ftp:1:1: error[FTP202] a"]


def test_concise_format():
    d = spec_diag()
    n = make("FTP213", "no stages", None)
    assert format_concise([d, n], {}) == (
        "warning[FTP213] no stages\n"
        "pipelines/sentiment.ftp:21:3: error[FTP201] unknown attribute `epoch` in `train finetune`\n"
        "Found 1 error and 1 warning.\n")


def test_color_markup_in_user_text_is_not_eaten():
    d = make("FTP221", "msg [bold]x[/] and \\[red] and :smile: and \\", Span("a.ftp", 1, 1, 1, 4),
             label="lab [/] [blue] \\\\", hint="h [i]i[/i] \\")
    src = "abc [x] = 1\n"
    buf = io.StringIO()
    render_text([d], {"a.ftp": src}, buf, color=True)
    colored = buf.getvalue()
    assert ANSI.search(colored), "expected colour codes"
    assert ANSI.sub("", colored) == format_text([d], {"a.ftp": src})
    assert "msg [bold]x[/] and \\[red] and :smile: and \\\n" in format_text([d], {"a.ftp": src})
    assert "lab [/] [blue] \\\\\n" in format_text([d], {"a.ftp": src})
    buf = io.StringIO()
    render_concise([d], {}, buf, color=True)
    assert ANSI.sub("", buf.getvalue()) == format_concise([d])


def test_colors_by_severity():
    buf = io.StringIO()
    render_text([spec_diag(), make("FTP221", "w", None)], {"pipelines/sentiment.ftp": SPEC_SRC}, buf, color=True)
    out = buf.getvalue()
    assert "\x1b[1;31merror[FTP201]" in out  # red bold
    assert "\x1b[1;33mwarning[FTP221]" in out  # yellow
    assert "\x1b[1;34m21 |" in out  # blue line numbers


class _Stream(io.StringIO):
    def __init__(self, tty):
        super().__init__()
        self._tty = tty

    def isatty(self):
        return self._tty


@pytest.mark.parametrize("env, tty, expected", [
    ({}, True, True),
    ({}, False, False),
    ({"NO_COLOR": "1"}, True, False),
    ({"NO_COLOR": "1", "FORCE_COLOR": "1"}, True, False),
    ({"NO_COLOR": ""}, True, True),
    ({"TERM": "dumb"}, True, False),
    ({"FORCE_COLOR": "1"}, False, True),
    ({"TTY_COMPATIBLE": "1"}, False, True),
])
def test_should_color(env, tty, expected):
    assert should_color(_Stream(tty), env) is expected


def test_auto_color_follows_environment(monkeypatch):
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    monkeypatch.delenv("TTY_COMPATIBLE", raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")
    monkeypatch.setenv("NO_COLOR", "1")
    s = _Stream(True)
    render_text([spec_diag()], {}, s)
    assert not ANSI.search(s.getvalue())
    monkeypatch.delenv("NO_COLOR")
    s = _Stream(True)
    render_text([spec_diag()], {}, s)
    assert ANSI.search(s.getvalue())
    s = _Stream(False)
    render_text([spec_diag()], {}, s)
    assert not ANSI.search(s.getvalue())


def test_control_characters_never_reach_the_terminal():
    src = "x = \x1b[31mred\x1b[0m \u202eevil @\n"
    d = make("FTP102", "bad \x1b[2J char", Span("a.ftp", 1, 21, 1, 22), hint="\x07bell")
    for color in (False, True):
        buf = io.StringIO()
        render_text([d], {"a.ftp": src}, buf, color=color)
        out = ANSI.sub("", buf.getvalue()) if color else buf.getvalue()
        assert "\x1b" not in out and "\u202e" not in out and "\x07" not in out
    assert clean("a\tb\nc\x00") == "a\tb\nc\u2400"


def test_diagnostic_without_known_severity_renders_as_error():
    d = Diagnostic("FTP999", "fatal", "m")
    assert format_text([d], {}).startswith("error[FTP999]: m\n")


def test_render_dispatcher():
    assert set(FORMATS) >= {"text", "concise", "json", "github", "sarif"}
    for fmt in FORMATS:
        buf = io.StringIO()
        render(fmt, [spec_diag()], {"pipelines/sentiment.ftp": SPEC_SRC}, buf, color=False)
        assert "FTP201" in buf.getvalue()
    buf = io.StringIO()
    render("text", [spec_diag()], {"pipelines/sentiment.ftp": SPEC_SRC}, buf, color=False)
    assert buf.getvalue() == format_text([spec_diag()], {"pipelines/sentiment.ftp": SPEC_SRC})
    with pytest.raises(ValueError, match="unknown output format"):
        render("xml", [], {}, io.StringIO())
