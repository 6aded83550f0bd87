"""Issue 9: the causal_lm task end to end.

Tiny gpt/llama models learn from plain text and prompt/response records through `ftdsl run`; the
labels a row is encoded with are checked by hand (the prompt carries no loss, chat turns other than
the assistant's are masked); packing keeps every token and label, and a packed row's logits equal
its examples' logits computed one by one (attention restarts); a killed run resumes to the same
weights; a pretrained folder (a tiny GPT-2 written with save_pretrained) fine-tunes; perplexity is
exp of the mean token loss that transformers' own `labels=` loss gives.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ftdsl.cli import main
from ftdsl.errors import StageError
from ftdsl.stages.tasks import IGNORE
from ftdsl.stages.tasks import causal_lm as C

REPO = Path(__file__).resolve().parents[1]
WORDS = "the cat dog bird sat ran flew on over under a mat log wire tree".split()


def _texts(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(3, 10)))) for _ in range(n)]


INSTR = [{"prompt": f"Add {i} and {i + 1}.", "response": f" {2 * i + 1}"} for i in range(48)]


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    """The data stage's byte-level BPE tokenizer (with <bos>/<eos>/<pad> and a chat template)."""
    from ftdsl.stages.tokenizer import load_tokenizer, train_bpe

    d = tmp_path_factory.mktemp("tok")
    texts = _texts(200) + [r["prompt"] + r["response"] for r in INSTR] + ["Be brief.", "Double 3?", "6"]
    train_bpe(texts, 320, d / "tok")
    return load_tokenizer(d / "tok")


def _learned(ex: dict) -> list[int]:
    """The token ids the labels ask the model to predict, in order."""
    return [t for t in ex["labels"] if t != IGNORE]


# --- encoding: what carries loss --------------------------------------------------------------------


def test_prompt_tokens_carry_no_loss(tok):
    row = {"prompt": "Add 1 and 2.", "response": " 3"}
    ex = C.encode_row(tok, row, {"mask_prompt": True})
    p = tok("Add 1 and 2.", add_special_tokens=False)["input_ids"]
    r = tok(" 3", add_special_tokens=False)["input_ids"]
    bos, eos = tok.bos_token_id, tok.eos_token_id
    # by hand: <bos> prompt response <eos>; position i predicts token i+1; only response + eos learned
    assert ex["input_ids"] == [bos, *p, *r, eos]
    want = [IGNORE] * len(p) + [*r, eos] + [IGNORE]
    assert ex["labels"] == want
    assert tok.decode(_learned(ex)) == " 3<eos>"
    # the prompt generation gets is exactly the unlearned prefix
    assert C.prompt_ids(tok, row) == [bos, *p]
    full = C.encode_row(tok, row, {"mask_prompt": False})
    assert full["input_ids"] == ex["input_ids"] and full["labels"] == [*p, *r, eos, IGNORE]


def test_plain_text_learns_every_token_after_bos(tok):
    ex = C.encode_row(tok, "the cat sat", {"mask_prompt": True})
    ids = ex["input_ids"]
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    assert ex["labels"] == ids[1:] + [IGNORE]


def test_chat_masks_everything_but_the_assistant_turns(tok):
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Double 3?"},
            {"role": "assistant", "content": "6"}, {"role": "user", "content": "Double 4?"},
            {"role": "assistant", "content": "8 it is"}]
    ex = C.encode_row(tok, {"messages": msgs}, {"mask_prompt": True})
    rendered = tok.apply_chat_template(msgs, tokenize=False)
    assert tok.decode(ex["input_ids"]) == rendered  # one tokenization of the whole conversation
    # the learned tokens are the two answers, each with its end-of-turn token, and nothing else
    assert tok.decode(_learned(ex)) == "6<eos>8 it is<eos>"
    # no position whose next token belongs to the system or user turns carries loss
    user_ids = set(tok("Double 3? Double 4? Be brief.", add_special_tokens=False)["input_ids"])
    assert not user_ids & set(_learned(ex)) - set(tok("6 8 it is", add_special_tokens=False)["input_ids"])
    everything = C.encode_row(tok, {"messages": msgs}, {"mask_prompt": False})
    assert everything["labels"] == everything["input_ids"][1:] + [IGNORE]
    # generation is given the conversation up to the last assistant turn and the assistant marker
    assert tok.decode(C.prompt_ids(tok, {"messages": msgs})) == tok.apply_chat_template(
        msgs[:-1], tokenize=False, add_generation_prompt=True)


