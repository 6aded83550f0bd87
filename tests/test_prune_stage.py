"""The `prune` stage: magnitude / global / structured pruning made permanent, recovery with fixed
masks, caching (end to end through `ftdsl run`), errors, CNN/transformer targets and a tiny
pretrained BERT."""

from __future__ import annotations

import io
import json
import textwrap
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pytest
import torch

from ftdsl.cli import main
from ftdsl.errors import StageError
from ftdsl.stages import model as model_stage
from ftdsl.stages import prune as prune_stage
from ftdsl.stages.base import Reporter, StageContext
from ftdsl.stages.model import TorchModel, materialize

PIPE = """\
pipeline pr { seed = 1 }
data d {
  source = sklearn("breast_cancer")
  split = { train = 0.7, valid = 0.15, test = 0.15 }
}
model m { arch = mlp(hidden = [32, 16]), task = classify(labels = 2) }
train t { model = m, data = d, epochs = 6, batch = 32, precision = fp32, optimizer = adamw(lr = 0.01), threads = 1 }
prune mag { from = t, method = magnitude(amount = 0.5) }
prune glob { from = t, method = global_magnitude(amount = 0.6) }
prune rows { from = t, method = structured(amount = 0.5, what = units, criterion = l2) }
prune deep { from = t, method = magnitude(amount = 0.9) }
prune rec {
  from = t, method = magnitude(amount = 0.9)
  recover = { epochs = 3, data = d, batch = 32, optimizer = adamw(lr = 0.005) }
}
evaluate r { models = [t, mag, glob, rows, deep, rec], data = d.test, metrics = [accuracy] }
"""

PRUNED = ["net.body.1.weight", "net.body.3.weight"]  # the head (net.head) is left dense


def _plan_keys(p: Path, cache: Path) -> dict[str, str]:
    buf = io.StringIO()
    with redirect_stdout(buf):
        assert main(["plan", str(p), "--cache", str(cache), "--format", "json"]) == 0
    return {s["name"]: s["cache_key"].split(":")[-1] for s in json.loads(buf.getvalue())["stages"]}


def _run(p: Path, cache: Path, out: Path) -> tuple[int, dict]:
    code = main(["run", str(p), "--cache", str(cache), "--quiet", "--summary-json", str(out)])
    return code, json.loads(out.read_text())


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    root = tmp_path_factory.mktemp("prune")
    p = root / "p.ftp"
    p.write_text(textwrap.dedent(PIPE))
    cache = root / "cache"
    code, summary = _run(p, cache, root / "s1.json")
    assert code == 0, summary
    keys = _plan_keys(p, cache)

    def art(name: str) -> TorchModel:
        k = keys[name]
        return TorchModel.load(cache / "entries" / k[:2] / k / "artifact")

    metrics = {s["name"]: s["metrics"] for s in summary["stages"]}
    return {"root": root, "p": p, "cache": cache, "summary": summary, "metrics": metrics, "art": art}


def _sd(art: TorchModel) -> dict[str, torch.Tensor]:
    return art.state_dict()


def test_magnitude_per_layer_is_permanent(pipe):
    sd = _sd(pipe["art"]("mag"))
    assert not [k for k in sd if k.endswith(("_orig", "_mask"))]
    assert sorted(k for k in sd if k.endswith("weight")) == sorted(PRUNED + ["net.head.weight"])
    for k in PRUNED:
        assert float((sd[k] == 0).float().mean()) >= 0.5, k
    assert float((sd["net.head.weight"] == 0).float().mean()) < 0.1  # the head is not pruned
    # the surviving weights are the largest ones of the trained model, unchanged
    dense = _sd(pipe["art"]("t"))
    for k in PRUNED:
        kept = sd[k] != 0
        assert torch.equal(sd[k][kept], dense[k][kept])
        assert dense[k][~kept].abs().max() <= dense[k][kept].abs().min()
    m = pipe["metrics"]["mag"]
    assert m["sparsity"] == pytest.approx(0.5, abs=1e-3) and 0 < m["model_sparsity"] < m["sparsity"]
    report = json.loads((pipe["root"] / "out" / "mag" / "prune.json").read_text())
    assert set(report["layers"]) == set(PRUNED)
    assert all(v["sparsity"] >= 0.5 for v in report["layers"].values())
    assert json.loads((pipe["root"] / "out" / "mag" / "metrics.json").read_text())["sparsity"] == m["sparsity"]
    # the artifact builds and loads like any TorchModel (no hooks, plain keys)
    module = pipe["art"]("mag").build()
    assert not any(getattr(mod, "_forward_pre_hooks", None) for mod in module.modules())


