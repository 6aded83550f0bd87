"""Structured pruning that shrinks (issue 10 item 4): removed heads, FFN rows, MLP units and CNN
channels give a smaller model that computes what the masked-but-dense model computes (the bias
fold and the head slicing), saves and loads exactly, exports to ONNX, and runs through the CLI."""

from __future__ import annotations

import copy
import io
import json
import textwrap
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pytest
import torch

from ftdsl.cli import main
from ftdsl.stages import nets
from ftdsl.stages import prune_shrink as ps
from ftdsl.stages.base import Reporter, StageContext
from ftdsl.stages.modules import FeaturesModule, TextModule
from ftdsl.stages.torch_model import TorchModel


def _params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def _noisy(m: torch.nn.Module, std: float = 0.3) -> None:
    """Large random weights and biases, so a missing bias fold or a wrong slice shows in the logits."""
    torch.manual_seed(1)
    with torch.no_grad():
        for n, p in m.named_parameters():
            if "LayerNorm" not in n:
                p.normal_(0, std)


def _views(module, amount, parts, criterion="l2"):
    masked, shrunk = copy.deepcopy(module), copy.deepcopy(module)
    ps.mask(masked, ps.plan(masked, amount, parts, criterion))
    record = ps.shrink(shrunk, ps.plan(shrunk, amount, parts, criterion))
    return masked.eval(), shrunk.eval(), record


@pytest.fixture(scope="module")
def tiny_bert():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=64, max_position_embeddings=32, num_labels=2)
    torch.manual_seed(0)
    net = transformers.BertForSequenceClassification(cfg)
    module = TextModule(net, hf=True).eval()
    _noisy(module)
    ids = torch.randint(1, 50, (4, 12))
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0  # padding: a removed head's uniform attention still sums to one
    mask[3, 3:] = 0
    return module, ids, mask


@pytest.mark.parametrize("parts", [("heads", "ffn"), ("heads",), ("ffn",)])
def test_bert_shrunk_equals_masked_dense(tiny_bert, parts):
    module, ids, mask = tiny_bert
    masked, shrunk, record = _views(module, 0.5, parts)
    assert _params(shrunk) < _params(module)
    layer = shrunk.net.bert.encoder.layer[0]
    if "heads" in parts:
        assert layer.attention.self.query.out_features == 16 and layer.attention.output.dense.in_features == 16
        assert layer.attention.self.num_attention_heads == 2 and layer.attention.self.all_head_size == 16
        assert record["heads"] == {f"net.bert.encoder.layer.{i}.attention.self": 2 for i in range(2)}
    if "ffn" in parts:
        assert layer.intermediate.dense.out_features == 32 and layer.output.dense.in_features == 32
        assert shrunk.net.config.intermediate_size == 32  # uniform: the config says it too
        assert module.net.config.intermediate_size == 64  # ... and the source's config is untouched
    with torch.no_grad():
        ref, got, dense = module(ids, mask), masked(ids, mask), shrunk(ids, mask)
    assert (ref - got).abs().max() > 1e-2  # masking changed the function: the comparison below can fail
    assert torch.allclose(dense, got, atol=1e-5), (dense - got).abs().max()


def test_bert_without_the_fold_would_differ(tiny_bert, monkeypatch):
    """The fold matters: removing FFN rows without adding gelu(bias) to the output bias changes the logits."""
    module, ids, mask = tiny_bert
    masked, _, _ = _views(module, 0.5, ("ffn",))
    groups = ps.plan(copy.deepcopy(module), 0.5, ("ffn",))
    for g in groups:
        g.fold = None
    no_fold = copy.deepcopy(module)
    ps.shrink(no_fold, groups)
    with torch.no_grad():
        assert (no_fold(ids, mask) - masked(ids, mask)).abs().max() > 1e-3


