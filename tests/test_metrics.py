"""Metrics against sklearn.metrics, the metrics/curve writers, and device/precision resolution."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn import metrics as skm

from ftdsl.stages import metrics as M


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("k", [2, 3, 7])
def test_classification_metrics_match_sklearn(seed, k):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 200))
    y = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k))
    pred = logits.argmax(1)
    assert M.accuracy(y, pred) == pytest.approx(skm.accuracy_score(y, pred))
    p, r, f1 = M.precision_recall_f1(y, pred)
    assert p == pytest.approx(skm.precision_score(y, pred, average="macro", zero_division=0))
    assert r == pytest.approx(skm.recall_score(y, pred, average="macro", zero_division=0))
    assert f1 == pytest.approx(skm.f1_score(y, pred, average="macro", zero_division=0))
    np.testing.assert_array_equal(M.confusion_matrix(y, pred), skm.confusion_matrix(y, pred))
    np.testing.assert_array_equal(M.confusion_matrix(y, pred, labels=list(range(k))),
                                  skm.confusion_matrix(y, pred, labels=list(range(k))))
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    assert M.cross_entropy(logits, y) == pytest.approx(skm.log_loss(y, probs, labels=list(range(k))), rel=1e-9)
    res = M.classification_metrics(logits, y, k)
    assert set(res) == {"accuracy", "precision", "recall", "f1", "loss"}
    assert res["f1"] == pytest.approx(f1)


def test_degenerate_classes_match_sklearn():
    # a class never predicted and one never true: zero_division -> 0, as sklearn
    y = np.array([0, 0, 1, 1, 2])
    pred = np.array([0, 0, 0, 3, 3])
    for ours, theirs in zip(M.precision_recall_f1(y, pred), (
        skm.precision_score(y, pred, average="macro", zero_division=0),
        skm.recall_score(y, pred, average="macro", zero_division=0),
        skm.f1_score(y, pred, average="macro", zero_division=0),
    )):
        assert ours == pytest.approx(theirs)


@pytest.mark.parametrize("shape", [(50,), (50, 3)])
def test_regression_metrics_match_sklearn(shape):
    rng = np.random.default_rng(5)
    y, p = rng.normal(size=shape), rng.normal(size=shape)
    assert M.mse(y, p) == pytest.approx(skm.mean_squared_error(y, p))
    assert M.mae(y, p) == pytest.approx(skm.mean_absolute_error(y, p))
    res = M.regression_metrics(p, y)
    assert res["loss"] == res["mse"]


def test_metrics_writer_files(tmp_path):
    from ftdsl.stages.outputs import MetricsWriter

    w = MetricsWriter(tmp_path)
    for s in range(1, 6):
        w.log(s, "train", loss=1.0 / s, lr=0.1, samples_per_s=100.0)
    w.log(5, "valid", loss=0.5, accuracy=0.75, f1=float("nan"))
    w.finalize({"valid.accuracy": 0.75, "steps": 5, "bad": float("inf")})
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["split"] for r in lines] == ["train"] * 5 + ["valid"]
    assert lines[-1]["f1"] is None  # NaN is not JSON: written as null
    final = json.loads((tmp_path / "metrics.json").read_text())
    assert final == {"valid.accuracy": 0.75, "steps": 5, "bad": None}
    png = (tmp_path / "curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    # resume: the curve restarts from the checkpointed history, no duplicates
    w2 = MetricsWriter(tmp_path)
    w2.reset(lines[:3], resume_step=3)
    w2.log(4, "train", loss=0.2)
    w2.close()
    steps = [json.loads(x)["step"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]
    assert not list(tmp_path.glob(".*.tmp"))


def test_tensorboard_scalars_read_back(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from ftdsl.stages.outputs import MetricsWriter

    w = MetricsWriter(tmp_path)
    w.log(1, "train", loss=0.9)
    w.log(2, "train", loss=0.7)
    w.close()
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert [e.value for e in acc.Scalars("train/loss")] == pytest.approx([0.9, 0.7])


def test_resolve_precision_and_device():
    import torch

    from ftdsl.errors import StageError
    from ftdsl.runtime.device import cpu_bf16_reason, resolve_device, resolve_precision

    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") in ("cpu", "cuda")
    if not torch.cuda.is_available():
        with pytest.raises(StageError) as e:
            resolve_device("cuda")
        assert "no CUDA device" in e.value.message
    prec, why = resolve_precision("auto", "cpu")
    if cpu_bf16_reason() is None:
        assert prec == "fp32"
    else:
        assert prec == "bf16" and why.startswith("bf16: CPU has ")
    assert resolve_precision("fp16", "cpu") == ("fp16", "fp16: requested")
    with pytest.raises(StageError):
        resolve_precision("fp8", "cpu")
