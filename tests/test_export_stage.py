"""The `export` stage end to end on the TINY MLP: ONNX, the other formats, verification, and
faults (F14: a perturbed ONNX initializer is FTP502, exit 3; F9: a file-size limit during the
export is FTP505, exit 4, no partial cache entry).

One pipeline run is shared by the tests (a module-scoped fixture), so the file stays fast on 2
CPU cores. The text model's export (input_ids + attention_mask, tokenizer beside the file) is
tested in test_evaluate_onnx.py, which trains a text model anyway.
"""

from __future__ import annotations

import io
import json
import resource
import signal
import subprocess
import sys
import textwrap
import warnings
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pytest

from ftdsl.cli import main

from spec_example import TINY  # noqa: E402

FEATURES = TINY + """
export e { from = t, format = onnx(opset = 17), verify = true }
export ev { from = t, format = onnx(opset = 17), verify = { data = d.test, atol = 1e-5 }, path = "exports/tiny.onnx" }
export ts { from = t, format = torchscript, verify = true }
export p2 { from = t, format = pt2, verify = { data = d.test } }
export st { from = t, format = safetensors, verify = true }
"""

# --------------------------------------------------------------------------------------------
# helpers


def run_pipeline(p: Path, cache: Path, *extra) -> tuple[int, dict]:
    summary = p.parent / f"summary-{p.stem}.json"
    code = main(["run", str(p), "--cache", str(cache), "--quiet", "--summary-json", str(summary), *extra])
    return code, {s["name"]: s for s in json.loads(summary.read_text())["stages"]}


def entries(p: Path, cache: Path) -> dict[str, Path]:
    """Stage name -> its cache entry folder (which may not exist)."""
    buf = io.StringIO()
    with redirect_stdout(buf):
        assert main(["plan", str(p), "--cache", str(cache), "--format", "json"]) == 0
    keys = {s["name"]: s["cache_key"].split(":")[1] for s in json.loads(buf.getvalue())["stages"]}
    return {n: cache / "entries" / k[:2] / k for n, k in keys.items()}


class Ctx:  # a minimal StageContext for calling stage helpers directly
    seed = 3
    name = "e"


# --------------------------------------------------------------------------------------------
# the features pipeline, shared


@pytest.fixture(scope="module")
def feat(tmp_path_factory):
    root = tmp_path_factory.mktemp("feat")
    p = root / "p.ftp"
    p.write_text(textwrap.dedent(FEATURES))
    cache = root / "cache"
    code, stages = run_pipeline(p, cache)
    assert code == 0, stages
    assert all(s["status"] == "ran" for s in stages.values()), stages
    ent = entries(p, cache)
    from ftdsl.stages.dataset import Dataset
    from ftdsl.stages.model import TorchModel

    return {"root": root, "p": p, "cache": cache, "stages": stages, "entries": ent,
            "data": Dataset.load(ent["d"] / "artifact"), "torch": TorchModel.load(ent["t"] / "artifact")}


def test_onnx_runs_at_other_batch_sizes_and_matches_torch(feat):
    import onnx
    import torch

    from ftdsl.stages.export import OnnxModel

    out = feat["root"] / "out" / "e"
    # one file, weights inside; dynamic batch axis; opset as asked
    assert sorted(f.name for f in out.iterdir() if not f.name.startswith(".")) == ["model.onnx", "onnx.json",
                                                                                  "verify.json"]
    proto = onnx.load(str(out / "model.onnx"))
    assert {o.domain: o.version for o in proto.opset_import}.get("", 0) == 17
    assert [i.name for i in proto.graph.input] == ["x"] and [o.name for o in proto.graph.output] == ["logits"]
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # symbolic batch
    for art in (OnnxModel.load(out), OnnxModel.load(feat["entries"]["e"] / "artifact")):
        module = feat["torch"].build()
        rng = np.random.default_rng(0)
        for n in (1, 7):
            x = rng.normal(size=(n, 8)).astype(np.float32) * 3 + 1
            got = art.predict({"x": x})
            with torch.no_grad():
                want = module(torch.from_numpy(x)).numpy()
            assert got.shape == (n, 3)
            np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    meta = json.loads((out / "onnx.json").read_text())
    assert meta["inputs"] == ["x"] and meta["output"] == "logits" and meta["opset"] == 17
    assert meta["task"] == {"$call": "classify", "labels": 3} and meta["input_shape"] == [8]
    assert meta["modality"] == "features" and meta["quantization"] is None and meta["source"]["stage"] == "t"
    v = json.loads((out / "verify.json").read_text())
    assert v["passed"] and v["data"] == "random" and len(set(v["batch_sizes"])) == 3
    assert v["max_abs_diff"] <= 1e-5
    m = feat["stages"]["e"]["metrics"]
    assert m["verify.max_abs_diff"] == v["max_abs_diff"] and m["size_mb"] > 0
    assert art.size_bytes == (out / "model.onnx").stat().st_size


