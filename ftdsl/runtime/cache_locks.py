"""Cross-process locks of the cache: ``flock`` through filelock (released by the kernel when the
holder dies, even by SIGKILL; local disks only), with an advisory owner record beside each lock
so FTP504 can name who holds it. filelock is imported lazily (~60 ms). No torch here."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Iterator

from ftdsl.errors import FtdslError, ResourceError
from ftdsl.paths import read_regular_bytes
from ftdsl.runtime.atomic import as_resource_error, write_json_atomic
from ftdsl.runtime.run_index import now_iso

__all__ = ["filelock", "locked", "try_lock", "describe_owner", "raise_mapped"]


def filelock():
    import filelock as _fl  # lazy: ~60 ms import, not needed by lint/plan

    return _fl


def raise_mapped(exc: BaseException, path: Path) -> None:
    """Raise ``exc`` as the ResourceError it means (disk full, not writable), else as is."""
    mapped = as_resource_error(exc, path)
    if mapped is not None and mapped is not exc:
        raise mapped from exc
    raise exc


@contextlib.contextmanager
def locked(path: Path, what: str, timeout: float | None) -> Iterator[None]:
    """Hold the flock at ``path`` (waiting up to ``timeout`` s; None or negative: forever), then
    ResourceError FTP504 naming the holder; write an owner record beside it."""
    fl = filelock()
    t = -1 if timeout is None or timeout < 0 else timeout
    lk = fl.FileLock(str(path), timeout=t, is_singleton=False)
    owner = path.with_suffix(".owner.json")
    try:
        lk.acquire()
    except fl.Timeout:
        raise ResourceError(
            "FTP504",
            f"{what} is locked by {describe_owner(owner)}",
            hint=f"waited {t:g} s for another ftdsl run computing it; let it finish or "
            "raise --lock-timeout. The lock is released by the kernel when its holder "
            "exits, so it belongs to a live process (local disks only, not NFS)",
        ) from None
    except OSError as exc:
        raise_mapped(exc, path)
    try:
        import shlex
        import socket

        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": now_iso(),
            "command": shlex.join(sys.argv)[:300],
        }
        with contextlib.suppress(OSError, FtdslError):
            write_json_atomic(owner, record, durable=False)  # advisory only
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(owner)
        lk.release()


def try_lock(path: Path):
    """Non-blocking lock at ``path``: the acquired FileLock, or None if someone holds it (or the
    lock cannot even be opened, e.g. a read-only cache)."""
    fl = filelock()
    lk = fl.FileLock(str(path), is_singleton=False)
    try:
        lk.acquire(blocking=False)
    except fl.Timeout:
        return None
    return lk


def describe_owner(owner: Path) -> str:
    try:
        rec = json.loads(read_regular_bytes(owner, follow=False))
        return (
            f"pid {rec['pid']} on host {rec['host']} since {rec['since']} "
            f"(command {rec['command']})"
        )
    except (OSError, ValueError, KeyError, TypeError):
        return "another process (no owner record)"
