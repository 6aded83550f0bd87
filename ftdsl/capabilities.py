"""What the engine of this install can do, declared without importing torch.

The checker consults these functions so that a setting the engine would refuse at run time is a
lint error instead (FTP244). The engine that implements a capability flips it here; the
training stage keeps its own run-time check only for what depends on the machine (for example
the number of GPUs actually present).
"""

from __future__ import annotations

# `train { distributed = ... }`: which modes the training engine implements.
DISTRIBUTED: dict[str, bool] = {
    "none": True,
    "ddp": False,
    "fsdp": False,
}


def distributed_supported(mode: str) -> bool:
    """Whether `distributed = mode` can run on this install."""
    return bool(DISTRIBUTED.get(mode, False))


def distributed_modes() -> tuple[str, ...]:
    return tuple(m for m, ok in DISTRIBUTED.items() if ok)
