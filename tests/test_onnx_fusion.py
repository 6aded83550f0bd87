"""Fused transformer graphs before int8 quantization (`quantize { method = dynamic() }` of an ONNX
export, ftdsl/stages/onnx_fusion.py).

A tiny BERT (random init: 2 layers, hidden 32, 4 heads, its own WordPiece vocabulary) is
trained for a few steps, exported and quantized through `ftdsl run`, fused (the default) and
unfused (`fuse = false`). Checked from the outside: `onnx.json` carries the fusion record with
Attention / SkipLayerNormalization / BiasGelu counts, the int8 graph holds QAttention with 7-bit
weights, onnxruntime's outputs of the fused int8 graph agree with the float export on tokenized
rows with padding as closely as the unfused int8 graph does, and the fused *float* graph equals the
export. An MLP export is not fused, and its record says why.
"""

from __future__ import annotations

import csv
import json
import random
import textwrap
from pathlib import Path

import numpy as np
import pytest

from ftdsl.cli import main

pytest.importorskip("onnxruntime")
pytest.importorskip("transformers")

TEXT = """\
pipeline fused {{ seed = 5 }}
data d {{
  source = csv("texts.csv")
  text = "text", label = "label"
  split = {{ train = 0.7, valid = 0.15, test = 0.15 }}
  max_length = 24
}}
model m {{ pretrained = "{bert}", task = classify(labels = 2) }}
train t {{ model = m, data = d, max_steps = 4, batch = 8, precision = fp32 }}
export e {{ from = t, format = onnx() }}
quantize q8 {{ from = e, method = dynamic() }}
quantize plain {{ from = e, method = dynamic(fuse = false) }}
"""

MLP = """\
pipeline mlp { seed = 3 }
data d {
  source = synthetic(task = classify, n = 200, features = 8, classes = 3, seed = 1)
  split = { train = 0.8, valid = 0.1, test = 0.1 }
}
model m { arch = mlp(hidden = [32]), task = classify(labels = 3) }
train t { model = m, data = d, max_steps = 5, batch = 32, precision = fp32 }
export e { from = t, format = onnx() }
quantize q8 { from = e, method = dynamic() }
"""


def _sentences(n: int = 80) -> list[str]:
    rnd = random.Random(0)
    good, bad = ["good", "great", "lovely", "fine"], ["bad", "awful", "poor", "boring"]
    nouns = ["movie", "film", "book", "meal", "song", "show"]
    out = []
    for i in range(n):
        words = ["the", rnd.choice(nouns), "was", rnd.choice(good if i % 2 else bad)]
        words += [rnd.choice(nouns + ["and", "very", "really"]) for _ in range(rnd.randint(0, 10))]
        out.append(" ".join(words))
    return out


def _tiny_bert(folder: Path, texts: list[str]) -> None:
    import transformers

    from ftdsl.stages.tokenizer import train_wordpiece

    train_wordpiece(texts, 80, folder, max_length=32)
    vocab = json.loads((folder / "tokenizer.json").read_text())["model"]["vocab"]
    cfg = transformers.BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=64, max_position_embeddings=32)
    transformers.set_seed(0)
    transformers.BertForSequenceClassification(cfg).save_pretrained(folder)


def _run(p: Path) -> None:
    assert main(["run", str(p), "--cache", str(p.parent / "cache"), "--quiet"]) == 0


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("fusion")
    texts = _sentences()
    with open(root / "texts.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows([t, i % 2] for i, t in enumerate(texts))
    _tiny_bert(root / "bert", texts)
    p = root / "fused.ftp"
    p.write_text(TEXT.format(bert="bert"))
    _run(p)
    return root, texts


def _feeds(root: Path, texts: list[str]) -> list[dict]:
    """Tokenized rows of mixed lengths (so padding is masked), independent of the stage's probes."""
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_file=str(root / "bert" / "tokenizer.json"), pad_token="[PAD]",
                                  unk_token="[UNK]")
    feeds = []
    for i in range(0, 64, 16):
        enc = tok(texts[i:i + 16], padding=True, truncation=True, max_length=24, return_tensors="np")
        feeds.append({"input_ids": enc["input_ids"].astype(np.int64),
                      "attention_mask": enc["attention_mask"].astype(np.int64)})
    assert any((f["attention_mask"] == 0).any() for f in feeds)  # padding is exercised
    return feeds


