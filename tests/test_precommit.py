"""CI integration (docs/ci.md): the pre-commit hooks and the composite GitHub Action.

pre-commit: a temporary hook repository holding a copy of this checkout (committed there) and a
temporary project using it through `.pre-commit-config.yaml`; pre-commit builds the hook's
environment with pip from the package registry, as it would for a user, and the test checks that
environment has no torch (the hooks need only the light install).

The action: action.yml parses, every `ftdsl` flag its scripts use exists in the CLI, the install
step installs no extra, and its `run:` steps, executed in bash with the inputs substituted as the
runner would (through `env:`), write a valid SARIF file, GitHub annotations, and the plan in
$GITHUB_STEP_SUMMARY, with lint's exit code as the action's.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")

REPO = Path(__file__).resolve().parents[1]

GOOD = (REPO / "pipelines" / "quickstart.ftp").read_text(encoding="utf-8")
BAD = GOOD.replace("epochs = 12", "epochs = 12, bacth = 3")
UGLY = GOOD.replace("epochs = 12", "epochs    =    12")


def _git(cwd: Path, *args: str) -> str:
    env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@t")
    return subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=True).stdout.strip()


# --- pre-commit ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def precommit_project(tmp_path_factory):
    if shutil.which("pre-commit", path=str(Path(sys.executable).parent)) is None:
        pytest.skip("pre-commit is not installed (pip install -e '.[dev]')")
    hooks = tmp_path_factory.mktemp("hookrepo")
    for name in ("pyproject.toml", "README.md", ".pre-commit-hooks.yaml"):
        shutil.copy2(REPO / name, hooks / name)
    shutil.copytree(REPO / "ftdsl", hooks / "ftdsl", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    _git(hooks, "init", "-q")
    _git(hooks, "add", ".")
    _git(hooks, "commit", "-q", "-m", "hooks")
    rev = _git(hooks, "rev-parse", "HEAD")

    proj = tmp_path_factory.mktemp("project")
    _git(proj, "init", "-q")
    (proj / ".pre-commit-config.yaml").write_text(
        f"repos:\n  - repo: {hooks}\n    rev: {rev}\n    hooks:\n"
        "      - id: ftdsl-lint\n      - id: ftdsl-fmt\n      - id: ftdsl-fmt-check\n", encoding="utf-8")
    (proj / "good.ftp").write_text(GOOD, encoding="utf-8")
    (proj / "bad.ftp").write_text(BAD, encoding="utf-8")
    (proj / "ugly.ftp").write_text(UGLY, encoding="utf-8")
    (proj / "notes.txt").write_text("epochs = = 3\n", encoding="utf-8")  # not a pipeline: no hook sees it
    _git(proj, "add", ".")
    home = tmp_path_factory.mktemp("precommit_home")
    env = dict(os.environ, PRE_COMMIT_HOME=str(home), NO_COLOR="1", TERM="dumb")
    env.pop("PYTHONPATH", None)
    env.pop("VIRTUAL_ENV", None)
    pc = str(Path(sys.executable).parent / "pre-commit")

    def run(hook: str, *files: str) -> subprocess.CompletedProcess:
        return subprocess.run([pc, "run", hook, "--color", "never", "--files", *files], cwd=proj, env=env,
                              capture_output=True, text=True, timeout=600)

    run.project, run.home = proj, home
    return run


def test_precommit_lint_hook_passes_a_good_file_and_fails_a_bad_one(precommit_project):
    r = precommit_project("ftdsl-lint", "good.ftp", "notes.txt")
    assert r.returncode == 0, r.stdout + r.stderr
    r = precommit_project("ftdsl-lint", "good.ftp", "bad.ftp")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "error[FTP201]: unknown attribute `bacth` in `train fit`" in r.stdout
    assert "--> bad.ftp:" in r.stdout and "Traceback" not in r.stdout


def test_precommit_environment_is_the_light_install(precommit_project):
    precommit_project("ftdsl-lint", "good.ftp")  # builds the environment if no other test did
    pythons = list(precommit_project.home.glob("*/py_env-*/bin/python"))
    assert pythons, list(precommit_project.home.iterdir())
    out = subprocess.run([str(pythons[0]), "-m", "pip", "list", "--format", "json", "--disable-pip-version-check"],
                         capture_output=True, text=True, check=True).stdout
    names = {d["name"].lower() for d in json.loads(out)}
    assert {"ftdsl", "lark", "rich", "filelock"} <= names
    assert not names & {"torch", "numpy", "transformers", "onnxruntime", "scikit-learn"}, names


def test_precommit_fmt_hook_rewrites_and_fmt_check_only_reports(precommit_project):
    proj = precommit_project.project
    r = precommit_project("ftdsl-fmt-check", "good.ftp", "ugly.ftp")
    assert r.returncode == 1 and "would reformat ugly.ftp" in r.stdout, r.stdout
    assert (proj / "ugly.ftp").read_text(encoding="utf-8") == UGLY  # --check writes nothing
    r = precommit_project("ftdsl-fmt", "good.ftp", "ugly.ftp")
    assert r.returncode == 1, r.stdout  # pre-commit fails a hook that changed files
    assert "reformatted ugly.ftp" in r.stdout and "files were modified by this hook" in r.stdout
    assert (proj / "ugly.ftp").read_text(encoding="utf-8") == GOOD
    r = precommit_project("ftdsl-fmt", "good.ftp", "ugly.ftp")
    assert r.returncode == 0, r.stdout  # now formatted: the hook passes


def test_hooks_manifest_declares_light_python_hooks():
    hooks = {h["id"]: h for h in yaml.safe_load((REPO / ".pre-commit-hooks.yaml").read_text(encoding="utf-8"))}
    assert set(hooks) == {"ftdsl-lint", "ftdsl-fmt", "ftdsl-fmt-check"}
    for h in hooks.values():
        assert h["language"] == "python" and h["files"] == r"\.ftp$" and "additional_dependencies" not in h
        assert re.fullmatch(h["files"], "x.ftp") is None and re.search(h["files"], "dir/x.ftp")
    assert hooks["ftdsl-lint"]["entry"] == "ftdsl lint"
    assert hooks["ftdsl-fmt-check"]["entry"] == "ftdsl fmt --check"


# --- the GitHub Action ---------------------------------------------------------------------------

ACTION = yaml.safe_load((REPO / "action.yml").read_text(encoding="utf-8"))
EXPR = re.compile(r"\$\{\{\s*(.+?)\s*\}\}")


def _steps() -> dict[str, dict]:
    return {s.get("id", s.get("name")): s for s in ACTION["runs"]["steps"]}


def test_action_is_a_composite_action_with_the_documented_inputs():
    assert ACTION["runs"]["using"] == "composite"
    assert {"paths", "plan", "strict", "upload-sarif", "install"} <= set(ACTION["inputs"])
    steps = _steps()
    upload = [s for s in steps.values() if str(s.get("uses", "")).startswith("github/codeql-action/upload-sarif@")]
    assert len(upload) == 1 and upload[0]["with"]["sarif_file"] == "${{ steps.sarif.outputs.sarif-file }}"
    for s in steps.values():  # inputs reach scripts through env, never spliced into the script text
        assert "run" not in s or "inputs." not in s["run"], s["run"]
    install = steps["install"]["run"]
    assert "pip install" in install and "[" not in install  # the light install: no extra


def test_action_scripts_use_only_real_flags():
    from ftdsl.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command").choices
    seen = 0
    for s in _steps().values():
        for line in s.get("run", "").splitlines():
            m = re.search(r"\bftdsl (\w+)(.*)", line)
            if not m or line.strip().startswith("#"):
                continue
            assert m.group(1) in sub, f"no command `ftdsl {m.group(1)}` ({line.strip()})"
            opts = {o for a in sub[m.group(1)]._actions for o in a.option_strings}
            for flag in re.findall(r"(?<![\w-])(--?[a-z][\w-]*)", m.group(2)):
                assert flag in opts, f"`ftdsl {m.group(1)}` has no flag {flag} ({line.strip()})"
                seen += 1
    assert seen >= 3


def _run_step(step: dict, values: dict, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    def sub(text: str) -> str:
        def one(m):
            assert m.group(1) in values, f"the test does not know `{m.group(1)}`"
            return values[m.group(1)]
        return EXPR.sub(one, str(text))

    step_env = dict(env, **{k: sub(v) for k, v in (step.get("env") or {}).items()})
    assert not EXPR.search(step["run"]), step["run"]
    return subprocess.run(["bash", "-eo", "pipefail", "-c", step["run"]], cwd=cwd, env=step_env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture
def action_env(tmp_path):
    work = tmp_path / "work"
    (work / "pipelines").mkdir(parents=True)
    (work / "pipelines" / "good.ftp").write_text(GOOD, encoding="utf-8")
    temp = tmp_path / "runner_temp"
    temp.mkdir()
    env = dict(os.environ, NO_COLOR="1", TERM="dumb", GITHUB_STEP_SUMMARY=str(tmp_path / "summary.md"),
               GITHUB_OUTPUT=str(tmp_path / "output.txt"), FTDSL_CACHE=str(tmp_path / "cache"),
               PATH=str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""))
    env.pop("FTDSL_DEBUG", None)
    values = {"inputs." + k: str(v.get("default", "")) for k, v in ACTION["inputs"].items()}
    values.update({"runner.temp": str(temp), "github.action_path": str(REPO),
                   "inputs.paths": "pipelines/", "inputs.plan": "pipelines/good.ftp"})
    return work, env, values, tmp_path


def test_action_steps_write_sarif_annotations_and_the_plan_summary(action_env):
    work, env, values, tmp = action_env
    steps = _steps()
    r = _run_step(steps["sarif"], values, work, env)
    assert r.returncode == 0, r.stderr
    sarif_file = (tmp / "output.txt").read_text(encoding="utf-8").strip().split("=", 1)[1]
    sarif = json.loads(Path(sarif_file).read_text(encoding="utf-8"))
    assert sarif["version"] == "2.1.0" and sarif["runs"][0]["results"] == []
    r = _run_step(steps["plan"], values, work, env)
    assert r.returncode == 0, r.stderr
    summary = (tmp / "summary.md").read_text(encoding="utf-8")
    assert "### ftdsl plan: `pipelines/good.ftp`" in summary and "| `fit` | train |" in summary
    r = _run_step(steps["lint"], values, work, env)
    assert r.returncode == 0 and r.stdout == "", r.stdout + r.stderr


def test_action_fails_with_annotations_on_a_broken_pipeline(action_env):
    work, env, values, tmp = action_env
    (work / "pipelines" / "bad.ftp").write_text(BAD, encoding="utf-8")
    steps = _steps()
    r = _run_step(steps["sarif"], values, work, env)
    assert r.returncode == 0, r.stderr  # exit 1 (errors found) still uploads the SARIF
    sarif_file = (tmp / "output.txt").read_text(encoding="utf-8").strip().split("=", 1)[1]
    results = json.loads(Path(sarif_file).read_text(encoding="utf-8"))["runs"][0]["results"]
    assert [x["ruleId"] for x in results] == ["FTP201"]
    r = _run_step(steps["lint"], values, work, env)
    assert r.returncode == 1
    assert re.search(r"^::error file=pipelines/bad\.ftp,line=\d+.*::unknown attribute `bacth`", r.stdout, re.M), r.stdout
    values["inputs.paths"] = "no/such/folder"
    r = _run_step(steps["sarif"], values, work, env)
    assert r.returncode == 2  # a usage error fails the SARIF step itself
