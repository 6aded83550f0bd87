"""The trainer's path for token-level tasks (``ftdsl.stages.tasks.TASKS``: causal_lm, seq2seq,
token_classify): the task object supplies the batches, the criterion and the validation metrics;
the loop itself (resume, accumulation, precision, early stopping, DDP) is the train stage's.

* Each split is encoded once (``task.encode``) into an :class:`~ftdsl.stages.tasks.common.EncodedSplit`
  that replaces the raw split in ``trainer.splits``; batches are length-grouped, padded by
  ``task.collate`` (``y`` with ``IGNORE``), drawn from the epoch generator like every other batch.
* The loss of an optimizer step is the summed token cross-entropy of all its micro-batches (and
  all ranks' shares) divided by the labelled tokens of the whole global batch, so accumulation and
  DDP compute exactly the mean over the step's tokens (a per-micro-batch mean would weight short
  batches' tokens more).
* Evaluation keeps ``task.batch_stats`` per batch (DDP: sharded and gathered in order) and
  ``task.metrics`` turns them into ``loss``, ``perplexity``, ``token_accuracy``, ...
"""

from __future__ import annotations

from pathlib import Path

import torch

from ftdsl.errors import StageError
from ftdsl.stages.tasks import IGNORE, get_task, is_seq_task

__all__ = ["is_seq_task", "check_data", "from_scratch_spec", "encode_splits", "batches", "inputs",
           "group_tokens", "micro_loss", "evaluate", "gradient_checkpointing"]


def check_data(t) -> None:
    """Set the trainer's task object; the data must fit the task (``task.check_data``)."""
    from ftdsl.ir.lower import complete_call

    t.task_call = complete_call(t.art.spec["task"], "task")
    t.seq_task = get_task(t.task)
    t.seq_task.check_data(t.data, t.task_call)
    t.num_outputs = 0


def from_scratch_spec(t, spec: dict) -> None:
    """Complete a from-scratch gpt/llama/t5 spec from the data's tokenizer (vocabulary, special ids)."""
    from ftdsl.stages.hf_archs import is_hf_arch
    from ftdsl.stages.tasks.common import load_seq_tokenizer, special_ids

    arch = spec["arch"]["$call"]
    if not is_hf_arch(arch):
        raise StageError("FTP510", f"arch = {arch}(...) cannot carry task = {t.task}(...)",
                         hint="use gpt(...) or llama(...) for causal_lm, t5(...) for seq2seq, or a pretrained model")
    if t.data.tokenizer_dir is None:
        raise StageError("FTP510", f"arch = {arch}(...) needs a vocabulary, but data `{t.data.source}` has no "
                         "tokenizer", hint="add `tokenizer = bpe(vocab = 4000)` to the data block")
    t.tokenizer_dir = Path(t.data.tokenizer_dir)
    t.tokenizer = load_seq_tokenizer(t.tokenizer_dir, pretrained=False)
    ids = special_ids(t.tokenizer)
    spec["vocab_size"] = len(t.tokenizer)
    spec["pad_id"], spec["bos_id"], spec["eos_id"] = ids["pad"], ids["bos"], ids["eos"]


def encode_splits(t) -> None:
    """Encode every split once (after the tokenizer and max length are known) and count the steps."""
    from ftdsl.stages.tasks.common import EncodedSplit, special_ids

    if t.tokenizer is None or not hasattr(t.tokenizer, "apply_chat_template"):
        raise StageError("FTP520", f"task {t.task}(...) needs the model's tokenizer (transformers), found none")
    t.pad_id = special_ids(t.tokenizer)["pad"]
    encoded = {}
    for name, split in t.data.splits.items():
        enc = EncodedSplit(t.seq_task.encode(t.data, split, t.tokenizer, t.task_call, t.max_length), name)
        encoded[name] = enc
        note = getattr(t.seq_task, "length_note", None)  # the task's own words for what max_length did
        if callable(note):
            msg = note(split, enc.examples, t.task_call, t.max_length)
            if msg:
                t.log(f"{name}: {msg}")
        elif t.max_length and not t.task_call.get("packing"):
            at = int((enc.lengths >= t.max_length).sum())
            if at:
                t.log(f"{name}: {at} of {len(enc)} rows reach max_length = {t.max_length} (longer rows are truncated)")
    if len(encoded["train"]) == 0 or encoded["train"].tokens == 0:
        raise StageError("FTP510", f"the train split of `{t.data.source}` has no token that carries loss",
                         hint="check the text / response columns (mask_prompt = true learns only responses)")
    if t.task_call.get("packing"):
        t.log(f"packing: {len(t.data.splits['train'])} train rows into {len(encoded['train'])} rows of "
              f"{t.max_length} tokens")
    t.splits = encoded
    from ftdsl.stages.train_state import plan_steps

    plan_steps(t, len(encoded["train"]))


