"""Crash-safe single-file writes, and the mapping of OS errors to user-facing resource errors.

A reader of a file written here sees either the old content or the new one, never a prefix:
the bytes go to a temp file in the same directory (same filesystem, so the rename is atomic),
are fsynced, then ``os.replace``d over the target, and the directory is fsynced so the rename
itself survives a power cut. On any exception (including KeyboardInterrupt) the temp is removed.

No torch here: this module is imported by the front end.
"""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ftdsl.errors import ResourceError

__all__ = [
    "write_bytes_atomic",
    "write_text_atomic",
    "write_json_atomic",
    "fsync_dir",
    "as_resource_error",
    "format_bytes",
]

# errno values meaning "no room": ENOSPC (disk full), EFBIG (file size limit, e.g. RLIMIT_FSIZE
# with SIGXFSZ ignored), EDQUOT (quota). EDQUOT does not exist on every platform.
_FULL = {errno.ENOSPC, errno.EFBIG} | ({errno.EDQUOT} if hasattr(errno, "EDQUOT") else set())
# errno values meaning "not allowed to write here".
_DENIED = {errno.EACCES, errno.EPERM, errno.EROFS}

# Non-OSError writers (torch's C++ serializer, safetensors' Rust writer) lose the errno and only
# keep the strerror text in their message, so we also recognize these phrases.
_FULL_TEXT = tuple(os.strerror(e).lower() for e in sorted(_FULL)) + ("os error 28", "os error 27")


def format_bytes(n: int | None) -> str:
    """Human-readable size, e.g. ``1.5 GB``; ``unknown`` for None."""
    if n is None:
        return "unknown"
    size = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{int(size)} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{n} B"  # pragma: no cover - unreachable


def _free_space(path: Path) -> int | None:
    # Walk up to an existing directory: the target (or its parent) may not exist yet.
    p = Path(path)
    for cand in (p, *p.parents):
        try:
            return shutil.disk_usage(cand).free
        except OSError:
            continue
    return None


def _classify(exc: BaseException) -> tuple[str | None, int | None]:
    """Return ("full"|"denied"|None, errno) for ``exc`` or anything in its cause chain."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, OSError) and cur.errno is not None:
            if cur.errno in _FULL:
                return "full", cur.errno
            if cur.errno in _DENIED:
                return "denied", cur.errno
        elif not isinstance(cur, OSError):
            text = str(cur).lower()
            if any(t in text for t in _FULL_TEXT):
                return "full", None
        cur = cur.__cause__ or cur.__context__
    return None, None


def as_resource_error(exc: BaseException, path: str | os.PathLike[str]) -> ResourceError | None:
    """Translate an OS-level write failure into FTP505 (disk full) or FTP508 (not writable).

    Returns None when ``exc`` is not such a failure; the caller then re-raises it unchanged.
    ``path`` names what we were writing (used in the message and to measure free space).
    """
    if isinstance(exc, ResourceError):
        return exc
    kind, err = _classify(exc)
    path = Path(path)
    if kind == "full":
        free = format_bytes(_free_space(path))
        extra = "; the process file-size limit (ulimit -f) was reached" if err == errno.EFBIG else ""
        return ResourceError(
            "FTP505",
            f"disk full while writing {path} ({free} free{extra})",
            hint="free some space (`ftdsl cache gc` removes old cache entries) or point the "
            "cache to another disk with `cache = \"...\"` or FTDSL_CACHE; nothing was "
            "half-written and the previous results are intact",
        )
    if kind == "denied":
        reason = os.strerror(err) if err is not None else "permission denied"
        return ResourceError(
            "FTP508",
            f"cannot write {path}: {reason}",
            hint="make the folder writable (e.g. `chmod u+w`), or choose another location "
            "with `cache = \"...\"`/`out = \"...\"` in the pipeline block or FTDSL_CACHE",
        )
    return None


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """fsync a directory so a rename/creation inside it is durable. Best effort where unsupported."""
    try:
        fd = os.open(os.fspath(path), os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return  # e.g. Windows cannot open directories; nothing more we can do
    try:
        os.fsync(fd)
    except OSError as e:
        # Some filesystems (tmpfs on old kernels, network mounts) reject fsync on a directory.
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


_UMASK: int | None = None


def _file_mode() -> int:
    """0o666 minus the umask: mkstemp creates 0o600 files, but the result should look like a
    normal ``open(..., "w")`` file."""
    global _UMASK
    if _UMASK is None:
        try:
            with open("/proc/self/status", encoding="ascii") as f:
                for line in f:
                    if line.startswith("Umask:"):
                        _UMASK = int(line.split()[1], 8)
                        break
        except OSError:
            pass
        if _UMASK is None:  # no /proc: read it the racy way, once
            _UMASK = os.umask(0o022)
            os.umask(_UMASK)
    return 0o666 & ~_UMASK


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes, *, durable: bool = True) -> None:
    """Atomically replace ``path`` with ``data``.

    ``durable=False`` skips the fsyncs (still atomic against crashes of this process, not against
    power loss): for advisory files such as lock owner records and hash memos.
    Raises ResourceError FTP505 (disk full) / FTP508 (not writable); the old file is untouched.
    """
    path = Path(path)
    parent = path.parent
    tmp: str | None = None
    try:
        fd, tmp = tempfile.mkstemp(dir=parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            f = os.fdopen(fd, "wb")
        except BaseException:
            os.close(fd)
            raise
        with f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), _file_mode())
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
        if durable:
            fsync_dir(parent)
    except BaseException as exc:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        mapped = as_resource_error(exc, path) if isinstance(exc, Exception) else None
        if mapped is not None and mapped is not exc:
            raise mapped from exc
        raise


def write_text_atomic(path: str | os.PathLike[str], text: str, *, durable: bool = True) -> None:
    """Atomically replace ``path`` with ``text`` encoded as UTF-8 (no newline translation)."""
    write_bytes_atomic(path, text.encode("utf-8"), durable=durable)


def write_json_atomic(path: str | os.PathLike[str], obj: Any, *, durable: bool = True) -> None:
    """Atomically write ``obj`` as pretty, key-sorted UTF-8 JSON with a trailing newline."""
    text = json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False) + "\n"
    write_text_atomic(path, text, durable=durable)


def json_safe(x):
    """Plain JSON values: numpy/torch scalars to Python numbers, NaN/Inf to None, keys to str."""
    if isinstance(x, dict):
        return {str(k): json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    if hasattr(x, "item") and callable(x.item) and not isinstance(x, (str, bytes)):
        try:
            x = x.item()
        except (ValueError, RuntimeError):
            return str(x)
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x
