"""Bad input to `lint`, `plan` and `fmt` (reliability.md §8 A, B1-B8, B12, B17; SPEC §2, §7).

Whatever bytes a user hands to the front end, the answer is diagnostics and exit 1, or success:
never a Python traceback. Most cases run `ftdsl.cli.main` in-process (fast); a representative
subset runs the real `ftdsl` command in a subprocess, where a traceback would really show.
Semantic checks (B9-B11, B13-B16) live in test_checker.py.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ftdsl.cli import main
from ftdsl.frontend import compile_pipeline
from ftdsl.syntax.parser import MAX_BYTES, decode, parse

from spec_example import SPEC_EXAMPLE  # noqa: E402

VALID = SPEC_EXAMPLE

# A small valid prefix: a data and a model block that later lines can use.
BASE = 'data d { source = sklearn("iris") }\nmodel m { arch = mlp(), task = classify(labels = 3) }\n'


@pytest.fixture
def cli(tmp_path, monkeypatch, capsys):
    """Run `ftdsl ARGS` in-process in tmp_path; returns (exit code, stdout, stderr)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setenv("TERM", "dumb")
    monkeypatch.delenv("FTDSL_DEBUG", raising=False)
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)

    def run(*argv: str, stdin: bytes | None = None) -> tuple[int, str, str]:
        if stdin is not None:
            monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8"))
        try:
            rc = main(list(argv))
        except SystemExit as e:  # argparse errors
            rc = e.code
        out, err = capsys.readouterr()
        assert "Traceback" not in out + err
        return rc, out, err

    return run


def write(tmp_path: Path, content: str | bytes, name: str = "p.ftp") -> str:
    p = tmp_path / name
    p.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, str):
        p.write_bytes(content.encode("utf-8"))
    else:
        p.write_bytes(content)
    return name


def codes(err: str) -> list[str]:
    return re.findall(r"^(?:error|warning|info)\[(FTP\d{3})\]", err, re.M)


def caret_aligned(err: str, needle: str) -> bool:
    """True when a snippet line contains `needle` and the marker row under it starts right below it."""
    lines = err.splitlines()
    for i, line in enumerate(lines[:-1]):
        if re.match(r"\s*\d+ \|", line) and needle in line and "^" in lines[i + 1]:
            return line.index(needle) == lines[i + 1].index("^")
    return False


# --- B1: empty and comment-only files ------------------------------------------------------------

@pytest.mark.parametrize("text", ["", "\n\n\n", "# just a comment\n# and another", "   \t  \n"])
def test_empty_or_comment_only_file_is_valid_with_no_stages_warning(cli, tmp_path, text):
    rc, out, err = cli("lint", write(tmp_path, text))
    assert rc == 0
    assert codes(err) == ["FTP213"]
    assert "defines no stages" in err


def test_empty_file_is_an_error_only_with_strict(cli, tmp_path):
    rc, _, _ = cli("lint", "--strict", write(tmp_path, ""))
    assert rc == 1


# --- B2: BOM, CRLF and tabs before the error -------------------------------------------------------

def test_bom_is_skipped_and_columns_do_not_count_it(cli, tmp_path):
    rc, _, err = cli("lint", write(tmp_path, "\ufefftrain t { epochs = @ }\n"))
    assert rc == 1
    assert "FTP102" in codes(err)
    assert "p.ftp:1:20" in err
    assert caret_aligned(err, "@")


def test_bom_alone_is_a_clean_file(cli, tmp_path):
    rc, _, err = cli("lint", write(tmp_path, b"\xef\xbb\xbf" + VALID.encode()))
    assert rc == 0, err
    assert codes(err) == []


def test_crlf_line_endings_keep_lines_and_columns(cli, tmp_path):
    src = "data d {\r\n  x = 1\r\n  y = @\r\n}\r\n"
    rc, _, err = cli("lint", write(tmp_path, src))
    assert rc == 1
    assert "p.ftp:3:7" in err
    assert caret_aligned(err, "@")
    assert "\r" not in err and "\u240d" not in err  # no raw or pictured carriage return in the snippet


