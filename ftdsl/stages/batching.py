"""Batches from a `Split`: dynamic padding, length-grouped order, balanced sampling, resume.

Determinism: the whole epoch's order is drawn from the `generator` passed in, at the start of
`iter_batches` (before the first batch is yielded); nothing comes from a global RNG. So a run
resumed with `generator.set_state(state_at_epoch_start)` and `skip=k` yields exactly the batches
k, k+1, ... of the uninterrupted epoch.

Text order (shuffle=True, length_grouped=True), like Hugging Face's LengthGroupedSampler:
shuffle all indices, cut them into mega-chunks of 50 batches, sort each chunk by token length
(longest first), cut into batches, then shuffle the order of the batches. Batches then hold
sequences of similar length, and padding to the longest in the batch wastes little.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

MEGA_BATCHES = 50


# --------------------------------------------------------------------------------------------
# Tokenization


def _is_hf(tokenizer: Any) -> bool:
    return hasattr(tokenizer, "pad_token_id") and callable(tokenizer)


def pad_token_id(tokenizer: Any) -> int:
    """The id used for padding: the tokenizer's pad token, else "[PAD]", else 0."""
    if tokenizer is None:
        return 0
    if _is_hf(tokenizer):
        pid = tokenizer.pad_token_id
        return 0 if pid is None else int(pid)
    pad = getattr(tokenizer, "padding", None)
    if isinstance(pad, dict) and pad.get("pad_id") is not None:
        return int(pad["pad_id"])
    tid = tokenizer.token_to_id("[PAD]") if hasattr(tokenizer, "token_to_id") else None
    return 0 if tid is None else int(tid)


def _as_tokenizer(tokenizer: Any) -> Any:
    if isinstance(tokenizer, (str, Path)):
        from ftdsl.stages.tokenizer import load_tokenizer

        return load_tokenizer(tokenizer)
    return tokenizer


def tokenize_split(split, tokenizer: Any, max_length: int | None = None) -> list[list[int]]:
    """Token ids of every text of the split, with special tokens, truncated to max_length, no
    padding. `tokenizer`: a transformers tokenizer, a `tokenizers.Tokenizer`, or a path to a
    folder with tokenizer.json. Cached on the split per (tokenizer, max_length)."""
    if split.texts is None:
        raise ValueError("tokenize_split: the split has no texts")
    if tokenizer is None:
        raise ValueError("tokenize_split: text data needs a tokenizer")
    cache = getattr(split, "_cache", None)
    key = ("ids", id(tokenizer), max_length)
    if cache is not None and key in cache and cache[key][0] is tokenizer:
        return cache[key][1]
    tok = _as_tokenizer(tokenizer)
    texts = list(split.texts)
    if _is_hf(tok):
        limit = max_length
        if limit is None:
            mml = getattr(tok, "model_max_length", None)
            limit = mml if isinstance(mml, int) and mml < 1_000_000 else None
        enc = tok(texts, add_special_tokens=True, truncation=limit is not None, max_length=limit,
                  padding=False, return_attention_mask=False, return_token_type_ids=False)
        ids = [list(x) for x in enc["input_ids"]]
    else:  # a tokenizers.Tokenizer: work on a copy so the caller's settings stay as they are
        from tokenizers import Tokenizer

        tk = Tokenizer.from_str(tok.to_str())
        tk.no_padding()
        if max_length is not None:
            tk.enable_truncation(int(max_length))
        else:
            tk.no_truncation()
        ids = [e.ids for e in tk.encode_batch(texts)]
    if cache is not None:
        cache[key] = (tokenizer, ids)
    return ids


# --------------------------------------------------------------------------------------------
# Order


def num_batches(split_or_n, batch_size: int) -> int:
    n = split_or_n if isinstance(split_or_n, int) else len(split_or_n)
    return math.ceil(n / batch_size) if n else 0


