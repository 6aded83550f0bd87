"""`ftdsl predict` (issue 9 item 5): a cached model of the pipeline on new rows.

One pipeline is run once for the module (in-process, ~20 s here): a features MLP (`t`), its ONNX
export (`e`), that export quantized by onnxruntime to int8 (`q`) and fp16 (`q16`), the MLP quantized in PyTorch
(`tq`), a from-scratch text transformer with its own WordPiece tokenizer (`tt`), a regression MLP
(`tr`), and `evaluate` over the classifiers. Then `out/` is deleted: predict reads the cache only.

Checked against independent computations: the probabilities equal the softmax of what the
artifact itself computes on the same rows (`build()` in PyTorch, `predict()` in onnxruntime;
for text, one row at a time, unpadded, tokenized by the tokenizer directly), and the accuracy of
the predicted label names on the test split equals `evaluate`'s accuracy in `report.json`.
"""

from __future__ import annotations

import csv
import json
import random
import shutil
import textwrap
from pathlib import Path

import numpy as np
import pytest

from ftdsl.cli import main

PIPELINE = """\
pipeline pred { seed = 3 }
data d {
  source = synthetic(task = classify, n = 240, features = 8, classes = 3, seed = 1)
  split = { train = 0.7, valid = 0.15, test = 0.15 }
}
model m { arch = mlp(hidden = [16]), task = classify(labels = 3) }
train t { model = m, data = d, max_steps = 24, batch = 16, optimizer = adamw(lr = 0.01), precision = fp32 }
export e { from = t, format = onnx(opset = 17), verify = true }
quantize q { from = e, method = dynamic(dtype = int8) }
quantize q16 { from = e, method = fp16 }
quantize tq { from = t, method = dynamic() }
evaluate r { models = [t, e, q, q16, tq], data = d.test, metrics = [accuracy] }

data txt {
  source = csv("texts.csv")
  text = "sentence", label = "mood"
  split = { train = 0.7, valid = 0.15, test = 0.15 }
  tokenizer = wordpiece(vocab = 200)
  max_length = 12
}
model tm { arch = transformer(layers = 1, dim = 16, heads = 2, ff = 32, max_len = 32), task = classify(labels = 2) }
train tt { model = tm, data = txt, max_steps = 8, batch = 8, precision = fp32 }
evaluate rt { models = [tt], data = txt.test, metrics = [accuracy] }

data dr { source = synthetic(task = regress, n = 120, features = 4, seed = 2) }
model mr { arch = mlp(hidden = [8]), task = regress(outputs = 1) }
train tr { model = mr, data = dr, max_steps = 10, batch = 16, precision = fp32 }
"""


def _write_texts(path: Path, n: int = 60) -> None:
    rnd = random.Random(0)
    pos, neg = ["good", "great", "lovely", "fine", "superb"], ["bad", "awful", "poor", "sad", "boring"]
    nouns = ["movie", "film", "book", "meal", "song", "show", "day"]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["sentence", "mood"])
        for i in range(n):
            words = ["the", rnd.choice(nouns), "was", rnd.choice(pos if i % 2 else neg)]
            words += [rnd.choice(nouns + ["and", "very", "really"]) for _ in range(rnd.randint(0, 14))]
            w.writerow([" ".join(words), "happy" if i % 2 else "grumpy"])


class Env:
    def __init__(self, root: Path):
        self.root = root
        self.pipe = root / "p.ftp"
        self.cache = root / "cache"
        self.reports: dict[str, dict] = {}

    def predict(self, stage: str, *args: str) -> int:
        return main(["predict", str(self.pipe), stage, "--cache", str(self.cache), "--quiet", *args])

    def artifact(self, stage: str):
        from ftdsl.frontend import compile_pipeline
        from ftdsl.plan import make_plan
        from ftdsl.runtime.cache import Cache
        from ftdsl.stages.artifacts import artifact_class

        cache = Cache(self.cache)
        st = make_plan(compile_pipeline(str(self.pipe), []), cache).by_name()[stage]
        return artifact_class(st.artifact).load(cache.lookup(st.key) / "artifact")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    e = Env(root)
    e.pipe.write_text(textwrap.dedent(PIPELINE))
    _write_texts(root / "texts.csv")
    assert main(["run", str(e.pipe), "--cache", str(e.cache), "--quiet"]) == 0
    for r in ("r", "rt"):
        rows = json.loads((root / "out" / r / "report.json").read_text())["rows"]
        e.reports.update({row["model"]: row for row in rows})
    shutil.rmtree(root / "out")  # predict reads the cache, never out/
    return e


