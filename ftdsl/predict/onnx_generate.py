"""Greedy generation from the ONNX graph of a causal LM, in onnxruntime (`predict` of an
`export ... format = onnx(...)` of a `causal_lm` model).

A graph with past key values (``ftdsl.stages.export_decoder``: ``meta["past"]`` holds its
layout) runs the left-padded prompts once, then one token per step with the ``present.*``
outputs fed back as ``past_key_values.*`` -- the loop transformers' ``generate`` runs in PyTorch.
A logits-only graph (the fallback when the cache does not export) reruns each row's whole
sequence per token. Either way the next token is the arg-max of the last position's logits, and a
row stops at the end-of-sequence token or after ``max_new_tokens``; so the text equals the
PyTorch model's greedy generation up to onnxruntime's float differences (which can flip an
arg-max where two tokens are within ~1e-6; the export's `verify` bounds them).

Sampling and beam search are PyTorch's (their random draws are torch's): predict refuses them on
a graph with FTP562 and names the stage to predict instead.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ftdsl.errors import UsageError


def check_settings(settings, source: str | None) -> None:
    if settings.temperature > 0 or settings.num_beams > 1:
        what = "sampling (temperature > 0)" if settings.temperature > 0 else "beam search (num_beams > 1)"
        raise UsageError("FTP562", f"predict generates greedily from an ONNX graph; this model's `generate` asks for "
                         f"{what}", hint=f"predict the stage it was exported from (`{source}`)" if source else
                         "predict the stage it was exported from")


def generate_ids(art, prompts: Sequence[Sequence[int]], *, eos_id: int | None, pad_id: int, max_new_tokens: int,
                 batch: int, threads: int | None = None) -> list[list[int]]:
    layout = art.meta.get("past")
    sess = art.session(threads)
    out: list[list[int]] = []
    for s in range(0, len(prompts), max(1, batch)):
        chunk = [list(p) or [eos_id if eos_id is not None else pad_id] for p in prompts[s:s + batch]]
        if layout:
            out.extend(_with_past(sess, layout, chunk, eos_id, pad_id, max_new_tokens))
        else:
            out.extend(_without_past(art, threads, p, eos_id, max_new_tokens) for p in chunk)
    return out


def _with_past(sess, layout: dict, chunk: list[list[int]], eos_id, pad_id: int, new: int) -> list[list[int]]:
    from ftdsl.stages.export_decoder import _run

    width = max(len(p) for p in chunk)
    ids = np.full((len(chunk), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(chunk), width), dtype=np.int64)
    for i, p in enumerate(chunk):
        ids[i, width - len(p):], mask[i, width - len(p):] = p, 1
    outs = _run(sess, ids, mask, None, layout)
    done = np.zeros(len(chunk), dtype=bool)
    gen: list[list[int]] = [[] for _ in chunk]
    for step in range(new):
        nxt = outs[0][:, -1].argmax(-1).astype(np.int64)
        for i, t in enumerate(nxt.tolist()):
            if done[i]:
                continue
            if eos_id is not None and t == eos_id:
                done[i] = True
            else:
                gen[i].append(int(t))
        if done.all() or step == new - 1:
            break
        nxt = np.where(done, pad_id, nxt)
        mask = np.concatenate([mask, np.ones((len(chunk), 1), dtype=np.int64)], axis=1)
        outs = _run(sess, nxt[:, None], mask, list(outs[1:]), layout)
    return gen


def _without_past(art, threads, prompt: list[int], eos_id, new: int) -> list[int]:
    seq = list(prompt)
    gen: list[int] = []
    for _ in range(new):
        ids = np.asarray([seq], dtype=np.int64)
        logits = np.asarray(art.predict({"input_ids": ids, "attention_mask": np.ones_like(ids)}, threads=threads))
        t = int(logits[0, -1].argmax())
        if eos_id is not None and t == eos_id:
            break
        gen.append(t)
        seq.append(t)
    return gen
