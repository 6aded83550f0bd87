"""Completion: what may be written where the cursor is, from the schema.

Item starts get block kinds (and `param`, `use`); a block's attribute position gets the kind's
attributes not yet set; a value position gets what the attribute's type accepts: constructor
names of its family, enum values, `true`/`false`, and references to blocks producing the right
artifact (`NAME.train|valid|test` where a split is required); inside a call, the constructor's
arguments; inside a `{ }` of known keys, those keys.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ftdsl.ir import schema as S
from ftdsl.lsp import hover
from ftdsl.lsp.scan import Scan, unwrap, value_type

_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*$")
SPLITS = ("train", "valid", "test")
# What a block of each kind can be referenced as (`export` and `quantize` depend on their settings).
_PRODUCES = {"data": {"Dataset"}, "model": {"TorchModel"}, "train": {"TorchModel"}, "distill": {"TorchModel"},
             "prune": {"TorchModel"}, "quantize": {"TorchModel", "OnnxModel"}, "sweep": {"TorchModel"},
             "export": {"OnnxModel"}, "evaluate": {"Report"}}


@dataclass
class Item:
    label: str
    kind: str  # keyword | property | function | enum | value | reference | variable | field
    detail: str = ""
    doc: str = ""
    insert: str | None = None


def complete(text: str, offset: int, blocks: dict[str, str], params: tuple[str, ...] = ()) -> list[Item]:
    """Completions at `offset` (code points). `blocks`: block name -> kind (this file and its `use`s)."""
    m = _WORD.search(text, 0, offset)
    start = m.start() if m else offset
    scan = Scan(text, start)
    f = scan.frame
    own = {fr.name for fr in scan.stack if fr.kind == "block"}  # a block does not take itself as input
    blocks = {n: k for n, k in blocks.items() if n not in own}
    if f.kind == "top" and f.state == "start":
        return _items_kinds()
    if f.kind == "top" and f.state != "value":
        return []
    if f.dot:
        if blocks.get(f.head) == "data":
            return [Item(s, "field", f"the {s} split of `{f.head}`") for s in SPLITS]
        return []
    if f.state in ("name", "eq") and f.kind in ("block", "call", "dict"):
        out = _names(f)
        if f.kind == "call":
            out += _values(value_type(f), blocks, params)
        return _unique(out)
    if f.state == "value" or f.kind == "list":
        return _values(value_type(f), blocks, params)
    return []


def _unique(items: list[Item]) -> list[Item]:
    seen: set[str] = set()
    return [i for i in items if not (i.label in seen or seen.add(i.label))]


def _items_kinds() -> list[Item]:
    out = [Item(k, "keyword", f"{k} block", S.KINDS[k].doc, f"{k} ") for k in S.KINDS]
    out += [Item("param", "keyword", "param NAME = value", "A value that blocks refer to by name.", "param "),
            Item("use", "keyword", 'use "file.ftp"', "Include the blocks and params of another file.", 'use "')]
    return out


def _names(f) -> list[Item]:
    fields: tuple = ()
    if f.kind == "block" and isinstance(f.owner, S.Kind):
        fields = f.owner.fields
    elif f.kind == "call" and isinstance(f.owner, S.Ctor):
        fields = f.owner.args
    elif f.kind == "dict" and isinstance(f.owner, S.StructT):
        fields = f.owner.fields
    kind = "field" if f.kind == "call" else "property"
    return [Item(x.name, kind, x.type.describe(), hover.field_doc(x), f"{x.name} = ")
            for x in fields if x.name not in f.used]


def _values(t, blocks: dict[str, str], params: tuple[str, ...]) -> list[Item]:
    out: list[Item] = []
    seen: set[str] = set()

    def add(item: Item):
        if item.label not in seen:
            seen.add(item.label)
            out.append(item)

    for x in unwrap(t):
        if isinstance(x, S.CtorT):
            for c in S.CONSTRUCTORS.get(x.family, {}).values():
                add(Item(c.name, "function", hover.signature(c), c.doc,
                         f"{c.name}(" if any(a.required for a in c.args) else c.name))
        elif isinstance(x, S.Enum):
            for c in x.choices:
                add(Item(c, "enum", x.describe()))
        elif isinstance(x, S.Bool):
            add(Item("true", "value"))
            add(Item("false", "value"))
        elif isinstance(x, S.RefT):
            for name, kind in sorted(blocks.items()):
                if not _PRODUCES.get(kind, set()) & set(x.artifacts):
                    continue
                if x.split == "required":
                    for s in SPLITS:
                        add(Item(f"{name}.{s}", "reference", f"the {s} split of data block `{name}`"))
                else:
                    add(Item(name, "reference", f"{kind} block"))
        elif isinstance(x, S.ListT) and x.item is not None:
            pass  # values are offered inside the brackets
    # A param can stand for a number, a string or a list; not for a name the schema knows better
    # (an enum value, a constructor, a reference, true/false).
    if t is None or any(isinstance(x, (S.Int, S.Float, S.Str, S.PathT, S.ListT)) for x in unwrap(t)):
        for p in params:
            add(Item(p, "variable", "param"))
    return out
