"""Crash reports: `$TMPDIR/ftdsl-crash-<time>-<pid>.txt`, written without following symlinks.

The name is predictable, and `$TMPDIR` is often `/tmp`, shared with every user of the machine:
someone could plant a symlink there that points at a file of yours. The report is therefore
created with ``O_CREAT | O_EXCL | O_NOFOLLOW`` (mode 0600: a traceback can show paths and
data), so an existing name, a symlink included, is never opened; then a fresh random name
(``mkstemp``, which has the same guarantees) is used instead. No torch here.
"""

from __future__ import annotations

import os
import tempfile
import time

__all__ = ["write_crash_report"]

_FLAGS = (os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
          | getattr(os, "O_BINARY", 0))


def write_crash_report(text: str) -> str | None:
    """Write ``text`` to a new crash report file; its path, or None when none could be written."""
    folder = tempfile.gettempdir()
    stem = f"ftdsl-crash-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    path = os.path.join(folder, stem + ".txt")
    try:
        fd = os.open(path, _FLAGS, 0o600)
    except OSError:  # the name is taken (maybe by a planted symlink) or the folder is odd
        try:
            fd, path = tempfile.mkstemp(prefix=stem + "-", suffix=".txt", dir=folder)
        except OSError:
            return None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(text.encode("utf-8", errors="replace"))
    except OSError:
        return None
    return path
