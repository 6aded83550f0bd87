"""The docs stay true: generated parts are current, every example compiles, nothing is left out.

- `python -m ftdsl.docgen --check` passes (docs/language.md's reference, docs/diagnostics.md and
  the CLI examples in docs/cli.md match the registries and the CLI's real output).
- Every ```ftp block of docs/language.md is a complete pipeline that compiles without errors.
  A block whose info string is `ftp file=PATH` is also written to PATH (in a temporary folder)
  so that other examples can `use` it; ```ftp-snippet blocks are fragments and are skipped.
- The examples show every block kind and every constructor family; docs/cli.md mentions every
  command and flag of the CLI.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from ftdsl import docgen
from ftdsl.cli import build_parser
from ftdsl.frontend import compile_pipeline
from ftdsl.ir import schema as S
from ftdsl.syntax import ast as A
from ftdsl.syntax.parser import parse

ROOT = Path(__file__).resolve().parents[1]
LANGUAGE = ROOT / "docs" / "language.md"
CLI = ROOT / "docs" / "cli.md"

_FENCE = re.compile(r"^```(ftp(?:-snippet)?)([^\n]*)\n(.*?)^```", re.S | re.M)


def ftp_examples(text: str) -> list[tuple[int, str | None, str]]:
    """(line, file= name or None, source) of each ```ftp block (not ```ftp-snippet)."""
    out = []
    for m in _FENCE.finditer(text):
        if m.group(1) != "ftp":
            continue
        opts = dict(kv.split("=", 1) for kv in m.group(2).split() if "=" in kv)
        out.append((text.count("\n", 0, m.start()) + 1, opts.get("file"), m.group(3)))
    return out


EXAMPLES = ftp_examples(LANGUAGE.read_text(encoding="utf-8"))


def test_generated_docs_are_current():
    stale = docgen.stale()
    assert not stale, f"stale: {[str(p.relative_to(ROOT)) for p in stale]}; run `python -m ftdsl.docgen`"


def test_docgen_check_exit_code(tmp_path, capsys):
    assert docgen.main(["--check"]) == 0
    # A stale copy is detected (exit 1) and fixed by a plain run.
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "language.md").write_text(f"# x\n\n{docgen.BEGIN_REFERENCE}\nSTALE-TEXT\n{docgen.END_REFERENCE}\n",
                                      encoding="utf-8")
    assert docgen.main(["--check", "--root", str(tmp_path)]) == 1
    assert "stale: docs/language.md" in capsys.readouterr().err
    assert docgen.main(["--root", str(tmp_path)]) == 0
    assert docgen.main(["--check", "--root", str(tmp_path)]) == 0
    text = (docs / "language.md").read_text(encoding="utf-8")
    assert "STALE-TEXT" not in text and "### `train`" in text and text.startswith("# x\n")


def test_reference_lists_every_kind_attribute_and_constructor():
    ref = docgen.reference_markdown()
    for kind in S.KINDS.values():
        assert f"### `{kind.name}`" in ref
        for f in kind.fields:
            assert f"| `{f.name}` |" in ref, (kind.name, f.name)
    for name, c in S.all_constructors().items():
        assert f"#### `{name}`" in ref
        assert f"`{docgen.signature(c)}`" in ref


def test_examples_exist():
    assert len(EXAMPLES) >= 20


@pytest.mark.parametrize("line,name,source", EXAMPLES, ids=[f"line{n}" for n, _, _ in EXAMPLES])
def test_example_compiles_without_errors(tmp_path, line, name, source):
    for _, other, text in EXAMPLES:  # files that examples `use`
        if other:
            (tmp_path / other).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / other).write_text(text, encoding="utf-8")
    path = tmp_path / (name or f"example_{line}.ftp")
    c = compile_pipeline(path, text=source)
    errors = [f"{d.code} {d.message} (line {d.span.line if d.span else '?'})" for d in c.errors]
    assert c.program is not None and not errors, f"docs/language.md:{line}: {errors}"


def _names_used(source: str) -> tuple[set[str], set[str]]:
    """Block kinds and constructor names (called, or written bare) in one example."""
    f, _ = parse(source, "<doc>")
    kinds, names = set(), set()
    stack: list = []
    for it in f.items:
        if isinstance(it, A.Block):
            kinds.add(it.kind)
            stack.extend(a.value for a in it.attrs)
        elif isinstance(it, A.Param):
            stack.append(it.value)
    while stack:
        v = stack.pop()
        if isinstance(v, A.Call):
            names.add(v.name)
            stack.extend(v.args)
            stack.extend(k.value for k in v.kwargs)
        elif isinstance(v, A.Ref) and len(v.parts) == 1:
            names.add(v.parts[0])
        elif isinstance(v, A.ListV):
            stack.extend(v.items)
        elif isinstance(v, A.DictV):
            stack.extend(e.value for e in v.entries)
    return kinds, names


def test_examples_cover_every_kind_and_family():
    kinds, names = set(), set()
    for _, _, source in EXAMPLES:
        k, n = _names_used(source)
        kinds |= k
        names |= n
    assert set(S.KINDS) - kinds == set(), "block kinds without an example in docs/language.md"
    missing = [fam for fam, ctors in S.CONSTRUCTORS.items() if not set(ctors) & names]
    assert not missing, f"constructor families without an example in docs/language.md: {missing}"


def test_cli_doc_mentions_every_command_and_flag():
    text = CLI.read_text(encoding="utf-8")
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    missing = []
    for name, sp in sub.choices.items():
        if f"ftdsl {name}" not in text:
            missing.append(f"ftdsl {name}")
        for action in sp._actions:
            if action.help == argparse.SUPPRESS:
                continue
            for opt in action.option_strings:
                if opt.startswith("--") and opt != "--help" and opt not in text:
                    missing.append(f"ftdsl {name} {opt}")
            for choice in action.choices or ():
                if isinstance(choice, str) and f"`{choice}`" not in text and choice not in text:
                    missing.append(f"ftdsl {name} {choice}")
    for opt in ("--version", "--debug"):
        if opt not in text:
            missing.append(opt)
    assert not missing, f"docs/cli.md does not mention: {missing}"


def test_cli_doc_exit_codes_and_environment():
    text = CLI.read_text(encoding="utf-8")
    for code in ("0", "1", "2", "3", "4", "70", "130"):
        assert f"| `{code}` |" in text
    for var in ("FTDSL_CACHE", "FTDSL_DEVICE", "NO_COLOR", "GITHUB_STEP_SUMMARY", "HF_HUB_OFFLINE"):
        assert f"`{var}`" in text
