"""A tolerant, schema-aware scan of a .ftp buffer for the editor features.

The parser stops at (and recovery drops) a broken item, but an editor asks about text that is
being typed. This scan never fails: it splits the text into tokens with the grammar's token
shapes and walks them with a stack of frames (block, call, list, dict), giving each token a role
(`kind`, `blockname`, `attr`, `ctor`, `kwarg`, `key`, `ref`, `refpart`, `enum`, `usepath`, ...)
and the schema declaration it stands for (`Kind`, `Field`, `Ctor`). Completion reads the state
where the cursor is; hover, navigation, rename and semantic tokens read the roles.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ftdsl.ir import schema as S

_TOKEN = re.compile(
    r'(?P<comment>#[^\n]*)'
    r'|(?P<string>"(?:[^"\\\n]|\\[^\n])*"?)'
    r'|(?P<number>[+-]?(?:[0-9][0-9_]*(?:\.[0-9][0-9_]*)?|\.[0-9][0-9_]*)(?:[eE][+-]?[0-9]+)?)'
    r'|(?P<name>[A-Za-z_][A-Za-z0-9_]*)'
    r'|(?P<punct>[{}\[\]()=,.])'
    r'|(?P<ws>\s+)'
    r'|(?P<other>.)')
KEYWORDS = ("true", "false", "null")
ITEM_WORDS = ("ftp", "use", "param")
_CLOSE = {"}": "{", "]": "[", ")": "("}


@dataclass
class Tok:
    kind: str  # comment | string | number | name | punct | other
    text: str
    start: int
    end: int
    role: str = ""
    info: object = None  # Kind | Field | Ctor | str (a block's kind, a reference's head)


@dataclass
class Frame:
    kind: str  # top | block | call | list | dict
    opener: str = ""
    owner: object = None  # Kind (block), Ctor (call), StructT/MapT (dict), item Type (list)
    state: str = "start"  # top: start|header|use|param_name|param_eq|block_name|block_open|value; else name|eq|value
    key: object = None  # the Field whose value comes next
    used: set = field(default_factory=set)
    pos: int = 0  # positional arguments seen (call)
    name: str = ""  # block frames: the block's name; the top: the kind of the item being read
    block: str = ""  # the top: the name of the block being opened
    head: str = ""  # the reference being written (`digits` in `digits.test`)
    dot: bool = False  # a `.` followed the reference: its next part comes


def tokens(text: str) -> list[Tok]:
    return [Tok(m.lastgroup, m.group(), m.start(), m.end()) for m in _TOKEN.finditer(text)
            if m.lastgroup != "ws"]


def unwrap(t) -> list:
    """The alternatives of a type (`OneOf` flattened)."""
    if isinstance(t, S.OneOf):
        return [x for o in t.options for x in unwrap(o)]
    return [t] if t is not None else []


def _list_item(t):
    items = [x.item for x in unwrap(t) if isinstance(x, S.ListT)]
    return S.OneOf(tuple(items)) if len(items) > 1 else (items[0] if items else None)


def _dict_type(t):
    for x in unwrap(t):
        if isinstance(x, (S.StructT, S.MapT)):
            return x
    return None


def _field_of(frame: Frame, name: str):
    o = frame.owner
    if frame.kind == "block" and isinstance(o, S.Kind):
        return o.field(name)
    if frame.kind == "call" and isinstance(o, S.Ctor):
        return o.arg(name)
    if frame.kind == "dict" and isinstance(o, S.StructT):
        return o.get(name)
    if frame.kind == "dict" and isinstance(o, S.MapT):
        return S.Field(name, o.value)
    return None


def value_type(frame: Frame):
    """The type expected for the value being written in `frame`."""
    if frame.kind == "list":
        return frame.owner
    if frame.kind == "call" and frame.key is None and isinstance(frame.owner, S.Ctor):
        return frame.owner.args[frame.pos].type if frame.pos < len(frame.owner.args) else None
    return frame.key.type if isinstance(frame.key, S.Field) else None


class Scan:
    """Walk `text` (up to `stop`, a code-point offset); `toks` get roles, `stack` is the state there."""

    def __init__(self, text: str, stop: int | None = None):
        src = text if stop is None else text[:stop]
        self.toks = tokens(src)
        self.stack = [Frame("top")]
        sig = [t for t in self.toks if t.kind != "comment"]
        for i, t in enumerate(sig):
            self._step(t, sig[i + 1] if i + 1 < len(sig) else None, sig[i + 2] if i + 2 < len(sig) else None)

    @property
    def frame(self) -> Frame:
        return self.stack[-1]

    def _done(self):
        f = self.frame
        if f.kind == "top":
            f.state = "start"
        elif f.kind != "list":
            f.state, f.key = "name", None
            if f.kind == "call":
                f.pos += 1

    def _step(self, t: Tok, nxt: Tok | None, nxt2: Tok | None):
        f = self.frame
        if t.kind == "punct" and t.text == "(":
            return  # consumed with the constructor name before it
        if t.kind == "punct" and t.text in _CLOSE:
            while len(self.stack) > 1 and self.frame.opener != _CLOSE[t.text]:
                self.stack.pop()
            if len(self.stack) > 1:
                self.stack.pop()
                self._done()
            return
        if f.kind == "top" and f.state != "value":
            return self._top(t, nxt)
        if t.kind == "punct" and t.text == ",":
            f.head, f.dot = "", False
            if f.kind != "list":
                f.state, f.key = "name", None
            return
        if t.kind == "punct" and t.text == "=":
            if f.state == "eq":
                f.state = "value"
            return
        if f.kind == "block" and f.state == "name" and t.kind == "name" and t.text in S.KINDS \
                and nxt is not None and nxt.kind == "name" and nxt2 is not None and nxt2.text == "{":
            del self.stack[1:]  # an unclosed block: this is the next item
            return self._top(t, nxt)
        # A name before `=` is always an attribute, argument or key (values are never followed by `=`),
        # even where a value was still missing (`model = ` with nothing after it yet).
        if f.kind in ("block", "call", "dict") and nxt is not None and nxt.text == "=" \
                and t.kind in ("name", "string"):
            f.head, f.dot = "", False
            name = t.text.strip('"') if t.kind == "string" else t.text
            t.role = {"block": "attr", "call": "kwarg", "dict": "key"}.get(f.kind, "key")
            t.info = _field_of(f, name)
            f.key, f.state = t.info or S.Field(name, S.Type()), "eq"
            f.used.add(name)
            return
        if f.kind == "call" and f.state == "name":
            f.state, f.key = "value", None  # a positional argument
        if f.state == "value" or f.kind == "list":
            return self._value(t, nxt)

    def _top(self, t: Tok, nxt: Tok | None):
        f = self.frame
        if t.kind == "name" and (f.state == "start" or (f.state in ("header", "use", "block_open", "param_eq")
                                                        and (t.text in S.KINDS or t.text in ITEM_WORDS))):
            if t.text == "ftp":
                t.role, f.state = "keyword", "header"
            elif t.text == "use":
                t.role, f.state = "keyword", "use"
            elif t.text == "param":
                t.role, f.state = "keyword", "param_name"
            else:
                t.role, t.info, f.state, f.name = "kind", S.KINDS.get(t.text), "block_name", t.text
            return
        if f.state == "use" and t.kind == "string":
            t.role = "usepath"
        elif f.state == "param_name" and t.kind == "name":
            t.role, t.info, f.state = "paramname", "param", "param_eq"
            return
        elif f.state == "param_eq" and t.text == "=":
            f.state, f.key = "value", None
            return
        elif f.state == "block_name" and t.kind == "name":
            t.role, t.info, f.state, f.block = "blockname", f.name, "block_open", t.text
            return
        elif f.state == "block_open" and t.text == "{":
            kind = S.KINDS.get(f.name)
            self.stack.append(Frame("block", "{", kind, "name", name=f.block))
            f.state = "start"
            return
        f.state = "start"

    def _value(self, t: Tok, nxt: Tok | None):
        f = self.frame
        want = value_type(f)
        if t.kind == "punct" and t.text == ".":
            f.dot = bool(f.head)
            return
        if t.kind == "name" and f.dot:
            t.role, t.info, f.dot = "refpart", f.head, False
            if not (nxt is not None and nxt.text == "."):
                f.head = ""
                if f.kind != "list":
                    self._done()
            return
        f.head, f.dot = "", False
        if t.kind == "punct" and t.text == "[":
            self.stack.append(Frame("list", "[", _list_item(want), "value"))
        elif t.kind == "punct" and t.text == "{":
            self.stack.append(Frame("dict", "{", _dict_type(want), "name"))
        elif t.kind == "name" and nxt is not None and nxt.text == "(":
            ctor = _ctor(t.text, want)
            t.role, t.info = "ctor", ctor
            self.stack.append(Frame("call", "(", ctor, "name"))
        elif t.kind == "name":
            if t.text in KEYWORDS:
                t.role = "keyword"
            elif any(isinstance(x, S.Enum) and t.text in x.choices for x in unwrap(want)):
                t.role, t.info = "enum", want
            elif any(isinstance(x, S.CtorT) and t.text in S.CONSTRUCTORS.get(x.family, {}) for x in unwrap(want)):
                t.role, t.info = "ctor", _ctor(t.text, want)
            else:
                t.role, f.head = "ref", t.text
            if f.kind != "list" and not (nxt is not None and nxt.text == "."):
                self._done()
        elif t.kind in ("number", "string"):
            if f.kind != "list":
                self._done()


def _ctor(name: str, want):
    for x in unwrap(want):
        if isinstance(x, S.CtorT) and name in S.CONSTRUCTORS.get(x.family, {}):
            return S.CONSTRUCTORS[x.family][name]
    return S.all_constructors().get(name)


def token_at(toks: list[Tok], offset: int) -> Tok | None:
    """The token under the cursor (a cursor just after a word still names it)."""
    for t in toks:
        if t.start <= offset < t.end:
            return t
    for t in toks:
        if t.end == offset and t.kind in ("name", "string"):
            return t
    return None


def declarations(toks: list[Tok]) -> dict[str, Tok]:
    """Block and param names declared in a scanned file."""
    return {t.text: t for t in toks if t.role in ("blockname", "paramname")}


def uses(toks: list[Tok]) -> list[Tok]:
    return [t for t in toks if t.role == "usepath"]
