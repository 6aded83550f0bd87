"""Text -> AST with Lark's LALR parser. Syntax problems become diagnostics, never exceptions.

Public: `read_source(path)`, `parse(text, path)`.
"""

from __future__ import annotations

import difflib
import re
import stat
from functools import lru_cache
from importlib import resources
from pathlib import Path

from lark import Lark, Token, Transformer
from lark.exceptions import UnexpectedCharacters, UnexpectedInput, UnexpectedToken, VisitError

from ftdsl.diagnostics import Diagnostic, make
from ftdsl.syntax import ast as A
from ftdsl.syntax.lexer import FastLexer

MAX_BYTES = 4 * 1024 * 1024
MAX_DEPTH = 64
ITEM_WORDS = ("pipeline", "param", "use", "ftp")
RESERVED = ("true", "false", "null")


@lru_cache(maxsize=1)
def _parser() -> Lark:
    # Never `cache=True`: Lark's cache is a pickle at a predictable temp path (lark#1628).
    text = resources.files("ftdsl").joinpath("grammar/ftp.lark").read_text(encoding="utf-8")
    return Lark(text, parser="lalr", lexer=FastLexer, propagate_positions=False,
                maybe_placeholders=False, transformer=_Builder(), start="start")


def read_source(path: str | Path, display: str | None = None) -> tuple[str | None, list[Diagnostic]]:
    """Read a pipeline file as text, or explain why it cannot be read (FTP001-003)."""
    shown = display or str(path)
    p = Path(path)
    try:
        if p.is_dir():
            return None, [make("FTP001", f"`{shown}` is a directory, not a pipeline file", A.Span(shown, 1, 1, 1, 1))]
        st = p.stat()
        if not stat.S_ISREG(st.st_mode):
            # /dev/zero, a FIFO, a socket: never read something that may not end
            return None, [make("FTP001", f"`{shown}` is not a regular file", A.Span(shown, 1, 1, 1, 1),
                               hint="give a .ftp file")]
        if st.st_size > MAX_BYTES:
            return None, [make("FTP003", f"`{shown}` is {st.st_size:,} bytes; the limit is {MAX_BYTES:,}",
                               A.Span(shown, 1, 1, 1, 1), hint="lint the .ftp file, not a data file")]
        with open(p, "rb") as fh:
            data = fh.read(MAX_BYTES + 1)  # the size may change after stat: read a bounded amount
    except OSError as e:
        return None, [make("FTP001", f"cannot read `{shown}`: {e.strerror or e}", A.Span(shown, 1, 1, 1, 1))]
    return decode(data, shown)


def decode(data: bytes, shown: str) -> tuple[str | None, list[Diagnostic]]:
    if len(data) > MAX_BYTES:
        return None, [make("FTP003", f"`{shown}` is {len(data):,} bytes; the limit is {MAX_BYTES:,}",
                           A.Span(shown, 1, 1, 1, 1))]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        col = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        return None, [make("FTP002", f"`{shown}` is not valid UTF-8 at byte {e.start}",
                           A.Span(shown, line, col, line, col + 1, e.start, e.start + 1),
                           hint="re-save the file as UTF-8")]
    if text.startswith("\ufeff"):
        text = text[1:]
    if "\x00" in text:
        i = text.index("\x00")
        line = text.count("\n", 0, i) + 1
        col = i - (text.rfind("\n", 0, i) + 1) + 1
        return None, [make("FTP002", f"`{shown}` contains a NUL byte (binary file?)",
                           A.Span(shown, line, col, line, col + 1, i, i + 1))]
    return text, []


def parse(text: str, path: str = "<string>") -> tuple[A.File | None, list[Diagnostic]]:
    """Parse `text`; returns the AST (None on a syntax error) and the diagnostics."""
    deep = _too_deep(text, path)
    if deep:
        return None, [deep]
    comments: list[A.Comment] = []
    try:
        items = _parse_items(text, path, comments)
    except UnexpectedInput as e:
        return None, _more_syntax_errors(text, path, e)
    except VisitError as e:  # a builder bug or a value error raised while building
        orig = e.orig_exc
        if isinstance(orig, _BuildError):
            return None, [orig.diag]
        raise
    except _BuildError as e:
        return None, [e.diag]
    except (RecursionError, MemoryError):
        return None, [make("FTP105", "the file is nested too deeply to parse", A.Span(path, 1, 1, 1, 2))]
    diags: list[Diagnostic] = []
    out_items = []
    for it in items:
        try:
            out_items.append(_classify_item(it, path, diags))
        except _BuildError as e:  # e.g. `ftp 1e999`: like every value error, the file is unusable
            return None, diags + [e.diag]
    return A.File(path, tuple(i for i in out_items if i is not None), tuple(comments), text), diags


# --- internals -------------------------------------------------------------------------------

_FILE = ""  # path of the file being built; the builder is shared (Lark instance is cached)


