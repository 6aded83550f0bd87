"""Regenerate tests/golden/train_losses.json: per-step training losses of a tiny fixed-seed MLP.

    python tests/golden/regen_train_losses.py

Run it only when a change to the training loop is meant to change the numbers (a new default,
a different schedule), and say so in the commit. tests/test_train_stage.py imports
``compute_losses`` from here, so the test and the golden file share one configuration.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np

GOLDEN = Path(__file__).with_name("train_losses.json")

MODEL_ATTRS = {
    "pretrained": None,
    "arch": {"$call": "mlp", "hidden": [16, 8], "dropout": 0.1, "activation": "relu"},
    "task": {"$call": "classify", "labels": 3},
    "init": "xavier_uniform",
    "trust_remote_code": False,
    "revision": None,
}

TRAIN_ATTRS = {
    "model": {"$ref": "m"}, "data": {"$ref": "d"},
    "epochs": 3, "max_steps": None, "batch": 16, "accumulate": 2,
    "optimizer": {"$call": "adamw", "lr": 0.01, "weight_decay": 0.01},
    "schedule": {"$call": "cosine", "warmup": 2, "min_lr": 0.001},
    "loss": {"$call": "cross_entropy", "weights": "balanced", "label_smoothing": 0.1},
    "precision": "fp32", "clip": 1.0, "compile": False, "freeze": [], "lora": None,
    "early_stop": None, "eval_every": 4, "checkpoint_every": 100, "distributed": "none",
    "max_length": None, "threads": 1,
}


def make_dataset():
    from ftdsl.stages.dataset import Dataset, Split

    rng = np.random.default_rng(1234)
    centers = rng.normal(size=(3, 6)) * 2

    def split(n, offset):
        y = rng.integers(0, 3, n).astype(np.int64)
        x = (centers[y] + rng.normal(size=(n, 6)) * 1.5 + 5.0).astype(np.float32)
        return Split(x, None, y, np.arange(offset + 1, offset + n + 1, dtype=np.int64))

    train = split(120, 0)
    mean, std = train.features.mean(0), train.features.std(0)
    return Dataset({"train": train, "valid": split(40, 120)}, "features", (6,), ["a", "b", "c"], 3,
                   mean.astype(np.float32), std.astype(np.float32), None, "shuffle", None, "golden")


def compute_losses(workdir: Path) -> dict:
    """Train the tiny model in ``workdir``; returns the per-step losses and the valid losses."""
    from ftdsl.stages import model as model_stage
    from ftdsl.stages import train as train_stage
    from ftdsl.stages.base import StageContext

    workdir = Path(workdir)
    mctx = StageContext("m", "model", workdir, workdir / "out" / "m", workdir / "work" / "m", seed=7)
    model = model_stage.run({}, MODEL_ATTRS, mctx)
    tctx = StageContext("t", "train", workdir, workdir / "out" / "t", workdir / "work" / "t", seed=7)
    art = train_stage.run({"model": model, "data": make_dataset()}, TRAIN_ATTRS, tctx)
    records = [json.loads(line) for line in (tctx.out_dir / "metrics.jsonl").read_text().splitlines()]
    return {
        "train_loss": [r["loss"] for r in records if r["split"] == "train"],
        "valid_loss": [r["loss"] for r in records if r["split"] == "valid"],
        "steps": art.metrics["steps"],
    }


def main() -> int:
    with tempfile.TemporaryDirectory() as d:
        result = compute_losses(Path(d))
    import torch

    result["_generated_with"] = {"torch": torch.__version__, "numpy": np.__version__}
    GOLDEN.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {GOLDEN} ({len(result['train_loss'])} train losses)")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    sys.exit(main())
