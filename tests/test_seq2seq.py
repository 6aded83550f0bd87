"""seq2seq (issue 9): source/target encoding (end-of-sequence token, max_target_length), the
decoder inputs the module builds against the model's own label shifting (T5 starts from <pad>,
BART from </s>), the loss against transformers' own, generation prompts equal to the trained
encoder inputs, and the loss falling on a tiny T5 from scratch and from a pretrained folder."""

from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from ftdsl.stages.tasks import IGNORE, get_task  # noqa: E402
from ftdsl.stages.tasks.module import SeqModule  # noqa: E402

PAIRS = [{"source": f"the meeting on day {i} was moved to day {i + 2} because of rain",
          "target": f"meeting moved to day {i + 2}"} for i in range(24)]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    from ftdsl.stages.tasks.common import load_seq_tokenizer
    from ftdsl.stages.tokenizer import train_bpe

    d = tmp_path_factory.mktemp("bpe")
    train_bpe([r["source"] for r in PAIRS] + [r["target"] for r in PAIRS], 300, d)
    return load_seq_tokenizer(d, pretrained=False)


class _Split:
    def __init__(self, records):
        self.records = records
        self.texts = None


def _plain(tok, text):
    return list(tok(text, add_special_tokens=False)["input_ids"])


def test_encode_appends_eos_and_cuts_targets(tok):
    eos = tok.eos_token_id
    task = {"$call": "seq2seq", "max_target_length": 4}
    rows = [{"source": "the meeting was moved", "target": "meeting moved to day 5"}, {"source": "rain", "target": ""}]
    exs = get_task("seq2seq").encode(None, _Split(rows), tok, task, 64)
    src0, tgt0 = _plain(tok, rows[0]["source"]), _plain(tok, rows[0]["target"])
    assert len(tgt0) > 3  # the cut below is real
    assert exs[0]["input_ids"] == src0 + [eos]
    assert exs[0]["labels"] == tgt0[:3] + [eos] == exs[0]["decoder_labels"]
    assert exs[1]["labels"] == [eos]  # an empty target: learn to stop at once
    # the source is cut to max_length, keeping the final eos
    [ex] = get_task("seq2seq").encode(None, _Split(rows[:1]), tok, task, 3)
    assert ex["input_ids"] == src0[:2] + [eos]


def _t5(vocab: int):
    cfg = transformers.T5Config(vocab_size=vocab, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_decoder_layers=1,
                                num_heads=4, dropout_rate=0.0, pad_token_id=0, eos_token_id=2, decoder_start_token_id=0)
    return transformers.T5ForConditionalGeneration(cfg)


def _bart(vocab: int):
    cfg = transformers.BartConfig(vocab_size=vocab, d_model=32, encoder_layers=1, decoder_layers=1,
                                  encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64,
                                  decoder_ffn_dim=64, dropout=0.0, max_position_embeddings=128,
                                  pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=2)
    return transformers.BartForConditionalGeneration(cfg)


@pytest.mark.parametrize("make", [_t5, _bart], ids=["t5", "bart"])
def test_logits_and_loss_equal_transformers_with_labels(tok, make):
    torch.manual_seed(0)
    net = make(len(tok)).eval()
    task = get_task("seq2seq")
    exs = task.encode(None, _Split(PAIRS[:5]), tok, {"max_target_length": 16}, 32)
    b = task.collate(exs, 0)
    with torch.no_grad():
        ours = SeqModule(net, task="seq2seq")(**{k: v for k, v in b.items() if k != "y"})
        # transformers shifts `labels` itself (IGNORE -> pad) behind the config's decoder start token
        theirs = net(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=b["y"])
    assert torch.allclose(ours, theirs.logits.float(), atol=1e-5)
    assert math.isclose(float(task.criterion()(ours, b["y"])), float(theirs.loss), rel_tol=1e-5)
    # y is aligned with the logits: every target token and nothing of the padding
    assert int((b["y"] != IGNORE).sum()) == sum(len(e["labels"]) for e in exs)


def test_generation_inputs_are_the_trained_encoder_inputs(tok):
    task = get_task("seq2seq")
    exs = task.encode(None, _Split(PAIRS[:4]), tok, {"max_target_length": 8}, 10)
    gen = task.generation_inputs(_Split(PAIRS[:4]), tok, {"max_target_length": 8, "max_length": 10})
    assert [g[0] for g in gen] == [e["input_ids"] for e in exs]
    assert [g[1] for g in gen] == [r["target"] for r in PAIRS[:4]] == task.references(_Split(PAIRS[:4]))
    assert [g[2] for g in gen] == [r["source"] for r in PAIRS[:4]]


def test_teacher_forced_metrics_are_lm_metrics(tok):
    torch.manual_seed(0)
    net = _t5(len(tok)).eval()
    task = get_task("seq2seq")
    b = task.collate(task.encode(None, _Split(PAIRS[:6]), tok, {"max_target_length": 16}, 32), 0)
    with torch.no_grad():
        logits = SeqModule(net, task="seq2seq")(**{k: v for k, v in b.items() if k != "y"})
    m = task.metrics([task.batch_stats(logits, b["y"])], {})
    keep = b["y"] != IGNORE
    want = torch.nn.functional.cross_entropy(logits[keep], b["y"][keep])
    assert math.isclose(m["loss"], float(want), rel_tol=1e-5)
    assert math.isclose(m["perplexity"], math.exp(float(want)), rel_tol=1e-5)
    assert math.isclose(m["token_accuracy"], float((logits[keep].argmax(-1) == b["y"][keep]).float().mean()))


