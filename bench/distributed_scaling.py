"""Training throughput of one process vs several (DDP through torchrun) on this machine.

    python bench/distributed_scaling.py                  # MiniLM, 1 vs 2 processes, 20 steps of batch 16
    python bench/distributed_scaling.py --model mlp      # the digits MLP (seconds)
    python bench/distributed_scaling.py --steps 40 --nproc 1 2 4

Each configuration is a fresh `ftdsl run --nproc N` subprocess on a fresh cache, the same
global batch and steps. Throughput is the train stage's own `samples_per_s` of its last logged
window (steps 11-20: the first window includes warm-up, and the wall time includes imports and
torchrun's start), so it measures the optimizer steps only. One process uses every core with
intra-op threads; N processes get cores/N threads each (OMP_NUM_THREADS, set by ftdsl).

The speed-up is against 1 process using all cores (what a user would otherwise run). All
configurations share the same cores, so perfect scaling here is a speed-up of 1.0, not N: more
processes on one CPU only help where one process cannot keep its cores busy (small operators,
Python overhead). The speed-up on N machines or GPUs is a different measurement. The results go
to bench/results/distributed_scaling_<model>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

MINILM = """ftp 1
pipeline bench {{ seed = 0  device = cpu }}
data sms {{
  source = csv("sms.tsv", delimiter = "\\t")
  text = "text"
  label = "label"
  split = {{ train = 0.9, valid = 0.1 }}
  max_length = 64
}}
model encoder {{
  pretrained = "sentence-transformers/all-MiniLM-L6-v2"
  task = classify(labels = 2)
}}
train ft {{
  model = encoder
  data = sms
  max_steps = {steps}
  batch = {batch}
  optimizer = adamw(lr = 5e-5)
  precision = fp32
  distributed = ddp
  checkpoint_every = 1000
}}
"""

MLP = """ftp 1
pipeline bench {{ seed = 0  device = cpu }}
data digits {{
  source = sklearn("digits")
  split = {{ train = 0.9, valid = 0.1 }}
}}
model mlp {{
  arch = mlp(hidden = [256, 256], dropout = 0.0)
  task = classify(labels = 10)
}}
train ft {{
  model = mlp
  data = digits
  max_steps = {steps}
  batch = {batch}
  optimizer = adamw(lr = 3e-3)
  precision = fp32
  distributed = ddp
  checkpoint_every = 1000
}}
"""


def one(project: Path, nproc: int, threads: int | None = None) -> dict:
    cache = project / f"cache-{nproc}-{threads}"
    env = {**os.environ, "NO_COLOR": "1", "TERM": "dumb", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.pop("OMP_NUM_THREADS", None)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "ftdsl", "run", "p.ftp", "--cache", str(cache), "--quiet",
                        "--nproc", str(nproc)], cwd=project, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"--nproc {nproc} failed:\n{r.stderr[-3000:]}")
    recs = [json.loads(line) for line in (project / "out" / "ft" / "metrics.jsonl").read_text().splitlines()]
    train = [x for x in recs if x.get("split") == "train"]
    shutil.rmtree(project / "out")
    return {"nproc": nproc, "threads_per_process": threads or "cores/nproc", "samples_per_s": round(train[-1]["samples_per_s"], 2),
            "window_steps": [train[-2]["step"] + 1 if len(train) > 1 else 1, train[-1]["step"]],
            "final_train_loss": train[-1]["loss"], "wall_s": round(wall, 1)}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", choices=["minilm", "mlp"], default="minilm")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--nproc", type=int, nargs="+", default=[1, 2])
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="ftdsl-dist-bench-") as d:
        project = Path(d)
        text = (MINILM if args.model == "minilm" else MLP).format(steps=args.steps, batch=args.batch)
        (project / "p.ftp").write_text(text)
        if args.model == "minilm":
            shutil.copy(ROOT / "pipelines" / "data" / "sms_spam_600.tsv", project / "sms.tsv")
        rows = [one(project, n) for n in args.nproc]
        rows.insert(1, one(project, 1, threads=1))  # one process, one thread: a core's worth
    base = rows[0]["samples_per_s"]
    for r in rows:
        r["speedup"] = round(r["samples_per_s"] / base, 3)
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover
        cores = os.cpu_count()
    out = {"model": args.model, "steps": args.steps, "global_batch": args.batch, "cores": cores,
           "cpu": platform.processor() or platform.machine(), "rows": rows,
           "note": "samples/s of the last logged window of optimizer steps; 1 process uses all cores"}
    res = ROOT / "bench" / "results" / f"distributed_scaling_{args.model}.json"
    res.write_text(json.dumps(out, indent=2) + "\n")
    print("| processes | threads each | samples/s | speed-up (same cores) | final train loss | wall (s) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['nproc']} | {r['threads_per_process']} | {r['samples_per_s']} | {r['speedup']} | "
              f"{r['final_train_loss']:.6g} | {r['wall_s']} |")
    print(f"wrote {res.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
