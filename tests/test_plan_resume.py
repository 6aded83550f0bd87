"""`plan` shows a waiting checkpoint (issue 7 item 5): a run killed mid-training leaves a
checkpoint in the stage's work folder; `plan` says "resume from step N of M" (text and JSON,
read from the checkpoint's JSON state without torch), `--detailed-exitcode` still says changes
are pending, and the next `run` resumes from that step. The same for a sweep's trial.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from ftdsl.cli import main

from spec_example import TINY

PAUSE_AT = 8  # TINY checkpoints every 4 steps of 24


def write(folder: Path, extra: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    p = folder / "p.ftp"
    p.write_text(textwrap.dedent(TINY) + textwrap.dedent(extra))
    return p


def env() -> dict:
    e = {**os.environ, "NO_COLOR": "1", "TERM": "dumb", "FTDSL_DEVICE": "cpu"}
    e.pop("FTDSL_DEBUG", None)
    return e


def run_killed_at(p: Path, cache: Path, step: int) -> None:
    """`ftdsl run` in a subprocess, SIGKILLed once training pauses after `step` (checkpointed)."""
    proc = subprocess.Popen([sys.executable, "-m", "ftdsl", "run", str(p), "--cache", str(cache), "--quiet"],
                            env={**env(), "FTDSL_TEST_PAUSE_AT_STEP": str(step)}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 240
    seen = []
    try:
        for line in proc.stdout:
            seen.append(line)
            if f"paused after step {step}" in line:
                break
            assert time.monotonic() < deadline, "".join(seen)
        else:
            pytest.fail("training never paused:\n" + "".join(seen))
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL


def plan(p: Path, cache: Path, capsys, *extra) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["plan", str(p), "--cache", str(cache), *extra])
    return code, capsys.readouterr().out


def run_logged(p: Path, cache: Path, capsys) -> str:
    """`ftdsl run` in this process (torch is already imported here); its log."""
    capsys.readouterr()
    code = main(["run", str(p), "--cache", str(cache)])
    got = capsys.readouterr()
    assert code == 0, got.out + got.err
    return got.out + got.err


def test_plan_shows_resume_then_run_resumes(tmp_path, capsys):
    p, cache = write(tmp_path), tmp_path / "cache"
    run_killed_at(p, cache, PAUSE_AT)

    code, out = plan(p, cache, capsys)
    assert code == 0
    assert f"# train.t will resume from step {PAUSE_AT} of 24 (a checkpoint of an interrupted run): new" in out
    assert "1 resuming from a checkpoint" in out
    assert "# data.d is cached" in out  # stages that finished before the kill are not resumed
    code, out = plan(p, cache, capsys, "--format", "json")
    t = next(s for s in json.loads(out)["stages"] if s["name"] == "t")
    assert t["resume"] == {"step": PAUSE_AT, "of": 24}
    assert t["status"].startswith(f"resume from step {PAUSE_AT} of 24") and t["actions"] == ["create"]
    assert "resume" not in next(s for s in json.loads(out)["stages"] if s["name"] == "d")
    code, _ = plan(p, cache, capsys, "--detailed-exitcode")
    assert code == 2  # changes pending, as for any stage that will run

    log = run_logged(p, cache, capsys)
    assert f"resumed from step {PAUSE_AT}" in log
    code, out = plan(p, cache, capsys, "--detailed-exitcode")
    assert code == 0 and "will resume" not in out and "resuming" not in out  # the checkpoint is gone with the published entry


def test_plan_shows_a_sweep_trial_that_will_resume(tmp_path, capsys):
    p, cache = write(tmp_path), tmp_path / "cache"
    assert main(["run", str(p), "--cache", str(cache), "--quiet"]) == 0  # t is cached
    p = write(tmp_path, """\
        sweep s {
          target = t
          over = { "optimizer.lr" = [0.05, 0.01] }
          metric = "valid.accuracy"
        }
        """)
    run_killed_at(p, cache, PAUSE_AT)  # in trial 1 (trial 2 is t itself)
    code, out = plan(p, cache, capsys)
    assert code == 0
    assert f"trials: 1 of 2 trials cached, 1 to run (1 resumes: trial 1 from step {PAUSE_AT} of 24)" in out
    log = run_logged(p, cache, capsys)
    assert f"resumed from step {PAUSE_AT}" in log and "resuming from step" in log
    rows = json.loads((tmp_path / "out" / "s" / "trials.json").read_text())["trials"]
    assert [r["resumed_from"] for r in rows] == [PAUSE_AT, None]
    assert [r["source"] for r in rows] == ["trained", "cached"]
