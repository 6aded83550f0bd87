"""Issue 6 defect 2: ftdsl touches only folders it can prove are its caches.

`ftdsl cache gc --all --cache DIR` used to treat any folder as a cache: it deleted
`DIR/work/20240101/` (a user folder with a hex-looking name) and created entries/ index/ locks/
quarantine/ in it. Now a cache carries CACHEDIR.TAG + ftdsl-cache.json, and every command that
uses a cache refuses a non-empty folder without them (FTP515, exit 4) and creates nothing in it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

DATA_ONLY = """\
pipeline tiny { seed = 3 }
data d {
  source = synthetic(task = classify, n = 60, features = 4, classes = 2, seed = 1)
  split = { train = 0.7, valid = 0.15, test = 0.15 }
}
"""
TAG_SIGNATURE = "Signature: 8a477f597d28d172789f06886806bc55"


def tree(root: Path) -> dict[str, bytes | None]:
    """Every path under root (relative) -> file content, None for folders."""
    out: dict[str, bytes | None] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            out[os.path.relpath(os.path.join(dirpath, d), root)] = None
        for f in filenames:
            p = os.path.join(dirpath, f)
            out[os.path.relpath(p, root)] = Path(p).read_bytes()
    return out


@pytest.fixture
def user_dir(tmp_path: Path) -> Path:
    d = tmp_path / "home"
    (d / "work" / "20240101").mkdir(parents=True)  # hex-looking name: gc used to delete it
    (d / "work" / "20240101" / "notes.txt").write_text("my notes\n")
    (d / "work" / "deadbeefcafe0123").mkdir()
    (d / "thesis.tex").write_text("\\documentclass{article}\n")
    return d


@pytest.fixture
def pipeline(tmp_path: Path) -> Path:
    p = tmp_path / "p.ftp"
    p.write_text(DATA_ONLY)
    return p


def _refused(r, where: Path) -> None:
    assert r.returncode == 4, (r.returncode, r.stdout, r.stderr)
    assert "error[FTP515]" in r.stderr and str(where) in r.stderr, r.stderr
    assert "= help:" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("args", [
    ["cache", "gc", "--all"],
    ["cache", "gc", "--older-than", "0"],
    ["cache", "gc", "--all", "--dry-run"],
    ["cache", "verify"],
    ["cache", "ls"],
    ["cache", "ls", "--format", "json"],
])
def test_cache_commands_refuse_a_user_folder(ftdsl_cli, user_dir: Path, args) -> None:
    before = tree(user_dir)
    r = ftdsl_cli([*args, "--cache", user_dir], cwd=user_dir.parent, timeout=60)
    _refused(r, user_dir)
    assert tree(user_dir) == before  # nothing deleted, nothing created


@pytest.mark.parametrize("command", ["run", "plan"])
def test_plan_and_run_refuse_a_user_folder_as_cache(ftdsl_cli, user_dir: Path, pipeline: Path, command) -> None:
    before = tree(user_dir)
    r = ftdsl_cli([command, pipeline, "--cache", user_dir], cwd=pipeline.parent, timeout=120)
    _refused(r, user_dir)
    assert tree(user_dir) == before


def test_env_cache_pointing_at_a_user_folder_is_refused(ftdsl_cli, user_dir: Path, tmp_path: Path) -> None:
    before = tree(user_dir)
    r = ftdsl_cli(["cache", "gc", "--all"], cwd=tmp_path, env={"FTDSL_CACHE": str(user_dir)}, timeout=60)
    _refused(r, user_dir)
    assert tree(user_dir) == before


def test_another_programs_tagged_cache_is_refused(ftdsl_cli, tmp_path: Path) -> None:
    d = tmp_path / "other-cache"
    d.mkdir()
    (d / "CACHEDIR.TAG").write_text(TAG_SIGNATURE + "\n# made by some other tool\n")
    (d / "entries").mkdir()
    before = tree(d)
    r = ftdsl_cli(["cache", "gc", "--all", "--cache", d], timeout=60)
    _refused(r, d)
    assert "another program" in r.stderr and tree(d) == before


def test_new_cache_is_tagged_and_gc_works_in_it(ftdsl_cli, tmp_path: Path, pipeline: Path) -> None:
    cache = tmp_path / "empty-cache"
    cache.mkdir()  # an empty folder may become a cache
    r = ftdsl_cli(["run", pipeline, "--cache", cache, "--quiet"], cwd=tmp_path, timeout=120)
    assert r.returncode == 0, r.stderr
    assert (cache / "CACHEDIR.TAG").read_text().startswith(TAG_SIGNATURE + "\n")
    version = json.loads((cache / "ftdsl-cache.json").read_text())
    assert version["tool"] == "ftdsl" and version["format"] == 1
    # A folder gc did not create inside the cache, with a key-looking name, is left alone.
    (cache / "work" / "20240101").mkdir()
    (cache / "work" / "20240101" / "keep.txt").write_text("not ftdsl's")
    r = ftdsl_cli(["cache", "gc", "--all", "--cache", cache], timeout=60)
    assert r.returncode == 0, r.stderr
    assert "1 entry removed" in r.stderr
    assert (cache / "work" / "20240101" / "keep.txt").read_text() == "not ftdsl's"
    assert (cache / "CACHEDIR.TAG").exists() and (cache / "ftdsl-cache.json").exists()


def test_missing_cache_folder_is_not_created_by_read_only_commands(ftdsl_cli, tmp_path: Path, pipeline: Path) -> None:
    cache = tmp_path / "nowhere"
    for args in (["cache", "ls"], ["cache", "verify"], ["cache", "gc", "--all"], ["plan", pipeline]):
        r = ftdsl_cli([*args, "--cache", cache], cwd=tmp_path, timeout=60)
        assert r.returncode == 0, (args, r.stderr)
    assert not cache.exists()


def test_unmarked_cache_of_an_earlier_version_is_adopted(ftdsl_cli, tmp_path: Path, pipeline: Path) -> None:
    cache = tmp_path / "old-cache"
    r = ftdsl_cli(["run", pipeline, "--cache", cache, "--quiet"], cwd=tmp_path, timeout=120)
    assert r.returncode == 0, r.stderr
    # What the previous version left: the same layout without the markers.
    (cache / "CACHEDIR.TAG").unlink()
    (cache / "ftdsl-cache.json").unlink()
    r = ftdsl_cli(["cache", "ls", "--cache", cache], timeout=60)
    assert r.returncode == 0 and "1 entry" in r.stderr, r.stderr
    assert not (cache / "ftdsl-cache.json").exists()  # ls writes nothing
    r = ftdsl_cli(["run", pipeline, "--cache", cache, "--quiet"], cwd=tmp_path, timeout=120)
    assert r.returncode == 0, r.stderr
    version = json.loads((cache / "ftdsl-cache.json").read_text())
    assert version["tool"] == "ftdsl" and "adopted" in version
    assert (cache / "CACHEDIR.TAG").read_text().startswith(TAG_SIGNATURE)
    # ...but an unmarked folder with anything else in it is not a cache.
    (cache / "CACHEDIR.TAG").unlink()
    (cache / "ftdsl-cache.json").unlink()
    (cache / "holiday.jpg").write_bytes(b"\xff\xd8")
    before = tree(cache)
    r = ftdsl_cli(["cache", "gc", "--all", "--cache", cache], timeout=60)
    _refused(r, cache)
    assert "holiday.jpg" in r.stderr and tree(cache) == before
