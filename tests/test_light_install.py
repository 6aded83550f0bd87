"""The light install (`pip install ftdsl`, no extras) in a fresh virtual environment without torch.

The wheel is built from a copy of the sources, installed with its declared dependencies only (from
the package registry, as a user's `pip install ftdsl` would), and used from a folder outside the
repo: `lint`, `fmt --check` and `plan` work on every example pipeline and say exactly what the full
install (this interpreter) says, and `run` stops with FTP550 naming the `train` extra (exit 2), not
with an ImportError. docs/ci.md gives the package count and size it prints.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ENGINE = ("torch", "numpy", "scikit-learn", "transformers", "onnx", "onnxruntime", "pydantic", "pyarrow")


def _run(cmd, cwd, env=None, timeout=300):
    p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, f"{cmd} failed:\n{p.stdout}\n{p.stderr}"
    return p


@pytest.fixture(scope="module")
def light(tmp_path_factory) -> Path:
    pytest.importorskip("setuptools")
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (REPO / name).exists():
            shutil.copy2(REPO / name, src / name)
    shutil.copytree(REPO / "ftdsl", src / "ftdsl", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    dist = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
          "-w", str(dist), str(src)], cwd=src)
    (whl,) = dist.glob("ftdsl-*.whl")
    v = tmp_path_factory.mktemp("lightvenv")
    _run([sys.executable, "-m", "venv", str(v)], cwd=v)
    # the wheel's own dependencies, nothing else (the registry as the machine's pip is configured)
    _run([str(v / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(whl)],
         cwd=v, timeout=600)
    return v


def _env() -> dict:
    env = dict(os.environ, NO_COLOR="1", TERM="dumb", COLUMNS="100")
    for k in ("PYTHONPATH", "FTDSL_DEBUG", "GITHUB_STEP_SUMMARY", "FTDSL_CACHE"):
        env.pop(k, None)
    return env


def _installed(venv: Path) -> dict[str, str]:
    p = _run([str(venv / "bin" / "python"), "-m", "pip", "list", "--format", "json", "--disable-pip-version-check"],
             cwd=venv)
    return {d["name"].lower(): d["version"] for d in json.loads(p.stdout)}


def test_the_light_install_has_no_engine(light):
    names = _installed(light)
    assert "ftdsl" in names and "lark" in names and "rich" in names and "filelock" in names
    assert not [n for n in ENGINE if n in names], names
    # ftdsl, its three dependencies and theirs (rich: markdown-it-py, mdurl, pygments), pip, setuptools
    assert len(names) <= 12, names
    probe = "import importlib.util as u; print([m for m in ('torch', 'numpy') if u.find_spec(m)])"
    assert _run([str(light / "bin" / "python"), "-c", probe], cwd=light, env=_env()).stdout.strip() == "[]"


def _ftdsl(venv: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(venv / "bin" / "ftdsl"), *args], cwd=cwd, env=_env(), capture_output=True, text=True,
                          timeout=120)


@pytest.fixture
def pipelines(tmp_path) -> Path:
    shutil.copytree(REPO / "pipelines", tmp_path / "pipelines", ignore=shutil.ignore_patterns("out", ".ftdsl"))
    return tmp_path / "pipelines"


def test_lint_fmt_plan_work_without_torch(light, pipelines):
    cwd = pipelines.parent
    r = _ftdsl(light, cwd, "lint", "pipelines/quickstart.ftp")
    assert (r.returncode, r.stderr.strip()) == (0, "All checks passed."), r.stderr
    r = _ftdsl(light, cwd, "fmt", "--check", "pipelines/quickstart.ftp")
    assert r.returncode == 0 and "1 already formatted" in r.stderr, r.stderr
    r = _ftdsl(light, cwd, "plan", "pipelines/quickstart.ftp")
    assert r.returncode == 0, r.stderr
    assert "Plan: 3 to run, 0 to re-run, 0 cached." in r.stdout
    r = _ftdsl(light, cwd, "explain", "FTP550")
    assert r.returncode == 0 and "engine-not-installed" in r.stdout


def test_light_lint_says_what_the_full_install_says(light, pipelines):
    # Every example pipeline: the same diagnostics (JSON) and exit code with and without the engine.
    files = sorted(p.name for p in pipelines.glob("*.ftp"))
    assert len(files) >= 5
    light_r = _ftdsl(light, pipelines, "lint", "--format", "json", *files)
    full_r = subprocess.run([sys.executable, "-m", "ftdsl", "lint", "--format", "json", *files], cwd=pipelines,
                            env=_env(), capture_output=True, text=True, timeout=120)
    assert light_r.returncode == full_r.returncode, (light_r.stdout, full_r.stdout)
    assert json.loads(light_r.stdout) == json.loads(full_r.stdout)
    for f in files:
        assert _ftdsl(light, pipelines, "plan", "--format", "json", f).returncode == full_r.returncode, f


def test_run_without_the_engine_names_the_train_extra(light, pipelines):
    r = _ftdsl(light, pipelines.parent, "run", "pipelines/quickstart.ftp")
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("error[FTP550]: running a stage needs the training engine"), r.stderr
    assert 'pip install "ftdsl[train]"' in r.stderr
    assert "Traceback" not in r.stderr and "ModuleNotFoundError" not in r.stderr
    assert not (pipelines / "out").exists()  # nothing ran, nothing was written
