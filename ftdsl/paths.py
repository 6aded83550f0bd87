"""Path rules shared by the linter (pure string checks) and the writers (filesystem checks).

Output paths written in a pipeline must stay inside the output root. The same rules run twice:
at lint time on the string (FTP303 warning, no filesystem access) and at write time on the
resolved path, because the filesystem can change in between (``out/`` replaced by a symlink).
Lessons from MLflow's CWE-22 fixes: never %-decode (``%2e%2e`` is a literal file name), treat
``\\`` and drive letters as suspicious (they mean something else on Windows), and follow
symlinks before deciding whether a path is inside the root.
"""

from __future__ import annotations

import os
import re
from pathlib import Path, PurePosixPath

from ftdsl.errors import FtdslError, ResourceError, StageError

__all__ = ["resolve_input", "check_output_path", "resolve_output", "require_regular_file", "special_file_kind",
           "open_regular", "read_regular_bytes"]

_DRIVE = re.compile(r"^[A-Za-z]:")


def resolve_input(base_dir: str | os.PathLike[str], p: str | os.PathLike[str]) -> Path:
    """An input path as written in the pipeline, made absolute against ``base_dir``.

    Inputs may be absolute (a dataset elsewhere on disk). Symlinks are not resolved, so
    messages keep the names the user wrote; ``~`` is not expanded (a pipeline must mean the same
    thing for every user). A NUL byte raises StageError FTP303 instead of a raw ValueError.
    """
    s = os.fspath(p)
    if "\x00" in s:
        raise StageError("FTP303", f"input path {s!r} contains a NUL character")
    path = Path(s)
    if not path.is_absolute():
        path = Path(base_dir) / path
    return Path(os.path.abspath(path))


def special_file_kind(mode: int) -> str | None:
    """What a non-regular, non-directory file is ("a FIFO", "a character device", ...), from
    ``st_mode``; None for a regular file or a directory."""
    import stat

    for test, what in ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return what
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    return "not a regular file"


def require_regular_file(path: str | os.PathLike[str], *, what: str = "input file", shown: str | None = None,
                         error: type[FtdslError] = FtdslError, allow_dir: bool = False) -> os.stat_result:
    """``os.stat`` of ``path`` (symlinks followed: a link to a regular file is fine), raising
    ``error`` FTP004 when it is a FIFO, a device, a socket or a folder, so that no caller ever
    opens it: reading ``/dev/zero`` or a FIFO with no writer would never return. Only stat(2) is
    called, which does not block on a FIFO. A missing file raises FileNotFoundError (callers
    report it their own way). ``shown`` is the path as the user wrote it. With ``allow_dir`` a
    folder passes too (callers that report folders themselves)."""
    st = os.stat(path)
    kind = special_file_kind(st.st_mode)
    if kind is None and _is_dir(st.st_mode) and not allow_dir:
        kind = "a folder"
    if kind is not None:
        name = shown if shown is not None else os.fspath(path)
        where = "" if shown is None or os.fspath(path) == shown else f" ({os.fspath(path)})"
        raise error("FTP004", f"{what} `{name}`{where} is {kind}, not a regular file",
                    hint="give the path of a regular file; ftdsl hashes and reads its inputs completely, "
                         "which never ends for a device or a pipe")
    return st


def open_regular(path: str | os.PathLike[str], *, follow: bool = True):
    """A binary file object for reading ``path``, refusing anything but a regular file without
    ever blocking: the open is non-blocking (a FIFO without a writer opens at once) and the
    type is checked on the open descriptor (fstat), so a file swapped for a FIFO or a device
    after a stat() check is caught too. Raises OSError: IsADirectoryError for a folder,
    EINVAL "not a regular file" for a FIFO/device/socket, ELOOP for a symlink when not
    ``follow``."""
    import errno
    import stat

    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    if not follow:
        flags |= getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(path, flags)
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), os.fspath(path))
        if not stat.S_ISREG(mode):
            raise OSError(errno.EINVAL, f"{special_file_kind(mode)}, not a regular file", os.fspath(path))
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular_bytes(path: str | os.PathLike[str], *, follow: bool = True) -> bytes:
    """The content of a regular file (see :func:`open_regular`; OSError otherwise, never a hang)."""
    with open_regular(path, follow=follow) as f:
        return f.read()


def _is_dir(mode: int) -> bool:
    import stat

    return stat.S_ISDIR(mode)


def check_output_path(p: str) -> str | None:
    """Why ``p`` is not a safe relative output path, or None when it is.

    Pure string check for the linter: no filesystem access, no %-decoding. The reason reads
    after the path, e.g. "output path `../x` contains a `..` segment".
    """
    if p == "":
        return "is empty"
    if "\x00" in p:
        return "contains a NUL character"
    if _DRIVE.match(p):
        return "starts with a drive letter"
    if "\\" in p:
        return "contains a backslash (use `/` as the separator)"
    if p.startswith("/"):
        return "is absolute"
    if ".." in PurePosixPath(p).parts:
        return "contains a `..` segment"
    return None


def resolve_output(root: str | os.PathLike[str], p: str | os.PathLike[str]) -> Path:
    """The absolute, symlink-resolved location of output ``p`` under ``root``.

    Raises ResourceError FTP303 when ``p`` has a NUL, a backslash or a drive letter, or when the
    resolved path (symlinks followed, including ``root``'s own components and any that exist
    along ``p``) is outside ``root``. A harmless ``a/../b`` that stays inside is accepted here
    (the linter still warns about it). Call it again right before writing: it re-reads the
    filesystem.
    """
    s = os.fspath(p)
    hint = "write outputs with a relative path inside the output folder, e.g. `\"model.onnx\"`"
    for bad in ("\x00", "\\"):
        if bad in s:
            raise ResourceError("FTP303", f"output path {s!r} {check_output_path(s)}", hint=hint)
    if _DRIVE.match(s):
        raise ResourceError("FTP303", f"output path {s!r} starts with a drive letter", hint=hint)
    root_r = Path(root).resolve()
    target = (root_r / s).resolve()  # strict=False: follows the symlinks that exist
    if not target.is_relative_to(root_r):
        # Lexically inside but resolved outside: a symlink did it; say so, it is not obvious.
        lexical = Path(os.path.normpath(root_r / s))
        how = "escapes through a symlink" if lexical.is_relative_to(root_r) else "points"
        raise ResourceError(
            "FTP303",
            f"output path {s!r} {how} outside the output folder {root_r} (to {target})",
            hint=hint + "; check for symlinks in the output folder",
        )
    return target
