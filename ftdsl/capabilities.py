"""What the engine of this install can do, declared without importing torch.

The checker consults these functions so that a setting the engine would refuse at run time is a
lint error instead (FTP244). The engine that implements a capability declares it here; the
training stage keeps a run-time check only for what depends on the machine (for example the
number of devices actually present).
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

# `train { distributed = ... }`: the modes the training engine implements (ftdsl/stages/train_parallel.py),
# and the part of torch each one needs.
DISTRIBUTED: dict[str, bool] = {
    "none": True,
    "ddp": True,
    "fsdp": True,
}
_NEEDS = {"ddp": ("distributed",), "fsdp": ("distributed", "distributed/fsdp")}
# train attributes a distributed mode cannot combine with (the engine refuses them): mode -> attrs
DISTRIBUTED_EXCLUDES: dict[str, tuple[str, ...]] = {"fsdp": ("lora",)}


@functools.lru_cache(maxsize=None)
def _torch_has(*parts: str) -> bool:
    """Whether this install's torch ships the given subpackages (found on disk, torch not imported)."""
    try:
        spec = importlib.util.find_spec("torch")
    except (ImportError, ValueError):
        return False
    if spec is None or not spec.origin:
        return False
    root = Path(spec.origin).parent
    return all((root / p / "__init__.py").is_file() for p in parts)


def distributed_supported(mode: str) -> bool:
    """Whether `distributed = mode` can run on this install. Without torch (the light install,
    `pip install ftdsl`: lint in CI or pre-commit) only the declaration counts: the engine that will
    run the pipeline is installed elsewhere, and `run` here stops with FTP550 anyway."""
    if not DISTRIBUTED.get(mode, False):
        return False
    return _torch_has(*_NEEDS.get(mode, ())) if _torch_installed() else True


@functools.lru_cache(maxsize=None)
def _torch_installed() -> bool:
    try:
        return importlib.util.find_spec("torch") is not None
    except (ImportError, ValueError):
        return False


def distributed_modes() -> tuple[str, ...]:
    return tuple(m for m in DISTRIBUTED if distributed_supported(m))


# `model { load_in = int8 | int4 }`: a k-bit base needs bitsandbytes and a CUDA device.
@functools.lru_cache(maxsize=None)
def _torch_cuda_build() -> bool | None:
    """Whether the installed torch is a CUDA build (torch/version.py read, torch not imported);
    None when unknown (no torch here: the engine is installed elsewhere)."""
    try:
        spec = importlib.util.find_spec("torch")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin:
        return None
    try:
        text = (Path(spec.origin).parent / "version.py").read_text(encoding="utf-8")
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("cuda"):
            return "None" not in line.split("=", 1)[-1]
    return None


def _has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def kbit_problem(device: str | None) -> str | None:
    """Why `load_in = int8|int4` cannot run here (None: it can). `device`: the pipeline's
    `device` (`auto`, `cpu`, `cuda`)."""
    if device == "cpu":
        return "k-bit loading (bitsandbytes) runs on CUDA only, and this pipeline has `device = cpu`"
    if not _has_module("bitsandbytes"):
        return "bitsandbytes is not installed"
    if _torch_cuda_build() is False:
        return "the installed torch has no CUDA support (bitsandbytes k-bit layers run on CUDA)"
    return None
