"""The `out/` folder: what ftdsl may touch there, and how it writes it.

`out/NAME/` holds a copy of stage NAME's user-facing files (metrics, plots, exports). ftdsl
replaces or deletes such a folder only when it can prove it created it:

* the path is a real folder (``lstat``: a symlink in the way is refused, never followed);
* it holds the ownership marker ``.ftdsl-key`` that ftdsl wrote (a regular file: JSON with
  the stage, the cache key and the list of files and folders written);
* it holds nothing that marker does not list (a file the user added makes it the user's).

Anything else in the way is FTP516 (exit 4) with the path, and is left exactly as it was.

Writes go through a fresh temp folder beside the target (``.NAME.tmp-<pid>-<random>``): every
file is copied and fsynced there, the marker is written last, then the old folder is renamed
aside, the new one renamed in, and the old one removed. Disk full or a file-size limit is
FTP505 (not writable: FTP508); the temp is removed and the previous ``out/NAME/`` is intact.
A temp left by a killed run holds ``.ftdsl-partial`` (or a valid marker) and is removed by the
next run once its process is gone.

The out root itself must be inside the pipeline's folder (symlinks resolved), unless the
pipeline opts in with ``allow_outside_out = true`` (FTP303 otherwise). No torch here.
"""

from __future__ import annotations

import errno
import json
import os
import random
import re
import shutil
import stat
import tempfile
import time
from pathlib import Path

from ftdsl.errors import FtdslError, ResourceError
from ftdsl.runtime.atomic import as_resource_error, fsync_dir

__all__ = ["MARKER", "PARTIAL", "resolve_out_root", "why_not_ours", "in_sync", "publish", "publish_file",
           "withdraw", "preflight", "clean_stale"]

MARKER = ".ftdsl-key"
PARTIAL = ".ftdsl-partial"
_FORMAT = "ftdsl-out/1"
_LEGACY = re.compile(r"[0-9a-f]{64}\n?")  # markers of ftdsl <= 0.1: the cache key alone
# Files an operating system's file browser drops into any folder it shows; not the user's work.
_JUNK = frozenset({".DS_Store", "Thumbs.db", "desktop.ini"})
_SWAPS = 20  # tries at the final rename while another run swaps the same folder
_OWN_HINT = ("ftdsl only replaces folders it created; move or rename it, rename the stage, or set the "
             "pipeline's `out` to another folder")


# -- the out root -------------------------------------------------------------------------------

def resolve_out_root(root_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str], *,
                     allow_outside: bool = False) -> Path:
    """The symlink-resolved out folder; FTP303 (ResourceError, exit 4) when it lies outside the
    pipeline's folder and the pipeline did not say ``allow_outside_out = true``."""
    root_r = Path(root_dir).resolve()
    out_abs = Path(os.path.abspath(out_dir))
    out_r = out_abs.resolve()
    if allow_outside or out_r.is_relative_to(root_r):
        return out_r
    how = ("is a symlink to" if out_abs.is_relative_to(root_r) else "is")
    raise ResourceError(
        "FTP303", f"the output folder {out_abs} {how} a place outside the pipeline's folder {root_r}"
                  + (f" ({out_r})" if how != "is" else ""),
        hint="write `out` relative to the pipeline's folder, or say `allow_outside_out = true` in the "
             "`pipeline` block to write there on purpose")


# -- ownership ----------------------------------------------------------------------------------

