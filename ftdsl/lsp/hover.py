"""Hover: the schema's documentation of what is under the cursor (Markdown).

Block kinds show the kind's description and attributes; attributes, constructor arguments and
dict keys show their type, default and doc; constructors their signature and doc; references
the block they name.
"""

from __future__ import annotations

from ftdsl.ir import schema as S
from ftdsl.lsp.scan import Scan, Tok, token_at


def _default(v) -> str:
    if v is S.REQUIRED:
        return "required"
    if v is None:
        return ""
    if isinstance(v, bool):
        return "default `" + ("true" if v else "false") + "`"
    if isinstance(v, str):
        return f"default `{v}`"
    return f"default `{v!r}`".replace("'", '"')


def field_doc(f: S.Field) -> str:
    parts = [f.type.describe()]
    d = _default(f.default)
    if d:
        parts.append(d)
    head = "; ".join(parts)
    return f"{f.doc}\n\n{head}" if f.doc else head


def signature(c: S.Ctor) -> str:
    args = []
    for a in c.args:
        d = a.default
        if d is S.REQUIRED:
            args.append(a.name)
        elif d is None:
            args.append(f"{a.name} = null")
        else:
            args.append(f"{a.name} = " + (str(d).lower() if isinstance(d, bool) else repr(d).replace("'", '"')))
    return f"{c.name}({', '.join(args)})"


def ctor_doc(c: S.Ctor) -> str:
    fam = S.article(c.family.replace("_", " "))
    lines = [f"```ftp\n{signature(c)}\n```", f"{c.doc} ({fam})"]
    if c.args:
        lines.append("\n".join(f"- `{a.name}`: {field_doc(a).replace(chr(10) * 2, ' — ')}" for a in c.args))
    return "\n\n".join(lines)


def kind_doc(k: S.Kind) -> str:
    attrs = "\n".join(f"- `{f.name}`{' (required)' if f.required else ''}: {f.doc or f.type.describe()}"
                      for f in k.fields)
    return f"**{k.name}** block — {k.doc}\n\nAttributes:\n{attrs}"


def describe(t: Tok, blocks: dict[str, str]) -> str | None:
    """The Markdown for a scanned token, or None when there is nothing to say."""
    if t.role == "kind" and isinstance(t.info, S.Kind):
        return kind_doc(t.info)
    if t.role in ("attr", "kwarg", "key") and isinstance(t.info, S.Field):
        return f"**{t.info.name}**: {field_doc(t.info)}"
    if t.role == "ctor" and isinstance(t.info, S.Ctor):
        return ctor_doc(t.info)
    if t.role == "enum":
        return f"`{t.text}`: {t.info.describe()}" if t.info is not None else None
    if t.role in ("ref", "blockname", "paramname"):
        kind = blocks.get(t.text)
        if kind in S.KINDS:
            return f"`{kind} {t.text}` — {S.KINDS[kind].doc}"
        return f"param `{t.text}`" if t.role == "paramname" or t.text in blocks else None
    if t.role == "refpart" and blocks.get(t.info) == "data":
        return f"the `{t.text}` split of data block `{t.info}`"
    if t.role == "keyword" and t.text == "use":
        return "Include the blocks and params of another file (relative to this one)."
    if t.role == "keyword" and t.text == "param":
        return "A value that blocks refer to by name; override it with `--set NAME=VALUE`."
    return None


def hover_at(text: str, offset: int, blocks: dict[str, str]) -> tuple[str, Tok] | None:
    scan = Scan(text)
    t = token_at(scan.toks, offset)
    if t is None:
        return None
    md = describe(t, blocks)
    return (md, t) if md else None
