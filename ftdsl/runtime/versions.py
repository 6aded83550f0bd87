"""Installed distributions' versions, read without :mod:`importlib.metadata`.

`plan` puts library versions into every cache key. ``importlib.metadata.version`` costs ~56 ms
on a quiet machine (importing it pulls in ``email``, ``zipfile``, ``csv``, ``inspect``; each
look-up parses a METADATA file with the e-mail parser) and several times that on a busy one.
This module finds the same ``*.dist-info/METADATA`` file on ``sys.path`` (the first match wins,
as for importlib.metadata) and reads its ``Version:`` header line, which is the value
``importlib.metadata.version`` returns. Anything unusual (an egg, a zip, no METADATA) falls
back to importlib.metadata, so the answer is always importlib.metadata's.
"""

from __future__ import annotations

import functools
import os
import re
import sys

__all__ = ["version"]

_SEP = re.compile(r"[-_.]+")


def _norm(name: str) -> str:
    return _SEP.sub("_", name).lower()


@functools.lru_cache(maxsize=1)
def _dist_infos() -> dict[str, str]:
    """Normalized distribution name -> its METADATA path, first on ``sys.path`` wins."""
    found: dict[str, str] = {}
    for entry in sys.path:
        folder = entry or "."
        try:
            names = os.listdir(folder)
        except OSError:  # not a folder (a zip, a missing path)
            continue
        for n in names:
            if n.endswith(".dist-info"):
                found.setdefault(_norm(n[: -len(".dist-info")].partition("-")[0]),
                                 os.path.join(folder, n, "METADATA"))
    return found


def _from_file(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("Version:"):
                    return line.split(":", 1)[1].strip() or None
                if not line.strip():  # end of the headers
                    return None
    except OSError:
        return None
    return None


@functools.lru_cache(maxsize=None)
def version(dist: str) -> str | None:
    """The installed version of distribution ``dist`` (as importlib.metadata gives it), or None."""
    path = _dist_infos().get(_norm(dist))
    found = _from_file(path) if path else None
    if found:
        return found
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None
