"""Issue 6 defect 6: the crash report (`$TMPDIR/ftdsl-crash-<time>-<pid>.txt`, a predictable name)
must not follow a symlink planted there. Before the fix it was opened with `write_text`, which
follows the link and overwrote (or created) the file it points to.

The internal error is injected in a subprocess (as tests/test_cli.py does): the program plants
symlinks at the names its own pid would use over the next seconds, then makes a function raise
KeyError and runs `ftdsl.cli.main` (exit 70). Two places write reports: the CLI's last line of
defence, and the executor when a stage raises an unexpected exception.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

PLANT = """
import os, sys, time
victim, tmp = sys.argv[1], sys.argv[2]
now = time.time()
for dt in range(-1, 30):  # this second and the next ones: the run writes its report within them
    name = time.strftime('%Y%m%d-%H%M%S', time.localtime(now + dt))
    os.symlink(victim, os.path.join(tmp, f"ftdsl-crash-{name}-{os.getpid()}.txt"))
sys.argv = [sys.argv[0]] + sys.argv[3:]
"""

BREAK_CLI = """
import ftdsl.commands as c
def boom(*a, **k): raise KeyError("boom")
c._collect_paths = boom
"""

BREAK_STAGE = """
import ftdsl.runtime.executor as ex
from ftdsl.stages import STAGES
real = ex.load_object
def boom(*a, **k): raise KeyError("surprise")
ex.load_object = lambda spec: boom if spec == STAGES["data"] else real(spec)
"""

MAIN = """
from ftdsl.cli import main
raise SystemExit(main(sys.argv[1:]))
"""


def crash(tmp_path: Path, breaker: str, victim: Path, args: list[str]) -> tuple[subprocess.CompletedProcess, Path]:
    from conftest import _env

    reports = tmp_path / "tmpdir"
    reports.mkdir()
    env = _env({"TMPDIR": str(reports)})
    env.pop("FTDSL_DEBUG", None)
    r = subprocess.run([sys.executable, "-c", PLANT + breaker + MAIN, str(victim), str(reports), *args],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    return r, reports


def check(r: subprocess.CompletedProcess, reports: Path, text: str) -> None:
    assert r.returncode == 70, r.stderr
    assert "internal error" in r.stderr and "Traceback" not in r.stderr
    m = re.search(r"crash report: (\S+)", r.stderr)
    assert m, r.stderr
    report = Path(m.group(1))
    assert report.parent == reports
    st = os.lstat(report)
    assert stat.S_ISREG(st.st_mode), "the report is a new regular file, not the planted link"
    assert stat.S_IMODE(st.st_mode) == 0o600
    body = report.read_text()
    assert "Traceback" in body and text in body
    assert any(p.is_symlink() for p in reports.iterdir()), "the planted links are still there, untouched"


@pytest.mark.parametrize("existing", [True, False], ids=["victim-exists", "dangling-link"])
def test_cli_crash_report_does_not_follow_a_planted_symlink(tmp_path, existing):
    (tmp_path / "p.ftp").write_text("data d { source = sklearn(\"iris\") }\n")
    victim = tmp_path / "victim.txt"
    if existing:
        victim.write_text("do not overwrite\n")
    r, reports = crash(tmp_path, BREAK_CLI, victim, ["lint", "p.ftp"])
    check(r, reports, "KeyError: 'boom'")
    if existing:
        assert victim.read_text() == "do not overwrite\n"
    else:
        assert not victim.exists(), "a dangling link must not create its target"


def test_stage_crash_report_does_not_follow_a_planted_symlink(tmp_path):
    (tmp_path / "p.ftp").write_text(
        "data d { source = synthetic(task = classify, n = 40, features = 4, classes = 2, seed = 1) }\n")
    victim = tmp_path / "victim.txt"
    victim.write_text("do not overwrite\n")
    r, reports = crash(tmp_path, BREAK_STAGE, victim, ["run", "p.ftp", "--cache", ".cache", "--quiet"])
    assert "internal error in stage `d`" in r.stderr, r.stderr
    check(r, reports, "KeyError: 'surprise'")
    assert victim.read_text() == "do not overwrite\n"


def test_crash_report_without_a_plant_uses_the_documented_name(tmp_path):
    """The usual case keeps the documented, predictable name (people look for it)."""
    from conftest import _env

    (tmp_path / "p.ftp").write_text("data d { source = sklearn(\"iris\") }\n")
    reports = tmp_path / "tmpdir"
    reports.mkdir()
    env = _env({"TMPDIR": str(reports)})
    r = subprocess.run([sys.executable, "-c", "import sys\n" + BREAK_CLI + MAIN, "lint", "p.ftp"], cwd=tmp_path,
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 70
    (report,) = reports.iterdir()
    assert re.fullmatch(rf"ftdsl-crash-\d{{8}}-\d{{6}}-\d+\.txt", report.name)
    assert stat.S_IMODE(report.stat().st_mode) == 0o600
