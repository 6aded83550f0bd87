"""Golden `ftdsl lint` output for broken pipelines (formats.md §2; reliability.md §8 A, O1).

tests/golden/broken/NAME.ftp is a broken pipeline with one theme; NAME.txt beside it is what
`NO_COLOR=1 ftdsl lint broken/NAME.ftp` prints, written only by `python tests/golden/regen_broken.py`.
Besides the byte-for-byte comparison, each case must keep the diagnostic its theme is about, so
a blind regeneration cannot silently lose it.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

GOLDEN = Path(__file__).parent / "golden"


def _regen():
    spec = importlib.util.spec_from_file_location("regen_broken", GOLDEN / "regen_broken.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


REGEN = _regen()

# the theme of each case: codes that must be in its output, and its exit code
THEMES = {
    "crlf_tabs.ftp": ({"FTP102"}, 1),
    "cycle.ftp": ({"FTP205"}, 1),
    "duplicates.ftp": ({"FTP206"}, 1),
    "invisible_char.ftp": ({"FTP102"}, 1),
    "metrics.ftp": ({"FTP210", "FTP232"}, 1),
    "safety.ftp": ({"FTP301", "FTP302", "FTP303", "FTP230"}, 1),
    "stage_order.ftp": ({"FTP207"}, 1),
    "suppressions.ftp": ({"FTP090"}, 0),
    "syntax_eof.ftp": ({"FTP103"}, 1),
    # syntax recovery (issue 7 item 3): the good blocks are still checked
    "syntax_recovery.ftp": ({"FTP101", "FTP103", "FTP204"}, 1),
    "types_ranges.ftp": ({"FTP202", "FTP203"}, 1),
    "undefined_refs.ftp": ({"FTP204"}, 1),
    "unknown_attr.ftp": ({"FTP201"}, 1),
    "unknown_kind.ftp": ({"FTP200"}, 1),
    "use_errors.ftp": ({"FTP001", "FTP205"}, 1),
}


def test_every_case_has_a_theme_and_there_are_10_to_20():
    assert set(REGEN.CASES) == set(THEMES)
    assert 10 <= len(REGEN.CASES) <= 20


@pytest.mark.parametrize("name", REGEN.CASES)
def test_golden(name):
    path = REGEN.expected_path(name)
    assert path.exists(), f"missing {path}; run python tests/golden/regen_broken.py"
    rc, actual = REGEN.lint_output(name)
    expected = path.read_bytes().decode("utf-8")
    assert actual == expected, f"{name}: output changed; if intended, run python tests/golden/regen_broken.py " \
                               f"and read the diff"


@pytest.mark.parametrize("name", REGEN.CASES)
def test_theme_codes_and_exit_code(name):
    codes, want_rc = THEMES[name]
    rc, out = REGEN.lint_output(name)
    found = set(re.findall(r"^(?:error|warning)\[(FTP\d{3})\]", out, re.M))
    assert codes <= found, f"{name}: expected {sorted(codes)}, found {sorted(found)}"
    assert rc == want_rc
    assert ("error[" in out) == (rc == 1)
    assert "Traceback" not in out


def test_goldens_are_deterministic():
    for name in REGEN.CASES:
        assert REGEN.lint_output(name) == REGEN.lint_output(name), name


def test_no_stray_goldens():
    txt = {p.name for p in (GOLDEN / "broken").glob("*.txt")}
    assert txt == {REGEN.expected_path(n).name for n in REGEN.CASES}


def test_crlf_case_really_has_crlf_and_tabs():
    raw = (GOLDEN / "broken" / "crlf_tabs.ftp").read_bytes()
    assert raw.count(b"\r\n") == raw.count(b"\n") > 0, "line endings were normalized; restore the CRLF file"
    assert b"\t" in raw


def test_crlf_tabs_caret_sits_under_the_semicolon():
    _, out = REGEN.lint_output("crlf_tabs.ftp")
    lines = out.splitlines()
    i = next(i for i, ln in enumerate(lines) if re.match(r"\s*5 \|", ln))
    assert lines[i].index(";") == lines[i + 1].index("^")
    assert "broken/crlf_tabs.ftp:5:19" in out


def test_regen_check_mode_agrees():
    assert REGEN.main(["--check"]) == 0