def _outputs(path: Path, feeds: list[dict]) -> np.ndarray:
    import onnxruntime as ort

    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in s.get_inputs()]
    return np.concatenate([s.run(None, {n: f[n] for n in names})[0] for f in feeds])


def test_bert_int8_is_fused_and_agrees_with_the_float_export(text_run):
    import onnx

    from ftdsl.stages.quant_onnx import max_abs_int8_weight

    root, texts = text_run
    meta = json.loads((root / "out" / "q8" / "onnx.json").read_text())
    fusion = meta["quantization"]["fusion"]
    assert fusion["applied"] is True, fusion
    ops = fusion["operators"]
    assert ops.get("Attention") == 2 and ops.get("SkipLayerNormalization", 0) >= 2 and ops.get("BiasGelu") == 2, ops
    assert fusion["verify"]["passed"] and fusion["verify"]["max_abs_diff"] <= 1e-4
    assert fusion["num_heads"] == 4 and fusion["hidden_size"] == 32  # read from the export's record
    assert meta["transformer"] == {"model_type": "bert", "num_heads": 4, "hidden_size": 32}

    q = onnx.load(str(root / "out" / "q8" / "model.onnx"))
    graph_ops = {n.op_type for n in q.graph.node}
    assert "QAttention" in graph_ops and "SkipLayerNormalization" in graph_ops
    assert max_abs_int8_weight(q) <= 64 and meta["quantization"]["reduce_range"] is True  # 7-bit, QAttention too

    plain = json.loads((root / "out" / "plain" / "onnx.json").read_text())["quantization"]
    assert plain["fusion"] == {"applied": False, "why": "fuse = false"}
    assert "QAttention" not in {n.op_type for n in onnx.load(str(root / "out" / "plain" / "model.onnx")).graph.node}

    feeds = _feeds(root, texts)
    ref = _outputs(root / "out" / "e" / "model.onnx", feeds)
    fused = _outputs(root / "out" / "q8" / "model.onnx", feeds)
    unfused = _outputs(root / "out" / "plain" / "model.onnx", feeds)
    scale = float(np.abs(ref).max())
    d_fused, d_plain = float(np.abs(fused - ref).max()), float(np.abs(unfused - ref).max())
    assert d_fused <= 0.1 * scale + 1e-3, (d_fused, scale)
    assert d_fused <= 3 * d_plain + 1e-3, (d_fused, d_plain)  # fusion costs no more than int8 itself


def test_fused_float_graph_equals_the_export(text_run, tmp_path):
    """The fusion alone (no quantization) computes the export's outputs, padding included."""
    from ftdsl.stages.onnx_fusion import fuse

    root, texts = text_run
    export = root / "out" / "e"
    meta = json.loads((export / "onnx.json").read_text())
    feeds = _feeds(root, texts)
    ref = _outputs(export / "model.onnx", feeds)
    out, rec = fuse(export / "model.onnx", meta, tmp_path / "fused.onnx", feeds[:1],
                    lambda f: _outputs(export / "model.onnx", [f]))
    assert out is not None and rec["applied"], rec
    assert rec["mask"].startswith("mask_index")
    np.testing.assert_allclose(_outputs(out, feeds), ref, atol=1e-5, rtol=1e-4)


def test_mlp_is_not_fused_and_says_so(tmp_path):
    p = tmp_path / "mlp.ftp"
    p.write_text(textwrap.dedent(MLP))
    _run(p)
    q = json.loads((tmp_path / "out" / "q8" / "onnx.json").read_text())["quantization"]
    assert q["fusion"]["applied"] is False
    assert "not a transformer graph" in q["fusion"]["why"]
    assert q["reduce_range"] is True and q["max_abs_weight"] <= 64
