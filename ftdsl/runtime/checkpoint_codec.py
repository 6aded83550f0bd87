"""The checkpoint codec: how live training state becomes safetensors tensors plus JSON and back
(optimizer state, RNG states, hashes), without pickle. ``checkpoint`` writes and rotates the
folders; ``checkpoint_schema`` checks a ``state.json`` before it is trusted.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "config_hash_of",
    "fsync_file",
    "plain_tensors",
    "jsonable",
    "library_versions",
    "capture_rng",
    "restore_rng",
    "split_optimizer",
    "join_optimizer",
    "model_state",
    "config_diff",
]


def config_hash_of(config: Any) -> str:
    """sha256 of the canonical JSON of ``config`` (sorted keys, floats by repr)."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def plain_tensors(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Detached, contiguous CPU copies (copies break shared storage, which safetensors refuses)."""
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items() if isinstance(v, torch.Tensor)}


def jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, torch.Tensor):
        return x.item() if x.numel() == 1 else x.tolist()
    if isinstance(x, np.generic):
        return x.item()
    return x


@functools.lru_cache(maxsize=1)
def library_versions() -> dict[str, str]:
    from ftdsl.runtime.versions import version

    out = {"torch": torch.__version__, "numpy": np.__version__}
    for name in ("safetensors", "transformers", "peft", "ftdsl"):
        if (v := version(name)) is not None:
            out[name] = v
    return out



def capture_rng() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The global RNG states (Python, numpy, torch CPU, each CUDA device): tensors and JSON."""
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{i}"] = s
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    tensors["numpy_keys"] = torch.from_numpy(keys.astype(np.int64))
    meta = {
        "numpy": {"kind": kind, "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": jsonable(random.getstate()),
    }
    return tensors, meta


def restore_rng(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[k] for k in sorted((k for k in tensors if k.startswith("cuda.")), key=lambda k: int(k[5:]))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])
    np_meta = meta["numpy"]
    np.random.set_state((
        np_meta["kind"],
        tensors["numpy_keys"].numpy().astype(np.uint32),
        np_meta["pos"],
        np_meta["has_gauss"],
        np_meta["cached_gaussian"],
    ))
    version, internal, gauss = meta["python"]
    random.setstate((version, tuple(internal), gauss))


def split_optimizer(optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors as ``state.{idx}.{name}``, the rest JSON. ``optimizer`` may also be a state dict
    (FSDP's full one: ``state`` keyed by index, ``param_groups`` naming parameters)."""
    sd = optimizer if isinstance(optimizer, dict) else optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, st in sd["state"].items():
        for name, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"state.{idx}.{name}"] = v.detach().to("cpu").contiguous().clone()
            else:
                scalars.setdefault(str(idx), {})[name] = jsonable(v)
    return tensors, {"param_groups": jsonable(sd["param_groups"]), "scalars": scalars}


def join_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict:
    state: dict[int, dict[str, Any]] = {}
    for key, v in tensors.items():
        _, idx, name = key.split(".", 2)
        state.setdefault(int(idx), {})[name] = v
    for idx, d in meta.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(d)
    groups = []
    for g in meta["param_groups"]:
        g = dict(g)
        if isinstance(g.get("betas"), list):
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    return {"state": state, "param_groups": groups}


def model_state(model) -> dict[str, torch.Tensor]:
    if isinstance(model, dict):
        return plain_tensors(model)
    return plain_tensors(model.state_dict())


def config_diff(old: Any, new: Any, prefix: str = "") -> list[str]:
    """What changed between two JSON configs, one line per dotted key (for FTP506)."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new), key=str):
            name = f"{prefix}.{k}" if prefix else str(k)
            if k not in old:
                out.append(f"{name} added")
            elif k not in new:
                out.append(f"{name} removed")
            else:
                out += config_diff(old[k], new[k], name)
        return out
    if old != new:
        return [f"{prefix or 'config'}: {json.dumps(old, default=str)} -> {json.dumps(new, default=str)}"]
    return []
