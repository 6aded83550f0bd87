"""`ftdsl lsp` through real JSON-RPC over stdio (Content-Length framing), as an editor talks to it.

Expected values are computed independently: diagnostic ranges from `ftdsl lint --format json`
(code-point columns) re-encoded to UTF-16 here, formatting against `ftdsl fmt` run on a copy,
documentation against the schema's declarations.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("pygls.lsp.server")

from ftdsl.ir import schema as S  # noqa: E402
from ftdsl.lsp.client import LspClient  # noqa: E402
from ftdsl.lsp.positions import LineIndex  # noqa: E402

COMMON = '''ftp 1
data digits {
  source = sklearn("digits")
}
'''

# Emoji: in a comment (line 2), after a block (line 4), and in a string before an error on the same
# line (the last): UTF-16 counts each as 2 units where the front end counts 1 code point.
BROKEN = '''ftp 1
# 😀 a comment with an emoji
use "common.ftp"
model mlp { arch = mlp(hidden = [64]) task = classify(labels = 10) }   # 😀
train fit {
  model = mlp
  data = digits
  precision = auto
}
train fit2 { model = mlp  data = digts  epoch = 2  optimizer = adamw(lrr = 1e-3) }
evaluate r { models = [fit] data = digits.test }
data d2 { source = sklearn("😀 digits")  labl = "x" }
'''


def u16(s: str) -> int:
    return len(s.encode("utf-16-le")) // 2


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    d = tmp_path_factory.mktemp("lsp")
    (d / "common.ftp").write_text(COMMON, encoding="utf-8")
    (d / "main.ftp").write_text(BROKEN, encoding="utf-8")
    return d


@pytest.fixture(scope="module")
def lsp(work):
    c = LspClient(cwd=work)
    caps = c.initialize(work.as_uri())["result"]["capabilities"]
    uri = (work / "main.ftp").as_uri()
    c.notify("textDocument/didOpen", {"textDocument": {"uri": uri, "languageId": "ftp", "version": 1,
                                                       "text": BROKEN}})
    c.first = c.wait_notification("textDocument/publishDiagnostics", where=lambda p: p["uri"] == uri)
    c.caps, c.uri = caps, uri
    yield c
    assert c.close() == 0


def pos(text: str, needle: str, nth: int = 0, delta: int = 0) -> dict:
    """The LSP position (UTF-16) of the `nth` occurrence of `needle` in `text`, plus `delta` chars."""
    i = -1
    for _ in range(nth + 1):
        i = text.index(needle, i + 1)
    i += delta
    line = text.count("\n", 0, i)
    start = text.rfind("\n", 0, i) + 1
    return {"line": line, "character": u16(text[start:i])}


def test_diagnostics_match_lint_codes_and_utf16_ranges(lsp, work):
    out = subprocess.run([sys.executable, "-m", "ftdsl", "lint", "--format", "json", "main.ftp"], cwd=work,
                         capture_output=True, text=True, encoding="utf-8")
    expected = []
    lines = BROKEN.split("\n")
    for d in json.loads(out.stdout)["diagnostics"]:
        r = d["range"]
        s, e = r["start"], r["end"]
        expected.append((d["code"], s["line"] - 1, u16(lines[s["line"] - 1][:s["column"] - 1]),
                         e["line"] - 1, u16(lines[e["line"] - 1][:e["column"] - 1])))
    got = [(d["code"], d["range"]["start"]["line"], d["range"]["start"]["character"],
            d["range"]["end"]["line"], d["range"]["end"]["character"]) for d in lsp.first["diagnostics"]]
    assert sorted(got) == sorted(expected)
    assert {"FTP204", "FTP201", "FTP203"} <= {g[0] for g in got}
    # `labl` comes after an emoji on its line: one code point more in UTF-16 units.
    labl = next(g for g in got if g[0] == "FTP201" and g[1] == len(lines) - 2)
    assert labl[2] == lines[-2].index("labl") + 1 == pos(BROKEN, "labl")["character"]
    assert labl[4] - labl[2] == 4


def test_utf16_after_emoji_on_the_same_line(lsp, work):
    text = 'ftp 1\ndata d { source = sklearn("😀digitz") }\n'
    uri = (work / "emoji.ftp").as_uri()
    lsp.notify("textDocument/didOpen", {"textDocument": {"uri": uri, "languageId": "ftp", "version": 1, "text": text}})
    d = lsp.wait_notification("textDocument/publishDiagnostics", where=lambda p: p["uri"] == uri)
    bad = next(x for x in d["diagnostics"] if x["code"] == "FTP203")
    start = text.index('"😀')
    assert bad["range"]["start"] == {"line": 1, "character": start - text.index("\n") - 1}
    # the string is 9 code points but 10 UTF-16 units
    assert bad["range"]["end"]["character"] - bad["range"]["start"]["character"] == u16('"😀digitz"') == 10


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_use_of_a_fifo_does_not_hang_the_server(lsp, work):
    os.mkfifo(work / "pipe.ftp")
    uri = (work / "fifo.ftp").as_uri()
    text = 'ftp 1\nuse "pipe.ftp"\ndata d { source = sklearn("digits") }\n'
    lsp.notify("textDocument/didOpen", {"textDocument": {"uri": uri, "languageId": "ftp", "version": 1, "text": text}})
    d = lsp.wait_notification("textDocument/publishDiagnostics", where=lambda p: p["uri"] == uri, timeout=15)
    assert "FTP004" in {x["code"] for x in d["diagnostics"]}
    r = lsp.request("textDocument/semanticTokens/full", {"textDocument": {"uri": uri}}, timeout=15)
    assert r["result"]["data"]


def test_a_byte_order_mark_is_not_an_error(lsp, work):
    uri = (work / "bom.ftp").as_uri()
    text = '\ufeffftp 1\ndata d { source = sklearn("digitz") }\n'
    lsp.notify("textDocument/didOpen", {"textDocument": {"uri": uri, "languageId": "ftp", "version": 1, "text": text}})
    d = lsp.wait_notification("textDocument/publishDiagnostics", where=lambda p: p["uri"] == uri)
    assert [x["code"] for x in d["diagnostics"] if x["severity"] == 1] == ["FTP203"]  # not FTP102
    assert next(x for x in d["diagnostics"] if x["code"] == "FTP203")["range"]["start"] == pos(text, '"digitz"')


def test_did_change_republishes(lsp, work):
    uri = (work / "change.ftp").as_uri()
    good = "ftp 1\ndata d {\n  source = sklearn(\"digits\")\n}\n"
    lsp.notify("textDocument/didOpen", {"textDocument": {"uri": uri, "languageId": "ftp", "version": 1, "text": good}})
    first = lsp.wait_notification("textDocument/publishDiagnostics", where=lambda p: p["uri"] == uri)
    assert not [x for x in first["diagnostics"] if x["severity"] == 1]
    lsp.notify("textDocument/didChange", {"textDocument": {"uri": uri, "version": 2},
                                          "contentChanges": [{"text": good.replace("}", "")}]})
    second = lsp.wait_notification("textDocument/publishDiagnostics", where=lambda p: p["uri"] == uri)
    assert second["version"] == 2
    assert any(x["severity"] == 1 and x["code"] == "FTP103" for x in second["diagnostics"])


def test_hover_shows_schema_docs(lsp):
    def hover(needle, nth=0):
        r = lsp.request("textDocument/hover", {"textDocument": {"uri": lsp.uri}, "position": pos(BROKEN, needle, nth, 1)})
        return r["result"]["contents"]["value"] if r["result"] else None

    assert S.KINDS["train"].field("precision").doc in hover("precision")
    assert S.CONSTRUCTORS["optimizer"]["adamw"].doc in hover("adamw")
    assert S.KINDS["train"].doc in hover("train")
    assert S.CONSTRUCTORS["arch"]["mlp"].arg("hidden").doc in hover("hidden")
    assert "model mlp" in hover("mlp", 2)  # `model = mlp`: the block it names
    assert hover("labl") is None  # not an attribute of `data`: nothing to document


def test_completion(lsp, work):
    text = ('ftp 1\nuse "common.ftp"\nparam rate = 2\nmodel m { task = classify(labels = 2) }\n'
            'train t {\n  model = \n  data = \n  optimizer = \n  precision = \n  early_stop = { metric = "x",  }\n  \n}\n'
            'evaluate e { models = [t] data = digits. }\n\n')
    uri = (work / "complete.ftp").as_uri()
    lsp.notify("textDocument/didOpen", {"textDocument": {"uri": uri, "languageId": "ftp", "version": 1, "text": text}})

    def labels(needle, nth=0, delta=None):
        p = pos(text, needle, nth, len(needle) if delta is None else delta)
        r = lsp.request("textDocument/completion", {"textDocument": {"uri": uri}, "position": p})
        return {i["label"] for i in r["result"]["items"]}

    assert set(S.KINDS) | {"param", "use"} <= labels("\n\n", 0, 1)
    assert labels("model = ") == {"m"}  # a TorchModel: the model and the train stage, not the data
    assert "digits" in labels("data = ") and "m" not in labels("data = ")
    assert set(S.CONSTRUCTORS["optimizer"]) <= labels("optimizer = ")
    assert labels("precision = ") == {"auto", "fp32", "bf16", "fp16"}
    assert {"mode", "patience", "min_delta"} <= labels('"x",  ', 0, 6) and "metric" not in labels('"x",  ', 0, 6)
    attrs = labels("}\n  \n", 0, 4)
    assert {"epochs", "batch", "lora"} <= attrs and "model" not in attrs  # already set
    assert labels("digits.") == {"train", "valid", "test"}
    assert labels("labels", 0, 0) == {"labels", "rate"}  # arguments of the call, or a positional value
    assert labels("labels = ") == {"rate"}  # a number: the params; not in `precision = ` (exact set above)


def test_definition_and_use_files(lsp, work):
    r = lsp.request("textDocument/definition", {"textDocument": {"uri": lsp.uri}, "position": pos(BROKEN, "digits.test", 0, 1)})
    loc = r["result"]
    assert loc["uri"] == (work / "common.ftp").resolve().as_uri()
    assert loc["range"]["start"] == pos(COMMON, "digits")
    r = lsp.request("textDocument/definition", {"textDocument": {"uri": lsp.uri}, "position": pos(BROKEN, "common.ftp", 0, 2)})
    assert r["result"]["uri"] == (work / "common.ftp").resolve().as_uri()
    r = lsp.request("textDocument/definition", {"textDocument": {"uri": lsp.uri}, "position": pos(BROKEN, "mlp", 2, 1)})
    assert r["result"]["range"]["start"] == pos(BROKEN, "mlp", 0)


def test_rename_block(lsp, work):
    r = lsp.request("textDocument/rename", {"textDocument": {"uri": lsp.uri}, "position": pos(BROKEN, "fit", 0, 1),
                                            "newName": "trained"})
    edits = r["result"]["changes"][lsp.uri]
    starts = sorted((e["range"]["start"]["line"], e["range"]["start"]["character"]) for e in edits)
    want = sorted((p["line"], p["character"]) for p in (pos(BROKEN, "fit {"), pos(BROKEN, "[fit]", 0, 1)))
    assert starts == want and all(e["newText"] == "trained" for e in edits)  # not `fit2`
    r = lsp.request("textDocument/rename", {"textDocument": {"uri": lsp.uri}, "position": pos(BROKEN, "digits.test", 0, 1),
                                            "newName": "dig"})
    ch = r["result"]["changes"]
    common = (work / "common.ftp").resolve().as_uri()
    assert len(ch[common]) == 1 and len(ch[lsp.uri]) == 2  # the declaration, `data = digits`, `digits.test`
    assert "digits" in COMMON.split("sklearn(")[1]  # the string "digits" is not a reference
    bad = lsp.request("textDocument/rename", {"textDocument": {"uri": lsp.uri}, "position": pos(BROKEN, "fit", 0, 1),
                                              "newName": "2x"})
    assert "error" in bad and "not a valid name" in bad["error"]["message"]
    ok = lsp.request("textDocument/prepareRename", {"textDocument": {"uri": lsp.uri}, "position": pos(BROKEN, "[fit]", 0, 2)})
    assert ok["result"]["start"] == pos(BROKEN, "[fit]", 0, 1)
    no = lsp.request("textDocument/prepareRename", {"textDocument": {"uri": lsp.uri}, "position": pos(BROKEN, "precision", 0, 1)})
    assert no["result"] is None  # an attribute is not renamed


def test_code_action_applies_did_you_mean(lsp):
    diags = [d for d in lsp.first["diagnostics"] if d["code"] in ("FTP201", "FTP204")]
    r = lsp.request("textDocument/codeAction", {"textDocument": {"uri": lsp.uri}, "range": diags[0]["range"],
                                                "context": {"diagnostics": diags}})
    fixes = {a["edit"]["changes"][lsp.uri][0]["newText"] for a in r["result"]}
    assert {"digits", "epochs", "lr"} <= fixes
    for a in r["result"]:
        assert a["kind"] == "quickfix"


def test_formatting_is_fmt(lsp, work, tmp_path):
    text = "ftp 1\ndata   d {source=sklearn(\"digits\")   # keep me\n}\n"
    uri = (work / "fmt.ftp").as_uri()
    lsp.notify("textDocument/didOpen", {"textDocument": {"uri": uri, "languageId": "ftp", "version": 1, "text": text}})
    r = lsp.request("textDocument/formatting", {"textDocument": {"uri": uri}, "options": {"tabSize": 2, "insertSpaces": True}})
    (edit,) = r["result"]
    f = tmp_path / "x.ftp"
    f.write_text(text, encoding="utf-8")
    subprocess.run([sys.executable, "-m", "ftdsl", "fmt", str(f)], check=True, capture_output=True)
    assert edit["newText"] == f.read_text(encoding="utf-8")
    assert edit["range"]["start"] == {"line": 0, "character": 0} and edit["range"]["end"]["line"] == 3


def test_semantic_tokens(lsp):
    legend = lsp.caps["semanticTokensProvider"]["legend"]["tokenTypes"]
    r = lsp.request("textDocument/semanticTokens/full", {"textDocument": {"uri": lsp.uri}})
    data = r["result"]["data"]
    line = col = 0
    toks = {}
    lines = BROKEN.split("\n")
    for i in range(0, len(data), 5):
        dl, dc, n, ty, _ = data[i:i + 5]
        col = col + dc if dl == 0 else dc
        line += dl
        # slice the line by UTF-16 units, independently of the server's arithmetic
        b = lines[line].encode("utf-16-le")
        toks[(line, b[2 * col:2 * (col + n)].decode("utf-16-le"))] = legend[ty]
    assert toks[(0, "ftp")] == "keyword" and toks[(0, "1")] == "number"
    assert toks[(1, "# 😀 a comment with an emoji")] == "comment"
    assert toks[(2, '"common.ftp"')] == "string"
    assert toks[(3, "model")] == "keyword" and toks[(4, "fit")] == "class"
    assert toks[(5, "model")] == "property" and toks[(8 - 1, "precision")] == "property"
    assert toks[(3, "# 😀")] == "comment"
    fit2 = next(i for i, s in enumerate(lines) if "data = digts" in s)
    assert toks[(fit2, "adamw")] == "function" and toks[(fit2, "lrr")] == "parameter"
    assert toks[(7, "auto")] == "enumMember"
    assert toks[(11, "labl")] == "property" and toks[(11, '"😀 digits"')] == "string"  # after an emoji


def test_positions_convert_non_bmp_both_ways():
    text = "a😀b\n😀😀x"
    for enc, unit in (("utf-16", lambda s: len(s.encode("utf-16-le")) // 2), ("utf-8", lambda s: len(s.encode())),
                      ("utf-32", len)):
        idx = LineIndex(text, enc)
        assert idx.position(1, 3) == (0, unit("a😀"))
        assert idx.position(2, 3) == (1, unit("😀😀"))
        assert idx.offset(1, unit("😀😀")) == text.index("x")
        assert idx.offset(0, unit("a😀")) == text.index("b")


def test_utf8_negotiated_and_no_torch(work):
    """A client that prefers UTF-8 gets byte columns; a whole session imports neither torch nor any
    other engine library (the list of tests/test_no_torch_import.py)."""
    c = LspClient(args=("-X", "importtime"), cwd=work)
    r = c.initialize(work.as_uri(), {"general": {"positionEncodings": ["utf-8", "utf-16"]}})
    assert r["result"]["capabilities"]["positionEncoding"] == "utf-8"
    uri = (work / "main.ftp").as_uri()
    c.notify("textDocument/didOpen", {"textDocument": {"uri": uri, "languageId": "ftp", "version": 1, "text": BROKEN}})
    d = c.wait_notification("textDocument/publishDiagnostics", where=lambda p: p["uri"] == uri)
    digts = next(x for x in d["diagnostics"] if x["code"] == "FTP204")
    line = BROKEN.split("\n")[digts["range"]["start"]["line"]]
    assert digts["range"]["start"]["character"] == len(line[:line.index("digts")].encode())
    for method, extra in (("textDocument/hover", {"position": pos(BROKEN, "adamw")}),
                          ("textDocument/completion", {"position": pos(BROKEN, "model = ", 0, 8)}),
                          ("textDocument/semanticTokens/full", {}),
                          ("textDocument/formatting", {"options": {"tabSize": 2, "insertSpaces": True}})):
        assert "result" in c.request(method, {"textDocument": {"uri": uri}, **extra})
    assert c.close() == 0
    imported = c.stderr.decode("utf-8", "replace")
    assert "ftdsl.lsp.server" in imported  # -X importtime did list the imports
    heavy = "|".join(("torch", "transformers", "onnxruntime", "onnx", "onnxscript", "peft", "optuna", "sklearn",
                      "numpy", "matplotlib", "tensorboard", "safetensors", "tokenizers", "pyarrow"))
    assert not re.findall(rf"\|\s+((?:{heavy})(?:\.\S+)?)\s*$", imported, re.M)


def test_lsp_without_pygls_says_which_extra(tmp_path):
    code = "import sys; sys.modules['pygls'] = None; sys.modules['pygls.lsp'] = None\n" \
           "from ftdsl.cli import main; raise SystemExit(main(['lsp']))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 2
    assert 'pip install "ftdsl[lsp]"' in r.stderr


def test_a_burst_of_changes_is_checked_once_with_the_last_text(lsp, work):
    """Keystrokes that arrive while a long file is being checked are coalesced: the server never
    falls behind the typing, and the diagnostics it ends with are those of the last text."""
    body = "".join(f"train t{i} {{ model = m  data = digits  epochs = 1 }}\n" for i in range(1500))
    text = 'ftp 1\nuse "common.ftp"\nmodel m { arch = mlp() task = classify(labels = 10) }\n' + body
    uri = (work / "burst.ftp").as_uri()
    lsp.notify("textDocument/didOpen", {"textDocument": {"uri": uri, "languageId": "ftp", "version": 1, "text": text}})
    for v in range(2, 12):
        lsp.notify("textDocument/didChange", {"textDocument": {"uri": uri, "version": v},
                                              "contentChanges": [{"text": text.replace("epochs", "epoch", v - 1)}]})
    seen = []
    last = lsp.wait_notification("textDocument/publishDiagnostics", timeout=60,
                                 where=lambda p: p["uri"] == uri and (seen.append(p["version"]) or p["version"] == 11))
    assert sum(1 for d in last["diagnostics"] if d["code"] == "FTP201") == 10
    assert len(seen) < 11, seen  # fewer checks than changes


def test_editor_features_never_raise_on_text_being_typed():
    """Every prefix of the example pipelines (text as it is being typed), with a stray character
    appended, goes through completion, hover, semantic tokens and definition without an exception."""
    import random

    from ftdsl.lsp import completion, hover, navigation, tokens

    rnd = random.Random(7)
    root = Path(__file__).resolve().parents[1]
    n = 0
    for p in sorted((root / "pipelines").glob("*.ftp")):
        text = p.read_text(encoding="utf-8")
        for cut in range(0, len(text), 17):
            t = text[:cut] + rnd.choice(['"', "{", "(", "[", "}", ")", "=", ".", ",", "x", "😀", "\n", ""])
            off = len(t)
            completion.complete(t, off, {"digits": "data", "fit": "train"}, ("lr",))
            hover.hover_at(t, max(off - 1, 0), {"digits": "data"})
            tokens.encode(t, LineIndex(t), {})
            navigation.definition(navigation.load(p, t, lambda _: None), max(off - 2, 0))
            n += 1
    assert n > 500


def test_use_files_diagnostics_on_the_use_line_and_rename_from_the_used_file(lsp, work):
    (work / "broken_common.ftp").write_text('ftp 1\ndata other { source = sklearn("digitz") }\n', encoding="utf-8")
    text = 'ftp 1\n# 😀\nuse "broken_common.ftp"\nevaluate e { models = [] data = other.test }\n'
    uri = (work / "uses_broken.ftp").as_uri()
    lsp.notify("textDocument/didOpen", {"textDocument": {"uri": uri, "languageId": "ftp", "version": 1, "text": text}})
    d = lsp.wait_notification("textDocument/publishDiagnostics", where=lambda p: p["uri"] == uri)
    bad = next(x for x in d["diagnostics"] if x["code"] == "FTP203")
    assert bad["message"].startswith("broken_common.ftp:2:")
    assert bad["range"]["start"] == pos(text, '"broken_common.ftp"') and bad["range"]["end"]["line"] == 2
    # Renaming a block in the used file also renames the references in the open file that uses it.
    common = (work / "common.ftp").resolve().as_uri()
    lsp.notify("textDocument/didOpen", {"textDocument": {"uri": common, "languageId": "ftp", "version": 1,
                                                         "text": COMMON}})
    r = lsp.request("textDocument/rename", {"textDocument": {"uri": common}, "position": pos(COMMON, "digits", 0, 1),
                                            "newName": "dig"})
    ch = r["result"]["changes"]
    assert len(ch[common]) == 1 and len(ch[lsp.uri]) == 2
