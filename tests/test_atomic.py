"""ftdsl.runtime.atomic: crash-safe single-file writes and OS-error mapping (reliability §2, §7)."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from ftdsl.errors import ResourceError
from ftdsl.runtime import atomic
from ftdsl.runtime.atomic import (
    as_resource_error,
    write_bytes_atomic,
    write_json_atomic,
    write_text_atomic,
)

REPO = Path(__file__).resolve().parents[1]


def _leftovers(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir() if p.name.endswith(".tmp"))


def _umask() -> int:
    old = os.umask(0o022)
    os.umask(old)
    return old


def _root_bypasses_permissions(d: Path) -> bool:
    """True if chmod 0555 does not stop us writing (running as root): then skip."""
    os.chmod(d, 0o555)
    try:
        probe = d / ".probe"
        probe.write_bytes(b"")
        probe.unlink()
        return True
    except PermissionError:
        return False
    finally:
        os.chmod(d, 0o755)


def test_write_new_and_replace(tmp_path: Path) -> None:
    p = tmp_path / "a.bin"
    write_bytes_atomic(p, b"one")
    assert p.read_bytes() == b"one"
    write_bytes_atomic(p, b"two")
    assert p.read_bytes() == b"two"
    # mkstemp makes 0600 files; the result should look like an ordinary file.
    assert p.stat().st_mode & 0o777 == 0o666 & ~_umask()
    assert _leftovers(tmp_path) == []


def test_text_and_json(tmp_path: Path) -> None:
    write_text_atomic(tmp_path / "t.txt", "héllo\r\n")
    assert (tmp_path / "t.txt").read_bytes() == "héllo\r\n".encode()
    write_json_atomic(tmp_path / "j.json", {"b": 1, "a": [1.5, "é"]}, durable=False)
    assert json.loads((tmp_path / "j.json").read_text(encoding="utf-8")) == {"a": [1.5, "é"], "b": 1}
    with pytest.raises(ValueError):
        write_json_atomic(tmp_path / "nan.json", {"x": float("nan")})
    assert not (tmp_path / "nan.json").exists()
    assert _leftovers(tmp_path) == []


def test_enospc_at_replace_keeps_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = tmp_path / "state.json"
    p.write_text("old")

    def full(*a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(atomic.os, "replace", full)
    with pytest.raises(ResourceError) as ei:
        write_text_atomic(p, "new")
    assert ei.value.code == "FTP505"
    assert str(p) in ei.value.message and "free" in ei.value.message
    assert p.read_text() == "old"
    assert _leftovers(tmp_path) == []


def test_keyboard_interrupt_removes_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(atomic.os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_bytes_atomic(tmp_path / "x", b"data")
    assert list(tmp_path.iterdir()) == []


def test_permission_denied_is_ftp508(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def denied(*a, **k):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(tmp_path))

    monkeypatch.setattr(atomic.tempfile, "mkstemp", denied)
    with pytest.raises(ResourceError) as ei:
        write_bytes_atomic(tmp_path / "x", b"data")
    assert ei.value.code == "FTP508"
    assert ei.value.hint


def test_readonly_dir_real(tmp_path: Path) -> None:
    d = tmp_path / "ro"
    d.mkdir()
    if _root_bypasses_permissions(d):
        pytest.skip("running as root: chmod does not restrict writes")
    os.chmod(d, 0o555)
    try:
        with pytest.raises(ResourceError) as ei:
            write_bytes_atomic(d / "x", b"data")
        assert ei.value.code == "FTP508"
    finally:
        os.chmod(d, 0o755)


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full")
def test_dev_full_maps_to_ftp505() -> None:
    with pytest.raises(OSError) as ei:
        with open("/dev/full", "wb") as f:
            f.write(b"x" * 10)
            f.flush()
    mapped = as_resource_error(ei.value, "/dev/full")
    assert mapped is not None and mapped.code == "FTP505"


def test_wrapped_messages_are_recognized() -> None:
    # torch / safetensors raise their own types with the strerror text only.
    e = RuntimeError("I/O error: File too large (os error 27)")
    assert as_resource_error(e, "/x").code == "FTP505"
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as inner:
            raise RuntimeError("save failed") from inner
    except RuntimeError as outer:
        assert as_resource_error(outer, "/x").code == "FTP505"
    assert as_resource_error(ValueError("bad value"), "/x") is None
    assert as_resource_error(OSError(errno.ENOENT, "nope"), "/x") is None


_FSIZE_CHILD = r"""
import sys
from ftdsl.errors import ResourceError
from ftdsl.runtime.atomic import write_bytes_atomic
try:
    write_bytes_atomic(sys.argv[1], b"y" * (1 << 20))
except ResourceError as e:
    print(e.code, e.message)
else:
    print("no error")
"""


def _limit_fsize(limit: int):
    def pre() -> None:
        import resource
        import signal

        # SIGXFSZ would kill the child; ignored, write() fails with EFBIG instead.
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return pre


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX rlimits")
def test_rlimit_fsize_subprocess(tmp_path: Path) -> None:
    p = tmp_path / "big.bin"
    p.write_bytes(b"old")
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1"}
    out = subprocess.run(
        [sys.executable, "-c", _FSIZE_CHILD, str(p)],
        capture_output=True,
        text=True,
        env=env,
        preexec_fn=_limit_fsize(64 * 1024),
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("FTP505 disk full while writing"), out.stdout
    assert p.read_bytes() == b"old"
    assert _leftovers(tmp_path) == []


def test_fsync_dir_tolerates_missing_support(tmp_path: Path) -> None:
    atomic.fsync_dir(tmp_path)  # a real dir: fine
    atomic.fsync_dir(tmp_path / "missing")  # cannot open: silently nothing


def test_format_bytes() -> None:
    assert atomic.format_bytes(None) == "unknown"
    assert atomic.format_bytes(12) == "12 B"
    assert atomic.format_bytes(1_500_000) == "1.5 MB"


def test_no_temp_in_other_dirs(tmp_path: Path) -> None:
    # The temp lives beside the target (same filesystem), never in the global temp dir.
    before = set(os.listdir(tempfile.gettempdir()))
    write_bytes_atomic(tmp_path / "z", b"1")
    after = set(os.listdir(tempfile.gettempdir()))
    assert not {n for n in after - before if n.startswith(".z.")}