def _artifact(module: TextModule) -> TorchModel:
    spec = {"source": "pretrained", "pretrained": "tiny", "task": {"$call": "classify", "labels": 2},
            "modality": "text"}
    return TorchModel(spec, None, hf_config=module.net.config).with_module(module)


def test_bert_save_load_round_trip_and_onnx(tiny_bert, tmp_path):
    module, ids, mask = tiny_bert
    src = _artifact(module)
    shrunk = src.build()
    record = ps.shrink(shrunk, ps.plan(shrunk, 0.5, ("heads", "ffn")))
    art = src.with_module(shrunk, shrunk=record)
    art.save(tmp_path / "a")
    assert (tmp_path / "a" / "model.safetensors").stat().st_size < 0.85 * sum(
        t.numel() * 4 for t in src.state_dict().values())
    back = TorchModel.load(tmp_path / "a")  # validates every tensor's shape against the rebuilt skeleton
    assert {k: tuple(v.shape) for k, v in back.state_dict().items()} == {
        k: tuple(v.shape) for k, v in shrunk.state_dict().items()}
    rebuilt = back.build()
    with torch.no_grad():
        want = shrunk(ids, mask)
        assert torch.equal(rebuilt(ids, mask), want)
    # ONNX of the shrunk model (export via torch.onnx like the export stage) agrees with onnxruntime
    ort = pytest.importorskip("onnxruntime")
    path = tmp_path / "m.onnx"
    from ftdsl.stages.onnx_utils import export_onnx

    proto, _, _ = export_onnx(rebuilt, (ids, mask), input_names=["input_ids", "attention_mask"], opset=18, max_seq=32)
    path.write_bytes(proto.SerializeToString())
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {i.name: t.numpy() for i, t in zip(sess.get_inputs(), (ids, mask))})[0]
    np.testing.assert_allclose(got, want.numpy(), atol=1e-4)


@pytest.mark.parametrize("net,shape", [
    (lambda: nets.MLP((20,), 3, hidden=[16, 12], dropout=0.1, activation="gelu"), (20,)),
    (lambda: nets.CNN((2, 8, 8), 3, channels=[6, 8], kernel=3, hidden=10, dropout=0.1), (2, 8, 8)),
    (lambda: nets.CNN((16,), 3, channels=[6], kernel=3, hidden=10, dropout=0.0), (16,)),
], ids=["mlp", "cnn2d", "cnn1d"])
def test_mlp_units_and_cnn_channels_shrunk_equal_masked(net, shape):
    torch.manual_seed(0)
    module = FeaturesModule(net(), shape).eval()
    _noisy(module, 0.5)
    masked, shrunk, record = _views(module, 0.5, ("units", "channels"), "l1")
    assert _params(shrunk) < 0.6 * _params(module)
    x = torch.randn(6, *shape)
    with torch.no_grad():
        assert (module(x) - masked(x)).abs().max() > 1e-2
        assert torch.allclose(shrunk(x), masked(x), atol=1e-5)
    # the record rebuilds the shapes on a fresh module: the weights load strictly
    fresh = FeaturesModule(copy.deepcopy(net()), shape).eval()
    ps.apply_record(fresh, record)
    fresh.load_state_dict(shrunk.state_dict(), strict=True)
    with torch.no_grad():
        assert torch.equal(fresh(x), shrunk(x))


def test_batchnorm_channels_are_removed_with_their_conv():
    class BNNet(torch.nn.Module):  # an ftdsl-like chain with BatchNorm: detected as a chain net
        def __init__(self):
            super().__init__()
            self.features = torch.nn.Sequential(torch.nn.Conv2d(1, 6, 3, padding=1), torch.nn.BatchNorm2d(6),
                                                torch.nn.ReLU(), torch.nn.Conv2d(6, 4, 3, padding=1),
                                                torch.nn.ReLU(), torch.nn.Flatten())
            self.head = torch.nn.Linear(4 * 5 * 5, 2)

        def forward(self, x):
            return self.head(self.features(x))

    BNNet.__module__ = "ftdsl.stages.nets"
    BNNet.__name__ = "CNN"
    torch.manual_seed(0)
    module = BNNet()
    _noisy(module, 0.5)
    with torch.no_grad():
        module.features[1].running_mean.normal_()
        module.features[1].running_var.uniform_(0.5, 2)
    module.eval()
    masked, shrunk, _ = _views(module, 0.5, ("channels",))
    assert shrunk.features[1].num_features == 3 and shrunk.features[1].running_mean.shape == (3,)
    x = torch.randn(3, 1, 5, 5)
    with torch.no_grad():
        assert torch.allclose(shrunk(x), masked(x), atol=1e-5)