def _read_jsonl(p: Path) -> list[dict]:
    return [json.loads(line) for line in p.read_text().splitlines()]


def _features_csv(env: Env, path: Path, split: str = "test"):
    data = env.artifact("d")
    sp = data.split(split)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", *data.feature_names, "label"])  # extra columns are ignored
        for i in range(len(sp)):
            w.writerow([f"r{i}", *[repr(float(v)) for v in sp.features[i]], data.label_names[int(sp.labels[i])]])
    return data, sp


def _torch_logits(art, x: np.ndarray) -> np.ndarray:
    import torch

    with torch.inference_mode():
        return art.build()(x=torch.from_numpy(x)).float().numpy()


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z.astype(np.float64) - z.max(axis=1, keepdims=True)
    return np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)


@pytest.mark.parametrize("stage", ["t", "e", "q", "q16", "tq"])
def test_classify_matches_the_artifact_and_evaluate(env, tmp_path, stage):
    data, sp = _features_csv(env, tmp_path / "in.csv")
    out = tmp_path / "pred.jsonl"
    # Batches of 7 rows: a row's outputs do not depend on its batch mates. Except under dynamic int8
    # quantization (`q` in onnxruntime, `tq` in PyTorch), which quantizes activations with one scale
    # per batch: those predict in one batch, as `evaluate` did (its default 64 holds the 36 test rows).
    batch = "64" if stage in ("q", "tq") else "7"
    assert env.predict(stage, "--input", str(tmp_path / "in.csv"), "--output", str(out), "--batch", batch) == 0
    recs = _read_jsonl(out)
    assert [r["row"] for r in recs] == list(range(1, len(sp) + 1))
    assert [r["line"] for r in recs] == list(range(2, len(sp) + 2))
    names = data.label_names
    probs = np.array([[r["probabilities"][n] for n in names] for r in recs])
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-9)
    art = env.artifact(stage)
    x = np.ascontiguousarray(sp.features, dtype=np.float32)
    logits = np.asarray(art.predict({"x": x})) if stage in ("e", "q", "q16") else _torch_logits(art, x)
    assert np.allclose(probs, _softmax(logits), atol=1e-5)
    assert [r["label"] for r in recs] == [names[i] for i in probs.argmax(axis=1)]
    truth = [names[int(c)] for c in sp.labels]
    acc = np.mean([r["label"] == t for r, t in zip(recs, truth)])
    assert acc == pytest.approx(env.reports[stage]["accuracy"], abs=1e-12)


def test_text_model_uses_the_pipelines_tokenizer(env, tmp_path):
    data = env.artifact("txt")
    sp = data.split("test")
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps({"sentence": t, "mood": "?"}) + "\n" for t in sp.texts))
    out = tmp_path / "pred.jsonl"
    assert env.predict("tt", "--input", str(inp), "--output", str(out)) == 0
    recs = _read_jsonl(out)
    assert {r["label"] for r in recs} <= {"happy", "grumpy"}
    assert all(set(r["probabilities"]) == {"happy", "grumpy"} for r in recs)
    import torch

    art = env.artifact("tt")
    tok, module = art.load_tokenizer(), art.build()
    ml = art.spec["max_length"]
    assert ml == 12 and any(len(tok(t)["input_ids"]) > ml for t in sp.texts)  # truncation is exercised
    for r, text in zip(recs, sp.texts):  # one row at a time, no padding
        enc = tok(text, truncation=True, max_length=ml, return_tensors="pt")
        with torch.inference_mode():
            z = module(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).numpy()
        want = _softmax(z)[0]
        got = np.array([r["probabilities"][n] for n in data.label_names])
        assert np.allclose(got, want, atol=1e-5), (text, got, want)
    truth = [data.label_names[int(c)] for c in sp.labels]
    acc = np.mean([r["label"] == t for r, t in zip(recs, truth)])
    assert acc == pytest.approx(env.reports["tt"]["accuracy"], abs=1e-12)