def test_chat_without_a_template_is_ftp510(tok):
    import copy

    plain = copy.deepcopy(tok)
    plain.chat_template = None
    with pytest.raises(StageError) as e:
        C.encode_row(plain, {"messages": [{"role": "user", "content": "hi"}]}, {"mask_prompt": True})
    assert e.value.code == "FTP510" and "chat template" in str(e.value) and "prompt" in (e.value.hint or "")


# --- packing -----------------------------------------------------------------------------------------


def _split(texts=None, records=None):
    from ftdsl.stages.dataset import Split

    n = len(texts if texts is not None else records)
    return Split(None, texts, np.zeros(n, np.int64), np.arange(1, n + 1), records=records)


def _data(splits: dict, modality: str, tok_dir=None):
    from ftdsl.stages.dataset import Dataset

    return Dataset(splits, modality, None, None, None, None, None, None, "shuffle", tok_dir, "mem.jsonl",
                   labeled=False)


def test_packing_preserves_every_token(tok):
    texts = _texts(40, seed=1) + [" ".join(["tree"] * 30)]  # one text longer than a row
    data = _data({"train": _split(texts)}, "text")
    task = {"$call": "causal_lm", "packing": False, "mask_prompt": True}
    plain = C.TASK.encode(data, data.splits["train"], tok, task, None)
    packed = C.TASK.encode(data, data.splits["train"], tok, {**task, "packing": True}, 24)
    assert len(packed) < len(plain)
    assert all(len(r["input_ids"]) <= 24 for r in packed)
    # every token and every label of every example, once, in order
    assert [t for r in packed for t in r["input_ids"]] == [t for e in plain for t in e["input_ids"]]
    assert [t for r in packed for t in r["labels"]] == [t for e in plain for t in e["labels"]]
    # positions restart at each example (and each 24-token piece of the long one)
    starts = []
    for e in plain:
        starts += [s == 0 or (s % 24 == 0) for s in range(len(e["input_ids"]))]
    assert [p == 0 for r in packed for p in r["position_ids"]] == starts
    # no label crosses an example boundary: an example's last position is never labelled
    ends = np.cumsum([len(e["input_ids"]) for e in plain]) - 1
    flat = [t for r in packed for t in r["labels"]]
    assert all(flat[i] == IGNORE for i in ends)


@pytest.mark.parametrize("arch", ["gpt", "llama"])
def test_a_packed_row_attends_within_each_example(tok, arch):
    """transformers builds a block-diagonal causal mask from restarting position_ids: a packed row's
    logits are those of its examples run one by one (so packing changes no example's loss)."""
    from ftdsl.stages.hf_archs import materialize

    spec = {"arch": {"$call": arch, "layers": 1, "heads": 2, "width": 32, "max_len": 64},
            "task": {"$call": "causal_lm"}, "vocab_size": len(tok), "pad_id": 0, "bos_id": 1, "eos_id": 2}
    module = materialize(spec, seed=0).eval()
    exs = [C.encode_row(tok, t, {}) for t in _texts(4, seed=2)]
    [row] = C.pack(exs, 64)
    batch = C.TASK.collate([row], 0)
    assert "attention_mask" not in batch and "position_ids" in batch
    with torch.no_grad():
        packed = module(input_ids=batch["input_ids"], position_ids=batch["position_ids"])[0]
        alone = torch.cat([module(input_ids=torch.tensor([e["input_ids"]]))[0] for e in exs])
    assert torch.allclose(packed, alone, atol=1e-5)


