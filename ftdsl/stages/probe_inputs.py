"""Inputs that `export` and `quantize` feed a model to check it, calibrate it, or trace it.

* :func:`example_inputs`: the small batch the exporters trace with.
* :func:`random_batches`: valid random inputs for a PyTorch model (`verify = true`): features
  at the scale of the data's normalization, token ids within the vocabulary with random lengths.
* :func:`onnx_random_batches`: the same for an ONNX graph without its PyTorch module (numpy;
  the normalization is read from the graph's initializers, the vocabulary from its metadata or
  tokenizer).
* :func:`split_batches`: real rows of a dataset split, validated against the model (modality,
  feature shape, a tokenizer for text) and tokenized with the model's tokenizer: the first
  rows of `verify = { data = ... }`, or a seeded draw for `quantize`'s calibration.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ftdsl.errors import StageError

__all__ = ["takes_tokens", "example_inputs", "random_batches", "onnx_random_batches", "split_batches", "text_limits",
           "RANDOM_BATCHES", "TEXT_BATCHES", "ONNX_RANDOM_ROWS"]

RANDOM_BATCHES = (1, 5, 16)  # batch sizes of `verify = true` (features); text uses TEXT_BATCHES
TEXT_BATCHES = ((1, 7), (4, 16), (9, 40))  # (batch size, longest sequence) before the model's limit
ONNX_RANDOM_ROWS = (1, 7, 64, 128)  # batch sizes of quantize's random inputs (200 rows)
ONNX_TEXT_BATCHES = ((1, 7), (8, 16), (16, 40))
MODEL_INPUTS = ("x", "input_ids", "attention_mask")


# --------------------------------------------------------------------------------------------
# PyTorch models (a TorchModel and its built module)


def text_limits(src, module) -> tuple[int, int, int]:
    """(vocab size, pad id, hard sequence limit or 0) of a text model."""
    spec = src.spec
    net = getattr(module, "net", None)
    cfg = getattr(net, "config", None)
    vocab = spec.get("vocab_size") or getattr(cfg, "vocab_size", None)
    if not vocab:
        raise StageError("FTP530", "cannot tell this text model's vocabulary size; it cannot be exported")
    pad = spec.get("pad_id")
    if pad is None:
        pad = getattr(cfg, "pad_token_id", None)
    limit = 0
    if spec.get("source") == "arch" and spec.get("arch", {}).get("$call") == "transformer":
        limit = int(getattr(net, "max_len", 0) or spec["arch"].get("max_len", 128))
    elif cfg is not None:
        limit = int(getattr(cfg, "max_position_embeddings", 0) or 0)
        if getattr(cfg, "model_type", "") in ("roberta", "xlm-roberta", "camembert") and limit:
            limit -= 2  # position ids start after the padding index
    return int(vocab), int(pad or 0), limit


def _token_batch(rng, vocab: int, pad: int, batch: int, length: int) -> dict[str, np.ndarray]:
    """Token ids in [0, vocab) avoiding the pad id, lengths in [1, length], the first row full."""
    ids = rng.integers(1 if pad == 0 else 0, vocab, size=(batch, length), dtype=np.int64)
    ids[ids == pad] = (pad + 1) % vocab
    lengths = rng.integers(1, length + 1, size=batch)
    lengths[0] = length
    mask = (np.arange(length)[None, :] < lengths[:, None]).astype(np.int64)
    return {"input_ids": np.where(mask == 1, ids, pad).astype(np.int64), "attention_mask": mask}


def _features(rng, batch: int, shape: Sequence[int], mean, std) -> np.ndarray:
    """Standard normal noise, scaled to the data's normalization when it is known."""
    x = rng.standard_normal((batch, *shape)).astype(np.float32)
    if mean is not None and std is not None:
        mean, std = np.asarray(mean, dtype=np.float32), np.asarray(std, dtype=np.float32)
        if mean.size == int(np.prod(shape)) and std.size == mean.size:
            x = x * std.reshape(shape) + mean.reshape(shape)
    return x.astype(np.float32)


def _norm(module):
    mean, std = getattr(module, "norm_mean", None), getattr(module, "norm_std", None)
    if mean is None or std is None:
        return None, None
    return mean.detach().float().cpu().numpy(), std.detach().float().cpu().numpy()


def _input_shape(src) -> tuple[int, ...]:
    shape = src.spec.get("input_shape")
    if not shape:
        raise StageError("FTP530", "this model has no input shape (is it trained?); it cannot be exported")
    return tuple(int(s) for s in shape)


def takes_tokens(module) -> bool:
    """Whether a module reads token ids (text classifiers and the token tasks: causal_lm,
    seq2seq, token_classify, whatever their data's modality), not feature vectors."""
    return "input_ids" in tuple(getattr(module, "input_names", ()) or ())


