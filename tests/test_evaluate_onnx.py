"""`evaluate { models = [t, e] }` with a TorchModel and its ONNX export (onnxruntime), for a
features MLP and a from-scratch text transformer; and the text export itself (input_ids +
attention_mask, tokenizer shipped beside the model, `verify = { data = d.test }`).
"""

from __future__ import annotations

import csv
import io
import json
import random
import textwrap
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pytest

from ftdsl.cli import main

TINY = """\
pipeline tiny { seed = 3 }
data d {
  source = synthetic(task = classify, n = 240, features = 8, classes = 3, seed = 1)
  split = { train = 0.7, valid = 0.15, test = 0.15 }
}
model m { arch = mlp(hidden = [16]), task = classify(labels = 3) }
train t { model = m, data = d, max_steps = 24, batch = 16, optimizer = adamw(lr = 0.01), precision = fp32 }
export e { from = t, format = onnx(opset = 17), verify = true }
evaluate r { models = [t, e], data = d.test, metrics = [accuracy, f1, precision, recall, loss, latency, size] }
"""

TEXT = """\
pipeline txt { seed = 5 }
data d {
  source = csv("texts.csv")
  text = "text", label = "label"
  split = { train = 0.7, valid = 0.15, test = 0.15 }
  tokenizer = wordpiece(vocab = 200)
  max_length = 24
}
model m { arch = transformer(layers = 1, dim = 16, heads = 2, ff = 32, max_len = 32), task = classify(labels = 2) }
train t { model = m, data = d, max_steps = 6, batch = 8, precision = fp32 }
export e { from = t, format = onnx(opset = 17), verify = { data = d.test, atol = 1e-5 } }
evaluate r { models = [t, e], data = d.test, metrics = [accuracy, f1, loss, latency, size] }
"""