def test_feature_normalization_is_inside_the_graph(feat):
    """Raw features in, the same logits as the TorchModel; the data's mean/std are initializers."""
    import onnx
    import torch
    from onnx import numpy_helper

    from ftdsl.stages.export import OnnxModel

    data, module = feat["data"], feat["torch"].build()
    assert not np.allclose(data.norm_mean, 0) and not np.allclose(data.norm_std, 1)
    raw = data.splits["test"].features
    art = OnnxModel.load(feat["root"] / "out" / "e")
    got = art.predict({"x": raw})
    with torch.no_grad():
        want = module(torch.from_numpy(raw)).numpy()
        net_on_raw = module.net(torch.from_numpy(raw)).numpy()  # what a graph without normalization gives
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    assert np.abs(got - net_on_raw).max() > 1e-2
    inits = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(art.onnx_path)).graph.initializer}
    np.testing.assert_allclose(inits["norm_mean"].reshape(-1), data.norm_mean.reshape(-1), rtol=1e-6)


def test_verify_with_real_rows_and_user_path(feat):
    out = feat["root"] / "out" / "ev"
    v = json.loads((out / "verify.json").read_text())
    assert v["passed"] and v["data"] == "d.test" and v["atol"] == 1e-5
    assert v["rows"] == len(feat["data"].splits["test"]) and v["batch_sizes"][0] == 1
    user = feat["root"] / "exports" / "tiny.onnx"
    assert user.read_bytes() == (out / "model.onnx").read_bytes()
    # no temp files left; the one dot file is ftdsl's ownership record of the copy (runtime/outdir.py)
    assert [f.name for f in user.parent.iterdir() if f.name.startswith(".")] == [".tiny.onnx.ftdsl"]
    # the cache entry keeps its own copy
    assert (feat["entries"]["ev"] / "artifact" / "model.onnx").read_bytes() == user.read_bytes()


