"""The run index: the last run of each stage of each pipeline, for `plan`'s "changed: lr 3e-05 ->
5e-05" (``<cache>/index/<sha(pipeline path)[:16]>.json``). No torch here."""

from __future__ import annotations

import hashlib
import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, ContextManager

from ftdsl.paths import read_regular_bytes
from ftdsl.runtime.atomic import write_json_atomic
from ftdsl.runtime.hashing import canonical_json

__all__ = ["RunIndex", "FORMAT"]

FORMAT = 1


def now_iso() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class RunIndex:
    """Records under ``index_dir``; ``locked()`` is the cross-process lock for read-modify-write."""

    def __init__(self, index_dir: Path, locked: Callable[[], ContextManager[Any]]):
        self.index_dir = index_dir
        self._locked = locked

    def path_of(self, pipeline_path: str | os.PathLike[str]) -> Path:
        real = os.path.realpath(os.fspath(pipeline_path))
        return self.index_dir / (hashlib.sha256(real.encode("utf-8", "surrogateescape")).hexdigest()[:16] + ".json")

    @staticmethod
    def read(path: Path) -> dict:
        try:
            data = json.loads(read_regular_bytes(path, follow=False))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) and isinstance(data.get("stages"), dict) else {}

    def record(self, pipeline_path: str | os.PathLike[str], stage: str, key: str, attrs: dict,
               inputs: dict) -> None:
        """See ``Cache.record_run``. The caller has created the cache layout."""
        path = self.path_of(pipeline_path)
        record = {
            "key": key,
            "attrs": json.loads(canonical_json(attrs)),
            "inputs": json.loads(canonical_json(inputs)),
            "time": now_iso(),
        }
        with self._locked():
            data = self.read(path) or {
                "format": FORMAT,
                "pipeline": os.path.realpath(os.fspath(pipeline_path)),
                "stages": {},
            }
            data["stages"][stage] = record
            write_json_atomic(path, data)

    def last(self, pipeline_path: str | os.PathLike[str], stage: str) -> dict | None:
        """See ``Cache.last_run``: lock-free, the index is replaced atomically."""
        rec = self.read(self.path_of(pipeline_path)).get("stages", {}).get(stage)
        return rec if isinstance(rec, dict) else None
