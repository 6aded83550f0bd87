"""Fused int8 MiniLM: ftdsl's `quantize { method = dynamic() }` against plain onnxruntime int8.

Side by side in one process, on the same machine, MiniLM-L6 (all-MiniLM-L6-v2) fine-tuned by
ftdsl on 8,000 shuffled SST-2 training rows (the pipeline of ``bench/int8_settings.py``, cached
in ``--work``, plus one ``quantize`` stage):

* ``eager fp32``      the trained PyTorch model (``TorchModel.build()``)
* ``ORT fp32``        the ONNX export in onnxruntime
* ``plain ORT int8``  ``quant_pre_process`` + ``quantize_dynamic`` of the *unfused* export with
                      the weight format ftdsl writes (per channel, 7-bit ``reduce_range``): what
                      ftdsl's stage did before graph fusion
* ``ftdsl fused int8`` the stage's output (fused attention/LayerNorm/GELU/bias, QAttention)

Latency: ms per call at batch 32 and batch 1, length 64 (padded to 64), median of ``--rounds``
interleaved rounds. Accuracy: the 872 rows of ``/work/shared/data/sst2/test.tsv`` (GLUE SST-2 dev).

    python bench/int8_fused.py                     # writes bench/results/int8_fused_minilm.json
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

SST2 = Path(os.environ.get("FTDSL_SST2", "/work/shared/data/sst2"))
QUANT = "quantize minilm_q8 { from = minilm_onnx, method = dynamic() }\n"


def build(work: Path, train_rows: int) -> dict[str, Path]:
    """The int8_settings pipeline (same files, so its cache is reused) + ftdsl's quantize stage."""
    import int8_settings as s8

    work.mkdir(parents=True, exist_ok=True)
    rnd = random.Random(0)
    rows = list(csv.reader(open(SST2 / "train.tsv", encoding="utf-8"), delimiter="\t", quoting=csv.QUOTE_NONE))
    head, body = rows[0], rows[1:]
    rnd.shuffle(body)
    dev = list(csv.reader(open(SST2 / "dev.tsv", encoding="utf-8"), delimiter="\t", quoting=csv.QUOTE_NONE))
    for name, part in (("train.tsv", body[:train_rows]), ("valid.tsv", dev[1:401])):
        with open(work / name, "w", encoding="utf-8", newline="") as f:
            w = csv.writer(f, delimiter="\t", quoting=csv.QUOTE_NONE, escapechar="\\")
            w.writerow(head)
            w.writerows(part)
    text = s8.PIPELINE.format(minilm=s8.MINILM.format(train=work / "train.tsv", valid=work / "valid.tsv",
                                                      test=SST2 / "test.tsv") + QUANT)
    p = work / "bench.ftp"
    p.write_text(text)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "NO_COLOR": "1"}
    t0 = time.time()
    r = subprocess.run([sys.executable, "-m", "ftdsl", "run", str(p), "--cache", str(work / "cache"), "--quiet"],
                       env=env, cwd=work)
    if r.returncode:
        sys.exit(f"ftdsl run failed ({r.returncode})")
    print(f"models ready in {time.time() - t0:.0f}s", flush=True)
    from ftdsl.cli import main

    buf = io.StringIO()
    with redirect_stdout(buf):
        main(["plan", str(p), "--cache", str(work / "cache"), "--format", "json"])
    keys = {st["name"]: st["cache_key"].split(":")[1] for st in json.loads(buf.getvalue())["stages"]}
    return {"train": work / "cache" / "entries" / keys["minilm_fit"][:2] / keys["minilm_fit"] / "artifact",
            "export": work / "out" / "minilm_onnx", "fused": work / "out" / "minilm_q8"}


