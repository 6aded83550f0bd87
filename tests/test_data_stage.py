"""The `data` stage: sources, label typing, seeded splits, normalization stats, tokenizer,
save/load, and the FTP510/FTP511 errors for bad data."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ftdsl.errors import StageError
from ftdsl.stages import data
from ftdsl.stages.base import StageContext
from ftdsl.stages.dataset import Dataset, check_labels, regression_targets
from ftdsl.stages.tokenizer import load_tokenizer

SMS = Path("/work/shared/data/sms_spam/SMSSpamCollection")


def make_ctx(tmp_path: Path, seed: int = 0) -> StageContext:
    (tmp_path / "out").mkdir(exist_ok=True)
    return StageContext(
        name="d", kind="data", pipeline_dir=tmp_path, out_dir=tmp_path / "out",
        work_dir=tmp_path / "work", seed=seed,
    )


def attrs(**kw) -> dict:
    base = dict(
        source=None, text=None, label="label", features=None, split=None, train=None, valid=None,
        test=None, max_length=None, tokenizer=None, sampler="shuffle",
    )
    base.update(kw)
    return base


def csv_call(path: str, delimiter: str = ",", **kw) -> dict:
    return {"$call": "csv", "path": path, "delimiter": delimiter, **kw}


def write(tmp_path: Path, name: str, text: str) -> str:
    p = tmp_path / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text, encoding="utf-8")
    return name


def features_csv(tmp_path: Path, n: int = 60, name: str = "data/x.csv", labels=None) -> str:
    rng = np.random.default_rng(1)
    lines = ["age,income,const,label"]
    for i in range(n):
        lab = labels[i % len(labels)] if labels is not None else ("cat", "dog", "eel")[i % 3]
        lines.append(f"{rng.integers(18, 90)},{rng.normal(50, 10):.3f},7,{lab}")
    return write(tmp_path, name, "\n".join(lines) + "\n")


def run(tmp_path: Path, seed: int = 0, **kw) -> Dataset:
    return data.run({}, attrs(**kw), make_ctx(tmp_path, seed))


def err(tmp_path: Path, **kw) -> StageError:
    with pytest.raises(StageError) as ei:
        run(tmp_path, **kw)
    return ei.value


SPLIT3 = {"train": 0.8, "valid": 0.1, "test": 0.1}


# ---------------------------------------------------------------------------------------------
# sources


def test_csv_features_and_text_labels(tmp_path):
    src = features_csv(tmp_path)
    ds = run(tmp_path, source=csv_call(src), split=SPLIT3)
    assert ds.modality == "features" and ds.input_shape == (3,)
    assert ds.feature_names == ["age", "income", "const"]
    assert ds.label_names == ["cat", "dog", "eel"] and ds.num_classes == 3 and ds.task == "classify"
    assert list(ds.splits) == ["train", "valid", "test"]
    assert [len(s) for s in ds.splits.values()] == [48, 6, 6]
    tr = ds.splits["train"]
    assert tr.features.dtype == np.float32 and tr.labels.dtype == np.int64 and tr.rows.dtype == np.int64
    # rows are 1-based data rows; row r has label ("cat","dog","eel")[(r-1) % 3]
    assert all(lab == (r - 1) % 3 for lab, r in zip(tr.labels, tr.rows))
    all_rows = np.concatenate([s.rows for s in ds.splits.values()])
    assert sorted(all_rows.tolist()) == list(range(1, 61))
    assert ds.source == "data/x.csv" and ds.label_column == "label"


def test_default_split_and_feature_selection(tmp_path):
    src = features_csv(tmp_path, n=20)
    ds = run(tmp_path, source=csv_call(src), features=["income"])
    assert {k: len(v) for k, v in ds.splits.items()} == {"train": 16, "valid": 2, "test": 2}
    assert ds.input_shape == (1,) and ds.feature_names == ["income"]
    # lowered split structs carry unset keys as None
    ds = run(tmp_path, source=csv_call(src), split={"train": 1.0, "valid": None, "test": None})
    assert list(ds.splits) == ["train"] and len(ds.splits["train"]) == 20


def test_csv_without_header(tmp_path):
    write(tmp_path, "nh.tsv", "".join(f"{i}\t{i % 2}\t\"quoted\n" for i in range(10)))
    ds = run(tmp_path, source=csv_call("nh.tsv", "\t", header=False), label="c1", features=["c0"],
             split={"train": 1})
    assert len(ds.splits["train"]) == 10 and ds.label_names == ["0", "1"]
    e = err(tmp_path, source=csv_call("nh.tsv", "\t", header=False), split={"train": 1})
    assert "`c0`, `c1`, `c2`" in e.message


def test_integer_labels_keep_their_value(tmp_path):
    write(tmp_path, "a.csv", "x,label\n" + "".join(f"{i},{[0, 2, 3][i % 3]}\n" for i in range(12)))
    ds = run(tmp_path, source=csv_call("a.csv"))
    assert ds.num_classes == 4 and ds.label_names == ["0", "1", "2", "3"]
    assert sorted(set(ds.splits["train"].labels.tolist())) == [0, 2, 3]
    write(tmp_path, "b.csv", "x,label\n" + "".join(f"{i},{[-1, 1][i % 2]}\n" for i in range(12)))
    ds = run(tmp_path, source=csv_call("b.csv"))
    assert ds.num_classes == 2 and ds.label_names == ["-1", "1"]
    assert set(ds.splits["train"].labels.tolist()) == {0, 1}


def test_float_labels_are_regression(tmp_path):
    write(tmp_path, "r.csv", "x,y\n" + "".join(f"{i},{i * 0.5 + 0.25}\n" for i in range(20)))
    ds = run(tmp_path, source=csv_call("r.csv"), label="y", split={"train": 0.5, "test": 0.5})
    assert ds.task == "regress" and ds.num_classes is None and ds.label_names is None
    tr = ds.splits["train"]
    assert tr.labels.dtype == np.float32 and tr.labels.shape == (10, 1)
    np.testing.assert_allclose(tr.labels[:, 0], (tr.rows - 1) * 0.5 + 0.25)
    assert np.array_equal(tr.features[:, 0], tr.rows - 1)


def test_jsonl_and_parquet(tmp_path):
    rows = [{"a": i, "b": float(i) / 2, "label": "yes" if i % 2 else "no"} for i in range(20)]
    write(tmp_path, "d.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n\n")
    ds = run(tmp_path, source={"$call": "jsonl", "path": "d.jsonl"}, split={"train": 0.5, "test": 0.5})
    assert ds.input_shape == (2,) and ds.label_names == ["no", "yes"]
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    ds2 = run(tmp_path, source={"$call": "parquet", "path": "d.parquet"}, split={"train": 0.5, "test": 0.5})
    for name in ds.splits:
        assert np.array_equal(ds.splits[name].features, ds2.splits[name].features)
        assert np.array_equal(ds.splits[name].labels, ds2.splits[name].labels)


def test_sklearn_digits_and_iris(tmp_path):
    ds = run(tmp_path, source={"$call": "sklearn", "name": "digits"}, split=SPLIT3)
    assert ds.input_shape == (1, 8, 8) and ds.num_classes == 10
    assert ds.splits["train"].features.shape[1:] == (1, 8, 8)
    assert sum(len(s) for s in ds.splits.values()) == 1797
    assert ds.norm_mean.shape == (1, 8, 8) and ds.source == "sklearn(digits)"
    assert (ds.norm_std > 0).all()
    ds = run(tmp_path, source={"$call": "sklearn", "name": "iris"}, split=SPLIT3)
    assert ds.input_shape == (4,) and ds.label_names == ["setosa", "versicolor", "virginica"]
    # stratified: each split has each class in proportion
    assert [np.bincount(s.labels).tolist() for s in ds.splits.values()] == [[40, 40, 40], [5, 5, 5], [5, 5, 5]]


def test_synthetic(tmp_path):
    call = {"$call": "synthetic", "task": "classify", "n": 200, "features": 8, "classes": 4, "seed": 3}
    a = run(tmp_path, source=call, split=SPLIT3)
    b = run(tmp_path, source=call, split=SPLIT3)
    assert a.input_shape == (8,) and a.num_classes == 4
    assert np.array_equal(a.splits["train"].features, b.splits["train"].features)
    c = run(tmp_path, source={**call, "seed": 4}, split=SPLIT3)
    assert not np.array_equal(a.splits["train"].features, c.splits["train"].features)
    r = run(tmp_path, source={"$call": "synthetic", "task": "regress", "n": 50, "features": 3, "classes": 2, "seed": 0})
    assert r.task == "regress" and r.splits["train"].labels.shape == (40, 1)  # default split 0.8


# ---------------------------------------------------------------------------------------------
# splits and statistics


def test_split_is_seeded(tmp_path):
    src = features_csv(tmp_path, n=100)
    a = run(tmp_path, seed=0, source=csv_call(src), split=SPLIT3)
    b = run(tmp_path, seed=0, source=csv_call(src), split=SPLIT3)
    c = run(tmp_path, seed=1, source=csv_call(src), split=SPLIT3)
    for name in SPLIT3:
        assert np.array_equal(a.splits[name].rows, b.splits[name].rows)
    assert not np.array_equal(a.splits["valid"].rows, c.splits["valid"].rows)


def test_split_proportions_are_normalized(tmp_path):
    src = features_csv(tmp_path, n=100)
    ds = run(tmp_path, source=csv_call(src), split={"train": 8, "valid": 1, "test": 1})
    assert [len(s) for s in ds.splits.values()] == [80, 10, 10]
    ds = run(tmp_path, source=csv_call(src), split={"test": 0.3, "train": 0.5})
    assert list(ds.splits) == ["train", "test"]
    assert [len(s) for s in ds.splits.values()] == [63, 37]  # 62.5 and 37.5 of 100; a tie goes to train


def test_explicit_split_files_and_carving(tmp_path):
    tr = features_csv(tmp_path, n=40, name="tr.csv")
    te = features_csv(tmp_path, n=9, name="te.csv")
    ds = run(tmp_path, train=csv_call(tr), test=csv_call(te))
    assert list(ds.splits) == ["train", "test"] and len(ds.splits["test"]) == 9
    assert ds.splits["test"].source == "te.csv" and ds.splits["train"].source == "tr.csv"
    # a valid split carved out of the train file
    ds = run(tmp_path, train=csv_call(tr), test=csv_call(te), split={"train": 0.75, "valid": 0.25})
    assert [len(s) for s in ds.splits.values()] == [30, 10, 9]
    assert set(ds.splits["train"].rows) | set(ds.splits["valid"].rows) == set(range(1, 41))
    # source + an explicit test file: split divides source among the other names
    ds = run(tmp_path, source=csv_call(tr), test=csv_call(te), split=SPLIT3)
    assert [len(s) for s in ds.splits.values()] == [36, 4, 9]
    ds = run(tmp_path, source=csv_call(tr), test=csv_call(te))  # the default 0.8 / 0.1 (/ 0.1)
    assert [len(s) for s in ds.splits.values()] == [36, 4, 9]


def test_normalization_stats_from_train_only(tmp_path):
    src = features_csv(tmp_path, n=100)
    ds = run(tmp_path, source=csv_call(src), split=SPLIT3)
    x = ds.splits["train"].features.astype(np.float64)
    np.testing.assert_allclose(ds.norm_mean, x.mean(0), rtol=1e-6)
    np.testing.assert_allclose(ds.norm_std[:2], x.std(0)[:2], rtol=1e-6)
    assert ds.norm_std[2] == 1.0  # constant column: std 0 -> 1
    everything = np.concatenate([s.features for s in ds.splits.values()]).astype(np.float64)
    assert not np.allclose(ds.norm_mean[:2], everything.mean(0)[:2], rtol=1e-9)
    # the splits keep raw features
    assert ds.splits["train"].features[:, 2].tolist() == [7.0] * len(x)


def test_save_load_round_trip(tmp_path):
    src = features_csv(tmp_path, n=30)
    ds = run(tmp_path, source=csv_call(src), split=SPLIT3)
    ds.save(tmp_path / "art")
    files = sorted(p.name for p in (tmp_path / "art").iterdir())
    assert files == ["arrays.safetensors", "dataset.json"]
    back = Dataset.load(tmp_path / "art")
    assert _same(back, ds)


def _same(a: Dataset, b: Dataset) -> bool:
    assert list(a.splits) == list(b.splits)
    for n in a.splits:
        sa, sb = a.splits[n], b.splits[n]
        assert (sa.features is None) == (sb.features is None)
        if sa.features is not None:
            assert np.array_equal(sa.features, sb.features)
        assert sa.texts == sb.texts and sa.source == sb.source
        assert np.array_equal(sa.labels, sb.labels) and sa.labels.dtype == sb.labels.dtype
        assert np.array_equal(sa.rows, sb.rows)
    for f in ("modality", "input_shape", "label_names", "num_classes", "max_length", "sampler",
              "source", "label_column", "text_column", "feature_names"):
        assert getattr(a, f) == getattr(b, f), f
    for f in ("norm_mean", "norm_std"):
        x, y = getattr(a, f), getattr(b, f)
        assert (x is None and y is None) or np.array_equal(x, y)
    return True


def test_digits_and_regression_round_trip(tmp_path):
    ds = run(tmp_path, source={"$call": "sklearn", "name": "digits"}, split=SPLIT3)
    ds.save(tmp_path / "a")
    assert _same(Dataset.load(tmp_path / "a"), ds)
    r = run(tmp_path, source={"$call": "synthetic", "task": "regress", "n": 40, "features": 3, "classes": 2, "seed": 0},
            split={"train": 0.5, "test": 0.5})
    r.save(tmp_path / "b")
    assert _same(Dataset.load(tmp_path / "b"), r)


# ---------------------------------------------------------------------------------------------
# text and the tokenizer


WORDS = ["good", "bad", "movie", "plot", "actor", "great", "boring", "fun", "long", "short", "the", "a"]


def text_csv(tmp_path: Path, n: int = 80, name: str = "t.csv") -> str:
    rng = np.random.default_rng(0)
    lines = ["text,label"]
    for i in range(n):
        words = rng.choice(WORDS, size=int(rng.integers(3, 20)))
        lines.append(f"\"{' '.join(words)}, really!\",{'pos' if i % 2 else 'neg'}")
    return write(tmp_path, name, "\n".join(lines) + "\n")


def test_text_with_wordpiece_tokenizer(tmp_path):
    src = text_csv(tmp_path)
    ds = run(tmp_path, source=csv_call(src), text="text", split=SPLIT3, max_length=32,
             tokenizer={"$call": "wordpiece", "vocab": 200})
    assert ds.modality == "text" and ds.input_shape is None and ds.norm_mean is None
    assert ds.splits["train"].features is None and ds.splits["train"].texts[0].endswith("really!")
    assert ds.tokenizer_dir is not None and (ds.tokenizer_dir / "tokenizer.json").is_file()
    tok = load_tokenizer(ds.tokenizer_dir)
    from transformers import PreTrainedTokenizerFast

    assert isinstance(tok, PreTrainedTokenizerFast)  # an alias of TokenizersBackend in v5
    assert tok.pad_token_id == 0 and tok.pad_token == "[PAD]" and tok.unk_token == "[UNK]"
    ids = tok("good movie")["input_ids"]
    assert tok.convert_ids_to_tokens(ids) == ["[CLS]", "good", "movie", "[SEP]"]
    assert tok.model_max_length == 32
    assert tok.convert_ids_to_tokens(tok("good €")["input_ids"])[2] == "[UNK]"
    # saved with the dataset, reloaded from there
    ds.save(tmp_path / "art")
    back = Dataset.load(tmp_path / "art")
    assert back.tokenizer_dir == tmp_path / "art" / "tokenizer"
    assert _same(back, ds)
    tok2 = load_tokenizer(back.tokenizer_dir)
    texts = ds.splits["test"].texts
    assert tok2(texts)["input_ids"] == tok(texts)["input_ids"]
    # AutoTokenizer reads the folder too (special tokens from tokenizer_config.json)
    from transformers import AutoTokenizer

    auto = AutoTokenizer.from_pretrained(str(back.tokenizer_dir))
    assert auto.pad_token_id == 0 and auto(texts[0])["input_ids"] == tok(texts[0])["input_ids"]


def test_text_without_tokenizer_keeps_raw_strings(tmp_path):
    src = text_csv(tmp_path, n=20)
    ds = run(tmp_path, source=csv_call(src), text="text", split={"train": 1})
    assert ds.tokenizer_dir is None and len(ds.splits["train"].texts) == 20


@pytest.mark.skipif(not SMS.exists(), reason="shared SMS spam data not present")
def test_sms_spam_tsv(tmp_path):
    ds = data.run({}, attrs(source=csv_call(str(SMS), "\t"), text="SMS", label="Label", split=SPLIT3),
                  make_ctx(tmp_path))
    assert sum(len(s) for s in ds.splits.values()) == 5574  # tab = TSV: quotes are plain text
    assert ds.label_names == ["ham", "spam"]
    spam = [float(s.labels.mean()) for s in ds.splits.values()]
    assert all(abs(f - 747 / 5574) < 0.01 for f in spam)  # stratified


# ---------------------------------------------------------------------------------------------
# bad data


def test_missing_file(tmp_path):
    e = err(tmp_path, source=csv_call("data/nope.csv"))
    assert e.code == "FTP511" and "data/nope.csv" in e.message
    assert str(tmp_path / "data" / "nope.csv") in e.message


def test_missing_column_lists_columns_and_suggests(tmp_path):
    src = features_csv(tmp_path, n=10)
    e = err(tmp_path, source=csv_call(src), label="lable")
    assert e.code == "FTP510" and "`lable`" in e.message and "data/x.csv" in e.message
    assert "`age`, `income`, `const`, `label`" in e.message
    assert "did you mean `label`" in e.hint
    e = err(tmp_path, source=csv_call(src), features=["age", "incme"])
    assert "`incme`" in e.message and "did you mean `income`" in e.hint
    e = err(tmp_path, source=csv_call(src), text="txt")
    assert "`txt`" in e.message


def test_non_numeric_feature_names_row_and_column(tmp_path):
    lines = ["age,label"] + [f"{20 + i},a" for i in range(20)]
    lines[17] = "abc,a"  # data row 17, file line 18
    write(tmp_path, "p.csv", "\n".join(lines) + "\n")
    e = err(tmp_path, source=csv_call("p.csv"))
    assert e.code == "FTP510"
    assert "`p.csv`, row 17 (line 18), column `age`: could not convert 'abc' to a number" in e.message
    assert "features" in e.hint  # implicit feature columns are explained


def test_missing_feature_and_label_values(tmp_path):
    write(tmp_path, "m.csv", "a,label\n1,x\n,y\n3,x\n")
    e = err(tmp_path, source=csv_call("m.csv"))
    assert "row 2 (line 3), column `a`: missing value" in e.message
    write(tmp_path, "l.csv", "a,label\n1,x\n2,y\n3,\n")
    e = err(tmp_path, source=csv_call("l.csv"))
    assert e.code == "FTP510" and "`l.csv`, row 3 (line 4), column `label`: missing label" in e.message
    write(tmp_path, "n.csv", "a,label\n1,x\nnan,y\n")
    assert "row 2 (line 3), column `a`" in err(tmp_path, source=csv_call("n.csv")).message
    rows = [{"a": 1, "label": 0}, {"a": 2}, {"a": 3, "label": 1}]
    write(tmp_path, "j.jsonl", "\n".join(json.dumps(r) for r in rows))
    e = err(tmp_path, source={"$call": "jsonl", "path": "j.jsonl"})
    assert "`j.jsonl`, row 2 (line 2), column `label`: missing label" in e.message


def test_empty_files(tmp_path):
    write(tmp_path, "e.csv", "")
    e = err(tmp_path, source=csv_call("e.csv"))
    assert e.code == "FTP510" and "`e.csv` is empty" in e.message
    write(tmp_path, "h.csv", "a,label\n")
    assert "no data rows" in err(tmp_path, source=csv_call("h.csv")).message
    write(tmp_path, "e.jsonl", "\n\n")
    assert "empty" in err(tmp_path, source={"$call": "jsonl", "path": "e.jsonl"}).message


def test_empty_split(tmp_path):
    write(tmp_path, "s.csv", "a,label\n1,x\n2,y\n3,x\n")
    e = err(tmp_path, source=csv_call("s.csv"), split=SPLIT3)
    assert e.code == "FTP510"
    assert "split `valid` is empty" in e.message and "3 rows" in e.message and "0.1" in e.message
    assert "larger proportion" in e.hint
    e = err(tmp_path, source=csv_call("s.csv"), split={"train": 1.0, "valid": 0})
    assert "positive" in e.message


def test_malformed_rows(tmp_path):
    write(tmp_path, "r.csv", "a,b,label\n1,2,x\n1,2\n")
    e = err(tmp_path, source=csv_call("r.csv"))
    assert "row 2 (line 3): expected 3 fields, found 2" in e.message
    write(tmp_path, "t.csv", "a\tlabel\n1\tx\n")
    e = err(tmp_path, source=csv_call("t.csv"))
    assert "tab-separated" in e.hint
    assert len(run(tmp_path, source=csv_call("t.csv", "\t"), split={"train": 1}).splits["train"]) == 1
    write(tmp_path, "bad.jsonl", '{"a": 1, "label": 0}\n{"a": 2, "label": \n')
    e = err(tmp_path, source={"$call": "jsonl", "path": "bad.jsonl"})
    assert "`bad.jsonl`, row 2 (line 2): invalid JSON" in e.message
    (tmp_path / "bin.csv").write_bytes(b"a,label\n1,\xff\n")
    assert "not UTF-8" in err(tmp_path, source=csv_call("bin.csv")).message
    write(tmp_path, "dup.csv", "a,a,label\n1,2,x\n")
    assert "twice" in err(tmp_path, source=csv_call("dup.csv")).message
    (tmp_path / "bad.parquet").write_bytes(b"not parquet")
    assert "Parquet" in err(tmp_path, source={"$call": "parquet", "path": "bad.parquet"}).message


def test_other_user_errors(tmp_path):
    e = err(tmp_path, source={"$call": "sklearn", "name": "digit"})
    assert "did you mean 'digits'" in e.hint
    e = err(tmp_path, source={"$call": "synthetic", "task": "regress", "n": 20, "features": 2, "classes": 2, "seed": 0},
            sampler="balanced")
    assert "balanced" in e.message
    src = features_csv(tmp_path, n=10)
    assert "text" in err(tmp_path, source=csv_call(src), tokenizer={"$call": "wordpiece", "vocab": 100}).message


def test_check_labels(tmp_path):
    src = features_csv(tmp_path, n=30, labels=[0, 1, 2, 3])
    ds = run(tmp_path, source=csv_call(src), split={"train": 0.5, "test": 0.5})
    check_labels(ds, 4)
    with pytest.raises(StageError) as ei:
        check_labels(ds, 3)
    e = ei.value
    rows3 = sorted(int(r) for s in ds.splits.values() for r, y in zip(s.rows, s.labels) if y == 3)
    assert e.code == "FTP510" and "`data/x.csv`" in e.message and "column `label`" in e.message
    # Every 4th row of the file holds a 3 (rows 4, 8, ...; the header is line 1).
    assert rows3 == list(range(4, 31, 4))
    assert f"{len(rows3)} row(s) have a label outside" in e.message
    assert f"row {rows3[0]} (line {rows3[0] + 1}) has 3" in e.message and "label(s) outside: 3" in e.message
    assert "classify(labels = 4)" in e.hint
    r = run(tmp_path, source={"$call": "synthetic", "task": "regress", "n": 20, "features": 2, "classes": 2, "seed": 0})
    check_labels(r, 1)
    with pytest.raises(StageError):
        check_labels(r, 3)
    with pytest.raises(StageError, match="regress"):
        check_labels(r, 3, task="classify")
    np.testing.assert_array_equal(regression_targets(ds, ds.splits["test"])[:, 0], ds.splits["test"].labels)


def test_importing_data_does_not_import_torch_nor_batching():
    # The tokenizer has its own module: data and batching do not import each other (no cycle).
    code = ("import sys, ftdsl.stages.data, ftdsl.stages.dataset, ftdsl.stages.tokenizer; "
            "assert 'torch' not in sys.modules and 'ftdsl.stages.batching' not in sys.modules; "
            "import ftdsl.stages.batching; assert 'torch' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    import ast

    src = (Path(__file__).resolve().parents[1] / "ftdsl" / "stages" / "batching.py").read_text()
    imported = {n.module for n in ast.walk(ast.parse(src)) if isinstance(n, ast.ImportFrom)}
    assert "ftdsl.stages.data" not in imported and "ftdsl.stages.tokenizer" in imported
