"""The `distill` stage: end to end on breast_cancer (the student gets close to the teacher; a
cached re-run does not distill again), the KD loss really drives training (a teacher with
permuted predictions), alpha = 0 is exactly the train stage, resume, text with different
tokenizers, and errors."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from ftdsl.cli import main
from ftdsl.errors import StageError
from ftdsl.stages import distill as distill_stage
from ftdsl.stages import model as model_stage
from ftdsl.stages import train as train_stage
from ftdsl.stages.base import Reporter, StageContext
from ftdsl.stages.dataset import Dataset, Split

PIPE = """\
pipeline kd { seed = 2 }
data d {
  source = sklearn("breast_cancer")
  split = { train = 0.7, valid = 0.15, test = 0.15 }
}
model big { arch = mlp(hidden = [64, 32]), task = classify(labels = 2) }
model small { arch = mlp(hidden = [4]), task = classify(labels = 2) }
train teacher {
  model = big, data = d
  epochs = 8, batch = 32, precision = fp32, optimizer = adamw(lr = 0.005), threads = 1
}
distill student {
  teacher = teacher, student = small, data = d
  temperature = 3, alpha = 0.7
  epochs = 10, batch = 32, precision = fp32, optimizer = adamw(lr = 0.01), threads = 1
}
"""


def _run(p: Path, cache: Path, out: Path) -> tuple[int, dict]:
    code = main(["run", str(p), "--cache", str(cache), "--quiet", "--summary-json", str(out)])
    return code, json.loads(out.read_text())


def test_end_to_end_student_close_to_teacher_and_cached(tmp_path, monkeypatch):
    p = tmp_path / "p.ftp"
    p.write_text(textwrap.dedent(PIPE))
    cache = tmp_path / "cache"
    code, s = _run(p, cache, tmp_path / "s1.json")
    assert code == 0, s
    m = {x["name"]: x["metrics"] for x in s["stages"]}
    teacher, student = m["teacher"], m["student"]
    assert teacher["test.accuracy"] >= 0.9
    assert student["test.accuracy"] >= teacher["test.accuracy"] - 0.06 and student["test.accuracy"] >= 0.88
    assert student["teacher.test.accuracy"] == pytest.approx(teacher["test.accuracy"])
    assert student["test.agreement"] >= 0.9 and "valid.agreement" in student
    out = tmp_path / "out" / "student"
    for f in ("metrics.json", "metrics.jsonl", "curves.png", "distill.json"):
        assert (out / f).is_file(), f
    report = json.loads((out / "distill.json").read_text())
    assert report["temperature"] == 3 and report["alpha"] == 0.7 and report["teacher"] == "teacher"
    assert json.loads((out / "metrics.json").read_text())["teacher.test.accuracy"] == student["teacher.test.accuracy"]
    calls = []
    monkeypatch.setattr(distill_stage, "run", lambda *a, **k: calls.append(1))
    code, s = _run(p, cache, tmp_path / "s2.json")
    assert code == 0 and calls == [] and {x["status"] for x in s["stages"]} == {"cached"}


# --------------------------------------------------------------------------------------------
# Direct calls


def _ctx(tmp_path: Path, name: str, kind: str = "distill", seed: int = 0) -> StageContext:
    return StageContext(name, kind, tmp_path, tmp_path / "out" / name, tmp_path / "work" / name, seed=seed,
                        reporter=Reporter())


def _blobs(k=3, d=6, seed=0, shift_labels=0) -> Dataset:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(k, d)) * 4

    def split(n, off):
        y = rng.integers(0, k, n).astype(np.int64)
        x = (centers[y] + rng.normal(size=(n, d))).astype(np.float32)
        return Split(x, None, ((y + shift_labels) % k).astype(np.int64), np.arange(off + 1, off + n + 1))

    sp = {"train": split(240, 0), "valid": split(60, 240), "test": split(60, 300)}
    tr = sp["train"].features
    return Dataset(sp, "features", (d,), [str(i) for i in range(k)], k, tr.mean(0), tr.std(0), None, "shuffle",
                   None, "blobs.csv")


def _model(tmp_path, hidden, labels=3, arch=None):
    attrs = {"pretrained": None, "arch": arch or {"$call": "mlp", "hidden": hidden, "dropout": 0.0,
                                                  "activation": "relu"},
             "task": {"$call": "classify", "labels": labels}, "init": "default", "trust_remote_code": False,
             "revision": None}
    return model_stage.run({}, attrs, _ctx(tmp_path, "m", "model"))


def _attrs(**kw):
    a = {"teacher": {"$ref": "teach"}, "student": {"$ref": "s"}, "data": {"$ref": "d"}, "temperature": 2.0,
         "alpha": 0.5, "epochs": 4, "max_steps": None, "batch": 32, "accumulate": 1,
         "optimizer": {"$call": "adamw", "lr": 1e-2, "weight_decay": 0.01},
         "schedule": {"$call": "constant", "warmup": 0}, "loss": None, "precision": "fp32", "clip": None,
         "compile": False, "freeze": [], "lora": None, "early_stop": None, "eval_every": None,
         "checkpoint_every": 100, "distributed": "none", "max_length": None, "threads": 1}
    a.update(kw)
    return a


def _teacher(tmp_path, data, name="teach", hidden=(32,), epochs=6, **kw):
    attrs = {k: v for k, v in _attrs(epochs=epochs, **kw).items() if k not in ("teacher", "student", "temperature",
                                                                               "alpha")}
    return train_stage.run({"model": _model(tmp_path, list(hidden), data.num_classes), "data": data}, attrs,
                           _ctx(tmp_path, name, "train"))


def test_kd_loss():
    s = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]], requires_grad=True)
    assert float(distill_stage.kd_loss(s, s.detach(), 2.0).detach()) == pytest.approx(0.0, abs=1e-7)
    t = torch.tensor([[0.0, 3.0, 0.0], [0.0, 0.0, 3.0]])
    loss = distill_stage.kd_loss(s, t, 4.0)
    p_t, log_p_s = torch.softmax(t / 4, -1), torch.log_softmax(s.detach() / 4, -1)
    expected = (p_t * (p_t.log() - log_p_s)).sum(-1).mean() * 16
    assert float(loss.detach()) == pytest.approx(float(expected), rel=1e-5)
    loss.backward()
    assert s.grad[0, 1] < 0 and s.grad[1, 2] < 0  # pulled toward the teacher's classes
    assert float(distill_stage.kd_loss(s.detach(), s.detach() + 1, 2.0, "regress")) == pytest.approx(1.0)


def test_student_follows_the_teacher_not_the_labels(tmp_path):
    """A teacher trained on shifted labels (class c predicted as c+1): with alpha = 1 the student
    learns the teacher's mapping, with alpha = 0 the true labels."""
    data, shifted = _blobs(), _blobs(shift_labels=1)
    teacher = _teacher(tmp_path, shifted)
    assert teacher.metrics["test.accuracy"] >= 0.95  # on its (shifted) labels
    kd = distill_stage.run({"teacher": teacher, "student": _model(tmp_path, [8]), "data": data},
                           _attrs(alpha=1.0), _ctx(tmp_path, "kd"))
    assert kd.metrics["test.agreement"] >= 0.9 and kd.metrics["test.accuracy"] <= 0.15
    assert kd.metrics["teacher.test.accuracy"] <= 0.1  # the teacher, scored on the true labels
    plain = distill_stage.run({"teacher": teacher, "student": _model(tmp_path, [8]), "data": data},
                              _attrs(alpha=0.0), _ctx(tmp_path, "plain"))
    assert plain.metrics["test.accuracy"] >= 0.9 and plain.metrics["test.agreement"] <= 0.15
    # alpha = 0 is the train stage itself: the same loop, bit for bit
    ref = train_stage.run({"model": _model(tmp_path, [8]), "data": data},
                          {k: v for k, v in _attrs().items() if k not in ("teacher", "student", "temperature",
                                                                           "alpha")},
                          _ctx(tmp_path, "ref", "train"))
    for k, v in ref.state_dict().items():
        assert torch.equal(v, plain.state_dict()[k]), k
    assert plain.spec["distilled_from"] == "teach" and plain.spec["distill"] == {"temperature": 2.0, "alpha": 0.0}


