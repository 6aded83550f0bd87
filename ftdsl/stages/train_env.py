"""The process-wide environment of a training run: seeds, determinism, threads, signals, AMP.

Kept apart from the loop so the loop reads as the steps it takes; nothing here knows about
models or data.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import threading
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

__all__ = ["StageInterrupted", "determinism", "Signals", "amp_dtype", "autocast"]


class StageInterrupted(KeyboardInterrupt):
    """SIGINT/SIGTERM stopped training after a step and a checkpoint; exit ``exit_code``
    (130 for SIGINT, 143 for SIGTERM). A rerun resumes from ``checkpoint``."""

    def __init__(self, signum: int, step: int, checkpoint: Path | None):
        self.signum = int(signum)
        self.step = int(step)
        self.checkpoint = checkpoint
        self.exit_code = 128 + self.signum
        name = signal.Signals(self.signum).name
        where = f"; checkpoint {checkpoint}" if checkpoint else ""
        super().__init__(f"training interrupted by {name} after step {step}{where}; rerun to resume")


@contextlib.contextmanager
def determinism(seed: int, threads: int | None, device: str):
    prev = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
            torch.get_num_threads())
    if device == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    # CUDA has non-deterministic kernels (atomics in scatter/index_add, cuBLAS workspaces), so the
    # deterministic switch is on there. CPU kernels are already deterministic for a fixed thread
    # count (the resume tests check bit-identity), and the switch slowed the quickstart CNN by 18%
    # (max_pool2d takes a slower path), so it stays off on CPU.
    torch.use_deterministic_algorithms(device == "cuda", warn_only=True)
    if threads:
        torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev[0], warn_only=prev[1])
        if torch.get_num_threads() != prev[2]:
            torch.set_num_threads(prev[2])


class Signals:
    """SIGINT/SIGTERM set a flag; the loop finishes the step, checkpoints and stops. A second
    signal interrupts at once."""

    def __init__(self, log: Callable[[str], None]):
        self.received: int | None = None
        self._log = log
        self._old: dict[int, Any] = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._old[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.received is not None:
            raise KeyboardInterrupt
        self.received = signum
        self._log(f"{signal.Signals(signum).name}: finishing this step, then checkpointing (again to stop now)")

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)
        return False




def amp_dtype(precision: str):
    """The autocast dtype of a concrete precision (None for fp32)."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)


def autocast(device: str, dtype):
    """``torch.autocast`` for mixed precision; no context at all in fp32 (it costs per step)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device, dtype=dtype)
