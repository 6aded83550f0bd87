"""Text -> AST with Lark's LALR parser. Syntax problems become diagnostics, never exceptions.

Public: `read_source(path)`, `parse(text, path)`. Syntax-error messages and recovery: `syntax/recovery.py`.
"""

from __future__ import annotations

import difflib
import os
import re
import stat
from functools import lru_cache
from importlib import resources
from pathlib import Path

from lark import Lark, Token, Transformer
from lark.exceptions import UnexpectedInput, VisitError

from ftdsl.diagnostics import Diagnostic, make
from ftdsl.paths import special_file_kind
from ftdsl.syntax import ast as A
from ftdsl.syntax.lexer import FastLexer

MAX_BYTES = 4 * 1024 * 1024
MAX_DEPTH = 64
ITEM_WORDS = ("pipeline", "param", "use", "ftp")
RESERVED = ("true", "false", "null")


PARSER_SOURCE = ""  # "tables" or "grammar": how the cached parser was made (tests, benchmarks)


@lru_cache(maxsize=1)
def _parser() -> Lark:
    """The LALR parser, loaded from the generated tables (`syntax/tables.py`) when they match the
    grammar and the installed Lark, else built from the grammar. Never `cache=True`: Lark's cache
    is a pickle at a predictable temp path (lark#1628)."""
    global PARSER_SOURCE
    text = grammar_text()
    try:
        from ftdsl.syntax import tables as T

        import lark

        if T.LARK_VERSION == lark.__version__ and T.GRAMMAR_SHA256 == _sha256(text):
            tables = decode_tables(T.TABLES)
            data = tables["DATA"]
            data["options"]["lexer"] = FastLexer
            data["parser"]["lexer_conf"]["lexer_type"] = FastLexer
            loaded = Lark._load_from_dict(data, tables["MEMO"], transformer=_Builder())
            PARSER_SOURCE = "tables"
            return loaded
    except Exception:  # noqa: BLE001 - missing or unreadable tables: build from the grammar
        pass
    PARSER_SOURCE = "grammar"
    return build_from_grammar(text)


def decode_tables(blob: str) -> dict:
    """The tables of `syntax/tables.py` (see `syntax/tables_gen.py` for the tagging)."""
    import json

    def hook(d):
        if "~i" in d:
            return {k: v for k, v in d["~i"]}
        if "~t" in d:
            return tuple(d["~t"])
        return d

    return json.loads(blob, object_hook=hook)


def grammar_text() -> str:
    try:  # a plain file next to the package (3 ms cheaper than importlib.resources)
        return (Path(__file__).resolve().parents[1] / "grammar" / "ftp.lark").read_text(encoding="utf-8")
    except OSError:  # a zipped install
        return resources.files("ftdsl").joinpath("grammar/ftp.lark").read_text(encoding="utf-8")


def build_from_grammar(text: str) -> Lark:
    return Lark(text, parser="lalr", lexer=FastLexer, propagate_positions=False,
                maybe_placeholders=False, transformer=_Builder(), start="start")