# --------------------------------------------------------------------------------------------
# Through the CLI

PIPE = """\
pipeline shrink { seed = 1 }
data d {
  source = sklearn("breast_cancer")
  split = { train = 0.7, valid = 0.15, test = 0.15 }
}
model m { arch = mlp(hidden = [64, 32]), task = classify(labels = 2) }
train t { model = m, data = d, epochs = 4, batch = 32, precision = fp32, optimizer = adamw(lr = 0.01), threads = 1 }
prune small { from = t, method = structured(amount = 0.5), recover = { epochs = 1, data = d } }
export e { from = small, format = onnx(), verify = true }
quantize q { from = e, method = dynamic() }
quantize qt { from = small, method = dynamic() }
evaluate r { models = [t, small, e, q, qt], data = d.test, metrics = [accuracy] }
"""


def test_cli_prune_stage_writes_a_smaller_model_that_exports(tmp_path):
    p = tmp_path / "p.ftp"
    p.write_text(textwrap.dedent(PIPE))
    cache = tmp_path / "cache"
    assert main(["run", str(p), "--cache", str(cache), "--quiet", "--summary-json", str(tmp_path / "s.json")]) == 0
    buf = io.StringIO()
    with redirect_stdout(buf):
        assert main(["plan", str(p), "--cache", str(cache), "--format", "json"]) == 0
    keys = {s["name"]: s["cache_key"].split(":")[-1] for s in json.loads(buf.getvalue())["stages"]}

    def entry(name: str) -> Path:
        return cache / "entries" / keys[name][:2] / keys[name] / "artifact"

    size_t = (entry("t") / "model.safetensors").stat().st_size
    size_small = (entry("small") / "model.safetensors").stat().st_size
    assert size_small < 0.5 * size_t  # half the units of both hidden layers
    spec = json.loads((entry("small") / "spec.json").read_text())
    assert spec["shrunk"]["tensors"]["net.body.1.weight"] == [32, 30]
    metrics = {s["name"]: s["metrics"] for s in json.loads((tmp_path / "s.json").read_text())["stages"]}
    assert metrics["e"]["verify.max_abs_diff"] < 1e-4  # the ONNX export of the shrunk model verifies
    acc = {k.split(".")[0]: v for k, v in metrics["r"].items() if k.endswith(".accuracy")}
    assert set(acc) == {"t", "small", "e", "q", "qt"} and acc["small"] >= 0.85
    assert acc["e"] == pytest.approx(acc["small"]) and acc["qt"] >= acc["small"] - 0.05  # quantized in ORT and torch
    report = json.loads((tmp_path / "out" / "small" / "prune.json").read_text())
    assert report["removed"] == {"units": 48} and report["family"] == "chain"
    back = TorchModel.load(entry("small"))  # reloads at its shrunk size
    assert back.build().net.body[1].out_features == 32


def test_lint_structured_on_an_arch_without_structure_is_ftp245(tmp_path, capsys):
    p = tmp_path / "p.ftp"
    p.write_text(textwrap.dedent("""\
        data d { source = sklearn("iris") }
        model m { arch = mlp(hidden = [16]), task = classify(labels = 3) }
        train t { model = m, data = d, epochs = 1 }
        prune a { from = t, method = structured(amount = 0.3, what = heads) }
        prune b { from = t, method = structured(amount = 0.3, what = units) }
        """))
    assert main(["lint", str(p)]) == 1
    out = capsys.readouterr()
    text = out.out + out.err
    assert text.count("FTP245") == 1 and "`prune a`" in text and "no heads" in text and "what = [units]" in text