def test_tabs_before_the_error_expand_in_the_snippet_and_the_caret_follows(cli, tmp_path):
    src = "data d {\n\tx = 1\n\t\ty =\t@\n}\n"
    rc, _, err = cli("lint", write(tmp_path, src))
    assert rc == 1
    assert "p.ftp:3:7" in err  # columns count a tab as one character
    assert "\t" not in err
    assert caret_aligned(err, "@")


def test_crlf_file_with_semantic_error_points_at_the_right_span(cli, tmp_path):
    src = (BASE + "train t {\r\n  model = m, data = d\r\n  epoch = 3\r\n}\r\n")
    rc, _, err = cli("lint", write(tmp_path, src))
    assert rc == 1
    assert "p.ftp:5:3" in err
    assert caret_aligned(err, "epoch")


# --- B3: invalid UTF-8, NUL, binary ---------------------------------------------------------------

def test_invalid_utf8_reports_ftp002_with_the_byte_offset(cli, tmp_path):
    data = b'data d {\n  text = "caf\xe9"\n}\n'
    bad = data.index(b"\xe9")
    rc, _, err = cli("lint", write(tmp_path, data))
    assert rc == 1
    assert codes(err) == ["FTP002"]
    assert f"not valid UTF-8 at byte {bad}" in err
    assert "p.ftp:2:" in err


def test_nul_byte_is_ftp002(cli, tmp_path):
    rc, _, err = cli("lint", write(tmp_path, b"data d {\x00}\n"))
    assert rc == 1
    assert codes(err) == ["FTP002"]
    assert "NUL" in err


def test_binary_file_is_ftp002(cli, tmp_path):
    blob = bytes(range(256)) * 4
    rc, _, err = cli("lint", write(tmp_path, blob))
    assert rc == 1
    assert codes(err) == ["FTP002"]


def test_decode_reports_the_first_bad_byte_and_strips_a_bom():
    text, diags = decode(b"\xef\xbb\xbfok", "x.ftp")
    assert text == "ok" and diags == []
    text, diags = decode(b"abc\n\xff\xfe", "x.ftp")
    assert text is None
    assert diags[0].code == "FTP002" and "byte 4" in diags[0].message
    assert (diags[0].span.line, diags[0].span.col) == (2, 1)


# --- B4: size cap, very long lines ----------------------------------------------------------------

