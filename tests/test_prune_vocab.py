"""Vocabulary trimming (issue 10 item 4, `structured(what = [..., vocab])`): the trimmed model with
its trimmed tokenizer computes what the original computes on the training texts, unseen words still
tokenize into kept pieces, the artifact saves, loads, exports (ONNX, hf) and predicts through the CLI,
lint refuses `vocab` where there is no vocabulary, and `what = all` leaves the vocabulary alone."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from ftdsl.cli import main
from ftdsl.errors import StageError
from ftdsl.stages.base import Reporter, StageContext
from ftdsl.stages.torch_model import TorchModel

transformers = pytest.importorskip("transformers")

WORDS = ("film", "book", "song", "play", "show", "story", "movie", "album", "poem", "novel")
MOODS = ("good", "bad", "fine", "great", "awful", "dull", "bright", "sad", "warm", "cold")
# the tokenizer learns from all of these; the model is fine-tuned on the first part only
ALL_TEXTS = [f"the {a} was {b}" for a in WORDS for b in MOODS] + [
    "an extraordinary masterpiece of cinema", "unbelievably boring nonsense", "quirky charming whimsical",
    "xylophone zebra quartz jukebox", "the soundtrack felt overwrought", "wonderful performances throughout"]
TRAIN = [f"the {a} was {b}" for a in WORDS[:5] for b in MOODS[:6]]
VALID = ["the poem was warm", "an extraordinary story", "the film was good"]


def _bert_folder(tmp_path: Path) -> Path:
    from ftdsl.stages.tokenizer import train_wordpiece

    folder = tmp_path / "bert"
    train_wordpiece(ALL_TEXTS * 3, 300, folder, max_length=16)
    vocab = json.loads((folder / "tokenizer.json").read_text())["model"]["vocab"]
    (folder / "vocab.txt").write_text("".join(t + "\n" for t, _ in sorted(vocab.items(), key=lambda x: x[1])))
    cfg = transformers.BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=64, max_position_embeddings=32, num_labels=2)
    torch.manual_seed(0)
    net = transformers.BertForSequenceClassification(cfg)
    with torch.no_grad():
        for n, p in net.named_parameters():
            if "LayerNorm" not in n:
                p.normal_(0, 0.3)
    net.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    from ftdsl.stages import model as model_stage

    tmp = tmp_path_factory.mktemp("vocab")
    _bert_folder(tmp)
    ctx = StageContext(name="m", kind="model", pipeline_dir=tmp, out_dir=tmp / "o-m", work_dir=tmp / "w")
    base = model_stage.run({}, {"pretrained": "bert", "task": {"$call": "classify", "labels": 2}}, ctx)
    return base.with_module(base.build()), tmp


def _data(train=TRAIN, valid=VALID):
    splits = {"train": SimpleNamespace(texts=list(train)), "valid": SimpleNamespace(texts=list(valid))}
    return SimpleNamespace(splits=splits, split=lambda name: splits[name])


def _prune(src_art, tmp: Path, what, name: str, data=None):
    from ftdsl.stages.prune_structured import run_structured

    ctx = StageContext(name=name, kind="prune", pipeline_dir=tmp, out_dir=tmp / f"o-{name}", work_dir=tmp / f"w-{name}",
                       reporter=Reporter())
    method = {"$call": "structured", "amount": 0.5, "what": what}
    return run_structured(src_art, method, None, data if data is not None else _data(), ctx, None), ctx


def _logits(art: TorchModel, texts: list[str]) -> torch.Tensor:
    tok = art.load_tokenizer()
    enc = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        return art.build()(enc["input_ids"], enc["attention_mask"])


def test_trimmed_model_computes_the_same_logits_on_the_train_texts(src, tmp_path):
    art, tmp = src
    small, ctx = _prune(art, tmp_path, ["vocab"], "v")
    small.save(tmp_path / "a")
    back = TorchModel.load(tmp_path / "a")  # the record and config rebuild the smaller embedding
    rows0 = art.build().net.get_input_embeddings().num_embeddings
    emb = back.build().net.get_input_embeddings()
    report = json.loads((ctx.out_dir / "prune.json").read_text())["vocab"]
    assert emb.num_embeddings == report["after"] < 0.6 * rows0 and report["before"] == rows0
    assert back.spec["shrunk"]["tensors"]["net.bert.embeddings.word_embeddings.weight"] == [report["after"], 32]
    assert report["train_rows_changed"] == 0 and report["embedding_params_removed"] == (rows0 - report["after"]) * 32
    tok0, tok1 = art.load_tokenizer(), back.load_tokenizer()
    assert len(tok1) == report["after"] and tok1.pad_token_id == 0 == tok0.pad_token_id
    ids0 = tok0(TRAIN)["input_ids"]
    ids1 = tok1(TRAIN)["input_ids"]
    assert ids0 != ids1  # renumbered: the comparison of logits below is a real one
    assert [tok0.convert_ids_to_tokens(x) for x in ids0] == [tok1.convert_ids_to_tokens(x) for x in ids1]
    torch.testing.assert_close(_logits(back, TRAIN), _logits(art, TRAIN), atol=1e-5, rtol=1e-5)
    # vocab.txt follows tokenizer.json
    lines = (tmp_path / "a" / "tokenizer" / "vocab.txt").read_text().splitlines()
    assert lines == tok1.convert_ids_to_tokens(list(range(len(lines))))


def test_unseen_words_tokenize_into_kept_pieces_never_unk(src, tmp_path):
    art, _ = src
    small, _ = _prune(art, tmp_path, ["vocab"], "u")
    tok0, tok1 = art.load_tokenizer(), small.load_tokenizer()
    for text in ("an extraordinary masterpiece", "xylophone quartz", "whimsical soundtrack overwrought"):
        t0, t1 = tok0.tokenize(text), tok1.tokenize(text)
        assert "[UNK]" not in t0 and "[UNK]" not in t1, (t0, t1)
        assert t1 != t0 or text.split()[0] == "an"  # longer pieces were removed: shorter ones spell the word
        assert tok1.convert_tokens_to_string(t1) == tok0.convert_tokens_to_string(t0) == text
    assert "extraordinary" not in tok1.get_vocab() and "extraordinary" in tok0.get_vocab()


def test_byte_level_bpe_keeps_the_parts_of_its_merges_and_computes_the_same(tmp_path):
    """A RoBERTa-like model with a byte-level BPE tokenizer: merges whose result is removed go, the
    parts of every kept token stay, train texts give the same logits, unseen text is never unknown."""
    from ftdsl.stages import model as model_stage
    from ftdsl.stages.tokenizer import train_bpe

    folder = tmp_path / "rob"
    train_bpe(ALL_TEXTS * 3, 400, folder, max_length=32)
    tj = json.loads((folder / "tokenizer.json").read_text())
    cfg = transformers.RobertaConfig(vocab_size=len(tj["model"]["vocab"]), hidden_size=32, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=32, max_position_embeddings=64,
                                     pad_token_id=0, num_labels=2)
    torch.manual_seed(0)
    transformers.RobertaForSequenceClassification(cfg).save_pretrained(folder)
    ctx = StageContext(name="m", kind="model", pipeline_dir=tmp_path, out_dir=tmp_path / "o-m", work_dir=tmp_path / "w")
    base = model_stage.run({}, {"pretrained": "rob", "task": {"$call": "classify", "labels": 2}}, ctx)
    art = base.with_module(base.build())
    small, pctx = _prune(art, tmp_path, ["vocab"], "bpe")
    small.save(tmp_path / "a")
    back = TorchModel.load(tmp_path / "a")
    report = json.loads((pctx.out_dir / "prune.json").read_text())["vocab"]
    assert report["tokenizer"] == "BPE" and report["after"] < 0.8 * report["before"] and report["chars_without_piece"] == 0
    tj1 = json.loads((tmp_path / "a" / "tokenizer" / "tokenizer.json").read_text())
    assert 0 < len(tj1["model"]["merges"]) < len(tj["model"]["merges"])
    tok0, tok1 = art.load_tokenizer(), back.load_tokenizer()
    tok0.pad_token = tok1.pad_token = "<pad>"
    assert tok0(TRAIN)["input_ids"] != tok1(TRAIN)["input_ids"]
    assert [tok0.convert_ids_to_tokens(x) for x in tok0(TRAIN)["input_ids"]] == [
        tok1.convert_ids_to_tokens(x) for x in tok1(TRAIN)["input_ids"]]
    torch.testing.assert_close(_logits(back, TRAIN), _logits(art, TRAIN), atol=1e-5, rtol=1e-5)
    unseen = "zany überquirky jukebox!"
    assert "<unk>" not in tok1.tokenize(unseen) and tok1.decode(tok1(unseen)["input_ids"]) == unseen
    assert len(tok1.tokenize("extraordinary masterpiece")) > len(tok0.tokenize("extraordinary masterpiece"))


def test_what_all_does_not_trim_the_vocabulary(src, tmp_path):
    art, _ = src
    rows0 = art.build().net.get_input_embeddings().num_embeddings
    small, ctx = _prune(art, tmp_path, "all", "a")
    assert small.build().net.get_input_embeddings().num_embeddings == rows0
    assert small.tokenizer_dir == art.tokenizer_dir
    report = json.loads((ctx.out_dir / "prune.json").read_text())
    assert "vocab" not in report and set(report["removed"]) == {"heads", "ffn"}


def test_a_tokenizer_ftdsl_cannot_rewrite_is_ftp530_before_anything_is_written(src, tmp_path):
    art, _ = src
    tok_dir = tmp_path / "bpe_tok"
    tok_dir.mkdir()
    tj = json.loads((art.tokenizer_dir / "tokenizer.json").read_text())
    tj["model"] = {"type": "Unigram", "unk_id": 1, "vocab": [[t, -1.0] for t in tj["model"]["vocab"]]}
    (tok_dir / "tokenizer.json").write_text(json.dumps(tj))
    other = TorchModel(art.spec, art.state_dict(), tokenizer_dir=tok_dir, hf_config=art.hf_config)
    with pytest.raises(StageError) as e:
        _prune(other, tmp_path, ["heads", "vocab"], "b")
    assert e.value.code == "FTP530" and "`Unigram` tokenizer" in e.value.message
    assert not (tmp_path / "o-b").exists() and not (tmp_path / "w-b").exists()


# --------------------------------------------------------------------------------------------
# Through the CLI

PIPE = """\
pipeline vocab {{ seed = 1 }}
data d {{
  train = csv("train.csv"), valid = csv("valid.csv"), test = csv("test.csv")
  text = "text", label = "label", max_length = 16
}}
model m {{ pretrained = "{bert}", task = classify(labels = 2) }}
train t {{ model = m, data = d, epochs = 1, batch = 8, precision = fp32, optimizer = adamw(lr = 1e-3) }}
prune small {{ from = t, method = structured(amount = 0.5, what = [heads, ffn, vocab]),
              recover = {{ epochs = 1, data = d, batch = 8 }} }}
