"""The `train` stage: fine-tune or train a TorchModel on a Dataset, resumably.

The loop has nanoGPT's shape: forward under ``torch.autocast`` (bf16/fp16), loss divided by the
number of accumulated micro-batches, ``GradScaler`` (enabled for fp16 only), ``unscale_`` before
clipping, ``zero_grad(set_to_none=True)``, one scheduler step per optimizer step.

Resume (stack.md §5): every ``checkpoint_every`` optimizer steps and at each epoch end the model,
optimizer, scheduler, scaler, all RNGs and the epoch's generator state *taken at epoch start* are
checkpointed (safetensors + JSON) under ``ctx.work_dir/checkpoints``. A rerun restores them and
skips the batches already consumed, so a killed-and-resumed CPU run ends with weights bitwise
equal to an uninterrupted one (same seed, same thread count).

Extension points are plain dicts: ``OPTIMIZERS``, ``SCHEDULES``, ``LOSSES`` (name -> builder).
"""

from __future__ import annotations

import contextlib
import fnmatch
import itertools
import math
import os
import random
import signal
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from ftdsl.errors import StageError
from ftdsl.runtime import checkpoint as ckpt
from ftdsl.runtime.device import resolve_device, resolve_precision
from ftdsl.stages import metrics as M
from ftdsl.stages.model import FtdslModule, TextModule, TorchModel, materialize, quiet_transformers
from ftdsl.stages.outputs import MetricsWriter

__all__ = ["run", "fit", "StageInterrupted", "OPTIMIZERS", "SCHEDULES", "LOSSES", "KILL_ENV", "PAUSE_ENV"]

KILL_ENV = "FTDSL_TEST_KILL_AT_STEP"  # tests: SIGKILL ourselves after this optimizer step
PAUSE_ENV = "FTDSL_TEST_PAUSE_AT_STEP"  # tests: sleep after this step (to be killed from outside)
MAX_SCALER_SKIPS = 25  # fp16: consecutive overflowed steps before giving up (FTP501)


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


# --------------------------------------------------------------------------------------------
# Registries: optimizers, schedules, losses


def _args(call: dict) -> dict:
    return {k: v for k, v in call.items() if k != "$call"}


def _fused_ok(groups) -> bool:
    """Fused Adam(W) needs floating-point parameters on one CPU/CUDA device."""
    params = [p for g in groups for p in g["params"]]
    devices = {p.device.type for p in params}
    return bool(params) and len(devices) == 1 and devices <= {"cpu", "cuda"} and all(p.is_floating_point()
                                                                                   for p in params)


OPTIMIZERS: dict[str, Callable[[list[dict], dict], torch.optim.Optimizer]] = {
    # fused=True: one kernel over all parameters (Hugging Face Trainer's default, adamw_torch_fused);
    # the per-tensor loop cost MiniLM 94 ms per step on this CPU (bench/train_overhead.py).
    "adamw": lambda groups, c: torch.optim.AdamW(groups, lr=c["lr"], weight_decay=c.get("weight_decay", 0.01),
                                                 fused=_fused_ok(groups)),
    "adam": lambda groups, c: torch.optim.Adam(groups, lr=c["lr"], weight_decay=c.get("weight_decay", 0.0),
                                               fused=_fused_ok(groups)),
    "sgd": lambda groups, c: torch.optim.SGD(
        groups, lr=c["lr"], momentum=c.get("momentum", 0.0), weight_decay=c.get("weight_decay", 0.0),
        nesterov=bool(c.get("nesterov", False))),
}


def _warmup_steps(w: float | int | None, total: int) -> int:
    if not w:
        return 0
    return int(round(w * total)) if w < 1 else int(w)


def _with_warmup(warmup: int, after: Callable[[int], float]) -> Callable[[int], float]:
    # nanoGPT's warmup: the first step already has a small, non-zero learning rate.
    return lambda s: (s + 1) / (warmup + 1) if s < warmup else after(s)


def _constant(c: dict, total: int, base_lr: float):
    return _with_warmup(_warmup_steps(c.get("warmup"), total), lambda s: 1.0)


def _linear(c: dict, total: int, base_lr: float):
    w = _warmup_steps(c.get("warmup"), total)
    return _with_warmup(w, lambda s: max(0.0, (total - s) / max(1, total - w)))


def _cosine(c: dict, total: int, base_lr: float):
    w = _warmup_steps(c.get("warmup"), total)
    floor = min(1.0, float(c.get("min_lr") or 0.0) / base_lr) if base_lr > 0 else 0.0

    def after(s: int) -> float:
        progress = min(1.0, (s - w) / max(1, total - w))
        return floor + 0.5 * (1.0 - floor) * (1.0 + math.cos(math.pi * progress))

    return _with_warmup(w, after)


