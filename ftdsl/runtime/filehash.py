"""Content hashes of the files a pipeline reads, memoized by their stat (``<cache>/filehash.json``).

Every path is checked with stat(2) before it is opened (``ftdsl.paths.require_regular_file``): a
FIFO, a device or a socket is refused with FTP004 instead of hashing forever (``/dev/zero``) or
blocking on a pipe with no writer. No torch here.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable

from ftdsl import paths as _paths
from ftdsl.errors import FtdslError
from ftdsl.runtime import hashing
from ftdsl.runtime.atomic import write_json_atomic

__all__ = ["FileHasher", "MEMO_MAX"]

MEMO_MAX = 100_000
FORMAT = 1


def _stat_sig(st: os.stat_result) -> dict[str, int]:
    return {
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "ctime_ns": st.st_ctime_ns,
        "ino": st.st_ino,
        "dev": st.st_dev,
    }


class FileHasher:
    """sha256 of input files with a memo at ``memo_path``; ``may_save()`` says whether the memo
    may be written (only into an existing, marked cache: ``plan`` never creates one)."""

    def __init__(self, memo_path: Path, may_save: Callable[[], bool]):
        self.memo_path = memo_path
        self._may_save = may_save
        self.memo: dict[str, dict[str, Any]] | None = None
        self._dirty = False

    def _load(self) -> dict[str, dict[str, Any]]:
        if self.memo is None:
            memo: dict[str, dict[str, Any]] = {}
            with contextlib.suppress(OSError, ValueError, TypeError, AttributeError):
                data = json.loads(_paths.read_regular_bytes(self.memo_path, follow=False))
                for k, v in data.get("files", {}).items():
                    if isinstance(v, dict) and isinstance(v.get("sha256"), str):
                        memo[k] = v
            self.memo = memo
        return self.memo

    def save(self) -> None:
        """Persist the memo if it changed. Best effort: it is only a speed-up."""
        if not self._dirty or self.memo is None or not self._may_save():
            return
        memo = self.memo
        while len(memo) > MEMO_MAX:  # drop the least recently stored
            memo.pop(next(iter(memo)))
        with contextlib.suppress(OSError, FtdslError, ValueError):
            write_json_atomic(self.memo_path, {"format": FORMAT, "files": memo}, durable=False)
            self._dirty = False

    def _hash(self, path: str | os.PathLike[str], memo: bool, shown: str | None = None) -> str:
        real = os.path.realpath(os.fspath(path))
        # stat(2) never blocks, open(2) of a FIFO does; a folder fails in open() as before.
        st = _paths.require_regular_file(real, shown=shown if shown is not None else os.fspath(path),
                                         allow_dir=True)
        sig = _stat_sig(st)
        table = self._load()
        rec = table.get(real)
        if memo and rec is not None and all(rec.get(k) == v for k, v in sig.items()):
            return rec["sha256"]
        digest = hashing.sha256_file(real)
        # Only memoize if the file did not change while we read it (a writer still at work).
        if _stat_sig(os.stat(real)) == sig:
            table.pop(real, None)  # re-insert at the end: dict order = recency for pruning
            table[real] = {**sig, "sha256": digest}
            self._dirty = True
        return digest

    def hash_file(self, path: str | os.PathLike[str], memo: bool = True) -> str:
        """sha256 of a file's content; see ``Cache.hash_file``."""
        digest = self._hash(path, memo)
        self.save()
        return digest

    def hash_tree(self, path: str | os.PathLike[str], memo: bool = True) -> str:
        """sha256 over a folder: sorted POSIX relative names and their content hashes. Symlinks
        are followed (Hugging Face snapshots are symlinks to blobs); directory loops are not. A
        FIFO, device or socket inside is FTP004."""
        top = Path(path)
        items: list[tuple[str, str]] = []
        seen_dirs: set[str] = set()
        for dirpath, dirnames, filenames in os.walk(top, followlinks=True):
            real = os.path.realpath(dirpath)
            if real in seen_dirs:
                dirnames[:] = []
                continue
            seen_dirs.add(real)
            dirnames.sort()
            for name in filenames:
                p = Path(dirpath) / name
                items.append((p.relative_to(top).as_posix(), self._hash(p, memo, shown=os.fspath(p))))
        self.save()
        h = hashlib.sha256()
        for rel, digest in sorted(items):
            h.update(rel.encode("utf-8", "surrogateescape") + b"\0" + digest.encode("ascii") + b"\n")
        return h.hexdigest()
