"""The editor grammars against the example pipelines.

The TextMate grammar (editors/ftp.tmLanguage.json, used by VS Code, Sublime, GitHub, ...) is run
by a small Python implementation of the TextMate subset it uses (match / begin-end rules,
captures, includes; at each position the earliest match wins, ties to the first rule). Every
token of every pipelines/*.ftp is compared with the language server's scan (a different
implementation, aware of the schema and of multi-line structure): comments, strings, numbers,
block kinds and names, attributes, constructor calls, constants and references must get the
matching scope. The Vim syntax file is checked the same way through `vim -es` when Vim exists.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from ftdsl.ir import schema as S
from ftdsl.lsp.scan import Scan

ROOT = Path(__file__).resolve().parents[1]
GRAMMAR = ROOT / "editors" / "ftp.tmLanguage.json"
VSCODE = ROOT / "editors" / "vscode"
PIPELINES = sorted((ROOT / "pipelines").glob("*.ftp"))


class TextMate:
    """The TextMate subset the grammar uses: `match`, `begin`/`end`, `captures`, `include`."""

    def __init__(self, grammar: dict):
        self.repo = grammar.get("repository", {})
        self.top = self._flatten(grammar["patterns"])

    def _flatten(self, patterns):
        out = []
        for p in patterns:
            if "include" in p:
                out += self._flatten([self.repo[p["include"].lstrip("#")]])
            elif "patterns" in p and "match" not in p and "begin" not in p:
                out += self._flatten(p["patterns"])
            else:
                out.append(p)
        return out

    def scopes(self, text: str) -> list[set[str]]:
        """The scope names that cover each character of `text` (lines are tokenized one by one)."""
        marks = [set() for _ in text]
        offset = 0
        inside = None  # the begin/end rule whose end is pending, and where it began
        for line in text.split("\n"):
            pos = 0
            while pos <= len(line):
                rules = (self._flatten(inside[0].get("patterns", [])) + [{"__end__": inside[0]}]) if inside \
                    else self.top
                best = None
                for r in rules:
                    rx = r["__end__"]["end"] if "__end__" in r else r.get("match") or r.get("begin")
                    m = re.compile(rx).search(line, pos)
                    if m and (best is None or m.start() < best[1].start()):
                        best = (r, m)
                if best is None:
                    break
                r, m = best
                if "__end__" in r:
                    rule, start = inside
                    self._mark(marks, start, offset + m.end(), rule.get("name"))
                    self._captures(marks, offset, m, rule.get("endCaptures", {}))
                    inside = None
                elif "begin" in r:
                    self._captures(marks, offset, m, r.get("beginCaptures", {}))
                    inside = (r, offset + m.start())
                else:
                    self._mark(marks, offset + m.start(), offset + m.end(), r.get("name"))
                    self._captures(marks, offset, m, r.get("captures", {}))
                pos = m.end() if m.end() > pos else pos + 1
            if inside:  # a rule left open at a line end spans into the next line (none here: `$` ends strings)
                self._mark(marks, inside[1], offset + len(line), inside[0].get("name"))
                inside = (inside[0], offset + len(line) + 1)
            offset += len(line) + 1
        return marks

    @staticmethod
    def _mark(marks, start, end, name):
        if name:
            for i in range(start, min(end, len(marks))):
                marks[i].add(name)

    def _captures(self, marks, offset, m, caps):
        for g, c in caps.items():
            if m.group(int(g)) is not None:
                self._mark(marks, offset + m.start(int(g)), offset + m.end(int(g)), c.get("name"))


def _expected_scope(tok, text: str) -> str | None:
    """The scope a token must get, from the language server's scan of the whole file."""
    if tok.kind == "comment":
        return "comment.line.number-sign.ftp"
    if tok.kind == "string":
        return "string.quoted.double.ftp"
    if tok.kind == "number":
        return "constant.numeric.ftp"
    if tok.role == "kind":
        return "storage.type.block.ftp"
    if tok.role == "blockname":
        return "entity.name.type.block.ftp"
    if tok.role == "paramname":
        return "variable.other.constant.ftp"
    if tok.role in ("attr", "kwarg", "key") and tok.kind == "name":
        return "variable.other.property.ftp"
    if tok.role == "ctor" and text[tok.end:].lstrip().startswith("("):
        return "entity.name.function.constructor.ftp"
    if tok.role == "keyword":
        return {"ftp": "keyword.other.version.ftp", "use": "keyword.control.import.ftp",
                "param": "storage.type.param.ftp"}.get(tok.text, "constant.language.ftp")
    if tok.role in ("ref", "enum", "ctor"):  # a bare name in a value: the grammar cannot tell them apart
        return "variable.other.reference.ftp"
    if tok.role == "refpart":
        return "variable.other.member.ftp"
    return None


