"""Content-addressed stage cache (docs/internals.md §3, notes/reliability.md §2-§3).

Layout under the cache root::

    entries/<k[:2]>/<k>/manifest.json + files   read-only after publish
    entries/.tmp-<uuid>/                        being built (owner holds locks/tmp-<uuid>.lock)
    entries/.trash-<uuid>/                      being deleted (renamed away first: atomic removal)
    work/<k>/                                   checkpoints of a running stage, kept across crashes
    quarantine/<k>-<time>/                      corrupt entries moved aside, never read again
    locks/<k>.lock (+ <k>.owner.json)           per-key flock and who holds it
    index/<sha(pipeline path)[:16]>.json        last run of each stage: key + canonical attrs
    filehash.json                               memo of input-file hashes

Invariants: an entry directory only ever appears by ``os.rename`` of a complete temp dir whose
``manifest.json`` was written last, so a reader never sees half an entry; every file of an entry
is listed in its manifest with size and sha256, and nothing else may be there (a planted pickle
is corruption, never loaded). Locks are ``flock`` (filelock): the kernel releases them when the
holder dies, even by SIGKILL, so no stale-lock heuristics are needed (local disks only).

No torch here; filelock is imported lazily (it costs ~60 ms) so ``plan`` on a cached pipeline
stays fast.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import stat
import sys
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

from ftdsl import __version__
from ftdsl.errors import FtdslError, ResourceError
from ftdsl.runtime.atomic import as_resource_error, fsync_dir, write_json_atomic

__all__ = ["Cache", "canonical_json", "hash_key", "sha256_file", "SMALL_ENTRY_BYTES"]

FORMAT = 1
#: Entries below this total size are fully re-hashed on every lookup (cheap); larger ones only
#: have their sizes checked unless ``verify=True`` (``--verify`` / ``cache verify``).
SMALL_ENTRY_BYTES = 16 * 1024 * 1024
_CHUNK = 1 << 20
_KEY_RE = re.compile(r"^[0-9a-f]{8,128}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_DRIVE = re.compile(r"^[A-Za-z]:")
# Suffixes of formats that can carry pickled code; an unlisted one in an entry gets a pointed
# message (the manifest check rejects every unlisted file anyway).
_PICKLE_SUFFIXES = frozenset({".pkl", ".pickle", ".pt", ".pth", ".bin", ".ckpt", ".joblib"})
_MEMO_MAX = 100_000
_MANIFEST = "manifest.json"


# --------------------------------------------------------------------------- hashing helpers


def _json_default(o: Any) -> Any:
    if isinstance(o, os.PathLike):
        return Path(o).as_posix()
    if isinstance(o, (set, frozenset)):
        return sorted(o, key=canonical_json)
    item = getattr(o, "item", None)  # numpy scalars, 0-d arrays
    if callable(item):
        return item()
    raise TypeError(f"{type(o).__name__} is not JSON-serializable for a cache key")


def canonical_json(obj: Any) -> str:
    """The canonical JSON text of ``obj``: sorted keys, no spaces, floats by ``repr``
    (``3e-05`` -> ``3e-05``, so equal floats give equal text), non-ASCII kept as is.

    NaN/Infinity are rejected (ValueError): they are not JSON and the language forbids them.
    """
    return json.dumps(
        obj,
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
        default=_json_default,
    )


def hash_key(obj: Any) -> str:
    """sha256 hex of :func:`canonical_json` of ``obj``: the cache key of a stage payload."""
    return hashlib.sha256(canonical_json(obj).encode("utf-8", "surrogatepass")).hexdigest()


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Streaming sha256 hex of a file's content."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _hash_and_fsync(path: Path) -> str:
    # One pass does both: read to hash, then fsync the same fd so the data is durable before
    # the manifest that vouches for it is written.
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
        os.fsync(f.fileno())
    return h.hexdigest()


def _now_iso() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse_iso(s: Any) -> float | None:
    if not isinstance(s, str):
        return None
    try:
        return datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _bad_name(name: Any) -> bool:
    """True if a manifest file name could point outside its entry (or is otherwise not one of
    the POSIX relative names ``publish`` writes)."""
    if not isinstance(name, str) or not name or name == _MANIFEST:
        return True
    if "\x00" in name or "\\" in name or name.startswith("/") or _DRIVE.match(name):
        return True
    return any(part in ("", ".", "..") for part in name.split("/"))


def _noop_warning(*, code: str, message: str) -> None:
    """Default ``Cache.on_warning``: silent (the executor installs a printer)."""


def _filelock():
    import filelock  # lazy: ~60 ms import, not needed by lint/plan

    return filelock


# --------------------------------------------------------------------------- the cache


class Cache:
    """A content-addressed store of stage results under ``root``.

    ``lock_timeout`` (seconds; None or negative = wait forever) bounds how long ``lock`` and
    ``get_or_compute`` wait for another process computing the same key (FTP504 after that).
    ``on_warning(code=..., message=...)`` receives FTP503 corrupt-entry warnings.
    Nothing is created on disk until something is written, so ``plan`` never creates a cache.
    """

    def __init__(self, root: str | os.PathLike[str], lock_timeout: float | None = 600):
        self.root = Path(os.path.abspath(root))
        self.lock_timeout = lock_timeout
        self.on_warning: Callable[..., None] = _noop_warning
        self._ready = False
        self._memo: dict[str, dict[str, Any]] | None = None
        self._memo_dirty = False

    def __repr__(self) -> str:
        return f"Cache({str(self.root)!r})"

    # ---- layout

    @property
    def entries_dir(self) -> Path:
        return self.root / "entries"

    @property
    def locks_dir(self) -> Path:
        return self.root / "locks"

    @property
    def work_root(self) -> Path:
        return self.root / "work"

    @property
    def quarantine_dir(self) -> Path:
        return self.root / "quarantine"

    @property
    def index_dir(self) -> Path:
        return self.root / "index"

    @staticmethod
    def _check_key(key: str) -> None:
        # Keys become path components: refuse anything but hex so a key can never be a path.
        if not isinstance(key, str) or not _KEY_RE.match(key):
            raise ValueError(f"invalid cache key {key!r} (expected lowercase hex)")

    def key_of(self, payload: dict) -> str:
        """The cache key of a stage payload (see :func:`hash_key`)."""
        return hash_key(payload)

    def entry_dir(self, key: str) -> Path:
        """Where the entry for ``key`` lives (whether or not it exists)."""
        self._check_key(key)
        return self.entries_dir / key[:2] / key

    def has(self, key: str) -> bool:
        """True if an entry with a manifest exists (no integrity check; see ``lookup``)."""
        return (self.entry_dir(key) / _MANIFEST).is_file()

    # ---- setup

    def check_writable(self) -> None:
        """Create the cache layout; raise ResourceError FTP508 (with a hint) if the root cannot
        be created or written. The executor calls it at startup to fail before any work."""
        if self._ready:
            return
        dirs = (self.root, self.entries_dir, self.work_root, self.quarantine_dir, self.index_dir)
        current = self.root
        try:
            for d in dirs:
                current = d
                d.mkdir(parents=True, exist_ok=True)
                # mkdir(exist_ok) succeeds on an existing read-only dir; ask explicitly. (access()
                # also reports EROFS for root, who otherwise bypasses permission bits.)
                if not os.access(d, os.W_OK | os.X_OK):
                    raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(d))
            current = self.locks_dir
            # Lock dir private to the user (GHSA-j8f7-rjxc-mr56: shared lock dirs invite
            # symlink games). Only applies when we create it.
            self.locks_dir.mkdir(mode=0o700, exist_ok=True)
            if not os.access(self.locks_dir, os.W_OK | os.X_OK):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self.locks_dir))
        except OSError as exc:
            mapped = as_resource_error(exc, current)
            if mapped is None or mapped.code == "FTP508":
                reason = exc.strerror or str(exc)
                raise ResourceError(
                    "FTP508",
                    f"cache folder {current} is not writable: {reason}",
                    hint=f"fix the permissions (e.g. `chmod -R u+w {self.root}`) or use another "
                    "cache folder with `cache = \"...\"` in the pipeline block or FTDSL_CACHE",
                ) from exc
            raise mapped from exc
        self._ready = True

    _ensure = check_writable

    # ---- integrity

    def _scan(self, d: Path) -> tuple[dict[str, int], str | None]:
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

    def _inspect(self, d: Path, key: str, verify: bool) -> str | None:
        """None if the entry at ``d`` is intact, else why not (a short phrase)."""
        if d.is_symlink() or not d.is_dir():
            return "the entry is not a directory"
        mpath = d / _MANIFEST
        try:
            if mpath.is_symlink():
                return "manifest.json is a symlink"
            raw = mpath.read_bytes()
        except FileNotFoundError:
            return "manifest.json is missing"
        except OSError as e:
            return f"manifest.json is unreadable ({e.strerror})"
        try:
            m = json.loads(raw)
        except ValueError:
            return "manifest.json is not valid JSON"
        if not isinstance(m, dict) or m.get("format") != FORMAT:
            return "manifest.json has an unknown format"
        if m.get("key") != key:
            return "manifest.json belongs to another key"
        files = m.get("files")
        if not isinstance(files, dict):
            return "manifest.json has no file list"
        for name, rec in files.items():
            if _bad_name(name):
                return f"the manifest names a file outside the entry ({name!r})"
            if (
                not isinstance(rec, dict)
                or type(rec.get("size")) is not int
                or rec["size"] < 0
                or not isinstance(rec.get("sha256"), str)
                or not _HEX64.match(rec["sha256"])
            ):
                return f"the manifest record of `{name}` is malformed"
        try:
            actual, problem = self._scan(d)
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
            if name != _MANIFEST and name not in files:
                if Path(name).suffix.lower() in _PICKLE_SUFFIXES:
                    return f"unexpected pickle-capable file `{name}` (not in the manifest; not loaded)"
                return f"unexpected file `{name}` (not in the manifest)"
        total = sum(rec["size"] for rec in files.values())
        if verify or total < SMALL_ENTRY_BYTES:
            for name in sorted(files):
                try:
                    digest = sha256_file(d / name)
                except OSError as e:
                    return f"`{name}` is unreadable ({e.strerror})"
                if digest != files[name]["sha256"]:
                    return f"the content of `{name}` does not match its sha256"
        return None

    def _quarantine(self, key: str, d: Path, problem: str, label: str | None, warn: bool) -> None:
        """Move a corrupt entry to ``quarantine/`` (kept for inspection, never read again)."""
        moved = False
        try:
            self._ensure()
            stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
            dest = self.quarantine_dir / f"{key}-{stamp}"
            n = 0
            while os.path.lexists(dest):  # same microsecond, twice: keep both
                n += 1
                dest = self.quarantine_dir / f"{key}-{stamp}-{n}"
            os.rename(d, dest)
            moved = True
            with contextlib.suppress(OSError):
                (dest.parent / f"{dest.name}.reason.txt").write_text(problem + "\n", encoding="utf-8")
        except FileNotFoundError:
            # Someone else (another run, gc) moved or removed it first: not ours to report.
            if not os.path.lexists(d):
                return
        except (OSError, FtdslError):
            pass  # read-only cache: still report, and the caller recomputes anyway
        if warn:
            what = label if label else key[:12]
            tail = "; recomputing" if moved else "; recomputing (could not move it to quarantine/)"
            self.on_warning(code="FTP503", message=f"cache entry for `{what}` is corrupt: {problem}{tail}")

    def lookup(self, key: str, verify: bool = False, label: str | None = None) -> Path | None:
        """The entry dir of ``key`` if present and intact, else None.

        Always checks the manifest, the file list (nothing missing, nothing extra, no escaping
        names, no symlinks) and sizes; sha256 of every file too when ``verify`` or the entry is
        small. A corrupt entry is quarantined, reported through ``on_warning`` (FTP503, naming
        ``label``), and None is returned so the caller recomputes.
        """
        d = self.entry_dir(key)
        if not os.path.lexists(d):
            return None
        problem = self._inspect(d, key, verify)
        if problem is None:
            return d
        self._quarantine(key, d, problem, label, warn=True)
        return None

    # ---- publish

    def _collect(self, tmp: Path) -> dict[str, dict[str, Any]]:
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
                    if rel == _MANIFEST:
                        raise ValueError("`manifest.json` is reserved in a cache entry")
                    files[rel] = {"size": st.st_size, "sha256": _hash_and_fsync(p)}
            if base != tmp:
                fsync_dir(base)  # new names in subdirs must be durable too
        return dict(sorted(files.items()))

    @staticmethod
    def _set_modes(top: Path, file_mode: int, dir_mode: int | None) -> None:
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

    def _rmtree(self, path: Path) -> None:
        """Remove a tree that may hold read-only files; missing is fine."""
        if not os.path.lexists(path):
            return
        if path.is_symlink() or not path.is_dir():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            return
        with contextlib.suppress(OSError):
            os.chmod(path, 0o755)
        # Files need not be writable to be unlinked on POSIX, but dirs do, and Windows wants both.
        self._set_modes(path, 0o644, 0o755)
        shutil.rmtree(path, ignore_errors=True)

    def publish(self, key: str, build: Callable[[Path], None], meta: dict) -> Path:
        """Build an entry in a temp dir and move it into place atomically; returns the entry dir.

        ``build(tmp)`` writes the files. Then each file is hashed and fsynced, ``manifest.json``
        is written last, files are made read-only (0o444) and the dir is renamed into place. If
        the entry appeared meanwhile, another writer won and ours is dropped. On any exception
        the temp is removed; disk full / not writable become ResourceError FTP505 / FTP508 and
        the cache is as before.
        """
        self._check_key(key)
        self._ensure()
        final = self.entry_dir(key)
        tmp_id = uuid.uuid4().hex
        tmp = self.entries_dir / f".tmp-{tmp_id}"
        # Hold a lock named after the temp while it exists, so clean_stale_temps can tell a live
        # build from one whose process died (SIGKILL skips every finally).
        tlock_path = self.locks_dir / f"tmp-{tmp_id}.lock"
        tlock = _filelock().FileLock(str(tlock_path), is_singleton=False)
        try:
            tlock.acquire(timeout=0)
        except OSError as exc:
            self._raise_mapped(exc, tlock_path)
        try:
            try:
                tmp.mkdir()
                build(tmp)
                files = self._collect(tmp)
                manifest = {
                    "format": FORMAT,
                    "key": key,
                    "files": files,
                    "meta": json.loads(canonical_json(meta)),
                    "created": _now_iso(),
                    "ftdsl_version": __version__,
                }
                write_json_atomic(tmp / _MANIFEST, manifest)  # last, fsynced, dir fsynced
                # Read-only before it becomes visible: no window where a reader sees it writable.
                self._set_modes(tmp, 0o444, None)
                final.parent.mkdir(exist_ok=True)
                if not self._rename_into_place(tmp, final, key):
                    self._rmtree(tmp)  # another writer won; its entry is intact
                fsync_dir(final.parent)
                fsync_dir(self.entries_dir)
                return final
            except BaseException as exc:
                self._rmtree(tmp)
                if isinstance(exc, OSError):
                    target = Path(os.fsdecode(exc.filename)) if exc.filename else tmp
                    mapped = as_resource_error(exc, target)
                    # Disk full is disk full wherever the stage wrote; "permission denied" is
                    # ours only inside the cache (a stage failing to read an input is not).
                    if mapped is not None and (
                        mapped.code == "FTP505" or target.is_relative_to(self.root)
                    ):
                        raise mapped from exc
                    raise
                if isinstance(exc, Exception) and not isinstance(exc, FtdslError):
                    # torch/safetensors writers wrap ENOSPC/EFBIG in their own exception types.
                    mapped = as_resource_error(exc, tmp)
                    if mapped is not None:
                        raise mapped from exc
                raise
        finally:
            with contextlib.suppress(Exception):
                tlock.release()
            with contextlib.suppress(OSError):
                os.unlink(tlock_path)

    def _rename_into_place(self, tmp: Path, final: Path, key: str) -> bool:
        """rename(tmp, final); False when a valid entry already sits there (another writer)."""
        for _ in range(2):
            try:
                os.rename(tmp, final)
                return True
            except OSError as exc:
                if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.EISDIR):
                    raise
            if self.lookup(key) is not None:
                return False
            # The occupant was corrupt: lookup quarantined it; try again once.
        raise OSError(errno.EEXIST, "cache entry keeps reappearing", str(final))

    @staticmethod
    def _raise_mapped(exc: BaseException, path: Any) -> None:
        mapped = as_resource_error(exc, path)
        if mapped is not None and mapped is not exc:
            raise mapped from exc
        raise exc

    # ---- locks

    @contextlib.contextmanager
    def _locked(self, path: Path, what: str, timeout: float | None) -> Iterator[None]:
        """Hold the flock at ``path``; write an owner record beside it for FTP504 messages."""
        fl = _filelock()
        t = -1 if timeout is None or timeout < 0 else timeout
        lk = fl.FileLock(str(path), timeout=t, is_singleton=False)
        owner = path.with_suffix(".owner.json")
        try:
            lk.acquire()
        except fl.Timeout:
            raise ResourceError(
                "FTP504",
                f"{what} is locked by {self._describe_owner(owner)}",
                hint=f"waited {t:g} s for another ftdsl run computing it; let it finish or "
                "raise --lock-timeout. The lock is released by the kernel when its holder "
                "exits, so it belongs to a live process (local disks only, not NFS)",
            ) from None
        except OSError as exc:
            self._raise_mapped(exc, path)
        try:
            import shlex
            import socket

            record = {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "since": _now_iso(),
                "command": shlex.join(sys.argv)[:300],
            }
            with contextlib.suppress(OSError, FtdslError):
                write_json_atomic(owner, record, durable=False)  # advisory only
            yield
        finally:
            with contextlib.suppress(OSError):
                os.unlink(owner)
            lk.release()

    @staticmethod
    def _describe_owner(owner: Path) -> str:
        try:
            rec = json.loads(owner.read_text(encoding="utf-8"))
            return (
                f"pid {rec['pid']} on host {rec['host']} since {rec['since']} "
                f"(command {rec['command']})"
            )
        except (OSError, ValueError, KeyError, TypeError):
            return "another process (no owner record)"

    @contextlib.contextmanager
    def lock(self, key: str) -> Iterator[None]:
        """Exclusive per-key lock across processes (``locks/<key>.lock``), waiting up to
        ``lock_timeout`` s, then ResourceError FTP504 naming the holder. Not reentrant: do not
        nest ``lock``/``get_or_compute``/``remove`` for the same key in one process."""
        self._check_key(key)
        self._ensure()
        with self._locked(self.locks_dir / f"{key}.lock", f"cache entry {key[:12]}", self.lock_timeout):
            yield

    def _try_lock(self, key: str):
        """Non-blocking per-key lock: the acquired FileLock, or None if someone holds it."""
        fl = _filelock()
        lk = fl.FileLock(str(self.locks_dir / f"{key}.lock"), is_singleton=False)
        try:
            lk.acquire(blocking=False)
        except fl.Timeout:
            return None
        return lk

    # ---- the main entry point

    def get_or_compute(
        self,
        key: str,
        compute: Callable[[Path], None],
        meta: dict,
        label: str | None = None,
        verify: bool = False,
    ) -> tuple[Path, bool]:
        """Return ``(entry_dir, computed)``, computing with ``compute(tmp_dir)`` on a miss.

        Double-checked locking: look up without the lock (the common hit costs no lock), then
        lock, look up again (another process may have just published), and only then compute.
        Concurrent callers for one key: one computes, the others wait and get a hit. A waiter
        whose holder died (even by SIGKILL) takes over and first removes the dead temp dirs.
        The key's ``work_dir`` is removed after a successful publish.
        """
        hit = self.lookup(key, verify=verify, label=label)
        if hit is not None:
            return hit, False
        with self.lock(key):
            hit = self.lookup(key, verify=verify, label=label)
            if hit is not None:
                return hit, False
            self.clean_stale_temps(0)
            path = self.publish(key, compute, meta)
            self.clear_work(key)
            return path, True

    # ---- work dirs and hygiene

    def work_dir(self, key: str) -> Path:
        """``work/<key>/``: persistent scratch (checkpoints) for computing ``key``; created on
        demand, survives crashes so a rerun can resume."""
        self._check_key(key)
        self._ensure()
        d = self.work_root / key
        try:
            d.mkdir(exist_ok=True)
        except OSError as exc:
            self._raise_mapped(exc, d)
        return d

    def clear_work(self, key: str) -> None:
        """Remove ``work/<key>/`` (after its entry is published)."""
        self._check_key(key)
        self._rmtree(self.work_root / key)

    def clean_stale_temps(self, max_age_s: float = 0.0) -> list[Path]:
        """Remove ``entries/.tmp-*`` left by dead builders and leftover ``.trash-*`` dirs.

        A temp is stale when its owner lock (``locks/tmp-<uuid>.lock``) can be taken without
        waiting, i.e. the builder is gone; ``max_age_s`` additionally spares young temps.
        Returns the removed paths. Never raises for a read-only cache.
        """
        removed: list[Path] = []
        if not self.entries_dir.is_dir():
            return removed
        now = time.time()
        fl = None
        try:
            names = sorted(os.listdir(self.entries_dir))
        except OSError:
            return removed
        for name in names:
            p = self.entries_dir / name
            if not (name.startswith(".tmp-") or name.startswith(".trash-")):
                continue
            try:
                age = now - os.lstat(p).st_mtime
            except FileNotFoundError:
                continue
            if age < max_age_s:
                continue
            if name.startswith(".trash-"):
                self._rmtree(p)  # a removal interrupted half-way: finish it
                removed.append(p)
                continue
            fl = fl or _filelock()
            lock_path = self.locks_dir / f"tmp-{name[len('.tmp-'):]}.lock"
            lk = fl.FileLock(str(lock_path), is_singleton=False)
            try:
                lk.acquire(blocking=False)
            except fl.Timeout:
                continue  # its builder is alive
            except OSError:
                continue  # cannot even open the lock: read-only cache, leave it
            try:
                self._rmtree(p)
                removed.append(p)
            finally:
                lk.release()
                with contextlib.suppress(OSError):
                    os.unlink(lock_path)
        return removed

    # ---- listing, verification, removal

    def _iter_keys(self) -> Iterator[str]:
        try:
            prefixes = sorted(os.listdir(self.entries_dir))
        except OSError:
            return
        for pre in prefixes:
            if len(pre) != 2 or not _KEY_RE.match(pre + "000000"):
                continue
            try:
                names = sorted(os.listdir(self.entries_dir / pre))
            except OSError:
                continue
            for k in names:
                if _KEY_RE.match(k) and k.startswith(pre):
                    yield k

    def _read_manifest(self, key: str) -> dict | None:
        try:
            m = json.loads((self.entry_dir(key) / _MANIFEST).read_bytes())
        except (OSError, ValueError):
            return None
        return m if isinstance(m, dict) else None

    def ls(self) -> list[dict]:
        """One dict per entry: ``key``, ``path``, ``size`` (bytes), ``created`` (ISO UTC),
        ``meta``; the last three are None when the manifest is unreadable. Sorted by creation."""
        out = []
        for key in self._iter_keys():
            m = self._read_manifest(key)
            size = None
            if m is not None and isinstance(m.get("files"), dict):
                with contextlib.suppress(TypeError, AttributeError):
                    size = sum(int(r.get("size", 0)) for r in m["files"].values())
            out.append(
                {
                    "key": key,
                    "path": self.entry_dir(key),
                    "size": size,
                    "created": m.get("created") if m else None,
                    "meta": m.get("meta") if m else None,
                }
            )
        out.sort(key=lambda r: (r["created"] or "", r["key"]))
        return out

    def verify_all(self) -> list[tuple[str, str | None]]:
        """Fully re-hash every entry; quarantine corrupt ones. Returns ``(key, problem|None)``."""
        results = []
        for key in list(self._iter_keys()):
            d = self.entry_dir(key)
            problem = self._inspect(d, key, verify=True)
            if problem is not None:
                self._quarantine(key, d, problem, None, warn=False)
            results.append((key, problem))
        return results

    def _remove_unlocked(self, key: str) -> bool:
        d = self.entry_dir(key)
        if not os.path.lexists(d):
            return False
        # Rename first so readers see the entry vanish at once, never half-deleted.
        trash = self.entries_dir / f".trash-{uuid.uuid4().hex}"
        try:
            os.rename(d, trash)
        except FileNotFoundError:
            return False
        except OSError as exc:
            self._raise_mapped(exc, d)
        self._rmtree(trash)
        return True

    def remove(self, key: str) -> bool:
        """Delete the entry of ``key`` under its lock; False if there was none."""
        with self.lock(key):
            return self._remove_unlocked(key)

    def gc(
        self,
        keep: set[str] | None = None,
        older_than_s: float | None = None,
        dry_run: bool = False,
    ) -> list[str]:
        """Remove entries (and their ``work/`` dirs) not in ``keep`` and older than
        ``older_than_s``; returns the keys removed (or that would be, with ``dry_run``).

        Both criteria apply when both are given; at least one is required (a gc without an
        explicit scope is refused with ValueError, never "delete everything" by accident).
        Entries whose lock is held (a run is computing or publishing them) are skipped. Orphan
        work dirs (a crashed run's checkpoints) follow the same rules. Dead temps are cleaned.
        """
        if keep is None and older_than_s is None:
            raise ValueError("gc needs a scope: keep= and/or older_than_s=")
        self._ensure()
        now = time.time()

        def in_scope(key: str, ts: float | None) -> bool:
            if keep is not None and key in keep:
                return False
            if older_than_s is not None and ts is not None and now - ts < older_than_s:
                return False
            return True

        candidates: dict[str, None] = {}
        for key in self._iter_keys():
            m = self._read_manifest(key)
            ts = _parse_iso(m.get("created")) if m else None
            if ts is None:
                with contextlib.suppress(OSError):
                    ts = os.lstat(self.entry_dir(key)).st_mtime
            if in_scope(key, ts):
                candidates[key] = None
        with contextlib.suppress(OSError):
            for name in sorted(os.listdir(self.work_root)):
                if _KEY_RE.match(name) and name not in candidates:
                    with contextlib.suppress(OSError):
                        if in_scope(name, os.lstat(self.work_root / name).st_mtime):
                            candidates[name] = None

        removed: list[str] = []
        for key in candidates:
            lk = self._try_lock(key)
            if lk is None:
                continue  # in use by a run: skip, never wait
            try:
                if not dry_run:
                    self._remove_unlocked(key)
                    self.clear_work(key)
                removed.append(key)
            finally:
                lk.release()
        if not dry_run:
            self.clean_stale_temps(older_than_s or 0.0)
        return removed

    # ---- run index (for `plan`'s "changed: lr 3e-05 -> 5e-05")

    def _index_path(self, pipeline_path: str | os.PathLike[str]) -> Path:
        real = os.path.realpath(os.fspath(pipeline_path))
        return self.index_dir / (hashlib.sha256(real.encode("utf-8", "surrogateescape")).hexdigest()[:16] + ".json")

    def _read_index(self, path: Path) -> dict:
        try:
            data = json.loads(path.read_bytes())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) and isinstance(data.get("stages"), dict) else {}

    def record_run(
        self,
        pipeline_path: str | os.PathLike[str],
        stage: str,
        key: str,
        attrs: dict,
        inputs: dict,
    ) -> None:
        """Remember that ``stage`` of ``pipeline_path`` last ran as ``key`` with these canonical
        ``attrs`` and ``inputs`` (name -> upstream key). Read-modify-write under
        ``locks/index.lock`` so concurrent runs of different stages don't lose updates."""
        self._check_key(key)
        self._ensure()
        path = self._index_path(pipeline_path)
        record = {
            "key": key,
            "attrs": json.loads(canonical_json(attrs)),
            "inputs": json.loads(canonical_json(inputs)),
            "time": _now_iso(),
        }
        with self._locked(self.locks_dir / "index.lock", "the run index", self.lock_timeout):
            data = self._read_index(path) or {
                "format": FORMAT,
                "pipeline": os.path.realpath(os.fspath(pipeline_path)),
                "stages": {},
            }
            data["stages"][stage] = record
            write_json_atomic(path, data)

    def last_run(self, pipeline_path: str | os.PathLike[str], stage: str) -> dict | None:
        """The record of ``stage``'s last run (``key``, ``attrs``, ``inputs``, ``time``) or None.
        Lock-free: the index is replaced atomically, so a read is always a whole version."""
        rec = self._read_index(self._index_path(pipeline_path)).get("stages", {}).get(stage)
        return rec if isinstance(rec, dict) else None

    # ---- input file hashing (content-addressed, memoized by stat)

    @property
    def memo_path(self) -> Path:
        return self.root / "filehash.json"

    def _load_memo(self) -> dict[str, dict[str, Any]]:
        if self._memo is None:
            memo: dict[str, dict[str, Any]] = {}
            with contextlib.suppress(OSError, ValueError, TypeError, AttributeError):
                data = json.loads(self.memo_path.read_bytes())
                for k, v in data.get("files", {}).items():
                    if isinstance(v, dict) and isinstance(v.get("sha256"), str):
                        memo[k] = v
            self._memo = memo
        return self._memo

    def save_memo(self) -> None:
        """Persist the file-hash memo if it changed. Best effort: never creates the cache (a
        ``plan`` must not) and ignores write failures (it is only a speed-up)."""
        if not self._memo_dirty or self._memo is None or not self.root.is_dir():
            return
        memo = self._memo
        while len(memo) > _MEMO_MAX:  # drop the least recently stored
            memo.pop(next(iter(memo)))
        with contextlib.suppress(OSError, FtdslError, ValueError):
            write_json_atomic(self.memo_path, {"format": FORMAT, "files": memo}, durable=False)
            self._memo_dirty = False

    @staticmethod
    def _stat_sig(st: os.stat_result) -> dict[str, int]:
        return {
            "size": st.st_size,
            "mtime_ns": st.st_mtime_ns,
            "ctime_ns": st.st_ctime_ns,
            "ino": st.st_ino,
            "dev": st.st_dev,
        }

    def _hash_file(self, path: str | os.PathLike[str], memo: bool) -> str:
        real = os.path.realpath(os.fspath(path))
        st = os.stat(real)
        sig = self._stat_sig(st)
        table = self._load_memo()
        rec = table.get(real)
        if memo and rec is not None and all(rec.get(k) == v for k, v in sig.items()):
            return rec["sha256"]
        digest = sha256_file(real)
        # Only memoize if the file did not change while we read it (a writer still at work).
        if self._stat_sig(os.stat(real)) == sig:
            table.pop(real, None)  # re-insert at the end: dict order = recency for pruning
            table[real] = {**sig, "sha256": digest}
            self._memo_dirty = True
        return digest

    def hash_file(self, path: str | os.PathLike[str], memo: bool = True) -> str:
        """sha256 of a file's content. With ``memo`` a previous result is reused while the
        file's (size, mtime_ns, ctime_ns, inode, device) are unchanged; ``memo=False`` (the
        planner's ``--verify``) always re-reads. Content-addressed: ``touch`` changes the stat,
        so the file is re-hashed, but the hash (and the cache key) stays the same."""
        digest = self._hash_file(path, memo)
        self.save_memo()
        return digest

    def hash_tree(self, path: str | os.PathLike[str], memo: bool = True) -> str:
        """sha256 over a folder: sorted POSIX relative names and their content hashes. Symlinks
        are followed (Hugging Face snapshots are symlinks to blobs); directory loops are not."""
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
                items.append((p.relative_to(top).as_posix(), self._hash_file(p, memo)))
        self.save_memo()
        h = hashlib.sha256()
        for rel, digest in sorted(items):
            h.update(rel.encode("utf-8", "surrogateescape") + b"\0" + digest.encode("ascii") + b"\n")
        return h.hexdigest()