def batches(t, split, *, shuffle: bool, generator=None, skip: int = 0):
    from ftdsl.stages.tasks.common import iter_example_batches

    return iter_example_batches(split, t.seq_task, batch_size=t.batch, shuffle=shuffle, pad_id=t.pad_id,
                                generator=generator, skip=skip)


def inputs(t, b: dict) -> dict[str, torch.Tensor]:
    """The module's inputs of a batch: everything but the labels (packed rows carry position_ids)."""
    return {k: v.to(t.device, non_blocking=True) for k, v in b.items() if k not in ("y", "index")}


def group_tokens(group: list[dict]) -> int:
    """Labelled tokens of one optimizer step's micro-batches (the whole global batch)."""
    return max(1, sum(int((b["y"] != IGNORE).sum()) for b in group))


def micro_loss(t, out: torch.Tensor, y: torch.Tensor, n_tokens: int, weight: float) -> torch.Tensor:
    """This rank's share of the step's mean token loss from one micro-batch: its summed loss over
    the step's labelled tokens, times the world size (DDP averages gradients over the ranks)."""
    loss = t.criterion(out, y, reduction="sum") / n_tokens
    if t.parallel.active:
        loss = loss * (t.parallel.world if weight != 0.0 else 0.0)
    return loss


@torch.no_grad()
def evaluate(t, split_name: str) -> dict[str, float]:
    split = t.splits[split_name]
    par = t.parallel
    shard = par.active and par.mode == "ddp"
    t.module.eval()
    parts = []  # (batch number, stats)
    try:
        for i, b in enumerate(batches(t, split, shuffle=False)):
            if shard and i % par.world != par.rank:
                continue
            with t._autocast():
                out = t.module(**inputs(t, b))
            parts.append((i, t.seq_task.batch_stats(out.float(), b["y"].to(out.device))))
    finally:
        t.module.train()
    if shard:
        parts = sorted((p for ps in par.gather(parts) for p in ps), key=lambda p: p[0])
    if not parts:
        return {}
    return t.seq_task.metrics([p[1] for p in parts], t.task_call)


def gradient_checkpointing(t, module) -> None:
    """``gradient_checkpointing = true``: recompute activations in the backward pass (transformers models)."""
    if not t.attrs.get("gradient_checkpointing"):
        return
    net = getattr(module, "net", None)
    if not (getattr(module, "hf", False) and hasattr(net, "gradient_checkpointing_enable")):
        arch = t.spec.get("arch", {}).get("$call") if isinstance(t.spec.get("arch"), dict) else None
        raise StageError("FTP252", f"gradient_checkpointing = true needs a transformers model, but this one is "
                         f"{arch or 'not one'}(...)", hint="remove gradient_checkpointing, or use a pretrained "
                         "model or gpt/llama/t5")
    if not getattr(net, "supports_gradient_checkpointing", True):
        raise StageError("FTP252", f"{type(net).__name__} does not support gradient checkpointing",
                         hint="remove gradient_checkpointing = true")
    if hasattr(net, "activation_checkpointing_enable"):  # transformers >= 5.2x: the old name warns
        net.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        net.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    t.log("gradient checkpointing on")
