"""The built wheel works on its own: the grammar ships inside it (pyproject `package-data`), and
`ftdsl` parses and lints from any folder once installed (not only from a source checkout).

The wheel is built from a copy of the sources (so the checkout gets no `build/`), installed with
`--no-deps` into a fresh venv, and the dependencies are borrowed from the test interpreter's
site-packages through a `.pth` file (no network). Everything runs from a folder outside the repo.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

PIPELINE = """\
ftp 1
pipeline p { seed = 1 }
data d { source = sklearn("iris"), split = { train = 0.8, valid = 0.1, test = 0.1 } }
model m { arch = mlp(hidden = [16]), task = classify(labels = 3) }
train t { model = m, data = d, epochs = 1, early_stop = { metric = "valid.accuracy" } }
evaluate e { models = [t], data = d.test }
"""


def _run(cmd, cwd, env=None, timeout=300):
    p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, f"{cmd} failed:\n{p.stdout}\n{p.stderr}"
    return p


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    pytest.importorskip("setuptools")
    pytest.importorskip("wheel")
    src = tmp_path_factory.mktemp("src")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in ("pyproject.toml", "README.md", "LICENSE", "setup.cfg", "setup.py", "MANIFEST.in"):
        if (REPO / name).exists():
            shutil.copy2(REPO / name, src / name)
    shutil.copytree(REPO / "ftdsl", src / "ftdsl", ignore=ignore)
    if (REPO / "grammar").is_dir():
        shutil.copytree(REPO / "grammar", src / "grammar", ignore=ignore)
    out = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
          "-w", str(out), str(src)], cwd=src)
    (whl,) = out.glob("ftdsl-*.whl")
    return whl


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    v = tmp_path_factory.mktemp("venv")
    _run([sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", str(v)], cwd=v)
    py = v / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--no-index", "-q", str(wheel)],
         cwd=v)
    site = Path(_run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=v)
                .stdout.strip())
    # lark, pydantic, rich... come from the test interpreter (appended after the venv's own packages)
    (site / "_ftdsl_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return v


def test_wheel_contains_the_grammar_and_no_tests(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert "ftdsl/grammar/ftp.lark" in names
    assert "ftdsl/syntax/parser.py" in names
    assert not [n for n in names if n.startswith(("tests/", "bench/"))]
    assert any(n.endswith("entry_points.txt") for n in names)


def test_grammar_in_the_wheel_is_the_repo_grammar(wheel):
    shipped = zipfile.ZipFile(wheel).read("ftdsl/grammar/ftp.lark").decode("utf-8")
    assert shipped == (REPO / "ftdsl" / "grammar" / "ftp.lark").read_text(encoding="utf-8")
    if (REPO / "grammar" / "ftp.lark").exists():  # SPEC §3 names grammar/ftp.lark: the two must not drift
        assert shipped == (REPO / "grammar" / "ftp.lark").read_text(encoding="utf-8")


def test_installed_wheel_parses_from_another_folder(venv, tmp_path):
    code = textwrap.dedent(f"""
        import ftdsl, sys
        from ftdsl.syntax.parser import parse
        assert "{REPO}" not in ftdsl.__file__, ftdsl.__file__
        assert ftdsl.__file__.startswith("{venv}"), ftdsl.__file__
        f, diags = parse({PIPELINE!r}, "p.ftp")
        assert f is not None and diags == [], diags
        print(len(f.items), "items")
    """)
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    p = _run([str(venv / "bin" / "python"), "-c", code], cwd=tmp_path, env=env)
    assert p.stdout.strip() == "6 items"


def test_installed_console_script_lints(venv, tmp_path):
    (tmp_path / "p.ftp").write_text(PIPELINE)
    (tmp_path / "bad.ftp").write_text(PIPELINE.replace("epochs = 1", "epochz = 1"))
    env = dict(os.environ, NO_COLOR="1")
    env.pop("PYTHONPATH", None)
    ftdsl = str(venv / "bin" / "ftdsl")
    p = _run([ftdsl, "lint", "p.ftp"], cwd=tmp_path, env=env)
    assert "All checks passed." in p.stderr
    p = subprocess.run([ftdsl, "lint", "bad.ftp"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 1 and "FTP201" in p.stderr and "Traceback" not in p.stderr