def _step_decay(c: dict, total: int, base_lr: float):
    every, gamma = max(1, int(c.get("every", 1))), float(c.get("gamma", 0.1))
    return _with_warmup(_warmup_steps(c.get("warmup"), total), lambda s: gamma ** (s // every))


# name -> (call, total_steps, base_lr) -> (step -> lr factor); wrapped in a LambdaLR
SCHEDULES: dict[str, Callable[[dict, int, float], Callable[[int], float]]] = {
    "constant": _constant,
    "linear": _linear,
    "cosine": _cosine,
    "step": _step_decay,
}


def _class_weights(c: dict, info: dict) -> torch.Tensor | None:
    w = c.get("weights")
    n = info["num_outputs"]
    if w is None:
        return None
    if w == "balanced":  # sklearn's "balanced": n_samples / (n_classes * count)
        counts = np.bincount(info["train_labels"], minlength=n).astype(np.float64)
        weights = counts.sum() / (n * np.maximum(counts, 1.0))
        return torch.tensor(weights, dtype=torch.float32)
    if isinstance(w, (list, tuple)):
        if len(w) != n:
            raise StageError("FTP510", f"cross_entropy(weights = [...]) has {len(w)} values for {n} classes")
        return torch.tensor([float(x) for x in w], dtype=torch.float32)
    raise StageError("FTP510", f"cross_entropy(weights = {w!r}): use balanced or a list of {n} numbers")


def _cross_entropy(c: dict, info: dict) -> nn.Module:
    if info["task"] != "classify":
        raise StageError("FTP510", "loss = cross_entropy needs task = classify(...); use mse for regression")
    return nn.CrossEntropyLoss(weight=_class_weights(c, info), label_smoothing=float(c.get("label_smoothing") or 0.0))


class _BCE(nn.Module):
    """BCE with logits; class labels become one-hot targets (one sigmoid per class)."""

    def __init__(self, num_outputs: int, classify: bool):
        super().__init__()
        self.n, self.classify = num_outputs, classify
        self.fn = nn.BCEWithLogitsLoss()

    def forward(self, logits, y):
        target = nn.functional.one_hot(y, self.n).to(logits.dtype) if self.classify else y.to(logits.dtype)
        return self.fn(logits, target)


def _mse(c: dict, info: dict) -> nn.Module:
    if info["task"] != "regress":
        raise StageError("FTP510", "loss = mse needs task = regress(...); use cross_entropy for classification")
    return nn.MSELoss()


# name -> (call, info) -> criterion(logits_fp32, y)
LOSSES: dict[str, Callable[[dict, dict], nn.Module]] = {
    "cross_entropy": _cross_entropy,
    "bce": lambda c, info: _BCE(info["num_outputs"], info["task"] == "classify"),
    "mse": _mse,
}


def _call(value: Any, default: str) -> dict:
    """Lowered call value (or a bare name) as ``{"$call": name, ...}``."""
    if value is None:
        return {"$call": default}
    if isinstance(value, str):
        return {"$call": value}
    return dict(value)


# --------------------------------------------------------------------------------------------
# Process-wide state: seeds, determinism, threads, signals


@contextlib.contextmanager
def _determinism(seed: int, threads: int | None, device: str):
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


class _Signals:
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


# --------------------------------------------------------------------------------------------
# Setup helpers


def _to_regression(data, split):
    from ftdsl.stages.data import Split, regression_targets

    return Split(split.features, split.texts, regression_targets(data, split), split.rows, split.source)


def _strip(name: str) -> str:
    """Parameter names as users write them: without the wrapper's ``net.`` or peft's prefixes."""
    for p in ("net.", "base_model.model."):
        if name.startswith(p):
            name = name[len(p):]
    return name


def _freeze(module: FtdslModule, globs: list[str]) -> int:
    names = [(n, _strip(n), p) for n, p in module.named_parameters()]
    frozen = 0
    for g in globs:
        hits = [(n, p) for n, short, p in names if fnmatch.fnmatchcase(short, g) or fnmatch.fnmatchcase(n, g)]
        if not hits:
            import difflib

            shown = [s for _, s, _ in names]
            close = difflib.get_close_matches(g, shown, n=3, cutoff=0.4)
            raise StageError(
                "FTP510", f"freeze glob {g!r} matches no parameter",
                hint=("did you mean " + ", ".join(repr(c) for c in close) + "? " if close else "")
                + "parameters look like " + ", ".join(repr(s) for s in shown[:4]),
            )
        for _, p in hits:
            if p.requires_grad:
                p.requires_grad_(False)
                frozen += p.numel()
    return frozen


def _lora_targets(net: nn.Module) -> list[str]:
    """Default LoRA targets of a from-scratch net: its Linear layers, except the head and the
    projections inside nn.MultiheadAttention (which bypasses their forward)."""
    mha = [n for n, m in net.named_modules() if isinstance(m, nn.MultiheadAttention)]
    return [n for n, m in net.named_modules()
            if isinstance(m, nn.Linear) and n != "head" and not any(n.startswith(p + ".") for p in mha)]


def _apply_lora(module: FtdslModule, call: dict, total_steps: int) -> None:
    import peft

    hf = isinstance(module, TextModule) and module.hf
    targets = list(call.get("targets") or []) or (None if hf else _lora_targets(module.net))
    common: dict[str, Any] = {"target_modules": targets}
    if hf:
        common["task_type"] = peft.TaskType.SEQ_CLS  # keeps the new classifier trainable
    else:
        common["modules_to_save"] = ["head"]
    if call["$call"] == "lora":
        cfg = peft.LoraConfig(r=int(call.get("r", 8)), lora_alpha=float(call.get("alpha", 16)),
                              lora_dropout=float(call.get("dropout") or 0.0), **common)
    elif call["$call"] == "adalora":
        tinit, tfinal = total_steps // 10, total_steps // 5
        if tinit >= total_steps - tfinal:
            tinit, tfinal = 0, 0
        cfg = peft.AdaLoraConfig(init_r=int(call.get("r", 8)), target_r=int(call.get("target_r", 4)),
                                 total_step=max(1, total_steps), tinit=tinit, tfinal=tfinal, **common)
    else:
        raise StageError("FTP530", f"unknown adapter {call['$call']!r} (use lora or adalora)")
    try:
        with quiet_transformers(), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # transformers deprecations peft triggers
            module.net = peft.get_peft_model(module.net, cfg)
    except ValueError as e:
        names = [n for n, _ in module.net.named_modules() if n][:8]
        raise StageError("FTP510", f"{call['$call']}(targets = {targets}): {str(e).splitlines()[0]}",
                         hint="targets are module names such as " + ", ".join(names)) from e


def _config_for_hash(attrs: dict, ctx, precision: str, threads: int, model: TorchModel, data) -> dict:
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
        if (attrs.get("distributed") or "none") != "none":
            raise StageError("FTP530", f"distributed = {attrs['distributed']} is not supported by this engine yet",
                             hint="use distributed = none")
        self.ckpt_dir = Path(ctx.work_dir) / "checkpoints"
        self._setup_data()
        self._setup_model()
        n_params = sum(p.numel() for p in self.module.parameters())
        self.precision, self.precision_reason = resolve_precision(attrs.get("precision", "auto"), self.device,
                                                                  n_params=n_params)
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)
        self.log(f"precision {self.precision_reason}")
        self._setup_optim()

    # -- data ------------------------------------------------------------------------------

    def _setup_data(self) -> None:
        from ftdsl.stages.data import check_labels

        data, spec = self.data, self.art.spec
        if "train" not in data.splits or len(data.splits["train"]) == 0:
            raise StageError("FTP510", f"data from `{data.source}` has no (or an empty) `train` split")
        self.task = spec["task"]["$call"]
        self.num_outputs = int(spec["task"]["labels"] if self.task == "classify" else spec["task"]["outputs"])
        check_labels(data, self.num_outputs, self.task)
        self.splits = dict(data.splits)
        if self.task == "regress":
            self.splits = {k: _to_regression(data, v) for k, v in self.splits.items()}
        want = spec.get("modality")
        if spec.get("source") == "pretrained" and data.modality != "text":
            raise StageError("FTP510", f"pretrained model {spec.get('pretrained')!r} takes text, but "
                             f"`{data.source}` has numeric features", hint="use arch = mlp(...) or cnn(...)")
        if want and want != data.modality:
            arch = spec.get("arch", {}).get("$call")
            raise StageError("FTP510", f"arch = {arch}(...) takes {want}, but `{data.source}` has {data.modality}",
                             hint="use mlp/cnn for numeric features, rnn/transformer or a pretrained model for text")
        self.batch = int(self.attrs.get("batch") or 32)
        self.accumulate = max(1, int(self.attrs.get("accumulate") or 1))
        n = len(self.splits["train"])
        self.batches_per_epoch = math.ceil(n / self.batch)
        self.steps_per_epoch = math.ceil(self.batches_per_epoch / self.accumulate)
        epochs, max_steps = self.attrs.get("epochs"), self.attrs.get("max_steps")
        if epochs is None and max_steps is None:
            epochs = 1
        totals = [int(max_steps)] if max_steps is not None else []
        if epochs is not None:
            totals.append(int(epochs) * self.steps_per_epoch)
        self.total_steps = max(1, min(totals))

    # -- model -----------------------------------------------------------------------------

    def _setup_model(self) -> None:
        art, data, ctx = self.art, self.data, self.ctx
        spec = dict(art.spec)
        self.tokenizer = None
        self.tokenizer_dir = art.tokenizer_dir
        if spec["source"] == "pretrained":
            self.tokenizer = art.load_tokenizer()
            if self.tokenizer is None:
                raise StageError("FTP520", f"pretrained model {spec.get('pretrained')!r} has no tokenizer files")
            module = art.build()
        elif art.trained:
            shape = spec.get("input_shape")
            if data.modality == "features" and shape is not None and tuple(shape) != tuple(data.input_shape or ()):
                raise StageError("FTP510", f"model `{spec.get('trained_by', 'model')}` was trained on inputs of shape "
                                 f"{tuple(shape)}, but `{data.source}` has {tuple(data.input_shape or ())}")
            module = art.build()
            if data.modality == "text":
                self.tokenizer = art.load_tokenizer()
        else:  # from scratch: complete the spec from the data, then materialize with the seed
            spec["modality"] = data.modality
            spec["num_outputs"] = self.num_outputs
            if data.modality == "text":
                if data.tokenizer_dir is None:
                    raise StageError(
                        "FTP510", f"arch = {spec['arch']['$call']}(...) needs a vocabulary, but data "
                        f"`{data.source}` has no tokenizer", hint="add `tokenizer = wordpiece(vocab = 8000)` to the data block")
                from tokenizers import Tokenizer

                from ftdsl.stages.batching import pad_token_id

                # the raw tokenizers.Tokenizer: same ids as the transformers wrapper, without
                # importing transformers (seconds) for a from-scratch model
                self.tokenizer_dir = Path(data.tokenizer_dir)
                self.tokenizer = Tokenizer.from_file(str(self.tokenizer_dir / "tokenizer.json"))
                spec["vocab_size"] = self.tokenizer.get_vocab_size(with_added_tokens=True)
                spec["pad_id"] = pad_token_id(self.tokenizer)
            else:
                spec["input_shape"] = list(data.input_shape)
                spec["norm"] = data.norm_mean is not None
            module = materialize(spec, seed=int(ctx.seed), norm_mean=data.norm_mean, norm_std=data.norm_std)
        spec["label_names"] = data.label_names
        self.spec = spec
        self.max_length = self._max_length(module)
        if self.max_length is not None:
            spec["max_length"] = self.max_length
        module.to(self.device)
        module.train()
        self.module = module
        freeze = list(self.attrs.get("freeze") or [])
        if freeze:
            n = _freeze(module, freeze)
            self.log(f"froze {n:,} parameters matching {freeze}")
        self.lora = self.attrs.get("lora")
        if self.lora:
            self.lora = _call(self.lora, "lora")
            _apply_lora(module, self.lora, self.total_steps)
            module.to(self.device)
        trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
        total = sum(p.numel() for p in module.parameters())
        if trainable == 0:
            raise StageError("FTP510", "nothing to train: every parameter is frozen", hint="check `freeze`")
        self.log(f"{trainable:,} of {total:,} parameters trainable")
        self.forward = module
        if self.attrs.get("compile"):
            self.forward = torch.compile(module)

    def _max_length(self, module: nn.Module) -> int | None:
        if self.data.modality != "text":
            return None
        ml = self.attrs.get("max_length") or self.data.max_length
        limits = []
        if isinstance(module, TextModule) and module.hf:
            mpe = getattr(module.net.config, "max_position_embeddings", None)
            if isinstance(mpe, int):
                limits.append(mpe)
        elif self.spec.get("arch", {}).get("$call") == "transformer":
            limits.append(int(self.spec["arch"].get("max_len", 128)))
        tml = getattr(self.tokenizer, "model_max_length", None)
        if isinstance(tml, int) and tml < 1_000_000:
            limits.append(tml)
        if ml is None:
            return min(limits) if limits else None
        return min([int(ml), *limits])

    # -- optimizer, schedule, loss ----------------------------------------------------------

    def _setup_optim(self) -> None:
        attrs = self.attrs
        opt_call = _call(attrs.get("optimizer"), "adamw")
        decay, no_decay = [], []
        for _, p in self.module.named_parameters():
            if p.requires_grad:
                # nanoGPT: weight decay on matrices and kernels only, not on biases and norms
                (decay if p.ndim >= 2 else no_decay).append(p)
        wd = float(opt_call.get("weight_decay") or 0.0)
        groups = [g for g in ({"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0})
                  if g["params"]]
        self.params = decay + no_decay
        if opt_call["$call"] not in OPTIMIZERS:
            raise StageError("FTP530", f"unknown optimizer {opt_call['$call']!r} (use {', '.join(OPTIMIZERS)})")
        try:
            self.optimizer = OPTIMIZERS[opt_call["$call"]](groups, opt_call)
        except ValueError as e:
            raise StageError("FTP510", f"optimizer {opt_call['$call']}(...): {e}") from e
        sched_call = _call(attrs.get("schedule"), "constant")
        if sched_call["$call"] not in SCHEDULES:
            raise StageError("FTP530", f"unknown schedule {sched_call['$call']!r} (use {', '.join(SCHEDULES)})")
        lambdas = [SCHEDULES[sched_call["$call"]](sched_call, self.total_steps, float(g["lr"]))
                   for g in self.optimizer.param_groups]
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambdas)
        self.scaler = torch.amp.GradScaler(self.device, enabled=self.precision == "fp16")
        loss_call = _call(attrs.get("loss"), "cross_entropy" if self.task == "classify" else "mse")
        if loss_call["$call"] not in LOSSES:
            raise StageError("FTP530", f"unknown loss {loss_call['$call']!r} (use {', '.join(LOSSES)})")
        info = {"task": self.task, "num_outputs": self.num_outputs,
                "train_labels": self.splits["train"].labels if self.task == "classify" else None}
        self.criterion = LOSSES[loss_call["$call"]](loss_call, info).to(self.device)
        self.clip = attrs.get("clip")
        self.balanced = self.data.sampler == "balanced" and self.task == "classify"

    # -- batches ---------------------------------------------------------------------------

    def _batches(self, split, *, shuffle: bool, generator=None, skip: int = 0):
        from ftdsl.stages.batching import iter_batches

        return iter_batches(split, batch_size=self.batch, shuffle=shuffle, generator=generator,
                            tokenizer=self.tokenizer, max_length=self.max_length, length_grouped=True,
                            balanced=self.balanced and shuffle, skip=skip,
                            with_index=self.loss_fn is not None and shuffle)

    def _inputs(self, b: dict) -> dict[str, torch.Tensor]:
        return {k: b[k].to(self.device, non_blocking=True) for k in self.module.input_names}

    def _autocast(self):
        if self.amp_dtype is None:  # fp32: no autocast context at all (it costs per step)
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device, dtype=self.amp_dtype)

    # -- one optimizer step ------------------------------------------------------------------

    def _step(self, group: list[dict], step: int) -> float:
        """Forward/backward over the micro-batches of one optimizer step; returns the mean loss."""
        total = 0.0
        for b in group:
            y = b["y"].to(self.device)
            with self._autocast():
                out = self.forward(**self._inputs(b))
            if self.loss_fn is not None:
                loss = self.loss_fn(out.float(), b, self)
            else:
                loss = self.criterion(out.float(), y)
            value = float(loss.detach())
            if not math.isfinite(value):
                self._nan(value, step)
            # scale for fp16 (a no-op otherwise); divide so the gradient is the group's mean
            self.scaler.scale(loss / len(group) if len(group) > 1 else loss).backward()
            total += value / len(group)
        if self.clip:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.params, float(self.clip))
        scale = self.scaler.get_scale() if self.scaler.is_enabled() else None
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.after_step is not None:
            self.after_step(self)
        if scale is not None:
            self.scaler_skips = self.scaler_skips + 1 if self.scaler.get_scale() < scale else 0
            if self.scaler_skips >= MAX_SCALER_SKIPS:
                raise StageError("FTP501", f"fp16 gradients overflowed in {self.scaler_skips} steps in a row "
                                 f"(up to step {step}); the optimizer has not updated since",
                                 hint="use precision = bf16 or fp32, lower the learning rate, or add clip")
        if self.lora and self.lora["$call"] == "adalora":
            self.module.net.base_model.update_and_allocate(step)
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        return total

    def _nan(self, value: float, step: int):
        kept = ckpt.list_checkpoints(self.ckpt_dir)
        what = "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
        last = f"{self.last_finite:.6g}" if self.last_finite is not None else "none"
        lr = self.optimizer.param_groups[0]["lr"]
        raise StageError(
            "FTP501",
            f"loss is {what} at step {step} (last finite loss {last}, lr {lr:.3g})",
            hint="lower the learning rate, add `clip = 1.0`, or use `precision = fp32`; "
            + (f"the last checkpoint (step {kept[-1][0]}) is kept in {self.ckpt_dir}" if kept else "no checkpoint was written yet"),
        )

    # -- evaluation -------------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self, split_name: str) -> dict[str, float]:
        split = self.splits[split_name]
        self.module.eval()
        outs, ys, loss_sum = [], [], 0.0
        try:
            for b in self._batches(split, shuffle=False):
                y = b["y"].to(self.device)
                with self._autocast():
                    out = self.module(**self._inputs(b))
                out = out.float()
                loss_sum += float(self.criterion(out, y)) * len(y)
                outs.append(out.cpu().numpy())
                ys.append(b["y"].numpy())
        finally:
            self.module.train()
        n = max(1, len(split))
        if not outs:
            return {}
        pred, y = np.concatenate(outs), np.concatenate(ys)
        if self.task == "classify":
            res = M.classification_metrics(pred, y, self.num_outputs)
        else:
            res = M.regression_metrics(pred, y)
        res["loss"] = loss_sum / n
        return res

    # -- checkpoints ------------------------------------------------------------------------

    def _adalora_state(self) -> tuple[dict, dict]:
        """AdaLoRA's importance scores and rank pattern live outside the state dict."""
        if not (self.lora and self.lora["$call"] == "adalora"):
            return {}, {}
        base = self.module.net.base_model
        ra = base.rankallocator
        tensors = {f"adalora.{kind}.{name}": t for kind in ("ipt", "exp_avg_ipt", "exp_avg_unc")
                   for name, t in getattr(ra, kind).items()}
        pattern = base.peft_config[base.trainable_adapter_name].rank_pattern
        return tensors, {"adalora_rank_pattern": pattern}

    def _restore_adalora(self, tensors: dict, extra: dict) -> None:
        if not (self.lora and self.lora["$call"] == "adalora"):
            return
        base = self.module.net.base_model
        ra = base.rankallocator
        ra.reset_ipt()
        for key, t in tensors.items():
            if key.startswith("adalora."):
                _, kind, name = key.split(".", 2)
                getattr(ra, kind)[name] = t.to(self.device)
        base.peft_config[base.trainable_adapter_name].rank_pattern = extra.get("adalora_rank_pattern")

    def _save(self, step: int, epoch: int, batch_in_epoch: int, gen_state) -> Path:
        extra_tensors, extra = self._adalora_state()
        return ckpt.save_checkpoint(
            self.ckpt_dir, model=self.module, optimizer=self.optimizer, scheduler=self.scheduler,
            scaler=self.scaler, step=step, epoch=epoch, batch_in_epoch=batch_in_epoch,
            epoch_gen_state=gen_state, best=self.best, best_state=self.best_state,
            history=self.writer.records, config_hash=self.config_hash, config=self.config,
            extra={"since_eval": self.since_eval, "last_finite": self.last_finite,
                   "scaler_skips": self.scaler_skips, "log_acc": self.log_acc, "samples": self.samples,
                   "last_eval": self.last_eval, "stopped": self.stopped, **extra},
            extra_tensors=extra_tensors,
        )

    def _resume(self) -> tuple[int, int, int, torch.Tensor | None]:
        ck = ckpt.load_latest(self.ckpt_dir, config_hash=self.config_hash, config=self.config,
                              force_resume=bool(getattr(self.ctx, "force_resume", False)), warn=self.log)
        if ck is None:
            self.writer.reset([])
            return 0, 0, 0, None
        try:
            ck.restore(model=self.module, optimizer=self.optimizer, scheduler=self.scheduler, scaler=self.scaler)
        except (RuntimeError, ValueError, KeyError) as e:
            raise StageError("FTP506", f"checkpoint {ck.path} does not fit this model ({str(e).splitlines()[0]})",
                             hint="rerun with --force to start over") from e
        self.best, self.best_state = ck.best, ck.best_state
        ex = ck.extra
        self._restore_adalora(ck.extra_tensors, ex)
        self.since_eval = ex.get("since_eval", self.since_eval)
        self.last_finite = ex.get("last_finite")
        self.scaler_skips = ex.get("scaler_skips", 0)
        self.log_acc = ex.get("log_acc", self.log_acc)
        self.samples = ex.get("samples", 0)
        self.last_eval = ex.get("last_eval")
        self.stopped = bool(ex.get("stopped", False))
        self.writer.reset(ck.history, resume_step=ck.step)
        self.log(f"resumed from step {ck.step}")
        return ck.step, ck.epoch, ck.batch_in_epoch, ck.epoch_gen_state

    # -- early stopping ---------------------------------------------------------------------

    def _early_stop(self, step: int, evals: dict[str, dict]) -> bool:
        es = self.attrs.get("early_stop")
        if not es:
            return False
        metric = es.get("metric", "valid.loss")
        split, _, key = metric.partition(".")
        value = evals.get(split, {}).get(key)
        if value is None or not math.isfinite(value):
            return False
        # `mode` defaults by metric: higher is better for accuracy/f1/precision/recall, lower for losses
        mode = es.get("mode") or ("max" if key in ("accuracy", "f1", "precision", "recall", "agreement") else "min")
        delta = float(es.get("min_delta") or 0.0)
        better = (self.best is None or (value > self.best["value"] + delta if mode == "max"
                                        else value < self.best["value"] - delta))
        if better:
            self.best = {"metric": metric, "value": value, "step": step, "bad": 0}
            self.best_state = {k: v.detach().to("cpu").clone() for k, v in self.module.state_dict().items()}
            return False
        self.best["bad"] += 1
        if self.best["bad"] >= int(es.get("patience", 2)):
            self.log(f"early stop at step {step}: {metric} has not improved for {self.best['bad']} evaluations "
                     f"(best {self.best['value']:.6g} at step {self.best['step']})")
            return True
        return False

    # -- the loop ---------------------------------------------------------------------------

    def fit(self) -> TorchModel:
        attrs, ctx = self.attrs, self.ctx
        t_start = time.perf_counter()
        self.writer = MetricsWriter(ctx.out_dir)
        if not (attrs.get("threads") or getattr(ctx, "threads", None)):
            # bits depend on the thread count (stack.md §5): resume with the checkpoint's
            saved = ckpt.latest_config(self.ckpt_dir)
            n = saved.get("threads") if isinstance(saved, dict) else None
            if isinstance(n, int) and n > 0 and n != torch.get_num_threads():
                self.log(f"using {n} threads, as the checkpoint being resumed did")
                torch.set_num_threads(n)
        self.config = _config_for_hash(attrs, ctx, self.precision, torch.get_num_threads(), self.art, self.data)
        self.config_hash = ckpt.config_hash_of(self.config)
        self.best: dict | None = None
        self.best_state: dict | None = None
        self.since_eval = {"sum": 0.0, "n": 0}
        self.log_acc = {"sum": 0.0, "n": 0, "samples": 0, "time": 0.0}
        self.last_finite: float | None = None
        self.scaler_skips = 0
        self.samples = 0
        self.last_eval: dict | None = None
        self.stopped = False
        has_valid = "valid" in self.splits and len(self.splits["valid"]) > 0
        es = attrs.get("early_stop")
        if es and str(es.get("metric", "")).startswith("valid.") and not has_valid:
            raise StageError("FTP510", f"early_stop metric {es['metric']!r} needs a `valid` split in the data")
        eval_every = attrs.get("eval_every")
        ckpt_every = int(attrs.get("checkpoint_every") or 0)
        # like nanoGPT's log interval: every step of a metrics line wakes TensorBoard's writer
        # thread, which cost a small CNN ~0.6 ms of its 2.5 ms step (the loss is averaged anyway)
        log_every = max(10, self.total_steps // 200)
        kill_at = int(os.environ.get(KILL_ENV, "0") or 0)
        pause_at = int(os.environ.get(PAUSE_ENV, "0") or 0)

        g = torch.Generator()
        g.manual_seed(int(ctx.seed))
        step, epoch, bie, gen_state = self._resume()
        if gen_state is not None:
            g.set_state(gen_state)
        ctx.reporter.start(self.total_steps, f"train {ctx.name}")
        last_ckpt_step = step if step else None
        with _Signals(self.log) as sig:
            while step < self.total_steps and not self.stopped:
                epoch_gen_state = g.get_state()
                batches = self._batches(self.splits["train"], shuffle=True, generator=g, skip=bie)
                while step < self.total_steps:
                    group = list(itertools.islice(batches, self.accumulate))
                    if not group:
                        break
                    t0 = time.perf_counter()
                    try:
                        loss = self._step(group, step + 1)
                    except torch.OutOfMemoryError as e:
                        raise self._oom(step + 1) from e
                    dt = time.perf_counter() - t0
                    step += 1
                    bie += len(group)
                    n_samples = sum(len(b["y"]) for b in group)
                    self.samples += n_samples
                    self.last_finite = loss
                    self.since_eval["sum"] += loss
                    self.since_eval["n"] += 1
                    acc = self.log_acc
                    acc["sum"] += loss
                    acc["n"] += 1
                    acc["samples"] += n_samples
                    acc["time"] += dt
                    lr = self.optimizer.param_groups[0]["lr"]
                    ctx.reporter.update(step, loss=loss, lr=lr, samples_per_s=n_samples / dt if dt > 0 else 0.0)
                    epoch_end = bie >= self.batches_per_epoch
                    if step % log_every == 0 or step == self.total_steps or epoch_end:
                        self.writer.log(step, "train", loss=acc["sum"] / acc["n"], lr=lr,
                                        samples_per_s=acc["samples"] / acc["time"] if acc["time"] > 0 else 0.0,
                                        epoch=round(step / self.steps_per_epoch, 4))
                        self.log_acc = {"sum": 0.0, "n": 0, "samples": 0, "time": 0.0}
                    due = (step % int(eval_every) == 0) if eval_every else epoch_end
                    if due:
                        self.stopped = self._eval_point(step, has_valid)
                    next_epoch = epoch + 1 if epoch_end else epoch
                    finished = step >= self.total_steps or self.stopped
                    if not finished and ((ckpt_every and step % ckpt_every == 0) or epoch_end):
                        self._save(step, next_epoch, 0 if epoch_end else bie,
                                   g.get_state() if epoch_end else epoch_gen_state)
                        last_ckpt_step = step
                    if pause_at and step == pause_at:  # tests: wait here to be killed or signalled
                        print(f"ftdsl: paused after step {step}", flush=True)
                        while sig.received is None:
                            time.sleep(0.05)
                    if sig.received is not None and not finished:
                        path = None
                        if last_ckpt_step != step:
                            path = self._save(step, next_epoch, 0 if epoch_end else bie,
                                              g.get_state() if epoch_end else epoch_gen_state)
                        else:
                            path = self.ckpt_dir / f"step-{step}"
                        self.writer.close()
                        raise StageInterrupted(sig.received, step, path)
                    if kill_at and step == kill_at:
                        self.writer.close()
                        os.kill(os.getpid(), signal.SIGKILL)
                    if epoch_end or self.stopped:
                        break
                if bie >= self.batches_per_epoch:
                    epoch += 1
                    bie = 0
                elif not self.stopped and step < self.total_steps:  # pragma: no cover - defensive
                    raise RuntimeError(f"epoch {epoch} ended after {bie} of {self.batches_per_epoch} batches")
        return self._finish(step, has_valid, time.perf_counter() - t_start)

    def _eval_point(self, step: int, has_valid: bool) -> bool:
        evals: dict[str, dict] = {}
        if self.since_eval["n"]:
            evals["train"] = {"loss": self.since_eval["sum"] / self.since_eval["n"]}
        self.since_eval = {"sum": 0.0, "n": 0}
        if has_valid:
            res = self.evaluate("valid")
            evals["valid"] = res
            self.writer.log(step, "valid", **res)
            shown = ", ".join(f"{k} {v:.4g}" for k, v in res.items() if k in ("loss", "accuracy", "f1", "mse", "mae"))
            self.log(f"step {step}: valid {shown}")
            self.last_eval = {"step": step, "metrics": res}
        return self._early_stop(step, evals)

    def _oom(self, step: int) -> StageError:
        kept = ckpt.list_checkpoints(self.ckpt_dir)
        half = max(1, self.batch // 2)
        return StageError(
            "FTP509",
            f"out of memory at step {step} on {self.device} (batch {self.batch}, accumulate {self.accumulate})",
            hint=f"use a smaller batch with more accumulation, e.g. batch = {half}, accumulate = "
            f"{self.accumulate * 2}" + (f"; the last checkpoint (step {kept[-1][0]}) is kept" if kept else ""),
        )

    # -- the end ----------------------------------------------------------------------------

    def _finish(self, step: int, has_valid: bool, seconds: float) -> TorchModel:
        restored = False
        if self.best_state is not None and self.best is not None and self.best["step"] != step:
            self.module.load_state_dict(self.best_state)
            restored = True
            self.log(f"restored the best weights: {self.best['metric']} {self.best['value']:.6g} "
                     f"at step {self.best['step']}")
        final: dict[str, Any] = {}
        train_recs = [r for r in self.writer.records if r.get("split") == "train"]
        if train_recs:
            final["train.loss"] = train_recs[-1]["loss"]
        if has_valid:
            if not restored and self.last_eval is not None and self.last_eval["step"] == step:
                res = self.last_eval["metrics"]
            else:
                res = self.evaluate("valid")
            final.update({f"valid.{k}": v for k, v in res.items()})
        if "test" in self.splits and len(self.splits["test"]) > 0:
            res = self.evaluate("test")
            self.writer.log(self.best["step"] if restored else step, "test", **res)
            final.update({f"test.{k}": v for k, v in res.items()})
        final["steps"] = step
        final["epochs"] = round(step / self.steps_per_epoch, 4)
        if self.best is not None:
            final["best_step"] = self.best["step"]
        final["stopped_early"] = bool(self.stopped)
        final["train_seconds"] = round(seconds, 3)
        final["samples_per_s"] = round(self.samples / seconds, 2) if seconds > 0 else 0.0
        module = self.module
        if self.lora:
            with quiet_transformers():
                module.net = module.net.merge_and_unload()  # a plain model: no peft at load time
        module.eval()
        self.writer.finalize({**final, "precision": self.precision, "precision_reason": self.precision_reason})
        headline = ("train.loss", "valid.loss", "valid.accuracy", "valid.f1", "valid.mse", "test.accuracy",
                    "test.f1", "test.mse")
        self.ctx.reporter.finish(**{k: final[k] for k in headline if k in final})
        spec = {**self.spec, "trained_by": self.ctx.name, "precision": self.precision, "steps": step}
        hf_config = module.net.config if isinstance(module, TextModule) and module.hf else None
        weights = {k: v.detach().to("cpu").contiguous().clone() for k, v in module.state_dict().items()}
        return TorchModel(spec, weights, tokenizer_dir=self.tokenizer_dir, hf_config=hf_config,
                          metrics={k: v for k, v in final.items() if isinstance(v, (int, float))})


def run(inputs: dict[str, object], attrs: dict, ctx) -> TorchModel:
    """Train ``inputs["model"]`` on ``inputs["data"]``; returns the trained TorchModel."""
    model_art, data = inputs["model"], inputs["data"]
    if not isinstance(model_art, TorchModel):
        raise StageError("FTP530", f"train needs a TorchModel as `model`, got {type(model_art).__name__}")
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
    with _determinism(int(ctx.seed), threads, device):
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
