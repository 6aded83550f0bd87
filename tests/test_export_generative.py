"""Exports of generative and token-level models (issue 9 item 6), through `ftdsl run`.

* causal_lm (a tiny `gpt` from scratch, prompt/response rows, the data stage's BPE tokenizer with its
  chat template): the HF folder's `from_pretrained` + `generate` gives the greedy tokens of the model
  in the cache (computed independently: argmax of its logits, one token at a time);
  `generation_config.json` holds the tokenizer's bos/eos/pad ids and `evaluate`'s defaults; the chat
  template is in `tokenizer_config.json`. The ONNX graph takes past key values (Optimum's layout) and
  decodes the same tokens in onnxruntime, one token per step; a llama with grouped key/value heads too.
* seq2seq (a tiny `t5` from scratch): `generate` on the HF folder equals the cached model's greedy
  output; `format = onnx` is refused at lint (FTP243) with the alternative.
* token_classify (a tiny local BERT): the folder's config names the tags; `pipeline("token-classification")`
  answers with them; the ONNX graph carries them in its metadata.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from ftdsl.cli import main

pytest.importorskip("transformers")


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def _run(root: Path, text: str) -> dict[str, Path]:
    """Run the pipeline; stage name -> its cache entry's artifact folder."""
    import io
    from contextlib import redirect_stdout

    p = root / "p.ftp"
    p.write_text(text, encoding="utf-8")
    cache = root / "cache"
    assert main(["run", str(p), "--cache", str(cache), "--quiet"]) == 0
    buf = io.StringIO()
    with redirect_stdout(buf):
        assert main(["plan", str(p), "--cache", str(cache), "--format", "json"]) == 0
    keys = {s["name"]: s["cache_key"].split(":")[1] for s in json.loads(buf.getvalue())["stages"]}
    return {n: cache / "entries" / k[:2] / k / "artifact" for n, k in keys.items()}


def _greedy(step, prompt: list[int], n: int, eos: int | None) -> list[int]:
    """Greedy decoding with any next-token scorer: ``step(ids) -> logits of the last position``."""
    ids = list(prompt)
    for _ in range(n):
        nxt = int(np.argmax(step(ids)))
        ids.append(nxt)
        if nxt == eos:
            break
    return ids[len(prompt):]


# --------------------------------------------------------------------------------------------
# causal_lm


LM = """\
ftp 1
pipeline lm { seed = 2 }
data d {
  source = jsonl("instr.jsonl")
  prompt = "prompt"
  response = "response"
  tokenizer = bpe(vocab = 300)
  split = { train = 0.8, valid = 0.2 }
}
model m { arch = gpt(layers = 1, heads = 2, width = 32, max_len = 64), task = causal_lm() }
train t { model = m, data = d, epochs = 2, batch = 8, optimizer = adamw(lr = 0.01) }
export h { from = t, format = hf, verify = true }
export o { from = t, format = onnx(), verify = { data = d.valid } }  # opset 17: Split legalized
quantize q { from = o, method = dynamic() }
"""


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    root = tmp_path_factory.mktemp("lm")
    rnd = random.Random(0)
    rows = []
    for _ in range(64):
        a, b = rnd.randint(0, 9), rnd.randint(0, 9)
        rows.append({"prompt": f"add {a} and {b}", "response": f"the sum is {a + b}"})
    _jsonl(root / "instr.jsonl", rows)
    entries = _run(root, LM)
    from ftdsl.stages.torch_model import TorchModel

    model = TorchModel.load(entries["t"])
    return {"root": root, "folder": root / "out" / "h", "model": model, "module": model.build(),
            "tok": model.load_tokenizer()}


def test_causal_lm_folder_generates_what_the_cached_model_does(lm):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = str(lm["folder"])
    tok = AutoTokenizer.from_pretrained(folder)
    net = AutoModelForCausalLM.from_pretrained(folder).eval()
    module = lm["module"]

    def step(ids):
        with torch.no_grad():
            return module(torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long))[0, -1].numpy()

    from ftdsl.stages.tasks.causal_lm import prompt_ids

    for prompt in ("add 3 and 4", "add 9 and 9"):
        assert tok(prompt)["input_ids"] == lm["tok"](prompt)["input_ids"]  # the folder's tokenizer is the data's
        ids = prompt_ids(tok, {"prompt": prompt})  # `<bos> prompt`, as the model was trained
        with torch.no_grad():  # generate with the folder's generation_config: greedy, eos stops it
            out = net.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                               max_new_tokens=12)
        got = out[0, len(ids):].tolist()
        want = _greedy(step, ids, 12, tok.eos_token_id)
        assert got[:len(want)] == want and len(want) >= 3