def _more_tokens(rng, module, batch: dict[str, np.ndarray], vocab: int, pad: int, length: int) -> dict:
    """The module's other token inputs (seq2seq's ``decoder_labels``): ids in the vocabulary."""
    b = batch["input_ids"].shape[0]
    for name in getattr(module, "input_names", ()):
        if name not in batch:
            ids = rng.integers(0, vocab, size=(b, max(1, length)), dtype=np.int64)
            batch[name] = np.where(ids == pad, (pad + 1) % vocab, ids).astype(np.int64)
    return batch


def _torch(batch: dict[str, np.ndarray]) -> dict:
    import torch

    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in batch.items()}


def example_inputs(src, module, seed: int = 0) -> dict:
    """A small batch the exporter traces with: batch 2 (not 1: torch.export specializes sizes
    0 and 1) and, for text, 8 tokens (different from the batch size), the second row padded."""
    rng = np.random.default_rng(int(seed))
    if takes_tokens(module):
        vocab, pad, limit = text_limits(src, module)
        length = min(8, limit) if limit else 8
        return _torch(_more_tokens(rng, module, _token_batch(rng, vocab, pad, 2, max(length, 1)), vocab, pad, 5))
    return _torch({"x": _features(rng, 2, _input_shape(src), *_norm(module))})


