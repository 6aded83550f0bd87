"""Pieces every token-level task shares: padding/collation, the token cross-entropy, length-grouped
batches of encoded examples, and teacher-forced metric statistics.

Conventions (all tasks):

* An encoded example is a dict of int lists. ``labels`` is aligned with the logits the module
  returns: ``labels[i]`` is the target of output position ``i`` (a causal LM's labels are already
  shifted by one at encode time), ``IGNORE`` where no loss is taken.
* :func:`collate` pads a list of examples into a batch: every key is padded to the longest
  example (right side); ``labels`` becomes ``"y"`` (padded with ``IGNORE``); ids are padded with
  the tokenizer's pad id, ``position_ids`` continue counting (a packed row's padding is its own
  trailing "example"); ``attention_mask`` is added from the lengths unless the examples are packed
  (carry ``position_ids``: transformers then builds a block-diagonal causal mask from them).
* :class:`TokenCrossEntropy` is every task's criterion: the mean over labelled tokens
  (``reduction="sum"`` gives the sum, which the trainer divides by the labelled tokens of the whole
  global batch, so accumulation and DDP equal one large batch).
* Evaluation never keeps logits: per batch, ``task.batch_stats(logits, y)`` returns a small
  picklable summary (:func:`token_stats` for the language-model metrics), and
  ``task.metrics(parts, task_call)`` turns the list of summaries into the split's metrics
  (:func:`lm_metrics`).
"""

from __future__ import annotations

import math
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from ftdsl.stages.tasks import IGNORE

__all__ = ["IGNORE", "PAD_VALUES", "collate", "TokenCrossEntropy", "token_stats", "lm_metrics",
           "example_lengths", "iter_example_batches", "EncodedSplit", "load_seq_tokenizer", "special_ids"]

# what each key of an encoded example is padded with (ids: the tokenizer's pad id, see collate)
PAD_VALUES: dict[str, int] = {"labels": IGNORE, "attention_mask": 0, "token_type_ids": 0}
_ID_KEYS = ("input_ids", "decoder_input_ids")