def _parse_items(text: str, path: str, comments: list) -> list:
    global _FILE
    _FILE = path
    found: list[tuple[int, int]] = []
    FastLexer.comments = found
    try:
        items = _parser().parse(text)
    finally:
        FastLexer.comments = None
        # Comments come in order: count lines incrementally (a scan from the start for each
        # comment made 20,000 comment lines take seconds).
        line, last = 1, 0
        for s, e in found:
            line += text.count("\n", last, s)
            last = s
            col = s - (text.rfind("\n", 0, s) + 1) + 1
            comments.append(A.Comment(text[s:e], A.Span(path, line, col, line, col + (e - s), s, e)))
    return items


# Comments inside strings are text: `_find_comments` skips strings (used by suppression comments).
def _find_comments(text: str):
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == '"':
            j = i + 1
            while j < n and text[j] not in '"\n':
                j += 2 if text[j] == "\\" else 1
            i = j + 1
        elif c == "#":
            j = text.find("\n", i)
            j = n if j < 0 else j
            yield i, j
            i = j
        else:
            i += 1




def _span_of(text: str, path: str, start: int, end: int) -> A.Span:
    line = text.count("\n", 0, start) + 1
    col = start - (text.rfind("\n", 0, start) + 1) + 1
    eline = text.count("\n", 0, end) + 1 if end > start else line
    ecol = end - (text.rfind("\n", 0, end) + 1) + 1 if end > start else col + 1
    return A.Span(path, line, col, eline, ecol, start, end)


def _tspan(t: Token) -> A.Span:
    return A.Span(_FILE, t.line, t.column, t.end_line, t.end_column, t.start_pos, t.end_pos)


class _BuildError(Exception):
    def __init__(self, diag: Diagnostic):
        super().__init__(diag.message)
        self.diag = diag


_ESCAPES = {'"': '"', "\\": "\\", "n": "\n", "t": "\t"}


def _unquote(tok: Token) -> str:
    raw = tok.value[1:-1]
    if "\\" not in raw:
        return raw
    out, i = [], 0
    while i < len(raw):
        c = raw[i]
        if c == "\\":
            nxt = raw[i + 1]
            if nxt not in _ESCAPES:
                sp = _tspan(tok)
                col = sp.col + 1 + i
                raise _BuildError(make("FTP104", f"unknown escape sequence `\\{nxt}` in a string",
                                       A.Span(_FILE, sp.line, col, sp.line, col + 2, sp.start + 1 + i, sp.start + 3 + i),
                                       label="unknown escape", hint='strings know `\\"`, `\\\\`, `\\n` and `\\t`'))
            out.append(_ESCAPES[nxt])
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


def _number(tok: Token) -> A.Number:
    text = tok.value
    clean = text.replace("_", "") if "_" in text else text
    try:
        # The lexer guarantees the shape; only the int/float choice is left.
        value: int | float = float(clean) if ("." in clean or "e" in clean or "E" in clean) else int(clean)
    except ValueError:
        raise _BuildError(make("FTP101", f"malformed number `{text}`", _tspan(tok), label="not a number"))
    if value.__class__ is float and (value != value or value in (float("inf"), float("-inf"))):
        raise _BuildError(make("FTP203", f"number `{text}` is out of range", _tspan(tok), label="overflows a float"))
    return A.Number(value, text, _tspan(tok))


class _Builder(Transformer):
    """Builds AST nodes while LALR parses (inline transformer: no parse tree, no recursion)."""

    def number(self, c):
        return _number(c[0])

    def string(self, c):
        return A.String(_unquote(c[0]), _tspan(c[0]))

    def true(self, c):
        return A.Bool(True, _tspan(c[0]))

    def false(self, c):
        return A.Bool(False, _tspan(c[0]))

    def null(self, c):
        return A.Null(_tspan(c[0]))

    def ref(self, c):
        spans = tuple(_tspan(t) for t in c)
        return A.Ref(tuple(str(t) for t in c), spans, spans[0].to(spans[-1]))

    # Lists, dicts and calls need their bracket positions; the grammar drops anonymous tokens,
    # so we recover the span from the children (or keep a point span for empty ones).
    def list(self, c):
        return A.ListV(tuple(c[1:-1]), _tspan(c[0]).to(_tspan(c[-1])))

    def dict(self, c):
        return A.DictV(tuple(c[1:-1]), _tspan(c[0]).to(_tspan(c[-1])))

    def entry(self, c):
        k, v = c
        if k.type == "STRING":
            return A.Entry(_unquote(k), _tspan(k), v, quoted=True)
        return A.Entry(str(k), _tspan(k), v)

    def kwarg(self, c):
        return A.KwArg(str(c[0]), _tspan(c[0]), c[1])

    def call(self, c):
        name, rest, rpar = c[0], c[1:-1], c[-1]
        args, kwargs = [], []
        for a in rest:
            if kwargs and not isinstance(a, A.KwArg):
                raise _BuildError(make("FTP101", f"positional argument after a keyword argument in `{name}(...)`",
                                       a.span, label="positional after keyword",
                                       hint="positional arguments come first: `f(1, k = 2)`"))
            (kwargs if isinstance(a, A.KwArg) else args).append(a)
        return A.Call(str(name), _tspan(name), tuple(args), tuple(kwargs), _tspan(name).to(_tspan(rpar)))

    def attr(self, c):
        name, value = c
        if name in RESERVED:
            raise _BuildError(make("FTP101", f"`{name}` is reserved and cannot be used as a name", _tspan(name),
                                   label="reserved word", hint="`true`, `false` and `null` are values"))
        return A.Attr(str(name), _tspan(name), value, _tspan(name).to(value.span))

    def block(self, c):
        return ("block", c)

    def param(self, c):
        return ("param", c)

    def use(self, c):
        return ("use", c)

    def header(self, c):
        return ("header", c)

    def start(self, c):
        return c