prune lean {{ from = t, method = structured(amount = 0.5, what = [ffn, vocab]) , recover = {{ epochs = 1, data = d }} }}
export e {{ from = small, format = onnx(), verify = true }}
export h {{ from = lean, format = hf(), verify = true }}
evaluate r {{ models = [t, small, lean, e], data = d.test, metrics = [accuracy] }}
"""


def _csv(path: Path, texts: list[str]) -> None:
    path.write_text("text,label\n" + "".join(f"{t},{int(any(w in t for w in MOODS[:5]))}\n" for t in texts))


def test_cli_trimmed_model_exports_and_predicts(tmp_path, capsys):
    _bert_folder(tmp_path)
    _csv(tmp_path / "train.csv", TRAIN)
    _csv(tmp_path / "valid.csv", VALID)
    _csv(tmp_path / "test.csv", ["the album was great", "the novel was dull"])
    p = tmp_path / "p.ftp"
    p.write_text(PIPE.format(bert="bert"))
    cache = str(tmp_path / "c")
    assert main(["run", str(p), "--cache", cache, "--quiet", "--summary-json", str(tmp_path / "s.json")]) == 0, \
        capsys.readouterr().err
    metrics = {s["name"]: s["metrics"] for s in json.loads((tmp_path / "s.json").read_text())["stages"]}
    assert metrics["e"]["verify.max_abs_diff"] < 1e-4 and metrics["small"]["removed.vocab"] > 0
    acc = {k.split(".")[0]: v for k, v in metrics["r"].items() if k.endswith(".accuracy")}
    assert set(acc) == {"t", "small", "lean", "e"} and acc["e"] == pytest.approx(acc["small"])
    report = json.loads((tmp_path / "out" / "small" / "prune.json").read_text())
    assert report["vocab"]["valid"]["rows"] == 3 and report["vocab"]["train_rows_changed"] == 0
    new = tmp_path / "new.csv"
    new.write_text("text\nthe film was good\nan unseen xylophone concert\n")
    rows = {}
    for stage in ("small", "e"):
        out = tmp_path / f"{stage}.jsonl"
        assert main(["predict", str(p), stage, "--input", str(new), "--output", str(out), "--cache", cache,
                     "--quiet"]) == 0, capsys.readouterr().err
        rows[stage] = [json.loads(x) for x in out.read_text().splitlines()]
    probs = {s: np.array([list(r["probabilities"].values()) for r in v]) for s, v in rows.items()}
    np.testing.assert_allclose(probs["e"], probs["small"], atol=1e-4)
    # the hf folder (FFN rows and vocabulary trimmed) loads with transformers' pipeline
    clf = transformers.pipeline("text-classification", model=str(tmp_path / "out" / "h"))
    got = clf(["the film was good", "an unseen xylophone concert"])
    assert len(got) == 2 and all(0 <= r["score"] <= 1 for r in got)
    vocab_h = json.loads((tmp_path / "out" / "h" / "config.json").read_text())["vocab_size"]
    assert vocab_h == json.loads((tmp_path / "out" / "lean" / "prune.json").read_text())["vocab"]["after"]


def test_lint_vocab_on_an_mlp_is_ftp245(tmp_path, capsys):
    p = tmp_path / "p.ftp"
    p.write_text(textwrap.dedent("""\
        data d { source = sklearn("iris") }
        model m { arch = mlp(hidden = [16]), task = classify(labels = 3) }
        train t { model = m, data = d, epochs = 1 }
        prune a { from = t, method = structured(amount = 0.3, what = [units, vocab]), recover = { data = d } }
        """))
    assert main(["lint", str(p)]) == 1
    out = capsys.readouterr()
    text = out.out + out.err
    assert text.count("FTP245") == 1 and "no vocab" in text and "what = [units]" in text


def test_lint_vocab_without_recover_is_ftp256(tmp_path, capsys):
    p = tmp_path / "p.ftp"
    (tmp_path / "sst2.csv").write_text("sentence,label\ngood,1\nbad,0\n")
    p.write_text(textwrap.dedent("""\
        data d { source = csv("sst2.csv"), text = "sentence" }
        model m { pretrained = "minilm", task = classify(labels = 2) }
        train t { model = m, data = d, epochs = 1 }
        prune a { from = t, method = structured(amount = 0.3, what = [heads, vocab]) }
        prune b { from = t, method = structured(amount = 0.3, what = [heads, vocab]), recover = { epochs = 1 } }
        prune c { from = t, method = structured(amount = 0.3) }
        """))
    main(["lint", str(p)])
    out = capsys.readouterr()
    text = out.out + out.err
    assert text.count("FTP256") == 1 and "`prune a`" in text and "recover = { epochs = 1 }" in text


def test_a_model_with_a_tied_output_layer_is_refused(src):
    """A masked-LM head reads the embedding as its output layer: trimming would change what it can
    predict, so it is FTP530 (checked before anything changes)."""
    from ftdsl.stages import prune_vocab
    from ftdsl.stages.modules import TextModule

    art, _ = src
    cfg = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=32, max_position_embeddings=16)
    module = TextModule(transformers.BertForMaskedLM(cfg), hf=True)
    with pytest.raises(StageError) as e:
        prune_vocab.prepare(module, art.tokenizer_dir, _data())
    assert e.value.code == "FTP530" and "output layer" in e.value.message
    assert module.net.get_input_embeddings().num_embeddings == 50


def test_a_vocabulary_the_train_split_uses_whole_is_left_as_it_is(tmp_path):
    """Only special and single-character tokens: everything stays (no error after the upstream
    stages ran), and prune.json says why."""
    from ftdsl.stages import model as model_stage
    from ftdsl.stages.tokenizer import train_wordpiece

    folder = tmp_path / "bert"
    train_wordpiece(TRAIN, 1, folder, max_length=16)  # the smallest vocabulary: specials and characters
    n = len(json.loads((folder / "tokenizer.json").read_text())["model"]["vocab"])
    cfg = transformers.BertConfig(vocab_size=n, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=32, max_position_embeddings=64, num_labels=2)
    transformers.BertForSequenceClassification(cfg).save_pretrained(folder)
    ctx = StageContext(name="m", kind="model", pipeline_dir=tmp_path, out_dir=tmp_path / "o-m", work_dir=tmp_path / "w")
    base = model_stage.run({}, {"pretrained": "bert", "task": {"$call": "classify", "labels": 2}}, ctx)
    art = base.with_module(base.build())
    small, pctx = _prune(art, tmp_path, ["ffn", "vocab"], "n")
    assert small.build().net.get_input_embeddings().num_embeddings == n and small.tokenizer_dir == art.tokenizer_dir
    report = json.loads((pctx.out_dir / "prune.json").read_text())
    assert report["vocab"]["after"] == n and "every token" in report["vocab"]["note"] and report["removed"]["ffn"] == 16
