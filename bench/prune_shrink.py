"""Structured pruning that shrinks (issue 10 item 4), side by side in one process.

One ftdsl pipeline fine-tunes all-MiniLM-L6-v2 on ``--train-rows`` shuffled SST-2 training rows
(seed 0; one epoch, batch 32, lr 1e-4, linear schedule with 10 % warm-up, max length 64, fp32),
removes 30 % of every layer's attention heads and FFN rows with ``structured(amount = 0.3,
what = [heads, ffn])``, recovers one epoch on the same rows; a third model does the same and also
trims the vocabulary to what the training rows use (``what = [heads, ffn, vocab]``). It exports
the three models to ONNX and evaluates all six on the 872 GLUE SST-2 dev sentences (``test.tsv``).
Then, in this process, it times the three models (PyTorch eager and ONNX Runtime, batch 32 x
length 64, each model fed by its own tokenizer, rounds interleaved, median) and compares file sizes.

    python bench/prune_shrink.py                    # 8,000 rows (several minutes of CPU)
    python bench/prune_shrink.py --train-rows 2000  # quicker

Writes ``bench/results/prune_shrink.json`` and prints a Markdown table for docs/benchmarks.md.
Targets: >= 1.25x faster eager and ONNX at batch 32, >= 25 % smaller file, accuracy within 1.5
points of the unpruned model.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from contextlib import redirect_stdout
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SST2 = ROOT.parent / "shared" / "data" / "sst2"

PIPELINE = """\
pipeline prune_bench {{ seed = 0 }}
data sst2 {{
  train = csv("{train}", delimiter = "\\t")
  valid = csv("{valid}", delimiter = "\\t")
  test = csv("{test}", delimiter = "\\t")
  text = "sentence", label = "label"
  max_length = 64
}}
model encoder {{ pretrained = "sentence-transformers/all-MiniLM-L6-v2", task = classify(labels = 2) }}
train fit {{
  model = encoder, data = sst2, epochs = 1, batch = 32
  optimizer = adamw(lr = 1e-4, weight_decay = 0.01), schedule = linear(warmup = 0.1), precision = fp32
}}
prune small {{
  from = fit
  method = structured(amount = {amount}, what = [heads, ffn])
  recover = {{ epochs = 1, data = sst2, batch = 32, optimizer = adamw(lr = {recover_lr}) }}
}}
prune tiny {{
  from = fit
  method = structured(amount = {amount}, what = [heads, ffn, vocab])
  recover = {{ epochs = 1, data = sst2, batch = 32, optimizer = adamw(lr = {recover_lr}) }}
}}
export fit_onnx {{ from = fit, format = onnx(), verify = true }}
export small_onnx {{ from = small, format = onnx(), verify = true }}
export tiny_onnx {{ from = tiny, format = onnx(), verify = true }}
evaluate report {{
  models = [fit, small, tiny, fit_onnx, small_onnx, tiny_onnx], data = sst2.test, metrics = [accuracy]
}}
"""


def cpu_model() -> str:
    try:
        return next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                     if ln.startswith("model name")), platform.processor())
    except OSError:  # pragma: no cover - not Linux
        return platform.processor()


def write_data(work: Path, train_rows: int) -> dict[str, Path]:
    rows = list(csv.reader(open(SST2 / "train.tsv", encoding="utf-8"), delimiter="\t", quoting=csv.QUOTE_NONE))
    head, body = rows[0], rows[1:]
    random.Random(0).shuffle(body)
    dev = list(csv.reader(open(SST2 / "dev.tsv", encoding="utf-8"), delimiter="\t", quoting=csv.QUOTE_NONE))
    for name, part in (("train.tsv", body[:train_rows]), ("valid.tsv", dev[1:401])):
        with open(work / name, "w", encoding="utf-8", newline="") as f:
            w = csv.writer(f, delimiter="\t", quoting=csv.QUOTE_NONE, escapechar="\\")
            w.writerow(head)
            w.writerows(part)
    return {"train": work / "train.tsv", "valid": work / "valid.tsv", "test": SST2 / "test.tsv"}


def artifact_dirs(p: Path, cache: Path) -> dict[str, Path]:
    from ftdsl.cli import main

    buf = io.StringIO()
    with redirect_stdout(buf):
        assert main(["plan", str(p), "--cache", str(cache), "--format", "json"]) == 0
    keys = {s["name"]: s["cache_key"].split(":")[-1] for s in json.loads(buf.getvalue())["stages"]}
    dirs = {n: cache / "entries" / k[:2] / k / "artifact" for n, k in keys.items()}
    for spec_path in cache.glob("entries/*/*/artifact/spec.json"):  # keys changed since the run (engine)
        spec = json.loads(spec_path.read_text())
        name = spec.get("pruned_by") or (spec.get("trained_by") if "pruning" not in spec else None)
        if name in ("fit", "small", "tiny") and not (dirs[name] / "spec.json").is_file():
            dirs[name] = spec_path.parent
    return dirs


def timed(fns: dict, rounds: int, warmup: int = 3) -> dict[str, float]:
    """Median ms per call of each function, rounds interleaved (A B A B ...) so load drifts hit both."""
    for f in fns.values():
        for _ in range(warmup):
            f()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            times[k].append((time.perf_counter() - t0) * 1000)
    return {k: round(statistics.median(v), 2) for k, v in times.items()} | {
        f"{k}.min": round(min(v), 2) for k, v in times.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--train-rows", type=int, default=8000)
    ap.add_argument("--amount", type=float, default=0.3)
    ap.add_argument("--recover-lr", type=float, default=5e-5)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--work", type=Path, default=Path("/tmp/ftdsl-prune-bench"))
    ap.add_argument("--no-run", action="store_true", help="time the models of an earlier run (its summary)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "prune_shrink.json")
    a = ap.parse_args(argv)
    a.work.mkdir(parents=True, exist_ok=True)
    files = write_data(a.work, a.train_rows)
    p = a.work / "bench.ftp"
    p.write_text(PIPELINE.format(**{k: v for k, v in files.items()}, amount=a.amount, recover_lr=a.recover_lr))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "NO_COLOR": "1"}
    t0 = time.time()
    r = subprocess.run([sys.executable, "-m", "ftdsl", "run", str(p), "--cache", str(a.work / "cache"), "--quiet",
                        "--summary-json", str(a.work / "summary.json")], env=env, cwd=a.work) if not a.no_run else None
    if r is not None and r.returncode:
        sys.exit(f"ftdsl run failed ({r.returncode})")
    wall = time.time() - t0
    summary = {s["name"]: s for s in json.loads((a.work / "summary.json").read_text())["stages"]}
    acc = {k.split(".")[0]: v for k, v in summary["report"]["metrics"].items() if k.endswith(".accuracy")}

    import numpy as np
    import torch

    from ftdsl.stages.onnx_utils import session
    from ftdsl.stages.torch_model import TorchModel

    dirs = artifact_dirs(p, a.work / "cache")
    stage = {"unpruned": "fit", "pruned": "small", "vocab": "tiny"}  # row -> stage
    arts = {k: TorchModel.load(dirs[v]) for k, v in stage.items()}
    sents = [row[0] for row in csv.reader(open(SST2 / "test.tsv", encoding="utf-8"), delimiter="\t",
                                          quoting=csv.QUOTE_NONE)][1:33]
    inputs = {}  # each model its own tokenizer (the trimmed vocabulary numbers tokens anew)
    for k, art in arts.items():
        enc = art.load_tokenizer()(sents, padding="max_length", truncation=True, max_length=64, return_tensors="pt")
        inputs[k] = (enc["input_ids"], enc["attention_mask"])
    modules = {k: art.build() for k, art in arts.items()}
    with torch.inference_mode():
        eager = timed({k: (lambda m=m, x=inputs[k]: m(*x)) for k, m in modules.items()}, a.rounds)
    onnx_paths = {k: a.work / "out" / f"{v}_onnx" / "model.onnx" for k, v in stage.items()}
    sessions = {k: session(v, threads=torch.get_num_threads()) for k, v in onnx_paths.items()}
    feeds = {}
    for k, s in sessions.items():
        names = [i.name for i in s.get_inputs()]
        ids, mask = inputs[k]
        feeds[k] = {n: (ids if "ids" in n else mask).numpy().astype(np.int64) for n in names}
    ort = timed({k: (lambda s=s, f=feeds[k]: s.run(None, f)) for k, s in sessions.items()}, a.rounds)

    def params(m) -> int:
        return sum(t.numel() for t in m.parameters())

    size = {k: (dirs[v] / "model.safetensors").stat().st_size for k, v in stage.items()}
    onnx_size = {k: v.stat().st_size + sum(x.stat().st_size for x in v.parent.glob("*.data")) for k, v in
                 onnx_paths.items()}
    pm = summary["small"]["metrics"]
    vm = summary["tiny"]["metrics"]
    vocab_report = json.loads((a.work / "out" / "tiny" / "prune.json").read_text(encoding="utf-8")).get("vocab")
    result = {
        "cpu": cpu_model(), "threads": torch.get_num_threads(), "torch": torch.__version__,
        "train_rows": a.train_rows, "amount": a.amount, "pipeline_wall_s": round(wall, 1),
        "removed": {k: v for k, v in pm.items() if k.startswith("removed.")},
        "removed_vocab_row": {k: v for k, v in vm.items() if k.startswith("removed.")}, "vocab": vocab_report,
        "params": {k: params(m) for k, m in modules.items()},
        "safetensors_bytes": size, "onnx_bytes": onnx_size,
        "accuracy": {"unpruned": acc.get("fit"), "pruned": acc.get("small"), "vocab": acc.get("tiny"),
                     "unpruned_onnx": acc.get("fit_onnx"), "pruned_onnx": acc.get("small_onnx"),
                     "vocab_onnx": acc.get("tiny_onnx")},
        "eager_ms_b32_l64": eager, "onnx_ms_b32_l64": ort,
        "speedup": {"eager": round(eager["unpruned"] / eager["pruned"], 3),
                    "onnx": round(ort["unpruned"] / ort["pruned"], 3),
                    "vocab_eager": round(eager["unpruned"] / eager["vocab"], 3),
                    "vocab_onnx": round(ort["unpruned"] / ort["vocab"], 3)},
        "file_reduction": round(1 - size["pruned"] / size["unpruned"], 4),
        "onnx_file_reduction": round(1 - onnx_size["pruned"] / onnx_size["unpruned"], 4),
        "vocab_file_reduction": round(1 - size["vocab"] / size["unpruned"], 4),
        "vocab_onnx_file_reduction": round(1 - onnx_size["vocab"] / onnx_size["unpruned"], 4),
        "load_average": list(os.getloadavg()),
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=1) + "\n")
    d = result
    print(json.dumps(d, indent=1))
    print("\n| model | params | safetensors | ONNX file | eager ms (b32, l64) | ONNX ms | accuracy |\n|---|---|---|---|---|---|---|")
    rows = {"unpruned": "unpruned", "pruned": f"pruned {a.amount:.0%} heads + FFN, 1 recovery epoch",
            "vocab": f"pruned {a.amount:.0%} heads + FFN + vocab, 1 recovery epoch"}
    for k in ("unpruned", "pruned", "vocab"):
        print(f"| {rows[k]} | {d['params'][k] / 1e6:.2f} M | {size[k] / 1e6:.1f} MB | {onnx_size[k] / 1e6:.1f} MB | "
              f"{eager[k]:.0f} | {ort[k]:.0f} | {100 * (d['accuracy'][k] or 0):.2f} |")
    print(f"\nspeed-up eager {d['speedup']['eager']}x, ONNX {d['speedup']['onnx']}x; file {d['file_reduction']:.1%} "
          f"smaller; accuracy {100 * ((d['accuracy']['pruned'] or 0) - (d['accuracy']['unpruned'] or 0)):+.2f} points")
    print(f"+ vocab: speed-up eager {d['speedup']['vocab_eager']}x, ONNX {d['speedup']['vocab_onnx']}x; file "
          f"{d['vocab_file_reduction']:.1%} smaller (ONNX {d['vocab_onnx_file_reduction']:.1%}); accuracy "
          f"{100 * ((d['accuracy']['vocab'] or 0) - (d['accuracy']['unpruned'] or 0)):+.2f} points; vocabulary "
          f"{(vocab_report or {}).get('before')} -> {(vocab_report or {}).get('after')}; load average "
          f"{' '.join(f'{x:.2f}' for x in d['load_average'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