def _sha256(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def read_source(path: str | Path, display: str | None = None) -> tuple[str | None, list[Diagnostic]]:
    """Read a pipeline file as text, or explain why it cannot be read (FTP001-004).

    Opened with O_NONBLOCK and checked with fstat before any read, so a FIFO (even one swapped in
    after a stat) or a device is refused (FTP004) instead of blocking or reading forever."""
    shown = display or str(path)
    p = Path(path)
    where = A.Span(shown, 1, 1, 1, 1)
    try:
        if p.is_dir():
            return None, [make("FTP001", f"`{shown}` is a directory, not a pipeline file", where)]
        fd = os.open(p, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                kind = special_file_kind(st.st_mode) or "not a regular file"
                return None, [make("FTP004", f"`{shown}` is {kind}, not a regular file", where,
                                   hint="give a .ftp file; a device or a pipe may never end")]
            if st.st_size > MAX_BYTES:
                return None, [make("FTP003", f"`{shown}` is {st.st_size:,} bytes; the limit is {MAX_BYTES:,}",
                                   where, hint="lint the .ftp file, not a data file")]
            with os.fdopen(fd, "rb", closefd=False) as fh:
                data = fh.read(MAX_BYTES + 1)  # the size may change after stat: read a bounded amount
        finally:
            os.close(fd)
    except OSError as e:
        return None, [make("FTP001", f"cannot read `{shown}`: {e.strerror or e}", where)]
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


def parse(text: str, path: str = "<string>", recover: bool = False) -> tuple[A.File | None, list[Diagnostic]]:
    """Parse `text`; returns the AST and the diagnostics.

    Without `recover` the AST is None when there is any error (what `fmt` and `--set` need). With
    `recover` (the compiler) the items that parsed are kept: each broken top-level item is blanked
    out and the rest parsed again, so later phases still resolve and check the good blocks;
    `File.broken` names the items that were lost. Value errors (`1e999`, a bad escape) never stop
    the parse: the value becomes `ast.Invalid` and every such error is reported.
    """
    deep = _too_deep(text, path)
    if deep:
        return None, [deep]
    comments: list[A.Comment] = []
    diags: list[Diagnostic] = []
    broken: set[str] = set()
    try:
        try:
            items = _parse_items(text, path, comments, diags)
        except UnexpectedInput as e:
            from ftdsl.syntax.recovery import recover as _recover

            syntax, masked, broken = _recover(text, path, e)
            if not recover or masked is None:
                return None, syntax
            diags = []
            comments = []
            items = _parse_items(masked, path, comments, diags)
            diags = syntax + diags
    except VisitError as e:  # a builder bug
        raise e.orig_exc from e
    except (RecursionError, MemoryError):
        return None, [make("FTP105", "the file is nested too deeply to parse", A.Span(path, 1, 1, 1, 2))]
    global _ERRORS
    out_items = []
    _ERRORS = diags
    try:
        for it in items:
            x = _classify_item(it, path, diags)
            if x is not None:
                out_items.append(x)
    finally:
        _ERRORS = None
    if not recover and any(d.severity == "error" for d in diags):
        return None, diags
    return A.File(path, tuple(out_items), tuple(comments), text, frozenset(broken)), diags


# --- internals -------------------------------------------------------------------------------

_FILE = ""  # path of the file being built; the builder is shared (Lark instance is cached)
_TEXT = ""  # the text being parsed (packed lists keep a reference to it)
_ERRORS: list | None = None  # value errors found while building (the builder records, never raises)


def _parse_items(text: str, path: str, comments: list, errors: list) -> list:
    global _FILE, _TEXT, _ERRORS
    _FILE, _TEXT, _ERRORS = path, text, errors
    found: list[tuple[int, int]] = []
    FastLexer.comments = found
    FastLexer.packed = {}
    try:
        items = _parser().parse(text)
    finally:
        FastLexer.comments = None
        FastLexer.packed = None
        _TEXT, _ERRORS = "", None
        # Comments come in order: count lines incrementally (a scan from the start for each
        # comment made 20,000 comment lines take seconds).
        line, last = 1, 0
        for s, e in found:
            line += text.count("\n", last, s)
            last = s
            col = s - (text.rfind("\n", 0, s) + 1) + 1
            comments.append(A.Comment(text[s:e], A.Span(path, line, col, line, col + (e - s), s, e)))
    return items


def _error(diag: Diagnostic) -> None:
    if _ERRORS is not None:
        _ERRORS.append(diag)


# Comments inside strings are text: `_find_comments` skips strings (used by suppression comments).
_STRING_OR_COMMENT = re.compile(r'"(?:[^"\\\n]|\\.)*"?|#[^\n]*')


def _find_comments(text: str):
    for m in _STRING_OR_COMMENT.finditer(text):
        if m.group().startswith("#"):
            yield m.span()


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


INT64_MIN, INT64_MAX = -(2 ** 63), 2 ** 63 - 1


def _number(tok: Token) -> A.Number | A.Invalid:
    """A number token's value, or `Invalid` (error recorded) when it does not fit: integers beyond
    64 bits (every engine library stores them as int64) and floats that overflow to infinity."""
    text = tok.value
    clean = text.replace("_", "") if "_" in text else text
    is_float = "." in clean or "e" in clean or "E" in clean
    if not is_float and len(clean.lstrip("+-")) > 19:  # also keeps int() away from huge digit strings
        return _out_of_range(tok, "does not fit in 64 bits")
    try:
        # The lexer guarantees the shape; only the int/float choice is left.
        value: int | float = float(clean) if is_float else int(clean)
    except ValueError:
        _error(make("FTP101", f"malformed number `{text}`", _tspan(tok), label="not a number"))
        return A.Invalid(_tspan(tok))
    if is_float:
        if value != value or value in (float("inf"), float("-inf")):
            return _out_of_range(tok, "overflows a float")
    elif not INT64_MIN <= value <= INT64_MAX:
        return _out_of_range(tok, "does not fit in 64 bits")
    return A.Number(value, text, _tspan(tok))


def _out_of_range(tok: Token, label: str) -> A.Invalid:
    span = _tspan(tok)
    _error(make("FTP203", f"number `{_short_text(tok.value)}` is out of range", span, label=label,
                hint="integers are 64-bit (at most 9223372036854775807) and floats at most about 1.8e308"))
    return A.Invalid(span)


def _short_text(t: str) -> str:
    return t if len(t) <= 40 else f"{t[:20]}...{t[-8:]} ({len(t)} characters)"


class _Builder(Transformer):
    """Builds AST nodes while LALR parses (inline transformer: no parse tree, no recursion)."""

    def number(self, c):
        return _number(c[0])

    def string(self, c):
        try:
            return A.String(_unquote(c[0]), _tspan(c[0]))
        except _BuildError as e:
            _error(e.diag)
            return A.Invalid(_tspan(c[0]))

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
        span = _tspan(c[0]).to(_tspan(c[-1]))
        if len(c) == 2 and FastLexer.packed:
            run = FastLexer.packed.get(c[0].start_pos)
            if run is not None:
                return A.ListV(A.PackedItems(_TEXT, _FILE, *run), span)
        return A.ListV(tuple(c[1:-1]), span)

    def dict(self, c):
        return A.DictV(tuple(x for x in c[1:-1] if x is not None), _tspan(c[0]).to(_tspan(c[-1])))

    def entry(self, c):
        k, v = c
        if k.type == "STRING":
            try:
                return A.Entry(_unquote(k), _tspan(k), v, quoted=True)
            except _BuildError as e:  # the entry is dropped; its error is reported
                _error(e.diag)
                return None
        return A.Entry(str(k), _tspan(k), v)

    def kwarg(self, c):
        return A.KwArg(str(c[0]), _tspan(c[0]), c[1])

    def call(self, c):
        name, rest, rpar = c[0], c[1:-1], c[-1]
        args, kwargs = [], []
        for a in rest:
            if kwargs and not isinstance(a, A.KwArg):
                _error(make("FTP101", f"positional argument after a keyword argument in `{name}(...)`",
                            a.span, label="positional after keyword",
                            hint="positional arguments come first: `f(1, k = 2)`"))
                return A.Invalid(_tspan(name).to(_tspan(rpar)))
            (kwargs if isinstance(a, A.KwArg) else args).append(a)
        return A.Call(str(name), _tspan(name), tuple(args), tuple(kwargs), _tspan(name).to(_tspan(rpar)))

    def attr(self, c):
        name, value = c
        if name in RESERVED:  # the attribute is dropped; its error is reported
            _error(make("FTP101", f"`{name}` is reserved and cannot be used as a name", _tspan(name),
                        label="reserved word", hint="`true`, `false` and `null` are values"))
            return None
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
        try:
            target = _unquote(c[1])
        except _BuildError as e:
            diags.append(e.diag)
            return None
        return A.Use(target, _tspan_path(c[1], path), wspan.to(_tspan_path(c[1], path)))
    # header
    if str(word) != "ftp":
        diags.append(make("FTP106", f"`{word} {c[1]}` is not a top-level item", wspan,
                          label="unexpected", hint="the language version header is written `ftp 1`"))
        return None
    num = _number(c[1])
    if isinstance(num, A.Invalid):
        return None
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