def test_resume_after_a_crash_is_bitwise_equal(tmp_path, monkeypatch):
    data = _blobs()
    teacher = _teacher(tmp_path, data, epochs=2)
    attrs = _attrs(epochs=None, max_steps=12, checkpoint_every=3, alpha=0.8, temperature=4.0,
                   schedule={"$call": "cosine", "warmup": 2, "min_lr": 0.0})
    full = distill_stage.run({"teacher": teacher, "student": _model(tmp_path, [8]), "data": data}, attrs,
                             _ctx(tmp_path, "full"))
    real_step = train_stage._Trainer._step

    def crash(self, group, step):
        if step == 8:
            raise RuntimeError("crash")
        return real_step(self, group, step)

    monkeypatch.setattr(train_stage._Trainer, "_step", crash)
    with pytest.raises(RuntimeError):
        distill_stage.run({"teacher": teacher, "student": _model(tmp_path, [8]), "data": data}, attrs,
                          _ctx(tmp_path, "again"))
    monkeypatch.setattr(train_stage._Trainer, "_step", real_step)
    resumed = distill_stage.run({"teacher": teacher, "student": _model(tmp_path, [8]), "data": data}, attrs,
                                _ctx(tmp_path, "again"))
    assert resumed.metrics["steps"] == 12
    for k, v in full.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k


