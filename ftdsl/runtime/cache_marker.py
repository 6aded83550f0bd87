"""Proof that a folder is an ftdsl cache, before ftdsl creates or deletes anything in it.

A cache made by this version holds ``ftdsl-cache.json`` (``{"tool": "ftdsl", "format": 1, ...}``)
and the standard cache-directory tag ``CACHEDIR.TAG`` (https://bford.info/cachedir/; backup tools
such as tar ``--exclude-caches``, borg and restic skip folders holding it). The version file is
written first, the tag second, both atomically, so a folder holding only a tag belongs to another
program.

A folder is one of:

* ``missing`` or ``empty``: it may become a new cache (the markers are written with the layout);
* ``ftdsl``: marked by this or an older format;
* ``legacy``: an unmarked cache made before markers existed. Adopted (markers written at the
  first write) only when everything at its top level is a name of the cache layout and it holds
  proof: an entry ``entries/<2 hex>/<hex key>/manifest.json`` whose manifest names that key, a
  run-index record, a file-hash memo, or the complete set of layout folders;
* ``foreign``: anything else, refused with FTP515 (exit 4) before anything is created in it.

No torch here.
"""

from __future__ import annotations

import json
import os
import re
from datetime import datetime, timezone
from pathlib import Path

from ftdsl import __version__
from ftdsl.errors import ResourceError
from ftdsl.paths import read_regular_bytes
from ftdsl.runtime.atomic import write_json_atomic, write_text_atomic

__all__ = ["TAG_NAME", "TAG_SIGNATURE", "VERSION_NAME", "CACHE_FORMAT", "classify", "check", "mark", "is_marked"]

TAG_NAME = "CACHEDIR.TAG"
TAG_SIGNATURE = "Signature: 8a477f597d28d172789f06886806bc55"
TAG_CONTENT = (
    TAG_SIGNATURE + "\n"
    "# This file is a cache directory tag created by ftdsl (https://bford.info/cachedir/).\n"
    "# Everything here can be recomputed; backup tools may skip this folder.\n"
)
VERSION_NAME = "ftdsl-cache.json"
CACHE_FORMAT = 1
LAYOUT_DIRS = ("entries", "work", "quarantine", "locks", "index")
LAYOUT_FILES = ("filehash.json", TAG_NAME, VERSION_NAME)
# Temps of the atomic marker writes (ftdsl.runtime.atomic: ".<name>.<random>.tmp"): another
# process is creating the cache right now.
_MARKER_TEMP = re.compile(r"^\.(ftdsl-cache\.json|CACHEDIR\.TAG|filehash\.json)\..+\.tmp$")
_HEX = re.compile(r"^[0-9a-f]{8,128}$")


def _read_version(root: Path) -> dict | None:
    try:
        data = json.loads(read_regular_bytes(root / VERSION_NAME, follow=False))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def is_marked(root: Path) -> bool:
    """True if ``root`` holds an ftdsl version file of a format this version reads."""
    v = _read_version(root)
    return bool(v) and v.get("tool") == "ftdsl" and v.get("format") == CACHE_FORMAT


def _has_entry(root: Path) -> bool:
    try:
        prefixes = sorted(os.listdir(root / "entries"))
    except OSError:
        return False
    for pre in prefixes:
        if len(pre) != 2 or not _HEX.match(pre + "000000"):
            continue
        try:
            keys = os.listdir(root / "entries" / pre)
        except OSError:
            continue
        for key in keys:
            if not (_HEX.match(key) and key.startswith(pre)):
                continue
            try:
                m = json.loads(read_regular_bytes(root / "entries" / pre / key / "manifest.json", follow=False))
            except (OSError, ValueError):
                continue
            if isinstance(m, dict) and m.get("key") == key and isinstance(m.get("files"), dict):
                return True
    return False


def _has_index(root: Path) -> bool:
    try:
        names = os.listdir(root / "index")
    except OSError:
        return False
    for name in names:
        if not re.match(r"^[0-9a-f]{16}\.json$", name):
            continue
        try:
            data = json.loads(read_regular_bytes(root / "index" / name, follow=False))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and isinstance(data.get("stages"), dict) and "pipeline" in data:
            return True
    return False