def plain_int8(src: Path, dst: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from ftdsl.stages.quant_common import quiet_quantizer

    with quiet_quantizer():
        pre = dst.with_suffix(".pre.onnx")
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        quantize_dynamic(str(pre), str(dst), per_channel=True, reduce_range=True, weight_type=QuantType.QInt8)
        pre.unlink()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "ftdsl-int8-bench"))
    ap.add_argument("--train-rows", type=int, default=8000)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--b1-calls", type=int, default=10, help="batch-1 calls per round")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "int8_fused_minilm.json"))
    a = ap.parse_args(argv)
    work = Path(a.work)
    paths = build(work, a.train_rows)

    import torch

    from int8_settings import cpu_isa
    from ftdsl.stages.export_artifacts import OnnxModel
    from ftdsl.stages.onnx_utils import session
    from ftdsl.stages.torch_model import TorchModel

    plain = work / "q" / "plain_int8.onnx"
    plain.parent.mkdir(parents=True, exist_ok=True)
    plain_int8(paths["export"] / "model.onnx", plain)
    fused_meta = json.loads((paths["fused"] / "onnx.json").read_text())

    tok = OnnxModel.load(paths["export"]).load_tokenizer()
    rows = list(csv.reader(open(SST2 / "test.tsv", encoding="utf-8"), delimiter="\t", quoting=csv.QUOTE_NONE))[1:]
    texts, y = [r[0] for r in rows], np.array([int(r[1]) for r in rows])

    def enc(batch, pad="longest"):
        e = tok(batch, padding=pad, truncation=True, max_length=64, return_tensors="np")
        return {"input_ids": e["input_ids"].astype(np.int64), "attention_mask": e["attention_mask"].astype(np.int64)}

    feeds = [enc(texts[i:i + 32]) for i in range(0, len(texts), 32)]
    b32 = enc(texts[:32], "max_length")
    b1 = enc(texts[32:33], "max_length")

    module = TorchModel.load(paths["train"]).build().eval()
    ort_sessions = {"ORT fp32": session(paths["export"] / "model.onnx"),
                    "plain ORT int8": session(plain),
                    "ftdsl fused int8": session(paths["fused"] / "model.onnx")}

    def eager(feed):
        with torch.inference_mode():
            return module(**{k: torch.from_numpy(v) for k, v in feed.items()}).float().numpy()

    runners = {"eager fp32": eager}
    for k, s in ort_sessions.items():
        runners[k] = (lambda s: lambda feed: s.run(None, feed)[0])(s)

    result: dict = {"cpu": cpu_isa(), "load_avg_start": os.getloadavg(), "torch_threads": torch.get_num_threads(),
                    "rows": len(y), "fusion": fused_meta["quantization"].get("fusion"),
                    "quantization": {k: fused_meta["quantization"].get(k)
                                     for k in ("weights", "weight_bits", "reduce_range", "max_abs_weight",
                                               "per_channel", "preprocessed")},
                    "models": {}}
    logits = {}
    for k, run in runners.items():
        logits[k] = np.concatenate([run(f) for f in feeds])
    ref = logits["eager fp32"]
    for k, out in logits.items():
        result["models"][k] = {"accuracy": float((out.argmax(1) == y).mean()),
                               "max_abs_diff_vs_eager": float(np.abs(out - ref).max()),
                               "argmax_agreement_vs_eager": float((out.argmax(1) == ref.argmax(1)).mean())}
    for k in ("ORT fp32", "plain ORT int8", "ftdsl fused int8"):
        result["models"][k]["size_mb"] = {"ORT fp32": paths["export"] / "model.onnx", "plain ORT int8": plain,
                                          "ftdsl fused int8": paths["fused"] / "model.onnx"}[k].stat().st_size / 1e6
    for run in runners.values():  # warm-up
        run(b32), run(b1)
    times: dict = {k: {"b32": [], "b1": []} for k in runners}
    for r in range(a.rounds):
        order = list(runners.items())
        if r % 2:
            order.reverse()
        for k, run in order:
            t = time.perf_counter()
            run(b32)
            times[k]["b32"].append((time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            for _ in range(a.b1_calls):
                run(b1)
            times[k]["b1"].append((time.perf_counter() - t) * 1000 / a.b1_calls)
    plain_ms = {b: statistics.median(times["plain ORT int8"][b]) for b in ("b32", "b1")}
    for k in runners:
        m = {b: statistics.median(times[k][b]) for b in ("b32", "b1")}
        result["models"][k]["latency_ms"] = {b: round(m[b], 2) for b in m}
        result["models"][k]["latency_range_ms"] = {b: [round(min(times[k][b]), 2), round(max(times[k][b]), 2)]
                                                   for b in m}
        result["models"][k]["speedup_vs_plain_int8"] = {b: round(plain_ms[b] / m[b], 3) for b in m}
    result["load_avg_end"] = os.getloadavg()
    fused, fp32 = result["models"]["ftdsl fused int8"], result["models"]["eager fp32"]
    result["targets"] = {
        "b32 >= 1.3x plain int8": fused["speedup_vs_plain_int8"]["b32"] >= 1.3,
        "b1 >= 1.3x plain int8": fused["speedup_vs_plain_int8"]["b1"] >= 1.3,
        "accuracy within 1 point of fp32": fused["accuracy"] >= fp32["accuracy"] - 0.01}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=1))
    print(f"{'':18} {'b32 ms':>9} {'b1 ms':>8} {'x plain b32':>11} {'x plain b1':>10} {'acc':>7}")
    for k, v in result["models"].items():
        print(f"{k:18} {v['latency_ms']['b32']:9.1f} {v['latency_ms']['b1']:8.2f} "
              f"{v['speedup_vs_plain_int8']['b32']:11.2f} {v['speedup_vs_plain_int8']['b1']:10.2f} {v['accuracy']:7.2%}")
    print("targets:", result["targets"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
