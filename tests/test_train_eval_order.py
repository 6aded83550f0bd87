"""The train stage evaluates text longest-first (batches pad little: SST-2's dev set 1.8x faster,
docs/benchmarks.md "Where the time goes"); its metrics are those of the rows one by one, in
file order, without any padding."""

from __future__ import annotations

import numpy as np
import torch

from ftdsl.stages import model as model_stage
from ftdsl.stages import train as train_stage
from ftdsl.stages.base import Reporter, StageContext
from ftdsl.stages.batching import batch_indices
from ftdsl.stages.dataset import Dataset, Split
from ftdsl.stages.tokenizer import train_wordpiece


def test_by_length_is_longest_first_and_keeps_every_row():
    lengths = np.array([3, 9, 1, 9, 5, 2, 7])
    got = batch_indices(7, batch_size=3, shuffle=False, generator=None, lengths=lengths, by_length=True)
    flat = np.concatenate(got)
    assert sorted(flat.tolist()) == list(range(7))
    assert flat.tolist() == [1, 3, 6, 4, 0, 5, 2]  # longest first, ties in file order
    plain = batch_indices(7, batch_size=3, shuffle=False, generator=None, lengths=lengths)
    assert np.concatenate(plain).tolist() == list(range(7))  # predict / distill keep file order


def test_text_metrics_equal_row_by_row_evaluation(tmp_path):
    rng = np.random.default_rng(2)
    good, bad = ["great", "fine", "superb", "warm"], ["awful", "dull", "poor", "cold"]
    texts, labels = [], []
    for i in range(120):
        lab = i % 2
        # lengths 1..12 words: file-order batches would pad the short rows a lot
        texts.append("the film was " + " ".join(rng.choice(good if lab else bad, size=int(rng.integers(1, 13)))))
        labels.append(lab)
    y = np.array(labels, np.int64)
    tok = train_wordpiece(texts, 60, tmp_path / "tok")
    sp = lambda a, b: Split(None, texts[a:b], y[a:b], np.arange(a + 1, b + 1))  # noqa: E731
    ds = Dataset({"train": sp(0, 80), "test": sp(80, 120)}, "text", None, ["neg", "pos"], 2, None, None, 24,
                 "shuffle", tok, "reviews.csv")
    mctx = StageContext("m", "model", tmp_path, tmp_path / "out/m", tmp_path / "work/m", seed=0)
    model = model_stage.run({}, {"pretrained": None, "arch": {"$call": "transformer", "layers": 1, "dim": 16,
                                                              "heads": 2, "ff": 32, "max_len": 24},
                                 "task": {"$call": "classify", "labels": 2}, "init": "default",
                                 "trust_remote_code": False, "revision": None}, mctx)
    attrs = {"model": {"$ref": "m"}, "data": {"$ref": "d"}, "epochs": 2, "max_steps": None, "batch": 16,
             "accumulate": 1, "optimizer": {"$call": "adamw", "lr": 1e-2, "weight_decay": 0.01},
             "schedule": {"$call": "constant", "warmup": 0},
             "loss": {"$call": "cross_entropy", "weights": None, "label_smoothing": 0.0}, "precision": "fp32",
             "clip": None, "compile": False, "freeze": [], "lora": None, "early_stop": None, "eval_every": None,
             "checkpoint_every": 100, "distributed": "none", "max_length": None, "threads": 1}
    ctx = StageContext("t", "train", tmp_path, tmp_path / "out/t", tmp_path / "work/t", seed=0, reporter=Reporter())
    art = train_stage.run({"model": model, "data": ds}, attrs, ctx)

    # independent: the trained artifact, one unpadded row at a time, in file order
    art.save(tmp_path / "a")
    back = model_stage.TorchModel.load(tmp_path / "a")
    net, wp = back.build().eval(), back.load_tokenizer()
    logits = []
    with torch.no_grad():
        for text in texts[80:]:
            enc = wp([text], return_tensors="pt", truncation=True, max_length=24)
            logits.append(net(enc["input_ids"], enc["attention_mask"])[0])
    logits = torch.stack(logits)
    target = torch.from_numpy(y[80:])
    assert art.metrics["test.accuracy"] == float((logits.argmax(1) == target).float().mean())
    assert abs(art.metrics["test.loss"] - float(torch.nn.functional.cross_entropy(logits, target))) < 1e-5
