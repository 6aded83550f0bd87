"""Issue 6 defect 3, lint-time half: statically known inputs that are not regular files.

`csv("/dev/zero")`, a data file that is a FIFO, a folder where a file is expected, a `use` of a
FIFO or device and a `pretrained` path that is (or holds) a FIFO used to lint clean, and `plan`
then blocked on the FIFO. Lint now reports FTP004 at the path's span with a hint, using stat(2)
only: nothing is opened, so no call here can block. Every subprocess has a timeout, so a
regression fails instead of hanging the suite. (The run-time half, before any read or hash, is
tests/faults/test_fifo_inputs.py.)
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs POSIX FIFOs")

TIMEOUT = 30
TAIL = """model m { arch = mlp(hidden = [16]), task = classify(labels = 2) }
train t { model = m, data = d, epochs = 1 }
"""


def _lint(ftdsl_cli, cwd: Path, text: str, command: str = "lint"):
    (cwd / "p.ftp").write_text(text)
    try:
        r = ftdsl_cli([command, "p.ftp"], cwd=cwd, timeout=TIMEOUT)
    except subprocess.TimeoutExpired:  # pragma: no cover - the regression this file guards against
        pytest.fail(f"`ftdsl {command}` blocked on a special file")
    assert "Traceback" not in r.stderr, r.stderr
    return r


def _at(stderr: str, code: str, line: int, col: int) -> bool:
    return re.search(rf"error\[{code}\][^\n]*\n\s*--> p\.ftp:{line}:{col}\n", stderr) is not None


@pytest.mark.parametrize("command", ["lint", "plan"])
def test_fifo_data_source_is_ftp004_at_lint_with_span_and_hint(ftdsl_cli, tmp_path, command):
    os.mkfifo(tmp_path / "rows.csv")  # no writer: open() would block forever
    r = _lint(ftdsl_cli, tmp_path, 'data d { source = csv("rows.csv"), label = "y" }\n' + TAIL, command)
    assert r.returncode == 1, r.stderr
    assert _at(r.stderr, "FTP004", 1, 23), r.stderr
    assert "FIFO" in r.stderr and "= help:" in r.stderr


def test_character_device_and_folder_sources_are_ftp004(ftdsl_cli, tmp_path):
    if not os.path.exists("/dev/zero"):
        pytest.skip("no /dev/zero")
    (tmp_path / "rows").mkdir()
    src = ('data d { train = csv("/dev/zero"), valid = csv("rows"), label = "y" }\n' + TAIL)
    r = _lint(ftdsl_cli, tmp_path, src)
    assert r.returncode == 1
    assert _at(r.stderr, "FTP004", 1, 22) and "character device" in r.stderr, r.stderr
    assert _at(r.stderr, "FTP004", 1, 48) and "is a folder" in r.stderr, r.stderr


def test_symlink_to_a_fifo_is_a_fifo(ftdsl_cli, tmp_path):
    os.mkfifo(tmp_path / "pipe")
    (tmp_path / "rows.csv").symlink_to("pipe")
    r = _lint(ftdsl_cli, tmp_path, 'data d { source = csv("rows.csv"), label = "y" }\n' + TAIL)
    assert r.returncode == 1 and "FTP004" in r.stderr and "FIFO" in r.stderr, r.stderr


def test_a_missing_or_regular_source_is_not_ftp004(ftdsl_cli, tmp_path):
    (tmp_path / "rows.csv").write_text("x,y\n1,0\n")
    r = _lint(ftdsl_cli, tmp_path, 'data d { train = csv("rows.csv"), valid = csv("later.csv"), label = "y" }\n'
              + TAIL)
    assert "FTP004" not in r.stderr, r.stderr


@pytest.mark.parametrize("target", ["fifo.ftp", "/dev/zero"])
def test_use_of_a_fifo_or_device_is_ftp004_and_does_not_hang(ftdsl_cli, tmp_path, target):
    if target.startswith("/dev") and not os.path.exists(target):
        pytest.skip("no /dev/zero")
    os.mkfifo(tmp_path / "fifo.ftp")
    r = _lint(ftdsl_cli, tmp_path, f'use "{target}"\n'
              'data d { source = sklearn("digits"), split = { train = 0.8, valid = 0.2 } }\n' + TAIL)
    assert r.returncode == 1
    assert _at(r.stderr, "FTP004", 1, 5), r.stderr
    assert "not a regular file" in r.stderr and "pipe" in r.stderr


def test_linting_a_fifo_itself_does_not_hang(ftdsl_cli, tmp_path):
    os.mkfifo(tmp_path / "p.ftp")
    try:
        r = ftdsl_cli(["lint", "p.ftp"], cwd=tmp_path, timeout=TIMEOUT)
    except subprocess.TimeoutExpired:  # pragma: no cover
        pytest.fail("`ftdsl lint` blocked on a FIFO")
    assert r.returncode == 1 and "FTP004" in r.stderr and "FIFO" in r.stderr, r.stderr


def test_pretrained_path_that_is_or_holds_a_fifo_is_ftp004(ftdsl_cli, tmp_path):
    os.mkfifo(tmp_path / "weights")
    folder = tmp_path / "local-model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    os.mkfifo(folder / "model.safetensors")
    src = ('data d { source = sklearn("digits"), split = { train = 0.8, valid = 0.2 } }\n'
           'model a { pretrained = "weights", task = classify(labels = 10) }\n'
           'model b { pretrained = "local-model", task = classify(labels = 10) }\n'
           'train t { model = a, data = d, epochs = 1 }\ntrain u { model = b, data = d, epochs = 1 }\n')
    r = _lint(ftdsl_cli, tmp_path, src)
    assert r.returncode == 1
    assert _at(r.stderr, "FTP004", 2, 24), r.stderr
    assert _at(r.stderr, "FTP004", 3, 24) and "local-model/model.safetensors" in r.stderr, r.stderr