def test_every_regex_compiles():
    g = json.loads(GRAMMAR.read_text(encoding="utf-8"))
    found = []

    def walk(node):
        if isinstance(node, dict):
            for k, v in node.items():
                if k in ("match", "begin", "end"):
                    found.append(v)
                    re.compile(v)
                    try:
                        import regex  # closer to Oniguruma's syntax than `re`, where installed
                    except ImportError:
                        pass
                    else:
                        regex.compile(v)
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(g)
    assert len(found) >= 12
    assert g["scopeName"] == "source.ftp"


def test_generated_grammars_are_current():
    """editors/regen.py writes the grammar (kinds from the schema), its VS Code copy and the
    Sublime plist: run it after changing the schema's block kinds."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("editors_regen", ROOT / "editors" / "regen.py")
    regen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(regen)
    stale = [str(p.relative_to(ROOT)) for p, data in regen.outputs().items() if p.read_bytes() != data]
    assert not stale, f"stale: {stale}; run python editors/regen.py"


def test_vim_block_kinds_are_the_schema_kinds():
    vim = (ROOT / "editors" / "vim" / "syntax" / "ftp.vim").read_text(encoding="utf-8")
    alt = re.search(r"ftpBlockKind +\"[^\n]*?\\%\(([a-z\\|]+)\\\)", vim).group(1)
    assert set(alt.split("\\|")) == set(S.KINDS)


def test_grammar_block_kinds_are_the_schema_kinds():
    g = json.loads(GRAMMAR.read_text(encoding="utf-8"))
    alt = re.search(r"\(([a-z|]+)\)", g["repository"]["block"]["match"]).group(1)
    assert set(alt.split("|")) == set(S.KINDS)


@pytest.mark.parametrize("path", PIPELINES, ids=lambda p: p.name)
def test_textmate_scopes_match_the_scan(path):
    text = path.read_text(encoding="utf-8")
    _compare(path, text, TextMate(json.loads(GRAMMAR.read_text(encoding="utf-8"))).scopes(text))


@pytest.mark.skipif(not os.environ.get("FTDSL_TEXTMATE_NODE_MODULES") or not shutil.which("node"),
                    reason="set FTDSL_TEXTMATE_NODE_MODULES to a node_modules with vscode-textmate and vscode-oniguruma")
def test_vscode_textmate_engine_agrees():
    """The same comparison with VS Code's own engine (Oniguruma regexes), where it is installed."""
    env = dict(os.environ, NODE_PATH=os.environ["FTDSL_TEXTMATE_NODE_MODULES"])
    r = subprocess.run(["node", str(ROOT / "editors" / "test" / "tokenize.js"), str(GRAMMAR), *map(str, PIPELINES)],
                       capture_output=True, text=True, env=env, timeout=120, check=True)
    rows = json.loads(r.stdout)
    for path in PIPELINES:
        text = path.read_text(encoding="utf-8")
        lines = text.split("\n")
        starts = [0]
        for ln in lines:
            starts.append(starts[-1] + len(ln) + 1)
        marks = [set() for _ in text]
        for line, a, b, scopes in rows[str(path)]:
            # UTF-16 indices -> code-point offsets
            units = [i for i, c in enumerate(lines[line]) for _ in range(2 if ord(c) > 0xFFFF else 1)] + [len(lines[line])]
            for i in range(starts[line] + units[a], starts[line] + units[min(b, len(units) - 1)]):
                marks[i].update(scopes)
        _compare(path, text, marks)