def test_text_from_csv_with_quoted_newlines(env, tmp_path):
    """A CSV text field may hold commas and newlines: the record's `line` is where it ends."""
    texts = ["the film was lovely, really", "the meal\nwas awful", "a day"]
    inp = tmp_path / "in.csv"
    with open(inp, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["sentence"])
        w.writerows([t] for t in texts)
    out = tmp_path / "pred.jsonl"
    assert env.predict("tt", "--input", str(inp), "--output", str(out)) == 0
    assert [(r["row"], r["line"]) for r in _read_jsonl(out)] == [(1, 2), (2, 4), (3, 5)]
    one = tmp_path / "one.jsonl"
    one.write_text(json.dumps({"sentence": texts[1]}) + "\n")
    assert env.predict("tt", "--input", str(one), "--output", str(tmp_path / "one_out.jsonl")) == 0
    assert _read_jsonl(tmp_path / "one_out.jsonl")[0]["probabilities"] == pytest.approx(
        _read_jsonl(out)[1]["probabilities"], abs=1e-6)


def test_input_is_read_as_a_stream(tmp_path):
    """Rows come from the file as they are needed: the first row of a 4 MB file is there after
    reading a few kilobytes (predict never holds the input in memory)."""
    from ftdsl.predict.rows import Row, Source

    for fmt, head, line in (("jsonl", "", '{"a": 1.5, "b": "x"}\n'), ("csv", "a,b\n", "1.5,x\n")):
        p = tmp_path / f"big.{fmt}"
        p.write_text(head + line * (4_000_000 // len(line)))
        src = Source(str(p), fmt)
        first = next(src.rows())
        assert isinstance(first, Row) and first.values["b"] == "x"
        assert src.done_bytes < 100_000 < src.total_bytes
        src.close()


def test_regress_values_as_csv(env, tmp_path, capsys):
    data = env.artifact("dr")
    sp = data.split("test")
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps(dict(zip(data.feature_names, map(float, row)))) + "\n" for row in sp.features))
    capsys.readouterr()
    assert env.predict("tr", "--input", str(inp), "--format", "csv") == 0  # stdout
    rows = list(csv.DictReader(capsys.readouterr().out.splitlines()))
    assert list(rows[0]) == ["row", "line", "value"]
    want = _torch_logits(env.artifact("tr"), np.ascontiguousarray(sp.features, dtype=np.float32))[:, 0]
    assert np.allclose([float(r["value"]) for r in rows], want, atol=1e-5)


def test_classify_csv_columns_and_digits(env, tmp_path):
    _features_csv(env, tmp_path / "in.csv")
    out = tmp_path / "pred.csv"
    assert env.predict("t", "--input", str(tmp_path / "in.csv"), "--output", str(out), "--digits", "3") == 0
    rows = list(csv.DictReader(out.read_text().splitlines()))
    assert list(rows[0]) == ["row", "line", "label", "prob_0", "prob_1", "prob_2"]
    assert all(len(r["prob_0"].split(".")[-1]) <= 3 for r in rows)


# --- bad input --------------------------------------------------------------------------------

def _jsonl_rows(env: Env, n: int = 4) -> list[str]:
    data = env.artifact("d")
    return [json.dumps(dict(zip(data.feature_names, map(float, row)))) for row in data.split("test").features[:n]]


def test_malformed_jsonl_line_fails_with_its_line(env, tmp_path, capsys):
    rows = _jsonl_rows(env)
    inp = tmp_path / "in.jsonl"
    inp.write_text("\n".join([rows[0], "", rows[1], '{"x0": 1, oops', rows[2]]) + "\n")
    out = tmp_path / "pred.jsonl"
    assert env.predict("t", "--input", str(inp), "--output", str(out)) == 1
    err = capsys.readouterr().err
    assert f"error[FTP561]: {inp}:4: invalid JSON" in err and "--on-error skip" in err
    assert not out.exists() and not list(tmp_path.glob(".pred.jsonl.*"))  # nothing half-written


def test_malformed_jsonl_line_skipped_with_its_line(env, tmp_path, capsys):
    rows = _jsonl_rows(env)
    inp = tmp_path / "in.jsonl"
    inp.write_text("\n".join([rows[0], '{"x0": 1, oops', "[1, 2]", rows[1]]) + "\n")
    out = tmp_path / "pred.jsonl"
    assert env.predict("t", "--input", str(inp), "--output", str(out), "--on-error", "skip") == 0
    err = capsys.readouterr().err
    assert f"warning[FTP561]: {inp}:2: invalid JSON" in err
    assert f"warning[FTP561]: {inp}:3: expected a JSON object, found a list" in err
    assert [(r["row"], r["line"]) for r in _read_jsonl(out)] == [(1, 1), (4, 4)]


