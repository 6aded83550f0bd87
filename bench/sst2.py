"""A whole real job, side by side: ftdsl vs the Hugging Face Trainer fine-tuning all-MiniLM-L6-v2 on SST-2.

    python bench/sst2.py                     # 8,000 shuffled train rows (seed 0), what docs/benchmarks.md reports
    python bench/sst2.py --rows 60614        # the whole ALPS train split (slow: run once and record)
    python bench/sst2.py --rows 512          # a smoke run (minutes)
    python bench/sst2.py --only ftdsl        # one side
    python bench/sst2.py --seeds 0,1,2       # three training seeds per side (same 8,000 rows)

The job (issue 10, item 1): one epoch, batch 32, AdamW lr 1e-4 (weight decay 0.01), linear
schedule with 10 % warm-up, max length 64, evaluated on the 872 rows of ``test.tsv`` (the GLUE
SST-2 dev set, where MiniLM-L6-H384's published 91.3 is measured). Precision follows
``precision = auto`` on both sides: bf16 where the CPU/GPU has it natively, else fp32
(``ftdsl.runtime.device.resolve_precision`` decides for both).

* ftdsl: a ``.ftp`` pipeline (data -> model -> train; the train stage scores ``test``) run as ``python -m ftdsl run``
  in a fresh cache: the wall time of the whole command, imports, data loading, tokenization,
  training, evaluation and cache writes included. Its per-stage times come from the run's
  ``out/<stage>`` records and the stage log.
* Trainer: ``transformers.Trainer`` with ``DataCollatorWithPadding`` (dynamic padding), the
  same hyper-parameters and seed, no checkpoints, no evaluation during training: the time of
  ``trainer.train()`` only (tokenization and model loading excluded), then accuracy with
  ``trainer.predict`` on the same 872 rows.

Both sides run in this one script, one after the other, on the same machine; the JSON keeps the
machine (CPU model, ISA flags, threads) beside the numbers. ``--rounds N`` repeats and
interleaves the two sides (the order alternates) and reports medians. ``--seeds A,B,C`` runs
one round per training seed (model head initialisation, dropout and batch order; the 8,000-row
subset stays the seed-0 shuffle) and reports the mean accuracy with its range: on 872 test rows
one example is 0.11 points, and single-seed differences of half a point are seed noise.
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

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # what `ftdsl` sets; the Trainer side gets it too

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "sst2"
RESULTS = ROOT / "bench" / "results"
MODEL = "sentence-transformers/all-MiniLM-L6-v2"
LR, BATCH, MAX_LEN, WARMUP, WD, SEED = 1e-4, 32, 64, 0.1, 0.01, 0

PIPELINE = """ftp 1
pipeline sst2 {{ seed = {seed} }}

data sst {{
  train = csv("train.tsv", delimiter = "\\t")
  test = csv("test.tsv", delimiter = "\\t")
  text = "sentence"
  label = "label"
  max_length = {max_len}
}}

model base {{
  pretrained = "{model}"
  task = classify(labels = 2)
}}

