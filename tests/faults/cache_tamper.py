"""Helpers for the fault tests that damage a published cache entry on purpose."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path


def entry_of(cache: Path, stage: str) -> Path:
    """The entry of `stage`, found by the manifest's meta (independent of how keys are made)."""
    for m in (cache / "entries").glob("*/*/manifest.json"):
        if json.loads(m.read_text())["meta"]["stage"] == stage:
            return m.parent
    raise AssertionError(f"no entry for {stage}")


def tamper(entry: Path, rel: str, content: bytes) -> None:
    """Replace a file of a published entry and fix its manifest record, so checksums pass."""
    f = entry / rel
    os.chmod(f, 0o644)
    f.write_bytes(content)
    mp = entry / "manifest.json"
    m = json.loads(mp.read_text())
    m["files"][rel] = {"size": len(content), "sha256": hashlib.sha256(content).hexdigest()}
    os.chmod(mp, 0o644)
    mp.write_text(json.dumps(m))
