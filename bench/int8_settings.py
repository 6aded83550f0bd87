"""Which onnxruntime dynamic-int8 settings hold on every x86 CPU: accuracy and speed.

ftdsl's `quantize { method = dynamic(dtype = int8) }` of an ONNX export calls onnxruntime's
``quantize_dynamic``. Activations are quantized to uint8 at run time; the weights' format is
the choice measured here:

* ``s8``      int8 weights, per channel (onnxruntime's default format, U8S8)
* ``s8-rr``   int8 weights in 7 bits (``reduce_range=True``), per channel
* ``u8``      uint8 weights, per channel (U8U8)
* ``s8-pt``   int8 weights, per tensor (for reference)

On x86 CPUs without VNNI (AVX2, AVX-512 before Cascade Lake) onnxruntime's U8S8 kernels sum
pairs of u8*s8 products in 16 bits with saturation (VPMADDUBSW): 255*127*2 = 64,770 > 32,767.
Those kernels cannot run on a VNNI CPU, so this script also *emulates* them: it evaluates the
quantized graph with onnx's reference evaluator and a MatMulInteger that saturates each pair
sum to int16 as VPMADDUBSW does (``--no-emulate`` skips that; it is slow for MiniLM).

Models (built by ftdsl itself, cached in ``--work``):

* the digits MLP (sklearn digits, ``mlp(hidden = [256, 256])``), rows: its test split;
* MiniLM-L6 fine-tuned on 8,000 SST-2 training rows, rows: the 872 GLUE SST-2 dev sentences
  (``/work/shared/data/sst2/test.tsv``), length 64.

For each setting: max abs logit difference vs the float graph, argmax agreement, accuracy, file
size; latency of batch 32 and batch 1 (one process, median of interleaved rounds), all with
onnxruntime on this CPU and (accuracy only) under the emulated non-VNNI kernel.

    python bench/int8_settings.py                 # both models, writes bench/results/int8_settings.json
    python bench/int8_settings.py --only mlp
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from x86_kernels import non_vnni_runner, saturation_stats  # noqa: E402 - the emulated non-VNNI kernel, shared with the tests
SST2 = Path(os.environ.get("FTDSL_SST2", "/work/shared/data/sst2"))

PIPELINE = """\
ftp 1
pipeline int8bench {{ seed = 7 }}