def random_batches(src, module, seed: int) -> list[dict]:
    """`verify = true`: valid random inputs (torch tensors) at three batch sizes (and three
    lengths for text)."""
    rng = np.random.default_rng(int(seed) + 1)
    if takes_tokens(module):
        vocab, pad, limit = text_limits(src, module)
        cap = int(src.spec.get("max_length") or 0) or limit or 64
        if limit:
            cap = min(cap, limit)
        return [_torch(_more_tokens(rng, module, _token_batch(rng, vocab, pad, b, max(1, min(length, cap))), vocab, pad,
                                    max(1, min(length // 2, cap))))
                for b, length in TEXT_BATCHES]
    shape = _input_shape(src)
    mean, std = _norm(module)
    return [_torch({"x": _features(rng, b, shape, mean, std)}) for b in RANDOM_BATCHES]


# --------------------------------------------------------------------------------------------
# ONNX graphs (an OnnxModel, no PyTorch module)


def _onnx_norm(proto) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The feature normalization a features export carries as initializers (`norm_mean`, `norm_std`)."""
    from onnx import numpy_helper

    found = {}
    for init in proto.graph.initializer:
        if init.name in ("norm_mean", "norm_std"):
            found[init.name] = numpy_helper.to_array(init).astype(np.float32)
    return found.get("norm_mean"), found.get("norm_std")


def _text_vocab(src, proto) -> tuple[int, int]:
    """(vocabulary size, pad id) of a text export: from its metadata (from-scratch models), else
    its tokenizer (pretrained models), else the largest 2-D initializer a Gather reads (the
    token embedding)."""
    vocab = int(src.meta.get("vocab_size") or 0)
    pad = src.meta.get("pad_id")
    if vocab < 2 or pad is None:
        try:
            tok = src.load_tokenizer()
        except Exception:  # noqa: BLE001 - a broken tokenizer only costs the random inputs
            tok = None
        if tok is not None:
            if vocab < 2:
                vocab = int(len(tok)) if hasattr(tok, "__len__") else int(getattr(tok, "vocab_size", 0) or 0)
                if vocab < 2 and hasattr(tok, "get_vocab_size"):
                    vocab = int(tok.get_vocab_size())
            if pad is None:
                pad = getattr(tok, "pad_token_id", None)
    if vocab < 2:
        shapes = {i.name: list(i.dims) for i in proto.graph.initializer}
        for n in proto.graph.node:
            if n.op_type == "Gather" and n.input and len(shapes.get(n.input[0], [])) == 2:
                vocab = max(vocab, int(shapes[n.input[0]][0]))
    return vocab, int(pad or 0)


def onnx_random_batches(src, proto, seed: int) -> list[dict]:
    """Random valid inputs (numpy) for an OnnxModel: features at the data's scale (from the
    graph's normalization), text token ids within the vocabulary with random lengths."""
    rng = np.random.default_rng(int(seed) + 11)
    meta = src.meta
    if (meta.get("modality") or "features") == "text" or "input_ids" in (meta.get("inputs") or ()):
        vocab, pad = _text_vocab(src, proto)
        if vocab < 2:
            return []
        cap = int(meta.get("max_length") or 0) or 32
        return [_token_batch(rng, vocab, pad, b, max(1, min(length, cap))) for b, length in ONNX_TEXT_BATCHES]
    shape = tuple(int(s) for s in (meta.get("input_shape") or ()))
    if not shape:
        return []
    mean, std = _onnx_norm(proto)
    return [{"x": _features(rng, b, shape, mean, std)} for b in ONNX_RANDOM_ROWS]


# --------------------------------------------------------------------------------------------
# Real rows of a split


def split_batches(src, dataset, split_name: str, where: str, *, what: str, rows: int,
                  seed: int | None = None, batch_sizes: Sequence[int] = (32,), as_numpy: bool = False) -> list[dict]:
    """Up to ``rows`` rows of ``dataset``'s split ``split_name`` (``where`` names it in errors,
    ``what`` is the stage doing it: "verify", "quantize"), as feed dicts keyed by the model's
    input names. ``seed``: a seeded draw (sorted), else the first rows. ``batch_sizes``: the
    first batch's size, then the rest (``(1, 32)``: one row alone, then batches of 32). Text is
    tokenized with the model's tokenizer (the dataset's when the model has none)."""
    from ftdsl.stages.batching import iter_batches

    split = dataset.split(split_name) if hasattr(dataset, "split") else dataset.splits[split_name]
    if split is None or len(split) == 0:
        raise StageError("FTP510", f"{what}: split `{where}` is empty")
    n = min(len(split), int(rows))
    if seed is not None and n < len(split):
        idx = np.sort(np.random.default_rng(int(seed)).choice(len(split), size=n, replace=False))
    else:
        idx = np.arange(n)
    sub = split.subset(idx)
    task = src.spec.get("task") or {}
    from ftdsl.stages.tasks import is_seq_task

    if is_seq_task(task.get("$call")):
        return _task_batches(src, dataset, sub, task, where, what, n, batch_sizes, as_numpy)
    modality = src.spec.get("modality") or "features"
    tokenizer = max_length = None
    if modality == "text":
        if sub.texts is None:
            raise StageError("FTP510", f"{what}: `{where}` holds features, but the model takes text")
        tokenizer = src.load_tokenizer()
        if tokenizer is None and getattr(dataset, "tokenizer_dir", None) is not None:
            from ftdsl.stages.tokenizer import load_tokenizer

            tokenizer = load_tokenizer(dataset.tokenizer_dir)
        if tokenizer is None:
            raise StageError("FTP510", f"{what}: the model has no tokenizer to read the texts of `{where}`")
        max_length = src.spec.get("max_length") or getattr(dataset, "max_length", None)
    else:
        if sub.features is None:
            raise StageError("FTP510", f"{what}: `{where}` holds text, but the model takes features")
        want = tuple(int(s) for s in (src.spec.get("input_shape") or ()))
        if want and tuple(sub.features.shape[1:]) != want:
            raise StageError("FTP510", f"{what}: rows of `{where}` have shape {tuple(sub.features.shape[1:])}, "
                                       f"the model takes {want}")
    parts, sizes = [sub], [int(batch_sizes[-1])]
    if len(batch_sizes) > 1:
        first = min(n, int(batch_sizes[0]))
        parts = [sub.subset(np.arange(first))] + ([sub.subset(np.arange(first, n))] if n > first else [])
        sizes = [int(batch_sizes[0]), int(batch_sizes[-1])]
    out: list[dict] = []
    for part, bs in zip(parts, sizes):
        for b in iter_batches(part, batch_size=bs, shuffle=False, tokenizer=tokenizer, max_length=max_length):
            out.append({k: (v.numpy() if as_numpy else v) for k, v in b.items() if k in MODEL_INPUTS})
    return out


def _task_batches(src, dataset, sub, task: dict, where: str, what: str, n: int, batch_sizes: Sequence[int],
                  as_numpy: bool) -> list[dict]:
    """Rows of a token task (causal_lm, seq2seq, token_classify) encoded as the task trains on
    them (its ``encode`` / ``collate``), without packing: the module's inputs, batched."""
    from ftdsl.stages.tasks import get_task

    t = get_task(task["$call"])
    tokenizer = src.load_tokenizer()
    if tokenizer is None:
        raise StageError("FTP510", f"{what}: the model has no tokenizer to read the rows of `{where}`")
    examples = t.encode(dataset, sub, tokenizer, {**task, "packing": False}, src.spec.get("max_length"))
    pad = src.spec.get("pad_id")
    if pad is None:
        pad = getattr(tokenizer, "pad_token_id", None) or 0
    keep = set(t.input_names)
    sizes = [min(n, int(batch_sizes[0]))] + [int(batch_sizes[-1])] * n
    out, i = [], 0
    for bs in sizes:
        if i >= len(examples):
            break
        b = t.collate(examples[i:i + bs], int(pad))
        out.append({k: (v.numpy() if as_numpy else v) for k, v in b.items() if k in keep})
        i += bs
    return out
