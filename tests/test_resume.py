"""Resume after SIGKILL (in a subprocess) and after SIGTERM: the final weights must be bitwise
equal to an uninterrupted run (CPU, same seed, same thread count). Also FTP506 on a changed
configuration and --force-resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from ftdsl.errors import StageError
from ftdsl.stages import model as model_stage
from ftdsl.stages import train as train_stage
from ftdsl.stages.base import Reporter, StageContext

REPO = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent('''
    """Train a tiny model for tests/test_resume.py: python script.py ROOT OUT.safetensors CONFIG..."""
    import sys
    from pathlib import Path

    import numpy as np
    from safetensors.torch import save_file

    from ftdsl.stages import model as model_stage
    from ftdsl.stages import train as train_stage
    from ftdsl.stages.base import Reporter, StageContext
    from ftdsl.stages.dataset import Dataset, Split
    from ftdsl.stages.tokenizer import train_wordpiece


    class Printer(Reporter):
        def log(self, text):
            print("LOG", text, flush=True)


    def features():
        rng = np.random.default_rng(3)
        def split(n, off):
            y = rng.integers(0, 3, n).astype(np.int64)
            x = (rng.normal(size=(n, 6)) + y[:, None]).astype(np.float32)
            return Split(x, None, y, np.arange(off + 1, off + n + 1))
        tr = split(200, 0)
        ds = Dataset({"train": tr, "valid": split(40, 200)}, "features", (6,), ["a", "b", "c"], 3,
                     tr.features.mean(0), tr.features.std(0), None, "shuffle", None, "resume.csv")
        arch = {"$call": "mlp", "hidden": [32, 16], "dropout": 0.2, "activation": "relu"}
        extra = {"accumulate": 2, "batch": 16, "epochs": 3, "checkpoint_every": 4, "precision": "fp32",
                 "early_stop": {"metric": "valid.loss", "mode": "min", "patience": 100},
                 "schedule": {"$call": "cosine", "warmup": 0.1, "min_lr": 0.0}}
        return ds, arch, 3, extra


    def text(root):
        rng = np.random.default_rng(4)
        words = ["good", "bad", "fine", "awful", "great", "poor", "nice", "dull"]
        texts, labels = [], []
        for i in range(90):
            n = int(rng.integers(1, 9))
            ws = list(rng.choice(words, size=n))
            texts.append("it was " + " ".join(ws))
            labels.append(int(i % 5 == 0))  # imbalanced: the balanced sampler draws from the generator
        y = np.array(labels, np.int64)
        tok = train_wordpiece(texts, 80, Path(root) / "tok")
        ds = Dataset({"train": Split(None, texts, y, np.arange(1, 91))}, "text", None, ["n", "p"], 2,
                     None, None, 16, "balanced", tok, "resume.tsv")
        arch = {"$call": "transformer", "layers": 1, "dim": 16, "heads": 2, "ff": 32, "max_len": 16}
        extra = {"accumulate": 1, "batch": 8, "epochs": 2, "checkpoint_every": 3, "precision": "bf16"}
        return ds, arch, 2, extra


    def main():
        root, out = Path(sys.argv[1]), Path(sys.argv[2])
        for config in sys.argv[3:]:
            ds, arch, k, extra = features() if config == "features" else text(root / config)
            base = root / config
            mctx = StageContext("m", "model", base, base / "out/m", base / "work/m", seed=11, reporter=Printer())
            model = model_stage.run({}, {"pretrained": None, "arch": arch, "task": {"$call": "classify", "labels": k},
                                         "init": "default", "trust_remote_code": False, "revision": None}, mctx)
            attrs = {"model": {"$ref": "m"}, "data": {"$ref": "d"}, "max_steps": None,
                     "optimizer": {"$call": "adamw", "lr": 5e-3, "weight_decay": 0.01},
                     "schedule": {"$call": "linear", "warmup": 2},
                     "loss": {"$call": "cross_entropy", "weights": None, "label_smoothing": 0.0},
                     "clip": 1.0, "compile": False, "freeze": [], "lora": None, "early_stop": None,
                     "eval_every": None, "distributed": "none", "max_length": None, "threads": 1, **extra}
            tctx = StageContext("t", "train", base, base / "out/t", base / "work/t", seed=11, reporter=Printer())
            art = train_stage.run({"model": model, "data": ds}, attrs, tctx)
            save_file(art.state_dict(), str(out.with_suffix(f".{config}.safetensors")))
            print("DONE", config, art.metrics["steps"], flush=True)


    if __name__ == "__main__":
        main()
''')


def _run_script(tmp_path: Path, root: Path, configs: list[str], kill_at: int | None = None):
    script = tmp_path / "train_script.py"
    if not script.exists():
        script.write_text(SCRIPT)
    env = {k: v for k, v in os.environ.items() if k not in (train_stage.KILL_ENV, train_stage.PAUSE_ENV)}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    if kill_at is not None:
        env[train_stage.KILL_ENV] = str(kill_at)
    return subprocess.run([sys.executable, str(script), str(root), str(root / "final"), *configs],
                          capture_output=True, text=True, env=env, timeout=120)


def _assert_bitwise(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), f"{k} differs"


def _curve(path: Path):
    recs = [json.loads(x) for x in path.read_text().splitlines()]
    return [(r["step"], r["split"], r.get("loss")) for r in recs]


def test_sigkill_then_resume_is_bitwise_equal(tmp_path):
    """features: MLP with dropout, accumulation, cosine warmup, early-stop bookkeeping, killed
    mid-epoch 2 (resumes from the step-8 checkpoint, skipping consumed batches). text: a
    transformer on WordPiece ids, bf16 autocast, balanced sampling with length grouping."""
    cases = {"features": (10, 8), "text": (5, 3)}
    ref = _run_script(tmp_path, tmp_path / "ref", list(cases))
    assert ref.returncode == 0, ref.stderr[-3000:]
    for config, (kill_at, resume_from) in cases.items():
        killed = _run_script(tmp_path, tmp_path / "run", [config], kill_at=kill_at)
        assert killed.returncode == -signal.SIGKILL, (killed.returncode, killed.stderr[-3000:])
        assert "DONE" not in killed.stdout
        ckdir = tmp_path / "run" / config / "work" / "t" / "checkpoints"
        steps = sorted(int(p.name.split("-")[1]) for p in ckdir.glob("step-*"))
        assert steps[-1] == resume_from and len(steps) <= 2
    resumed = _run_script(tmp_path, tmp_path / "run", list(cases))  # one process resumes both
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    for config, (_, resume_from) in cases.items():
        assert f"LOG resumed from step {resume_from}" in resumed.stdout
        _assert_bitwise(load_file(str(tmp_path / "ref" / f"final.{config}.safetensors")),
                        load_file(str(tmp_path / "run" / f"final.{config}.safetensors")))
        # the training curve of the resumed run has every step once, with the same losses
        assert _curve(tmp_path / "run" / config / "out/t/metrics.jsonl") == \
            _curve(tmp_path / "ref" / config / "out/t/metrics.jsonl")


# ---------------------------------------------------------------------------------- in-process


class _Log(Reporter):
    def __init__(self):
        self.lines = []

    def log(self, text):
        self.lines.append(text)


def _dataset():
    from ftdsl.stages.dataset import Dataset, Split

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 96).astype(np.int64)
    x = (rng.normal(size=(96, 5)) + y[:, None]).astype(np.float32)
    return Dataset({"train": Split(x, None, y, np.arange(1, 97))}, "features", (5,), ["0", "1"], 2,
                   x.mean(0), x.std(0), None, "shuffle", None, "mem")


def _go(root: Path, lr=1e-2, force_resume=False, hook_at=None):
    ctx_m = StageContext("m", "model", root, root / "out/m", root / "work/m", seed=5)
    model = model_stage.run({}, {"pretrained": None, "arch": {"$call": "mlp", "hidden": [8], "dropout": 0.3,
                                                              "activation": "relu"},
                                 "task": {"$call": "classify", "labels": 2}, "init": "default",
                                 "trust_remote_code": False, "revision": None}, ctx_m)
    attrs = {"model": {"$ref": "m"}, "data": {"$ref": "d"}, "epochs": 2, "max_steps": None, "batch": 16,
             "accumulate": 1, "optimizer": {"$call": "adamw", "lr": lr, "weight_decay": 0.01},
             "schedule": {"$call": "constant", "warmup": 0},
             "loss": {"$call": "cross_entropy", "weights": None, "label_smoothing": 0.0}, "precision": "fp32",
             "clip": None, "compile": False, "freeze": [], "lora": None, "early_stop": None, "eval_every": None,
             "checkpoint_every": 100, "distributed": "none", "max_length": None, "threads": 1}
    ctx = StageContext("t", "train", root, root / "out/t", root / "work/t", seed=5, reporter=_Log(),
                       force_resume=force_resume)
    return train_stage.run({"model": model, "data": _dataset()}, attrs, ctx), ctx


def test_sigterm_checkpoints_and_resumes(tmp_path, monkeypatch):
    ref, _ = _go(tmp_path / "ref")
    calls = {"n": 0}
    real = train_stage._Trainer._step

    def step_then_signal(self, group, step):
        out = real(self, group, step)
        if step == 3:  # arrives mid-step: the step still completes
            os.kill(os.getpid(), signal.SIGTERM)
        calls["n"] += 1
        return out

    monkeypatch.setattr(train_stage._Trainer, "_step", step_then_signal)
    with pytest.raises(train_stage.StageInterrupted) as e:
        _go(tmp_path / "run")
    assert isinstance(e.value, KeyboardInterrupt)
    assert e.value.exit_code == 143 and e.value.step == 3 and calls["n"] == 3
    assert (tmp_path / "run/work/t/checkpoints/step-3").is_dir()
    assert signal.getsignal(signal.SIGTERM) is not None  # handlers restored
    monkeypatch.undo()

    # a changed setting refuses to resume ...
    with pytest.raises(StageError) as e2:
        _go(tmp_path / "run", lr=2e-2)
    assert e2.value.code == "FTP506" and "optimizer.lr: 0.01 -> 0.02" in e2.value.message
    # ... the same settings resume bitwise
    art, ctx = _go(tmp_path / "run")
    assert "resumed from step 3" in ctx.reporter.lines
    _assert_bitwise(ref.state_dict(), art.state_dict())


def test_force_resume_accepts_changed_settings(tmp_path, monkeypatch):
    real = train_stage._Trainer._step

    def step_then_signal(self, group, step):
        out = real(self, group, step)
        if step == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return out

    monkeypatch.setattr(train_stage._Trainer, "_step", step_then_signal)
    with pytest.raises(train_stage.StageInterrupted) as e:
        _go(tmp_path)
    assert e.value.exit_code == 130
    monkeypatch.undo()
    art, ctx = _go(tmp_path, lr=2e-2, force_resume=True)
    assert any("--force-resume" in line for line in ctx.reporter.lines)
    assert "resumed from step 2" in ctx.reporter.lines
    assert art.metrics["steps"] == 12


def test_adalora_resume_is_bitwise_equal(tmp_path, monkeypatch):
    lora = {"$call": "adalora", "r": 8, "target_r": 1, "targets": ["body.1", "body.3"]}

    def go(root):
        ctx_m = StageContext("m", "model", root, root / "out/m", root / "work/m", seed=2)
        model = model_stage.run({}, {"pretrained": None, "arch": {"$call": "mlp", "hidden": [16, 16], "dropout": 0.0,
                                                                  "activation": "relu"},
                                     "task": {"$call": "classify", "labels": 2}, "init": "default",
                                     "trust_remote_code": False, "revision": None}, ctx_m)
        attrs = {"model": {"$ref": "m"}, "data": {"$ref": "d"}, "epochs": 4, "max_steps": None, "batch": 16,
                 "accumulate": 1, "optimizer": {"$call": "adamw", "lr": 1e-2, "weight_decay": 0.0},
                 "schedule": {"$call": "constant", "warmup": 0},
                 "loss": {"$call": "cross_entropy", "weights": None, "label_smoothing": 0.0}, "precision": "fp32",
                 "clip": None, "compile": False, "freeze": [], "lora": lora, "early_stop": None, "eval_every": None,
                 "checkpoint_every": 5, "distributed": "none", "max_length": None, "threads": 1}
        ctx = StageContext("t", "train", root, root / "out/t", root / "work/t", seed=2, reporter=_Log())
        return train_stage.run({"model": model, "data": _dataset()}, attrs, ctx), ctx

    real = train_stage._Trainer._step
    seen: dict[str, dict] = {}

    def recording(tag):
        def step(self, group, n):
            out = real(self, group, n)
            if n == 12:  # the first step after the resume: AdaLoRA's smoothed importance scores
                ra = self.module.net.base_model.rankallocator
                seen[tag] = {k: v.clone() for k, v in ra.exp_avg_ipt.items()}
            return out
        return step

    monkeypatch.setattr(train_stage._Trainer, "_step", recording("ref"))
    ref, _ = go(tmp_path / "ref")

    def step_then_signal(self, group, step):
        out = real(self, group, step)
        if step == 11:  # inside AdaLoRA's budgeting phase (24 steps: tinit 2, tfinal 4)
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    monkeypatch.setattr(train_stage._Trainer, "_step", step_then_signal)
    with pytest.raises(train_stage.StageInterrupted):
        go(tmp_path / "run")
    monkeypatch.setattr(train_stage._Trainer, "_step", recording("run"))
    art, ctx = go(tmp_path / "run")
    monkeypatch.undo()
    assert "resumed from step 11" in ctx.reporter.lines
    _assert_bitwise(seen["ref"], seen["run"])
    _assert_bitwise(ref.state_dict(), art.state_dict())
