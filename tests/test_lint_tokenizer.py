"""FTP248/FTP249 at lint (no torch): a text model built from scratch needs the data's tokenizer, and
chat `messages` need one trained with a chat template. Both used to pass lint and stop the train
stage (FTP510) after the data stage had run; `run` now refuses them before any stage runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ftdsl.cli import main
from ftdsl.ir.schema import modality as M

GPT = "arch = gpt(layers = 1, heads = 2, width = 32, max_len = 64), task = causal_lm()"
CHAT_ROW = {"messages": [{"role": "user", "content": "add 1 and 2"}, {"role": "assistant", "content": "3"}]}


def _files(tmp_path: Path) -> None:
    (tmp_path / "chat.jsonl").write_text("\n".join(json.dumps(CHAT_ROW) for _ in range(12)) + "\n", encoding="utf-8")
    (tmp_path / "rows.jsonl").write_text('{"text": "a b c", "label": 0}\n{"text": "d e", "label": 1}\n',
                                         encoding="utf-8")


def _lint(tmp_path, body: str, capsys) -> list[dict]:
    _files(tmp_path)
    p = tmp_path / "p.ftp"
    p.write_text("ftp 1\n" + body, encoding="utf-8")
    capsys.readouterr()
    main(["lint", "--format", "json", str(p)])
    return [d for d in json.loads(capsys.readouterr().out)["diagnostics"] if d["severity"] == "error"]


CHAT = 'data d {{ source = jsonl("chat.jsonl"), messages = "messages"{tok} }}\n'
TEXT = 'data d {{ source = jsonl("rows.jsonl"), text = "text"{tok} }}\n'


@pytest.mark.parametrize("arch,suggest", [(GPT, "bpe(vocab = 4000)"),
                                          ("arch = transformer(), task = classify(labels = 2)",
                                           "wordpiece(vocab = 8000)")])
def test_from_scratch_text_model_without_tokenizer(tmp_path, capsys, arch, suggest):
    data = (CHAT if "gpt" in arch else TEXT).format(tok="")
    diags = _lint(tmp_path, data + f"model m {{ {arch} }}\ntrain t {{ model = m, data = d, max_steps = 1 }}\n",
                  capsys)
    assert [d["code"] for d in diags] == ["FTP248"]
    assert "`d` trains no tokenizer" in diags[0]["summary"] and suggest in diags[0]["detail"]
    line = (tmp_path / "p.ftp").read_text().splitlines()[diags[0]["range"]["start"]["line"] - 1]
    assert line.startswith("train t")  # points at `data = d` of the train stage


def test_chat_messages_need_a_chat_template(tmp_path, capsys):
    body = "model m { %s }\ntrain t { model = m, data = d, max_steps = 1 }\n" % GPT
    diags = _lint(tmp_path, CHAT.format(tok=", tokenizer = wordpiece(vocab = 100)") + body, capsys)
    assert [d["code"] for d in diags] == ["FTP249"]
    assert "wordpiece" in diags[0]["summary"] and "bpe(...)" in diags[0]["detail"]
    assert _lint(tmp_path, CHAT.format(tok=", tokenizer = bpe(vocab = 300)") + body, capsys) == []
    # wordpiece is fine for prompt/response rows (no template needed)
    pr = 'data d { source = jsonl("pr.jsonl"), prompt = "q", response = "a", tokenizer = wordpiece(vocab = 100) }\n'
    (tmp_path / "pr.jsonl").write_text('{"q": "a", "a": "b"}\n', encoding="utf-8")
    assert [d["code"] for d in _lint(tmp_path, pr + body, capsys)] == []


def test_continuing_a_trained_model_uses_its_own_tokenizer(tmp_path, capsys):
    body = (CHAT.format(tok=", tokenizer = bpe(vocab = 300)")
            + 'data more { source = jsonl("chat.jsonl"), messages = "messages" }\n'
            + "model m { %s }\ntrain first { model = m, data = d, max_steps = 1 }\n" % GPT
            + "train again { model = first, data = more, max_steps = 1 }\n")
    assert _lint(tmp_path, body, capsys) == []


def test_chat_tokenizers_table_matches_what_the_data_stage_trains(tmp_path):
    from ftdsl.stages.tokenizer import train_bpe, train_wordpiece

    texts = ["add one and two", "the sum is three"] * 20
    trained = {"bpe": train_bpe(texts, 300, tmp_path / "bpe"), "wordpiece": train_wordpiece(texts, 100, tmp_path / "wp")}
    for name, folder in trained.items():
        config = json.loads((Path(folder) / "tokenizer_config.json").read_text())
        assert (config.get("chat_template") is not None) == (name in M.CHAT_TOKENIZERS), name


def test_run_refuses_before_any_stage(tmp_path):
    """`run` lints first: exit 1 with the lint's code, and no stage has written anything."""
    _files(tmp_path)
    p = tmp_path / "p.ftp"
    p.write_text("ftp 1\n" + CHAT.format(tok=", tokenizer = wordpiece(vocab = 100)")
                 + "model m { %s }\ntrain t { model = m, data = d, max_steps = 1 }\n" % GPT, encoding="utf-8")
    r = subprocess.run([sys.executable, "-m", "ftdsl", "run", str(p), "--cache", str(tmp_path / "c")],
                       capture_output=True, text=True, cwd=tmp_path, env={"NO_COLOR": "1", "PATH": "/usr/bin:/bin",
                                                                           "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 1, r.stdout + r.stderr
    assert "FTP249" in r.stdout + r.stderr
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "c").exists() or not any((tmp_path / "c").rglob("*.safetensors"))
