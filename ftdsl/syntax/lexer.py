"""A fast lexer for Lark's LALR parser, built from the grammar's own terminal definitions.

Lark's lexer tries terminals one by one per token; on a 10,000-line pipeline that alone took
most of `lint`'s time. This one compiles every terminal of `grammar/ftp.lark` into a single
alternation (one regex match per token), so the grammar stays the one definition of the syntax.
Keyword terminals (`true`, `false`, `null`) are recognized as whole names, as Lark's priorities do.
Comments are collected on the side for `fmt` and suppression comments.
"""

from __future__ import annotations

import re

from lark.exceptions import UnexpectedCharacters
from lark.lexer import Lexer, Token


class FastLexer(Lexer):
    comments: list | None = None  # set by the parser before each parse: (start, end) offsets

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
            elif kind == "NAME" and value in keywords:
                kind = keywords[value]
            col = pos - line_start + 1
            yield Token(kind, value, pos, line, col, line, col + (end - pos), end)
            pos = end
