"""The training loop's state: one dataclass, checkpointed and restored as a unit.

Everything the loop carries from one step to the next lives in :class:`LoopState` — the position
(step, epoch, batch in epoch), the running sums behind the logged losses, early stopping's best
value and weights — so a checkpoint is "the model, the optimizer, the RNGs and this", and a
resumed run continues exactly where the saved one was.
"""

from __future__ import annotations

import math

import dataclasses
from dataclasses import dataclass, field
from typing import Any

__all__ = ["plan_steps", "LoopState"]


def _zero_eval() -> dict:
    return {"sum": 0.0, "n": 0}


def _zero_log() -> dict:
    return {"sum": 0.0, "n": 0, "samples": 0, "time": 0.0}


@dataclass
class LoopState:
    step: int = 0  # optimizer steps taken
    epoch: int = 0
    batch_in_epoch: int = 0  # (global) batches of `epoch` already consumed
    samples: int = 0  # training rows seen, all ranks together
    since_eval: dict = field(default_factory=_zero_eval)  # train loss since the last evaluation
    log_acc: dict = field(default_factory=_zero_log)  # train loss, rows and time since the last log line
    last_finite: float | None = None  # the last finite train loss synced to the host
    scaler_skips: int = 0  # fp16: consecutive overflowed steps
    last_eval: dict | None = None  # {"step", "metrics"} of the last validation
    stopped: bool = False  # early stopping fired
    best: dict | None = None  # early stopping: {"metric", "value", "step", "bad"}
    best_state: dict | None = field(default=None, repr=False)  # the best weights (CPU tensors)

    # -- the checkpoint's view --------------------------------------------------------------

    _POSITION = ("step", "epoch", "batch_in_epoch")
    _TENSORS = ("best_state",)

    def scalars(self) -> dict[str, Any]:
        """The JSON part (without the position, which the checkpoint records itself)."""
        skip = set(self._POSITION) | set(self._TENSORS) | {"best"}
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in skip}

    def reset_log(self) -> None:
        self.log_acc = _zero_log()

    def reset_eval(self) -> None:
        self.since_eval = _zero_eval()

    @classmethod
    def from_checkpoint(cls, ck) -> "LoopState":
        ex = ck.extra or {}
        saved = ex.get("loop", ex)  # checkpoints before the dataclass kept these at the top level
        names = {f.name for f in dataclasses.fields(cls)} - set(cls._POSITION) - set(cls._TENSORS) - {"best"}
        kw = {k: saved[k] for k in names if k in saved and saved[k] is not None}
        st = cls(step=ck.step, epoch=ck.epoch, batch_in_epoch=ck.batch_in_epoch, best=ck.best,
                 best_state=ck.best_state, **kw)
        st.last_finite = saved.get("last_finite")
        st.last_eval = saved.get("last_eval")
        st.stopped = bool(saved.get("stopped", False))
        return st


def plan_steps(t, n: int) -> None:
    """Batches and optimizer steps per epoch and in total for ``n`` training rows (or packed rows)."""
    t.batches_per_epoch = math.ceil(n / t.batch)
    t.steps_per_epoch = math.ceil(t.batches_per_epoch / t.accumulate)
    epochs, max_steps = t.attrs.get("epochs"), t.attrs.get("max_steps")
    if epochs is None and max_steps is None:
        epochs = 1
    totals = [int(max_steps)] if max_steps is not None else []
    if epochs is not None:
        totals.append(int(epochs) * t.steps_per_epoch)
    t.total_steps = max(1, min(totals))