def _text(tmp_path, vocab: int, tag: str, n=96) -> Dataset:
    from ftdsl.stages.tokenizer import train_wordpiece

    rng = np.random.default_rng(0)
    good, bad = ["great", "fine", "lovely", "superb"], ["awful", "bad", "boring", "poor"]
    texts, labels = [], []
    for i in range(n):
        lab = i % 2
        words = list(rng.choice(good if lab else bad, size=int(rng.integers(1, 4))))
        texts.append(" ".join(words) + " was the film")
        labels.append(lab)
    y = np.array(labels, np.int64)
    tok = train_wordpiece(texts, vocab, tmp_path / f"tok-{tag}")
    sp = lambda a, b: Split(None, texts[a:b], y[a:b], np.arange(a + 1, b + 1))  # noqa: E731
    return Dataset({"train": sp(0, 64), "valid": sp(64, 80), "test": sp(80, n)}, "text", None, ["neg", "pos"], 2,
                   None, None, 16, "shuffle", tok, "reviews.csv")


def test_text_teacher_with_another_tokenizer(tmp_path):
    """The teacher reads the texts with its own tokenizer (here another WordPiece vocabulary)."""
    a, b = _text(tmp_path, 50, "a"), _text(tmp_path, 80, "b")
    ta = json.loads((a.tokenizer_dir / "tokenizer.json").read_text())["model"]["vocab"]
    tb = json.loads((b.tokenizer_dir / "tokenizer.json").read_text())["model"]["vocab"]
    assert ta != tb
    arch = {"$call": "transformer", "layers": 1, "dim": 16, "heads": 2, "ff": 32, "max_len": 12, "dropout": 0.0}
    teacher = train_stage.run(
        {"model": _model(tmp_path, None, 2, arch), "data": a},
        {k: v for k, v in _attrs(epochs=8, batch=8).items() if k not in ("teacher", "student", "temperature", "alpha")},
        _ctx(tmp_path, "teach", "train"))
    assert teacher.metrics["valid.accuracy"] >= 0.9
    student_arch = {"$call": "rnn", "cell": "gru", "hidden": 16, "layers": 1, "bidirectional": False}
    kd = distill_stage.run({"teacher": teacher, "student": _model(tmp_path, None, 2, student_arch), "data": b},
                           _attrs(alpha=1.0, epochs=6, batch=8), _ctx(tmp_path, "kd"))
    assert kd.metrics["teacher.valid.accuracy"] >= 0.9  # the teacher still reads the texts right
    assert kd.metrics["valid.agreement"] >= 0.8 and kd.metrics["valid.accuracy"] >= 0.8
    assert kd.tokenizer_dir == b.tokenizer_dir  # the student keeps its own tokenizer


def test_errors_are_ftp510(tmp_path):
    data = _blobs()
    teacher = _teacher(tmp_path, data, epochs=1)
    cases = [
        ({"teacher": _model(tmp_path, [8]), "student": _model(tmp_path, [4]), "data": data}, "untrained"),
        ({"teacher": teacher, "student": _model(tmp_path, [4], labels=4), "data": _blobs(k=4)},
         "classify(labels = 3)"),
        ({"teacher": teacher, "student": _model(tmp_path, [4]), "data": _blobs(d=5)}, "shape"),
    ]
    other = _blobs()
    other.label_names = ["x", "y", "z"]
    cases.append(({"teacher": teacher, "student": _model(tmp_path, [4]), "data": other}, "classes"))
    for inputs, words in cases:
        with pytest.raises(StageError) as e:
            distill_stage.run(inputs, _attrs(epochs=1), _ctx(tmp_path, "bad"))
        assert e.value.code == "FTP510" and words in e.value.message, (words, e.value.message)