def test_global_magnitude_gives_the_overall_sparsity(pipe):
    sd = _sd(pipe["art"]("glob"))
    zeros = sum(int((sd[k] == 0).sum()) for k in PRUNED)
    total = sum(sd[k].numel() for k in PRUNED)
    assert zeros / total == pytest.approx(0.6, abs=1e-3)
    assert pipe["metrics"]["glob"]["sparsity"] == pytest.approx(0.6, abs=1e-3)
    per_layer = [float((sd[k] == 0).float().mean()) for k in PRUNED]
    assert per_layer[0] != per_layer[1]  # global: uneven across layers


def test_structured_removes_units_and_stores_a_smaller_model(pipe):
    # issue 10 item 4: the units are gone, not zeroed; the spec records the shapes so it reloads
    sd, dense = _sd(pipe["art"]("rows")), _sd(pipe["art"]("t"))
    assert list(dense["net.body.1.weight"].shape) == [32, 30] and list(dense["net.body.3.weight"].shape) == [16, 32]
    assert list(sd["net.body.1.weight"].shape) == [16, 30]  # half of the 32 units of layer 1
    assert list(sd["net.body.3.weight"].shape) == [8, 16]  # half of layer 2's, reading layer 1's survivors
    assert list(sd["net.head.weight"].shape) == [2, 8]  # the head keeps its outputs, loses removed inputs
    n = sum(t.numel() for t in sd.values())
    assert n < 0.5 * sum(t.numel() for t in dense.values())
    m = pipe["metrics"]["rows"]
    assert m["params_after"] < m["params_before"] and m["removed.units"] == 24
    k = _plan_keys(pipe["p"], pipe["cache"])
    entry = lambda name: pipe["cache"] / "entries" / k[name][:2] / k[name] / "artifact" / "model.safetensors"  # noqa: E731
    assert entry("rows").stat().st_size < 0.6 * entry("t").stat().st_size
    report = json.loads((pipe["root"] / "out" / "rows" / "prune.json").read_text())
    assert report["removed"] == {"units": 24} and report["layers"]["body.1"]["kept"] == 16
    # unstructured pruning says plainly that it does not shrink
    assert "keeps its size" in json.loads((pipe["root"] / "out" / "mag" / "prune.json").read_text())["storage"]


def test_pruned_models_evaluate_and_recovery_keeps_zeros(pipe):
    acc = {k.split(".")[0]: v for k, v in pipe["metrics"]["r"].items() if k.endswith(".accuracy")}
    assert acc["t"] >= 0.9
    for name in ("mag", "glob", "rows"):
        assert acc[name] >= 0.8, (name, acc)
    # recovery at 90 %: the zeros stay exactly where pruning put them, and accuracy does not drop
    deep, rec = _sd(pipe["art"]("deep")), _sd(pipe["art"]("rec"))
    for k in PRUNED:
        assert torch.equal(deep[k] == 0, rec[k] == 0), k
        assert not torch.equal(deep[k], rec[k])  # the kept weights were trained
    assert acc["rec"] >= acc["deep"] - 0.02 and acc["rec"] >= 0.85, acc
    m = pipe["metrics"]["rec"]
    assert m["sparsity"] == pipe["metrics"]["deep"]["sparsity"] >= 0.9 - 1e-3
    assert m["test.accuracy"] == pytest.approx(acc["rec"]) and "valid.accuracy" in m and m["recover_steps"] > 0
    assert "before.test.accuracy" in m
    out = pipe["root"] / "out" / "rec"
    assert (out / "metrics.jsonl").is_file() and json.loads((out / "prune.json").read_text())["recovered"]


def test_cached_rerun_does_not_prune_again(pipe, monkeypatch):
    calls = []
    monkeypatch.setattr(prune_stage, "run", lambda *a, **k: calls.append(1))
    code, s = _run(pipe["p"], pipe["cache"], pipe["root"] / "s2.json")
    assert code == 0 and calls == []
    assert {x["status"] for x in s["stages"]} == {"cached"}
    assert {x["name"]: x["metrics"] for x in s["stages"]}["mag"]["sparsity"] == pipe["metrics"]["mag"]["sparsity"]


# --------------------------------------------------------------------------------------------
# Direct calls: errors, other architectures


def _ctx(tmp_path: Path, name="p") -> StageContext:
    return StageContext(name, "prune", tmp_path, tmp_path / "out" / name, tmp_path / "work" / name, seed=0,
                        reporter=Reporter())


