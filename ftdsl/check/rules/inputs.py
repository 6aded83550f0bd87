"""FTP004 at lint time: an input path that exists but is not a regular file (issue 6, defect 3).

`csv("/dev/zero")`, a `mkfifo data.csv` or a folder where a file is expected would make `plan`
(which hashes every input) and `run` block or fail inside a reader. When the path is known
statically it is checked here with stat(2) only: stat never blocks on a FIFO, and nothing is
opened. A missing file is left to the data stage (it may be produced before the run). The engine
checks again before reading (`ftdsl.paths.require_regular_file`): the filesystem can change.
"""

from __future__ import annotations

import os

from ftdsl.diagnostics import make
from ftdsl.ir import schema as S
from ftdsl.ir.nodes import CallV, DictIR, ListIR, Lit
from ftdsl.paths import resolve_input, special_file_kind

_HINT = ("give the path of a regular file: ftdsl reads and hashes its inputs completely, which never "
         "ends for a device or a pipe")
MAX_FOLDER_ENTRIES = 10_000  # a pretrained folder is a handful of files; never walk a huge tree at lint


def input_files(ctx):
    """FTP004: a data source path (any input path argument) that is a FIFO, device, socket or folder."""
    root = ctx.program.root_dir
    for name, b in ctx.program.blocks.items():
        kind = S.KINDS[b.kind]
        for aname, a in b.attrs.items():
            if not a.written:
                continue
            f = kind.field(aname)
            if f is None or not _may_hold_input_path(f.type):
                continue
            for lit, what in _input_paths(a.value, f.type, f"{name}.{aname}"):
                d = _check_file(root, lit, what)
                if d is not None:
                    yield d


def pretrained_folders(ctx):
    """FTP004: `pretrained = "PATH"` naming a local path that is a FIFO/device/socket, or a folder holding one."""
    root = ctx.program.root_dir
    for name, b in ctx.program.blocks.items():
        if b.kind != "model":
            continue
        v = b.value("pretrained")
        if not isinstance(v, Lit) or not isinstance(v.value, str) or not v.value or "\x00" in v.value:
            continue
        path = resolve_input(root, v.value)
        st = _stat(path)
        if st is None:
            continue  # a model ID, resolved offline by the model stage
        kind = special_file_kind(st.st_mode)
        if kind is not None:
            yield make("FTP004", f"`{name}.pretrained` `{v.value}` is {kind}, not a model folder", v.span,
                       label=kind, hint="give a folder holding the model's files, or a model ID")
            continue
        if not os.path.isdir(path):
            continue
        try:
            with os.scandir(path) as it:
                for i, entry in enumerate(it):
                    if i >= MAX_FOLDER_ENTRIES:
                        break
                    est = _stat(entry.path)
                    ekind = special_file_kind(est.st_mode) if est is not None else None
                    if ekind is not None:
                        yield make("FTP004", f"`{name}.pretrained`: `{v.value}/{entry.name}` is {ekind}, "
                                             "not a regular file", v.span, label=f"holds {ekind}", hint=_HINT)
        except OSError:
            continue  # unreadable folder: the model stage reports it


_HOLDS: dict[int, bool] = {}


def _may_hold_input_path(t) -> bool:
    """Whether a value of type `t` can contain an input path (memoized per type object)."""
    key = id(t)
    if key not in _HOLDS:
        _HOLDS[key] = False  # a recursive type answers False while it is being looked at
        if isinstance(t, S.PathT):
            found = not t.output
        elif isinstance(t, S.OneOf):
            found = any(_may_hold_input_path(o) for o in t.options)
        elif isinstance(t, S.ListT):
            found = _may_hold_input_path(t.item)
        elif isinstance(t, S.StructT):
            found = any(_may_hold_input_path(f.type) for f in t.fields)
        elif isinstance(t, S.CtorT):
            found = any(_may_hold_input_path(a.type) for c in S.CONSTRUCTORS.get(t.family, {}).values()
                        for a in c.args)
        else:
            found = False
        _HOLDS[key] = found
    return _HOLDS[key]


def _input_paths(value, t, what):
    """(Lit, dotted name) for every input path (`PathT`, not an output) inside a value."""
    if isinstance(t, S.OneOf):
        for o in t.options:
            yield from _input_paths(value, o, what)
        return
    if isinstance(t, S.PathT):
        if not t.output and isinstance(value, Lit) and isinstance(value.value, str):
            yield value, what
        return
    if isinstance(value, CallV):
        ctor = S.all_constructors().get(value.name)
        for k, x in value.args:
            a = ctor.arg(k) if ctor else None
            if a is not None and k in value.written:
                yield from _input_paths(x, a.type, f"{what}.{k}")
    elif isinstance(value, ListIR) and isinstance(t, S.ListT):
        for i, x in enumerate(value.items):
            yield from _input_paths(x, t.item, f"{what}[{i}]")
    elif isinstance(value, DictIR) and isinstance(t, S.StructT):
        for k, x in value.entries:
            f = t.get(k)
            if f is not None:
                yield from _input_paths(x, f.type, f"{what}.{k}")


def _check_file(root: str, lit: Lit, what: str):
    p = lit.value
    if not p or "\x00" in p:
        return None
    st = _stat(resolve_input(root, p))
    if st is None:
        return None
    kind = special_file_kind(st.st_mode)
    if kind is None and os.path.isdir(resolve_input(root, p)):
        kind = "a folder"
    if kind is None:
        return None
    return make("FTP004", f"`{what}` `{p}` is {kind}, not a regular file", lit.span, label=kind, hint=_HINT)


def _stat(path):
    try:
        return os.stat(path)  # follows symlinks: a link to a FIFO is a FIFO
    except (OSError, ValueError):
        return None
