"""Generation (ftdsl/stages/tasks/generation.py) on tiny transformers models built directly from
configs, against transformers' own ``generate`` called one row at a time; and the FTP255 lint.

The pipeline-level checks (evaluate writes samples.jsonl, predict equals evaluate) are in
tests/test_predict_seq.py.
"""

from __future__ import annotations

import textwrap

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from ftdsl.stages.tasks import generation as G  # noqa: E402

PAD, BOS, EOS = 0, 1, 2
PROMPTS = [[5, 6, 7], [10, 11, 12, 13, 14, 15], [20], [30, 31, 32, 33]]


def _gpt2():
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=1, n_head=2, n_embd=32, vocab_size=100, n_positions=64,
                                  bos_token_id=BOS, eos_token_id=EOS)
    return transformers.GPT2LMHeadModel(cfg).eval()


def _llama():
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(num_hidden_layers=1, num_attention_heads=2, hidden_size=32, intermediate_size=64,
                                   vocab_size=100, bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD,
                                   max_position_embeddings=64)
    return transformers.LlamaForCausalLM(cfg).eval()


def _t5():
    torch.manual_seed(0)
    cfg = transformers.T5Config(d_model=32, d_ff=64, num_layers=1, num_heads=2, d_kv=16, vocab_size=100,
                                decoder_start_token_id=PAD, pad_token_id=PAD, eos_token_id=EOS)
    return transformers.T5ForConditionalGeneration(cfg).eval()


MODELS = {"gpt2": _gpt2, "llama": _llama, "t5": _t5}


def _hf_one_by_one(model, prompts, new: int, eos: int = EOS) -> list[list[int]]:
    out = []
    for p in prompts:
        ids = model.generate(input_ids=torch.tensor([p]), max_new_tokens=new, do_sample=False, pad_token_id=PAD,
                             eos_token_id=eos)[0].tolist()
        ids = ids[1:] if model.config.is_encoder_decoder else ids[len(p):]
        out.append(ids[:ids.index(eos)] if eos in ids else ids)
    return out


@pytest.mark.parametrize("name", sorted(MODELS))
def test_greedy_equals_hf_generate_row_by_row_and_is_deterministic(name):
    model = MODELS[name]()
    s = G.Settings(max_new_tokens=6)
    # batches of 3 and 4 rows: left padding (decoders) / right padding (encoder-decoder) changes nothing
    a = G.generate_ids(model, PROMPTS, pad_id=PAD, eos_id=EOS, settings=s, batch=3)
    b = G.generate_ids(model, PROMPTS, pad_id=PAD, eos_id=EOS, settings=s, batch=4, seed=99)
    assert a == b == _hf_one_by_one(model, PROMPTS, 6)
    assert all(0 < len(r) <= 6 for r in a)