def test_lint_hf_export_of_a_head_pruned_model_is_ftp243(tmp_path, capsys):
    """What the export stage refuses at run time (FTP530 below) lint already knows from the text."""
    p = tmp_path / "p.ftp"
    p.write_text(textwrap.dedent("""\
        data d { source = csv("sst2.csv", text = "sentence") }
        model m { pretrained = "minilm", task = classify(labels = 2) }
        train t { model = m, data = d, epochs = 1 }
        prune heads { from = t, method = structured(amount = 0.3) }
        prune ffn { from = t, method = structured(amount = 0.3, what = ffn) }
        export a { from = heads, format = hf() }
        export b { from = ffn, format = hf() }
        export c { from = heads, format = onnx() }
        """))
    (tmp_path / "sst2.csv").write_text("sentence,label\ngood,1\nbad,0\n")
    main(["lint", str(p)])
    out = capsys.readouterr()
    text = out.out + out.err
    assert text.count("FTP243") == 1 and "`export a`" in text and "attention heads" in text


def test_hf_export_of_shrunk_ffn_reloads_and_of_removed_heads_is_refused(tmp_path):
    """`format = hf`: FFN rows removed evenly are a config change (`intermediate_size`), so the folder
    reloads with transformers; removed heads are not expressible in a config (FTP530, not a folder
    that would rebuild every head)."""
    transformers = pytest.importorskip("transformers")
    from ftdsl.errors import StageError
    from ftdsl.stages import export
    from ftdsl.stages import model as model_stage
    from ftdsl.stages.tokenizer import train_wordpiece

    folder = tmp_path / "bert"
    texts = [f"the {a} was {b}" for a in ("film", "book", "song") for b in ("good", "bad", "fine")]
    train_wordpiece(texts, 60, folder, max_length=16)
    vocab = json.loads((folder / "tokenizer.json").read_text())["model"]["vocab"]
    cfg = transformers.BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1,
                                  num_attention_heads=2, intermediate_size=32, max_position_embeddings=16)
    transformers.BertForSequenceClassification(cfg).save_pretrained(folder)
    ctx = StageContext(name="m", kind="model", pipeline_dir=tmp_path, out_dir=tmp_path / "o-m",
                       work_dir=tmp_path / "w")
    base = model_stage.run({}, {"pretrained": "bert", "task": {"$call": "classify", "labels": 2}}, ctx)
    src = base.with_module(base.build())
    for parts, ok in ((("ffn",), True), (("heads", "ffn"), False)):
        module = src.build()
        _noisy(module)
        art = src.with_module(module, shrunk=ps.shrink(module, ps.plan(module, 0.5, parts)))
        name = "-".join(parts)
        ectx = StageContext(name=name, kind="export", pipeline_dir=tmp_path, out_dir=tmp_path / f"o-{name}",
                            work_dir=tmp_path / "w", reporter=Reporter())
        attrs = {"from": {"$ref": "p"}, "format": {"$call": "hf"}, "verify": True}
        if not ok:
            with pytest.raises(StageError) as e:
                export.run({"from": art}, attrs, ectx)
            assert e.value.code == "FTP530" and "heads" in e.value.message and "safetensors" in e.value.hint
            continue
        out = export.run({"from": art}, attrs, ectx)
        back = transformers.AutoModelForSequenceClassification.from_pretrained(str(out.path)).eval()
        assert back.config.intermediate_size == 16
        ids = torch.tensor([[2, 5, 6, 7, 3]])
        with torch.no_grad():
            want = art.build()(ids, torch.ones_like(ids))
            got = back(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
        np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-5)