def test_other_formats_reload_and_match(feat):
    import torch

    from ftdsl.stages.export import ExportedFile
    from ftdsl.stages.model import TorchModel

    module = feat["torch"].build()
    x = torch.randn(5, 8) * 2
    with torch.no_grad():
        want = module(x).numpy()
    out = feat["root"] / "out"
    for name, main_file in (("ts", "model.pt"), ("p2", "model.pt2"), ("st", "model.safetensors")):
        art = ExportedFile.load(feat["entries"][name] / "artifact")
        assert art.path.name == main_file and art.path.read_bytes() == (out / name / main_file).read_bytes()
        assert json.loads((out / name / "verify.json").read_text())["passed"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ts = torch.jit.load(str(out / "ts" / "model.pt"))
    p2 = torch.export.load(str(out / "p2" / "model.pt2")).module()
    st = TorchModel.load(out / "st").build()  # the safetensors export is a TorchModel folder
    with torch.no_grad():
        for m in (ts, p2, st):
            np.testing.assert_allclose(m(x).numpy(), want, atol=1e-5, rtol=0)
    from safetensors import safe_open

    with safe_open(str(out / "st" / "model.safetensors"), "pt") as f:
        assert json.loads(f.metadata()["ftdsl_spec"])["input_shape"] == [8]


def test_untrained_is_a_stage_error_and_hf_of_a_scratch_model_a_lint_error(feat, capsys):
    p = feat["root"] / "errors.ftp"
    p.write_text(TINY + "export u { from = m }\n")
    code, stages = run_pipeline(p, feat["cache"])
    err = capsys.readouterr().err
    assert code == 3 and "Traceback" not in err
    assert stages["u"]["note"] == "FTP510" and "`m` is an untrained model" in err
    # issue 7: `hf` of an `arch` model is known statically (schema EXPORT_ORIGINS): FTP243 at lint
    p.write_text(TINY + "export h { from = t, format = hf }\n")
    assert main(["lint", str(p)]) == 1
    out = capsys.readouterr()
    assert "FTP243" in out.out + out.err and "format = safetensors" in out.out + out.err


def test_f14_perturbed_initializer_verify_function(feat):
    """F14, directly: the exported file with one weight changed fails verify_onnx with the diffs."""
    import onnx
    from onnx import numpy_helper

    from ftdsl.errors import StageError
    from ftdsl.stages.export import OnnxModel, random_batches, verify_onnx

    src = OnnxModel.load(feat["root"] / "out" / "e")
    proto = onnx.load(str(src.onnx_path))
    init = next(i for i in proto.graph.initializer if i.name.endswith("head.weight"))
    w = numpy_helper.to_array(init).copy()
    w[0, 0] += 0.5
    init.CopyFrom(numpy_helper.from_array(w, init.name))
    bad = feat["root"] / "bad.onnx"
    onnx.save(proto, str(bad))
    torch_model = feat["torch"]
    module = torch_model.build()
    batches = random_batches(torch_model, module, seed=3)
    with pytest.raises(StageError) as ei:
        verify_onnx(OnnxModel(bad, src.meta, None), module, batches, atol=1e-4, rtol=1e-3, label="t")
    e = ei.value
    assert e.code == "FTP502"
    assert "ONNX export of `t` differs from PyTorch: max abs diff" in e.message
    assert "(atol 0.0001)" in e.message and "(rtol 0.001)" in e.message and "on 22 rows" in e.message
    # the untouched file passes
    p = verify_onnx(src, module, batches, atol=1e-5, rtol=0, label="t")
    assert p.ok and p.rows == 22 and p.max_abs < 1e-5


def test_f14_through_the_cli_exits_3(feat, monkeypatch, capsys):
    """F14 end to end: the exporter's graph gets one initializer perturbed; `run` exits 3 with
    FTP502 and the diffs, and nothing is cached or written for that stage."""
    from onnx import numpy_helper

    import ftdsl.stages.onnx_utils as ou

    real = ou.export_onnx

    def perturbed(*a, **k):
        proto, how, log = real(*a, **k)
        init = max(proto.graph.initializer, key=lambda i: int(np.prod(i.dims)))
        w = numpy_helper.to_array(init).copy()
        w.reshape(-1)[0] += 1.0
        init.CopyFrom(numpy_helper.from_array(w, init.name))
        return proto, how, log

    monkeypatch.setattr(ou, "export_onnx", perturbed)
    p = feat["root"] / "f14.ftp"
    # (attributes differ from `e`'s: the same attributes would be the same cache entry)
    p.write_text(TINY + "export bad { from = t, format = onnx(opset = 17), verify = { atol = 1e-4 } }\n")
    capsys.readouterr()
    code, stages = run_pipeline(p, feat["cache"])
    err = capsys.readouterr().err
    assert code == 3, err
    assert stages["bad"]["status"] == "failed" and stages["bad"]["note"] == "FTP502"
    assert "error[FTP502]" in err and "ONNX export of `t` differs from PyTorch: max abs diff" in err
    assert "atol 0.0001" in err and "rtol 0.001" in err and "on 22 rows" in err and "Traceback" not in err
    assert not entries(p, feat["cache"])["bad"].exists()
    assert not (feat["root"] / "out" / "bad").exists()


def test_f9_file_size_limit_during_export(feat):
    """F9: RLIMIT_FSIZE (SIGXFSZ ignored) in a subprocess: FTP505, exit 4, no partial entry, no
    temp folder, the other entries intact."""
    p = feat["root"] / "f9.ftp"
    p.write_text(TINY + "export big { from = t, format = onnx(opset = 18), verify = true }\n")
    limit = (feat["root"] / "out" / "e" / "model.onnx").stat().st_size // 2

    def limit_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    r = subprocess.run([sys.executable, "-m", "ftdsl", "run", str(p), "--cache", str(feat["cache"]), "--quiet"],
                       capture_output=True, text=True, cwd=feat["root"], preexec_fn=limit_size, timeout=240)
    assert r.returncode == 4, r.stderr
    assert "FTP505" in r.stderr and "Traceback" not in r.stderr
    assert "model.onnx" in r.stderr and "file-size limit" in r.stderr
    ent = entries(p, feat["cache"])
    assert not ent["big"].exists()
    assert not list((feat["cache"] / "entries").glob(".tmp-*"))
    assert not (feat["root"] / "out" / "big").exists()
    assert main(["cache", "verify", "--cache", str(feat["cache"])]) == 0


def test_hf_export_of_a_pretrained_model(tmp_path):
    """`format = hf` writes a folder transformers reloads (weights + config + tokenizer); it is
    verified against the PyTorch model and copied to `path`. Stage called directly (no training:
    a tiny random BERT with its weights is as good as a trained one here)."""
    import torch

    transformers = pytest.importorskip("transformers")

    from ftdsl.stages import export, model as model_stage
    from ftdsl.stages.base import StageContext
    from ftdsl.stages.tokenizer import train_wordpiece

    folder = tmp_path / "bert"
    texts = [f"the {a} was {b}" for a in ("film", "book", "song", "meal")
             for b in ("good", "bad", "fine", "poor")]
    train_wordpiece(texts, 60, folder, max_length=16)
    vocab = json.loads((folder / "tokenizer.json").read_text())["model"]["vocab"]
    cfg = transformers.BertConfig(vocab_size=len(vocab), hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=16, max_position_embeddings=16)
    transformers.BertForSequenceClassification(cfg).save_pretrained(folder)
    ctx = StageContext(name="m", kind="model", pipeline_dir=tmp_path, out_dir=tmp_path / "o-m",
                       work_dir=tmp_path / "w")
    base = model_stage.run({}, {"pretrained": "bert", "task": {"$call": "classify", "labels": 2}}, ctx)
    trained = base.with_module(base.build())
    ctx = StageContext(name="h", kind="export", pipeline_dir=tmp_path, out_dir=tmp_path / "o-h",
                       work_dir=tmp_path / "w")
    art = export.run({"from": trained}, {"from": {"$ref": "t"}, "format": {"$call": "hf"}, "verify": True,
                                         "path": "exports/hf"}, ctx)
    # the folder is the stage's output folder itself (issue 11: no nested hf/)
    assert art.path == tmp_path / "o-h" and art.metrics["verify.max_abs_diff"] <= 1e-5
    user = tmp_path / "exports" / "hf"
    for f in ("config.json", "model.safetensors", "tokenizer.json"):
        assert (user / f).is_file() and (art.path / f).is_file()
    back = transformers.AutoModelForSequenceClassification.from_pretrained(str(user)).eval()
    tok = transformers.AutoTokenizer.from_pretrained(str(user))
    enc = tok(["the film was good", "the meal was poor"], padding=True, return_tensors="pt",
              return_token_type_ids=False)
    with torch.no_grad():
        want = trained.build()(enc["input_ids"], enc["attention_mask"])
        got = back(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits
    np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-6)
    art.save(tmp_path / "saved")
    again = export.ExportedFile.load(tmp_path / "saved")
    assert again.format == "hf" and (again.path / "config.json").is_file()


def test_legacy_exporter_is_the_fallback_when_dynamo_fails(monkeypatch):
    import torch

    from ftdsl.stages import onnx_utils
    from ftdsl.stages.model import materialize

    spec = {"arch": {"$call": "mlp", "hidden": [4]}, "task": {"$call": "classify", "labels": 2},
            "input_shape": [3], "modality": "features"}
    module = materialize(spec, seed=0, norm_mean=np.ones(3), norm_std=np.full(3, 2.0)).eval()
    real = torch.onnx.export

    def no_dynamo(*a, **k):
        if k.get("dynamo", True):
            raise RuntimeError("dynamo cannot do this one")
        return real(*a, **k)

    monkeypatch.setattr(torch.onnx, "export", no_dynamo)
    proto, how, log = onnx_utils.export_onnx(module, [torch.randn(2, 3)], input_names=["x"], opset=17)
    assert how == "legacy" and "dynamo cannot do this one" in log
    import onnxruntime as ort

    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    for n in (1, 7):
        x = torch.randn(n, 3)
        with torch.no_grad():
            np.testing.assert_allclose(sess.run(None, {"x": x.numpy()})[0], module(x).numpy(), atol=1e-6)