def test_a_wrapper_module_generates_with_the_model_it_holds():
    model = _gpt2()

    class Wrapper(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

    assert G.hf_model(Wrapper(model)) is model
    assert G.generate_ids(Wrapper(model), PROMPTS[:2], pad_id=PAD, eos_id=EOS, settings=G.Settings(max_new_tokens=3)) \
        == G.generate_ids(model, PROMPTS[:2], pad_id=PAD, eos_id=EOS, settings=G.Settings(max_new_tokens=3))
    with pytest.raises(TypeError):
        G.hf_model(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("name", ["gpt2", "t5"])
def test_generation_stops_at_eos(name):
    model = MODELS[name]()
    first = G.generate_ids(model, PROMPTS, pad_id=PAD, eos_id=EOS, settings=G.Settings(max_new_tokens=4))
    # make the first token greedy decoding picks for row 0 the end-of-sequence token: nothing is generated
    stop = first[0][0]
    got = G.generate_ids(model, PROMPTS[:1], pad_id=PAD, eos_id=stop, settings=G.Settings(max_new_tokens=4))
    assert got == [[]]
    # a later token: the generation is cut right before it, as transformers' generate stops there
    row = first[1]
    k = next((i for i, t in enumerate(row) if i > 0 and t not in row[:i]), None)
    if k is not None:
        got = G.generate_ids(model, PROMPTS[1:2], pad_id=PAD, eos_id=row[k], settings=G.Settings(max_new_tokens=4))
        assert got == [row[:k]] == _hf_one_by_one(model, PROMPTS[1:2], 4, eos=row[k])


def test_sampling_is_seeded():
    model = _llama()
    s = G.Settings(max_new_tokens=8, temperature=1.5, top_p=0.95)
    a = G.generate_ids(model, PROMPTS, pad_id=PAD, eos_id=EOS, settings=s, seed=3)
    b = G.generate_ids(model, PROMPTS, pad_id=PAD, eos_id=EOS, settings=s, seed=3)
    c = G.generate_ids(model, PROMPTS, pad_id=PAD, eos_id=EOS, settings=s, seed=4)
    greedy = G.generate_ids(model, PROMPTS, pad_id=PAD, eos_id=EOS, settings=G.Settings(max_new_tokens=8))
    assert a == b
    assert a != c and a != greedy
    # the global RNG is what generate draws from: the call seeds it itself, whatever came before
    torch.manual_seed(12345)
    assert G.generate_ids(model, PROMPTS, pad_id=PAD, eos_id=EOS, settings=s, seed=3) == a


def test_beam_search_equals_hf_beam_search():
    model = _gpt2()
    got = G.generate_ids(model, PROMPTS, pad_id=PAD, eos_id=EOS, settings=G.Settings(max_new_tokens=5, num_beams=3),
                         batch=1)
    for p, g in zip(PROMPTS, got):
        ids = model.generate(input_ids=torch.tensor([p]), max_new_tokens=5, num_beams=3, do_sample=False,
                             pad_token_id=PAD, eos_token_id=EOS)[0].tolist()[len(p):]
        assert g == (ids[:ids.index(EOS)] if EOS in ids else ids)


def test_positions_limit_each_row_by_its_own_prompt():
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=1, n_head=2, n_embd=32, vocab_size=100, n_positions=16,
                                  bos_token_id=BOS, eos_token_id=EOS)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    long, mid, short = list(range(3, 40)), list(range(40, 54)), [5, 6, 7]  # 37, 14 and 3 tokens; 16 positions
    got = G.generate_ids(model, [long, mid, short], pad_id=PAD, eos_id=EOS, settings=G.Settings(max_new_tokens=6))
    # the long prompt keeps its last 15 tokens and gets 1 new token, the 14-token one 2, the short one all 6:
    # the same as each row alone, so a row's text does not depend on its batch mates
    assert got == _hf_one_by_one(model, [long[-15:]], 1) + _hf_one_by_one(model, [mid], 2) \
        + _hf_one_by_one(model, [short], 6)
    assert all(len(r) <= b for r, b in zip(got, [1, 2, 6])) and len(got[2]) > 2
    alone = [G.generate_ids(model, [p], pad_id=PAD, eos_id=EOS, settings=G.Settings(max_new_tokens=6))[0]
             for p in (long, mid, short)]
    assert got == alone


def test_settings_and_max_new_tokens():
    assert G.settings(None) == G.Settings()
    s = G.settings({"max_new_tokens": 9, "temperature": 0.7, "top_p": 0.9, "num_beams": 1, "samples": 3})
    assert (s.max_new_tokens, s.sampling, s.samples) == (9, True, 3)
    assert G.max_new_tokens({"$call": "seq2seq", "max_target_length": 5}, s) == 5
    assert G.max_new_tokens({"$call": "causal_lm"}, s) == 9


def test_references_and_shown_inputs():
    class T:
        name = "causal_lm"

    chat = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                         {"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]}
    assert G.reference_of(T(), chat) == "4"
    assert G.shown_input(chat) == "user: hi\nassistant: hello\nuser: 2+2?"
    assert G.reference_of(T(), {"prompt": "p", "response": "r"}) == "r"
    assert G.reference_of(T(), "plain text") is None
    assert G.reference_of(T(), {"source": "s", "target": "t"}) == "t"


# --- lint: FTP255 ----------------------------------------------------------------------------------

LINT = """\
data d { source = jsonl("notes.jsonl"), text = "text", tokenizer = bpe(vocab = 300) }
data qa { source = jsonl("qa.jsonl"), prompt = "q", response = "a", tokenizer = bpe(vocab = 300) }
model m { arch = gpt(layers = 1, heads = 2, width = 32), task = causal_lm() }
train t { model = m, data = d, max_steps = 2 }
train tq { model = m, data = qa, max_steps = 2 }
evaluate plain { models = [t], data = d.test, metrics = [perplexity, rouge_l] }
evaluate cont { models = [t], data = d.test, metrics = [perplexity], generate = { max_new_tokens = 4 } }
evaluate ok { models = [tq], data = qa.test, metrics = [perplexity, rouge_l, bleu, exact_match] }
data f { source = synthetic(task = classify, n = 50, features = 4, classes = 2) }
model c { arch = mlp(), task = classify(labels = 2) }
train tc { model = c, data = f, max_steps = 2 }
evaluate cls { models = [tc], data = f.test, metrics = [accuracy], generate = { max_new_tokens = 4 } }
"""


def test_ftp255_generation_without_references_or_on_a_classifier(tmp_path, capsys):
    from ftdsl.cli import main

    (tmp_path / "notes.jsonl").write_text('{"text": "a"}\n')
    (tmp_path / "qa.jsonl").write_text('{"q": "a", "a": "b"}\n')
    p = tmp_path / "g.ftp"
    p.write_text(textwrap.dedent(LINT))
    rc = main(["lint", str(p), "--format", "json"])
    import json

    out = json.loads(capsys.readouterr().out)
    got = sorted((d["code"], d["range"]["start"]["line"]) for d in out["diagnostics"] if d["code"] == "FTP255")
    assert rc == 1
    # rouge_l of a causal_lm on plain text (line 6); generate on a classifier (line 12). Not: a
    # continuation of plain text with no generation metric (line 7), prompt/response data (line 8)
    assert got == [("FTP255", 6), ("FTP255", 12)]


TASK_METRICS = """\
data qa { source = jsonl("qa.jsonl"), prompt = "q", response = "a", tokenizer = bpe(vocab = 300) }
model m { arch = gpt(layers = 1, heads = 2, width = 32), task = causal_lm() }
train t { model = m, data = qa, max_steps = 2 }
evaluate e1 { models = [t], data = qa.test, metrics = [perplexity, accuracy, entity_f1, latency] }
data f { source = synthetic(task = classify, n = 50, features = 4, classes = 2) }
model c { arch = mlp(), task = classify(labels = 2) }
train tc { model = c, data = f, max_steps = 2, early_stop = { metric = "valid.rouge_l" } }
evaluate e2 { models = [tc], data = f.test, metrics = [accuracy, rouge_l, bleu] }
train t2 { model = m, data = qa, max_steps = 2, early_stop = { metric = "valid.rouge_l" } }
"""


def test_metrics_that_do_not_fit_a_token_task_or_a_classifier(tmp_path, capsys):
    """The metric registry's task table at lint: accuracy / entity_f1 of a causal LM and ROUGE /
    BLEU of a classifier are FTP232 (in evaluate and in early_stop: a classifier has no ROUGE at
    all); ROUGE watched while training a causal LM is FTP210 (evaluate-only); perplexity and
    latency of a causal LM are fine."""
    import json

    from ftdsl.cli import main

    (tmp_path / "qa.jsonl").write_text('{"q": "a", "a": "b"}\n')
    p = tmp_path / "m.ftp"
    p.write_text(TASK_METRICS)
    assert main(["lint", str(p), "--format", "json"]) == 1
    diags = json.loads(capsys.readouterr().out)["diagnostics"]
    got = sorted((d["code"], d["range"]["start"]["line"], d["summary"].split("`")[3] if d["code"] == "FTP232" else "")
                 for d in diags if d["code"] in ("FTP232", "FTP210"))
    assert got == [("FTP210", 9, ""), ("FTP232", 4, "accuracy"), ("FTP232", 4, "entity_f1"),
                   ("FTP232", 7, "rouge_l"), ("FTP232", 8, "bleu"), ("FTP232", 8, "rouge_l")], got
