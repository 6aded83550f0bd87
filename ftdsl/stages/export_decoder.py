"""ONNX of a causal language model with past key values (the layout Hugging Face Optimum writes).

One graph serves the prompt and every generated token::

    inputs   input_ids        int64 [batch, seq]          the new tokens
             attention_mask   int64 [batch, past + seq]   1 for every real token so far
             position_ids     int64 [batch, seq]          position of each new token (left padding: count
                                                          the mask; without padding: past .. past+seq-1)
             past_key_values.{i}.key / .value  float32 [batch, kv_heads, past, head_dim]   (past = 0 at first)
    outputs  logits           float32 [batch, seq, vocab]
             present.{i}.key / .value          float32 [batch, kv_heads, past + seq, head_dim]

Generate: run the prompt with empty pasts (``past`` = 0), take the next token from the last
position's logits, then feed that token alone with the ``present.*`` outputs as the next
``past_key_values.*`` and the mask grown by one. ``OnnxModel.predict`` (teacher-forced logits of
whole sequences) fills the empty pasts and the positions itself (``onnx_utils.ort_feed``).

It is exported with the dynamo exporter (torch 2.13: one graph, ``past`` may be 0); the module
wraps the transformers model so the cache (``DynamicCache``) is built from and returned as plain
tensors. When a model does not export this way, the stage falls back to the logits-only graph
(``input_ids``, ``attention_mask`` -> ``logits``) and says so. ``verify`` checks both ways a
decoder is used: the prompt pass (logits of every real position against the PyTorch model) and
token-by-token decoding through the pasts (each step's logits against the full forward pass).
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["PAST", "PRESENT", "cache_layout", "export_decoder", "decoder_parity", "position_ids"]

PAST = "past_key_values.{}.{}"
PRESENT = "present.{}.{}"


def position_ids(mask: np.ndarray, past: int = 0) -> np.ndarray:
    """Positions of the last ``mask.shape[1] - past`` tokens: the running count of real tokens
    (left padding gets 0), as transformers' ``generate`` computes them."""
    pos = np.cumsum(mask, axis=1) - 1
    return np.where(mask == 0, 0, pos)[:, past:].astype(np.int64)


def cache_layout(net) -> tuple[int, int, int]:
    """(layers, kv heads, head dim) of a causal LM's key/value cache, read from one forward pass."""
    import torch

    with torch.no_grad():
        out = net(input_ids=torch.ones(1, 2, dtype=torch.long), use_cache=True)
    cache = _cache_of(out)
    layers = getattr(cache, "layers", None)
    keys = [layer.keys for layer in layers] if layers is not None else [k for k, _ in cache]
    _, heads, _, dim = keys[0].shape
    return len(keys), int(heads), int(dim)


def _cache_arg(net) -> str:
    """The forward argument that takes the cache: `cache` (transformers >= 5.25), else `past_key_values`."""
    import inspect

    return "cache" if "cache" in inspect.signature(net.forward).parameters else "past_key_values"


def _cache_of(out):
    """The cache a forward pass returned (`out.cache`; `past_key_values` before transformers 5.25)."""
    keys = out.keys()
    return out["cache"] if "cache" in keys else out["past_key_values"]


def _wrapper(net, layers: int):
    import torch
    from transformers import DynamicCache

    arg = _cache_arg(net)

    class Decoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, input_ids, attention_mask, position_ids, past):
            cache = DynamicCache(config=self.net.config)
            for i in range(layers):
                cache.update(past[2 * i], past[2 * i + 1], i)
            out = self.net(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                           use_cache=True, **{arg: cache})
            present = []
            for layer in _cache_of(out).layers[:layers]:
                present += [layer.keys, layer.values]
            return (out.logits.float(), *present)

    return Decoder().eval()


def names(layers: int) -> tuple[list[str], list[str]]:
    pasts = [PAST.format(i, kv) for i in range(layers) for kv in ("key", "value")]
    presents = [PRESENT.format(i, kv) for i in range(layers) for kv in ("key", "value")]
    return ["input_ids", "attention_mask", "position_ids", *pasts], ["logits", *presents]