data digits {{
  source = sklearn("digits")
  split = {{ train = 0.8, valid = 0.1, test = 0.1 }}
}}
model mlp {{ arch = mlp(hidden = [256, 256]), task = classify(labels = 10) }}
train mlp_fit {{ model = mlp, data = digits, epochs = 20, batch = 32, optimizer = adamw(lr = 0.002), precision = fp32 }}
export mlp_onnx {{ from = mlp_fit, format = onnx() }}
{minilm}"""

MINILM = """
data sst2 {{
  train = csv("{train}", delimiter = "\\t")
  valid = csv("{valid}", delimiter = "\\t")
  test = csv("{test}", delimiter = "\\t")
  text = "sentence", label = "label"
  max_length = 64
}}
model encoder {{ pretrained = "sentence-transformers/all-MiniLM-L6-v2", task = classify(labels = 2) }}
train minilm_fit {{
  model = encoder, data = sst2, epochs = 1, batch = 32
  optimizer = adamw(lr = 5e-5, weight_decay = 0.01), schedule = linear(warmup = 0.1), precision = fp32
}}
export minilm_onnx {{ from = minilm_fit, format = onnx() }}
"""

SETTINGS = {
    "s8": dict(weight_type="QInt8", per_channel=True, reduce_range=False),
    "s8-rr": dict(weight_type="QInt8", per_channel=True, reduce_range=True),
    "u8": dict(weight_type="QUInt8", per_channel=True, reduce_range=False),
    "s8-pt": dict(weight_type="QInt8", per_channel=False, reduce_range=False),
}


def cpu_isa() -> dict:
    from ftdsl.stages.quant_onnx import cpu_isa as isa

    model = ""
    try:
        model = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                      if ln.startswith("model name")), "")
    except OSError:  # pragma: no cover - not Linux
        pass
    try:
        import torch

        cap = torch.backends.cpu.get_cpu_capability()
    except Exception:  # noqa: BLE001
        cap = None
    return {**isa(), "model": model or platform.processor(), "torch_capability": cap}


# --------------------------------------------------------------------------------------------
# the models, built by ftdsl


def build(work: Path, minilm: bool, train_rows: int) -> dict[str, Path]:
    work.mkdir(parents=True, exist_ok=True)
    block = ""
    if minilm:
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
        block = MINILM.format(train=work / "train.tsv", valid=work / "valid.tsv", test=SST2 / "test.tsv")
    p = work / "bench.ftp"
    p.write_text(PIPELINE.format(minilm=block))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "NO_COLOR": "1"}
    t0 = time.time()
    r = subprocess.run([sys.executable, "-m", "ftdsl", "run", str(p), "--cache", str(work / "cache"), "--quiet"],
                       env=env, cwd=work)
    if r.returncode:
        sys.exit(f"ftdsl run failed ({r.returncode})")
    print(f"models ready in {time.time() - t0:.0f}s", flush=True)
    out = {"mlp": work / "out" / "mlp_onnx"}
    if minilm:
        out["minilm"] = work / "out" / "minilm_onnx"
    return out


def rows_for(name: str, work: Path, export_dir: Path) -> tuple[list[dict], np.ndarray]:
    """Feed dicts (batches of 32) and labels of the rows accuracy is measured on."""
    if name == "mlp":
        from ftdsl.stages.dataset import Dataset

        cache = work / "cache"
        ds = None
        for meta in cache.glob("entries/*/*/artifact/dataset.json"):
            cand = Dataset.load(meta.parent)
            if cand.splits.get("test") is not None and cand.splits["test"].features is not None:
                ds = cand
                break
        if ds is None:
            sys.exit(f"no digits dataset in {cache}")
        t = ds.splits["test"]
        x, y = t.features.astype(np.float32), np.asarray(t.labels)
        return [{"x": x[i:i + 32]} for i in range(0, len(x), 32)], y
    from ftdsl.stages.export import OnnxModel

    tok = OnnxModel.load(export_dir).load_tokenizer()
    rows = list(csv.reader(open(SST2 / "test.tsv", encoding="utf-8"), delimiter="\t", quoting=csv.QUOTE_NONE))[1:]
    texts, y = [r[0] for r in rows], np.array([int(r[1]) for r in rows])
    feeds = []
    for i in range(0, len(texts), 32):
        enc = tok(texts[i:i + 32], padding=True, truncation=True, max_length=64, return_tensors="np")
        feeds.append({"input_ids": enc["input_ids"].astype(np.int64),
                      "attention_mask": enc["attention_mask"].astype(np.int64)})
    return feeds, y


# --------------------------------------------------------------------------------------------
# quantization and the emulated non-VNNI kernel


def quantize(src: Path, dst: Path, setting: dict) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from ftdsl.stages.quantize import quiet_quantizer

    with quiet_quantizer():
        pre = dst.with_suffix(".pre.onnx")
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        quantize_dynamic(str(pre), str(dst), per_channel=setting["per_channel"],
                         reduce_range=setting["reduce_range"], weight_type=getattr(QuantType, setting["weight_type"]))
        pre.unlink()


# --------------------------------------------------------------------------------------------
# measurement


def session(path: Path, threads: int):
    from ftdsl.stages.onnx_utils import session as open_session

    return open_session(path, threads=threads)


def predict(sess, feeds):
    names = [i.name for i in sess.get_inputs()]
    return np.concatenate([sess.run(None, {n: f[n] for n in names})[0] for f in feeds])


def compare(ref: np.ndarray, got: np.ndarray, y: np.ndarray) -> dict:
    return {"max_abs_diff": float(np.abs(got - ref).max()), "max_abs_ref": float(np.abs(ref).max()),
            "argmax_agreement": float((got.argmax(1) == ref.argmax(1)).mean()),
            "accuracy": float((got.argmax(1) == y).mean())}


def latency(paths: dict[str, Path], feed32: dict, rounds: int, threads: int) -> dict:
    """Median ms per call of batch 32 and batch 1, interleaved across the models (rotating order)."""
    sessions = {k: session(p, threads) for k, p in paths.items()}
    feed1 = {k: v[:1] for k, v in feed32.items()}
    times: dict[str, dict[str, list]] = {k: {"b32": [], "b1": []} for k in paths}
    for s in sessions.values():  # warm-up
        s.run(None, feed32)
        s.run(None, feed1)
    keys = list(paths)
    for r in range(rounds):
        for k in keys[r % len(keys):] + keys[:r % len(keys)]:
            for label, feed, reps in (("b32", feed32, 3), ("b1", feed1, 20)):
                t0 = time.perf_counter()
                for _ in range(reps):
                    sessions[k].run(None, feed)
                times[k][label].append((time.perf_counter() - t0) * 1e3 / reps)
    return {k: {lab: statistics.median(v) for lab, v in d.items()} for k, d in times.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=["mlp", "minilm"])
    ap.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "ftdsl-int8-bench"))
    ap.add_argument("--train-rows", type=int, default=8000)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (0: its default)")
    ap.add_argument("--no-emulate", action="store_true")
    ap.add_argument("--build-only", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "int8_settings.json"))
    a = ap.parse_args(argv)
    work = Path(a.work)
    exports = build(work, a.only != "mlp", a.train_rows)
    if a.only:
        exports = {a.only: exports[a.only]}
    if a.build_only:
        return 0
    result = {"cpu": cpu_isa(), "load_avg": os.getloadavg(), "threads": a.threads or None, "models": {}}
    import onnxruntime

    result["onnxruntime"] = onnxruntime.__version__
    for name, exp in exports.items():
        feeds, y = rows_for(name, work, exp)
        qdir = work / "q" / name
        qdir.mkdir(parents=True, exist_ok=True)
        paths = {"fp32": exp / "model.onnx"}
        for s, setting in SETTINGS.items():
            paths[s] = qdir / f"{s}.onnx"
            quantize(exp / "model.onnx", paths[s], setting)
        ref = predict(session(paths["fp32"], a.threads), feeds)
        rows = {}
        for s, p in paths.items():
            got = predict(session(p, a.threads), feeds)
            rows[s] = {"size_mb": p.stat().st_size / 1e6, "this_cpu": compare(ref, got, y)}
            if s != "fp32":
                import onnx

                from ftdsl.stages.quant_onnx import max_abs_int8_weight

                rows[s]["max_abs_int8_weight"] = max_abs_int8_weight(onnx.load(str(p)))
            if s != "fp32" and not a.no_emulate:
                if name == "mlp":  # the whole graph through the emulated kernel
                    emu = non_vnni_runner(p)
                    e = np.concatenate([emu(f) for f in feeds])
                    rows[s]["emulated_non_vnni"] = compare(ref, e, y)
                elif (rows[s]["max_abs_int8_weight"] or 0) > 64:  # onnx's reference evaluator cannot run
                    # MiniLM: per-layer saturation on 8 rows (|w| <= 64 or uint8 weights cannot saturate)
                    rows[s]["saturation"] = saturation_stats(p, {k: v[:8] for k, v in feeds[0].items()})
            print(name, s, json.dumps(rows[s]), flush=True)
        lat = latency(paths, feeds[0], a.rounds, a.threads)
        for s in rows:
            rows[s]["latency_ms"] = lat[s]
            print(name, s, "latency", lat[s], flush=True)
        result["models"][name] = {"rows": int(len(y)), "settings": rows}
    result["load_avg_after"] = os.getloadavg()
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
