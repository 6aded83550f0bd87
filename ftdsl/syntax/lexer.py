"""A fast lexer for Lark's LALR parser, built from the grammar's own terminal definitions.

Lark's lexer tries terminals one by one per token; on a 10,000-line pipeline that alone took
most of `lint`'s time. This one compiles every terminal of `grammar/ftp.lark` into a single
alternation (one regex match per token), so the grammar stays the one definition of the syntax.
Keyword terminals (`true`, `false`, `null`) are recognized as whole names, as Lark's priorities do.
Comments are collected on the side for `fmt` and suppression comments.

Long lists of plain literals (`[1, 1, 1, ...]`, 32 elements or more) are packed: right after the
`[` the lexer matches the whole run with one regular expression, records it (`FastLexer.packed`,
keyed by the bracket's offset) and skips to the `]`, so the parser sees an empty list and the AST
builder attaches a lazy `ast.PackedItems`. The run pattern accepts only literals that the token
rules would split the same way and that cannot overflow (at most 18 integer digits, 2 exponent
digits, no `_`), and no comments; anything else falls back to ordinary tokens.
"""

from __future__ import annotations

import re

from lark.exceptions import UnexpectedCharacters
from lark.lexer import Lexer, Token


_WS = r"[ \t\f\r\n]*"
_NUM = r"[+-]?[0-9]{1,18}(?:\.[0-9]+)?(?:[eE][+-]?[0-9]{1,2})?"
_ELEM = rf'(?:{_NUM}|"[^"\\\n]*"|true|false|null)(?![0-9A-Za-z_.])'
PACK_MIN = 32
# Possessive repetition (Python 3.11): linear, never backtracks into the run.
_RUN = re.compile(rf"{_WS}{_ELEM}(?:{_WS},?{_WS}{_ELEM}){{{PACK_MIN - 1},}}+{_WS},?{_WS}(?=\])")


class FastLexer(Lexer):
    comments: list | None = None  # set by the parser before each parse: (start, end) offsets
    packed: dict | None = None  # set by the parser: `[` offset -> (start, end, line, line_start) of a run

    def __init__(self, lexer_conf):
        self.ignore = set(lexer_conf.ignore)
        groups, keywords, punct = [], {}, {}
        for t in lexer_conf.terminals:
            kind = type(t.pattern).__name__
            if kind == "PatternStr":
                value = t.pattern.value
                if value.isidentifier():
                    keywords[value] = t.name
                else:
                    punct[value] = t.name
            else:
                groups.append((t.name, t.pattern.to_regexp()))
        # Longest-match rules: punctuation that can start a number (`.5`) comes after NUMBER.
        order = sorted(groups, key=lambda g: (g[0] != "NUMBER", g[0]))
        alts = [f"(?P<{name}>{rx})" for name, rx in order]
        alts.append("(?P<PUNCT>[" + "".join(re.escape(c) for c in punct) + "])")
        self.regex = re.compile("|".join(alts))
        self.keywords = keywords
        self.punct = punct
        self.allowed = sorted({n for n, _ in groups if n not in self.ignore} | set(punct.values())
                              | set(keywords.values()))

    def lex(self, text, parser_state=None):
        # Lark's custom-lexer wrapper passes the whole text as a str.
        match = self.regex.match
        ignore, keywords, punct = self.ignore, self.keywords, self.punct
        comments = FastLexer.comments
        packed = FastLexer.packed
        run = _RUN.match
        pos, n, line, line_start = 0, len(text), 1, 0
        while pos < n:
            m = match(text, pos)
            if m is None:
                raise UnexpectedCharacters(text, pos, line, pos - line_start + 1, allowed=None)
            kind = m.lastgroup
            end = m.end()
            if kind in ignore:
                if kind == "COMMENT":
                    if comments is not None:
                        comments.append((pos, end))
                else:
                    nl = text.count("\n", pos, end)
                    if nl:
                        line += nl
                        line_start = text.rfind("\n", pos, end) + 1
                pos = end
                continue
            value = m.group()
            if kind == "PUNCT":
                kind = punct[value]
                if kind == "LSQB" and packed is not None:
                    r = run(text, end)
                    if r is not None:
                        rend = r.end()
                        packed[pos] = (end, rend, line, line_start)
                        col = pos - line_start + 1
                        yield Token(kind, value, pos, line, col, line, col + 1, end)
                        nl = text.count("\n", end, rend)
                        if nl:
                            line += nl
                            line_start = text.rfind("\n", end, rend) + 1
                        pos = rend
                        continue
            elif kind == "NAME" and value in keywords:
                kind = keywords[value]
            col = pos - line_start + 1
            yield Token(kind, value, pos, line, col, line, col + (end - pos), end)
            pos = end
