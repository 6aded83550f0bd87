"""Rows of the structured modalities (instructions, text pairs, tagged words) read from a table.

The data stage picks the modality from the data block's attributes (``MODALITY_COLUMNS`` of
``ftdsl.ir.schema.modality``) and turns each row into one record, in the form of
``ftdsl/stages/tasks/__init__.py``:

    instructions   prompt + response        -> {"prompt": str, "response": str}
                   messages                 -> {"messages": [{"role": str, "content": str}, ...]}
    text_pairs     text + target            -> {"source": str, "target": str}
    tagged         tokens + tags            -> {"tokens": [str, ...], "tags": [str, ...]}

Anything else is StageError FTP510 naming the file, the row, its line and the column. No torch.
"""

from __future__ import annotations

import json
import math
from typing import Any

from ftdsl.errors import StageError
from ftdsl.ir.schema.modality import CHAT_ROLES as ROLES
from ftdsl.ir.schema.modality import INSTRUCTIONS, MODALITY_COLUMNS, TAGGED, TEXT_PAIRS

BAD_DATA = "FTP510"
Table = Any  # ftdsl.stages._sources.Table (its only importer is the data stage): `where`, `require`

__all__ = ["record_modality", "read_records"]

_SHOW = 60  # characters of a bad value shown


def _shown(v: Any) -> str:
    s = json.dumps(v, ensure_ascii=False) if isinstance(v, (list, dict, str)) else repr(v)
    return s if len(s) <= _SHOW else s[: _SHOW - 3] + "..."


def _type_name(v: Any) -> str:
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, (int, float)):
        return "a number"
    if isinstance(v, list):
        return "a list"
    if isinstance(v, dict):
        return "an object"
    return type(v).__name__


def _set(attrs: dict, name: str) -> bool:
    return isinstance(attrs.get(name), str) and bool(attrs.get(name))


def record_modality(attrs: dict) -> str | None:
    """The structured modality the data block's attributes select, or None (features / text).
    FTP510 for attribute combinations that select none or several."""
    chosen = [m for m, cols in MODALITY_COLUMNS.items() if any(_set(attrs, c) for c in cols)]
    if len(chosen) > 1:
        cols = [f"`{c}`" for m in chosen for c in MODALITY_COLUMNS[m] if _set(attrs, c)]
        raise StageError(
            BAD_DATA,
            f"the data block sets {', '.join(cols)}: columns of {len(chosen)} kinds of data "
            f"({', '.join(chosen)})",
            "set the columns of one: `prompt` + `response` or `messages` (causal_lm), `text` + `target` "
            "(seq2seq), `tokens` + `tags` (token_classify)",
        )
    if not chosen:
        return None
    m = chosen[0]
    if attrs.get("features"):
        raise StageError(BAD_DATA, f"`features` cannot be set with {m.replace('_', ' ')} columns", "remove `features`")
    if m == INSTRUCTIONS:
        if _set(attrs, "messages") and (_set(attrs, "prompt") or _set(attrs, "response")):
            raise StageError(BAD_DATA, "set either `messages` (chat records) or `prompt` + `response`, not both")
        if not _set(attrs, "messages"):
            for have, need in (("prompt", "response"), ("response", "prompt")):
                if not _set(attrs, need):
                    raise StageError(BAD_DATA, f"`{have}` needs `{need}`: prompt/response data has both columns",
                                     f"add `{need} = \"column\"`")
        if _set(attrs, "text"):
            raise StageError(BAD_DATA, "`text` (plain text) cannot be set with instruction columns",
                             "remove `text`, or the prompt/response/messages columns")
    elif m == TEXT_PAIRS and not _set(attrs, "text"):
        raise StageError(BAD_DATA, "`target` needs `text`: seq2seq data has a source text and a target text column",
                         "add `text = \"column\"` (the source text)")
    elif m == TAGGED:
        for have, need in (("tokens", "tags"), ("tags", "tokens")):
            if not _set(attrs, need):
                raise StageError(BAD_DATA, f"`{have}` needs `{need}`: tagged data has a words column and a tags column",
                                 f"add `{need} = \"column\"`")
        if _set(attrs, "text"):
            raise StageError(BAD_DATA, "`text` cannot be set with `tokens` + `tags`", "remove `text`")
    return m


