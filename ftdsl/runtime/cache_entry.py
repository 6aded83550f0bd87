"""One cache entry on disk: its manifest, the integrity check of a published entry, and the
file list of an entry being built (docs/internals.md §3, notes/reliability.md §2-§3).

An entry is ``manifest.json`` + files; every file is listed in the manifest with its size and
sha256, and nothing else may be there (a planted pickle is corruption, never loaded). No torch.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import stat
from pathlib import Path
from typing import Any

from ftdsl.paths import read_regular_bytes
from ftdsl.runtime import hashing
from ftdsl.runtime.atomic import fsync_dir

__all__ = ["FORMAT", "MANIFEST", "SMALL_ENTRY_BYTES", "KEY_RE", "inspect", "collect", "set_modes", "rmtree"]

FORMAT = 1
MANIFEST = "manifest.json"
#: Entries below this total size are fully re-hashed on every lookup (cheap); larger ones only
#: have their sizes checked unless ``verify=True`` (``--verify`` / ``cache verify``).
SMALL_ENTRY_BYTES = 16 * 1024 * 1024
KEY_RE = re.compile(r"^[0-9a-f]{8,128}$")
HEX64 = re.compile(r"^[0-9a-f]{64}$")
_DRIVE = re.compile(r"^[A-Za-z]:")
# Suffixes of formats that can carry pickled code; an unlisted one in an entry gets a pointed
# message (the manifest check rejects every unlisted file anyway).
_PICKLE_SUFFIXES = frozenset({".pkl", ".pickle", ".pt", ".pth", ".bin", ".ckpt", ".joblib"})


def bad_name(name: Any) -> bool:
    """True if a manifest file name could point outside its entry (or is otherwise not one of
    the POSIX relative names ``publish`` writes)."""
    if not isinstance(name, str) or not name or name == MANIFEST:
        return True
    if "\x00" in name or "\\" in name or name.startswith("/") or _DRIVE.match(name):
        return True
    return any(part in ("", ".", "..") for part in name.split("/"))


def scan(d: Path) -> tuple[dict[str, int], str | None]:
    """Regular files under ``d`` (POSIX relative name -> size), or a problem: a symlink or a
    special file anywhere in an entry is corruption (it could point outside)."""
    found: dict[str, int] = {}
    stack = [(d, "")]
    while stack:
        cur, prefix = stack.pop()
        with os.scandir(cur) as it:
            for e in it:
                rel = prefix + e.name
                if e.is_symlink():
                    return found, f"`{rel}` is a symlink"
                if e.is_dir(follow_symlinks=False):
                    stack.append((Path(e.path), rel + "/"))
                elif e.is_file(follow_symlinks=False):
                    found[rel] = e.stat(follow_symlinks=False).st_size
                else:
                    return found, f"`{rel}` is not a regular file"
    return found, None


def read_manifest(d: Path) -> dict | None:
    """The parsed manifest of the entry at ``d``, or None (no integrity check)."""
    try:
        m = json.loads(read_regular_bytes(d / MANIFEST, follow=False))
    except (OSError, ValueError):
        return None
    return m if isinstance(m, dict) else None


def _check_manifest(m: Any, key: str) -> str | None:
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        return "manifest.json has an unknown format"
    if m.get("key") != key:
        return "manifest.json belongs to another key"
    files = m.get("files")
    if not isinstance(files, dict):
        return "manifest.json has no file list"
    for name, rec in files.items():
        if bad_name(name):
            return f"the manifest names a file outside the entry ({name!r})"
        if (
            not isinstance(rec, dict)
            or type(rec.get("size")) is not int
            or rec["size"] < 0
            or not isinstance(rec.get("sha256"), str)
            or not HEX64.match(rec["sha256"])
        ):
            return f"the manifest record of `{name}` is malformed"
    return None


def inspect(d: Path, key: str, verify: bool) -> str | None:
    """None if the entry at ``d`` is intact, else why not (a short phrase).

    Always checks the manifest, the file list (nothing missing, nothing extra, no escaping
    names, no symlinks) and sizes; sha256 of every file too when ``verify`` or the entry is
    smaller than ``SMALL_ENTRY_BYTES``.
    """
    if d.is_symlink() or not d.is_dir():
        return "the entry is not a directory"
    mpath = d / MANIFEST
    try:
        if mpath.is_symlink():
            return "manifest.json is a symlink"
        raw = read_regular_bytes(mpath, follow=False)  # a FIFO planted here must not hang
    except FileNotFoundError:
        return "manifest.json is missing"
    except OSError as e:
        return f"manifest.json is unreadable ({e.strerror})"
    try:
        m = json.loads(raw)
    except ValueError:
        return "manifest.json is not valid JSON"
    problem = _check_manifest(m, key)
    if problem:
        return problem
    files = m["files"]
    try:
        actual, problem = scan(d)
    except OSError as e:
        return f"the entry is unreadable ({e.strerror})"
    if problem:
        return problem
    for name, rec in files.items():
        if name not in actual:
            return f"`{name}` is missing"
        if actual[name] != rec["size"]:
            return f"`{name}` is {actual[name]} bytes, the manifest says {rec['size']}"
    for name in sorted(actual):
        if name != MANIFEST and name not in files:
            if Path(name).suffix.lower() in _PICKLE_SUFFIXES:
                return f"unexpected pickle-capable file `{name}` (not in the manifest; not loaded)"
            return f"unexpected file `{name}` (not in the manifest)"
    total = sum(rec["size"] for rec in files.values())
    if verify or total < SMALL_ENTRY_BYTES:
        for name in sorted(files):
            try:
                digest = hashing.sha256_file(d / name)
            except OSError as e:
                return f"`{name}` is unreadable ({e.strerror})"
            if digest != files[name]["sha256"]:
                return f"the content of `{name}` does not match its sha256"
    return None


def collect(tmp: Path) -> dict[str, dict[str, Any]]:
    """The manifest's file list of an entry being built in ``tmp``: each file hashed and
    fsynced (subfolders too). Symlinks, special files and a ``manifest.json`` are refused."""
    files: dict[str, dict[str, Any]] = {}
    for dirpath, dirnames, filenames in os.walk(tmp):
        base = Path(dirpath)
        for name in dirnames + filenames:
            p = base / name
            rel = p.relative_to(tmp).as_posix()
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                raise ValueError(f"a cache entry may not contain symlinks (`{rel}`)")
            if name in filenames:
                if not stat.S_ISREG(st.st_mode):
                    raise ValueError(f"a cache entry may only contain regular files (`{rel}`)")
                if rel == MANIFEST:
                    raise ValueError("`manifest.json` is reserved in a cache entry")
                files[rel] = {"size": st.st_size, "sha256": hashing.hash_and_fsync(p)}
        if base != tmp:
            fsync_dir(base)  # new names in subdirs must be durable too
    return dict(sorted(files.items()))


def set_modes(top: Path, file_mode: int, dir_mode: int | None) -> None:
    for dirpath, dirnames, filenames in os.walk(top):
        for name in filenames:
            p = os.path.join(dirpath, name)
            if not os.path.islink(p):
                with contextlib.suppress(OSError):
                    os.chmod(p, file_mode)
        if dir_mode is not None:
            for name in dirnames:
                p = os.path.join(dirpath, name)
                if not os.path.islink(p):
                    with contextlib.suppress(OSError):
                        os.chmod(p, dir_mode)


def rmtree(path: Path) -> None:
    """Remove a tree that may hold read-only files; missing is fine. A symlink is unlinked,
    never followed."""
    if not os.path.lexists(path):
        return
    if path.is_symlink() or not path.is_dir():
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return
    with contextlib.suppress(OSError):
        os.chmod(path, 0o755)
    # Files need not be writable to be unlinked on POSIX, but dirs do, and Windows wants both.
    set_modes(path, 0o644, 0o755)
    shutil.rmtree(path, ignore_errors=True)
