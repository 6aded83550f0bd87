"""Resumable training checkpoints without pickle.

Layout of one checkpoint (reliability.md §4, stack.md §5)::

    <dir>/step-<N>/model.safetensors     model weights
                   optim.safetensors     optimizer tensors as ``state.{idx}.{name}``
                   rng.safetensors       torch CPU (and CUDA) RNG, numpy MT keys, epoch generator
                   best.safetensors      best weights so far (early stopping only)
                   extra.safetensors     optional stage-specific tensors
                   state.json            everything else, written last; lists every file with
                                         its size and sha256

A checkpoint is built in ``<dir>/.tmp-<uuid>/`` and renamed to ``step-<N>`` only when complete,
so a process killed mid-write leaves the previous checkpoint loadable; stale temp folders are
removed by the next :func:`load_latest`. Only the newest ``keep`` checkpoints (by step number,
never mtime) are kept. Nothing here ever unpickles: a pickle file found in the checkpoint folder
is refused (FTP302) without being opened.

This module manages the folders (write, rotate, find, load, verify); ``checkpoint_codec`` turns
live state into tensors + JSON and back, ``checkpoint_schema`` checks ``state.json``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file, save_file

from ftdsl.errors import StageError
from ftdsl.runtime.atomic import as_resource_error, fsync_dir
from ftdsl.runtime.checkpoint_codec import (
    capture_rng,
    config_diff,
    config_hash_of,
    fsync_file,
    jsonable,
    join_optimizer,
    library_versions,
    model_state,
    plain_tensors,
    restore_rng,
    split_optimizer,
)
from ftdsl.runtime.hashing import sha256_file
from ftdsl.runtime.checkpoint_schema import FORMAT_VERSION, validate_state

__all__ = [
    "Checkpoint",
    "save_checkpoint",
    "load_latest",
    "list_checkpoints",
    "latest_config",
    "clean_stale",
    "capture_rng",
    "restore_rng",
    "config_hash_of",
    "PICKLE_SUFFIXES",
]

PICKLE_SUFFIXES = frozenset({".pt", ".pth", ".pkl", ".pickle", ".bin", ".ckpt", ".joblib"})
_STEP_DIR = re.compile(r"^step-(\d+)$")


# --------------------------------------------------------------------------- the checkpoint


@dataclass
class Checkpoint:
    """A loaded checkpoint: call :meth:`restore` to put it back into live objects."""

    path: Path
    step: int
    epoch: int
    batch_in_epoch: int
    epoch_gen_state: torch.Tensor | None
    model_state: dict[str, torch.Tensor]
    optim_state: dict | None
    scheduler_state: dict | None
    scaler_state: dict | None
    rng_tensors: dict[str, torch.Tensor]
    rng_meta: dict[str, Any]
    best: dict | None = None
    best_state: dict[str, torch.Tensor] | None = None
    history: list = field(default_factory=list)
    config_hash: str = ""
    config: Any = None
    versions: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)
    extra_tensors: dict[str, torch.Tensor] = field(default_factory=dict)

    def restore(self, *, model=None, optimizer=None, scheduler=None, scaler=None, rng: bool = True) -> None:
        """Load state into the given objects (those passed), then the global RNGs."""
        if model is not None:
            model.load_state_dict(self.model_state)
        if optimizer is not None and self.optim_state is not None:
            optimizer.load_state_dict(self.optim_state)
        if scheduler is not None and self.scheduler_state is not None:
            scheduler.load_state_dict(self.scheduler_state)
        if scaler is not None and self.scaler_state:
            scaler.load_state_dict(self.scaler_state)
        if rng:
            restore_rng(self.rng_tensors, self.rng_meta)


def list_checkpoints(dir: str | os.PathLike[str]) -> list[tuple[int, Path]]:
    """Complete checkpoints under ``dir`` as ``(step, path)``, oldest first (by step number)."""
    d = Path(dir)
    if not d.is_dir():
        return []
    out = []
    for p in d.iterdir():
        m = _STEP_DIR.match(p.name)
        if m and p.is_dir() and (p / "state.json").is_file():
            out.append((int(m.group(1)), p))
    return sorted(out)


def latest_config(dir: str | os.PathLike[str]) -> Any:
    """The ``config`` recorded by the newest checkpoint under ``dir`` (JSON only), or None."""
    found = list_checkpoints(dir)
    if not found:
        return None
    try:
        with open(found[-1][1] / "state.json", encoding="utf-8") as f:
            return json.load(f).get("config")
    except (OSError, ValueError):
        return None


def clean_stale(dir: str | os.PathLike[str]) -> list[Path]:
    """Remove ``.tmp-*``/``.old-*`` leftovers of a process killed mid-write. Returns what was removed.

    Safe because one stage's checkpoint folder is used by one process at a time (the cache lock).
    """
    d = Path(dir)
    removed = []
    if d.is_dir():
        for p in d.iterdir():
            if p.name.startswith((".tmp-", ".old-")):
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
                removed.append(p)
    return removed


def save_checkpoint(
    dir: str | os.PathLike[str],
    *,
    model,
    optimizer=None,
    scheduler=None,
    scaler=None,
    step: int,
    epoch: int,
    batch_in_epoch: int,
    epoch_gen_state: torch.Tensor | None,
    best: dict | None = None,
    best_state: dict[str, torch.Tensor] | None = None,
    history: list | None = None,
    config_hash: str,
    config: Any = None,
    extra: dict | None = None,
    extra_tensors: dict[str, torch.Tensor] | None = None,
    keep: int = 2,
) -> Path:
    """Write a checkpoint atomically to ``dir/step-<step>`` and rotate old ones; returns its path.

    ``model`` is a module or a state dict. The global RNG states are captured here, so call it
    at the point a resumed run should continue from (after an optimizer step).
    """
    root = Path(dir)
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".tmp-{uuid.uuid4().hex}"
    final = root / f"step-{int(step)}"
    try:
        tmp.mkdir()
        files: dict[str, dict[str, Any]] = {}

        def put(name: str, tensors: dict[str, torch.Tensor]) -> None:
            p = tmp / name
            save_file(tensors, str(p))
            fsync_file(p)
            files[name] = {"size": p.stat().st_size, "sha256": sha256_file(p)}

        put("model.safetensors", model_state(model))
        optim_meta = None
        if optimizer is not None:
            optim_tensors, optim_meta = split_optimizer(optimizer)
            put("optim.safetensors", optim_tensors)
        rng_tensors, rng_meta = capture_rng()
        if epoch_gen_state is not None:
            rng_tensors["epoch_gen"] = epoch_gen_state.detach().to("cpu").clone()
        put("rng.safetensors", {k: v.contiguous() for k, v in rng_tensors.items()})
        if best_state is not None:
            put("best.safetensors", plain_tensors(best_state))
        if extra_tensors:
            put("extra.safetensors", plain_tensors(extra_tensors))
        state = {
            "format_version": FORMAT_VERSION,
            "step": int(step),
            "epoch": int(epoch),
            "batch_in_epoch": int(batch_in_epoch),
            "optimizer": optim_meta,
            "scheduler": jsonable(scheduler.state_dict()) if scheduler is not None else None,
            "scaler": jsonable(scaler.state_dict()) if scaler is not None else None,
            "rng": rng_meta,
            "best": jsonable(best),
            "history": jsonable(history or []),
            "config_hash": config_hash,
            "config": jsonable(config),
            "versions": library_versions(),
            "extra": jsonable(extra or {}),
            "files": files,
        }
        p = tmp / "state.json"
        with open(p, "w", encoding="utf-8") as f:
            json.dump(state, f, indent=1, sort_keys=True, allow_nan=True)
            f.flush()
            os.fsync(f.fileno())
        fsync_dir(tmp)
        if final.exists():  # same step saved twice: old aside, new in, old out
            old = root / f".old-{uuid.uuid4().hex}"
            os.rename(final, old)
            os.rename(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, final)
        fsync_dir(root)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        mapped = as_resource_error(exc, tmp) if isinstance(exc, Exception) else None
        if mapped is not None and mapped is not exc:
            raise mapped from exc
        raise
    for _, old in list_checkpoints(root)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _refuse_pickles(root: Path) -> None:
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.suffix.lower() in PICKLE_SUFFIXES:
            raise StageError(
                "FTP302",
                f"refusing to load pickle checkpoint {p}",
                hint="ftdsl checkpoints are safetensors + JSON and never pickle; if you did not "
                "put this file there, someone else did: delete it (or the whole folder) and rerun",
            )


def _load_one(path: Path) -> Checkpoint:
    with open(path / "state.json", encoding="utf-8") as f:
        state = json.load(f)
    validate_state(state)  # pydantic.ValidationError is a ValueError
    tensors: dict[str, dict[str, torch.Tensor]] = {}
    for name, info in state["files"].items():
        p = path / name
        if p.stat().st_size != info["size"] or sha256_file(p) != info["sha256"]:
            raise ValueError(f"{name} does not match its recorded checksum")
        tensors[name] = load_file(str(p))
    rng = tensors["rng.safetensors"]
    epoch_gen = rng.pop("epoch_gen", None)
    optim = None
    if state.get("optimizer") is not None:
        optim = join_optimizer(tensors.get("optim.safetensors", {}), state["optimizer"])
    return Checkpoint(
        path=path,
        step=state["step"],
        epoch=state["epoch"],
        batch_in_epoch=state["batch_in_epoch"],
        epoch_gen_state=epoch_gen,
        model_state=tensors["model.safetensors"],
        optim_state=optim,
        scheduler_state=state.get("scheduler"),
        scaler_state=state.get("scaler"),
        rng_tensors=rng,
        rng_meta=state["rng"],
        best=state.get("best"),
        best_state=tensors.get("best.safetensors"),
        history=state.get("history") or [],
        config_hash=state.get("config_hash", ""),
        config=state.get("config"),
        versions=state.get("versions") or {},
        extra=state.get("extra") or {},
        extra_tensors=tensors.get("extra.safetensors", {}),
    )


def _check_finite(ck: Checkpoint) -> None:
    for source in (ck.model_state, ck.best_state or {}):
        for name, t in source.items():
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise StageError(
                    "FTP507",
                    f"checkpoint {ck.path} has NaN or infinite values in `{name}`",
                    hint=f"delete {ck.path} to resume from an earlier checkpoint, or rerun with --force",
                )


def load_latest(
    dir: str | os.PathLike[str],
    *,
    config_hash: str | None = None,
    config: Any = None,
    force_resume: bool = False,
    warn: Callable[[str], None] | None = None,
) -> Checkpoint | None:
    """The newest loadable checkpoint under ``dir``, or None when there is none.

    Removes stale temp folders first. A pickle file anywhere under ``dir`` is FTP302 (never
    opened). A checkpoint that fails its checksums is skipped with a warning in favour of the
    previous one (FTP503 when none is left). A different ``config_hash`` is FTP506 unless
    ``force_resume``; non-finite weights are FTP507.
    """
    root = Path(dir)
    if not root.is_dir():
        return None
    clean_stale(root)
    _refuse_pickles(root)
    found = list_checkpoints(root)
    problems = []
    for step, path in reversed(found):
        try:
            with open(path / "state.json", encoding="utf-8") as f:
                head = json.load(f)
        except (OSError, ValueError) as e:
            problems.append(f"{path.name}: {e}")
            continue
        saved_hash = head.get("config_hash", "")
        if config_hash is not None and saved_hash != config_hash:
            changes = config_diff(head.get("config"), config) if config is not None else []
            what = "; ".join(changes[:5]) if changes else f"hash {saved_hash[:12]} != {config_hash[:12]}"
            if not force_resume:
                raise StageError(
                    "FTP506",
                    f"checkpoint was written with different settings ({what}); "
                    "rerun with --force-resume or --force",
                    hint=f"--force-resume continues from {path} anyway; --force starts over",
                )
            if warn:
                warn(f"resuming {path.name} written with different settings ({what}) because of --force-resume")
        try:
            ck = _load_one(path)
        except Exception as e:  # OSError, JSON/checksum ValueError, KeyError, SafetensorError
            problems.append(f"{path.name}: {e}")
            if warn:
                warn(f"checkpoint {path} is unusable ({e}); trying an earlier one")
            continue
        _check_finite(ck)
        return ck
    if found:
        raise StageError(
            "FTP503",
            f"no usable checkpoint in {root}: " + "; ".join(problems),
            hint=f"delete {root} (or rerun with --force) to start the stage over",
        )
    return None