def collate(examples: list[dict[str, list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Pad ``examples`` (right side) into int64 tensors; ``labels`` -> ``y``. See the module docstring."""
    if not examples:
        raise ValueError("collate: no examples")
    keys = list(examples[0])
    packed = "position_ids" in examples[0]
    out: dict[str, torch.Tensor] = {}
    for key in keys:
        seqs = [ex[key] for ex in examples]
        width = max((len(s) for s in seqs), default=0)
        fill = pad_id if key in _ID_KEYS else PAD_VALUES.get(key, 0)
        arr = np.full((len(seqs), width), fill, dtype=np.int64)
        for r, s in enumerate(seqs):
            arr[r, : len(s)] = s
            if key == "position_ids" and len(s) < width:
                arr[r, len(s):] = np.arange(width - len(s))
        out["y" if key == "labels" else key] = torch.from_numpy(arr)
    if "input_ids" in out and "attention_mask" not in out and not packed:
        lens = torch.tensor([len(ex["input_ids"]) for ex in examples], dtype=torch.int64)
        out["attention_mask"] = (torch.arange(out["input_ids"].shape[1])[None, :] < lens[:, None]).to(torch.int64)
    return out


class TokenCrossEntropy(nn.Module):
    """(logits ``[B, S, V]`` float, y ``[B, S]`` int64) -> the mean cross-entropy over ``y != IGNORE``
    (0 when no token is labelled). ``reduction="sum"``: the sum instead."""

    def forward(self, logits: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        flat = logits.reshape(-1, logits.shape[-1]).float()
        target = y.reshape(-1).to(flat.device)
        total = nn.functional.cross_entropy(flat, target, ignore_index=IGNORE, reduction="sum")
        if reduction == "sum":
            return total
        n = (target != IGNORE).sum()
        return total / n.clamp(min=1).to(total.dtype)


@torch.no_grad()
def token_stats(logits: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """``[summed NLL, labelled tokens, correct arg-max predictions]`` (float64) of one batch."""
    flat = logits.reshape(-1, logits.shape[-1]).float()
    target = y.reshape(-1).to(flat.device)
    keep = target != IGNORE
    if not bool(keep.any()):
        return np.zeros(3, dtype=np.float64)
    flat, target = flat[keep], target[keep]
    nll = nn.functional.cross_entropy(flat, target, reduction="sum")
    correct = (flat.argmax(-1) == target).sum()
    return np.array([float(nll), float(keep.sum()), float(correct)], dtype=np.float64)


def lm_metrics(parts: Sequence[Any]) -> dict[str, float]:
    """loss (mean per-token NLL), perplexity (its exp) and token_accuracy from :func:`token_stats` parts."""
    total = np.sum(np.stack([np.asarray(p, dtype=np.float64) for p in parts]), axis=0) if parts else np.zeros(3)
    nll, n, correct = (float(v) for v in total[:3])
    if n == 0:
        return {"loss": float("nan"), "perplexity": float("nan"), "token_accuracy": float("nan")}
    loss = nll / n
    try:
        ppl = math.exp(loss)
    except OverflowError:
        ppl = float("inf")
    return {"loss": loss, "perplexity": ppl, "token_accuracy": correct / n}


def example_lengths(examples: Sequence[dict[str, list[int]]]) -> np.ndarray:
    """The length of each example (its longest key): what length-grouped batching sorts by."""
    return np.fromiter((max(len(v) for v in ex.values()) for ex in examples), dtype=np.int64, count=len(examples))


class EncodedSplit:
    """A split encoded once by a task: its examples (token-id dicts) and their lengths."""

    def __init__(self, examples: list[dict[str, list[int]]], name: str = ""):
        self.examples = examples
        self.name = name
        self.lengths = example_lengths(examples)

    def __len__(self) -> int:
        return len(self.examples)

    @property
    def tokens(self) -> int:
        """Labelled tokens (those that carry loss)."""
        return sum(sum(1 for t in ex.get("labels", ()) if t != IGNORE) for ex in self.examples)


def iter_example_batches(split: EncodedSplit, task: Any, *, batch_size: int, shuffle: bool, pad_id: int,
                         generator: torch.Generator | None = None, skip: int = 0,
                         length_grouped: bool = True) -> Iterator[dict[str, torch.Tensor]]:
    """Batches of ``split`` through ``task.collate``, in the order of
    :func:`ftdsl.stages.batching.batch_indices` (length-grouped when shuffled; every random draw
    up front, so ``skip`` resumes an epoch exactly)."""
    from ftdsl.stages.batching import batch_indices

    batches = batch_indices(len(split), batch_size=batch_size, shuffle=shuffle, generator=generator,
                            lengths=split.lengths, length_grouped=length_grouped)
    if skip:
        batches = batches[skip:]
    for idx in batches:
        yield task.collate([split.examples[i] for i in idx], pad_id)


def load_seq_tokenizer(tok_dir: Any, *, pretrained: bool, trust_remote_code: bool = False):
    """A transformers tokenizer for a token task (chat templates, offsets, special ids): a
    pretrained folder's through AutoTokenizer, one the data stage trained through its
    tokenizer.json + tokenizer_config.json (special tokens, chat template). None without a folder."""
    from ftdsl.stages.artifacts import load_tokenizer_dir

    return load_tokenizer_dir(tok_dir, pretrained=pretrained, trust_remote_code=trust_remote_code)


def special_ids(tokenizer: Any) -> dict[str, int | None]:
    """pad / bos / eos ids of a transformers tokenizer; pad falls back to eos, then 0."""
    eos = tokenizer.eos_token_id
    bos = tokenizer.bos_token_id
    pad = tokenizer.pad_token_id
    if pad is None:
        pad = eos if eos is not None else 0
    return {"pad": int(pad), "bos": None if bos is None else int(bos), "eos": None if eos is None else int(eos)}
