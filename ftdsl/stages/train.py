"""The `train` stage: fine-tune or train a TorchModel on a Dataset, resumably, in one process or
data-parallel across the ranks of a torchrun job (``distributed = ddp | fsdp``).

The loop has nanoGPT's shape: forward under ``torch.autocast`` (bf16/fp16), loss divided by the
number of accumulated micro-batches, ``GradScaler`` (enabled for fp16 only), ``unscale_`` before
clipping, ``zero_grad(set_to_none=True)``, one scheduler step per optimizer step. The loss stays
on the device: it is synced to the host (and checked for NaN, naming the step it first appeared
at) only at log, evaluation and checkpoint points, never per step.

Resume (stack.md §5): every ``checkpoint_every`` optimizer steps and at each epoch end the model,
optimizer, scheduler, scaler, all RNGs, the epoch's generator state *taken at epoch start* and the
loop's state (:class:`~ftdsl.stages.train_state.LoopState`) are checkpointed (safetensors + JSON)
under ``ctx.work_dir/checkpoints``. A rerun restores them and skips the batches already consumed,
so a killed-and-resumed CPU run ends with weights bitwise equal to an uninterrupted one (same
seed, same thread count).

The pieces: ``train_prepare`` (the trainer's data and model setup), ``train_factories``
(optimizers, schedules, losses), ``train_env`` (seeds, threads, signals, AMP), ``train_setup``
(freezing, LoRA), ``train_state`` (the loop state), ``train_checkpoint``, ``train_results``,
``train_early_stop``, ``train_parallel`` (DDP/FSDP inside a rank).
"""

from __future__ import annotations

import itertools
import math
import os
import signal
import time
from pathlib import Path
from typing import Any, Callable

import torch

from ftdsl.errors import StageError
from ftdsl.runtime import checkpoint as ckpt
from ftdsl.runtime.device import resolve_device, resolve_precision
from ftdsl.stages.torch_model import TorchModel
from ftdsl.stages.batching import channels_last
from ftdsl.stages.outputs import MetricsWriter
from ftdsl.stages import train_checkpoint, train_prepare, train_results, train_seq
from ftdsl.stages.train_early_stop import early_stop
from ftdsl.stages.train_env import Signals, StageInterrupted, amp_dtype, autocast, determinism
from ftdsl.stages.train_factories import LOSSES, OPTIMIZERS, SCHEDULES, build_optim
from ftdsl.stages.train_parallel import Parallel

__all__ = ["run", "fit", "StageInterrupted", "OPTIMIZERS", "SCHEDULES", "LOSSES", "KILL_ENV", "PAUSE_ENV"]

KILL_ENV = "FTDSL_TEST_KILL_AT_STEP"  # tests: SIGKILL ourselves after this optimizer step
KILL_RANK_ENV = "FTDSL_TEST_KILL_RANK"  # tests, distributed: only this rank, only in torchrun's first attempt
PAUSE_ENV = "FTDSL_TEST_PAUSE_AT_STEP"  # tests: sleep after this step (to be killed from outside)
MAX_SCALER_SKIPS = 25  # fp16: consecutive overflowed steps before giving up (FTP501)


def _config_for_hash(attrs: dict, ctx, precision: str, threads: int, model: TorchModel, data) -> dict:
    # The world size is left out on purpose: a global batch computes the same steps on any number
    # of ranks (train_parallel), so a run interrupted whole may resume with another --nproc.
    return {
        "attrs": {k: v for k, v in attrs.items() if k != "checkpoint_every"},
        "seed": int(ctx.seed),
        "device": ctx.device,
        "precision": precision,
        "threads": threads,
        "model": {k: v for k, v in model.spec.items() if k not in ("pretrained_path", "resolved_from")},
        "data": {"source": data.source, "splits": {k: len(v) for k, v in data.splits.items()},
                 "input_shape": list(data.input_shape) if data.input_shape else None},
    }


class _QuietWriter(MetricsWriter):
    """Ranks other than 0 keep the records (the loop reads them) but write no files."""

    def log(self, step: int, split: str = "train", **metrics: Any) -> dict[str, Any]:
        rec = {"step": int(step), "split": split, **metrics}
        self.records.append(rec)
        return rec

    def finalize(self, metrics: dict[str, Any], *, plot: bool = True) -> None:
        pass

    def close(self) -> None:
        pass


# --------------------------------------------------------------------------------------------
# The trainer


