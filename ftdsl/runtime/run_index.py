"""The run index: the last run of each stage of each pipeline, for `plan`'s "changed: lr 3e-05 ->
5e-05" (``<cache>/index/<sha(pipeline path)[:16]>.json``), and the pipeline's history of runs for
`ftdsl runs` and `ftdsl diff` (ftdsl/run_history.py). No torch here.

Two files per pipeline: ``<h>.json`` (read by every `plan`, so it stays small)::

    {"format": 1, "pipeline": "/abs/p.ftp",
     "stages": {"fit": {"key", "attrs", "inputs", "time"}}}          # the last run of each stage

and ``<h>.runs.json``, the history (read by `runs` and `diff` only)::

    {"format": 1, "pipeline": "/abs/p.ftp",
     "runs": [{"id": "<40 hex>", "time": "...Z", "git": "<commit>" | null, "order": [stage names],
               "stages": {"fit": {"kind", "key", "status": "ran|cached|failed|skipped",
                                  "attrs": "<attrs hash>", "files": {...}, "metrics": {...}, "seconds"}}}],
     "attrs": {"<attrs hash>": {... the stage's canonical attributes ...}}}

``runs`` keeps the last ``MAX_RUNS`` runs, oldest first; ``attrs`` holds each distinct set of
attributes once (a re-run that changed nothing adds no attributes)."""

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

__all__ = ["RunIndex", "FORMAT", "MAX_RUNS", "git_head"]

FORMAT = 1
MAX_RUNS = 200


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

    # -- the history of runs (`ftdsl runs`, `ftdsl diff`) ----------------------------------------

    def history_path_of(self, pipeline_path: str | os.PathLike[str]) -> Path:
        return self.path_of(pipeline_path).with_suffix(".runs.json")

    @staticmethod
    def read_history(path: Path) -> dict:
        try:
            data = json.loads(read_regular_bytes(path, follow=False))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) and isinstance(data.get("runs"), list) else {}

    def record_session(self, pipeline_path: str | os.PathLike[str], stages: list[dict]) -> str:
        """Append one `ftdsl run` of ``pipeline_path`` to its history; returns the run's id.

        ``stages``: ``{"name", "kind", "key", "status", "attrs", "files", "metrics", "seconds"}`` per stage
        the run reached, in plan order."""
        from ftdsl.runtime.atomic import json_safe

        path = self.history_path_of(pipeline_path)
        real = os.path.realpath(os.fspath(pipeline_path))
        when = now_iso()
        keys = ",".join(f"{s['name']}={s['key']}" for s in stages)
        run_id = hashlib.sha256(f"{real}\0{when}\0{os.getpid()}\0{keys}".encode("utf-8", "surrogateescape")).hexdigest()[:40]
        attrs_by_hash: dict[str, dict] = {}
        rows: dict[str, dict] = {}
        for s in stages:
            attrs = json.loads(canonical_json(s.get("attrs") or {}))
            h = hashlib.sha256(canonical_json(attrs).encode()).hexdigest()[:16]
            attrs_by_hash[h] = attrs
            rows[s["name"]] = {"kind": s.get("kind", ""), "key": s.get("key", ""), "status": s.get("status", ""),
                               "attrs": h, "files": dict(s.get("files") or {}),
                               "metrics": json_safe(dict(s.get("metrics") or {})),
                               "seconds": round(float(s.get("seconds") or 0.0), 3)}
        run = {"id": run_id, "time": when, "git": git_head(Path(real).parent), "order": list(rows), "stages": rows}
        with self._locked():
            data = self.read_history(path) or {"format": FORMAT, "pipeline": real, "runs": []}
            runs = [r for r in data.get("runs", []) if isinstance(r, dict)] + [run]
            runs = runs[-MAX_RUNS:]
            table = data.get("attrs") if isinstance(data.get("attrs"), dict) else {}
            table = {**table, **attrs_by_hash}
            used = {st.get("attrs") for r in runs for st in (r.get("stages") or {}).values() if isinstance(st, dict)}
            data["runs"] = runs
            data["attrs"] = {h: a for h, a in table.items() if h in used}
            write_json_atomic(path, data)
        return run_id

    def history(self, pipeline_path: str | os.PathLike[str]) -> list[dict]:
        """The pipeline's runs, oldest first, each stage's ``attrs`` resolved to the attributes."""
        return resolve_runs(self.read_history(self.history_path_of(pipeline_path)))

    def all_histories(self) -> list[dict]:
        """Every pipeline's runs in this cache, oldest first (``pipeline`` set on each run)."""
        out: list[dict] = []
        try:
            files = sorted(self.index_dir.glob("*.runs.json"))
        except OSError:
            return out
        for f in files:
            out.extend(resolve_runs(self.read_history(f)))
        out.sort(key=lambda r: (r.get("time", ""), r.get("id", "")))
        return out


def resolve_runs(data: dict) -> list[dict]:
    table = data.get("attrs") if isinstance(data.get("attrs"), dict) else {}
    out = []
    for r in data.get("runs", []) if isinstance(data.get("runs"), list) else []:
        if not isinstance(r, dict) or not isinstance(r.get("id"), str) or not isinstance(r.get("stages"), dict):
            continue
        stages = {}
        order = [n for n in r.get("order") or () if n in r["stages"]]  # the plan's order (the JSON sorts keys)
        for name in order + sorted(n for n in r["stages"] if n not in order):
            st = r["stages"][name]
            if isinstance(st, dict):
                stages[name] = {**st, "attrs": table.get(st.get("attrs"), {}) if isinstance(st.get("attrs"), str)
                                else (st.get("attrs") or {})}
        out.append({**r, "pipeline": data.get("pipeline", ""), "stages": stages})
    return out


def git_head(start: Path) -> str | None:
    """The commit checked out in the git work tree holding ``start`` (read from .git; no subprocess), or None."""
    try:
        here = Path(start).resolve()
        for d in (here, *here.parents):
            git = d / ".git"
            if git.is_file():  # a worktree or submodule: "gitdir: PATH"
                text = git.read_text(encoding="utf-8", errors="replace").strip()
                if not text.startswith("gitdir:"):
                    return None
                git = (d / text[7:].strip()).resolve()
            if not git.is_dir():
                continue
            head = (git / "HEAD").read_text(encoding="utf-8", errors="replace").strip()
            if not head.startswith("ref:"):
                return head[:40] or None
            ref = head[4:].strip()
            for root in (git, _common_dir(git)):
                f = root / ref
                if f.is_file():
                    return f.read_text(encoding="utf-8", errors="replace").strip()[:40] or None
                packed = root / "packed-refs"
                if packed.is_file():
                    for line in packed.read_text(encoding="utf-8", errors="replace").splitlines():
                        parts = line.split()
                        if len(parts) == 2 and parts[1] == ref:
                            return parts[0][:40]
            return None
    except OSError:
        return None
    return None


def _common_dir(git: Path) -> Path:
    try:
        return (git / (git / "commondir").read_text(encoding="utf-8").strip()).resolve()
    except OSError:
        return git
