"""The train stage's checkpoints: save the model, optimizer, scheduler, scaler, RNGs and the loop
state as one unit (rank 0 writes; with FSDP every rank takes part in gathering), and restore the
newest one into a trainer, on every rank."""

from __future__ import annotations

from pathlib import Path

import torch

from ftdsl.errors import StageError
from ftdsl.runtime import checkpoint as ckpt
from ftdsl.stages.train_parallel import full_optimizer_state, load_model_state, load_optimizer_state
from ftdsl.stages.train_setup import adalora_state, restore_adalora
from ftdsl.stages.train_state import LoopState

__all__ = ["save", "resume"]


def save(trainer, gen_state) -> Path | None:
    """Checkpoint the model, optimizer, RNGs and the loop state (rank 0 writes; every rank
    takes part, since FSDP gathers its shards and each rank's RNG is kept)."""
    trainer._sync()  # never checkpoint past a NaN
    st, par = trainer.state, trainer.parallel
    extra_tensors, extra = adalora_state(trainer.module, trainer.lora)
    rngs = par.gather(torch.get_rng_state())
    if par.active:  # each rank's own dropout RNG, so a restarted job continues bitwise
        extra_tensors.update({f"rank_rng.{r}": t for r, t in enumerate(rngs)})
    model_state = par.full_model_state(trainer.module)
    optim_state = full_optimizer_state(par, trainer.module, trainer.optimizer)
    if not par.main:
        return None
    return ckpt.save_checkpoint(
        trainer.ckpt_dir, model=model_state, optimizer=optim_state, scheduler=trainer.scheduler, scaler=trainer.scaler,
        step=st.step, epoch=st.epoch, batch_in_epoch=st.batch_in_epoch, epoch_gen_state=gen_state, best=st.best,
        best_state=st.best_state,
        history=trainer.writer.records, config_hash=trainer.config_hash, config=trainer.config,
        extra={"loop": st.scalars(), "total_steps": trainer.total_steps, **extra}, extra_tensors=extra_tensors)

def resume(trainer) -> torch.Tensor | None:
    """Restore the newest checkpoint, if any (every rank reads it); the epoch generator state."""
    par = trainer.parallel
    ck = ckpt.load_latest(trainer.ckpt_dir, config_hash=trainer.config_hash, config=trainer.config,
                          force_resume=bool(getattr(trainer.ctx, "force_resume", False)), warn=trainer.log)
    steps = par.gather(ck.step if ck is not None else 0)
    if len(set(steps)) > 1:
        raise StageError("FTP540", f"the processes found different checkpoints to resume from (steps {steps})",
                         hint="on several machines the cache must be on a shared filesystem to resume; "
                         "or rerun with --force")
    if ck is None:
        trainer.state = LoopState()
        trainer.writer.reset([])
        return None
    try:
        load_model_state(par, trainer.module, ck.model_state)
        if ck.optim_state is not None:
            load_optimizer_state(par, trainer.module, trainer.optimizer, ck.optim_state)
        ck.restore(scheduler=trainer.scheduler, scaler=trainer.scaler)  # and the RNGs
    except (RuntimeError, ValueError, KeyError) as e:
        raise StageError("FTP506", f"checkpoint {ck.path} does not fit this model ({str(e).splitlines()[0]})",
                         hint="rerun with --force to start over") from e
    own = ck.extra_tensors.get(f"rank_rng.{par.rank}")
    if par.active and own is not None:
        torch.set_rng_state(own)
    trainer.state = LoopState.from_checkpoint(ck)
    restore_adalora(trainer.module, trainer.lora, ck.extra_tensors, ck.extra, trainer.device)
    trainer.writer.reset(ck.history, resume_step=ck.step)
    trainer.log(f"resumed from step {ck.step}")
    return ck.epoch_gen_state