class _Trainer:
    def __init__(self, model_art: TorchModel, data, attrs: dict, ctx, *,
                 loss_fn: Callable[[torch.Tensor, dict, "_Trainer"], torch.Tensor] | None = None,
                 after_step: Callable[["_Trainer"], None] | None = None):
        self.art, self.data, self.attrs, self.ctx = model_art, data, attrs, ctx
        # Extension points for other stages (see `fit`): the loss of a train batch, and a hook
        # after each optimizer step. With a loss_fn, train batches carry "index" (rows of the split).
        self.loss_fn, self.after_step = loss_fn, after_step
        self.log = ctx.reporter.log
        self.device = resolve_device(ctx.device or "cpu")
        self.ckpt_dir = Path(ctx.work_dir) / "checkpoints"
        train_prepare.setup_data(self)
        self.parallel = Parallel(attrs.get("distributed") or "none", self.batch)
        train_prepare.check_world(self)
        train_prepare.setup_model(self)
        if self.parallel.rank > 0:
            # every rank built the same weights from the seed; dropout must not draw the same masks
            # on every rank's rows, so ranks other than 0 continue from their own seed
            torch.manual_seed(int(ctx.seed) + 1_000_003 * self.parallel.rank)
        n_params = sum(p.numel() for p in self.module.parameters())
        self.precision, self.precision_reason = resolve_precision(attrs.get("precision", "auto"), self.device,
                                                                  n_params=n_params)
        self.amp_dtype = amp_dtype(self.precision)
        self.log(f"precision {self.precision_reason}")
        # FSDP shards the parameters in place, so it comes before the optimizer is built
        self.forward = self.parallel.wrap(self.module, self.device, self.amp_dtype)
        if self.attrs.get("compile"):
            self.forward = torch.compile(self.forward)
        self.params, self.optimizer, self.scheduler, self.scaler, self.criterion = build_optim(
            self.module, attrs, total_steps=self.total_steps, device=self.device, precision=self.precision,
            task=self.task, num_outputs=self.num_outputs,
            train_labels=self.splits["train"].labels if self.task == "classify" else None)
        self.clip = attrs.get("clip")
        self.balanced = self.data.sampler == "balanced" and self.task == "classify"
        # image batches in NHWC order for a model with 2-D convolutions on the CPU (batching.
        # channels_last: oneDNN's faster layout; a CUDA run keeps NCHW, it was not measured there)
        self.channels_last = self.seq_task is None and self.device == "cpu" and any(
            isinstance(m, torch.nn.Conv2d) for m in self.module.modules())

    # -- batches ---------------------------------------------------------------------------

    def _batches(self, split, *, shuffle: bool, generator=None, skip: int = 0, by_length: bool = False):
        """``by_length``: evaluation, where only metrics come out: text rows longest first, so
        batches pad little (SST-2's 872 dev rows: 42,000 -> 22,712 token positions, 1.8x faster)."""
        from ftdsl.stages.batching import iter_batches

        if self.seq_task is not None:  # token tasks: the task's encoded examples, collated by the task
            return train_seq.batches(self, split, shuffle=shuffle, generator=generator, skip=skip)
        return iter_batches(split, batch_size=self.batch, shuffle=shuffle, generator=generator,
                            tokenizer=self.tokenizer, max_length=self.max_length, length_grouped=True,
                            balanced=self.balanced and shuffle, skip=skip,
                            with_index=self.loss_fn is not None and shuffle, by_length=by_length and not shuffle)

    def _inputs(self, b: dict) -> dict[str, torch.Tensor]:
        if self.seq_task is not None:
            return train_seq.inputs(self, b)
        out = {k: b[k].to(self.device, non_blocking=True) for k in self.module.input_names}
        if self.channels_last and "x" in out:
            out["x"] = channels_last(out["x"])
        return out

    def _autocast(self):
        return autocast(self.device, self.amp_dtype)

    # -- one optimizer step ------------------------------------------------------------------

    def _step(self, group: list[dict], step: int) -> torch.Tensor:
        """Forward/backward over the micro-batches of one optimizer step. Returns this rank's
        share of the step's mean loss as a 0-d tensor on the device (not synced to the host)."""
        total = None
        k = len(group)
        # token tasks: the step's loss is its summed token loss over the global batch's labelled tokens
        n_tokens = train_seq.group_tokens(group) if self.seq_task is not None and self.loss_fn is None else None
        for i, gb in enumerate(group):
            b, weight = self.parallel.share(gb)
            y = b["y"].to(self.device)
            with self.parallel.sync_gradients(i == k - 1):
                with self._autocast():
                    out = self.forward(**self._inputs(b))
                if n_tokens is not None:
                    loss = train_seq.micro_loss(self, out.float(), y, n_tokens, weight)
                    self.scaler.scale(loss).backward()
                    total = loss.detach() if total is None else total + loss.detach()
                    continue
                if self.loss_fn is not None:
                    loss = self.loss_fn(out.float(), b, self)
                else:
                    loss = self.criterion(out.float(), y)
                if weight != 1.0:
                    loss = loss * weight
                # scale for fp16 (a no-op otherwise); divide so the gradient is the group's mean
                self.scaler.scale(loss / k if k > 1 else loss).backward()
            part = loss.detach() / k if k > 1 else loss.detach()
            total = part if total is None else total + part
        if self.clip:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.params, float(self.clip))
        scale = self.scaler.get_scale() if self.scaler.is_enabled() else None
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.after_step is not None:
            self.after_step(self)
        if scale is not None:
            st = self.state
            st.scaler_skips = st.scaler_skips + 1 if self.scaler.get_scale() < scale else 0
            if st.scaler_skips >= MAX_SCALER_SKIPS:
                raise StageError("FTP501", f"fp16 gradients overflowed in {st.scaler_skips} steps in a row "
                                 f"(up to step {step}); the optimizer has not updated since",
                                 hint="use precision = bf16 or fp32, lower the learning rate, or add clip")
        if self.lora and self.lora["$call"] == "adalora":
            self.module.net.base_model.update_and_allocate(step)
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        return total

    # -- the loss on the host ------------------------------------------------------------------

    def _sync(self) -> None:
        """Bring the pending steps' losses to the host (all ranks' shares summed): one transfer
        for all of them. The first non-finite one is FTP501, naming its step."""
        if not self.pending:
            return
        steps = [s for s, _ in self.pending]
        values = self.parallel.mean_losses(torch.stack([t.float() for _, t in self.pending])).tolist()
        self.pending = []
        st = self.state
        for s, v in zip(steps, values):
            if not math.isfinite(v):
                self._nan(v, s)
            st.last_finite = v
            st.since_eval["sum"] += v
            st.since_eval["n"] += 1
            st.log_acc["sum"] += v
            st.log_acc["n"] += 1

    def _nan(self, value: float, step: int):
        kept = ckpt.list_checkpoints(self.ckpt_dir)
        what = "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
        last = f"{self.state.last_finite:.6g}" if self.state.last_finite is not None else "none"
        lr = self.optimizer.param_groups[0]["lr"]
        raise StageError(
            "FTP501",
            f"loss is {what} at step {step} (last finite loss {last}, lr {lr:.3g})",
            hint="lower the learning rate, add `clip = 1.0`, or use `precision = fp32`; "
            + (f"the last checkpoint (step {kept[-1][0]}) is kept in {self.ckpt_dir}" if kept else "no checkpoint was written yet"),
        )

    # -- evaluation -------------------------------------------------------------------------

    def evaluate(self, split_name: str) -> dict[str, float]:
        return train_results.evaluate(self, split_name)

    def _save(self, gen_state) -> Path | None:
        return train_checkpoint.save(self, gen_state)

    def _resume(self) -> torch.Tensor | None:
        return train_checkpoint.resume(self)

    # -- the loop ---------------------------------------------------------------------------

    def fit(self) -> TorchModel:
        attrs, ctx, par = self.attrs, self.ctx, self.parallel
        t_start = time.perf_counter()
        self.writer = MetricsWriter.for_stage(ctx, self.attrs) if par.main else _QuietWriter(ctx.out_dir)
        if not (attrs.get("threads") or getattr(ctx, "threads", None)):
            # bits depend on the thread count (stack.md §5): resume with the checkpoint's
            saved = ckpt.latest_config(self.ckpt_dir)
            n = saved.get("threads") if isinstance(saved, dict) else None
            if isinstance(n, int) and n > 0 and n != torch.get_num_threads():
                self.log(f"using {n} threads, as the checkpoint being resumed did")
                torch.set_num_threads(n)
        self.config = _config_for_hash(attrs, ctx, self.precision, torch.get_num_threads(), self.art, self.data)
        self.config_hash = ckpt.config_hash_of(self.config)
        self.pending: list[tuple[int, torch.Tensor]] = []  # (step, loss on the device) not yet synced
        has_valid = "valid" in self.splits and len(self.splits["valid"]) > 0
        es = attrs.get("early_stop")
        if es and str(es.get("metric", "")).startswith("valid.") and not has_valid:
            raise StageError("FTP510", f"early_stop metric {es['metric']!r} needs a `valid` split in the data")
        eval_every = attrs.get("eval_every")
        ckpt_every = int(attrs.get("checkpoint_every") or 0)
        # like nanoGPT's log interval: every step of a metrics line wakes TensorBoard's writer
        # thread, which cost a small CNN ~0.6 ms of its 2.5 ms step (the loss is averaged anyway);
        # it is also where the loss is synced to the host
        log_every = max(10, self.total_steps // 200)
        kill_at = int(os.environ.get(KILL_ENV, "0") or 0)
        if par.active and kill_at and (os.environ.get(KILL_RANK_ENV, "0") != str(par.rank)
                                       or os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") != "0"):
            kill_at = 0
        pause_at = int(os.environ.get(PAUSE_ENV, "0") or 0)

        g = torch.Generator()
        g.manual_seed(int(ctx.seed))
        gen_state = self._resume()
        st = self.state
        if gen_state is not None:
            g.set_state(gen_state)
        ctx.reporter.start(self.total_steps, f"train {ctx.name}")
        last_ckpt_step = st.step if st.step else None
        # The signal handlers finish the step and checkpoint; under torchrun a signal reaches each
        # rank at a different step, and a collective would hang, so workers keep the defaults
        # (the job resumes from the last periodic checkpoint).
        signals = Signals(self.log) if not par.active else _NoSignals()
        with signals as sig:
            while st.step < self.total_steps and not st.stopped:
                epoch_gen_state = g.get_state()
                batches = self._batches(self.splits["train"], shuffle=True, generator=g, skip=st.batch_in_epoch)
                while st.step < self.total_steps:
                    group = list(itertools.islice(batches, self.accumulate))
                    if not group:
                        break
                    t0 = time.perf_counter()
                    try:
                        loss = self._step(group, st.step + 1)
                    except torch.OutOfMemoryError as e:
                        raise self._oom(st.step + 1) from e
                    dt = time.perf_counter() - t0
                    st.step += 1
                    step = st.step
                    st.batch_in_epoch += len(group)
                    n_samples = sum(len(b["y"]) for b in group)
                    st.samples += n_samples
                    self.pending.append((step, loss))
                    acc = st.log_acc
                    acc["samples"] += n_samples
                    acc["time"] += dt
                    lr = self.optimizer.param_groups[0]["lr"]
                    epoch_end = st.batch_in_epoch >= self.batches_per_epoch
                    if step % log_every == 0 or step == self.total_steps or epoch_end:
                        self._sync()
                        self.writer.log(step, "train", loss=acc["sum"] / acc["n"], lr=lr,
                                        samples_per_s=acc["samples"] / acc["time"] if acc["time"] > 0 else 0.0,
                                        epoch=round(step / self.steps_per_epoch, 4))
                        st.reset_log()
                    ctx.reporter.update(step, loss=st.last_finite, lr=lr,
                                        samples_per_s=n_samples / dt if dt > 0 else 0.0)
                    due = (step % int(eval_every) == 0) if eval_every else epoch_end
                    if due:
                        st.stopped = self._eval_point(step, has_valid)
                    finished = step >= self.total_steps or st.stopped
                    if epoch_end:  # the position a resumed run continues from
                        st.epoch, st.batch_in_epoch = st.epoch + 1, 0
                    if not finished and ((ckpt_every and step % ckpt_every == 0) or epoch_end):
                        self._save(g.get_state() if epoch_end else epoch_gen_state)
                        last_ckpt_step = step
                    if pause_at and step == pause_at:  # tests: wait here to be killed or signalled
                        print(f"ftdsl: paused after step {step}", flush=True)
                        while sig.received is None:
                            time.sleep(0.05)
                    if sig.received is not None and not finished:
                        if last_ckpt_step != step:
                            path = self._save(g.get_state() if epoch_end else epoch_gen_state)
                        else:
                            path = self.ckpt_dir / f"step-{step}"
                        self.writer.close()
                        raise StageInterrupted(sig.received, step, path)
                    if kill_at and step == kill_at:
                        self.writer.close()
                        os.kill(os.getpid(), signal.SIGKILL)
                    if epoch_end or st.stopped:
                        break
        self._sync()
        return self._finish(st.step, has_valid, time.perf_counter() - t_start)

    def _eval_point(self, step: int, has_valid: bool) -> bool:
        self._sync()
        st = self.state
        evals: dict[str, dict] = {}
        if st.since_eval["n"]:
            evals["train"] = {"loss": st.since_eval["sum"] / st.since_eval["n"]}
        st.reset_eval()
        if has_valid:
            res = self.evaluate("valid")
            evals["valid"] = res
            self.writer.log(step, "valid", **res)
            shown = ", ".join(f"{k} {v:.4g}" for k, v in res.items() if k in ("loss", "accuracy", "f1", "mse", "mae"))
            self.log(f"step {step}: valid {shown}")
            st.last_eval = {"step": step, "metrics": res}
        hook = getattr(self.ctx, "on_eval", None)
        if hook is not None:  # a sweep's pruner: may raise to stop this trial (its checkpoints stay)
            try:
                hook(step, evals)
            except BaseException:
                self.writer.close()
                raise
        return early_stop(self.attrs.get("early_stop"), st, step, evals, self._weights_on_cpu, self.log)

    def _oom(self, step: int) -> StageError:
        kept = ckpt.list_checkpoints(self.ckpt_dir)
        half = max(1, self.batch // 2)
        return StageError(
            "FTP509",
            f"out of memory at step {step} on {self.device} (batch {self.batch}, accumulate {self.accumulate})",
            hint=f"use a smaller batch with more accumulation, e.g. batch = {half}, accumulate = "
            f"{self.accumulate * 2}" + (f"; the last checkpoint (step {kept[-1][0]}) is kept" if kept else ""),
        )

    def _finish(self, step: int, has_valid: bool, seconds: float) -> TorchModel:
        return train_results.finish(self, step, has_valid, seconds)

    def _weights_on_cpu(self) -> dict[str, torch.Tensor]:
        return train_results.weights_on_cpu(self)


class _NoSignals:
    received = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def run(inputs: dict[str, object], attrs: dict, ctx) -> TorchModel:
    """Train ``inputs["model"]`` on ``inputs["data"]``; returns the trained TorchModel."""
    model_art, data = inputs["model"], inputs["data"]
    if not isinstance(model_art, TorchModel):
        # the front end guarantees a float TorchModel here (FTP209, FTP207): anything else is a bug
        raise TypeError(f"train needs a TorchModel as `model`, got {type(model_art).__name__}")
    return fit(model_art, data, attrs, ctx)


def fit(model_art: TorchModel, data, attrs: dict, ctx, *,
        loss_fn: Callable[[torch.Tensor, dict, _Trainer], torch.Tensor] | None = None,
        after_step: Callable[[_Trainer], None] | None = None,
        prepare: Callable[[_Trainer], None] | None = None) -> TorchModel:
    """The train stage's loop, for stages that train too (``distill``, ``prune``'s recovery).

    ``attrs`` are train attributes (as the train stage receives them). ``loss_fn(out, batch,
    trainer)`` replaces the criterion on train batches: ``out`` is the fp32 output, ``batch``
    the batch dict (``y``, the model inputs and ``index``, the rows of ``trainer.splits["train"]``);
    evaluation keeps ``trainer.criterion``. ``after_step(trainer)`` runs after each optimizer
    step (e.g. to re-apply pruning masks). ``prepare(trainer)`` runs once the trainer is set up,
    before the first step (and before a checkpoint is restored). Seeds, determinism and resume
    are those of the train stage."""
    device = resolve_device(getattr(ctx, "device", None) or "cpu")
    threads = attrs.get("threads") or getattr(ctx, "threads", None)
    with determinism(int(ctx.seed), threads, device):
        try:
            trainer = _Trainer(model_art, data, attrs, ctx, loss_fn=loss_fn, after_step=after_step)
            if prepare is not None:
                prepare(trainer)
            return trainer.fit()
        except torch.OutOfMemoryError as e:  # outside a training step: loading, evaluation
            raise StageError(
                "FTP509", f"out of memory on {device} ({str(e).splitlines()[0][:160]})",
                hint=f"use a smaller batch (now {attrs.get('batch')}) with a larger accumulate, "
                "or a smaller max_length",
            ) from e
