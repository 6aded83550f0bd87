"""Content-addressed stage cache: the entry store (docs/internals.md §3, notes/reliability.md §2-§3).

Layout under the cache root::

    ftdsl-cache.json, CACHEDIR.TAG              proof that this folder is an ftdsl cache (cache_marker)
    entries/<k[:2]>/<k>/manifest.json + files   read-only after publish (cache_entry)
    entries/.tmp-<uuid>/                        being built (owner holds locks/tmp-<uuid>.lock)
    entries/.trash-<uuid>/                      being deleted (renamed away first: atomic removal)
    work/<k>/                                   checkpoints of a running stage, kept across crashes
    quarantine/<k>-<time>/                      corrupt entries moved aside, never read again
    locks/<k>.lock (+ <k>.owner.json)           per-key flock and who holds it
    index/<sha(pipeline path)[:16]>.json        last run of each stage: key + canonical attrs (run_index)
    filehash.json                               memo of input-file hashes (filehash)

Invariants: nothing is created or deleted under a root that is not provably an ftdsl cache
(FTP515); an entry directory only ever appears by ``os.rename`` of a complete temp dir whose
``manifest.json`` was written last, so a reader never sees half an entry; every file of an entry
is listed in its manifest with size and sha256, and nothing else may be there. Locks are
``flock`` (filelock): the kernel releases them when the holder dies, even by SIGKILL, so no
stale-lock heuristics are needed (local disks only). Administration (ls, verify, gc) lives in
``cache_admin``; keys and checksums in ``hashing``.

No torch here; filelock is imported lazily (it costs ~60 ms) so ``plan`` on a cached pipeline
stays fast.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

from ftdsl import __version__
from ftdsl.errors import FtdslError, ResourceError
from ftdsl.runtime import cache_admin, cache_locks, cache_marker
from ftdsl.runtime.atomic import as_resource_error, fsync_dir, write_json_atomic
from ftdsl.runtime.cache_entry import FORMAT, KEY_RE, MANIFEST, SMALL_ENTRY_BYTES, collect, inspect, rmtree, set_modes
from ftdsl.runtime.filehash import FileHasher
from ftdsl.runtime.hashing import canonical_json, hash_key, sha256_file
from ftdsl.runtime.run_index import RunIndex, now_iso

__all__ = ["Cache", "canonical_json", "hash_key", "sha256_file", "SMALL_ENTRY_BYTES"]


def _noop_warning(*, code: str, message: str) -> None:
    """Default ``Cache.on_warning``: silent (the executor installs a printer)."""


class Cache:
    """A content-addressed store of stage results under ``root``.

    ``lock_timeout`` (seconds; None or negative = wait forever) bounds how long ``lock`` and
    ``get_or_compute`` wait for another process computing the same key (FTP504 after that).
    ``on_warning(code=..., message=...)`` receives FTP503 corrupt-entry warnings.
    Nothing is created on disk until something is written, so ``plan`` never creates a cache;
    nothing is ever created or removed in a folder that is not an ftdsl cache (FTP515).
    """

    def __init__(self, root: str | os.PathLike[str], lock_timeout: float | None = 600):
        self.root = Path(os.path.abspath(root))
        self.lock_timeout = lock_timeout
        self.on_warning: Callable[..., None] = _noop_warning
        self._ready = False
        self._state: str | None = None
        self.files = FileHasher(self.root / "filehash.json", self._memo_writable)
        self.index = RunIndex(
            self.root / "index", lambda: self._locked(self.locks_dir / "index.lock", "the run index", self.lock_timeout)
        )

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
        if not isinstance(key, str) or not KEY_RE.match(key):
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
        return (self.entry_dir(key) / MANIFEST).is_file()

    # ---- ownership and setup

    def require_ours(self) -> str:
        """Raise ResourceError FTP515 unless ``root`` is missing, empty, or an ftdsl cache (marked,
        or an unmarked one of an earlier version: see ``cache_marker``). Writes nothing; the CLI
        calls it before any command uses the cache. Returns the folder's state."""
        if self._state not in ("ftdsl", "legacy"):
            self._state = cache_marker.check(self.root)
        return self._state

    def usable(self) -> bool:
        """True if ``root`` is an existing ftdsl cache (FTP515 if it is someone else's folder)."""
        return self.require_ours() in ("ftdsl", "legacy")

    def _memo_writable(self) -> bool:
        return self._ready or (self.root.is_dir() and cache_marker.is_marked(self.root))

    def check_writable(self) -> None:
        """Prove the root is (or may become) an ftdsl cache, mark it, create the layout; raise
        ResourceError FTP515 for a folder that is not a cache (nothing is created in it) and
        FTP508 (with a hint) if the root cannot be created or written. The executor calls it at
        startup to fail before any work."""
        if self._ready:
            return
        state = cache_marker.check(self.root)
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
                if d == self.root:
                    current = self.root / cache_marker.VERSION_NAME
                    cache_marker.mark(self.root, state)
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
        except ResourceError as exc:
            if exc.code != "FTP508":
                raise
            raise ResourceError(
                "FTP508", f"cache folder {self.root} is not writable: {exc.message}",
                hint=f"fix the permissions (e.g. `chmod -R u+w {self.root}`) or use another "
                "cache folder with `cache = \"...\"` in the pipeline block or FTDSL_CACHE",
            ) from exc
        self._state = "ftdsl"
        self._ready = True

    _ensure = check_writable

    # ---- integrity

    def quarantine(self, key: str, problem: str, label: str | None = None, warn: bool = True) -> None:
        """Move the entry of ``key`` to ``quarantine/`` (kept for inspection, never read again)
        and, with ``warn``, report FTP503 naming ``label``. Callers that find an entry corrupt
        (a checksum here, or an artifact that fails its structural checks when loaded) use it so
        that the next lookup misses and the stage is recomputed."""
        self._check_key(key)
        d = self.entry_dir(key)
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
        problem = inspect(d, key, verify)
        if problem is None:
            return d
        self.quarantine(key, problem, label, warn=True)
        return None

    # ---- publish

    @staticmethod
    def _rmtree(path: Path) -> None:
        rmtree(path)

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
        tlock = cache_locks.filelock().FileLock(str(tlock_path), is_singleton=False)
        try:
            tlock.acquire(timeout=0)
        except OSError as exc:
            self._raise_mapped(exc, tlock_path)
        try:
            try:
                tmp.mkdir()
                build(tmp)
                files = collect(tmp)
                manifest = {
                    "format": FORMAT,
                    "key": key,
                    "files": files,
                    "meta": json.loads(canonical_json(meta)),
                    "created": now_iso(),
                    "ftdsl_version": __version__,
                }
                write_json_atomic(tmp / MANIFEST, manifest)  # last, fsynced, dir fsynced
                # Read-only before it becomes visible: no window where a reader sees it writable.
                set_modes(tmp, 0o444, None)
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

    _raise_mapped = staticmethod(cache_locks.raise_mapped)

    # ---- locks (cache_locks)

    def _locked(self, path: Path, what: str, timeout: float | None):
        return cache_locks.locked(path, what, timeout)

    @contextlib.contextmanager
    def lock(self, key: str) -> Iterator[None]:
        """Exclusive per-key lock across processes (``locks/<key>.lock``), waiting up to
        ``lock_timeout`` s, then ResourceError FTP504 naming the holder. Not reentrant: do not
        nest ``lock``/``get_or_compute``/``remove`` for the same key in one process."""
        self._check_key(key)
        self._ensure()
        with self._locked(self.locks_dir / f"{key}.lock", f"cache entry {key[:12]}", self.lock_timeout):
            yield

    def try_lock(self, key: str):
        """Non-blocking per-key lock: the acquired FileLock, or None if someone holds it."""
        self._check_key(key)
        return cache_locks.try_lock(self.locks_dir / f"{key}.lock")

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
        return cache_admin.clean_stale_temps(self, max_age_s)

    # ---- administration (cache_admin) and removal

    def ls(self) -> list[dict]:
        """One dict per entry: ``key``, ``path``, ``size`` (bytes), ``created`` (ISO UTC),
        ``meta``; the last three are None when the manifest is unreadable. Sorted by creation."""
        return cache_admin.ls(self)

    def verify_all(self) -> list[tuple[str, str | None]]:
        """Fully re-hash every entry; quarantine corrupt ones. Returns ``(key, problem|None)``."""
        return cache_admin.verify_all(self)

    def remove_unlocked(self, key: str) -> bool:
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
            return self.remove_unlocked(key)

    def gc(self, keep: set[str] | None = None, older_than_s: float | None = None,
           dry_run: bool = False) -> list[str]:
        """Remove entries (and their ``work/`` dirs) not in ``keep`` and older than
        ``older_than_s``; returns the keys removed (or that would be, with ``dry_run``).

        Both criteria apply when both are given; at least one is required (a gc without an
        explicit scope is refused with ValueError, never "delete everything" by accident).
        Only an ftdsl cache is collected (FTP515 otherwise), and only entries with a manifest
        naming their key and ``work/<64 hex>`` folders are candidates. Entries whose lock is
        held (a run is computing or publishing them) are skipped. Dead temps are cleaned.
        """
        return cache_admin.gc(self, keep, older_than_s, dry_run)

    # ---- run index (for `plan`'s "changed: lr 3e-05 -> 5e-05"; run_index)

    def record_run(self, pipeline_path: str | os.PathLike[str], stage: str, key: str, attrs: dict,
                   inputs: dict) -> None:
        """Remember that ``stage`` of ``pipeline_path`` last ran as ``key`` with these canonical
        ``attrs`` and ``inputs`` (name -> upstream key). Read-modify-write under
        ``locks/index.lock`` so concurrent runs of different stages don't lose updates."""
        self._check_key(key)
        self._ensure()
        self.index.record(pipeline_path, stage, key, attrs, inputs)

    def record_history(self, pipeline_path: str | os.PathLike[str], stages: list[dict]) -> str:
        """Append one `ftdsl run` to the pipeline's history of runs (`ftdsl runs`, `ftdsl diff`); returns
        the run's id. Under the same lock as ``record_run``."""
        self._ensure()
        return self.index.record_session(pipeline_path, stages)

    def last_run(self, pipeline_path: str | os.PathLike[str], stage: str) -> dict | None:
        """The record of ``stage``'s last run (``key``, ``attrs``, ``inputs``, ``time``) or None.
        Lock-free: the index is replaced atomically, so a read is always a whole version."""
        return self.index.last(pipeline_path, stage)

    # ---- input file hashing (filehash: content-addressed, memoized by stat)

    @property
    def memo_path(self) -> Path:
        return self.files.memo_path

    @property
    def _memo(self) -> dict[str, dict[str, Any]] | None:
        return self.files.memo

    def save_memo(self) -> None:
        """Persist the file-hash memo if it changed. Best effort: never creates the cache (a
        ``plan`` must not), never writes into a folder that is not a marked cache, and ignores
        write failures (it is only a speed-up)."""
        self.files.save()

    def hash_file(self, path: str | os.PathLike[str], memo: bool = True) -> str:
        """sha256 of a file's content. With ``memo`` a previous result is reused while the
        file's (size, mtime_ns, ctime_ns, inode, device) are unchanged; ``memo=False`` (the
        planner's ``--verify``) always re-reads. Content-addressed: ``touch`` changes the stat,
        so the file is re-hashed, but the hash (and the cache key) stays the same. A FIFO,
        device or socket is FtdslError FTP004 (checked with stat before opening)."""
        return self.files.hash_file(path, memo)

    def hash_tree(self, path: str | os.PathLike[str], memo: bool = True) -> str:
        """sha256 over a folder: sorted POSIX relative names and their content hashes. Symlinks
        are followed (Hugging Face snapshots are symlinks to blobs); directory loops are not."""
        return self.files.hash_tree(path, memo)
