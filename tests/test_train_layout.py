"""The train stage feeds image models channels-last (NHWC) batches on the CPU, oneDNN's faster
layout (the quickstart CNN's step: 0.89x -> 1.07x a hand loop per CPU-second,
docs/benchmarks.md). Only the memory order changes: the values, the trained weights (up to float
rounding) and bitwise resume stay what they were."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from ftdsl.stages import model as model_stage
from ftdsl.stages import train as train_stage
from ftdsl.stages.base import Reporter, StageContext
from ftdsl.stages.batching import channels_last
from ftdsl.stages.dataset import Dataset, Split


class _Log(Reporter):
    def __init__(self):
        self.lines = []

    def log(self, text):
        self.lines.append(text)


def _images(channels: int, n: int = 72, seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)

    def split(m, off):
        y = rng.integers(0, 3, m).astype(np.int64)
        x = (rng.normal(size=(m, channels, 8, 8)) + y[:, None, None, None]).astype(np.float32)
        return Split(x, None, y, np.arange(off + 1, off + m + 1, dtype=np.int64))

    tr = split(n, 0)
    return Dataset({"train": tr, "valid": split(24, n)}, "features", (channels, 8, 8), ["a", "b", "c"], 3,
                   tr.features.mean(0), tr.features.std(0), None, "shuffle", None, "images.npy")


def _go(root: Path, data: Dataset, **kw):
    ctx_m = StageContext("m", "model", root, root / "out/m", root / "work/m", seed=3)
    model = model_stage.run({}, {"pretrained": None, "arch": {"$call": "cnn", "channels": [8, 16], "kernel": 3,
                                                              "hidden": 16, "dropout": 0.2},
                                 "task": {"$call": "classify", "labels": 3}, "init": "default",
                                 "trust_remote_code": False, "revision": None}, ctx_m)
    attrs = {"model": {"$ref": "m"}, "data": {"$ref": "d"}, "epochs": 2, "max_steps": None, "batch": 16,
             "accumulate": 1, "optimizer": {"$call": "adamw", "lr": 1e-2, "weight_decay": 0.01},
             "schedule": {"$call": "cosine", "warmup": 0.1, "min_lr": 0.0},
             "loss": {"$call": "cross_entropy", "weights": None, "label_smoothing": 0.0}, "precision": "fp32",
             "clip": 1.0, "compile": False, "freeze": [], "lora": None, "early_stop": None, "eval_every": None,
             "checkpoint_every": 100, "distributed": "none", "max_length": None, "threads": 1, **kw}
    ctx = StageContext("t", "train", root, root / "out/t", root / "work/t", seed=3, reporter=_Log())
    return train_stage.run({"model": model, "data": data}, attrs, ctx), ctx


def test_channels_last_keeps_values_and_is_free_for_one_channel():
    one = torch.arange(2 * 1 * 3 * 4, dtype=torch.float32).reshape(2, 1, 3, 4)
    v = channels_last(one)
    assert torch.equal(v, one) and v.data_ptr() == one.data_ptr()  # a view: no copy
    assert v.stride() == (12, 1, 4, 1)  # NHWC strides, which .contiguous(memory_format=) would not give
    three = torch.randn(2, 3, 5, 4)
    c = channels_last(three)
    assert torch.equal(c, three) and c.is_contiguous(memory_format=torch.channels_last) and not c.is_contiguous()
    flat = torch.randn(4, 6)
    assert channels_last(flat) is flat


@pytest.mark.parametrize("channels", [1, 3])
def test_convolutions_see_channels_last_in_training_and_evaluation(tmp_path, channels):
    seen = []

    def hook(module, args, output):
        if isinstance(module, torch.nn.Conv2d):
            seen.append((torch.is_grad_enabled(), args[0].stride(), output.is_contiguous(), output.is_contiguous(
                memory_format=torch.channels_last)))

    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    try:
        art, _ = _go(tmp_path, _images(channels))
    finally:
        handle.remove()
    assert art.metrics["steps"] == 10
    assert {g for g, *_ in seen} == {True, False}  # training steps and the valid evaluations
    for _, in_stride, nchw, nhwc in seen:
        assert in_stride[1] == 1, in_stride  # the channel is the innermost dimension
        assert nhwc and not nchw  # so oneDNN writes NHWC outputs (8 or 16 channels: unambiguous)


def test_layout_changes_no_result(tmp_path, monkeypatch):
    """The same run in NCHW order (the layout before) ends at the same weights up to float rounding."""
    data = _images(3)
    nhwc, _ = _go(tmp_path / "nhwc", data)
    monkeypatch.setattr(train_stage, "channels_last", lambda x: x)
    nchw, _ = _go(tmp_path / "nchw", data)
    a, b = nhwc.state_dict(), nchw.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)
    assert nhwc.metrics["valid.accuracy"] == nchw.metrics["valid.accuracy"]


def test_cnn_sigterm_resume_is_bitwise_equal(tmp_path, monkeypatch):
    data = _images(1)
    ref, _ = _go(tmp_path / "ref", data)
    real = train_stage._Trainer._step

    def step_then_signal(self, group, step):
        out = real(self, group, step)
        if step == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    monkeypatch.setattr(train_stage._Trainer, "_step", step_then_signal)
    with pytest.raises(train_stage.StageInterrupted):
        _go(tmp_path / "run", data)
    monkeypatch.undo()
    art, ctx = _go(tmp_path / "run", data)
    assert "resumed from step 3" in ctx.reporter.lines
    a, b = ref.state_dict(), art.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs"
