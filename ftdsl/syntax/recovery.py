"""Syntax errors: what they say, and item-level recovery so one run reports every broken item.

Used by `syntax.parser.parse` when Lark raises; the parser is the one from `parser._parser()`.
"""

from __future__ import annotations

import re

from lark.exceptions import UnexpectedCharacters, UnexpectedInput, UnexpectedToken

from ftdsl.diagnostics import Diagnostic, Label, make
from ftdsl.syntax import ast as A
from ftdsl.syntax.lexer import FastLexer
from ftdsl.syntax.parser import _DEEP_RE, _parser, _span_of, _tspan_path

_TOKEN_NAMES = {
    "LBRACE": "`{`", "RBRACE": "`}`", "LSQB": "`[`", "RSQB": "`]`", "LPAR": "`(`", "RPAR": "`)`",
    "EQUAL": "`=`", "COMMA": "`,`", "DOT": "`.`", "NAME": "a name", "NUMBER": "a number",
    "STRING": "a string", "TRUE": "`true`", "FALSE": "`false`", "NULL": "`null`", "$END": "end of file",
}

_INVISIBLE = {"\u200b": "zero-width space (U+200B)", "\u200c": "zero-width non-joiner (U+200C)",
              "\u200d": "zero-width joiner (U+200D)", "\u2060": "word joiner (U+2060)",
              "\ufeff": "byte order mark (U+FEFF)", "\u00a0": "no-break space (U+00A0)"}
_CONFUSABLE = {"\u201c": '"', "\u201d": '"', "\u2018": "'", "\u2019": "'", "\uff1d": "=", "\u2013": "-",
               "\u2014": "-", "\uff0c": ","}


def _expected(tokens) -> str:
    names = sorted({_TOKEN_NAMES.get(t, f"`{t}`") for t in tokens if not t.startswith("__")})
    if len(names) > 6:
        names = names[:6] + ["..."]
    return ", ".join(names)


# A line that starts a top-level item: `KIND NAME {`, `param NAME =`, `use "..."`, `ftp N`.
_ITEM_START = re.compile(r'^[ \t]*[A-Za-z_][A-Za-z0-9_]*[ \t]+(?:[A-Za-z_][A-Za-z0-9_]*[ \t]*[{=]|"|[0-9])', re.M)
MAX_SYNTAX_ERRORS = 20
RECOVERY_BUDGET = 16 * 1024 * 1024  # characters parsed again, in all, while recovering


def _error_pos(e: UnexpectedInput, text: str) -> int:
    if isinstance(e, UnexpectedCharacters):
        return e.pos_in_stream
    tok = getattr(e, "token", None)
    if tok is not None and getattr(tok, "type", "") != "$END" and tok.start_pos is not None:
        return tok.start_pos
    return len(text)


_ITEM_NAME = re.compile(r"[ \t]*([A-Za-z_][A-Za-z0-9_]*)[ \t]+([A-Za-z_][A-Za-z0-9_]*)")