def test_causal_lm_generation_config_and_chat_template(lm):
    from transformers import AutoTokenizer, GenerationConfig

    folder = lm["folder"]
    tok = AutoTokenizer.from_pretrained(str(folder))
    data_tok = lm["tok"]
    gc = GenerationConfig.from_pretrained(str(folder))
    assert (gc.bos_token_id, gc.eos_token_id, gc.pad_token_id) == (
        data_tok.bos_token_id, data_tok.eos_token_id, data_tok.pad_token_id)
    assert gc.eos_token_id is not None and gc.pad_token_id is not None
    assert gc.max_new_tokens == 64 and gc.do_sample is False and gc.num_beams == 1  # evaluate's defaults
    cfg = json.loads((folder / "tokenizer_config.json").read_text())
    assert cfg["chat_template"] == data_tok.chat_template and cfg["model_max_length"] == 64
    assert cfg["tokenizer_class"] == "PreTrainedTokenizerFast"  # a class transformers 4 has too
    messages = [{"role": "user", "content": "add 1 and 2"}, {"role": "assistant", "content": "the sum is 3"}]
    assert tok.apply_chat_template(messages, tokenize=False) == data_tok.apply_chat_template(messages, tokenize=False)
    card = (folder / "README.md").read_text()
    assert "pipeline_tag: text-generation" in card and "## Generation" in card and "max_new_tokens: `64`" in card


def _ort_decode(sess, prompt: list[int], n: int, eos: int | None) -> list[int]:
    """Greedy decoding the way Optimum's decoders are used: the prompt once with empty pasts, then
    one token at a time with the previous step's present.* as past_key_values.*."""
    pasts = {i.name: np.zeros((1, i.shape[1], 0, i.shape[3]), np.float32)
             for i in sess.get_inputs() if i.name.startswith("past_key_values.")}
    out_names = [o.name for o in sess.get_outputs()]
    new, seen, got = list(prompt), 0, []
    for _ in range(n):
        seen += len(new)
        outs = dict(zip(out_names, sess.run(None, {
            "input_ids": np.array([new], np.int64), "attention_mask": np.ones((1, seen), np.int64),
            "position_ids": np.arange(seen - len(new), seen, dtype=np.int64)[None], **pasts})))
        nxt = int(outs["logits"][0, -1].argmax())
        got.append(nxt)
        if nxt == eos:
            break
        pasts = {k.replace("present.", "past_key_values."): v for k, v in outs.items() if k.startswith("present.")}
        new = [nxt]
    return got


