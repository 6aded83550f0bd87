"""Issue 6 defect 7 (front end): values that cannot be represented are lint errors at their span.

`mlp(hidden = [99999999999999999999999999999])` linted clean and crashed the run with a C++ stack;
`epochs = 1e999, optimizer = adamw(lr = 1e999)` reported one overflow and a bogus "defines no
stages"; an unused `param x = y` / `param y = x` cycle was not reported at all.
"""

from __future__ import annotations

import re
from pathlib import Path

HEAD = """data d { source = sklearn("digits"), split = { train = 0.8, valid = 0.1, test = 0.1 } }
"""
HUGE = "99999999999999999999999999999"


def _lint(ftdsl_cli, tmp_path: Path, text: str, *extra):
    p = tmp_path / "p.ftp"
    p.write_text(text)
    r = ftdsl_cli(["lint", p.name, *extra], cwd=tmp_path, timeout=60)
    assert "Traceback" not in r.stderr and "Internal error" not in r.stderr, r.stderr
    return r


def _codes_at(stderr: str) -> list[tuple[str, str]]:
    """[(code, "line:col"), ...] in report order."""
    return re.findall(r"(FTP\d{3})\]:[^\n]*\n\s*--> p\.ftp:(\d+:\d+)", stderr)


def test_integer_beyond_int64_in_a_list_is_ftp203_at_its_span(ftdsl_cli, tmp_path):
    src = HEAD + f"model m {{ arch = mlp(hidden = [{HUGE}]), task = classify(labels = 10) }}\n" \
                 "train t { model = m, data = d, epochs = 1 }\n"
    r = _lint(ftdsl_cli, tmp_path, src)
    assert r.returncode == 1
    col = src.splitlines()[1].index(HUGE) + 1
    assert ("FTP203", f"2:{col}") in _codes_at(r.stderr), r.stderr
    assert "does not fit in 64 bits" in r.stderr


def test_huge_integers_as_constructor_arguments_and_thousands_of_digits(ftdsl_cli, tmp_path):
    digits = "9" * 5000  # beyond Python's int() digit limit: must not become a ValueError
    src = HEAD + f"model m {{ arch = mlp(hidden = [64]), task = classify(labels = {HUGE}) }}\n" \
                 f"train t {{ model = m, data = d, epochs = {digits} }}\n"
    r = _lint(ftdsl_cli, tmp_path, src)
    assert r.returncode == 1
    found = _codes_at(r.stderr)
    assert ("FTP203", f"2:{src.splitlines()[1].index(HUGE) + 1}") in found, r.stderr
    assert ("FTP203", f"3:{src.splitlines()[2].index(digits) + 1}") in found, r.stderr
    assert "5000 characters" in r.stderr  # the message does not print 5,000 digits


def test_every_float_overflow_is_reported_and_the_block_is_still_a_stage(ftdsl_cli, tmp_path):
    src = HEAD + "model m { arch = mlp(hidden = [64]), task = classify(labels = 10) }\n" \
                 "train t { model = m, data = d, epochs = 1e999, optimizer = adamw(lr = 1e999) }\n"
    r = _lint(ftdsl_cli, tmp_path, src)
    assert r.returncode == 1
    line = src.splitlines()[2]
    first, second = line.index("1e999") + 1, line.rindex("1e999") + 1
    assert _codes_at(r.stderr) == [("FTP203", f"3:{first}"), ("FTP203", f"3:{second}")], r.stderr
    assert "FTP213" not in r.stderr  # the train block is there: no "defines no stages"


def test_overflow_next_to_other_errors_keeps_reporting_them(ftdsl_cli, tmp_path):
    src = HEAD + "model m { arch = mlp(hidden = [64]), task = classify(labels = 10) }\n" \
                 "train t { model = m, data = dd, epochs = 1e999 }\n"
    r = _lint(ftdsl_cli, tmp_path, src)
    codes = [c for c, _ in _codes_at(r.stderr)]
    assert sorted(codes) == ["FTP203", "FTP204"], r.stderr


def test_unused_param_cycle_is_ftp205_with_both_spans(ftdsl_cli, tmp_path):
    src = HEAD + "model m { arch = mlp(hidden = [64]), task = classify(labels = 10) }\n" \
                 "train t { model = m, data = d, epochs = 1 }\n" \
                 "param x = y\nparam y = x\n"
    r = _lint(ftdsl_cli, tmp_path, src)
    assert r.returncode == 1
    assert "FTP205" in r.stderr and "params form a cycle: x -> y -> x" in r.stderr, r.stderr
    # both params are shown: the primary span on one, a secondary label on the other
    assert re.search(r"^4 \| param x = y\n\s*\|\s+- `x` refers to `y`", r.stderr, re.M), r.stderr
    assert re.search(r"^5 \| param y = x\n\s*\|\s+\^ `y` refers back to `x`", r.stderr, re.M), r.stderr
    assert r.stderr.count("FTP205") == 1


def test_used_param_cycle_and_self_reference_are_reported_once_each(ftdsl_cli, tmp_path):
    src = HEAD + "model m { arch = mlp(hidden = [a]), task = classify(labels = 10) }\n" \
                 "train t { model = m, data = d, epochs = s }\n" \
                 "param a = b\nparam b = [a]\nparam s = s\n"
    r = _lint(ftdsl_cli, tmp_path, src)
    assert r.returncode == 1
    assert r.stderr.count("error[FTP205]") == 2, r.stderr
    assert "param `s` refers to itself" in r.stderr
    assert "FTP221" not in r.stderr and "FTP204" not in r.stderr


def test_overflowing_set_override_is_an_error_not_a_crash(ftdsl_cli, tmp_path):
    src = HEAD + "model m { arch = mlp(hidden = [64]), task = classify(labels = 10) }\n" \
                 "train t { model = m, data = d, epochs = 1 }\n"
    r = _lint(ftdsl_cli, tmp_path, src, "--set", f"t.epochs={HUGE}")
    assert r.returncode == 1 and "FTP212" in r.stderr, r.stderr