# --- training through the CLI ----------------------------------------------------------------------


def _pipeline(tmp_path: Path, model: str, data: str, train: str = "", batch: int = 8) -> Path:
    p = tmp_path / "lm.ftp"
    p.write_text(f"""ftp 1
data d {{
  {data}
  split = {{ train = 0.8, valid = 0.2 }}
}}
model m {{ {model} }}
train t {{ model = m, data = d, epochs = 3, batch = {batch}, optimizer = adamw(lr = 0.005), {train} }}
""", encoding="utf-8")
    return p


def _records(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


@pytest.mark.parametrize("arch", ["gpt(layers = 1, heads = 2, width = 32, max_len = 64)",
                                  "llama(layers = 1, heads = 2, kv_heads = 1, width = 32, ff = 64, max_len = 64)"])
def test_loss_falls_from_scratch_through_the_cli(tmp_path, arch):
    _jsonl(tmp_path / "text.jsonl", [{"text": t} for t in _texts(80)])
    p = _pipeline(tmp_path, f"arch = {arch}, task = causal_lm()",
                  'source = jsonl("text.jsonl")\n  text = "text"\n  tokenizer = bpe(vocab = 300)')
    assert main(["run", str(p), "--cache", str(tmp_path / "cache"), "--quiet"]) == 0
    recs = _records(tmp_path / "out" / "t" / "metrics.jsonl")
    valid = [r for r in recs if r["split"] == "valid"]
    assert len(valid) == 3 and valid[-1]["loss"] < valid[0]["loss"] - 0.3
    final = json.loads((tmp_path / "out" / "t" / "metrics.json").read_text())
    assert {"valid.loss", "valid.perplexity", "valid.token_accuracy"} <= set(final)
    assert final["valid.loss"] < math.log(300)  # better than uniform over the vocabulary
    assert math.isclose(final["valid.perplexity"], math.exp(final["valid.loss"]), rel_tol=1e-9)


def test_prompt_response_learns_the_response(tmp_path):
    """prompt/response records through the data stage: the valid loss is measured on the response
    tokens only, and falls."""
    _jsonl(tmp_path / "instr.jsonl", INSTR)
    p = _pipeline(tmp_path, "arch = gpt(layers = 1, heads = 2, width = 32, max_len = 64), task = causal_lm()",
                  'source = jsonl("instr.jsonl")\n  prompt = "prompt"\n  response = "response"\n'
                  '  tokenizer = bpe(vocab = 300)')
    assert main(["run", str(p), "--cache", str(tmp_path / "cache"), "--quiet"]) == 0
    valid = [r for r in _records(tmp_path / "out" / "t" / "metrics.jsonl") if r["split"] == "valid"]
    assert valid[-1]["loss"] < valid[0]["loss"]


def _trained_weights(cache: Path, stage: str = "t") -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    for spec in cache.glob("entries/*/*/artifact/spec.json"):
        if json.loads(spec.read_text()).get("trained_by") == stage:
            return load_file(str(spec.parent / "model.safetensors"))
    raise AssertionError(f"no trained model of stage {stage} in {cache}")


def _run_cli(args: list[str], kill_at: int | None = None) -> subprocess.CompletedProcess:
    from ftdsl.stages.train import KILL_ENV, PAUSE_ENV

    env = {k: v for k, v in os.environ.items() if k not in (KILL_ENV, PAUSE_ENV)}
    env.update(PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""), OMP_NUM_THREADS="1",
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", NO_COLOR="1")
    if kill_at is not None:
        env[KILL_ENV] = str(kill_at)
    return subprocess.run([sys.executable, "-m", "ftdsl", *args], capture_output=True, text=True, env=env,
                          timeout=300)


@pytest.mark.slow  # three `ftdsl run` processes: 26-50 s on 2 busy cores
def test_a_killed_run_resumes_to_the_same_weights(tmp_path):
    """gpt with dropout on packed prompt/response rows, accumulation and periodic checkpoints:
    SIGKILL after step 5, rerun, and the weights equal an uninterrupted run's bit for bit."""
    rows = INSTR
    train = "accumulate = 2, checkpoint_every = 2, threads = 1, max_length = 32"
    model = ("arch = gpt(layers = 1, heads = 2, width = 32, max_len = 64, dropout = 0.1), "
             "task = causal_lm(packing = true, mask_prompt = true)")
    data = 'source = jsonl("instr.jsonl")\n  prompt = "prompt"\n  response = "response"\n  tokenizer = bpe(vocab = 300)'
    for run in ("ref", "killed"):
        (tmp_path / run).mkdir()
        _jsonl(tmp_path / run / "instr.jsonl", rows)
        _pipeline(tmp_path / run, model, data, train, batch=2)  # 6 batches, 3 steps per epoch
    ref = _run_cli(["run", str(tmp_path / "ref" / "lm.ftp"), "--cache", str(tmp_path / "ref" / "cache")])
    assert ref.returncode == 0, ref.stderr[-3000:]
    args = ["run", str(tmp_path / "killed" / "lm.ftp"), "--cache", str(tmp_path / "killed" / "cache")]
    killed = _run_cli(args, kill_at=5)
    assert killed.returncode == -signal.SIGKILL, (killed.returncode, killed.stderr[-3000:])
    resumed = _run_cli(args)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from step 4" in resumed.stderr + resumed.stdout
    a, b = _trained_weights(tmp_path / "ref" / "cache"), _trained_weights(tmp_path / "killed" / "cache")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    curve = lambda run: [(r["step"], r["split"], r.get("loss")) for r in  # noqa: E731
                         _records(tmp_path / run / "out" / "t" / "metrics.jsonl")]
    assert curve("ref") == curve("killed")


# --- a pretrained folder ---------------------------------------------------------------------------


def _tiny_gpt2_folder(folder: Path, tok) -> Path:
    import transformers

    cfg = transformers.GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=32, n_layer=1, n_head=2,
                                  bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                  pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(cfg).save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    return folder


def test_a_pretrained_folder_fine_tunes(tmp_path, tok):
    from ftdsl.stages.tasks.module import SeqModule
    from ftdsl.stages.torch_model import TorchModel

    _tiny_gpt2_folder(tmp_path / "tiny-gpt2", tok)
    _jsonl(tmp_path / "instr.jsonl", INSTR)
    p = _pipeline(tmp_path, 'pretrained = "tiny-gpt2", task = causal_lm()',
                  'source = jsonl("instr.jsonl")\n  prompt = "prompt"\n  response = "response"')
    assert main(["run", str(p), "--cache", str(tmp_path / "cache"), "--quiet"]) == 0
    valid = [r for r in _records(tmp_path / "out" / "t" / "metrics.jsonl") if r["split"] == "valid"]
    assert valid[-1]["loss"] < valid[0]["loss"]
    [spec] = [s for s in (tmp_path / "cache").glob("entries/*/*/artifact/spec.json")
              if json.loads(s.read_text()).get("trained_by") == "t"]
    art = TorchModel.load(spec.parent)
    module = art.build()
    assert isinstance(module, SeqModule) and type(module.net).__name__ == "GPT2LMHeadModel"
    assert (spec.parent / "hf_config" / "config.json").is_file() and art.load_tokenizer().chat_template


def test_chat_data_on_a_pretrained_folder_without_a_template_is_ftp510(tmp_path, tok, capsys):
    folder = _tiny_gpt2_folder(tmp_path / "tiny-gpt2", tok)
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    cfg = json.loads((folder / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg))
    msgs = [{"role": "user", "content": "Double 2?"}, {"role": "assistant", "content": "4"}]
    _jsonl(tmp_path / "chat.jsonl", [{"messages": msgs}] * 10)
    p = _pipeline(tmp_path, 'pretrained = "tiny-gpt2", task = causal_lm()',
                  'source = jsonl("chat.jsonl")\n  messages = "messages"')
    assert main(["run", str(p), "--cache", str(tmp_path / "cache")]) == 3
    err = capsys.readouterr().err
    assert "FTP510" in err and "no chat template" in err and "prompt" in err and "Traceback" not in err


# --- perplexity against transformers' own loss -------------------------------------------------------


def _ctx(root: Path, name: str = "t"):
    from ftdsl.stages.base import Reporter, StageContext

    class Log(Reporter):
        lines: list[str] = []

        def log(self, text):
            self.lines.append(text)

    for d in ("out", "work"):
        (root / d / name).mkdir(parents=True, exist_ok=True)
    return StageContext(name, "train", root, root / "out" / name, root / "work" / name, seed=3, reporter=Log())


def _fit(root: Path, tok_dir: Path, texts: list[str], arch: str = "gpt", **attrs):
    from ftdsl.stages.torch_model import TorchModel
    from ftdsl.stages.train import fit

    data = _data({"train": _split(texts[:-12]), "valid": _split(texts[-12:])}, "text", tok_dir)
    spec = {"source": "arch", "arch": {"$call": arch, "layers": 1, "heads": 2, "width": 32, "max_len": 64},
            "task": {"$call": "causal_lm", "packing": False, "mask_prompt": True}, "init": "default",
            "input_shape": None, "modality": "text", "norm": False, "seed": 3}
    base = {"epochs": 1, "batch": 8, "optimizer": {"$call": "adamw", "lr": 3e-3, "weight_decay": 0.0},
            "threads": 1, "precision": "fp32"}
    ctx = _ctx(root)
    art = fit(TorchModel(spec), data, {**base, **attrs}, ctx)
    art.log = ctx.reporter.lines
    return art, data


def test_perplexity_is_exp_of_the_hf_models_own_loss(tmp_path, tok):
    from ftdsl.stages.tokenizer import train_bpe

    texts = _texts(60, seed=5)
    tok_dir = train_bpe(texts, 300, tmp_path / "tok")
    art, data = _fit(tmp_path, tok_dir, texts)
    net = art.build().net
    from ftdsl.stages.tokenizer import load_tokenizer

    t = load_tokenizer(tok_dir)
    nll = n = 0.0
    with torch.no_grad():
        for text in data.splits["valid"].texts:
            ids = torch.tensor([[t.bos_token_id, *t(text, add_special_tokens=False)["input_ids"], t.eos_token_id]])
            loss = net(input_ids=ids, labels=ids).loss  # transformers shifts the labels itself
            nll += float(loss) * (ids.shape[1] - 1)
            n += ids.shape[1] - 1
    assert math.isclose(art.metrics["valid.loss"], nll / n, rel_tol=1e-5)
    assert math.isclose(art.metrics["valid.perplexity"], math.exp(nll / n), rel_tol=1e-5)


def test_accumulated_micro_batches_are_one_large_batch(tok):
    """The step's loss is the summed token loss of its micro-batches over the labelled tokens of the
    whole global batch: two micro-batches give the gradient of one batch holding both (a mean per
    micro-batch would weight the tokens of the shorter one more)."""
    from types import SimpleNamespace

    from ftdsl.stages import train_seq
    from ftdsl.stages.hf_archs import materialize

    spec = {"arch": {"$call": "gpt", "layers": 1, "heads": 2, "width": 32, "max_len": 64},
            "task": {"$call": "causal_lm"}, "vocab_size": len(tok), "pad_id": 0, "bos_id": 1, "eos_id": 2}
    module = materialize(spec, seed=0)
    exs = [C.encode_row(tok, t, {}) for t in ["the cat", "a dog sat on the mat over a log", "tree", "bird ran"]]
    t = SimpleNamespace(criterion=C.TASK.criterion(), parallel=SimpleNamespace(active=False, world=1))

    def grads(groups):
        module.zero_grad()
        batches = [C.TASK.collate(g, 0) for g in groups]
        n = train_seq.group_tokens(batches)
        for b in batches:
            out = module(**{k: v for k, v in b.items() if k != "y"})
            train_seq.micro_loss(t, out, b["y"], n, 1.0).backward()
        return {k: p.grad.clone() for k, p in module.named_parameters()}

    whole, split = grads([exs]), grads([exs[:1], exs[1:]])
    assert all(torch.allclose(whole[k], split[k], atol=1e-6) for k in whole)
    one = C.TASK.collate(exs, 0)
    mean = C.TASK.criterion()(module(**{k: v for k, v in one.items() if k != "y"}), one["y"])
    n = sum(len(e["input_ids"]) - 1 for e in exs)
    with torch.no_grad():
        total = C.TASK.criterion()(module(**{k: v for k, v in one.items() if k != "y"}), one["y"], reduction="sum")
    assert math.isclose(float(mean.detach()), float(total) / n, rel_tol=1e-6)


def test_gradient_checkpointing_changes_no_weight(tmp_path):
    from ftdsl.stages.tokenizer import train_bpe

    texts = _texts(44, seed=6)
    tok_dir = train_bpe(texts, 300, tmp_path / "tok")
    plain, _ = _fit(tmp_path / "a", tok_dir, texts, arch="llama")
    ckpt, _ = _fit(tmp_path / "c", tok_dir, texts, arch="llama", gradient_checkpointing=True)
    a, c = plain.state_dict(), ckpt.state_dict()
    assert a.keys() == c.keys() and all(torch.allclose(a[k], c[k], atol=1e-6) for k in a)
    assert plain.metrics["steps"] == ckpt.metrics["steps"] > 1
    assert "gradient checkpointing on" in ckpt.log and "gradient checkpointing on" not in plain.log


def test_loss_on_a_token_task_is_ftp247_at_lint(tmp_path, capsys):
    p = tmp_path / "p.ftp"
    p.write_text('ftp 1\ndata d { source = jsonl("x.jsonl"), text = "text", tokenizer = bpe(vocab = 300) }\n'
                 "model m { arch = gpt(), task = causal_lm() }\n"
                 "train t { model = m, data = d, epochs = 1, loss = cross_entropy }\n")
    (tmp_path / "x.jsonl").write_text('{"text": "a"}\n')
    assert main(["lint", str(p)]) == 1
    cap = capsys.readouterr()
    out = cap.out + cap.err
    assert "FTP247" in out and "remove `loss`" in out


def test_gradient_checkpointing_on_an_ftdsl_net_is_refused(tmp_path):
    from ftdsl.stages.dataset import Dataset, Split
    from ftdsl.stages.torch_model import TorchModel
    from ftdsl.stages.train import fit

    x = np.random.default_rng(0).normal(size=(16, 3)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    data = Dataset({"train": Split(x, None, y, np.arange(1, 17))}, "features", (3,), ["0", "1"], 2, x.mean(0),
                   x.std(0), None, "shuffle", None, "mem")
    spec = {"source": "arch", "arch": {"$call": "mlp", "hidden": [4]}, "task": {"$call": "classify", "labels": 2},
            "init": "default", "input_shape": None, "modality": "features", "norm": False, "seed": 0}
    with pytest.raises(StageError) as e:
        fit(TorchModel(spec), data, {"epochs": 1, "batch": 8, "gradient_checkpointing": True}, _ctx(tmp_path))
    assert e.value.code == "FTP252"


@pytest.mark.slow  # a 1-process and a 2-process `ftdsl run`, ~40 s on 2 cores
def test_two_processes_match_one_process(tmp_path):
    """DDP on a token task: each rank's share of the step's summed token loss over the global batch's
    labelled tokens gives the one-process step (accumulation included)."""
    _jsonl(tmp_path / "instr.jsonl", INSTR)
    p = _pipeline(tmp_path, "arch = gpt(layers = 1, heads = 2, width = 32, max_len = 64), task = causal_lm()",
                  'source = jsonl("instr.jsonl")\n  prompt = "prompt"\n  response = "response"\n'
                  '  tokenizer = bpe(vocab = 300)', "accumulate = 2, distributed = ddp, threads = 1")
    metrics = {}
    for run, extra in (("one", []), ("two", ["--nproc", "2"])):
        r = _run_cli(["run", str(p), "--cache", str(tmp_path / run), "--quiet", *extra])
        assert r.returncode == 0, r.stderr[-3000:]
        metrics[run] = json.loads((tmp_path / "out" / "t" / "metrics.json").read_text())
    a, b = _trained_weights(tmp_path / "one"), _trained_weights(tmp_path / "two")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-4) for k in a)
    for k in ("train.loss", "valid.loss", "valid.perplexity", "valid.token_accuracy"):
        assert math.isclose(metrics["one"][k], metrics["two"][k], rel_tol=1e-4), k