def _default_generator(generator: torch.Generator | None) -> torch.Generator:
    if generator is not None:
        return generator
    g = torch.Generator()
    g.manual_seed(0)
    return g


def batch_indices(n: int, *, batch_size: int, shuffle: bool, generator: torch.Generator | None,
                  lengths: Sequence[int] | np.ndarray | None = None, length_grouped: bool = True,
                  labels: np.ndarray | None = None, balanced: bool = False,
                  by_length: bool = False) -> list[np.ndarray]:
    """The epoch's batches as arrays of row indices. All random draws happen here, up front.
    ``by_length`` (unshuffled text only): the rows longest first, so each batch pads to little
    more than its own rows; for passes whose result does not depend on the row order (metrics)."""
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    if n == 0:
        return []
    randomized = shuffle or balanced
    g = _default_generator(generator) if randomized else None
    if balanced:
        if labels is None or labels.ndim != 1:
            raise ValueError("balanced sampling needs class labels (int64 [n])")
        lab = torch.from_numpy(np.asarray(labels, dtype=np.int64))
        counts = torch.bincount(lab).double()
        weights = 1.0 / counts[lab]
        order = torch.multinomial(weights, n, replacement=True, generator=g).numpy()
    elif shuffle:
        order = torch.randperm(n, generator=g).numpy()
    elif by_length and lengths is not None:
        order = np.argsort(-np.asarray(lengths, dtype=np.int64), kind="stable")
    else:
        order = np.arange(n)
    if randomized and length_grouped and lengths is not None:
        lens = np.asarray(lengths, dtype=np.int64)
        mega = MEGA_BATCHES * batch_size
        chunks = []
        for s in range(0, n, mega):
            chunk = order[s: s + mega]
            chunks.append(chunk[np.argsort(-lens[chunk], kind="stable")])
        order = np.concatenate(chunks)
        batches = [order[s: s + batch_size] for s in range(0, n, batch_size)]
        perm = torch.randperm(len(batches), generator=g).tolist()
        return [batches[i] for i in perm]
    return [order[s: s + batch_size] for s in range(0, n, batch_size)]


# --------------------------------------------------------------------------------------------
# Batches