def _trained(arch: dict, input_shape=(8,), labels=3, seed=0) -> TorchModel:
    spec = {"source": "arch", "arch": arch, "task": {"$call": "classify", "labels": labels}, "init": "default",
            "modality": "features", "input_shape": list(input_shape), "norm": False, "seed": seed}
    return TorchModel(spec).with_module(materialize(spec, seed=seed))


def _attrs(method: dict, recover=None) -> dict:
    return {"from": {"$ref": "t"}, "method": method, "recover": recover}


def test_untrained_from_and_recover_without_data_are_ftp510(tmp_path):
    untrained = TorchModel({"source": "arch", "arch": {"$call": "mlp", "hidden": [4]},
                            "task": {"$call": "classify", "labels": 2}, "modality": "features"})
    with pytest.raises(StageError) as e:
        prune_stage.run({"from": untrained}, _attrs({"$call": "magnitude", "amount": 0.5}), _ctx(tmp_path))
    assert e.value.code == "FTP510" and "untrained" in e.value.message
    art = _trained({"$call": "mlp", "hidden": [8], "dropout": 0.0, "activation": "relu"})
    rec = {"epochs": 1, "data": None, "batch": 32, "optimizer": {"$call": "adamw", "lr": 1e-3, "weight_decay": 0.0}}
    with pytest.raises(StageError) as e:
        prune_stage.run({"from": art}, _attrs({"$call": "magnitude", "amount": 0.5}, rec), _ctx(tmp_path))
    assert e.value.code == "FTP510" and "recover = { epochs = 1, data = DATA }" in e.value.hint
    with pytest.raises(StageError) as e:
        prune_stage.run({"from": art}, _attrs({"$call": "structured", "amount": 0.5, "what": ["heads"]}),
                        _ctx(tmp_path))
    assert e.value.code == "FTP510" and "not heads" in e.value.message and "what = [units" in e.value.hint


def test_cnn_and_transformer_targets(tmp_path):
    cnn = _trained({"$call": "cnn", "channels": [4, 8], "kernel": 3, "hidden": 16, "dropout": 0.0}, (1, 8, 8), 10)
    out = prune_stage.run({"from": cnn}, _attrs({"$call": "structured", "amount": 0.5, "criterion": "l1"}),
                          _ctx(tmp_path, "c"))
    sd = out.state_dict()
    # Conv2d: half the output channels are gone, and the next layer's inputs with them
    assert [list(sd[k].shape) for k in ("net.features.0.weight", "net.features.3.weight", "net.fc.0.weight",
                                        "net.head.weight")] == [[2, 1, 3, 3], [4, 2, 3, 3], [8, 4 * 2 * 2], [10, 8]]
    assert set(json.loads((tmp_path / "out" / "c" / "prune.json").read_text())["layers"]) == {
        "features.0", "features.3", "fc.0"}
    assert out.build()(torch.randn(3, 1, 8, 8)).shape == (3, 10)
    with pytest.raises(StageError) as e:  # ftdsl's own transformer: no structure to remove (lint: FTP245)
        spec = {"source": "arch", "arch": {"$call": "rnn", "cell": "gru", "hidden": 8, "layers": 1, "embed": 8,
                                           "bidirectional": False, "dropout": 0.0},
                "task": {"$call": "classify", "labels": 2}, "init": "default", "modality": "text",
                "vocab_size": 30, "pad_id": 0, "seed": 0}
        rnn = TorchModel(spec).with_module(materialize(spec, seed=0))
        prune_stage.run({"from": rnn}, _attrs({"$call": "structured", "amount": 0.5}), _ctx(tmp_path, "r"))
    assert e.value.code == "FTP510" and "magnitude" in e.value.hint
    # a from-scratch transformer: Linear layers and attention's packed input projection
    spec = {"source": "arch", "arch": {"$call": "transformer", "layers": 1, "dim": 8, "heads": 2, "ff": 16,
                                       "max_len": 8, "dropout": 0.0},
            "task": {"$call": "classify", "labels": 2}, "init": "default", "modality": "text",
            "vocab_size": 30, "pad_id": 0, "seed": 0}
    tr = TorchModel(spec).with_module(materialize(spec, seed=0))
    out = prune_stage.run({"from": tr}, _attrs({"$call": "global_magnitude", "amount": 0.5}), _ctx(tmp_path, "x"))
    names = set(json.loads((tmp_path / "out" / "x" / "prune.json").read_text())["layers"])
    assert "net.encoder.layers.0.self_attn.in_proj_weight" in names
    assert "net.encoder.layers.0.self_attn.out_proj.weight" in names
    assert not any(n.startswith(("net.head", "net.embed", "net.pos")) for n in names)
    assert out.metrics["sparsity"] == pytest.approx(0.5, abs=1e-3)
    module = out.build()
    ids = torch.randint(1, 30, (2, 6))
    assert torch.isfinite(module(ids, torch.ones_like(ids))).all()