def test_a_pretrained_folder_loads_with_the_auto_class_of_its_task(tmp_path):
    """pretrained = FOLDER: the task picks the transformers class (and, for token_classify, the
    head's size and label maps); the trained artifact rebuilds the same class from hf_config/."""
    import transformers

    from ftdsl.stages.tasks.module import SeqModule
    from ftdsl.stages.torch_model import TorchModel

    torch.manual_seed(0)
    bert = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                   intermediate_size=32, max_position_embeddings=32)
    transformers.BertModel(bert).save_pretrained(str(tmp_path / "bert"))
    t5 = transformers.T5Config(vocab_size=50, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2,
                               decoder_start_token_id=0)
    transformers.T5ForConditionalGeneration(t5).save_pretrained(str(tmp_path / "t5"))
    transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=50, n_embd=16, n_layer=1, n_head=2,
                                                         n_positions=32)).save_pretrained(str(tmp_path / "gpt2"))
    cases = [("bert", {"$call": "token_classify", "labels": ["O", "B-PER", "I-PER"]}, "BertForTokenClassification"),
             ("t5", {"$call": "seq2seq", "max_target_length": 8}, "T5ForConditionalGeneration"),
             ("gpt2", {"$call": "causal_lm", "packing": False, "mask_prompt": True}, "GPT2LMHeadModel"),
             ("bert", {"$call": "classify", "labels": 2}, "BertForSequenceClassification")]
    for folder, task, cls in cases:
        spec = {"source": "pretrained", "pretrained": folder, "pretrained_path": str(tmp_path / folder),
                "task": task, "modality": "text", "init": "default", "use_safetensors": True}
        module = TorchModel(spec).build()
        assert type(module.net).__name__ == cls
        assert isinstance(module, SeqModule) == (task["$call"] != "classify")
        if task["$call"] == "token_classify":
            assert module.net.config.id2label == {0: "O", 1: "B-PER", 2: "I-PER"}
            assert module.net.classifier.out_features == 3
        trained = TorchModel(spec).with_module(module)
        trained.save(tmp_path / f"art-{folder}-{task['$call']}")
        again = TorchModel.load(tmp_path / f"art-{folder}-{task['$call']}").build()
        assert type(again.net).__name__ == cls
        ids = torch.tensor([[3, 4, 5, 6]])
        kw = {"decoder_input_ids": torch.tensor([[0, 7]])} if task["$call"] == "seq2seq" else {}
        with torch.no_grad():
            assert torch.equal(module(input_ids=ids, attention_mask=torch.ones_like(ids), **kw),
                               again(input_ids=ids, attention_mask=torch.ones_like(ids), **kw))
