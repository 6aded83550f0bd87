"""Go-to-definition and rename across a file and the files it `use`s.

A reference (`data = digits`, `digits.test`, a param name) leads to the block or param that
declares it; a `use "file.ftp"` path leads to that file. Renaming a block or a param rewrites its
declaration and every reference to it in the file and its `use`d files, and nothing else: enum
values, attribute names, constructor arguments and strings that spell the same word stay.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ftdsl.lsp.scan import Scan, Tok, declarations, token_at, uses

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_RESERVED = {"true", "false", "null"}


@dataclass
class Source:
    path: Path
    text: str
    scan: Scan


@dataclass
class Symbol:
    name: str
    kind: str  # a block kind, or "param"
    source: Source
    tok: Tok


class RenameError(ValueError):
    pass


def load(path: Path, text: str, read: Callable[[Path], str | None], limit: int = 64) -> list[Source]:
    """The file and (depth first, each once) the files it uses; `read` gives a file's text or None."""
    out: list[Source] = []
    seen: set[Path] = set()

    def visit(p: Path, t: str | None):
        if p in seen or t is None or len(out) >= limit:
            return
        seen.add(p)
        src = Source(p, t, Scan(t))
        out.append(src)
        for u in uses(src.scan.toks):
            target = use_target(p, u)
            if target is not None:
                visit(target, read(target))

    visit(path.resolve(), text)
    return out


def use_target(path: Path, tok: Tok) -> Path | None:
    rel = tok.text.strip('"')
    return (path.parent / rel).resolve() if rel else None


def symbols(sources: list[Source]) -> dict[str, Symbol]:
    out: dict[str, Symbol] = {}
    for src in sources:
        for name, tok in declarations(src.scan.toks).items():
            out.setdefault(name, Symbol(name, "param" if tok.role == "paramname" else str(tok.info), src, tok))
    return out


def kinds(sources: list[Source]) -> dict[str, str]:
    return {n: s.kind for n, s in symbols(sources).items()}


def definition(sources: list[Source], offset: int) -> tuple[Path, Tok | None] | None:
    """Where the name (or `use` path) at `offset` in the first source is declared."""
    t = token_at(sources[0].scan.toks, offset)
    if t is None:
        return None
    if t.role == "usepath":
        target = use_target(sources[0].path, t)
        return (target, None) if target is not None and target.exists() else None
    name = _named(t)
    sym = symbols(sources).get(name) if name else None
    return (sym.source.path, sym.tok) if sym else None


def _named(t: Tok) -> str | None:
    """The block or param name a token stands for (`test` in `digits.test` is a split, not a name)."""
    return t.text if t.role in ("ref", "blockname", "paramname") else None


def references(sources: list[Source], name: str) -> dict[Path, list[Tok]]:
    out: dict[Path, list[Tok]] = {}
    for src in sources:
        hits = [t for t in src.scan.toks if t.text == name and t.role in ("ref", "blockname", "paramname")]
        if hits:
            out[src.path] = hits
    return out


def rename_target(sources: list[Source], offset: int) -> Tok:
    t = token_at(sources[0].scan.toks, offset)
    name = _named(t) if t is not None else None
    if name is None or name not in symbols(sources):
        raise RenameError("only a block or a param can be renamed: put the cursor on its name or a reference to it")
    return t


def rename(sources: list[Source], offset: int, new: str) -> dict[Path, list[Tok]]:
    """The tokens to replace with `new`, per file. Raises RenameError with a reason for people."""
    t = rename_target(sources, offset)
    if not _NAME.fullmatch(new) or new in _RESERVED:
        raise RenameError(f"`{new}` is not a valid name (letters, digits and `_`, not starting with a digit)")
    syms = symbols(sources)
    if new in syms and new != t.text:
        raise RenameError(f"`{new}` is already declared ({syms[new].kind} `{new}`)")
    return references(sources, t.text)