def _has_memo(root: Path) -> bool:
    try:
        data = json.loads(read_regular_bytes(root / "filehash.json", follow=False))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and isinstance(data.get("files"), dict) and "format" in data


def classify(root: Path) -> tuple[str, str]:
    """``(state, why)``: state is missing | empty | ftdsl | legacy | foreign | newer. Reads only."""
    try:
        names = os.listdir(root)
    except FileNotFoundError:
        return "missing", ""
    except NotADirectoryError:
        if os.path.lexists(root):
            return "foreign", "it is a file, not a folder"
        return "missing", ""  # a parent is a file: creating it fails with FTP508
    except OSError as e:
        return "foreign", f"it cannot be listed ({e.strerror})"
    names = [n for n in names if not _MARKER_TEMP.match(n)]
    version = _read_version(root)
    if version is not None:
        if version.get("tool") != "ftdsl":
            return "foreign", f"its {VERSION_NAME} is not an ftdsl cache marker"
        fmt = version.get("format")
        if fmt == CACHE_FORMAT:
            return "ftdsl", ""
        if isinstance(fmt, int) and fmt > CACHE_FORMAT:
            return "newer", f"it was made by a newer ftdsl (cache format {fmt}; this version reads {CACHE_FORMAT})"
        return "foreign", f"its {VERSION_NAME} has an unknown format {fmt!r}"
    if not names:
        return "empty", ""
    if TAG_NAME in names and not _tag_is_ours(root):
        return "foreign", f"it holds a {TAG_NAME} but no {VERSION_NAME} (another program's cache)"
    unknown = sorted(n for n in names if not _is_layout_item(root, n))
    if unknown:
        shown = ", ".join(f"`{n}`" for n in unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        return "foreign", f"it is not empty and holds no {VERSION_NAME} (found {shown})"
    if _has_entry(root) or _has_index(root) or _has_memo(root) or all(n in names for n in LAYOUT_DIRS):
        return "legacy", ""
    return "foreign", f"it holds no {VERSION_NAME} and no cache entries"


def _tag_is_ours(root: Path) -> bool:
    """An ftdsl-written tag (its version file was deleted): the legacy rules decide."""
    try:
        return b"created by ftdsl" in read_regular_bytes(root / TAG_NAME, follow=False)[:4096]
    except OSError:
        return False


def _is_layout_item(root: Path, name: str) -> bool:
    p = root / name
    if name in LAYOUT_DIRS:
        return p.is_dir() and not p.is_symlink()
    if name in LAYOUT_FILES:
        return p.is_file() and not p.is_symlink()
    return False


def refusal(root: Path, why: str) -> ResourceError:
    return ResourceError(
        "FTP515",
        f"`{root}` is not an ftdsl cache: {why}",
        hint="ftdsl creates and deletes files only in a cache it made (one holding "
        f"{VERSION_NAME} and {TAG_NAME}); give `--cache` (or `cache = \"...\"`, $FTDSL_CACHE) an ftdsl "
        "cache, a new folder or an empty one",
    )


def check(root: Path) -> str:
    """The state of ``root`` when ftdsl may use it as a cache, else FTP515. Writes nothing."""
    state, why = classify(root)
    if state in ("foreign", "newer"):
        raise refusal(root, why)
    return state


def mark(root: Path, state: str) -> None:
    """Write the version file (first) and the tag of a new, empty or legacy cache at ``root``
    (which exists); for a marked cache, restore a deleted tag."""
    if state != "ftdsl":
        record = {
            "tool": "ftdsl",
            "format": CACHE_FORMAT,
            "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "ftdsl_version": __version__,
        }
        if state == "legacy":
            record["adopted"] = "an unmarked cache made by an earlier ftdsl"
        write_json_atomic(root / VERSION_NAME, record)
    try:
        ok = read_regular_bytes(root / TAG_NAME, follow=False).startswith(TAG_SIGNATURE.encode())
    except OSError:
        ok = False
    if not ok:
        write_text_atomic(root / TAG_NAME, TAG_CONTENT)
