"""The CLI's outputs and exit codes (formats.md §1-4; reliability.md §8 A, O2-O4, O6; SPEC §7).

Machine formats go to stdout and parse (JSON with `format_version`, SARIF valid against the
OASIS schema, GitHub `::error file=..,line=..,col=..::` lines); human text goes to stderr. Exit
codes: 0 clean, 1 errors, 2 usage, 70 internal error (crash report, traceback only with --debug).
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import jsonschema
import pytest

import ftdsl.commands
from ftdsl.cli import main
from ftdsl.diagnostics.codes import CODES

from spec_example import SPEC_EXAMPLE  # noqa: E402

VALID = SPEC_EXAMPLE
# line 21 col 15 is `bacth` in BROKEN
BROKEN = VALID.replace("epochs = 3, batch = 32", "epochs = 3, bacth = 32")
# formats.md §2's example: `epoch` at line 21 col 3
EPOCH_TYPO = VALID.replace("epochs = 3, batch = 32", "epoch = 3, batch = 32")
# Only warnings: an unused model block and an export without verify.
WARNINGS = VALID + 'model spare { arch = mlp(), task = classify(labels = 2) }\n'
NON_ASCII_BROKEN = "# café ☕ — données\n" + BROKEN

SCHEMA = json.loads((Path(__file__).parent / "golden" / "sarif-schema-2.1.0.json").read_text(encoding="utf-8"))
# The schema file keeps the log's schema under definitions.Root: validate against that.
SARIF = jsonschema.Draft7Validator({"$ref": "#/definitions/Root", "definitions": SCHEMA["definitions"]})

GITHUB_LINE = re.compile(
    r"^::(?P<level>error|warning|notice) file=(?P<file>[^,:]+),line=(?P<line>\d+)"
    r"(?:,endLine=(?P<end_line>\d+))?(?:,col=(?P<col>\d+))?(?:,endColumn=(?P<end_col>\d+))?"
    r"(?:,title=(?P<title>[^:]*))?::(?P<message>.*)$")


@pytest.fixture
def cli(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setenv("TERM", "dumb")
    monkeypatch.delenv("FTDSL_DEBUG", raising=False)
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    monkeypatch.setenv("FTDSL_CACHE", str(tmp_path / "cache"))

    def run(*argv: str, stdin: bytes | None = None) -> tuple[int, str, str]:
        if stdin is not None:
            monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8"))
        try:
            rc = main(list(argv))
        except SystemExit as e:
            rc = e.code
        out, err = capsys.readouterr()
        return rc, out, err

    return run


def write(tmp_path: Path, text: str | bytes, name: str = "p.ftp") -> str:
    p = tmp_path / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
    return name


# --- text (formats.md §2) ---------------------------------------------------------------------------

def test_text_format_matches_the_rustc_shape(cli, tmp_path):
    rc, out, err = cli("lint", write(tmp_path, BROKEN))
    assert rc == 1
    assert out == ""  # human output goes to stderr
    assert err.startswith("error[FTP201]: unknown attribute `bacth` in `train finetune`\n"
                          "  --> p.ftp:21:15\n"
                          "   |\n"
                          "20 |   model = base, data = reviews\n"
                          "21 |   epochs = 3, bacth = 32\n"
                          "   |               ^^^^^ unknown attribute\n"
                          "   |\n"
                          "   = help: did you mean `batch`?\n"
                          "   = note: valid attributes: accumulate, batch, ")
    assert err.endswith("\nFound 1 error.\n")


def test_the_formats_md_example_is_one_error(cli, tmp_path):
    rc, _, err = cli("lint", write(tmp_path, EPOCH_TYPO))
    assert err.startswith("error[FTP201]: unknown attribute `epoch` in `train finetune`\n  --> p.ftp:21:3\n")
    assert err.endswith("\nFound 1 error.\n")


def test_clean_text_says_all_checks_passed(cli, tmp_path):
    rc, out, err = cli("lint", write(tmp_path, VALID))
    assert (rc, out, err) == (0, "", "All checks passed.\n")


def test_concise_format_is_one_line_per_diagnostic(cli, tmp_path):
    rc, out, err = cli("lint", "--format", "concise", write(tmp_path, BROKEN))
    assert rc == 1
    assert err.splitlines()[0] == "p.ftp:21:15: error[FTP201] unknown attribute `bacth` in `train finetune`"


def test_no_color_means_no_escape_codes(cli, tmp_path):
    _, _, err = cli("lint", write(tmp_path, BROKEN))
    assert "\x1b[" not in err


# --- JSON (O4) -------------------------------------------------------------------------------------

def test_json_has_format_version_counts_and_ranges_with_bytes(cli, tmp_path):
    rc, out, err = cli("lint", "--format", "json", write(tmp_path, NON_ASCII_BROKEN))
    assert rc == 1
    assert err == ""
    doc = json.loads(out)
    assert doc["format_version"] == "1.0"
    assert doc["valid"] is False and doc["error_count"] == 1
    (d,) = doc["diagnostics"]
    assert (d["severity"], d["code"]) == ("error", "FTP201")
    assert "unknown attribute `bacth`" in d["summary"]
    r = d["range"]
    assert r["filename"] == "p.ftp"
    assert (r["start"]["line"], r["start"]["column"]) == (22, 15)
    raw = NON_ASCII_BROKEN.encode("utf-8")
    assert r["start"]["byte"] == raw.index(b"bacth = 32")
    assert r["end"]["byte"] == r["start"]["byte"] + len("bacth")


def test_json_for_a_clean_file_is_valid_true(cli, tmp_path):
    rc, out, _ = cli("lint", "--format", "json", write(tmp_path, VALID))
    doc = json.loads(out)
    assert rc == 0
    assert doc["valid"] is True and doc["diagnostics"] == [] and doc["error_count"] == 0


@pytest.mark.parametrize("data", [b"\xff\xfe garbage", b"#" * (4 * 1024 * 1024 + 1), b"train t {"])
def test_json_is_valid_on_early_errors(cli, tmp_path, data):
    rc, out, _ = cli("lint", "--format", "json", write(tmp_path, data))
    assert rc == 1
    doc = json.loads(out)
    assert doc["format_version"] == "1.0" and doc["valid"] is False
    assert {d["code"] for d in doc["diagnostics"]} & {"FTP002", "FTP003", "FTP103"}


def test_json_is_valid_for_a_missing_file(cli):
    rc, out, _ = cli("lint", "--format", "json", "missing.ftp")
    assert rc in (1, 2)
    doc = json.loads(out)
    assert doc["valid"] is False and doc["diagnostics"][0]["code"] == "FTP001"


def test_json_diagnostics_are_sorted_by_file_line_col_code(cli, tmp_path):
    write(tmp_path, BROKEN, "b.ftp")
    write(tmp_path, VALID.replace("batch = 32", "batch = 0").replace("amount = 0.3", "amount = 3"), "a.ftp")
    _, out, _ = cli("lint", "--format", "json", "b.ftp", "a.ftp")
    keys = [(d["range"]["filename"], d["range"]["start"]["line"], d["range"]["start"]["column"], d["code"])
            for d in json.loads(out)["diagnostics"]]
    assert len(keys) == 3
    assert keys == sorted(keys)


# --- SARIF (O3) ------------------------------------------------------------------------------------

def _sarif_errors(log):
    return [f"{list(e.path)}: {e.message}" for e in SARIF.iter_errors(log)]


@pytest.mark.parametrize("text", [BROKEN, VALID, WARNINGS, "", "train t {\n"])
def test_sarif_is_schema_valid(cli, tmp_path, text):
    rc, out, _ = cli("lint", "--format", "sarif", write(tmp_path, text))
    log = json.loads(out)
    assert _sarif_errors(log) == []
    assert log["version"] == "2.1.0"
    assert rc == (1 if text in (BROKEN, "train t {\n") else 0)


def test_sarif_results_have_rule_ids_relative_uris_and_column_kind(cli, tmp_path):
    write(tmp_path, BROKEN, "pipelines/p.ftp")
    _, out, _ = cli("lint", "--format", "sarif", "pipelines")
    run = json.loads(out)["runs"][0]
    assert run["columnKind"] == "unicodeCodePoints"
    (res,) = run["results"]
    assert res["ruleId"] == "FTP201" and res["level"] == "error"
    rule = run["tool"]["driver"]["rules"][res["ruleIndex"]]
    assert rule["id"] == "FTP201"
    loc = res["locations"][0]["physicalLocation"]
    assert loc["artifactLocation"]["uri"] == "pipelines/p.ftp"
    assert (loc["region"]["startLine"], loc["region"]["startColumn"], loc["region"]["endColumn"]) == (21, 15, 20)
    assert res["partialFingerprints"]


def test_sarif_fingerprint_is_stable_when_lines_move(cli, tmp_path):
    _, out1, _ = cli("lint", "--format", "sarif", write(tmp_path, BROKEN))
    _, out2, _ = cli("lint", "--format", "sarif", write(tmp_path, "# a new first line\n" + BROKEN))
    fp = [json.loads(o)["runs"][0]["results"][0]["partialFingerprints"] for o in (out1, out2)]
    assert fp[0] == fp[1]


# --- GitHub annotations (O2) -------------------------------------------------------------------------

def test_github_annotation_shape(cli, tmp_path):
    rc, out, _ = cli("lint", "--format", "github", write(tmp_path, BROKEN))
    assert rc == 1
    lines = [ln for ln in out.splitlines() if ln.startswith("::")]
    assert len(lines) == 1
    m = GITHUB_LINE.match(lines[0])
    assert m, lines[0]
    assert (m["level"], m["file"], m["line"], m["col"]) == ("error", "p.ftp", "21", "15")
    assert m["end_col"] in (None, "20")
    assert "unknown attribute `bacth`" in m["message"]
    assert "FTP201" in (m["title"] or "") + m["message"]


def test_github_escapes_commas_in_file_and_percent_in_message(cli, tmp_path):
    src = VALID.replace("precision = auto", 'precision = "50%"')
    _, out, _ = cli("lint", "--format", "github", write(tmp_path, src, "a,b.ftp"))
    line = next(ln for ln in out.splitlines() if ln.startswith("::error"))
    assert "file=a%2Cb.ftp," in line
    message = line.split("::", 2)[2]
    assert "50%25" in message and "50%\"" not in message


def test_github_warning_level_and_no_output_when_clean(cli, tmp_path):
    rc, out, _ = cli("lint", "--format", "github", write(tmp_path, WARNINGS))
    assert rc == 0
    assert out.startswith("::warning file=p.ftp,line=32,")
    rc, out, _ = cli("lint", "--format", "github", write(tmp_path, VALID))
    assert rc == 0 and not [ln for ln in out.splitlines() if ln.startswith("::")]


# --- exit codes (O6) -------------------------------------------------------------------------------

@pytest.mark.parametrize("argv,text,want", [
    (["lint"], VALID, 0),
    (["lint"], WARNINGS, 0),
    (["lint"], BROKEN, 1),
    (["lint", "--no-such-flag"], VALID, 2),
    (["lint", "--format", "yaml"], VALID, 2),
    (["plan", "--cache", "c"], VALID, 0),
    (["plan", "--cache", "c"], BROKEN, 1),
    (["plan", "--cache", "c", "--only", "nope"], VALID, 2),
    (["plan", "--cache", "c", "--format", "xml"], VALID, 2),
    (["fmt", "--check"], BROKEN, 1),
    (["fmt", "--check", "--frobnicate"], VALID, 2),
])
def test_exit_codes(cli, tmp_path, argv, text, want):
    rc, _, err = cli(*argv, write(tmp_path, text))
    assert rc == want, err
    assert "Traceback" not in err


def test_fmt_check_exit_0_on_formatted_and_1_on_unformatted(cli, tmp_path):
    from ftdsl.syntax.format import format_source

    formatted, _ = format_source(VALID, "p.ftp")
    rc, _, _ = cli("fmt", "--check", write(tmp_path, formatted))
    assert rc == 0
    rc, _, err = cli("fmt", "--check", write(tmp_path, VALID.replace("seed = 13 }", "seed=13}")))
    assert rc == 1 and "would reformat p.ftp" in err
    assert (tmp_path / "p.ftp").read_text().endswith(VALID[-20:])  # --check writes nothing


@pytest.mark.parametrize("argv,target", [(["lint", "p.ftp"], "_collect_paths"),
                                         (["plan", "p.ftp"], "_compile_or_report"),
                                         (["fmt", "--check", "p.ftp"], "_collect_paths")])
def test_internal_error_prints_ice_with_crash_report_and_exits_70(cli, tmp_path, monkeypatch, argv, target):
    write(tmp_path, VALID)
    reports = tmp_path / "reports"
    reports.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(reports))

    def boom(*a, **k):
        raise KeyError("no such thing")

    monkeypatch.setattr(ftdsl.commands, target, boom)
    rc, out, err = cli(*argv)
    assert rc == 70
    assert "internal error" in err
    assert "Traceback" not in err
    m = re.search(r"crash report: (\S+)", err)
    assert m, err
    report = Path(m.group(1))
    assert report.parent == reports and report.is_file()
    text = report.read_text()
    assert "Traceback" in text and "KeyError" in text


def test_internal_error_with_debug_shows_the_traceback(cli, tmp_path, monkeypatch):
    write(tmp_path, VALID)
    monkeypatch.setattr(ftdsl.commands, "_collect_paths", lambda *a, **k: {}["boom"])
    with pytest.raises(KeyError):
        main(["--debug", "lint", "p.ftp"])
    with pytest.raises(KeyError):
        main(["lint", "--debug", "p.ftp"])
    monkeypatch.setenv("FTDSL_DEBUG", "1")
    with pytest.raises(KeyError):
        main(["lint", "p.ftp"])


def test_internal_error_in_a_subprocess(tmp_path):
    (tmp_path / "p.ftp").write_text(VALID)
    code = ("import sys, ftdsl.commands as c\n"
            "def boom(*a, **k): raise KeyError('boom')\n"
            "c._collect_paths = boom\n"
            "from ftdsl.cli import main\n"
            "raise SystemExit(main(sys.argv[1:]))\n")
    env = dict(os.environ, NO_COLOR="1", TMPDIR=str(tmp_path))
    env.pop("FTDSL_DEBUG", None)
    p = subprocess.run([sys.executable, "-c", code, "lint", "p.ftp"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 70
    assert "internal error" in p.stderr and "Traceback" not in p.stderr
    assert list(tmp_path.glob("ftdsl-crash-*.txt"))
    p = subprocess.run([sys.executable, "-c", code, "--debug", "lint", "p.ftp"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode != 70
    assert "Traceback" in p.stderr and "KeyError: 'boom'" in p.stderr


# --- --strict, --select, --ignore --------------------------------------------------------------------

def test_strict_turns_warnings_into_exit_1(cli, tmp_path):
    name = write(tmp_path, WARNINGS)
    rc, _, err = cli("lint", name)
    assert rc == 0 and "warning[FTP220]" in err
    rc, _, _ = cli("lint", "--strict", name)
    assert rc == 1
    rc, _, _ = cli("lint", "--strict", write(tmp_path, VALID, "clean.ftp"))
    assert rc == 0


def test_select_keeps_only_the_given_codes_or_prefixes(cli, tmp_path):
    src = WARNINGS.replace("epochs = 3, batch = 32", "epochs = 3, bacth = 32")
    name = write(tmp_path, src)
    rc, _, err = cli("lint", "--format", "concise", "--select", "FTP220", name)
    assert rc == 0
    assert re.findall(r"\[(FTP\d+)\]", err) == ["FTP220"]
    rc, _, err = cli("lint", "--format", "concise", "--select", "FTP2", name)
    assert rc == 1 and set(re.findall(r"\[(FTP\d+)\]", err)) >= {"FTP201", "FTP220"}


def test_ignore_drops_codes_by_code_or_name(cli, tmp_path):
    name = write(tmp_path, WARNINGS)
    rc, _, err = cli("lint", "--ignore", "unused-block", "--strict", name)
    assert rc == 0, err
    assert "All checks passed." in err
    rc, _, err = cli("lint", "--ignore", "FTP201", write(tmp_path, BROKEN, "b.ftp"))
    assert rc == 0 and "FTP201" not in err  # --ignore is explicit: the error is dropped
    rc, _, err = cli("lint", "--ignore", "FTP3", "--strict", name)
    assert rc == 1 and "FTP220" in err


# --- suppression comments end to end (B16) ------------------------------------------------------------

def test_suppression_comment_silences_lint(cli, tmp_path):
    src = WARNINGS.replace("model spare {", "# ftdsl: ignore[FTP220] -- kept for later\nmodel spare {")
    rc, _, err = cli("lint", "--strict", write(tmp_path, src))
    assert rc == 0, err


def test_unknown_and_unused_suppressions_are_ftp090(cli, tmp_path):
    src = VALID.replace("pipeline sentiment { seed = 13 }", "pipeline sentiment { seed = 13 }  # ftdsl: ignore[FTP777]")
    src = src.replace("param lr = 3e-5", "param lr = 3e-5  # ftdsl: ignore[unused-param]")
    rc, _, err = cli("lint", "--format", "concise", write(tmp_path, src))
    assert rc == 0
    lines = [ln for ln in err.splitlines() if "FTP090" in ln]
    assert len(lines) == 2
    assert "unknown code `FTP777`" in lines[0] and lines[0].startswith("p.ftp:3:")
    assert "matches no diagnostic" in lines[1] and lines[1].startswith("p.ftp:5:")


def test_an_error_cannot_be_suppressed_and_lint_agrees_with_plan(cli, tmp_path):
    name = write(tmp_path, BROKEN.replace("bacth = 32", "bacth = 32  # ftdsl: ignore[FTP201]"))
    lint_rc, _, _ = cli("lint", name)
    plan_rc, _, _ = cli("plan", "--cache", "c", name)
    assert lint_rc == plan_rc == 1


def test_plan_honours_suppression_comments(cli, tmp_path):
    src = WARNINGS.replace("model spare {", "# ftdsl: ignore[FTP220]\nmodel spare {")
    rc, _, err = cli("plan", "--cache", "c", write(tmp_path, src))
    assert rc == 0
    assert "FTP220" not in err


# --- explain -------------------------------------------------------------------------------------

def test_explain_prints_the_long_form(cli):
    rc, out, err = cli("explain", "FTP201")
    assert rc == 0
    assert out.startswith("FTP201 (unknown-attribute)")
    assert "epoch = 3" in out and "epochs = 3" in out


@pytest.mark.parametrize("spelling", ["ftp201", "unknown-attribute", " FTP201 "])
def test_explain_accepts_lowercase_and_names(cli, spelling):
    rc, out, _ = cli("explain", spelling)
    assert rc == 0 and out.startswith("FTP201 ")


def test_explain_unknown_code_is_exit_2_with_a_suggestion(cli):
    rc, out, err = cli("explain", "FTP2011")
    assert rc == 2
    assert out == ""
    assert "unknown diagnostic code" in err and "FTP201" in err


def test_every_registered_code_has_an_explanation(cli):
    for code, c in CODES.items():
        rc, out, _ = cli("explain", code)
        assert rc == 0 and out.startswith(f"{code} ({c.name})") and c.summary in out


def test_version_flag(cli):
    rc, out, _ = cli("--version")
    assert rc == 0 and out.startswith("ftdsl ")


# --- CLI conventions (issue 11 item 7) -----------------------------------------------------------

def _subparsers():
    import argparse

    from ftdsl.cli import build_parser

    p = build_parser()
    return p, next(a for a in p._actions if isinstance(a, argparse._SubParsersAction)).choices


def test_every_option_of_every_command_has_help_and_every_command_examples():
    import argparse

    parser, commands = _subparsers()
    missing = []
    for name, sp in commands.items():
        for a in sp._actions:
            if a.help == argparse.SUPPRESS:
                continue
            if not (a.help or "").strip():
                missing.append(f"ftdsl {name} {'/'.join(a.option_strings) or a.metavar or a.dest}")
        assert sp.epilog and "examples:" in sp.epilog and f"ftdsl {name} " in sp.epilog, name
    assert missing == []


def test_top_help_lists_exit_codes_and_environment(cli):
    rc, out, _ = cli("--help")
    assert rc == 0
    exit_part = out[out.index("exit codes:"):out.index("environment:")]
    for code in ("0", "1", "2", "3", "4", "70", "130"):
        assert re.search(rf"^  {code}\s", exit_part, re.M), code
    for var in ("FTDSL_CACHE", "FTDSL_DEVICE", "FTDSL_DEBUG", "NO_COLOR", "COLUMNS", "GITHUB_STEP_SUMMARY",
                "HF_HUB_OFFLINE"):
        assert re.search(rf"^  {var}", out[out.index("environment:"):], re.M), var
    assert "examples:" in out and 'pip install "ftdsl[train]"' in out


@pytest.mark.parametrize("command", ["lint", "plan", "run", "fmt", "explain", "cache"])
def test_command_help_shows_examples_and_quiet_verbose(cli, command):
    rc, out, _ = cli(command, "--help")
    assert rc == 0
    assert out.startswith(f"usage: ftdsl {command} ")
    assert "-q, --quiet" in out and "-v, --verbose" in out
    assert re.search(rf"^examples:\n  ftdsl {command} ", out, re.M)
    assert re.search(r"^exit: 0", out, re.M)


@pytest.mark.parametrize("argv,command", [
    (["lint", "--bogus", "p.ftp"], "lint"),
    (["plan", "p.ftp", "--nope"], "plan"),
    (["run", "p.ftp", "--nproc"], "run"),          # a flag without its value
    (["cache", "ls", "--older"], "cache"),
    (["fmt", "--check", "--colour", "p.ftp"], "fmt"),
])
def test_a_bad_flag_shows_the_commands_own_usage(cli, argv, command):
    rc, out, err = cli(*argv)
    assert rc == 2 and out == ""
    assert err.startswith(f"usage: ftdsl {command} "), err
    assert f"ftdsl {command}: error: " in err
    assert f"`ftdsl {command} --help`" in err
    assert "COMMAND" not in err  # not the top-level usage


def test_a_bad_flag_before_the_command_shows_the_top_usage(cli):
    rc, _, err = cli("--bogus", "lint", "p.ftp")
    assert rc == 2 and err.startswith("usage: ftdsl ") and "ftdsl: error: unrecognized arguments: --bogus" in err


def test_quiet_and_verbose_lint(cli, tmp_path):
    good, bad = write(tmp_path, VALID, "good.ftp"), write(tmp_path, BROKEN, "bad.ftp")
    assert cli("lint", "-q", good) == (0, "", "")
    rc, _, err = cli("lint", "--quiet", bad)
    assert rc == 1 and "error[FTP201]" in err and "Found 1 error" not in err
    _, _, loud = cli("lint", bad)
    assert loud.rstrip().endswith("Found 1 error.") and err == loud[:loud.rindex("Found 1 error.")]
    rc, _, err = cli("lint", "-v", good, bad)
    assert rc == 1 and re.search(r"^checked 2 files in \d+\.\d\d s$", err, re.M)
    rc, out, _ = cli("lint", "-q", "--format", "json", bad)  # machine output is unchanged
    assert rc == 1 and json.loads(out)["error_count"] == 1


def test_quiet_and_verbose_plan_fmt_cache(cli, tmp_path):
    f = write(tmp_path, VALID)
    rc, out, err = cli("plan", "-q", f)
    assert rc == 0 and re.fullmatch(r"Plan: \d+ to run, 0 to re-run, 0 cached\.\n", out), out
    rc, out, err = cli("plan", "-v", f)
    keys = re.findall(r"^  (\w+\.\w+): new  sha256:([0-9a-f]{64})$", err, re.M)
    assert rc == 0 and len(keys) >= 5 and err.startswith("cache: ")
    rc, js, _ = cli("plan", "--format", "json", f)
    assert {(s["address"], s["cache_key"].removeprefix("sha256:")) for s in json.loads(js)["stages"]} >= set(keys)
    ugly = write(tmp_path, VALID.replace("epochs = 3", "epochs    =  3"), "ugly.ftp")
    rc, out, err = cli("fmt", "-q", ugly)
    assert rc == 0 and (out, err) == ("", "")
    rc, _, err = cli("fmt", "-v", ugly)
    assert rc == 0 and "unchanged ugly.ftp" in err
    rc, _, err = cli("cache", "ls", "-q")
    assert rc == 0 and err == ""
    rc, _, err = cli("cache", "ls")
    assert rc == 0 and err.startswith("0 entries")
    assert cli("explain", "-q", "FTP201")[0] == 0 and cli("explain", "-v", "FTP201")[0] == 0


def test_run_without_the_engine_is_ftp550_naming_the_extra(cli, tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real(name, *a))
    rc, out, err = cli("run", write(tmp_path, VALID))
    assert rc == 2 and out == ""
    assert err.startswith("error[FTP550]: running a stage needs the training engine") and "missing: torch" in err
    assert 'pip install "ftdsl[train]"' in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_output_that_is_not_a_terminal_is_not_wrapped_at_80_columns(tmp_path):
    # stderr is a pipe and COLUMNS is unset: a 300-character line comes out as one line
    code = ("from ftdsl.runtime.progress import Console\n"
            "c = Console()\nc.line('x' * 150 + ' ' + 'y' * 150)\nprint(c.rich.width)")
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stderr.splitlines() == ["x" * 150 + " " + "y" * 150]
    assert int(p.stdout) > 1000
    env["COLUMNS"] = "60"  # an explicit width still wins
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert int(p.stdout) == 60


class _FakeRich:
    def __init__(self):
        self.lines = []

    def print(self, text, **kwargs):
        self.lines.append(str(text))


class _FakeConsole:
    quiet, interactive = False, False

    def __init__(self):
        self.rich = _FakeRich()

    def line(self, text, style=None):
        self.rich.print(text)


def test_long_work_without_steps_prints_still_working_lines_in_a_log(monkeypatch):
    import time

    from ftdsl.runtime.progress import StageReporter

    monkeypatch.setattr(StageReporter, "HEARTBEAT_S", 0.2)
    monkeypatch.setattr(StageReporter, "TICK_S", 0.02)
    console = _FakeConsole()
    r = StageReporter(console, "onnx")
    r.start(None, "export fit (onnx)")
    t0 = time.monotonic()

    def beats():
        return [x for x in console.rich.lines if x.startswith("onnx: still working (export fit (onnx)), ")]

    while len(beats()) < 2 and time.monotonic() - t0 < 10:  # polled: the machine may be loaded
        time.sleep(0.02)
    r.finish()
    elapsed = time.monotonic() - t0
    assert console.rich.lines[0] == "onnx: export fit (onnx)"
    assert 2 <= len(beats()) <= elapsed / 0.2 + 1, console.rich.lines
    lines = console.rich.lines
    n = len(lines)
    time.sleep(0.3)
    assert len(console.rich.lines) == n  # finish() stopped the watcher
    # a stage that counts steps gets no heartbeat between its own lines
    console = _FakeConsole()
    r = StageReporter(console, "fit")
    r.start(100, "train")
    time.sleep(0.5)
    r.finish()
    assert console.rich.lines == ["fit: train (100 steps)"]


def test_interactive_stage_without_start_gets_a_spinner(monkeypatch):
    import time

    from ftdsl.runtime.progress import StageReporter

    monkeypatch.setattr(StageReporter, "SPINNER_AFTER_S", 0.05)
    monkeypatch.setattr(StageReporter, "TICK_S", 0.02)
    started = []
    monkeypatch.setattr(StageReporter, "_start_spinner", lambda self, desc: started.append(desc) or
                        setattr(self, "_progress", None) or setattr(self, "_started", True))
    console = _FakeConsole()
    console.interactive = True
    r = StageReporter(console, "base")  # e.g. loading a pretrained model: no start() call
    t0 = time.monotonic()
    while not started and time.monotonic() - t0 < 10:
        time.sleep(0.02)
    r.finish()
    assert started == ["working"]
    monkeypatch.setattr(StageReporter, "SPINNER_AFTER_S", 30.0)
    quick = StageReporter(console, "cached")  # finishes before the delay (a cache hit): no spinner
    time.sleep(0.1)
    quick.finish()
    assert started == ["working"]