def test_tiny_t5_loss_falls_in_a_few_steps(tok):
    torch.manual_seed(0)
    module = SeqModule(_t5(len(tok)), task="seq2seq").train()
    task = get_task("seq2seq")
    b = task.collate(task.encode(None, _Split(PAIRS[:8]), tok, {"max_target_length": 16}, 32), 0)
    opt = torch.optim.AdamW(module.parameters(), lr=3e-3)
    crit = task.criterion()
    losses = []
    for _ in range(8):
        loss = crit(module(**{k: v for k, v in b.items() if k != "y"}), b["y"])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.8 * losses[0], losses


# ---------------------------------------------------------------------------------------------
# through `ftdsl run`


def _write_pipeline(tmp_path: Path, model: str, tokenizer: str = "tokenizer = bpe(vocab = 300)") -> Path:
    rows = [{"text": r["source"], "summary": r["target"]} for r in PAIRS + PAIRS[:6]]
    (tmp_path / "pairs.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    p = tmp_path / "s.ftp"
    p.write_text(textwrap.dedent(f"""\
        ftp 1

        data pairs {{
          source = jsonl("pairs.jsonl")
          text = "text"
          target = "summary"
          split = {{ train = 0.6, valid = 0.2, test = 0.2 }}
          max_length = 32
          {tokenizer}
        }}

        model small {{
          {model}
          task = seq2seq(max_target_length = 16)
        }}

        train fit {{
          model = small
          data = pairs
          max_steps = 6
          eval_every = 1
          batch = 8
          optimizer = adamw(lr = 3e-3)
        }}
        """), encoding="utf-8")
    return p


def _run(tmp_path: Path, p: Path, capsys) -> tuple[list[float], dict]:
    from ftdsl.cli import main

    code = main(["run", str(p), "--cache", str(tmp_path / "cache"), "--quiet"])
    assert code == 0, capsys.readouterr().err
    out = tmp_path / "out" / "fit"
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [h["loss"] for h in history if h["split"] == "valid"], json.loads((out / "metrics.json").read_text())


def test_t5_from_scratch_through_run_loss_falls(tmp_path, capsys):
    valid, final = _run(tmp_path, _write_pipeline(tmp_path, "arch = t5(layers = 1, heads = 2, width = 32, ff = 64, "
                                                            "dropout = 0.0)"), capsys)
    assert len(valid) == 6 and valid[-1] < 0.9 * valid[0], valid
    assert math.isclose(final["test.perplexity"], math.exp(final["test.loss"]), rel_tol=1e-9)
    assert 0.0 <= final["test.token_accuracy"] <= 1.0


def test_pretrained_folder_through_run_loss_falls_from_its_own_loss(tmp_path, capsys, tok):
    """A tiny T5 saved with save_pretrained (+ a tokenizer) as `pretrained = "tiny_t5"`: the
    validation loss after 6 steps is well below the folder model's own loss on the same rows,
    computed by transformers (``labels=``) outside ftdsl."""
    from ftdsl.stages.dataset import Dataset

    folder = tmp_path / "tiny_t5"
    tok.save_pretrained(str(folder))
    torch.manual_seed(0)
    net = _t5(len(tok))
    net.save_pretrained(str(folder))
    valid, final = _run(tmp_path, _write_pipeline(tmp_path, 'pretrained = "tiny_t5"', tokenizer=""), capsys)
    [meta] = list((tmp_path / "cache").rglob("dataset.json"))
    rows = Dataset.load(meta.parent).split("valid").records
    eos = tok.eos_token_id
    src = [_plain(tok, r["source"]) + [eos] for r in rows]
    tgt = [(_plain(tok, r["target"]) + [eos])[:16] for r in rows]
    ids = torch.tensor([s + [0] * (max(map(len, src)) - len(s)) for s in src])
    mask = torch.tensor([[1] * len(s) + [0] * (ids.shape[1] - len(s)) for s in src])
    labels = torch.tensor([t + [-100] * (max(map(len, tgt)) - len(t)) for t in tgt])
    with torch.no_grad():
        before = float(net.eval()(input_ids=ids, attention_mask=mask, labels=labels).loss)
    assert valid[-1] < 0.85 * before, (before, valid)


def test_length_note_counts_cut_sources_and_targets(tok):
    task = get_task("seq2seq")
    call = {"max_target_length": 4}
    exs = task.encode(None, _Split(PAIRS[:3] + [{"source": "rain", "target": "day"}]), tok, call, 6)
    assert task.length_note(None, exs, call, 6) == ("3 of 4 sources reach max_length = 6 and 3 of 4 targets reach "
                                                    "max_target_length = 4 (longer texts are cut, keeping the "
                                                    "end-of-sequence token)")
    assert task.length_note(None, exs, {"max_target_length": 64}, 64) is None