def _read_marker(folder: Path) -> dict | None:
    """The parsed marker of ``folder`` ({} for an old key-only marker); None when there is none
    or it is not a regular file ftdsl wrote."""
    m = folder / MARKER
    try:
        st = os.lstat(m)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode) or st.st_size > 16 << 20:
        return None
    try:
        fd = os.open(m, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        with os.fdopen(fd, "rb") as f:
            raw = f.read().decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    if _LEGACY.fullmatch(raw):
        return {"key": raw.strip()}
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(data, dict) or data.get("format") != _FORMAT or not isinstance(data.get("files"), dict) \
            or not isinstance(data.get("dirs"), list):
        return None
    return data


def _listing(folder: Path) -> tuple[dict[str, int], list[str], list[str]]:
    """(files: rel -> size, dirs, others: symlinks/devices/...) under ``folder``, never following
    a symlink."""
    files: dict[str, int] = {}
    dirs: list[str] = []
    others: list[str] = []
    stack = [""]
    while stack:
        rel = stack.pop()
        with os.scandir(folder / rel if rel else folder) as it:
            for e in it:
                r = f"{rel}/{e.name}" if rel else e.name
                st = e.stat(follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    dirs.append(r)
                    stack.append(r)
                elif stat.S_ISREG(st.st_mode):
                    files[r] = st.st_size
                else:
                    others.append(r)
    return files, sorted(dirs), sorted(others)


def why_not_ours(path: Path) -> str | None:
    """Why ftdsl may not replace or delete ``path``, or None when it may (or nothing is there).

    A folder swapped by a concurrent run while it is inspected is inspected again (the verdict is
    kept only when ``path`` is still the same inode afterwards)."""
    why = None
    for _ in range(5):
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return None
        except OSError as e:
            return f"cannot be inspected ({os.strerror(e.errno) if e.errno else e})"
        why = _inspect(path, st)
        try:
            again = os.lstat(path)
        except FileNotFoundError:
            continue
        except OSError:
            return why
        if (again.st_ino, again.st_dev) == (st.st_ino, st.st_dev):
            return why
    return why


def _inspect(path: Path, st: os.stat_result) -> str | None:
    if stat.S_ISLNK(st.st_mode):
        return "is a symlink (ftdsl never writes or deletes through one)"
    if not stat.S_ISDIR(st.st_mode):
        return "is a file that ftdsl did not create"
    marker = _read_marker(path)
    if marker is None:
        return f"is a folder without ftdsl's ownership marker `{MARKER}`, so ftdsl did not create it"
    try:
        files, dirs, others = _listing(path)
    except OSError as e:
        return f"cannot be listed ({os.strerror(e.errno) if e.errno else e})"
    if "files" not in marker:  # an old key-only marker: the folder is ftdsl's, its content unlisted
        extra = others
    else:
        known_files = set(marker["files"]) | {MARKER}
        known_dirs = set(marker["dirs"])
        extra = ([f for f in files if f not in known_files and f.rsplit("/", 1)[-1] not in _JUNK]
                 + [d for d in dirs if d not in known_dirs] + others)
    if extra:
        shown = ", ".join(f"`{x}`" for x in sorted(extra)[:5]) + (f" and {len(extra) - 5} more"
                                                                   if len(extra) > 5 else "")
        return f"holds files ftdsl did not write there: {shown}"
    return None


def in_sync(dest: Path, key: str) -> bool:
    """Whether ``dest`` is ftdsl's copy of the outputs of ``key``, complete."""
    if why_not_ours(dest) is not None or not os.path.lexists(dest):
        return False
    marker = _read_marker(dest) or {}
    if marker.get("key") != key or "files" not in marker:
        return False
    for rel, size in marker["files"].items():
        try:
            st = os.lstat(dest / rel)
        except OSError:
            return False
        if not stat.S_ISREG(st.st_mode) or st.st_size != size:
            return False
    return True


def _refuse(dest: Path, why: str, what: str) -> ResourceError:
    return ResourceError("FTP516", f"{what}: {dest} {why}; it was left untouched", hint=_OWN_HINT)


def _file_record(dest: Path) -> Path:
    """The ownership record of a single file ftdsl writes at a user's path: ``.NAME.ftdsl`` beside it."""
    return dest.with_name(f".{dest.name}.ftdsl")


def _why_not_our_file(dest: Path) -> str | None:
    """Why ftdsl may not replace the file ``dest`` (None: nothing there, or the very bytes ftdsl wrote
    there last, as its record beside it says)."""
    from ftdsl.runtime.hashing import sha256_file

    try:
        st = os.lstat(dest)
    except FileNotFoundError:
        return None
    if stat.S_ISLNK(st.st_mode):
        return "is a symlink (ftdsl never writes or deletes through one)"
    if not stat.S_ISREG(st.st_mode):
        return "is not a regular file"
    record = _file_record(dest)
    try:
        rst = os.lstat(record)
        mine = json.loads(record.read_text(encoding="utf-8")) if stat.S_ISREG(rst.st_mode) and rst.st_size < 4096 else None
    except (OSError, ValueError):
        mine = None
    if not isinstance(mine, dict) or mine.get("format") != _FORMAT:
        return f"is a file that ftdsl did not write (no record `{record.name}` beside it)"
    if mine.get("size") != st.st_size or mine.get("sha256") != sha256_file(dest):
        return "was changed since ftdsl wrote it"
    return None


def publish_file(src: Path, dest: Path, what: str) -> None:
    """Copy file ``src`` to ``dest`` (a user's `path`): only over nothing or over the bytes ftdsl wrote
    there last (FTP516 otherwise: a user's file, a symlink, a file edited since); atomically (temp
    beside it, fsync, rename), then the record ``.NAME.ftdsl`` beside it; disk full is FTP505."""
    from ftdsl.runtime.atomic import write_json_atomic
    from ftdsl.runtime.hashing import sha256_file

    why = _why_not_our_file(dest)
    if why is not None:
        raise _refuse(dest, why, what)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f, open(src, "rb") as r:
            shutil.copyfileobj(r, f, 1 << 20)
            f.flush()
            os.fchmod(f.fileno(), 0o644)
            os.fsync(f.fileno())
        os.replace(tmp, dest)
        tmp = None
        fsync_dir(dest.parent)
        write_json_atomic(_file_record(dest), {"format": _FORMAT, "size": os.path.getsize(dest),
                                               "sha256": sha256_file(dest)})
    except BaseException as e:
        raise _mapped(e, dest) from e
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


def preflight(out_root: Path, names) -> None:
    """Refuse (FTP516, every conflict at once) before any stage runs when an ``out/NAME`` in the
    way is not ftdsl's: no stage should train for an hour and then find its folder taken."""
    problems = [(out_root / n, why) for n in names if (why := why_not_ours(out_root / n)) is not None]
    if not problems:
        return
    if len(problems) == 1:
        raise _refuse(problems[0][0], problems[0][1], "cannot write the stage's outputs")
    lines = "\n".join(f"  {p} {why}" for p, why in problems)
    raise ResourceError("FTP516", f"cannot write the outputs of {len(problems)} stages; each folder below is in "
                                  f"the way and was left untouched:\n{lines}", hint=_OWN_HINT)


# -- writing ------------------------------------------------------------------------------------

def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def clean_stale(out_root: Path, name: str) -> None:
    """Remove ``.NAME.tmp-*`` / ``.NAME.old-*`` left by a killed run (its process is gone), and
    only when the folder proves it is ftdsl's (``.ftdsl-partial`` or a valid marker)."""
    pat = re.compile(rf"\.{re.escape(name)}\.(tmp|old)-(\d+)-[A-Za-z0-9_]+")
    try:
        names = os.listdir(out_root)
    except OSError:
        return
    for n in names:
        m = pat.fullmatch(n)
        if not m or (int(m.group(2)) != os.getpid() and _alive(int(m.group(2)))):
            continue
        p = out_root / n
        try:
            st = os.lstat(p)
        except OSError:
            continue
        if not stat.S_ISDIR(st.st_mode):
            continue
        partial = p / PARTIAL
        if (os.path.lexists(partial) and stat.S_ISREG(os.lstat(partial).st_mode)) or why_not_ours(p) is None:
            _rmtree(p)
        else:
            try:
                os.rmdir(p)  # an empty placeholder (killed between mkdtemp and rename); never a full folder
            except OSError:
                pass


def _rmtree(p: Path) -> None:
    # shutil.rmtree never follows symlinks inside the tree (it unlinks them) and, on Linux, works
    # through directory fds, so a folder swapped for a symlink mid-way is not followed either.
    shutil.rmtree(p, ignore_errors=True)


def _dir_mode() -> int:
    from ftdsl.runtime.atomic import _file_mode

    return 0o777 & ~(0o666 & ~_file_mode())  # 0o755 under the usual umask 022


def _copy_tree(src: Path, dst: Path) -> tuple[dict[str, int], list[str]]:
    """Copy regular files and folders of ``src`` into the fresh folder ``dst`` (fsynced);
    returns what was written. Symlinks and special files in ``src`` are skipped."""
    from ftdsl.runtime.atomic import _file_mode

    fmode, dmode = _file_mode(), _dir_mode()
    files: dict[str, int] = {}
    dirs: list[str] = []
    stack = [""]
    while stack:
        rel = stack.pop()
        with os.scandir(src / rel if rel else src) as it:
            entries = sorted(it, key=lambda e: e.name)
        for e in entries:
            r = f"{rel}/{e.name}" if rel else e.name
            if r in (MARKER, PARTIAL):
                continue
            st = e.stat(follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                os.mkdir(dst / r, dmode)
                dirs.append(r)
                stack.append(r)
            elif stat.S_ISREG(st.st_mode):
                flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
                fd = os.open(dst / r, flags, 0o600)
                with os.fdopen(fd, "wb") as w, open(e.path, "rb") as f:
                    shutil.copyfileobj(f, w, 1 << 20)
                    w.flush()
                    os.fchmod(w.fileno(), fmode)
                    os.fsync(w.fileno())
                files[r] = st.st_size
    for d in [""] + dirs:
        fsync_dir(dst / d if d else dst)
    return files, sorted(dirs)


def _write_marker(folder: Path, name: str, key: str | None, files: dict[str, int], dirs: list[str]) -> None:
    from ftdsl.runtime.atomic import _file_mode

    data = {"format": _FORMAT, "stage": name, "key": key, "files": files, "dirs": dirs,
            "note": "written by ftdsl: this folder is replaced on the next `ftdsl run`; files added here "
                    "make ftdsl leave it alone"}
    text = json.dumps(data, indent=1, sort_keys=True) + "\n"
    fd = os.open(folder / MARKER, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    with os.fdopen(fd, "wb") as w:
        w.write(text.encode("utf-8"))
        w.flush()
        os.fchmod(w.fileno(), _file_mode())
        os.fsync(w.fileno())


def _mapped(exc: BaseException, path: Path) -> BaseException:
    if isinstance(exc, FtdslError) or not isinstance(exc, Exception):
        return exc
    if isinstance(exc, OSError) and exc.filename:
        path = Path(os.fsdecode(exc.filename))
    mapped = as_resource_error(exc, path)
    if mapped is None:
        return exc
    if mapped.code == "FTP505":
        mapped.hint = ("free some space (`ftdsl cache gc` removes old cache entries) or set the pipeline's `out` "
                       "to another disk; the stage's result is in the cache and the previous outputs in `out/` are "
                       "intact, so the next `ftdsl run` only copies them")
    return mapped


def publish(out_root: Path, name: str, src: Path, key: str | None) -> bool:
    """Make ``out_root/name`` a copy of folder ``src`` (the outputs of cache key ``key``).

    Returns False when it already was (never for ``key=None``: always copied). FTP516 when
    something ftdsl does not own is in the way, FTP505/FTP508 when the disk is full or not
    writable: the temp is removed and the previous folder is intact in both cases.
    """
    dest = out_root / name
    if key is not None and in_sync(dest, key):
        return False
    why = why_not_ours(dest)
    if why is not None:
        raise _refuse(dest, why, f"cannot write the outputs of `{name}`")
    tmp: Path | None = None
    old: Path | None = None
    try:
        out_root.mkdir(parents=True, exist_ok=True)
        clean_stale(out_root, name)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-{os.getpid()}-", dir=out_root))
        (tmp / PARTIAL).write_text(f"{os.getpid()}\n", encoding="utf-8")
        files, dirs = _copy_tree(src, tmp)
        _write_marker(tmp, name, key, files, dirs)
        os.unlink(tmp / PARTIAL)
        os.chmod(tmp, _dir_mode())
        fsync_dir(tmp)
        for attempt in range(_SWAPS):  # another run of the same pipeline may be swapping the same folder
            why = why_not_ours(dest)  # again, right before the swap: the folder may have changed
            if why is not None:
                raise _refuse(dest, why, f"cannot write the outputs of `{name}`")
            if attempt and key is not None and in_sync(dest, key):
                break  # the other run published these very outputs: ours are not needed
            if os.path.lexists(dest):
                old = Path(tempfile.mkdtemp(prefix=f".{name}.old-{os.getpid()}-", dir=out_root))
                try:
                    os.rename(dest, old)  # replaces the empty placeholder folder
                except FileNotFoundError:  # moved away by the other run meanwhile
                    os.rmdir(old)
                    old = None
            try:
                os.rename(tmp, dest)
            except OSError as e:
                old = _restore(old, dest)
                if e.errno not in (errno.EEXIST, errno.ENOTEMPTY) or attempt == _SWAPS - 1:
                    raise
                _drop(old)  # the other run's folder is in place now; ours was set aside
                old = None
                time.sleep(random.uniform(0, 0.002 * (attempt + 1)))
                continue
            tmp = None
            break
        fsync_dir(out_root)
    except BaseException as exc:
        _restore(old, dest)
        if tmp is not None:
            _rmtree(tmp)
        mapped = _mapped(exc, dest)
        if mapped is not exc:
            raise mapped from exc
        raise
    if tmp is not None:  # another run published the same outputs first
        _rmtree(tmp)
    _drop(old)
    return True


def _restore(old: Path | None, dest: Path) -> None:
    """Put the folder set aside back at ``dest`` when nothing took its place; otherwise (another
    run's outputs are there now) drop it. Returns None, the new value of the caller's ``old``."""
    if old is not None and not os.path.lexists(dest):
        try:
            os.rename(old, dest)
            return None
        except OSError:
            pass
    _drop(old)
    return None


def _drop(old: Path | None) -> None:
    """Remove a folder set aside by a swap, after checking again that it is ftdsl's."""
    if old is not None and os.path.lexists(old) and why_not_ours(old) is None:
        _rmtree(old)


def withdraw(out_root: Path, name: str) -> str | None:
    """Remove ``out_root/name`` when ftdsl owns it (a failed stage leaves nothing of its own in
    `out/`). Returns what was done, for a note: "removed", or why it was left, or None when
    there was nothing. Never raises for a folder in the way; OS errors become FTP508/FTP505."""
    dest = out_root / name
    if not os.path.lexists(dest):
        return None
    why = why_not_ours(dest)
    if why is not None:
        return f"left {dest}: it {why}"
    old: Path | None = None
    try:
        old = Path(tempfile.mkdtemp(prefix=f".{name}.old-{os.getpid()}-", dir=out_root))
        os.rename(dest, old)
        fsync_dir(out_root)
    except OSError as exc:
        if old is not None and not os.listdir(old):
            _rmtree(old)
        if exc.errno == errno.ENOENT:
            return None
        mapped = _mapped(exc, dest)
        if mapped is not exc:
            raise mapped from exc
        raise
    if why_not_ours(old) is None:
        _rmtree(old)
    return "removed"
