"""The one place that turns values and files into hashes: cache keys (``plan`` and the cache use
the same functions, so what ``plan`` prints is the key ``run`` looks up) and file checksums.

No torch, no third-party imports: the front end and ``plan`` import this.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from ftdsl.paths import open_regular

__all__ = ["canonical_json", "hash_key", "sha256_file", "hash_and_fsync", "CHUNK"]

CHUNK = 1 << 20


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
    """Streaming sha256 hex of a regular file's content. The file is opened without blocking and
    its type checked on the descriptor, so a FIFO or ``/dev/zero`` is an OSError, never a hang
    (callers that take a path from a user report it first with
    :func:`ftdsl.paths.require_regular_file`, FTP004)."""
    h = hashlib.sha256()
    with open_regular(path) as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def hash_and_fsync(path: str | os.PathLike[str]) -> str:
    """sha256 of a file just written, then fsync of the same fd: one pass makes the data durable
    before the manifest that vouches for it is written."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
        os.fsync(f.fileno())
    return h.hexdigest()