def test_pretrained_bert_like(tmp_path, monkeypatch):
    transformers = pytest.importorskip("transformers")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = tmp_path / "tiny-bert"
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + "the film was great fine awful bad".split()
    folder.mkdir()
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    cfg = transformers.BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1,
                                  num_attention_heads=2, intermediate_size=32, max_position_embeddings=32)
    with model_stage.quiet_transformers():
        torch.manual_seed(0)
        transformers.BertForSequenceClassification(cfg).save_pretrained(folder)
        transformers.AutoTokenizer.from_pretrained(str(folder)).save_pretrained(str(folder))
    m = model_stage.run({}, {"pretrained": str(folder), "arch": None, "task": {"$call": "classify", "labels": 2},
                             "init": "default", "trust_remote_code": False, "revision": None},
                        StageContext("m", "model", tmp_path, tmp_path / "out" / "m", tmp_path / "w", seed=0))
    art = m.with_module(m.build())  # "trained": a pretrained model with its weights
    out = prune_stage.run({"from": art}, _attrs({"$call": "magnitude", "amount": 0.5}), _ctx(tmp_path, "b"))
    sd = out.state_dict()
    assert not [k for k in sd if k.endswith(("_orig", "_mask"))]
    layers = json.loads((tmp_path / "out" / "b" / "prune.json").read_text())["layers"]
    assert "net.bert.encoder.layer.0.attention.self.query.weight" in layers
    assert "net.bert.encoder.layer.0.intermediate.dense.weight" in layers
    assert not any("classifier" in k or "embeddings" in k for k in layers)
    assert all(v["sparsity"] >= 0.5 for v in layers.values())
    before = art.state_dict()
    assert torch.equal(sd["net.classifier.weight"], before["net.classifier.weight"])
    out.save(tmp_path / "saved")
    back = TorchModel.load(tmp_path / "saved")
    tok = back.load_tokenizer()
    enc = tok(["the film was great", "bad"], padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = back.build()(enc["input_ids"], enc["attention_mask"])
    assert logits.shape == (2, 2) and torch.isfinite(logits).all()
    w = back.build().net.bert.encoder.layer[0].output.dense.weight
    assert float((w == 0).float().mean()) >= 0.5
    # recovery of a pretrained model: the zeros of every pruned tensor stay zero
    from ftdsl.stages.dataset import Dataset, Split

    texts = [("great fine" if i % 2 else "awful bad") + " film" for i in range(16)]
    y = np.array([i % 2 for i in range(16)], np.int64)
    ds = Dataset({"train": Split(None, texts, y, np.arange(1, 17)), "valid": Split(None, texts[:4], y[:4],
                                                                                  np.arange(1, 5))},
                 "text", None, ["neg", "pos"], 2, None, None, 16, "shuffle", None, "mem")
    rec = {"epochs": 2, "data": {"$ref": "d"}, "batch": 8,
           "optimizer": {"$call": "adamw", "lr": 1e-2, "weight_decay": 0.01}}
    got = prune_stage.run({"from": art, "recover.data": ds},
                          _attrs({"$call": "structured", "amount": 0.5}, rec),
                          _ctx(tmp_path, "rb"))
    assert got.metrics["recover_steps"] == 4 and "valid.accuracy" in got.metrics
    pruned = prune_stage.run({"from": art}, _attrs({"$call": "structured", "amount": 0.5}),
                             _ctx(tmp_path, "nb")).state_dict()
    after = got.state_dict()
    # structured: a smaller model (1 of 2 heads, 16 of 32 FFN rows), recovered at that size
    assert list(pruned["net.bert.encoder.layer.0.intermediate.dense.weight"].shape) == [16, 16]
    assert list(pruned["net.bert.encoder.layer.0.attention.self.query.weight"].shape) == [8, 16]
    assert {k: v.shape for k, v in after.items()} == {k: v.shape for k, v in pruned.items()}
    assert not torch.equal(after["net.bert.encoder.layer.0.output.dense.weight"],
                           pruned["net.bert.encoder.layer.0.output.dense.weight"])