def recover(text: str, path: str, first: UnexpectedInput) -> tuple[list[Diagnostic], str | None, set[str]]:
    """Panic-mode recovery at item level. The top-level item holding each error is blanked out
    (spaces, newlines kept, so every position stays right) and the text parsed again, until it
    parses: one run reports every broken item, and the returned masked text holds the good ones.
    Returns (syntax diagnostics, the masked text or None when recovery gave up, broken names)."""
    diags: list[Diagnostic] = []
    masked, broken = text, set()
    pos, err = _error_pos(first, text), first
    # Each round parses the whole text again: bound the total work (a 4 MiB file of broken items
    # gets a few rounds, a normal file up to MAX_SYNTAX_ERRORS), then give up on the rest.
    rounds = max(2, min(MAX_SYNTAX_ERRORS, RECOVERY_BUDGET // max(1, len(text))))
    while True:
        start, end, opener = _broken_item(masked, pos)
        rounds -= 1
        if rounds <= 0:
            end = len(masked)  # out of budget: everything from this broken item on is dropped
        if len(diags) < MAX_SYNTAX_ERRORS:
            d = _syntax_diagnostic(err, masked, path)
            if opener is not None:  # the error is only where the parser noticed the missing bracket
                d = _unclosed(masked, path, opener, end)
            if not (d.code == "FTP103" and diags and diags[-1].code == "FTP103"):
                diags.append(d)
        name = _ITEM_NAME.match(masked, start)
        if name is not None and name.group(1) not in ("use", "ftp"):
            broken.add(name.group(2))
        if not masked[start:end].strip():
            return diags, None, broken  # no progress possible
        masked = masked[:start] + re.sub(r"[^\n]", " ", masked[start:end]) + masked[end:]
        FastLexer.packed = {}  # long literal lists stay cheap in these parses too
        try:
            _parser().parse(masked)  # a throw-away parse: builder output and its errors are dropped
            return diags, masked, broken
        except UnexpectedInput as e:  # blanking goes on past MAX_SYNTAX_ERRORS, reporting stops
            pos, err = _error_pos(e, masked), e
        except Exception:  # noqa: BLE001 - a builder failure in a later item: give up recovering
            return diags, None, broken
        finally:
            FastLexer.packed = None


def _unclosed(text: str, path: str, opener: int, next_item: int) -> Diagnostic:
    ch = text[opener]
    close = {"{": "}", "[": "]", "(": ")"}[ch]
    word = re.compile(r"[ \t]*([A-Za-z_][A-Za-z0-9_]*)").match(text, next_item)
    nxt = (_span_of(text, path, word.start(1), word.end(1)),) if word else ()
    return make("FTP103", f"`{ch}` is never closed: expected `{close}` before the next item",
                _span_of(text, path, opener, opener + 1), label="opened here",
                secondary=tuple(Label(sp, "the next item starts here") for sp in nxt),
                hint=f"add `{close}` where the item ends")


def _broken_item(text: str, pos: int) -> tuple[int, int, int | None]:
    """The region [start, end) of the top-level item that holds the error at `pos`: from the last
    line that starts an item at or before `pos` to the next one after it. When that item start sits
    inside a bracket the previous item left open (`train t {` without its `}`, then `model m {`),
    the open item is the broken one (the third value is then the offset of its unclosed bracket)."""
    line_end = text.find("\n", pos)
    line_end = len(text) if line_end < 0 else line_end
    starts = [m.start() for m in _ITEM_START.finditer(text, 0, line_end)]
    if not starts:
        start = text.rfind("\n", 0, pos) + 1
        nxt = _ITEM_START.search(text, line_end)
        return start, nxt.start() if nxt else len(text), None
    start = starts[-1]
    if len(starts) > 1 and pos > start:
        opener = _unclosed_bracket(text, starts[-2], start)
        if opener is not None:
            return starts[-2], start, opener
    nxt = _ITEM_START.search(text, line_end)
    return start, nxt.start() if nxt else len(text), None


def _unclosed_bracket(text: str, start: int, end: int) -> int | None:
    """Offset of the innermost bracket opened in [start, end) and not closed there."""
    opened: list[int] = []
    for m in _DEEP_RE.finditer(text, start, end):
        ch = m.group()
        if ch in "[{(":
            opened.append(m.start())
        elif ch in "]})" and opened:
            opened.pop()
    return opened[-1] if opened else None


def _expected_at(text: str, pos: int) -> list[str]:
    """The token types the parser would accept at `pos` (used only to explain an error)."""
    try:
        ip = _parser().parse_interactive(text[:pos])
        ip.exhaust_lexer()
        return sorted(ip.accepts() - {"$END"}) + (["$END"] if "$END" in ip.accepts() else [])
    except Exception:  # noqa: BLE001 - the prefix has its own error: no extra hint
        return []


def _syntax_diagnostic(e: UnexpectedInput, text: str, path: str) -> Diagnostic:
    if isinstance(e, UnexpectedCharacters):
        i = e.pos_in_stream
        ch = text[i]
        span = _span_of(text, path, i, i + 1)
        if ch == '"':
            return make("FTP104", "unterminated string", span, label="this string never ends",
                        hint='close it with `"` on the same line')
        if ch in _INVISIBLE:
            return make("FTP102", f"invisible character: {_INVISIBLE[ch]}", span, label="invisible character here",
                        hint="delete it; it was probably pasted from a web page or a word processor")
        if ch in _CONFUSABLE:
            return make("FTP102", f"unexpected character `{ch}` (U+{ord(ch):04X})", span, label="not ASCII",
                        hint=f"did you mean `{_CONFUSABLE[ch]}`?")
        shown = ch if ch.isprintable() else repr(ch)[1:-1]
        exp = _expected(e.allowed or _expected_at(text, i))
        return make("FTP102", f"unexpected character `{shown}`", span, label="unexpected character",
                    hint=f"expected one of: {exp}" if exp else None)
    if isinstance(e, UnexpectedToken):
        tok = e.token
        exp = _expected(e.expected or [])
        if tok.type == "$END":
            i = len(text)
            span = _span_of(text, path, max(0, i - 1), i) if text else A.Span(path, 1, 1, 1, 1)
            want = "`}`" if "RBRACE" in (e.expected or ()) else ("`]`" if "RSQB" in (e.expected or ())
                                                                  else ("`)`" if "RPAR" in (e.expected or ()) else exp))
            return make("FTP103", f"unexpected end of file; expected {want}", span, label="file ends here",
                        hint=f"expected one of: {exp}" if exp else None)
        span = _tspan_path(tok, path)
        shown = tok.value
        hint = f"expected one of: {exp}" if exp else None
        if tok.type in ("TRUE", "FALSE", "NULL"):
            hint = f"`{shown}` is reserved and cannot be used as a name"
        what = {"NAME": "name ", "NUMBER": "number ", "STRING": "string "}.get(tok.type, "")
        return make("FTP101", f"unexpected {what}`{shown}`", span, label="unexpected here", hint=hint)
    return make("FTP101", f"syntax error: {e}", A.Span(path, getattr(e, "line", 1) or 1, getattr(e, "column", 1) or 1,
                                                      getattr(e, "line", 1) or 1, (getattr(e, "column", 1) or 1) + 1))
