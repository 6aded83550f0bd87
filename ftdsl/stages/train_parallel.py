"""Data parallelism inside one rank of a torchrun job: the model wrapped in
``DistributedDataParallel`` (``distributed = ddp``) or sharded with FSDP2's ``fully_shard``
(``distributed = fsdp``), each rank's share of a global batch, and the collectives the loop
needs. With one process (no process group, or ``distributed = none``) every method is the
identity, so the single-process loop pays nothing.

How a global batch is shared: every rank draws the same epoch order from the same generator (so
length grouping and balanced sampling are exactly those of one process), takes the *global*
batch of ``batch`` rows, and keeps rows ``[n*r/W, n*(r+1)/W)``. Its loss is scaled by
``n_r * W / n`` so that DDP's gradient average equals the gradient of the global batch's mean
loss even when the last batch of an epoch does not divide evenly. This is what makes a 2-process
run compute the same steps as a 1-process run with the same ``batch`` (and why it is not
``DistributedSampler``: its strided shards of a per-epoch permutation put different rows into
each step, and pad the epoch with repeated rows).
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn

__all__ = ["Parallel", "full_optimizer_state", "load_optimizer_state", "load_model_state"]


class Parallel:
    def __init__(self, mode: str, batch: int):
        import torch.distributed as dist

        self.mode = mode or "none"
        self.active = (self.mode != "none" and dist.is_available() and dist.is_initialized()
                       and dist.get_world_size() > 1)
        self.rank = dist.get_rank() if self.active else 0
        self.world = dist.get_world_size() if self.active else 1
        self.batch = int(batch)
        self.per_rank = self.batch // self.world
        self._ddp = None
        self._fsdp = None

    @property
    def main(self) -> bool:
        """Rank 0: the one process that writes checkpoints, outputs and the cache entry."""
        return self.rank == 0

    # -- the model ------------------------------------------------------------------------------

    def wrap(self, module: nn.Module, device: str, amp_dtype) -> nn.Module:
        """The module to call in training steps (DDP wrapper; FSDP shards ``module`` in place)."""
        if not self.active:
            return module
        if self.mode == "ddp":
            from torch.nn.parallel import DistributedDataParallel

            ids = [torch.cuda.current_device()] if device == "cuda" else None
            self._ddp = DistributedDataParallel(module, device_ids=ids)
            return self._ddp
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        # parameters gathered in the AMP dtype for compute, gradients reduced in fp32
        mp = MixedPrecisionPolicy(param_dtype=amp_dtype, reduce_dtype=torch.float32) if amp_dtype else \
            MixedPrecisionPolicy()
        for block in shard_units(module):
            fully_shard(block, mp_policy=mp)
        fully_shard(module, mp_policy=mp)
        self._fsdp = module
        return module

    def sync_gradients(self, sync: bool):
        """Context for one micro-batch's backward: gradients are reduced only on the last one."""
        if not self.active:
            return contextlib.nullcontext()
        if self._ddp is not None:
            return contextlib.nullcontext() if sync else self._ddp.no_sync()
        self._fsdp.set_requires_gradient_sync(sync)
        return contextlib.nullcontext()

    # -- batches --------------------------------------------------------------------------------

    def share(self, b: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], float]:
        """This rank's rows of a global batch, and the factor for its mean loss."""
        if not self.active:
            return b, 1.0
        n = len(b["y"])
        lo, hi = n * self.rank // self.world, n * (self.rank + 1) // self.world
        weight = (hi - lo) * self.world / n
        if hi <= lo:  # fewer rows than ranks: run one row with weight 0 (every rank must step)
            lo, hi, weight = 0, 1, 0.0
        out = {k: v[lo:hi] for k, v in b.items()}
        token_labels = out["y"].ndim == 2 and not out["y"].is_floating_point()  # token tasks: y per position
        if "attention_mask" in out and not token_labels:  # drop the columns that are padding in every kept row
            width = int(out["attention_mask"].sum(1).max())
            out["input_ids"], out["attention_mask"] = out["input_ids"][:, :width], out["attention_mask"][:, :width]
        return out, weight

    # -- collectives ----------------------------------------------------------------------------

    def mean_losses(self, losses: torch.Tensor) -> torch.Tensor:
        """The global batches' mean losses from each rank's weighted share (sum over ranks / W)."""
        if not self.active:
            return losses
        import torch.distributed as dist

        # gloo reduces CPU tensors, NCCL device tensors: reduce where the losses already are
        dist.all_reduce(losses, op=dist.ReduceOp.SUM)
        return losses / self.world

    def gather(self, obj: Any) -> list[Any]:
        if not self.active:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.active:
            import torch.distributed as dist

            dist.barrier()

    # -- state ----------------------------------------------------------------------------------

    def full_model_state(self, module: nn.Module) -> dict[str, torch.Tensor]:
        """Ordinary (unsharded, CPU) weights: FSDP gathers them to rank 0 (a collective)."""
        if self.active and self.mode == "fsdp":
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

            return get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return module.state_dict()


def full_optimizer_state(parallel: "Parallel", module: nn.Module, optimizer) -> Any:
    """What a checkpoint stores for the optimizer: the optimizer itself, or with FSDP its full
    state gathered to rank 0 (a collective), indexed by position with the parameter names in
    ``param_groups`` so that it loads back into any sharding."""
    if not (parallel.active and parallel.mode == "fsdp"):
        return optimizer
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    osd = get_optimizer_state_dict(module, optimizer,
                                   options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    names = [n for g in osd.get("param_groups", []) for n in g["params"]]
    index = {n: i for i, n in enumerate(names)}
    return {"state": {index[n]: v for n, v in osd.get("state", {}).items()}, "param_groups": osd.get("param_groups", [])}


def load_optimizer_state(parallel: "Parallel", module: nn.Module, optimizer, saved: dict) -> None:
    if not (parallel.active and parallel.mode == "fsdp"):
        optimizer.load_state_dict(saved)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    names = [n for g in saved["param_groups"] for n in g["params"]]
    full = {"state": {names[int(i)]: v for i, v in saved["state"].items()}, "param_groups": saved["param_groups"]}
    set_optimizer_state_dict(module, optimizer, optim_state_dict=full, options=StateDictOptions(full_state_dict=True))


def load_model_state(parallel: "Parallel", module: nn.Module, state: dict) -> None:
    if not (parallel.active and parallel.mode == "fsdp"):
        module.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    set_model_state_dict(module, state, options=StateDictOptions(full_state_dict=True))


def shard_units(module: nn.Module) -> list[nn.Module]:
    """FSDP's wrap policy: the repeated blocks of the architecture (each entry of a ModuleList with
    parameters: BERT's `encoder.layer`, the `layers` of a TransformerEncoder), else nothing below
    the root."""
    units = []
    for m in module.modules():
        if isinstance(m, nn.ModuleList):
            units += [c for c in m if any(True for _ in c.parameters())]
    return units