def test_file_over_the_size_cap_is_ftp003_quickly(cli, tmp_path):
    big = b"# filler line to pass the cap\n" * (MAX_BYTES // 30 + 10)
    assert len(big) > MAX_BYTES
    name = write(tmp_path, big)
    t = time.perf_counter()
    rc, _, err = cli("lint", name)
    assert time.perf_counter() - t < 2.0
    assert rc == 1
    assert codes(err) == ["FTP003"]
    assert f"{MAX_BYTES:,}" in err


def test_stdin_over_the_size_cap_is_ftp003(cli):
    rc, _, err = cli("lint", "-", stdin=b"#" * (MAX_BYTES + 1))
    assert rc == 1
    assert codes(err) == ["FTP003"]


def test_fmt_refuses_a_file_over_the_size_cap(cli, tmp_path):
    rc, _, err = cli("fmt", "--check", write(tmp_path, b"#" * (MAX_BYTES + 1)))
    assert rc == 1
    assert "FTP003" in err


def test_one_megabyte_single_line_finishes_in_bounded_time(cli, tmp_path):
    src = BASE + 'train t { model = m, data = d, epochs = 1 }\ndata e { source = sklearn("iris"), label = "' \
        + "a" * 1_000_000 + '" }\n'
    name = write(tmp_path, src)
    t = time.perf_counter()
    rc, _, err = cli("lint", name)
    assert time.perf_counter() - t < 5.0
    assert rc == 0
    assert codes(err) == ["FTP220"]  # `e` is unused; nothing else
    assert len(err) < 1_100_000  # the huge line is shown at most once


def test_one_megabyte_unterminated_string_is_ftp104_in_bounded_time(cli, tmp_path):
    name = write(tmp_path, 'data d { text = "' + "a" * 1_000_000 + "\n}\n")
    t = time.perf_counter()
    rc, _, err = cli("lint", name)
    assert time.perf_counter() - t < 5.0
    assert rc == 1
    assert "FTP104" in codes(err)


def test_comment_cost_does_not_grow_with_their_offset():
    # The same 1,000 comments before or after 400 KB of blanks: a linear parser takes about the same
    # time for both; one that counts lines from the start of the file for each comment does not.
    pad, comments = " " * 400_000 + "\n", "# a comment line\n" * 1_000

    def best(text: str) -> float:
        times = []
        for _ in range(2):
            t = time.perf_counter()
            f, diags = parse(text, "p.ftp")
            times.append(time.perf_counter() - t)
            assert f is not None and diags == [] and len(f.comments) == 1_000
        return min(times)

    before, after = best(comments + pad), best(pad + comments)
    assert after / before < 5, f"comments after the padding took {after / before:.0f}x as long " \
                               f"({before:.3f} s -> {after:.3f} s)"


# --- B5: deep nesting -----------------------------------------------------------------------------

@pytest.mark.parametrize("opener,closer", [("[", "]"), ("{ a = ", "}"), ("f(", ")")])
@pytest.mark.parametrize("depth", [10_000, 100_000])
def test_deep_nesting_is_ftp105_not_recursion_error(cli, tmp_path, opener, closer, depth):
    src = "train t { x = " + opener * depth + "1" + closer * depth + " }\n"
    rc, _, err = cli("lint", write(tmp_path, src))
    assert rc == 1
    assert "FTP105" in codes(err)
    assert "RecursionError" not in err


def test_deep_nesting_without_closers_is_ftp105(cli, tmp_path):
    rc, _, err = cli("lint", write(tmp_path, "data d { x = " + "[" * 10_000))
    assert rc == 1
    assert "FTP105" in codes(err)


def test_moderate_nesting_is_fine():
    f, diags = parse("data d { x = " + "[" * 30 + "]" * 30 + " }\n", "p.ftp")
    assert f is not None and diags == []


def test_deep_nesting_in_fmt_and_plan(cli, tmp_path):
    name = write(tmp_path, "train t { x = " + "[" * 10_000 + "]" * 10_000 + " }\n")
    rc, _, err = cli("fmt", "--check", name)
    assert rc == 1 and "FTP105" in err
    rc, _, err = cli("plan", name)
    assert rc == 1 and "FTP105" in err


def test_brackets_inside_strings_and_comments_do_not_count_as_nesting():
    src = 'data d { text = "' + "[" * 500 + '" }  # ' + "{" * 500 + "\n"
    f, diags = parse(src, "p.ftp")
    assert f is not None and diags == []


# --- B6: end of file in the middle of a block -------------------------------------------------------

def test_eof_mid_block_is_ftp103_expected_brace_caret_at_eof(cli, tmp_path):
    rc, _, err = cli("lint", write(tmp_path, "train t {\n  epochs = 3\n"))
    assert rc == 1
    assert "FTP103" in codes(err)
    assert "expected `}`" in err
    assert "p.ftp:2:13" in err  # the last character of the file (the final newline)


def test_eof_mid_list_says_expected_bracket(tmp_path):
    c = compile_pipeline("p.ftp", text="data d { features = [\"a\", \"b\"")
    d = [d for d in c.diagnostics if d.code == "FTP103"]
    assert d and "expected `]`" in d[0].message


def test_eof_mid_call_says_expected_paren(tmp_path):
    c = compile_pipeline("p.ftp", text="data d { source = csv(\"a.csv\"")
    d = [d for d in c.diagnostics if d.code == "FTP103"]
    assert d and "expected `)`" in d[0].message


# --- B7: stray characters, invisible characters, confusables ------------------------------------------

def test_at_sign_is_ftp102_with_expected_tokens(cli, tmp_path):
    rc, _, err = cli("lint", write(tmp_path, BASE + "train t { model = m, data = d, epochs = @ }\n"))
    assert rc == 1
    assert "FTP102" in codes(err)
    assert "unexpected character `@`" in err
    assert "expected one of" in err
    assert "p.ftp:3:41" in err


def test_semicolon_is_ftp102(tmp_path):
    c = compile_pipeline("p.ftp", text="train t { epochs = 3; }")
    assert [d.code for d in c.errors] == ["FTP102"]


def test_zero_width_space_is_ftp102_with_invisible_char_hint(cli, tmp_path):
    rc, _, err = cli("lint", write(tmp_path, "train t {\n  epochs\u200b = 3\n}\n"))
    assert rc == 1
    assert "FTP102" in codes(err)
    assert "U+200B" in err
    assert "delete it" in err
    assert "p.ftp:2:9" in err


@pytest.mark.parametrize("ch,suggest", [("\u201c", '"'), ("\uff1d", "="), ("\u2013", "-")])
def test_confusable_characters_get_a_did_you_mean(tmp_path, ch, suggest):
    c = compile_pipeline("p.ftp", text=f"data d {{ source = csv({ch}x.csv{ch}) }}" if ch == "\u201c"
                         else f"train t {{ epochs {ch} 3 }}" if ch == "\uff1d" else f"train t {{ epochs = {ch}3 }}")
    d = [d for d in c.diagnostics if d.code == "FTP102"]
    assert d, c.diagnostics
    assert f"did you mean `{suggest}`" in (d[0].hint or "")


def test_control_characters_in_the_source_are_not_echoed_raw(cli, tmp_path):
    rc, _, err = cli("lint", write(tmp_path, "train t { epochs = \x1b[31m3 }\n"))
    assert rc == 1
    assert "\x1b" not in err


# --- B8: strings and numbers ------------------------------------------------------------------------

def test_unterminated_string_is_ftp104(cli, tmp_path):
    rc, _, err = cli("lint", write(tmp_path, 'data d {\n  source = csv("data.csv)\n}\n'))
    assert rc == 1
    assert "FTP104" in codes(err)
    assert "unterminated string" in err
    assert "p.ftp:2:16" in err


def test_bad_escape_is_ftp104_pointing_at_the_escape(cli, tmp_path):
    rc, _, err = cli("lint", write(tmp_path, 'data d {\n  source = csv("C:\\data.csv")\n}\n'))
    assert rc == 1
    assert "FTP104" in codes(err)
    assert "unknown escape sequence `\\d`" in err
    assert "p.ftp:2:19" in err
    assert caret_aligned(err, "\\d")


def test_known_escapes_are_decoded():
    f, diags = parse('data d { text = "a\\"b\\\\c\\nd" }', "p.ftp")
    assert diags == []
    assert f.items[0].attrs[0].value.value == 'a"b\\c\nd'


@pytest.mark.parametrize("num", ["1e999", "-1e999", "1_000e400"])
def test_float_overflow_is_ftp203(cli, tmp_path, num):
    rc, _, err = cli("lint", write(tmp_path, BASE + f"train t {{ model = m, data = d, epochs = 1, clip = {num} }}\n"))
    assert rc == 1
    assert "FTP203" in codes(err)
    assert "out of range" in err


@pytest.mark.parametrize("argv", [["lint"], ["plan"], ["fmt", "--check"]])
def test_header_with_an_overflowing_version_is_a_diagnostic(cli, tmp_path, argv):
    f, diags = parse("ftp 1e999\n", "p.ftp")
    assert f is None and [d.code for d in diags] == ["FTP203"]
    rc, _, err = cli(*argv, write(tmp_path, "ftp 1e999\n" + VALID.split("\n", 1)[1]))
    assert rc == 1
    assert "FTP203" in codes(err)


def test_number_spellings_from_the_spec_parse():
    f, diags = parse("param a = 3\nparam b = -1\nparam c = 0.1\nparam d = 2e-5\nparam e = 1_000\n", "p.ftp")
    assert diags == []
    assert [p.value.value for p in f.items] == [3, -1, 0.1, 2e-5, 1000]


@pytest.mark.parametrize("digit", ["\u0663", "\uff11", "\u096a"])  # Arabic-Indic 3, fullwidth 1, Devanagari 4
def test_non_ascii_digits_are_not_numbers(digit):
    c = compile_pipeline("p.ftp", text=BASE + f"train t {{ model = m, data = d, epochs = {digit} }}\n")
    assert c.errors


@pytest.mark.parametrize("word", ["nan", "inf"])
def test_nan_and_inf_are_not_numbers(tmp_path, word):
    c = compile_pipeline("p.ftp", text=BASE + f"train t {{ model = m, data = d, epochs = 1, "
                                              f"optimizer = adamw(lr = {word}) }}\n")
    assert c.errors, "nan/inf must not be accepted as a learning rate"
    assert all(d.code.startswith("FTP2") for d in c.errors)


# --- names: reserved words and item words --------------------------------------------------------

def test_true_as_a_block_name_is_an_error(cli, tmp_path):
    rc, _, err = cli("lint", write(tmp_path, BASE + "train true { model = m, data = d, epochs = 1 }\n"))
    assert rc == 1
    assert "FTP101" in codes(err)
    assert "`true` is reserved" in err


@pytest.mark.parametrize("src", ["param null = 1\n", "data d { false = 1 }\n"])
def test_reserved_words_cannot_be_names(tmp_path, src):
    c = compile_pipeline("p.ftp", text=src)
    assert any(d.code == "FTP101" and "reserved" in d.message + (d.hint or "") for d in c.diagnostics)


def test_block_kinds_and_item_words_are_ordinary_names_elsewhere(cli, tmp_path):
    src = ('data data { source = sklearn("iris"), split = { train = 0.8, valid = 0.1, test = 0.1 } }\n'
           "model model { arch = mlp(), task = classify(labels = 3) }\n"
           "train train { model = model, data = data, epochs = 1 }\n"
           "evaluate use { models = [train], data = data.test }\n")
    rc, _, err = cli("lint", write(tmp_path, src))
    assert rc == 0, err
    assert codes(err) == []


def test_data_equals_d_and_model_equals_m_work(cli, tmp_path):
    rc, _, err = cli("lint", write(tmp_path, VALID))
    assert rc == 0, err
    assert codes(err) == []
    assert "All checks passed." in err


@pytest.mark.parametrize("src", [
    'data d { text = "s"\n  null_col = "l" }\n',  # after a newline
    "param x = true_lr\n",
    "param true_lr = 1\nparam x = true_lr\n",
])
def test_identifiers_that_start_with_a_reserved_word_are_names(src):
    f, diags = parse(src, "p.ftp")
    assert diags == []


def test_reserved_word_prefix_is_not_split_off_silently():
    f, diags = parse("x y { a = [falsey], b = f(truex = 1) }\n", "p.ftp")
    a, b = f.items[0].attrs
    assert len(a.value.items) == 1
    assert [k.name for k in b.value.kwargs] == ["truex"] and b.value.args == ()


# --- B12: many errors ------------------------------------------------------------------------------

def test_many_semantic_errors_in_one_file_are_all_reported(cli, tmp_path):
    src = (BASE +
           "train t1 { model = m, data = d, epoch = 3 }\n"          # FTP201
           "train t2 { model = mm, data = d, epochs = 3 }\n"        # FTP204
           "train t3 { model = m, data = d, epochs = 3, batch = 0 }\n"  # FTP203
           'train t4 { model = m, data = d, epochs = "3" }\n'       # FTP202
           "trian t5 { }\n"                                          # FTP200
           "train t1 { model = m, data = d, epochs = 1 }\n")        # FTP206
    rc, _, err = cli("lint", write(tmp_path, src))
    assert rc == 1
    found = set(codes(err))
    assert {"FTP200", "FTP201", "FTP202", "FTP203", "FTP204", "FTP206"} <= found
    assert re.search(r"Found \d+ errors", err)


def test_two_syntax_errors_in_different_blocks_are_both_reported(tmp_path):
    c = compile_pipeline("p.ftp", text="data d { x = @ }\n\ntrain t { epochs = = 3 }\n")
    assert len([d for d in c.errors if d.code.startswith("FTP1")]) >= 2


def test_a_syntax_error_is_not_followed_by_a_no_stages_warning(tmp_path):
    c = compile_pipeline("p.ftp", text=BASE + "train t { epochs = @ }\n")
    assert [d.code for d in c.diagnostics] == ["FTP102"]


# Issue 7 item 3: syntax recovery feeds the checker (the blocks that parsed are resolved and checked).

def test_a_syntax_error_does_not_hide_an_undefined_reference_elsewhere(cli, tmp_path):
    src = (BASE + "train t { model = m, data = dd, epochs = 1 }\n"   # FTP204 in a good block
           "train u { model = m data = d = epochs = 1 }\n")         # FTP101 in another block
    rc, _, err = cli("lint", write(tmp_path, src))
    assert rc == 1
    assert codes(err) == ["FTP204", "FTP101"], err
    assert "p.ftp:3:29" in err and "did you mean `d`?" in err  # the FTP204 at `dd`, with its hint


def test_references_to_a_block_that_failed_to_parse_are_not_undefined(cli, tmp_path):
    src = ('data d { source = sklearn("iris") }\n'
           "model m { arch = mlp(), task = classify(labels = 3) = }\n"   # broken: `m` is lost
           "train t { model = m, data = d, epochs = 1, batch = 0 }\n"     # FTP203 still found
           "evaluate e { models = [t, m], data = d.tset }\n")            # FTP204 for the split only
    rc, _, err = cli("lint", write(tmp_path, src))
    assert rc == 1
    assert codes(err) == ["FTP101", "FTP203", "FTP204"], err
    assert "undefined name `m`" not in err and "has no split `tset`" in err
    assert "FTP213" not in err and "FTP220" not in err  # no pile-on from the missing block


def test_an_unclosed_block_is_reported_where_it_opens_and_the_next_block_is_checked(cli, tmp_path):
    src = (BASE + "train t {\n  model = m\n  data = d\n  epochs = 1\n"   # never closed
           "train u { model = m, data = d, epochs = 0 }\n")                # FTP203 in the next block
    rc, _, err = cli("lint", write(tmp_path, src))
    assert rc == 1
    assert codes(err) == ["FTP103", "FTP203"], err
    assert "`{` is never closed" in err and "p.ftp:3:9" in err  # the `{` of `train t`


def test_recovery_in_a_used_file_keeps_its_good_blocks(cli, tmp_path):
    write(tmp_path, BASE + "model broken { arch = mlp( }\n", "lib.ftp")
    src = ('use "lib.ftp"\n'
           "train t { model = broken, data = d, epochs = 1 }\n"
           "train u { model = m, data = d, epochs = 1, batch = -1 }\n")
    rc, _, err = cli("lint", write(tmp_path, src))
    assert rc == 1
    assert sorted(codes(err)) == ["FTP101", "FTP203"], err


def test_many_files_one_bad_exit_1_and_only_the_bad_one_is_reported(cli, tmp_path):
    for i in range(5):
        write(tmp_path, VALID, f"ok{i}.ftp")
    write(tmp_path, VALID.replace('text = "sentence"', 'txt = "sentence"'), "bad.ftp")
    rc, _, err = cli("lint", ".")
    assert rc == 1
    assert codes(err) == ["FTP201"]
    assert "bad.ftp:" in err and "ok0.ftp" not in err


def test_several_paths_mixing_files_and_folders(cli, tmp_path):
    write(tmp_path, VALID, "a/one.ftp")
    write(tmp_path, VALID, "a/b/two.ftp")
    write(tmp_path, VALID + "trian x { }\n", "three.ftp")
    rc, _, err = cli("lint", "a", "three.ftp")
    assert rc == 1
    assert codes(err) == ["FTP200"]
    assert "three.ftp:32:1" in err


# --- B17: usage errors, stdin ------------------------------------------------------------------------

def test_folder_without_pipelines_is_not_an_error(cli, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("not a pipeline")
    rc, _, err = cli("lint", "empty")
    assert rc == 0
    assert "no .ftp files found" in err


def test_unknown_flag_is_exit_2(cli, tmp_path):
    rc, _, err = cli("lint", "--bogus", write(tmp_path, VALID))
    assert rc == 2
    assert "unrecognized arguments: --bogus" in err


@pytest.mark.parametrize("cmd", ["lint", "plan", "fmt"])
def test_missing_file_is_exit_2(cli, cmd):
    rc, _, err = cli(cmd, "nope.ftp")
    assert rc == 2
    assert "nope.ftp" in err


def test_directory_given_to_plan_is_exit_2(cli, tmp_path):
    write(tmp_path, VALID, "d/p.ftp")
    rc, _, err = cli("plan", "d")
    assert rc == 2
    assert "folder" in err


def test_no_command_is_exit_2(cli):
    rc, _, _ = cli()
    assert rc == 2


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file_is_ftp001(cli, tmp_path):
    name = write(tmp_path, VALID)
    (tmp_path / name).chmod(0)
    try:
        rc, _, err = cli("lint", name)
    finally:
        (tmp_path / name).chmod(0o644)
    assert rc == 1
    assert codes(err) == ["FTP001"]


def test_lint_dash_reads_stdin(cli):
    rc, _, err = cli("lint", "-", stdin=VALID.encode())
    assert rc == 0, err
    rc, _, err = cli("lint", "-", stdin=VALID.replace("epochs = 3", "epoch = 3").encode())
    assert rc == 1
    assert "<stdin>:21:3" in err


def test_lint_dash_with_invalid_utf8_is_ftp002(cli):
    rc, _, err = cli("lint", "-", stdin=b"data d { text = \"\xff\" }")
    assert rc == 1
    assert codes(err) == ["FTP002"]


def test_fmt_does_not_read_stdin(cli):
    rc, _, err = cli("fmt", "-", stdin=VALID.encode())
    assert rc == 2


def test_set_with_a_bad_key_is_ftp212(cli, tmp_path):
    name = write(tmp_path, VALID)
    for ov, want in [("finetune.epochz=1", "did you mean `epochs`"), ("nope=1", "no param named `nope`"),
                     ("fintune.epochs=1", "did you mean `finetune`"), ("lr", "is not `NAME=VALUE`")]:
        rc, _, err = cli("lint", name, "--set", ov)
        assert rc == 1, ov
        assert "FTP212" in codes(err), ov
        assert want in err, (ov, err)


def test_set_with_a_good_key_changes_the_value(cli, tmp_path):
    name = write(tmp_path, VALID)
    rc, _, err = cli("lint", name, "--set", "finetune.epochs=0")
    assert rc == 1 and "FTP203" in codes(err)
    assert "<--set>:1:" in err
    rc, _, err = cli("lint", name, "--set", "lr=1e-4", "--set", "finetune.batch=8")
    assert rc == 0, err


def test_plan_with_errors_is_exit_1_and_prints_no_plan(cli, tmp_path):
    rc, out, err = cli("plan", write(tmp_path, VALID.replace("epochs = 3", "epoch = 3")))
    assert rc == 1
    assert out == ""
    assert "FTP201" in codes(err)


def test_fmt_with_a_syntax_error_is_exit_1_and_leaves_the_file(cli, tmp_path):
    src = "train t {\n  epochs = @\n}\n"
    name = write(tmp_path, src)
    rc, _, err = cli("fmt", name)
    assert rc == 1
    assert "FTP102" in err
    assert (tmp_path / name).read_text() == src


# --- subprocess: the real command never shows a traceback -----------------------------------------

SUBPROCESS_INPUTS = {
    "valid": VALID.encode(),
    "empty": b"",
    "not_utf8": b"data d { text = \"\xc3\x28\" }\n",
    "deep": b"train t { x = " + b"[" * 100_000 + b" }\n",
    "eof": b"train t {\n  epochs = 3\n",
    "garbage": bytes(range(1, 256)) * 3,
}


@pytest.fixture(scope="module")
def subprocess_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    for name, data in SUBPROCESS_INPUTS.items():
        (d / f"{name}.ftp").write_bytes(data)
    return d


def _ftdsl(args, cwd, input=None):
    env = dict(os.environ, NO_COLOR="1", TERM="dumb")
    env.pop("FTDSL_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "ftdsl", *args], cwd=cwd, input=input, capture_output=True,
                          env=env, timeout=60)


@pytest.mark.parametrize("name", list(SUBPROCESS_INPUTS))
@pytest.mark.parametrize("cmd", [["lint"], ["plan", "--cache", "c"]])
def test_subprocess_never_shows_a_traceback(subprocess_files, name, cmd):
    p = _ftdsl([*cmd, f"{name}.ftp"], subprocess_files)
    err = p.stderr.decode("utf-8", "replace")
    assert "Traceback" not in err
    assert p.returncode == (0 if name in ("valid", "empty") else 1), err


def test_subprocess_fmt_check_over_every_bad_input(subprocess_files):
    p = _ftdsl(["fmt", "--check", *(f"{n}.ftp" for n in SUBPROCESS_INPUTS)], subprocess_files)
    err = p.stderr.decode("utf-8", "replace")
    assert "Traceback" not in err
    assert p.returncode == 1


def test_subprocess_usage_errors_are_exit_2(subprocess_files):
    for args in (["lint", "--bogus", "valid.ftp"], ["plan", "missing.ftp"], ["plan", "."], ["frobnicate"]):
        p = _ftdsl(args, subprocess_files)
        assert p.returncode == 2, args
        assert b"Traceback" not in p.stderr


def _limit_memory():  # pragma: no cover - runs in the child
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (600 * 2**20, 600 * 2**20))


@pytest.mark.skipif(not Path("/dev/zero").exists() or sys.platform != "linux", reason="needs /dev/zero")
@pytest.mark.parametrize("how", ["argument", "use"])
def test_endless_device_is_ftp003_not_memory_exhaustion(tmp_path, how):
    (tmp_path / "p.ftp").write_text('use "/dev/zero"\n')
    target = "/dev/zero" if how == "argument" else "p.ftp"
    env = dict(os.environ, NO_COLOR="1")
    try:
        p = subprocess.run([sys.executable, "-m", "ftdsl", "lint", target], cwd=tmp_path, capture_output=True,
                           env=env, timeout=30, preexec_fn=_limit_memory)
    except subprocess.TimeoutExpired:
        pytest.fail("lint of an endless device did not finish in 30 s")
    assert p.returncode == 1, p.stderr.decode(errors="replace")[-400:]
    assert b"FTP003" in p.stderr or b"FTP001" in p.stderr or b"FTP004" in p.stderr


def test_subprocess_lint_stdin(subprocess_files):
    p = _ftdsl(["lint", "-"], subprocess_files, input=SUBPROCESS_INPUTS["eof"])
    assert p.returncode == 1
    assert b"FTP103" in p.stderr and b"Traceback" not in p.stderr