def write_sentences(folder: Path, n: int = 60) -> None:
    rnd = random.Random(0)
    pos, neg = ["good", "great", "lovely", "fine", "superb"], ["bad", "awful", "poor", "sad", "boring"]
    nouns = ["movie", "film", "book", "meal", "song", "show", "day"]
    with open(folder / "texts.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        for i in range(n):
            words = ["the", rnd.choice(nouns), "was", rnd.choice(pos if i % 2 else neg)]
            words += [rnd.choice(nouns + ["and", "very", "really"]) for _ in range(rnd.randint(0, 8))]
            w.writerow([" ".join(words), i % 2])


def run_pipeline(p: Path, cache: Path) -> tuple[int, dict]:
    summary = p.parent / f"summary-{p.stem}.json"
    code = main(["run", str(p), "--cache", str(cache), "--quiet", "--summary-json", str(summary)])
    return code, {s["name"]: s for s in json.loads(summary.read_text())["stages"]}


def entries(p: Path, cache: Path) -> dict[str, Path]:
    buf = io.StringIO()
    with redirect_stdout(buf):
        assert main(["plan", str(p), "--cache", str(cache), "--format", "json"]) == 0
    keys = {s["name"]: s["cache_key"].split(":")[1] for s in json.loads(buf.getvalue())["stages"]}
    return {n: cache / "entries" / k[:2] / k for n, k in keys.items()}


def _pipeline(root: Path, text: str) -> dict:
    p = root / "p.ftp"
    p.write_text(textwrap.dedent(text))
    cache = root / "cache"
    code, stages = run_pipeline(p, cache)
    assert code == 0, stages
    rep = json.loads((root / "out" / "r" / "report.json").read_text())
    return {"root": root, "p": p, "cache": cache, "stages": stages, "entries": entries(p, cache),
            "rows": {r["model"]: r for r in rep["rows"]}}


@pytest.fixture(scope="module")
def feat(tmp_path_factory):
    return _pipeline(tmp_path_factory.mktemp("feat"), TINY)


@pytest.fixture(scope="module")
def text(tmp_path_factory):
    root = tmp_path_factory.mktemp("text")
    write_sentences(root)
    return _pipeline(root, TEXT)


def _same_quality(rows: dict, keys) -> None:
    t, e = rows["t"], rows["e"]
    for k in keys:
        assert e[k] == pytest.approx(t[k], abs=1e-9 if k != "loss" else 1e-5), k


def test_features_torch_and_onnx_agree(feat):
    rows = feat["rows"]
    _same_quality(rows, ("accuracy", "f1", "precision", "recall", "loss"))
    onnx_file = feat["root"] / "out" / "e" / "model.onnx"
    assert rows["e"]["size_mb"] == pytest.approx(onnx_file.stat().st_size / 1e6)
    assert rows["t"]["params"] == 195 and "params" not in rows["e"]
    for r in rows.values():
        assert r["latency_ms"] > 0 and r["latency_ms_per_row"] > 0
    md = (feat["root"] / "out" / "r" / "report.md").read_text()
    assert "| t |" in md and "| e |" in md and "params" in md
    assert feat["stages"]["r"]["metrics"]["e.accuracy"] == rows["e"]["accuracy"]


def test_features_accuracy_equals_an_independent_onnxruntime_run(feat):
    from ftdsl.stages.dataset import Dataset
    from ftdsl.stages.export import OnnxModel

    test = Dataset.load(feat["entries"]["d"] / "artifact").splits["test"]
    art = OnnxModel.load(feat["entries"]["e"] / "artifact")
    pred = art.predict({"x": test.features}).argmax(1)
    assert feat["rows"]["e"]["accuracy"] == pytest.approx(float((pred == test.labels).mean()), abs=1e-12)


def test_text_torch_and_onnx_agree(text):
    _same_quality(text["rows"], ("accuracy", "f1", "loss"))
    assert text["rows"]["e"]["latency_ms"] > 0 and text["rows"]["e"]["size_mb"] > 0


def test_text_export_takes_ids_and_mask_and_ships_the_tokenizer(text):
    import onnx
    import torch

    from ftdsl.stages.export import OnnxModel
    from ftdsl.stages.model import TorchModel

    out = text["root"] / "out" / "e"
    assert (out / "tokenizer" / "tokenizer.json").is_file()
    proto = onnx.load(str(out / "model.onnx"))
    assert [i.name for i in proto.graph.input] == ["input_ids", "attention_mask"]
    dims = [[d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in proto.graph.input]
    assert dims[0] == dims[1] and all(isinstance(d, str) for d in dims[0])  # dynamic batch and length
    art = OnnxModel.load(text["entries"]["e"] / "artifact")
    assert art.inputs == ["input_ids", "attention_mask"] and art.modality == "text"
    assert art.tokenizer_dir is not None and art.tokenizer_dir.parent == art.onnx_path.parent
    tok = art.load_tokenizer()  # from the artifact, not from the data
    module = TorchModel.load(text["entries"]["t"] / "artifact").build()
    for sents in (["the film was great"], ["the meal was awful and very boring", "a good day", "the song was fine"]):
        enc = tok(sents, padding=True, return_tensors="np", return_token_type_ids=False)
        got = art.predict({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]})
        with torch.no_grad():
            want = module(torch.from_numpy(enc["input_ids"]).long(), torch.from_numpy(enc["attention_mask"]).long())
        assert got.shape == (len(sents), 2)
        np.testing.assert_allclose(got, want.numpy(), atol=1e-5, rtol=0)
    v = json.loads((out / "verify.json").read_text())
    assert v["passed"] and v["data"] == "d.test" and v["atol"] == 1e-5 and v["rows"] > 1
    assert v["batch_sizes"][0] == 1


def test_text_random_verification_inputs_are_valid(text):
    from ftdsl.stages.export import random_batches
    from ftdsl.stages.model import TorchModel

    model = TorchModel.load(text["entries"]["t"] / "artifact")
    module = model.build()
    batches = random_batches(model, module, seed=0)
    assert len({b["input_ids"].shape[0] for b in batches}) == 3
    vocab, pad = model.spec["vocab_size"], model.spec["pad_id"]
    for b in batches:
        ids, mask = b["input_ids"], b["attention_mask"]
        assert ids.shape == mask.shape and int(ids.max()) < vocab and int(ids.min()) >= 0
        assert ids.shape[1] <= model.spec["max_length"]
        assert bool((mask.sum(1) >= 1).all()) and bool((ids[mask == 0] == pad).all())
    # and the exported graph agrees with PyTorch on them
    from ftdsl.stages.export import OnnxModel, verify_onnx

    p = verify_onnx(OnnxModel.load(text["entries"]["e"] / "artifact"), module, batches, atol=1e-5, rtol=0)
    assert p.ok and p.rows == sum(b["input_ids"].shape[0] for b in batches)