def test_causal_lm_onnx_decodes_with_past_key_values(lm):
    import onnxruntime as ort
    import torch

    from ftdsl.stages.export import OnnxModel
    from ftdsl.stages.tasks.causal_lm import prompt_ids

    out = lm["root"] / "out" / "o"
    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    meta = sess.get_modelmeta().custom_metadata_map
    assert "past key values" in meta["ftdsl.decoding"] and json.loads(meta["ftdsl.past"])["layers"] == 1
    assert meta["ftdsl.inputs"].split(",") == [i.name for i in sess.get_inputs()] == [
        "input_ids", "attention_mask", "position_ids", "past_key_values.0.key", "past_key_values.0.value"]
    assert [o.name for o in sess.get_outputs()] == ["logits", "present.0.key", "present.0.value"]
    assert json.loads(meta["ftdsl.task"])["$call"] == "causal_lm"
    v = json.loads((out / "verify.json").read_text())  # real rows, encoded as the task trains on them
    assert v["passed"] and v["data"] == "d.valid" and v["rows"] > 0
    q = json.loads((lm["root"] / "out" / "q" / "quantize.json").read_text())
    assert q["parity"]["rows"] > 0  # the int8 decoder was compared with the float one
    module, tok = lm["module"], lm["tok"]

    def torch_step(ids):
        with torch.no_grad():
            return module(torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long))[0, -1].numpy()

    for prompt in ("add 2 and 5", "add 8 and 1"):
        ids = prompt_ids(tok, {"prompt": prompt})
        want = _greedy(torch_step, ids, 10, tok.eos_token_id)
        assert _ort_decode(sess, ids, 10, tok.eos_token_id) == want and len(want) >= 3
    # whole sequences (teacher forcing, as evaluate and predict feed them): the artifact fills the pasts
    art = OnnxModel.load(out)
    batch = tok(["add 1 and 1 the sum is 2", "add 3"], padding=True, return_tensors="pt")
    with torch.no_grad():
        want = module(batch["input_ids"], batch["attention_mask"]).numpy()
    got = art.predict({"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]})
    real = batch["attention_mask"].numpy().astype(bool)
    np.testing.assert_allclose(got[real], want[real], atol=1e-4)


def test_causal_lm_without_past_falls_back_to_the_logits_graph(lm, tmp_path, monkeypatch):
    """A model the decoder-with-past export fails on still exports (logits only, verified), with a
    warning, and its metadata says how to decode it."""
    import onnxruntime as ort

    import ftdsl.stages.export_decoder as ed
    from ftdsl.stages import export
    from ftdsl.stages.base import Reporter, StageContext

    def refuse(*a, **k):
        raise RuntimeError("this model's cache does not trace")

    monkeypatch.setattr(ed, "export_decoder", refuse)

    class Log(Reporter):
        lines: list = []

        def log(self, text):
            self.lines.append(text)

    ctx = StageContext(name="o2", kind="export", pipeline_dir=tmp_path, out_dir=tmp_path / "o2",
                       work_dir=tmp_path / "w", reporter=Log())
    art = export.run({"from": lm["model"]}, {"from": {"$ref": "t"}, "format": {"$call": "onnx", "opset": 18},
                                               "verify": True}, ctx)
    assert any("cannot export `t` with past key values" in x and "logits-only" in x for x in Log.lines)
    sess = ort.InferenceSession(str(art.onnx_path), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["input_ids", "attention_mask"]
    assert "no past key values" in sess.get_modelmeta().custom_metadata_map["ftdsl.decoding"]
    assert art.metrics["verify.max_abs_diff"] < 1e-4


def test_llama_with_grouped_kv_heads_exports_with_past_key_values(tmp_path):
    """A llama with fewer key/value heads than heads (the cache layout differs from GPT-2's),
    exported directly: Optimum-style decoding in onnxruntime equals transformers' generate."""
    import onnxruntime as ort
    import torch
    import transformers

    from ftdsl.stages.export_decoder import export_decoder
    from ftdsl.stages.tasks.module import SeqModule

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=64)
    module = SeqModule(transformers.LlamaForCausalLM(cfg), task="causal_lm").eval()
    proto, layout = export_decoder(module, opset=18, max_seq=64, vocab=97)
    assert (layout["layers"], layout["kv_heads"], layout["head_dim"]) == (2, 1, 8)
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    prompt = [5, 17, 33, 2, 71, 9]
    with torch.no_grad():
        want = module.net.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, 6, dtype=torch.long),
                                   max_new_tokens=8, do_sample=False, eos_token_id=None, pad_token_id=0)
    assert _ort_decode(sess, prompt, 8, None) == want[0, 6:].tolist()


# --------------------------------------------------------------------------------------------
# seq2seq


S2S = """\
ftp 1
pipeline s2s { seed = 3 }
data d {
  source = jsonl("pairs.jsonl")
  text = "source", target = "target"
  tokenizer = bpe(vocab = 300)
  split = { train = 0.8, valid = 0.2 }
}
model m { arch = t5(layers = 1, heads = 2, width = 32), task = seq2seq() }
train t { model = m, data = d, epochs = 2, batch = 8, optimizer = adamw(lr = 0.01) }
export h { from = t, format = hf, verify = true }
"""


def _pairs(n: int) -> list[dict]:
    rnd = random.Random(1)
    words = ["red", "green", "blue", "cat", "dog", "sun", "moon", "tree"]
    rows = []
    for _ in range(n):
        w = [rnd.choice(words) for _ in range(3)]
        rows.append({"source": "reverse " + " ".join(w), "target": " ".join(reversed(w))})
    return rows


def test_seq2seq_folder_generates_what_the_cached_model_does(tmp_path):
    import torch
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, GenerationConfig

    from ftdsl.stages.torch_model import TorchModel

    _jsonl(tmp_path / "pairs.jsonl", _pairs(48))
    entries = _run(tmp_path, S2S)
    model = TorchModel.load(entries["t"])
    module = model.build()
    folder = str(tmp_path / "out" / "h")
    tok = AutoTokenizer.from_pretrained(folder)
    net = AutoModelForSeq2SeqLM.from_pretrained(folder).eval()
    gc = GenerationConfig.from_pretrained(folder)
    assert gc.decoder_start_token_id == net.config.decoder_start_token_id is not None
    assert gc.eos_token_id == tok.eos_token_id is not None
    for text in ("reverse red cat sun", "reverse dog dog tree"):
        ids = tok(text)["input_ids"]
        x, mask = torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long)

        def step(out_ids):  # the cached SeqModule: decoder_labels are shifted behind the start token
            labels = torch.tensor([out_ids + [0]])
            with torch.no_grad():
                return module(x, mask, decoder_labels=labels)[0, -1].numpy()

        want = _greedy(step, [], 10, tok.eos_token_id)
        with torch.no_grad():
            out = net.generate(x, attention_mask=mask, max_new_tokens=10)[0].tolist()
        got = out[1:]  # after the decoder start token
        assert got[:len(want)] == want and want


