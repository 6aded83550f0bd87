"""Issue 6 defect 3 (run-time half): inputs that are FIFOs or devices never hang `plan` or `run`.

`csv("/dev/zero")` or a `mkfifo f.csv` used to hang `plan` (which hashes every input) and `run`.
Every input is now stat'ed before it is opened and refused with FTP004 (exit 1 at plan time).
Each subprocess has a timeout, so a regression fails instead of hanging the suite.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs POSIX FIFOs")

TIMEOUT = 30


def _pipeline(tmp_path: Path, source: str) -> Path:
    p = tmp_path / "p.ftp"
    p.write_text(f"""\
pipeline fifo {{ seed = 1 }}
data d {{
  source = csv("{source}")
  label = "label"
}}
""")
    return p


def _no_hang(ftdsl_cli, args, cwd: Path):
    try:
        return ftdsl_cli(args, cwd=cwd, timeout=TIMEOUT)
    except subprocess.TimeoutExpired:  # pragma: no cover - the regression this file guards against
        pytest.fail(f"`ftdsl {' '.join(map(str, args))}` hung on a FIFO/device input")


def _refused(r, shown: str) -> None:
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    assert "FTP004" in r.stderr and shown in r.stderr, r.stderr
    assert "not a regular file" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("command", ["plan", "run"])
def test_fifo_data_source_is_refused_not_read(ftdsl_cli, tmp_path: Path, command: str) -> None:
    os.mkfifo(tmp_path / "f.csv")  # no writer: open() would block forever
    p = _pipeline(tmp_path, "f.csv")
    r = _no_hang(ftdsl_cli, [command, p, "--cache", tmp_path / "cache"], tmp_path)
    _refused(r, "f.csv")
    assert "FIFO" in r.stderr
    assert not (tmp_path / "cache").exists()  # refused before anything was written


@pytest.mark.parametrize("command", ["plan", "run"])
def test_dev_zero_data_source_is_refused_not_read(ftdsl_cli, tmp_path: Path, command: str) -> None:
    if not os.path.exists("/dev/zero"):
        pytest.skip("no /dev/zero")
    p = _pipeline(tmp_path, "/dev/zero")
    r = _no_hang(ftdsl_cli, [command, p, "--cache", tmp_path / "cache"], tmp_path)
    _refused(r, "/dev/zero")
    assert "character device" in r.stderr


def test_symlink_to_a_fifo_is_refused(ftdsl_cli, tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe")
    (tmp_path / "data.csv").symlink_to(tmp_path / "pipe")
    p = _pipeline(tmp_path, "data.csv")
    r = _no_hang(ftdsl_cli, ["plan", p, "--cache", tmp_path / "cache"], tmp_path)
    _refused(r, "data.csv")


def test_fifo_inside_a_pretrained_folder_is_refused(ftdsl_cli, tmp_path: Path) -> None:
    model = tmp_path / "local-model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    os.mkfifo(model / "model.safetensors")
    p = tmp_path / "p.ftp"
    p.write_text('pipeline m { seed = 1 }\nmodel m {\n  pretrained = "local-model"\n  task = classify(labels = 2)\n}\n')
    r = _no_hang(ftdsl_cli, ["plan", p, "--cache", tmp_path / "cache"], tmp_path)
    _refused(r, "model.safetensors")


_READ_CHILD = r"""
import sys
from pathlib import Path
from ftdsl.errors import StageError
from ftdsl.stages import _sources as S
for reader in (S.read_csv, S.read_jsonl, S.read_parquet):
    try:
        reader(Path(sys.argv[1]), "f.csv")
    except StageError as e:
        print(e.code, e.message)
"""


def test_readers_refuse_a_fifo_that_appears_after_planning(tmp_path: Path) -> None:
    # The file can be swapped for a FIFO between `plan` and the data stage's read.
    fifo = tmp_path / "f.csv"
    os.mkfifo(fifo)
    r = subprocess.run([sys.executable, "-c", _READ_CHILD, str(fifo)], capture_output=True, text=True,
                       timeout=TIMEOUT, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 3 and all(ln.startswith("FTP004 data file `f.csv`") for ln in lines), r.stdout


def test_fifos_planted_in_a_cache_never_hang_it(ftdsl_cli, tmp_path: Path) -> None:
    from ftdsl.runtime.cache import Cache
    from ftdsl.runtime.hashing import hash_key

    cache = Cache(tmp_path / "cache")
    key = hash_key({"fifo": 1})
    entry = cache.publish(key, lambda d: (d / "w.bin").write_bytes(b"w" * 64), {"stage": "d", "kind": "data"})
    os.chmod(entry / "manifest.json", 0o644)
    (entry / "manifest.json").unlink()
    os.mkfifo(entry / "manifest.json")  # reading it would block forever
    os.mkfifo(cache.root / "filehash.json")
    r = _no_hang(ftdsl_cli, ["cache", "ls", "--cache", cache.root], tmp_path)
    assert r.returncode == 0 and "1 entry" in r.stderr, r.stderr
    r = _no_hang(ftdsl_cli, ["cache", "verify", "--cache", cache.root], tmp_path)
    assert r.returncode == 1 and "corrupt" in r.stdout and "not a regular file" in r.stdout, (r.stdout, r.stderr)
    # A FIFO where the cache's version file should be: not an ftdsl cache, refused without reading.
    other = tmp_path / "other"
    other.mkdir()
    os.mkfifo(other / "ftdsl-cache.json")
    r = _no_hang(ftdsl_cli, ["cache", "gc", "--all", "--cache", other], tmp_path)
    assert r.returncode == 4 and "FTP515" in r.stderr, r.stderr
