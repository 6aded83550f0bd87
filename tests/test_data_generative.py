"""The data contract of the generative and token tasks (issue 9): the `data` stage reads
instructions (prompt/response or chat messages), text pairs and tagged words into
`Split.records`, plain text without a label column as unlabeled text, refuses bad rows with
FTP510 naming the file, row and line, saves and reloads all of it (FTP503 on damage), and
trains a byte-level BPE tokenizer that `transformers.AutoTokenizer` loads with its chat template.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest

from ftdsl.cli import main
from ftdsl.errors import StageError
from ftdsl.stages import data
from ftdsl.stages.base import StageContext
from ftdsl.stages.dataset import Dataset, check_labels, record_texts

ROOT = Path(__file__).resolve().parents[1]


def make_ctx(tmp_path: Path, seed: int = 0) -> StageContext:
    (tmp_path / "out").mkdir(exist_ok=True)
    return StageContext(name="d", kind="data", pipeline_dir=tmp_path, out_dir=tmp_path / "out",
                        work_dir=tmp_path / "work", seed=seed)


def run(tmp_path: Path, **kw) -> Dataset:
    attrs = dict(source=None, text=None, label="label", features=None, split=None, train=None, valid=None,
                 test=None, max_length=None, tokenizer=None, sampler="shuffle")
    attrs.update(kw)
    return data.run({}, attrs, make_ctx(tmp_path))


def err(tmp_path: Path, **kw) -> StageError:
    with pytest.raises(StageError) as ei:
        run(tmp_path, **kw)
    return ei.value


def jsonl(tmp_path: Path, name: str, rows: list) -> dict:
    """Write rows (dicts, or raw line strings) as a .jsonl file; the source call reading it."""
    lines = [r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) for r in rows]
    (tmp_path / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return {"$call": "jsonl", "path": name}


INSTR = [{"prompt": f"Add {i} and {i + 1}.", "response": str(2 * i + 1)} for i in range(20)]
CHAT = [{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"Double {i}?"},
                      {"role": "assistant", "content": str(2 * i)}]} for i in range(20)]
PAIRS = [{"text": f"The meeting on day {i} was moved to day {i + 2} because of rain.", "summary": f"Meeting moved to day {i + 2}"}
         for i in range(20)]
TAGGED = [{"tokens": ["Ada", "Lovelace", "visited", "Paris", str(i)], "tags": ["B-PER", "I-PER", "O", "B-LOC", 0]}
          for i in range(20)]


# ---------------------------------------------------------------------------------------------
# every modality through `ftdsl run`, and the saved artifact reloaded


def _run_pipeline(tmp_path: Path, rows: list, columns: str, capsys) -> Dataset:
    jsonl(tmp_path, "rows.jsonl", rows)
    p = tmp_path / "p.ftp"
    p.write_text(textwrap.dedent(f"""\
        data d {{
          source = jsonl("rows.jsonl")
          {columns}
          split = {{ train = 0.5, valid = 0.25, test = 0.25 }}
          tokenizer = bpe(vocab = 300)
        }}
        """))
    code = main(["run", str(p), "--cache", str(tmp_path / "cache"), "--quiet"])
    assert code == 0, capsys.readouterr().err
    [meta] = list((tmp_path / "cache").rglob("dataset.json"))
    return Dataset.load(meta.parent)


@pytest.mark.parametrize("rows,columns,modality,expect", [
    (INSTR, 'prompt = "prompt", response = "response"', "instructions",
     lambda r: {"prompt": r["prompt"], "response": r["response"]}),
    (CHAT, 'messages = "messages"', "instructions", lambda r: {"messages": r["messages"]}),
    (PAIRS, 'text = "text", target = "summary"', "text_pairs",
     lambda r: {"source": r["text"], "target": r["summary"]}),
    (TAGGED, 'tokens = "tokens", tags = "tags"', "tagged",
     lambda r: {"tokens": r["tokens"], "tags": [str(t) for t in r["tags"]]}),
])
def test_each_modality_through_run_and_reloaded(tmp_path, capsys, rows, columns, modality, expect):
    ds = _run_pipeline(tmp_path, rows, columns, capsys)
    assert ds.modality == modality and ds.labeled is False and ds.num_classes is None
    assert [len(s) for s in ds.splits.values()] == [10, 5, 5]
    seen = []
    for sp in ds.splits.values():
        assert sp.texts is None and len(sp.records) == len(sp)
        assert sp.labels.dtype == np.int64 and not sp.labels.any()
        for rec, row, line in zip(sp.records, sp.rows, sp.lines):
            assert line == row  # one row per line in these files
            assert rec == expect(rows[int(row) - 1])  # the record is the file's row `row`
            seen.append(int(row))
    assert sorted(seen) == list(range(1, 21))
    # the tokenizer is trained on the train split's texts and ships with the dataset
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(ds.tokenizer_dir))
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    text = record_texts(ds.splits["train"].records)[0]
    assert tok.decode(tok(text)["input_ids"]) == text


def test_save_load_round_trip_keeps_records_and_subset(tmp_path):
    ds = run(tmp_path, source=jsonl(tmp_path, "c.jsonl", CHAT), messages="messages")
    ds.save(tmp_path / "saved")
    back = Dataset.load(tmp_path / "saved")
    assert back.modality == "instructions" and back.labeled is False
    for name, sp in ds.splits.items():
        assert back.splits[name].records == sp.records
        assert np.array_equal(back.splits[name].rows, sp.rows)
    sub = back.splits["train"].subset([2, 0])
    assert sub.records == [back.splits["train"].records[2], back.splits["train"].records[0]]


@pytest.mark.parametrize("damage,why", [
    (lambda r: r["train"][0].update(prompt=3), "not text"),
    (lambda r: r["train"][0].pop("response"), "neither prompt/response"),
    (lambda r: r["train"].pop(), "records for split `train`"),
    (lambda r: r.update(train="x"), "records for split `train`"),
])
def test_a_damaged_records_file_is_ftp503(tmp_path, damage, why):
    ds = run(tmp_path, source=jsonl(tmp_path, "i.jsonl", INSTR), prompt="prompt", response="response")
    ds.save(tmp_path / "saved")
    f = tmp_path / "saved" / "records.json"
    recs = json.loads(f.read_text())
    damage(recs)
    f.write_text(json.dumps(recs))
    with pytest.raises(StageError) as ei:
        Dataset.load(tmp_path / "saved")
    assert ei.value.code == "FTP503" and why in ei.value.message


def test_a_damaged_tagged_record_is_ftp503(tmp_path):
    ds = run(tmp_path, source=jsonl(tmp_path, "t.jsonl", TAGGED), tokens="tokens", tags="tags")
    ds.save(tmp_path / "saved")
    f = tmp_path / "saved" / "records.json"
    recs = json.loads(f.read_text())
    recs["test"][1]["tags"].pop()
    f.write_text(json.dumps(recs))
    with pytest.raises(StageError) as ei:
        Dataset.load(tmp_path / "saved")
    assert ei.value.code == "FTP503" and "split `test`, record 2" in ei.value.message


# ---------------------------------------------------------------------------------------------
# plain text without labels; the existing labelled paths are unchanged


def test_text_without_a_label_column_is_unlabeled_text(tmp_path):
    (tmp_path / "t.csv").write_text("body\n" + "".join(f"line number {i}\n" for i in range(10)))
    ds = run(tmp_path, source={"$call": "csv", "path": "t.csv", "delimiter": ","}, text="body",
             split={"train": 0.8, "test": 0.2}, tokenizer={"$call": "bpe", "vocab": 300})
    assert ds.modality == "text" and ds.labeled is False and ds.num_classes is None and ds.label_column is None
    assert sorted(t for sp in ds.splits.values() for t in sp.texts) == sorted(f"line number {i}" for i in range(10))
    ds.save(tmp_path / "saved")
    back = Dataset.load(tmp_path / "saved")
    assert back.labeled is False and back.splits["train"].texts == ds.splits["train"].texts
    # a classifier on it: FTP510 saying there are no labels
    with pytest.raises(StageError) as ei:
        check_labels(back, 2)
    assert ei.value.code == "FTP510" and "no label column" in ei.value.message


def test_text_with_a_label_column_stays_labelled(tmp_path):
    (tmp_path / "t.csv").write_text("body,label\n" + "".join(f"line {i},{i % 2}\n" for i in range(10)))
    ds = run(tmp_path, source={"$call": "csv", "path": "t.csv", "delimiter": ","}, text="body")
    assert ds.labeled is True and ds.num_classes == 2 and ds.label_column == "label"
    # a label column named in the block must exist (as before)
    e = err(tmp_path, source={"$call": "csv", "path": "t.csv", "delimiter": ","}, text="body", label="stars")
    assert e.code == "FTP510" and "no column `stars`" in e.message


def test_labelled_and_unlabelled_files_disagree(tmp_path):
    (tmp_path / "a.csv").write_text("body,label\n" + "".join(f"x {i},{i % 2}\n" for i in range(6)))
    (tmp_path / "b.csv").write_text("body\n" + "".join(f"y {i}\n" for i in range(6)))
    e = err(tmp_path, train={"$call": "csv", "path": "a.csv", "delimiter": ","},
            test={"$call": "csv", "path": "b.csv", "delimiter": ","}, text="body")
    assert e.code == "FTP510" and "`b.csv` has no column `label`" in e.message and "a.csv" in e.message


# ---------------------------------------------------------------------------------------------
# splits and samplers on records


def test_explicit_split_files_and_carving_for_records(tmp_path):
    tr = jsonl(tmp_path, "tr.jsonl", INSTR[:12])
    te = jsonl(tmp_path, "te.jsonl", INSTR[12:])
    ds = run(tmp_path, train=tr, test=te, split={"train": 0.75, "valid": 0.25}, prompt="prompt", response="response")
    assert {k: len(v) for k, v in ds.splits.items()} == {"train": 9, "valid": 3, "test": 8}
    assert ds.splits["test"].source == "te.jsonl" and ds.splits["test"].records == [
        {"prompt": r["prompt"], "response": r["response"]} for r in INSTR[12:]]
    carved = ds.splits["train"].records + ds.splits["valid"].records
    assert sorted(r["prompt"] for r in carved) == sorted(r["prompt"] for r in INSTR[:12])
    # the same seed carves the same rows
    again = run(tmp_path, train=tr, test=te, split={"train": 0.75, "valid": 0.25}, prompt="prompt",
                response="response")
    assert again.splits["valid"].records == ds.splits["valid"].records


def test_balanced_sampler_on_records_is_ftp510(tmp_path):
    e = err(tmp_path, source=jsonl(tmp_path, "i.jsonl", INSTR), prompt="prompt", response="response",
            sampler="balanced")
    assert e.code == "FTP510" and "balanced" in e.message and "instruction records" in e.message


# ---------------------------------------------------------------------------------------------
# bad rows: FTP510 naming the file, the row, its line and the column


def _bad(tmp_path, rows, **cols) -> str:
    e = err(tmp_path, source=jsonl(tmp_path, "bad.jsonl", rows), **cols)
    assert e.code == "FTP510"
    return e.message


PR = {"prompt": "prompt", "response": "response"}
TT = {"tokens": "tokens", "tags": "tags"}


@pytest.mark.parametrize("bad_row,cols,expect", [
    ({"prompt": "Hi"}, PR, "column `response`: missing text"),
    ({"prompt": 7, "response": "x"}, PR, "column `prompt`: expected text (a string), found a number 7"),
    ({"prompt": None, "response": "x"}, PR, "column `prompt`: missing text"),
    ({"messages": "hello"}, {"messages": "messages"}, "expected a list of chat messages, found str"),
    ({"messages": [{"role": "user"}]}, {"messages": "messages"}, "message 1 is not a {role, content} object"),
    ({"messages": [{"role": "user", "content": "a"}, "b"]}, {"messages": "messages"}, "message 2 is not a {role, content}"),
    ({"messages": [{"role": "robot", "content": "a"}]}, {"messages": "messages"}, 'unknown role "robot"'),
    ({"messages": [{"role": "user", "content": ["a"]}]}, {"messages": "messages"}, "message 1's content is a list"),
    ({"messages": []}, {"messages": "messages"}, "the list of chat messages is empty"),
    ({"tokens": ["a", "b"], "tags": ["O"]}, TT, "2 words in `tokens` but 1 tags in `tags`"),
    ({"tokens": [], "tags": []}, TT, "column `tokens`: the list of words is empty"),
    ({"tokens": "Ada visited Paris", "tags": ["B-PER", "O", "B-LOC"]}, TT, "expected a list of words, found str"),
    ({"tokens": ["a", {"x": 1}], "tags": ["O", "O"]}, TT, "item 2 of the words is an object"),
    ({"tokens": ["a", " "], "tags": ["O", "O"]}, TT, "word 2 is empty"),
    ({"tokens": ["a"], "tags": [None]}, TT, "item 1 of the tags is NoneType"),
    ({"tokens": ["a"]}, TT, "column `tags`: missing tags"),
    ({"other": 1}, {"messages": "messages"}, "column `messages`: missing chat messages"),
])
def test_bad_rows_name_the_file_row_and_line(tmp_path, bad_row, cols, expect):
    good = {"prompt": "a", "response": "b", "messages": [{"role": "user", "content": "hi"}],
            "tokens": ["a"], "tags": ["O"]}
    keep = set(cols.values())
    rows = [{k: v for k, v in good.items() if k in keep} for _ in range(6)]
    # a blank line and a comment-free layout: the bad row is data row 5, on file line 6
    lines = [json.dumps(r) for r in rows[:4]] + ["", json.dumps(bad_row)] + [json.dumps(r) for r in rows[4:]]
    msg = _bad(tmp_path, lines, **cols)
    assert f"`bad.jsonl`, row 5 (line 6), column `{next(iter(cols.values()))}`" in msg or \
        "`bad.jsonl`, row 5 (line 6)" in msg, msg
    assert expect in msg, msg


def test_csv_records_and_a_bad_csv_row(tmp_path):
    (tmp_path / "p.csv").write_text("prompt,response\nhi,there\nabc,\n")
    ds = run(tmp_path, source={"$call": "csv", "path": "p.csv", "delimiter": ","}, **PR, split={"train": 1})
    # csv cells are strings: an empty response is the text ""
    assert ds.splits["train"].records == [{"prompt": "hi", "response": "there"}, {"prompt": "abc", "response": ""}]
    e = err(tmp_path, source={"$call": "csv", "path": "p.csv", "delimiter": ","}, prompt="prompt", response="answer")
    assert e.code == "FTP510" and "`p.csv`: no column `answer` (the response)" in e.message
    (tmp_path / "t.csv").write_text("tokens,tags\nAda,B-PER\n")
    e = err(tmp_path, source={"$call": "csv", "path": "t.csv", "delimiter": ","}, **TT, split={"train": 1})
    assert "`t.csv`, row 1 (line 2), column `tokens`: expected a list of words" in e.message


def test_tagged_records_from_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"w": ["Ada", "met", "Omar", str(i)], "t": ["B-PER", "O", "B-PER", "O"]} for i in range(10)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "t.parquet")
    ds = run(tmp_path, source={"$call": "parquet", "path": "t.parquet"}, tokens="w", tags="t", split={"train": 1})
    assert ds.modality == "tagged" and ds.splits["train"].records == [{"tokens": r["w"], "tags": r["t"]} for r in rows]


def test_bad_input_through_run_is_a_clean_stage_error(tmp_path, capsys):
    jsonl(tmp_path, "rows.jsonl", [{"tokens": ["a", "b"], "tags": ["O", "O"]}] * 3 + [{"tokens": ["a"], "tags": ["O", "O"]}])
    p = tmp_path / "p.ftp"
    p.write_text('data d {\n  source = jsonl("rows.jsonl")\n  tokens = "tokens"\n  tags = "tags"\n}\n')
    code = main(["run", str(p), "--cache", str(tmp_path / "c"), "--quiet"])
    err_text = capsys.readouterr().err
    assert code == 3 and "Traceback" not in err_text
    assert "FTP510" in err_text and "`rows.jsonl`, row 4 (line 4): 1 words in `tokens` but 2 tags" in err_text


@pytest.mark.parametrize("cols,expect", [
    ({"prompt": "p"}, "`prompt` needs `response`"),
    ({"response": "r"}, "`response` needs `prompt`"),
    ({"tags": "t"}, "`tags` needs `tokens`"),
    ({"tokens": "t"}, "`tokens` needs `tags`"),
    ({"target": "t"}, "`target` needs `text`"),
    ({"prompt": "p", "response": "r", "tokens": "t", "tags": "g"}, "columns of 2 kinds of data"),
    ({"messages": "m", "prompt": "p", "response": "r"}, "either `messages`"),
    ({"prompt": "p", "response": "r", "text": "x"}, "`text` (plain text) cannot be set"),
])
def test_column_combinations_the_stage_refuses(tmp_path, cols, expect):
    e = err(tmp_path, source=jsonl(tmp_path, "i.jsonl", INSTR), **cols)
    assert e.code == "FTP510" and expect in e.message


def test_records_from_a_source_without_columns(tmp_path):
    e = err(tmp_path, source={"$call": "sklearn", "name": "iris"}, **PR)
    assert e.code == "FTP510" and "numeric features" in e.message


# ---------------------------------------------------------------------------------------------
# tokenizers on records


def test_bpe_tokenizer_loads_in_autotokenizer_with_a_chat_template(tmp_path):
    from transformers import AutoTokenizer

    ds = run(tmp_path, source=jsonl(tmp_path, "c.jsonl", CHAT), messages="messages", max_length=48,
             tokenizer={"$call": "bpe", "vocab": 320})
    tok = AutoTokenizer.from_pretrained(str(ds.tokenizer_dir))
    assert tok.model_max_length == 48 and tok.pad_token == "<pad>" and tok.eos_token == "<eos>"
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Double 4?"},
            {"role": "assistant", "content": "8"}]
    full = tok.apply_chat_template(msgs, tokenize=False)
    assert full == "<bos><|system|>\nBe brief.\n<|user|>\nDouble 4?\n<|assistant|>\n8<eos>"
    prompt = tok.apply_chat_template(msgs[:2], tokenize=False, add_generation_prompt=True)
    assert prompt == "<bos><|system|>\nBe brief.\n<|user|>\nDouble 4?\n<|assistant|>\n" and full.startswith(prompt)
    # the token ids of the prompt are a prefix of the conversation's (the role markers are single tokens)
    ids_full = tok(full, add_special_tokens=False)["input_ids"]
    ids_prompt = tok(prompt, add_special_tokens=False)["input_ids"]
    assert ids_full[: len(ids_prompt)] == ids_prompt and ids_full[-1] == tok.eos_token_id
    assert tok.convert_ids_to_tokens(ids_prompt[-2:]) == ["<|assistant|>", "Ċ"]
    # nothing is added around a plain encode; every byte is known (no <unk>)
    ids = tok("naïve 日本語 ✓")["input_ids"]
    assert tok.unk_token_id not in ids and tok.bos_token_id not in ids and tok.decode(ids) == "naïve 日本語 ✓"
    # ftdsl's own loader gives the same tokenizer
    from ftdsl.stages.tokenizer import load_tokenizer

    mine = load_tokenizer(ds.tokenizer_dir)
    assert mine.apply_chat_template(msgs, tokenize=False) == full and mine.eos_token_id == tok.eos_token_id
    assert mine(full, add_special_tokens=False)["input_ids"] == ids_full


def test_bpe_learns_from_every_text_field(tmp_path):
    rows = [{"prompt": "zqxj " * 3, "response": "wvkp " * 3}] * 30
    ds = run(tmp_path, source=jsonl(tmp_path, "i.jsonl", rows), split={"train": 1}, **PR,
             tokenizer={"$call": "bpe", "vocab": 300})
    vocab = json.loads((ds.tokenizer_dir / "tokenizer.json").read_text())["model"]["vocab"]
    assert "zqxj" in vocab and "wvkp" in vocab  # merges learned from prompts and from responses


def test_wordpiece_on_tagged_words(tmp_path):
    ds = run(tmp_path, source=jsonl(tmp_path, "t.jsonl", TAGGED), **TT, tokenizer={"$call": "wordpiece", "vocab": 60})
    vocab = json.loads((ds.tokenizer_dir / "tokenizer.json").read_text())["model"]["vocab"]
    assert "paris" in vocab or "##is" in vocab  # lowercased words of the train split


# ---------------------------------------------------------------------------------------------
# lint: data columns, task and architecture compatibility (ftdsl/check/rules/compat.py)


def lint(text: str):
    from ftdsl.frontend import compile_pipeline

    return compile_pipeline("p.ftp", (), text=text).diagnostics


def at(text: str, needle: str, offset: int = 0) -> tuple[int, int]:
    """1-based (line, col) of `needle` in `text`, moved `offset` characters right."""
    i = text.index(needle) + offset
    return text.count("\n", 0, i) + 1, i - (text.rfind("\n", 0, i) + 1) + 1


def codes_of(diags, code: str):
    found = [d for d in diags if d.code == code]
    assert found, f"no {code} in {[(d.code, d.message) for d in diags]}"
    return found


LLAMA = "model lm { arch = llama(layers = 1, heads = 2, width = 32), task = causal_lm() }\n"


def _use(data: str, model: str = LLAMA, m: str = "lm") -> str:
    return data + model + f"train t {{ model = {m}, data = d, max_steps = 1 }}\n"


@pytest.mark.parametrize("data_block", [
    'data d { source = jsonl("x.jsonl"), prompt = "p", response = "r", tokenizer = bpe(vocab = 300) }\n',
    'data d { source = jsonl("x.jsonl"), messages = "m", tokenizer = bpe(vocab = 300) }\n',
    'data d { source = jsonl("x.jsonl"), text = "body", tokenizer = wordpiece(vocab = 300) }\n',
])
def test_causal_lm_data_that_fits_lints_clean(data_block):
    assert [(d.code, d.message) for d in lint(_use(data_block))] == []


def test_seq2seq_and_token_classify_data_that_fits_lint_clean():
    t5 = "model s { arch = t5(layers = 1, heads = 2, width = 32), task = seq2seq() }\n"
    assert lint(_use('data d { source = jsonl("x.jsonl"), text = "a", target = "b", tokenizer = bpe(vocab = 300) }\n', t5, "s")) == []
    tc = 'model k { pretrained = "bert-base-cased", task = token_classify(labels = ["O", "B-PER"]) }\n'
    diags = lint(_use('data d { source = jsonl("x.jsonl"), tokens = "w", tags = "t" }\n', tc, "k"))
    assert not [d for d in diags if d.code in ("FTP240", "FTP246", "FTP208", "FTP211")]


@pytest.mark.parametrize("data_block,code,needle,words", [
    ('data d { source = jsonl("x.jsonl"), prompt = "p" }\n', "FTP208", "prompt", "`prompt` needs `response`"),
    ('data d { source = jsonl("x.jsonl"), response = "r" }\n', "FTP208", "response", "`response` needs `prompt`"),
    ('data d { source = jsonl("x.jsonl"), tags = "t" }\n', "FTP208", "tags", "`tags` needs `tokens`"),
    ('data d { source = jsonl("x.jsonl"), tokens = "w" }\n', "FTP208", "tokens", "`tokens` needs `tags`"),
    ('data d { source = jsonl("x.jsonl"), target = "t" }\n', "FTP208", "target", "`target` needs `text`"),
    ('data d { source = jsonl("x.jsonl"), prompt = "p", response = "r", tokens = "w", tags = "t" }\n', "FTP211",
     "tokens", "holds one kind of data"),
    ('data d { source = jsonl("x.jsonl"), messages = "m", prompt = "p", response = "r" }\n', "FTP211", "prompt",
     "sets `messages` (chat records) and `prompt`"),
    ('data d { source = jsonl("x.jsonl"), prompt = "p", response = "r", text = "x" }\n', "FTP211", "text =",
     "`text` does not apply"),
    ('data d { source = jsonl("x.jsonl"), prompt = "p", response = "r", label = "y" }\n', "FTP211", "label",
     "`label` does not apply"),
    ('data d { source = jsonl("x.jsonl"), messages = "m", sampler = balanced }\n', "FTP211", "balanced",
     "`sampler = balanced` needs class labels"),
    ('data d { source = sklearn("iris"), messages = "m" }\n', "FTP240", "messages", "has no column `m`"),
])
def test_data_column_rules(data_block, code, needle, words):
    src = _use(data_block)
    [d] = codes_of(lint(src), code)
    assert words in d.message and d.hint
    assert (d.span.line, d.span.col) == at(src, needle)


@pytest.mark.parametrize("data_block,model,m,words", [
    ('data d { source = jsonl("x.jsonl"), tokens = "w", tags = "t" }\n', LLAMA, "lm",
     "feeds tagged words from `d` to `lm`, whose task `causal_lm()` takes"),
    ('data d { source = jsonl("x.jsonl"), prompt = "p", response = "r" }\n',
     "model c { arch = transformer(), task = classify(labels = 2) }\n", "c", "whose task `classify()` takes"),
    ('data d { source = jsonl("x.jsonl"), text = "x" }\n',
     "model s { arch = t5(), task = seq2seq() }\n", "s", "feeds text from `d` to `s`, whose task `seq2seq()`"),
    ('data d { source = sklearn("digits") }\n', LLAMA, "lm", "numeric images from `d`"),
])
def test_a_task_that_does_not_take_the_data_is_ftp240(data_block, model, m, words):
    src = _use(data_block, model, m)
    diags = codes_of(lint(src), "FTP240")
    assert len(diags) == 1  # one diagnostic for the pair, not one for the task and one for the arch
    d = diags[0]
    assert words in d.message, d.message
    assert (d.span.line, d.span.col) == at(src, "data = d", offset=7)  # at the data reference
    assert d.secondary and "takes" in d.secondary[0].message
    assert "reads" in d.hint


@pytest.mark.parametrize("model,words,hint", [
    ("model m { arch = gpt(), task = classify(labels = 2) }\n", "`gpt(...)` carries causal_lm(), not classify()",
     "`arch = transformer(...)`"),
    ("model m { arch = transformer(), task = causal_lm() }\n", "not causal_lm()", "`arch = gpt(...)`"),
    ("model m { arch = llama(), task = seq2seq() }\n", "not seq2seq()", "`arch = t5(...)`"),
    ('model m { arch = rnn(), task = token_classify(labels = ["O"]) }\n', "not token_classify()",
     "token_classify() needs a pretrained model"),
])
def test_an_arch_that_cannot_carry_its_task_is_ftp246(model, words, hint):
    src = 'data d { source = jsonl("x.jsonl"), text = "x" }\n' + model + "train t { model = m, data = d, max_steps = 1 }\n"
    [d] = codes_of(lint(src), "FTP246")
    assert words in d.message and hint in d.hint
    assert (d.span.line, d.span.col) == at(src, "task = ", offset=7)  # at the task call
    assert d.secondary and "is built for" in d.secondary[0].message


def test_ftp246_is_explained():
    from ftdsl.diagnostics.codes import CODES

    c = CODES["FTP246"]
    assert c.name == "arch-task-mismatch" and "ARCH_TASKS" in c.why and c.example and c.instead


# ---------------------------------------------------------------------------------------------
# the shipped example sets


def test_shipped_examples_are_reproducible_and_read_cleanly(tmp_path):
    import subprocess
    import sys

    data_dir = ROOT / "pipelines" / "data"
    r = subprocess.run([sys.executable, str(data_dir / "make_examples.py"), "--check"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    cases = {
        "instruct.jsonl": (dict(prompt="prompt", response="response"), "instructions"),
        "ner.jsonl": (dict(tokens="tokens", tags="tags"), "tagged"),
        "summarize.jsonl": (dict(text="text", target="summary"), "text_pairs"),
    }
    for name, (cols, modality) in cases.items():
        path = data_dir / name
        assert path.stat().st_size < 200_000
        ctx = make_ctx(tmp_path)
        ds = data.run({}, dict(source={"$call": "jsonl", "path": str(path)}, label="label", sampler="shuffle", **cols),
                      StageContext(name="d", kind="data", pipeline_dir=data_dir, out_dir=ctx.out_dir,
                                   work_dir=ctx.work_dir, seed=0))
        assert ds.modality == modality and sum(len(s) for s in ds.splits.values()) == 400
    tags = {t for line in (data_dir / "ner.jsonl").read_text().splitlines() for t in json.loads(line)["tags"]}
    assert tags == {"O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"}


def test_a_classifier_on_unlabeled_text_is_a_clean_ftp510(tmp_path, capsys):
    (tmp_path / "t.csv").write_text("body\n" + "".join(f"some words {i}\n" for i in range(20)))
    p = tmp_path / "p.ftp"
    p.write_text(textwrap.dedent("""\
        data d { source = csv("t.csv"), text = "body", tokenizer = wordpiece(vocab = 60) }
        model m { arch = transformer(layers = 1, dim = 16, heads = 2, ff = 16), task = classify(labels = 2) }
        train t { model = m, data = d, max_steps = 1 }
        """))
    code = main(["run", str(p), "--cache", str(tmp_path / "c"), "--quiet"])
    err_text = capsys.readouterr().err
    assert code == 3 and "Traceback" not in err_text
    assert "FTP510" in err_text and "`t.csv` has no label column" in err_text and "set `label" in err_text
