"""Issue 6 defect 4: a full disk while writing `out/` is FTP505, exit 4, no temp folder left, the
previous `out/<stage>/` intact (before the fix: exit 70 with `OSError: [Errno 27]/[Errno 28]` and
`out/.t.tmp-<pid>/` left behind).

The fault is a file-size limit (`RLIMIT_FSIZE`, SIGXFSZ ignored: writes fail with EFBIG) in a
subprocess (reliability notes §7). To hit `out/` and not the cache, the new configuration is
computed first by a pipeline whose `out` is another folder (`out` is not part of the cache key);
the limited run is then fully cached and only copies files to `out/`, and the largest of them,
curves.png, is over the limit.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from spec_example import TINY  # noqa: E402

FAST = TINY.replace("max_steps = 24", "max_steps = 4")


def marker_key(folder: Path) -> str:
    text = (folder / ".ftdsl-key").read_text()
    return json.loads(text)["key"] if text.startswith("{") else text.strip()  # (plain key before the fix)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_file_size_limit_while_writing_out_is_ftp505_and_keeps_the_previous_outputs(tmp_path, ftdsl_cli):
    root = tmp_path
    (root / "p.ftp").write_text(FAST)
    r = ftdsl_cli(["run", "p.ftp", "--cache", ".cache", "--quiet"], cwd=root, timeout=300)
    assert r.returncode == 0, r.stderr
    before = snapshot(root / "out" / "t")
    old_key = marker_key(root / "out" / "t")

    # The new configuration, computed into the cache by a pipeline writing elsewhere.
    new = FAST.replace("param lr = 0.01", "param lr = 0.02")
    (root / "q.ftp").write_text(new.replace("pipeline tiny { seed = 3 }", 'pipeline tiny { seed = 3, out = "other" }'))
    r = ftdsl_cli(["run", "q.ftp", "--cache", ".cache", "--quiet"], cwd=root, timeout=300)
    assert r.returncode == 0, r.stderr
    png = (root / "other" / "t" / "curves.png").stat().st_size
    limit = png // 2
    assert limit > 8192, "curves.png is large enough that the limit leaves room for the small cache files"

    def limit_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    (root / "p.ftp").write_text(new)
    r = ftdsl_cli(["run", "p.ftp", "--cache", ".cache", "--quiet"], cwd=root, timeout=300, preexec_fn=limit_size)
    assert r.returncode == 4, r.stderr
    assert "error[FTP505]" in r.stderr and "file-size limit" in r.stderr and "Traceback" not in r.stderr
    assert str(root / "out" / "t") in r.stderr or "curves.png" in r.stderr
    assert snapshot(root / "out" / "t") == before  # the previous outputs, untouched
    assert marker_key(root / "out" / "t") == old_key
    leftovers = [p.name for p in (root / "out").iterdir() if p.name.startswith(".")]
    assert leftovers == [], leftovers

    # With room again, the same run completes and out/t is the new configuration's.
    r = ftdsl_cli(["run", "p.ftp", "--cache", ".cache", "--quiet"], cwd=root, timeout=300)
    assert r.returncode == 0, r.stderr
    assert snapshot(root / "out" / "t")["curves.png"] == (root / "other" / "t" / "curves.png").read_bytes()
    assert marker_key(root / "out" / "t") != old_key


def test_out_writer_maps_enospc_and_cleans_up(tmp_path, monkeypatch):
    """The writer itself: an ENOSPC in the middle of the copy (as a full disk gives it) is FTP505;
    the temp is removed and the previous folder is intact."""
    import errno

    import pytest

    from ftdsl.errors import ResourceError
    from ftdsl.runtime import outdir

    src = tmp_path / "entry"
    src.mkdir()
    (src / "a.json").write_text("{}")
    (src / "b.bin").write_bytes(os.urandom(4096))
    out = tmp_path / "out"
    assert outdir.publish(out, "s", src, "1" * 64)
    before = snapshot(out / "s")
    (src / "b.bin").write_bytes(os.urandom(8192))
    real = os.fsync
    calls = []

    def full(fd):
        calls.append(fd)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd)

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(ResourceError) as ei:
        outdir.publish(out, "s", src, "2" * 64)
    assert ei.value.code == "FTP505"
    monkeypatch.setattr(os, "fsync", real)
    assert snapshot(out / "s") == before
    assert [p.name for p in out.iterdir()] == ["s"]