def _classify_item(it, path: str, diags: list):
    """Decide what a top-level item is from its first word (block kinds are not keywords)."""
    form, c = it
    word = c[0]
    wspan = _tspan_path(word, path)
    if form in ("block", "param") and str(c[1]) in RESERVED:
        diags.append(make("FTP101", f"`{c[1]}` is reserved and cannot be used as a name", _tspan_path(c[1], path),
                          label="reserved word", hint="`true`, `false` and `null` are values; pick another name"))
        return None
    if form == "block":
        attrs = tuple(x for x in c[3:-1] if isinstance(x, A.Attr))
        return A.Block(str(word), wspan, str(c[1]), _tspan_path(c[1], path), attrs, wspan.to(_tspan_path(c[-1], path)))
    if form == "param":
        if str(word) != "param":
            diags.append(make("FTP106", f"`{word} {c[1]} = ...` is not a top-level item", wspan,
                              label="expected `param`", hint=_did_you_mean(str(word), ["param"]) or
                              "top-level assignments are written `param NAME = VALUE`"))
            return None
        return A.Param(str(c[1]), _tspan_path(c[1], path), c[2], wspan.to(c[2].span))
    if form == "use":
        if str(word) != "use":
            diags.append(make("FTP106", f"`{word} \"...\"` is not a top-level item", wspan,
                              label="expected `use`", hint="include another file with `use \"path.ftp\"`"))
            return None
        return A.Use(_unquote(c[1]), _tspan_path(c[1], path), wspan.to(_tspan_path(c[1], path)))
    # header
    if str(word) != "ftp":
        diags.append(make("FTP106", f"`{word} {c[1]}` is not a top-level item", wspan,
                          label="unexpected", hint="the language version header is written `ftp 1`"))
        return None
    num = _number(c[1])
    return A.Header(num, wspan.to(num.span))


def _tspan_path(t: Token, path: str) -> A.Span:
    return A.Span(path, t.line, t.column, t.end_line, t.end_column, t.start_pos, t.end_pos)


def _did_you_mean(word: str, options) -> str | None:
    m = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f"did you mean `{m[0]}`?" if m else None


_DEEP_RE = re.compile(r'"(?:[^"\\\n]|\\[^\n])*"?|#[^\n]*|[\[\]{}()]')


def _too_deep(text: str, path: str) -> Diagnostic | None:
    """Cheap pre-scan for nesting depth so pathological input never reaches later passes."""
    if text.count("[") + text.count("{") + text.count("(") < MAX_DEPTH:
        return None
    depth = 0
    for m in _DEEP_RE.finditer(text):
        ch = m.group()
        if ch in "[{(":
            depth += 1
            if depth > MAX_DEPTH:
                i = m.start()
                return make("FTP105", f"nesting deeper than {MAX_DEPTH} levels", _span_of(text, path, i, i + 1),
                            label="too deep")
        elif ch in "]})":
            if depth:
                depth -= 1
    return None


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


def _error_pos(e: UnexpectedInput, text: str) -> int:
    if isinstance(e, UnexpectedCharacters):
        return e.pos_in_stream
    tok = getattr(e, "token", None)
    if tok is not None and getattr(tok, "type", "") != "$END" and tok.start_pos is not None:
        return tok.start_pos
    return len(text)


def _more_syntax_errors(text: str, path: str, first: UnexpectedInput) -> list[Diagnostic]:
    """Panic-mode recovery at item level: after an error, blank out everything up to the next line
    that starts a top-level item and parse again, so one run reports every broken item (positions
    stay right because blanking keeps the newlines)."""
    diags = [_syntax_diagnostic(first, text, path)]
    pos = _error_pos(first, text)
    while len(diags) < MAX_SYNTAX_ERRORS:
        nxt = _ITEM_START.search(text, text.find("\n", pos) + 1 if "\n" in text[pos:] else len(text))
        if nxt is None or text.find("\n", pos) < 0:
            break
        start = nxt.start()
        masked = re.sub(r"[^\n]", " ", text[:start]) + text[start:]
        try:
            _parser().parse(masked)
            break
        except UnexpectedInput as e:
            new = _error_pos(e, masked)
            if new <= pos:
                break
            d = _syntax_diagnostic(e, masked, path)
            if d.code == "FTP103" and diags[-1].code == "FTP103":
                break
            diags.append(d)
            pos = new
        except Exception:  # noqa: BLE001 - a value error in a later item: reported when the file parses
            break
    return diags


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