@pytest.mark.parametrize("bad, message", [
    ({"x3": None}, "column `x3`: missing value"),
    ({"x3": "abc"}, "column `x3`: could not convert 'abc' to a number"),
    ({"x3": [1, 2]}, "column `x3`: expected a number, found [1, 2]"),
    ({"x3": "DROP"}, "no column `x3` (a feature)"),
])
def test_bad_value_in_a_row(env, tmp_path, capsys, bad, message):
    rows = [json.loads(r) for r in _jsonl_rows(env, 3)]
    for k, v in bad.items():
        if v == "DROP":
            del rows[1][k]
        else:
            rows[1][k] = v
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert env.predict("t", "--input", str(inp)) == 1
    assert f"error[FTP561]: {inp}:2: {message}" in capsys.readouterr().err


def test_text_row_of_the_wrong_type(env, tmp_path, capsys):
    inp = tmp_path / "in.jsonl"
    inp.write_text('{"sentence": "the day was good"}\n{"sentence": ["a", "list"]}\n{"sentence": null}\n'
                   '{"text": "wrong column"}\n{"sentence": 42}\n')
    out = tmp_path / "p.jsonl"
    assert env.predict("tt", "--input", str(inp), "--on-error", "skip", "--output", str(out)) == 0
    err = capsys.readouterr().err
    assert f'{inp}:2: column `sentence`: expected text, found ["a", "list"] (row skipped)' in err
    assert f"{inp}:3: column `sentence`: missing text (row skipped)" in err
    assert f"{inp}:4: no column `sentence` (the text); the row has: `text` (row skipped)" in err
    assert [r["line"] for r in _read_jsonl(out)] == [1, 5]  # a number is text, as the data stage reads it


def test_csv_missing_column_and_wrong_type(env, tmp_path, capsys):
    _features_csv(env, tmp_path / "full.csv")
    lines = (tmp_path / "full.csv").read_text().splitlines()
    # a header without a feature column: fatal at the header's line, whatever --on-error says
    dropped = tmp_path / "dropped.csv"
    dropped.write_text("\n".join(",".join(c for j, c in enumerate(ln.split(",")) if j != 4) for ln in lines[:4]) + "\n")
    assert env.predict("t", "--input", str(dropped), "--on-error", "skip") == 1
    err = capsys.readouterr().err
    assert f"error[FTP561]: {dropped}:1: no column `x3`" in err
    # a text where a number belongs, on line 3; a short record on line 4
    cells = lines[2].split(",")
    cells[2] = "many"
    bad = tmp_path / "bad.csv"
    bad.write_text("\n".join([lines[0], lines[1], ",".join(cells), "r9,1,2", lines[3]]) + "\n")
    assert env.predict("t", "--input", str(bad)) == 1
    assert f"error[FTP561]: {bad}:3: column `x1`: could not convert 'many' to a number" in capsys.readouterr().err
    out = tmp_path / "p.jsonl"
    assert env.predict("t", "--input", str(bad), "--on-error", "skip", "--output", str(out)) == 0
    err = capsys.readouterr().err
    assert f"{bad}:4: expected 10 fields (the header's), found 3" in err
    assert [r["line"] for r in _read_jsonl(out)] == [2, 5]


@pytest.mark.parametrize("name, text", [("empty.jsonl", ""), ("blank.jsonl", "\n\n"), ("empty.csv", ""),
                                        ("header.csv", "x0,x1\n")])
def test_empty_input(env, tmp_path, capsys, name, text):
    inp = tmp_path / name
    inp.write_text(text)
    assert env.predict("t", "--input", str(inp)) == 1
    err = capsys.readouterr().err
    assert "error[FTP561]" in err and ("is empty" in err or "no rows" in err)


def test_every_row_bad_is_an_error_even_when_skipping(env, tmp_path, capsys):
    inp = tmp_path / "in.jsonl"
    inp.write_text("nope\n{}\n")
    assert env.predict("t", "--input", str(inp), "--on-error", "skip") == 1
    assert "no row could be read (2 skipped)" in capsys.readouterr().err


