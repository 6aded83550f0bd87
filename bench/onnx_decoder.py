"""Greedy decoding speed of a causal LM's ONNX export: the decoder with past key values (what
`export ... format = onnx` writes, export_decoder.py) vs the logits-only graph (the fallback: the
whole sequence each step) vs transformers' `generate` in PyTorch, on a random llama (width 256,
4 layers, 8 heads / 4 kv heads, vocabulary 1,000), prompt 32 tokens, 64 new tokens, batch 1,
2 threads. Prints ms per generated token (median of 3) and whether the three give the same tokens.

    python bench/onnx_decoder.py          # ~1 min on 2 cores
"""

from __future__ import annotations

import time
import warnings

import numpy as np


def main() -> None:
    import onnxruntime as ort
    import torch
    import transformers

    from ftdsl.stages.export_decoder import export_decoder
    from ftdsl.stages.onnx_utils import export_onnx
    from ftdsl.stages.tasks.module import SeqModule

    warnings.simplefilter("ignore")
    torch.manual_seed(0)
    torch.set_num_threads(2)
    cfg = transformers.LlamaConfig(vocab_size=1000, hidden_size=256, intermediate_size=704, num_hidden_layers=4,
                                   num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=256)
    m = SeqModule(transformers.LlamaForCausalLM(cfg), task="causal_lm").eval()
    kv, _ = export_decoder(m, opset=18, max_seq=256, vocab=1000)
    plain, _, _ = export_onnx(m, [torch.randint(1, 1000, (2, 8)), torch.ones(2, 8, dtype=torch.long)],
                              input_names=["input_ids", "attention_mask"], opset=18, max_seq=256)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    s_kv = ort.InferenceSession(kv.SerializeToString(), so, providers=["CPUExecutionProvider"])
    s_pl = ort.InferenceSession(plain.SerializeToString(), so, providers=["CPUExecutionProvider"])
    prompt = [int(x) for x in np.random.default_rng(0).integers(1, 1000, 32)]
    n = 64

    def ort_kv():
        pasts = {i.name: np.zeros((1, i.shape[1], 0, i.shape[3]), np.float32)
                 for i in s_kv.get_inputs() if i.name.startswith("past_key_values.")}
        names = [o.name for o in s_kv.get_outputs()]
        new, seen, got = prompt, 0, []
        for _ in range(n):
            seen += len(new)
            o = dict(zip(names, s_kv.run(None, {
                "input_ids": np.array([new], np.int64), "attention_mask": np.ones((1, seen), np.int64),
                "position_ids": np.arange(seen - len(new), seen, dtype=np.int64)[None], **pasts})))
            nxt = int(o["logits"][0, -1].argmax())
            got.append(nxt)
            new = [nxt]
            pasts = {k.replace("present.", "past_key_values."): v for k, v in o.items() if k.startswith("present.")}
        return got

    def ort_logits_only():
        ids, got = list(prompt), []
        for _ in range(n):
            logits = s_pl.run(None, {"input_ids": np.array([ids], np.int64),
                                     "attention_mask": np.ones((1, len(ids)), np.int64)})[0]
            nxt = int(logits[0, -1].argmax())
            got.append(nxt)
            ids.append(nxt)
        return got

    def torch_generate():
        with torch.no_grad():
            out = m.net.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                                 max_new_tokens=n, min_new_tokens=n, do_sample=False, eos_token_id=None,
                                 pad_token_id=0)
        return out[0, len(prompt):].tolist()

    tokens = {}
    for name, f in (("onnxruntime, past key values", ort_kv), ("onnxruntime, logits only", ort_logits_only),
                    ("PyTorch generate", torch_generate)):
        f()
        times = []
        for _ in range(3):
            t = time.perf_counter()
            tokens[name] = f()
            times.append(time.perf_counter() - t)
        print(f"{name}: {1000 * sorted(times)[1] / n:.2f} ms/token (median of 3)")
    print("same tokens:", len({tuple(v) for v in tokens.values()}) == 1)


if __name__ == "__main__":
    main()
