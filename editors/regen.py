"""Regenerate the editor grammars from one definition: `python editors/regen.py`.

Writes editors/ftp.tmLanguage.json (TextMate, JSON; block kinds from the schema), its copy in
editors/vscode/ (a VS Code extension may not reference files outside its folder) and the plist
form Sublime Text reads (editors/sublime/ftp.tmLanguage). tests/test_editor_grammar.py fails when
they are stale. The Vim syntax file (editors/vim/syntax/ftp.vim) is written by hand; its block
kinds are checked against the schema by the same test.
"""

from __future__ import annotations

import json
import plistlib
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

IDENT = r"[A-Za-z_][A-Za-z0-9_]*"


def grammar() -> dict:
    from ftdsl.ir.schema import KINDS

    kinds = "|".join(KINDS)
    return {
        "$schema": "https://raw.githubusercontent.com/martinring/tmlanguage/master/tmlanguage.json",
        "name": "ftdsl pipeline",
        "scopeName": "source.ftp",
        "fileTypes": ["ftp"],
        # Earliest match wins, ties go to the first rule: comments and strings before anything
        # that could match inside them; item starts before attributes; calls before references.
        "patterns": [{"include": f"#{r}"} for r in ("comment", "string", "header", "use", "param", "block",
                                                      "constant", "call", "attribute", "number", "reference",
                                                      "punctuation")],
        "repository": {
            "comment": {"name": "comment.line.number-sign.ftp", "match": "#.*$"},
            "string": {"name": "string.quoted.double.ftp", "begin": "\"", "end": "\"|$",
                       "beginCaptures": {"0": {"name": "punctuation.definition.string.begin.ftp"}},
                       "endCaptures": {"0": {"name": "punctuation.definition.string.end.ftp"}},
                       "patterns": [{"name": "constant.character.escape.ftp", "match": "\\\\."}]},
            "header": {"match": "^\\s*(ftp)\\s+([0-9]+)\\b",
                       "captures": {"1": {"name": "keyword.other.version.ftp"}, "2": {"name": "constant.numeric.ftp"}}},
            "use": {"match": "^\\s*(use)(?=\\s*\")", "captures": {"1": {"name": "keyword.control.import.ftp"}}},
            "param": {"match": f"^\\s*(param)\\s+({IDENT})",
                      "captures": {"1": {"name": "storage.type.param.ftp"}, "2": {"name": "variable.other.constant.ftp"}}},
            "block": {"match": f"^\\s*({kinds})\\s+({IDENT})\\s*(?=\\{{)",
                      "captures": {"1": {"name": "storage.type.block.ftp"}, "2": {"name": "entity.name.type.block.ftp"}}},
            "constant": {"name": "constant.language.ftp", "match": "\\b(?:true|false|null)\\b"},
            "call": {"match": f"\\b({IDENT})\\s*(?=\\()", "captures": {"1": {"name": "entity.name.function.constructor.ftp"}}},
            "attribute": {"match": f"\\b({IDENT})\\s*(=)",
                          "captures": {"1": {"name": "variable.other.property.ftp"},
                                       "2": {"name": "keyword.operator.assignment.ftp"}}},
            "number": {"name": "constant.numeric.ftp",
                       "match": "(?<![A-Za-z0-9_.])[+-]?(?:[0-9][0-9_]*(?:\\.[0-9][0-9_]*)?|\\.[0-9][0-9_]*)"
                                "(?:[eE][+-]?[0-9]+)?(?![A-Za-z0-9_])"},
            "reference": {"match": f"\\b({IDENT})((?:\\.{IDENT})*)",
                          "captures": {"1": {"name": "variable.other.reference.ftp"},
                                       "2": {"name": "variable.other.member.ftp"}}},
            "punctuation": {"patterns": [
                {"name": "punctuation.section.braces.ftp", "match": "[{}]"},
                {"name": "punctuation.section.brackets.ftp", "match": "[\\[\\]]"},
                {"name": "punctuation.section.parens.ftp", "match": "[()]"},
                {"name": "punctuation.separator.comma.ftp", "match": ","}]},
        },
    }


def outputs() -> dict[Path, bytes]:
    g = grammar()
    text = (json.dumps(g, indent=2) + "\n").encode("utf-8")
    plist = plistlib.dumps({k: v for k, v in g.items() if k != "$schema"}, sort_keys=True)
    return {ROOT / "editors" / "ftp.tmLanguage.json": text, ROOT / "editors" / "vscode" / "ftp.tmLanguage.json": text,
            ROOT / "editors" / "sublime" / "ftp.tmLanguage": plist}


def main() -> int:
    from ftdsl.runtime.atomic import write_bytes_atomic

    for path, data in outputs().items():
        write_bytes_atomic(path, data)
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