def test_seq2seq_onnx_is_refused_at_lint_with_the_alternative(tmp_path, capsys):
    p = tmp_path / "p.ftp"
    p.write_text(S2S.replace("export h { from = t, format = hf, verify = true }",
                             "export o { from = t, format = onnx(opset = 18), verify = true }"))
    assert main(["lint", str(p)]) == 1
    out = capsys.readouterr()
    text = out.out + out.err
    assert "FTP243" in text and "`onnx` of a `seq2seq` model" in text and "format = hf" in text


# --------------------------------------------------------------------------------------------
# token_classify


TAGS = ["O", "B-PER", "I-PER", "B-LOC"]
NER = """\
ftp 1
pipeline ner { seed = 4 }
data d {
  source = jsonl("ner.jsonl")
  tokens = "tokens"
  tags = "tags"
  split = { train = 0.8, valid = 0.2 }
  max_length = 16
}
model m { pretrained = "bert", task = token_classify(labels = ["O", "B-PER", "I-PER", "B-LOC"]) }
train t { model = m, data = d, epochs = 3, batch = 8, optimizer = adamw(lr = 0.01) }
export h { from = t, format = hf, verify = true }
export o { from = t, format = onnx(opset = 18), verify = true }
"""


def test_token_classify_exports_name_their_tags(tmp_path):
    import onnxruntime as ort
    import torch
    import transformers
    from transformers import AutoModelForTokenClassification, AutoTokenizer, pipeline

    from ftdsl.stages.tokenizer import train_wordpiece
    from ftdsl.stages.torch_model import TorchModel

    rnd = random.Random(0)
    names, lasts, cities = ["ada", "alan", "grace"], ["lovelace", "turing", "hopper"], ["paris", "rome", "oslo"]
    rows = [{"tokens": [rnd.choice(names), rnd.choice(lasts), "visited", rnd.choice(cities)],
             "tags": ["B-PER", "I-PER", "O", "B-LOC"]} for _ in range(40)]
    _jsonl(tmp_path / "ner.jsonl", rows)
    bert = tmp_path / "bert"
    train_wordpiece([" ".join(r["tokens"]) for r in rows], 60, bert, max_length=32)
    vocab = json.loads((bert / "tokenizer.json").read_text())["model"]["vocab"]
    transformers.BertForTokenClassification(transformers.BertConfig(
        vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=32, num_labels=len(TAGS))).save_pretrained(bert)
    entries = _run(tmp_path, NER)
    folder = str(tmp_path / "out" / "h")
    net = AutoModelForTokenClassification.from_pretrained(folder).eval()
    assert net.config.id2label == dict(enumerate(TAGS)) and net.config.label2id == {t: i for i, t in enumerate(TAGS)}
    tok = AutoTokenizer.from_pretrained(folder)
    assert tok.model_max_length == 16
    tagger = pipeline("token-classification", model=folder)
    found = tagger("grace hopper visited oslo")
    assert found and {r["entity"] for r in found} <= set(TAGS)
    module = TorchModel.load(entries["t"]).build()
    enc = tok(["grace hopper visited oslo"], return_tensors="pt")
    with torch.no_grad():
        want = module(enc["input_ids"], enc["attention_mask"]).argmax(-1)[0].tolist()
    by_index = {r["index"]: r["entity"] for r in found}
    assert all(TAGS[want[i]] == e for i, e in by_index.items())  # the tags of the cached model
    sess = ort.InferenceSession(str(tmp_path / "out" / "o" / "model.onnx"), providers=["CPUExecutionProvider"])
    meta = sess.get_modelmeta().custom_metadata_map
    assert json.loads(meta["ftdsl.labels"]) == TAGS and meta["ftdsl.max_length"] == "16"
    logits = sess.run(None, {"input_ids": enc["input_ids"].numpy(), "attention_mask": enc["attention_mask"].numpy()})[0]
    assert logits.argmax(-1)[0].tolist() == want