train finetune {{
  model = base
  data = sst
  epochs = 1
  batch = {batch}
  optimizer = adamw(lr = {lr}, weight_decay = {wd})
  schedule = linear(warmup = {warmup})
  precision = auto
  checkpoint_every = 1000000{extra}
}}
"""
# No `evaluate` stage: with no `valid` split the train stage itself scores the final weights on
# `test` (test.accuracy in out/finetune/metrics.json), so a report stage would score them twice.


def read_tsv(path: Path) -> list[tuple[str, int]]:
    with open(path, encoding="utf-8", newline="") as f:
        r = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        next(r)
        return [(row[0], int(row[1])) for row in r]


def write_tsv(path: Path, rows: list[tuple[str, int]]) -> None:
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, delimiter="\t", quoting=csv.QUOTE_NONE, escapechar="\\", lineterminator="\n")
        w.writerow(["sentence", "label"])
        w.writerows(rows)


def machine() -> dict:
    flags = ""
    model = platform.processor()
    try:
        info = Path("/proc/cpuinfo").read_text()
        for line in info.splitlines():
            if line.startswith("model name") and model in ("", "x86_64"):
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = line
                break
    except OSError:
        pass
    isa = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16") if f" {f}" in flags]
    return {"cpu": model, "isa": isa, "cores": os.cpu_count(), "python": platform.python_version()}


def auto_precision() -> str:
    from ftdsl.runtime.device import resolve_precision

    return resolve_precision("auto", "cuda" if _cuda() else "cpu", n_params=22_700_000)[0]


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def pipeline_text(seed: int = SEED, clip: float | None = None) -> str:
    """The job as a `.ftp` file (``clip``: gradient-norm clipping, off unless given)."""
    return PIPELINE.format(seed=seed, max_len=MAX_LEN, model=MODEL, batch=BATCH, lr=LR, wd=WD, warmup=WARMUP,
                           extra=f"\n  clip = {clip}" if clip else "")


def run_ftdsl(work: Path, seed: int = SEED, clip: float | None = None) -> dict:
    (work / "sst2.ftp").write_text(pipeline_text(seed, clip), encoding="utf-8")
    env = {**os.environ, "FTDSL_CACHE": str(work / "cache"), "NO_COLOR": "1", "COLUMNS": "120"}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "ftdsl", "run", "sst2.ftp"], cwd=work, env=env,
                          capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"ftdsl run failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    train_metrics = json.loads((work / "out" / "finetune" / "metrics.json").read_text())
    acc = _find(train_metrics, "test.accuracy")
    if acc is None:
        acc = _find(train_metrics.get("test", train_metrics), "accuracy")
    return {"wall_s": wall, "accuracy": acc, "train_metrics": train_metrics, "log_tail": proc.stdout[-2500:]}


def _find(obj, key):
    """The first value under `key` anywhere in a nested metrics JSON."""
    if isinstance(obj, dict):
        if key in obj and isinstance(obj[key], (int, float)):
            return obj[key]
        for v in obj.values():
            got = _find(v, key)
            if got is not None:
                return got
    if isinstance(obj, list):
        for v in obj:
            got = _find(v, key)
            if got is not None:
                return got
    return None


def run_trainer(work: Path, train_rows, test_rows, precision: str, seed: int = SEED) -> dict:
    import numpy as np
    import torch
    import transformers
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer,
                              TrainingArguments)

    from ftdsl.stages.pretrained import resolve_pretrained

    path, _ = resolve_pretrained(MODEL)
    transformers.set_seed(seed)
    tok = AutoTokenizer.from_pretrained(str(path))
    model = AutoModelForSequenceClassification.from_pretrained(str(path), num_labels=2)

    class DS(torch.utils.data.Dataset):
        def __init__(self, rows):
            enc = tok([r[0] for r in rows], truncation=True, max_length=MAX_LEN)
            self.items = [{"input_ids": enc["input_ids"][i], "attention_mask": enc["attention_mask"][i],
                           "labels": rows[i][1]} for i in range(len(rows))]

        def __len__(self):
            return len(self.items)

        def __getitem__(self, i):
            return self.items[i]

    train_ds, test_ds = DS(train_rows), DS(test_rows)
    args = TrainingArguments(
        output_dir=str(work / "trainer"), per_device_train_batch_size=BATCH, per_device_eval_batch_size=128,
        learning_rate=LR, weight_decay=WD, lr_scheduler_type="linear", warmup_steps=WARMUP, num_train_epochs=1,
        seed=seed, bf16=precision == "bf16", fp16=precision == "fp16", use_cpu=not _cuda(),
        save_strategy="no", eval_strategy="no", logging_strategy="no", report_to=[],
        dataloader_num_workers=0, disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=args, train_dataset=train_ds, data_collator=DataCollatorWithPadding(tok))
    t0 = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - t0
    pred = trainer.predict(test_ds)
    acc = float((np.argmax(pred.predictions, axis=-1) == np.asarray([r[1] for r in test_rows])).mean())
    return {"train_s": train_s, "accuracy": acc, "samples_per_s": len(train_rows) / train_s}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=8000, help="shuffled train rows (seed 0); 60614 = all")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--only", choices=("ftdsl", "trainer"))
    ap.add_argument("--clip", type=float, default=None,
                    help="ftdsl side: `clip = X` (gradient-norm clipping; the Trainer clips at 1.0 by default)")
    ap.add_argument("--seeds", default=None,
                    help="comma-separated training seeds, one round each (overrides --rounds); default: seed 0")
    ap.add_argument("--out", default=None, help="results JSON (default bench/results/sst2_<rows>.json)")
    args = ap.parse_args(argv)

    train_all = read_tsv(DATA / "train.tsv")
    test_rows = read_tsv(DATA / "test.tsv")
    rng = random.Random(SEED)
    rng.shuffle(train_all)
    train_rows = train_all[: args.rows]
    precision = auto_precision()
    print(f"SST-2: {len(train_rows)} train rows, {len(test_rows)} test rows; precision auto -> {precision}; "
          f"{machine()}", flush=True)

    seeds = [int(x) for x in args.seeds.split(",")] if args.seeds else [SEED] * args.rounds
    results: dict[str, list[dict]] = {"ftdsl": [], "trainer": []}
    for r, seed in enumerate(seeds):
        order = ["ftdsl", "trainer"] if r % 2 == 0 else ["trainer", "ftdsl"]
        for side in order:
            if args.only and side != args.only:
                continue
            with tempfile.TemporaryDirectory(prefix="ftdsl-sst2-") as tmp:
                work = Path(tmp)
                write_tsv(work / "train.tsv", train_rows)
                write_tsv(work / "test.tsv", test_rows)
                res = (run_ftdsl(work, seed, args.clip) if side == "ftdsl"
                       else run_trainer(work, train_rows, test_rows, precision, seed))
            res["seed"] = seed
            results[side].append(res)
            t = res.get("wall_s", res.get("train_s"))
            print(f"round {r + 1} (seed {seed}) {side}: {t:.1f} s, accuracy {res['accuracy']:.4f}", flush=True)

    summary = {}
    for side, runs in results.items():
        if runs:
            key = "wall_s" if side == "ftdsl" else "train_s"
            summary[side] = {key: statistics.median(x[key] for x in runs),
                             "accuracy": statistics.median(x["accuracy"] for x in runs),
                             "accuracy_mean": statistics.fmean(x["accuracy"] for x in runs),
                             "accuracy_range": [min(x["accuracy"] for x in runs), max(x["accuracy"] for x in runs)],
                             "time_range_s": [min(x[key] for x in runs), max(x[key] for x in runs)],
                             "samples_per_s": len(train_rows) / statistics.median(x[key] for x in runs)}
    if "ftdsl" in summary and "trainer" in summary:
        summary["ratio_ftdsl_wall_to_trainer_train"] = summary["ftdsl"]["wall_s"] / summary["trainer"]["train_s"]
        summary["accuracy_points_vs_trainer"] = 100 * (summary["ftdsl"]["accuracy"] - summary["trainer"]["accuracy"])
        summary["mean_accuracy_points_vs_trainer"] = 100 * (summary["ftdsl"]["accuracy_mean"]
                                                            - summary["trainer"]["accuracy_mean"])
    out = {"rows": len(train_rows), "seeds": seeds, "ftdsl_clip": args.clip, "precision": precision,
           "machine": machine(), "summary": summary, "runs": results}
    dest = Path(args.out) if args.out else RESULTS / f"sst2_{len(train_rows)}.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(out, indent=1, default=str), encoding="utf-8")
    print(json.dumps(summary, indent=1))
    print(f"wrote {dest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