def _pad(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    longest = max((len(s) for s in seqs), default=0)
    ids = np.full((len(seqs), longest), pad_id, dtype=np.int64)
    mask = np.zeros((len(seqs), longest), dtype=np.int64)
    for r, s in enumerate(seqs):
        ids[r, : len(s)] = s
        mask[r, : len(s)] = 1
    return torch.from_numpy(ids), torch.from_numpy(mask)


def iter_batches(split, *, batch_size: int, shuffle: bool, generator: torch.Generator | None = None,
                 tokenizer: Any = None, max_length: int | None = None, length_grouped: bool = True,
                 balanced: bool = False, skip: int = 0, token_ids: list[list[int]] | None = None,
                 pad_id: int | None = None, with_index: bool = False,
                 by_length: bool = False) -> Iterator[dict[str, torch.Tensor]]:
    """Yield `{"x": float32 [B, *shape], "y"}` or `{"input_ids", "attention_mask", "y"}` (int64,
    padded to the longest sequence in the batch, right side). `y` is int64 [B] (classify) or
    float32 [B, k] (regress). `skip` leaves out the first k batches of the epoch without changing
    the random draws. `generator=None` with shuffle/balanced uses a fresh generator seeded 0.
    `token_ids` gives pre-tokenized ids (else `tokenize_split`, cached on the split);
    `with_index` adds "index" (int64 positions in the split); `by_length` (unshuffled): text
    rows longest first (see `batch_indices`)."""
    text = split.features is None and split.texts is not None
    if text and token_ids is None:
        token_ids = tokenize_split(split, tokenizer, max_length)
    lengths = None
    if text:
        lengths = np.fromiter((min(len(t), max_length) if max_length else len(t) for t in token_ids),
                              dtype=np.int64, count=len(token_ids))
    batches = batch_indices(
        len(split), batch_size=batch_size, shuffle=shuffle, generator=generator, lengths=lengths,
        length_grouped=length_grouped, labels=split.labels if balanced else None, balanced=balanced,
        by_length=by_length,
    )
    # Resolve the pad id lazily, but only for text.
    pid = None
    if text:
        pid = pad_id if pad_id is not None else pad_token_id(_as_tokenizer(tokenizer))
    return _generate(split, batches[skip:] if skip else batches, text, token_ids, max_length, pid, with_index)


def _generate(split, batches, text, token_ids, max_length, pid, with_index):
    # One torch copy of the split, indexed per batch: batches then live in torch's own (64-byte
    # aligned) allocations; numpy-built batches made the CNN's forward/backward measurably slower
    # (bench/train_overhead.py). Same rows, same order: determinism and resume are unaffected.
    labels = torch.from_numpy(np.ascontiguousarray(split.labels))
    feats = None if text else torch.from_numpy(np.ascontiguousarray(split.features, dtype=np.float32))
    for idx in batches:
        out: dict[str, torch.Tensor] = {}
        tidx = torch.from_numpy(np.asarray(idx, dtype=np.int64))
        if text:
            seqs = [truncate(token_ids[i], max_length) for i in idx]
            out["input_ids"], out["attention_mask"] = _pad(seqs, pid)
        else:
            out["x"] = feats.index_select(0, tidx)
        out["y"] = labels.index_select(0, tidx)
        if with_index:
            out["index"] = torch.from_numpy(np.asarray(idx, dtype=np.int64))
        yield out


def channels_last(x: torch.Tensor) -> torch.Tensor:
    """An image batch ``[N, C, H, W]`` in channels-last (NHWC) memory order; other tensors as
    they are. oneDNN's CPU convolution and max-pool run faster on it: the quickstart CNN's step
    took 22-25 % less CPU time (bench/train_overhead.py). With one channel the two layouts hold
    the same bytes and only the channel's stride differs, so that case is a free view (which
    ``Tensor.contiguous(memory_format=...)`` would not make: it already counts as contiguous)."""
    if x.dim() != 4:
        return x
    if x.shape[1] == 1 and x.is_contiguous():
        _, _, h, w = x.shape
        return x.as_strided(x.shape, (h * w, 1, w, 1), x.storage_offset())
    return x.contiguous(memory_format=torch.channels_last)


def truncate(seq: list[int], max_length: int | None) -> list[int]:
    if max_length is None or len(seq) <= max_length:
        return seq
    # keep the final special token ([SEP]) the way tokenizer truncation would
    return list(seq[: max_length - 1]) + [seq[-1]]


def padding_stats(split, *, batch_size: int, generator: torch.Generator | None = None,
                  tokenizer: Any = None, max_length: int | None = None, length_grouped: bool = True,
                  shuffle: bool = True, token_ids: list[list[int]] | None = None) -> dict[str, int | float]:
    """Pad tokens of one epoch with dynamic padding vs padding every row to max_length (or to
    the longest row of the split when max_length is None)."""
    if token_ids is None:
        token_ids = tokenize_split(split, tokenizer, max_length)
    real = pad_dyn = 0
    nb = 0
    for b in iter_batches(split, batch_size=batch_size, shuffle=shuffle, generator=generator,
                          tokenizer=tokenizer, max_length=max_length, length_grouped=length_grouped,
                          token_ids=token_ids, pad_id=0):
        m = b["attention_mask"]
        real += int(m.sum())
        pad_dyn += int(m.numel() - m.sum())
        nb += 1
    width = max_length if max_length is not None else max((len(t) for t in token_ids), default=0)
    pad_fixed = len(token_ids) * width - real
    return {
        "batches": nb,
        "real_tokens": real,
        "dynamic_pad_tokens": pad_dyn,
        "fixed_pad_tokens": pad_fixed,
        "ratio": pad_dyn / pad_fixed if pad_fixed else 0.0,
    }
