"""Every example pipeline in pipelines/ is one a user can copy: it lints clean under --strict,
says in its opening comment how to run it, plans without errors, and reads only data that ships
with the repository or with a package.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from ftdsl.cli import main
from ftdsl.frontend import compile_pipeline

ROOT = Path(__file__).resolve().parents[1]
PIPELINES = ROOT / "pipelines"
FILES = sorted(PIPELINES.glob("*.ftp"))
IDS = [p.name for p in FILES]


def opening_comment(text: str) -> str:
    """The comment lines at the top of a file (before the first line that is not a comment)."""
    lines = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        lines.append(line)
    return "\n".join(lines)


def test_there_are_examples():
    names = {p.name for p in FILES}
    expected = {"image_cnn.ftp", "text_finetune.ftp", "compress.ftp", "distill.ftp", "sweep.ftp", "lora.ftp",
                "text_scratch.ftp"}
    assert expected <= names, f"missing examples: {sorted(expected - names)}"


@pytest.mark.parametrize("path", FILES, ids=IDS)
def test_lints_clean_strict(path, capsys):
    rc = main(["lint", "--strict", str(path)])
    err = capsys.readouterr().err
    assert rc == 0, err


@pytest.mark.parametrize("path", FILES, ids=IDS)
def test_no_diagnostics_at_all(path):
    c = compile_pipeline(path)
    assert c.program is not None
    assert [f"{d.code} {d.message}" for d in c.diagnostics] == []


@pytest.mark.parametrize("path", FILES, ids=IDS)
def test_opens_with_its_command(path):
    head = opening_comment(path.read_text(encoding="utf-8"))
    assert head, f"{path.name} must open with a comment block that says what it does"
    assert re.search(rf"\bftdsl (run|plan) pipelines/{re.escape(path.name)}\b", head), \
        f"{path.name}: the opening comment must name its command, e.g. `ftdsl run pipelines/{path.name}`"


@pytest.mark.parametrize("path", FILES, ids=IDS)
def test_plan_json(path, tmp_path, capsys):
    rc = main(["plan", "--format", "json", "--device", "cpu", "--cache", str(tmp_path / "cache"), str(path)])
    out = capsys.readouterr().out
    assert rc == 0
    plan = json.loads(out)
    names = [s["name"] for s in plan["stages"]]
    assert names and len(names) == len(set(names))
    assert all(s["status"] for s in plan["stages"])
    program = compile_pipeline(path).program
    assert set(names) == set(program.blocks)


@pytest.mark.parametrize("path", FILES, ids=IDS)
def test_data_ships_with_the_repo(path):
    """Data files named by an example exist under pipelines/, and nothing points outside it."""
    text = path.read_text(encoding="utf-8")
    assert "/work/shared" not in text
    for rel in re.findall(r'(?:csv|jsonl|parquet)\(\s*"([^"]+)"', text):
        target = (PIPELINES / rel).resolve()
        assert target.is_file(), f"{path.name} reads {rel}, which does not exist"
        assert PIPELINES.resolve() in target.parents


def test_example_data_is_small():
    data = PIPELINES / "data"
    total = sum(p.stat().st_size for p in data.rglob("*") if p.is_file()) if data.exists() else 0
    assert total <= 200 * 1024, f"pipelines/data holds {total} bytes; keep it under 200 KB"