# --- the stage ---------------------------------------------------------------------------------

def test_stage_not_cached_hints_run(env, tmp_path, capsys):
    inp = tmp_path / "in.jsonl"
    inp.write_text(_jsonl_rows(env, 1)[0] + "\n")
    # another max_steps is another cache key: nothing to predict with, and nothing is trained
    before = sorted(p.name for p in (env.cache / "entries").rglob("*") if p.parent.parent == env.cache / "entries")
    assert env.predict("t", "--input", str(inp), "--set", "t.max_steps=25") == 1
    err = capsys.readouterr().err
    assert "error[FTP560]: the model of `train t` is not in the cache" in err
    assert f"ftdsl run {env.pipe} --only t --set t.max_steps=25 --cache {env.cache}`" in err  # the same keys
    after = sorted(p.name for p in (env.cache / "entries").rglob("*") if p.parent.parent == env.cache / "entries")
    assert after == before


def test_stage_without_a_model(env, tmp_path, capsys):
    inp = tmp_path / "in.jsonl"
    inp.write_text("{}\n")
    assert env.predict("r", "--input", str(inp)) == 2
    assert "error[FTP562]: `evaluate r` produces a Report" in capsys.readouterr().err
    assert env.predict("nope", "--input", str(inp)) == 2
    assert "error[FTP212]: no stage named `nope`" in capsys.readouterr().err


# --- a Hugging Face folder export ---------------------------------------------------------------

HF_PIPELINE = """\
pipeline hf { seed = 1 }
data d {
  source = csv("texts.csv")
  text = "sentence", label = "mood"
  split = { train = 0.7, valid = 0.15, test = 0.15 }
  max_length = 16
}
model base { pretrained = "sentence-transformers/all-MiniLM-L6-v2", task = classify(labels = 2) }
train t { model = base, data = d, max_steps = 2, batch = 8, precision = fp32 }
export h { from = t, format = hf }  # ftdsl: ignore[FTP230]
"""


def test_hf_folder_export_equals_transformers_and_the_train_stage(tmp_path):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    e = Env(tmp_path)
    e.pipe.write_text(HF_PIPELINE)
    _write_texts(tmp_path / "texts.csv", n=24)
    assert main(["run", str(e.pipe), "--cache", str(e.cache), "--quiet"]) == 0
    texts = ["the film was lovely and very good", "the meal was awful", "a day"]
    inp = tmp_path / "in.csv"
    inp.write_text("sentence\n" + "\n".join(texts) + "\n")
    got = {}
    for stage in ("h", "t"):
        assert e.predict(stage, "--input", str(inp), "--output", str(tmp_path / f"{stage}.jsonl")) == 0
        got[stage] = _read_jsonl(tmp_path / f"{stage}.jsonl")
    names = ["grumpy", "happy"]  # the data's label names, in class order
    assert all(set(r["probabilities"]) == set(names) for r in got["h"])
    folder = e.artifact("h").path
    tok = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModelForSequenceClassification.from_pretrained(str(folder)).eval()
    with torch.inference_mode():
        enc = tok(texts, truncation=True, max_length=16, padding=True, return_tensors="pt")
        want = _softmax(model(**enc).logits.numpy())
    for stage in ("h", "t"):
        probs = np.array([[r["probabilities"][n] for n in names] for r in got[stage]])
        assert np.allclose(probs, want, atol=1e-5), stage
        assert [r["label"] for r in got[stage]] == [names[i] for i in want.argmax(axis=1)]


def test_through_the_command_line_stdout_is_only_predictions(env, tmp_path):
    """The real entry point: predictions on stdout (valid JSONL, nothing else), the summary line on
    stderr, no progress bar when stderr is not a terminal."""
    import os
    import subprocess
    import sys

    inp = tmp_path / "in.jsonl"
    inp.write_text("\n".join(_jsonl_rows(env, 3)) + "\n")
    r = subprocess.run([sys.executable, "-m", "ftdsl", "predict", str(env.pipe), "t", "--cache", str(env.cache),
                        "--input", str(inp)], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "NO_COLOR": "1"})
    assert r.returncode == 0, r.stderr
    assert [json.loads(line)["row"] for line in r.stdout.splitlines()] == [1, 2, 3]
    assert r.stderr.strip() == "predicted 3 rows with `t` (TorchModel, PyTorch) -> stdout"