def _text(table: Table, i: int, col: str, v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        raise _missing(table, i, col, "text")
    if not isinstance(v, str):
        raise StageError(BAD_DATA,
                         f"{table.where(i, col)}: expected text (a string), found {_type_name(v)} {_shown(v)}",
                         "write the value as a JSON string")
    return v


def _missing(table: Table, i: int, col: str, what: str) -> StageError:
    return StageError(BAD_DATA, f"{table.where(i, col)}: missing {what}",
                      "every row needs it; remove the row or fill it in")


def _messages(table: Table, i: int, col: str, v: Any) -> list[dict]:
    if v is None:
        raise _missing(table, i, col, "chat messages")
    if not isinstance(v, list):
        raise StageError(
            BAD_DATA, f"{table.where(i, col)}: expected a list of chat messages, found {_type_name(v)} {_shown(v)}",
            'write e.g. [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}] (jsonl)',
        )
    if not v:
        raise StageError(BAD_DATA, f"{table.where(i, col)}: the list of chat messages is empty")
    out = []
    for j, m in enumerate(v, start=1):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise StageError(
                BAD_DATA, f"{table.where(i, col)}: message {j} is not a {{role, content}} object: {_shown(m)}",
                'each message is {"role": "user" | "assistant" | "system", "content": "..."}',
            )
        role, content = m["role"], m["content"]
        if role not in ROLES:
            raise StageError(BAD_DATA, f"{table.where(i, col)}: message {j} has the unknown role {_shown(role)}",
                             f"roles: {', '.join(ROLES)}")
        if not isinstance(content, str):
            raise StageError(BAD_DATA, f"{table.where(i, col)}: message {j}'s content is {_type_name(content)} "
                                       f"{_shown(content)}, not text")
        out.append({"role": role, "content": content})
    return out


def _words(table: Table, i: int, col: str, v: Any, what: str) -> list[str]:
    if v is None:
        raise _missing(table, i, col, what)
    if not isinstance(v, list):
        raise StageError(
            BAD_DATA, f"{table.where(i, col)}: expected a list of {what}, found {_type_name(v)} {_shown(v)}",
            'tagged data is jsonl with lists: {"tokens": ["Ada", "lives", "in", "Paris"], '
            '"tags": ["B-PER", "O", "O", "B-LOC"]}',
        )
    if not v:
        raise StageError(BAD_DATA, f"{table.where(i, col)}: the list of {what} is empty", "remove the row")
    out = []
    for j, w in enumerate(v, start=1):
        bad_number = isinstance(w, float) and not math.isfinite(w)
        if isinstance(w, bool) or not isinstance(w, (str, int, float)) or bad_number:
            raise StageError(BAD_DATA, f"{table.where(i, col)}: item {j} of the {what} is {_type_name(w)} {_shown(w)}, "
                                       "not a string")
        s = w if isinstance(w, str) else str(w)
        if what == "words" and not s.strip():
            raise StageError(BAD_DATA, f"{table.where(i, col)}: word {j} is empty", "every word needs characters")
        out.append(s)
    return out


def read_records(table: Table, modality: str, attrs: dict) -> list[dict]:
    """One record per row of ``table`` (see the module docstring); FTP510 at the first bad value."""
    out: list[dict] = []
    if modality == INSTRUCTIONS and _set(attrs, "messages"):
        col = attrs["messages"]
        vals = table.require(col, "chat messages")
        for i, v in enumerate(vals):
            out.append({"messages": _messages(table, i, col, v)})
    elif modality == INSTRUCTIONS:
        pc, rc = attrs["prompt"], attrs["response"]
        pv, rv = table.require(pc, "prompt"), table.require(rc, "response")
        for i, (p, r) in enumerate(zip(pv, rv)):
            out.append({"prompt": _text(table, i, pc, p), "response": _text(table, i, rc, r)})
    elif modality == TEXT_PAIRS:
        sc, tc = attrs["text"], attrs["target"]
        sv, tv = table.require(sc, "source text"), table.require(tc, "target text")
        for i, (a, b) in enumerate(zip(sv, tv)):
            out.append({"source": _text(table, i, sc, a), "target": _text(table, i, tc, b)})
    elif modality == TAGGED:
        wc, gc = attrs["tokens"], attrs["tags"]
        wv, gv = table.require(wc, "words"), table.require(gc, "tags")
        for i, (w, g) in enumerate(zip(wv, gv)):
            words, tags = _words(table, i, wc, w, "words"), _words(table, i, gc, g, "tags")
            if len(words) != len(tags):
                raise StageError(
                    BAD_DATA, f"{table.where(i)}: {len(words)} words in `{wc}` but {len(tags)} tags in `{gc}`",
                    "give every word exactly one tag",
                )
            out.append({"tokens": words, "tags": tags})
    else:  # pragma: no cover - record_modality returns one of the above
        raise AssertionError(modality)
    return out