def _compare(path, text, marks):
    checked, wrong = 0, []
    for tok in Scan(text).toks:
        want = _expected_scope(tok, text)
        if want is None:
            continue
        checked += 1
        for i in range(tok.start, tok.end):
            if want not in marks[i]:
                line = text.count("\n", 0, tok.start) + 1
                wrong.append(f"{path.name}:{line}: {tok.text!r} ({tok.role or tok.kind}) has {sorted(marks[i])}, "
                             f"not {want}")
                break
    assert checked > 50
    assert not wrong, "\n".join(wrong[:20])


def test_vscode_extension_is_consistent():
    pkg = json.loads((VSCODE / "package.json").read_text(encoding="utf-8"))
    (lang,) = pkg["contributes"]["languages"]
    (gram,) = pkg["contributes"]["grammars"]
    assert lang["extensions"] == [".ftp"] and gram["language"] == lang["id"]
    assert (VSCODE / gram["path"]).read_bytes() == GRAMMAR.read_bytes()  # the copy is the grammar
    assert gram["scopeName"] == json.loads(GRAMMAR.read_text(encoding="utf-8"))["scopeName"]
    conf = json.loads((VSCODE / lang["configuration"]).read_text(encoding="utf-8"))
    assert conf["comments"]["lineComment"] == "#"
    assert ["{", "}"] in conf["brackets"]
    main = (VSCODE / pkg["main"]).read_text(encoding="utf-8")
    assert "vscode-languageclient" in main and '"lsp"' in main
    assert "vscode-languageclient" in pkg["dependencies"]
    if shutil.which("node"):
        subprocess.run(["node", "--check", str(VSCODE / pkg["main"])], check=True)


@pytest.mark.skipif(not shutil.which("vim"), reason="vim is not installed")
def test_vim_syntax_on_a_pipeline(tmp_path):
    path = ROOT / "pipelines" / "compress.ftp"
    text = path.read_text(encoding="utf-8")
    scan = Scan(text)
    probes = []
    for tok in scan.toks:
        kind = {"kind": "ftpBlockKind", "blockname": "ftpBlockName", "attr": "ftpAttribute",
                "paramname": "ftpParamName"}.get(tok.role)
        if tok.kind == "comment":
            kind = "ftpComment"
        elif tok.kind == "string":
            kind = "ftpString"
        elif tok.kind == "number":
            kind = "ftpNumber"
        elif tok.role == "ctor" and text[tok.end:].lstrip().startswith("("):
            kind = "ftpCall"
        if kind:
            line = text.count("\n", 0, tok.start) + 1
            col = len(text[text.rfind("\n", 0, tok.start) + 1:tok.start].encode()) + 1
            probes.append((line, col, kind, tok.text))
    script = tmp_path / "check.vim"
    out = tmp_path / "out.txt"
    script.write_text(
        f"set rtp^={ROOT / 'editors' / 'vim'}\nfiletype on\nsyntax on\nedit {path}\nlet out = []\n"
        f"for [l, c] in {[[p[0], p[1]] for p in probes]}\n"
        "  call add(out, synIDattr(synID(l, c, 1), 'name'))\nendfor\n"
        f"call writefile(out, '{out}')\nqa!\n", encoding="utf-8")
    subprocess.run(["vim", "-Nu", "NONE", "-i", "NONE", "-es", "-S", str(script)], timeout=60)
    got = out.read_text(encoding="utf-8").split("\n")
    wrong = [f"{p[0]}:{p[1]} {p[3]!r}: {g or 'nothing'}, not {p[2]}" for p, g in zip(probes, got) if g != p[2]]
    assert len(probes) > 50 and len(got) >= len(probes)
    assert not wrong, "\n".join(wrong[:20])


def test_sublime_plist_is_the_grammar():
    """Sublime Text reads the plist form; it must say what the JSON grammar says."""
    import plistlib

    g = json.loads(GRAMMAR.read_text(encoding="utf-8"))
    g.pop("$schema", None)
    with open(ROOT / "editors" / "sublime" / "ftp.tmLanguage", "rb") as f:
        assert plistlib.load(f) == g
