"""Cache administration behind `ftdsl cache ls|verify|gc`: list, re-verify and remove entries.

Everything here first proves the folder is an ftdsl cache (``cache_marker``; FTP515 otherwise)
and then only touches names of the cache layout that ftdsl writes: ``entries/<2 hex>/<hex key>/``
holding a manifest, and ``work/<hex key>/`` folders. Removal renames an entry away under its lock
before deleting it, and never follows a symlink. No torch here.
"""

from __future__ import annotations

import contextlib
import os
import time
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from ftdsl.runtime import cache_entry as entry

if TYPE_CHECKING:
    from ftdsl.runtime.cache import Cache

__all__ = ["iter_keys", "ls", "verify_all", "gc", "clean_stale_temps"]


def _parse_iso(s: object) -> float | None:
    if not isinstance(s, str):
        return None
    try:
        return datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def iter_keys(cache: "Cache") -> Iterator[str]:
    """Keys of the entry folders under ``entries/`` (hex names under their 2-hex prefix)."""
    try:
        prefixes = sorted(os.listdir(cache.entries_dir))
    except OSError:
        return
    for pre in prefixes:
        if len(pre) != 2 or not entry.KEY_RE.match(pre + "000000"):
            continue
        try:
            names = sorted(os.listdir(cache.entries_dir / pre))
        except OSError:
            continue
        for k in names:
            if entry.KEY_RE.match(k) and k.startswith(pre):
                yield k


def ls(cache: "Cache") -> list[dict]:
    """See ``Cache.ls``."""
    if not cache.usable():
        return []
    out = []
    for key in iter_keys(cache):
        m = entry.read_manifest(cache.entry_dir(key))
        size = None
        if m is not None and isinstance(m.get("files"), dict):
            with contextlib.suppress(TypeError, AttributeError, ValueError):
                size = sum(int(r.get("size", 0)) for r in m["files"].values())
        out.append(
            {
                "key": key,
                "path": cache.entry_dir(key),
                "size": size,
                "created": m.get("created") if m else None,
                "meta": m.get("meta") if m else None,
            }
        )
    out.sort(key=lambda r: (r["created"] or "", r["key"]))
    return out


def verify_all(cache: "Cache") -> list[tuple[str, str | None]]:
    """See ``Cache.verify_all``."""
    if not cache.usable():
        return []
    results = []
    for key in list(iter_keys(cache)):
        d = cache.entry_dir(key)
        problem = entry.inspect(d, key, verify=True)
        if problem is not None:
            cache.quarantine(key, problem, warn=False)
        results.append((key, problem))
    return results


def _is_work_dir(cache: "Cache", name: str) -> bool:
    """A ``work/<key>`` folder as ``Cache.work_dir`` makes them: a real folder (not a symlink)
    named by a full hex key."""
    p = cache.work_root / name
    return bool(entry.HEX64.match(name)) and p.is_dir() and not p.is_symlink()


def gc(cache: "Cache", keep: set[str] | None = None, older_than_s: float | None = None,
       dry_run: bool = False) -> list[str]:
    """See ``Cache.gc``."""
    if keep is None and older_than_s is None:
        raise ValueError("gc needs a scope: keep= and/or older_than_s=")
    cache.require_ours()
    if not cache.usable():
        return []  # nothing to collect, and gc never creates a cache
    cache.check_writable()
    now = time.time()

    def in_scope(key: str, ts: float | None) -> bool:
        if keep is not None and key in keep:
            return False
        if older_than_s is not None and ts is not None and now - ts < older_than_s:
            return False
        return True

    candidates: dict[str, None] = {}
    for key in iter_keys(cache):
        m = entry.read_manifest(cache.entry_dir(key))
        if m is None or m.get("key") != key:
            continue  # not provably an entry ftdsl published: `cache verify` quarantines it
        ts = _parse_iso(m.get("created"))
        if ts is None:
            with contextlib.suppress(OSError):
                ts = os.lstat(cache.entry_dir(key)).st_mtime
        if in_scope(key, ts):
            candidates[key] = None
    with contextlib.suppress(OSError):
        for name in sorted(os.listdir(cache.work_root)):
            if name not in candidates and _is_work_dir(cache, name):
                with contextlib.suppress(OSError):
                    if in_scope(name, os.lstat(cache.work_root / name).st_mtime):
                        candidates[name] = None

    removed: list[str] = []
    for key in candidates:
        lk = cache.try_lock(key)
        if lk is None:
            continue  # in use by a run: skip, never wait
        try:
            if not dry_run:
                cache.remove_unlocked(key)
                cache.clear_work(key)
            removed.append(key)
        finally:
            lk.release()
    if not dry_run:
        cache.clean_stale_temps(older_than_s or 0.0)
    return removed


def clean_stale_temps(cache: "Cache", max_age_s: float = 0.0) -> list[Path]:
    """See ``Cache.clean_stale_temps``: only ``entries/.tmp-*`` whose builder is gone (its lock
    ``locks/tmp-<uuid>.lock`` is free) and ``entries/.trash-*`` are removed."""
    from ftdsl.runtime.cache_locks import filelock

    removed: list[Path] = []
    if not cache.entries_dir.is_dir():
        return removed
    now = time.time()
    fl = None
    try:
        names = sorted(os.listdir(cache.entries_dir))
    except OSError:
        return removed
    for name in names:
        p = cache.entries_dir / name
        if not (name.startswith(".tmp-") or name.startswith(".trash-")):
            continue
        try:
            age = now - os.lstat(p).st_mtime
        except FileNotFoundError:
            continue
        if age < max_age_s:
            continue
        if name.startswith(".trash-"):
            entry.rmtree(p)  # a removal interrupted half-way: finish it
            removed.append(p)
            continue
        fl = fl or filelock()
        lock_path = cache.locks_dir / f"tmp-{name[len('.tmp-'):]}.lock"
        lk = fl.FileLock(str(lock_path), is_singleton=False)
        try:
            lk.acquire(blocking=False)
        except fl.Timeout:
            continue  # its builder is alive
        except OSError:
            continue  # cannot even open the lock: read-only cache, leave it
        try:
            entry.rmtree(p)
            removed.append(p)
        finally:
            lk.release()
            with contextlib.suppress(OSError):
                os.unlink(lock_path)
    return removed