def export_decoder(module, *, opset: int, max_seq: int | None, vocab: int, seed: int = 0):
    """``(proto, layout)`` of ``module``'s decoder-with-past graph (raises what the exporter raises)."""
    import torch

    from ftdsl.stages.onnx_utils import quiet_exporter

    net = module.net
    layers, heads, dim = cache_layout(net)
    inputs, outputs = names(layers)
    g = torch.Generator().manual_seed(int(seed))
    b, s, p = 2, 5, 3  # not 0 or 1: torch.export specializes those sizes
    ids = torch.randint(0, vocab, (b, s), generator=g)
    mask = torch.ones(b, p + s, dtype=torch.long)
    pos = torch.arange(p, p + s).expand(b, s).contiguous()
    past = tuple(torch.randn(b, heads, p, dim, generator=g) for _ in range(2 * layers))
    limit = int(max_seq) if max_seq else 1 << 14
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    seq = torch.export.Dim("seq", min=1, max=limit)
    total = torch.export.Dim("total", min=1, max=limit)
    past_len = torch.export.Dim("past", min=0, max=limit)
    shapes = ({0: batch, 1: seq}, {0: batch, 1: total}, {0: batch, 1: seq},
              tuple({0: batch, 2: past_len} for _ in past))
    with quiet_exporter():
        prog = torch.onnx.export(_wrapper(net, layers), (ids, mask, pos, past), None, input_names=inputs,
                                 output_names=outputs, opset_version=int(opset), dynamo=True, external_data=False,
                                 dynamic_shapes=shapes, verbose=False, optimize=True)
    return prog.model_proto, {"layers": layers, "kv_heads": heads, "head_dim": dim, "inputs": inputs,
                              "outputs": outputs}


def _run(sess, ids: np.ndarray, mask: np.ndarray, pasts: list[np.ndarray] | None, layout: dict) -> list[np.ndarray]:
    b = ids.shape[0]
    if pasts is None:
        pasts = [np.zeros((b, layout["kv_heads"], 0, layout["head_dim"]), np.float32)] * (2 * layout["layers"])
    past = pasts[0].shape[2]
    feed: dict[str, Any] = {"input_ids": ids.astype(np.int64), "attention_mask": mask.astype(np.int64),
                            "position_ids": position_ids(mask, past)}
    feed.update(zip(layout["inputs"][3:], pasts))
    return sess.run(None, feed)


def decoder_parity(sess, module, batches: list[dict], layout: dict, *, atol: float, rtol: float):
    """:class:`~ftdsl.stages.agreement.Parity` of the graph against ``module`` (PyTorch) on
    ``batches`` (right-padded token batches): the prompt pass on every real position, and the
    first row decoded token by token through the pasts from the middle of the sequence on."""
    import torch

    from ftdsl.stages.agreement import Parity

    p = Parity(atol, rtol)
    for b in batches:
        ids, mask = b["input_ids"].numpy(), b["attention_mask"].numpy()
        with torch.inference_mode():
            ref = module(b["input_ids"], b["attention_mask"]).float().numpy()
        got = _run(sess, ids, mask, None, layout)[0]
        real = mask.astype(bool)[..., None]  # padded positions are not compared (rows stay sequences)
        p.add(np.where(real, ref, 0.0), np.where(real, got, 0.0))
        n = int(mask[0].sum())
        k = max(1, n // 2)
        outs = _run(sess, ids[:1, :k], mask[:1, :k], None, layout)
        steps = [outs[0][:, -1]]
        for t in range(k, n):
            outs = _run(sess, ids[:1, t:t + 1], mask[:1, :t + 1], list(outs[1:]), layout)
            steps.append(outs[0][:, -1])
        p.add(ref[:1, k - 1:n], np.concatenate(steps[:n - k + 1], axis=0)[None])  # one more row: decoded
    return p
