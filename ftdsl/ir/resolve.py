"""AST -> IR: follow `use` includes, apply `--set` overrides, check every attribute against the schema.

Public: `resolve(path, overrides) -> Resolved` (the Program or None, all diagnostics, the sources read).
"""

from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass, field
from pathlib import Path

from ftdsl.diagnostics import Diagnostic, Label, make
from ftdsl.ir import schema as S
from ftdsl.ir.cycles import walk
from ftdsl.ir.convert import Converter, Scope, did_you_mean
from ftdsl.ir.nodes import BLOCK_MODELS, AttrIR, ParamIR, PipelineBlock, Program
from ftdsl.syntax import ast as A
from ftdsl.syntax.parser import parse, read_source

OVERRIDE_FILE = "<--set>"


@dataclass
class Resolved:
    program: Program | None
    diagnostics: list[Diagnostic]
    sources: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.program is not None and not any(d.severity == "error" for d in self.diagnostics)


def display_path(p: Path) -> str:
    """A path as users see it in messages: relative to the working folder when inside it, POSIX."""
    try:
        rel = os.path.relpath(p)
    except ValueError:
        return p.as_posix()
    if rel.startswith(".."):
        return p.as_posix()
    return Path(rel).as_posix()


def resolve(path: str | Path, overrides: list[str] | tuple[str, ...] = (), text: str | None = None) -> Resolved:
    root = Path(path)
    shown = root.as_posix() if not root.is_absolute() else display_path(root)
    diags: list[Diagnostic] = []
    sources: dict[str, str] = {}
    files: list[A.File] = []
    ok = _load(root.resolve() if text is None else Path(os.path.abspath(root)), shown, None, (), diags, sources,
               files, text)
    if not ok:
        return Resolved(None, diags, sources)
    return _build(files, root, shown, list(overrides), diags, sources)


def _load(abs_path: Path, shown: str, use: A.Use | None, stack: tuple, diags, sources, files, text=None) -> bool:
    """Read and parse one file and (depth first) everything it uses. False if the root is unreadable."""
    if abs_path in stack:
        chain = " -> ".join(Path(p).name for p in stack + (abs_path,))
        diags.append(make("FTP205", f"`use` cycle: {chain}", use.span if use else None, label="includes itself"))
        return True
    if any(f.path == shown for f in files):
        return True  # a diamond include: read once
    if text is None:
        src, errs = read_source(abs_path, shown)
        if src is None:
            if use is not None:
                e = errs[0]
                diags.append(make(e.code, f"cannot read `use` target: {e.message}", use.path_span, label="cannot read",
                                  hint=e.hint if e.code == "FTP004" else
                                  "paths in `use` are relative to the file that contains the `use`"))
                return True
            diags.extend(errs)
            return False
    else:
        src = text
    sources[shown] = src
    f, errs = parse(src, shown, recover=True)
    diags.extend(errs)
    if f is None:
        files.append(A.File(shown, (), (), src))
        return True
    files.append(f)
    for it in f.items:
        if isinstance(it, A.Use):
            target = (abs_path.parent / it.path).resolve()
            child_shown = (Path(shown).parent / it.path).as_posix()
            child_shown = os.path.normpath(child_shown).replace(os.sep, "/")
            _load(target, child_shown, it, stack + (abs_path,), diags, sources, files)
    return True


def _build(files: list[A.File], root: Path, shown: str, overrides: list[str], diags, sources) -> Resolved:
    params: dict[str, A.Param] = {}
    blocks: dict[str, A.Block] = {}
    pipeline: A.Block | None = None
    for f in files:
        for ii, it in enumerate(f.items):
            if isinstance(it, A.Header):
                if ii != 0:  # each file (root or `use`d) may open with its own header
                    diags.append(make("FTP107", "the `ftp` header must be the first item of the file", it.span,
                                      label="not first"))
                elif it.version.value != 1:
                    diags.append(make("FTP107", f"unsupported language version `ftp {it.version.text}`",
                                      it.version.span, label="only version 1 exists", hint="write `ftp 1`"))
            elif isinstance(it, A.Param):
                if it.name in params:
                    diags.append(make("FTP206", f"param `{it.name}` is defined twice", it.name_span,
                                      label="defined again", secondary=(Label(params[it.name].name_span, "first here"),)))
                    continue
                params[it.name] = it
            elif isinstance(it, A.Block):
                if it.kind == "pipeline":
                    if pipeline is not None:
                        diags.append(make("FTP214", "more than one `pipeline` block", it.kind_span,
                                          label="second pipeline", secondary=(Label(pipeline.kind_span, "first here"),)))
                        continue
                    pipeline = it
                    continue
                if it.kind not in S.KINDS:
                    diags.append(make("FTP200", f"unknown block kind `{it.kind}`", it.kind_span,
                                      label="not a block kind",
                                      hint=did_you_mean(it.kind, list(S.STAGE_KINDS) + list(S.ITEM_WORDS)),
                                      notes=("block kinds: " + ", ".join(S.STAGE_KINDS),)))
                    continue
                if it.name in blocks:
                    first = blocks[it.name]
                    diags.append(make("FTP206", f"a block named `{it.name}` is already defined", it.name_span,
                                      label="defined again", secondary=(Label(first.name_span, "first here"),)))
                    continue
                blocks[it.name] = it
    if params and blocks:
        for name in params.keys() & blocks.keys():
            diags.append(make("FTP206", f"`{name}` is both a param and a block", params[name].name_span,
                              label="ambiguous name", secondary=(Label(blocks[name].name_span, "block here"),)))

    # --set overrides replace AST values before anything is typed.
    param_over: set[str] = set()
    for i, ov in enumerate(overrides):
        _apply_override(ov, i, params, blocks, param_over, diags, sources)

    cyclic = _param_cycles(params, diags)
    broken = frozenset().union(*(f.broken for f in files)) - params.keys() - blocks.keys()
    scope = Scope({k: p.value for k, p in params.items()}, {k: b.kind for k, b in blocks.items()}, diags,
                  cyclic=cyclic, broken=broken)
    conv = Converter(scope)
    root_dir = posixpath.dirname(shown)

    def convert_in_place(b: A.Block):
        conv.scope.path_base = posixpath.relpath(posixpath.dirname(b.span.file) or ".", root_dir or ".") \
            if b.span.file != shown and b.span.file != OVERRIDE_FILE else "."
        return _convert_block(b, conv)

    pipe_ir = convert_in_place(pipeline) if pipeline is not None else None
    blocks_ir = {name: convert_in_place(b) for name, b in blocks.items()}
    params_ir = {k: ParamIR(name=k, value=p.value, span=p.span, name_span=p.name_span, overridden=k in param_over)
                 for k, p in params.items()}
    # Uses are counted on the syntax, so a param used inside a value with an error is still "used".
    uses = _count_refs([a.value for b in blocks.values() for a in b.attrs]
                       + [a.value for a in (pipeline.attrs if pipeline else ())]
                       + [p.value for p in params.values()], params)
    program = Program(path=shown, root_dir=str(root.resolve().parent), pipeline=pipe_ir, params=params_ir,
                      blocks=blocks_ir, files=tuple(f.path for f in files), param_uses=uses)
    return Resolved(program, diags, sources)


def _walk_param_refs(values, params):
    """Every reference to a param inside ``values`` (syntax only: nothing is typed yet)."""
    stack = list(values)
    while stack:
        x = stack.pop()
        if isinstance(x, A.Ref):
            if len(x.parts) == 1 and x.parts[0] in params:
                yield x
        elif isinstance(x, A.ListV):
            if not isinstance(x.items, A.PackedItems):  # packed lists hold literals only
                stack.extend(x.items)
        elif isinstance(x, A.DictV):
            stack.extend(e.value for e in x.entries)
        elif isinstance(x, A.Call):
            stack.extend(x.args)
            stack.extend(k.value for k in x.kwargs)


def _param_refs(v: A.Value, params) -> list[A.Ref]:
    """References to params inside one param's value, in source order."""
    out = list(_walk_param_refs([v], params))
    out.reverse()
    return out


def _param_cycles(params: dict[str, A.Param], diags) -> frozenset[str]:
    """FTP205 for params that refer to each other in a circle (`param x = y`, `param y = x`), used or
    not: one diagnostic per cycle, pointing at every param in it. Returns the params on a cycle
    (their uses are not reported again)."""
    deps = {name: _param_refs(p.value, params) for name, p in params.items()}
    seen: set[frozenset] = set()
    on_cycle: set[str] = set()
    for cyc, closing in walk(params, deps.__getitem__, lambda ref: ref.parts[0])[1]:
        if frozenset(cyc) not in seen:
            seen.add(frozenset(cyc))
            on_cycle.update(cyc)
            diags.append(_cycle_diag(cyc, closing, params, deps))
    return frozenset(on_cycle)


def _cycle_diag(cyc: list[str], closing: A.Ref, params, deps) -> Diagnostic:
    if len(cyc) == 1:
        return make("FTP205", f"param `{cyc[0]}` refers to itself", closing.span, label="refers to itself",
                    secondary=(Label(params[cyc[0]].name_span, "defined here"),),
                    hint="a param's value must not depend on the param itself")
    chain = " -> ".join(cyc + [cyc[0]])
    others = []
    for a, b in zip(cyc, cyc[1:]):
        ref = next((r for r in deps[a] if r.parts[0] == b), None)
        others.append(Label(ref.span if ref else params[a].name_span, f"`{a}` refers to `{b}`"))
    return make("FTP205", f"params form a cycle: {chain}", closing.span, label=f"`{cyc[-1]}` refers back to `{cyc[0]}`",
                secondary=tuple(others), hint="give one of them a value that does not refer back")


def _count_refs(values, params) -> dict[str, int]:
    counts: dict[str, int] = {}
    for ref in _walk_param_refs(values, params):
        counts[ref.parts[0]] = counts.get(ref.parts[0], 0) + 1
    return counts


def _convert_block(b: A.Block, conv: Converter):
    kind = S.KINDS[b.kind]
    valid = [f.name for f in kind.fields]
    seen: dict[str, A.Span] = {}
    got = conv.named_values(
        ((a.name, a.name_span, a.value) for a in b.attrs), kind.field, seen, path=lambda n: f"{b.name}.{n}",
        unknown=lambda n: (f"unknown attribute `{n}` in `{b.kind} {b.name}`", dict(
            label="unknown attribute", hint=did_you_mean(n, valid),
            notes=("valid attributes: " + ", ".join(sorted(valid)),), fingerprint=f"{b.name}.{n}")),
        twice=lambda n: (f"attribute `{n}` is set twice in `{b.kind} {b.name}`", "set again"))
    first: dict[str, A.Attr] = {}  # the one converted (a second one of a name is FTP206)
    for a in b.attrs:
        first.setdefault(a.name, a)
    attrs: dict[str, AttrIR] = {}
    for name, v in got.items():
        a = first[name]
        attrs[name] = AttrIR(name=name, value=v, span=a.span, name_span=a.name_span, written=True)
    for name, v in conv.defaults(kind.fields, seen, lambda spec: (
            f"`{b.kind} {b.name}` needs attribute `{spec.name}`", b.name_span,
            dict(label=f"missing `{spec.name}`", hint=f"`{spec.name}`: {spec.doc or spec.type.describe()}"))).items():
        attrs[name] = AttrIR(name=name, value=v, span=None, name_span=None, written=False)
    model = BLOCK_MODELS[b.kind] if b.kind in BLOCK_MODELS else PipelineBlock
    return model(kind=b.kind, name=b.name, span=b.span, name_span=b.name_span,
                                 kind_span=b.kind_span, attrs=attrs, mentioned=tuple(a.name for a in b.attrs))


def _apply_override(ov: str, i: int, params, blocks, param_over, diags, sources) -> None:
    src = ov
    sources.setdefault(OVERRIDE_FILE, "")
    line = i + 1
    # Each override is shown as its own line of a pseudo-file so diagnostics can point into it.
    lines = sources[OVERRIDE_FILE].split("\n") if sources[OVERRIDE_FILE] else []
    lines.append(src)
    sources[OVERRIDE_FILE] = "\n".join(lines)
    whole = A.Span(OVERRIDE_FILE, line, 1, line, len(src) + 1)
    key, eq, raw = ov.partition("=")
    key = key.strip()
    if not eq or not key:
        diags.append(make("FTP212", f"`--set {ov}` is not `NAME=VALUE`", whole, label="expected NAME=VALUE",
                          hint="for example `--set lr=1e-4` or `--set finetune.epochs=1`"))
        return
    f, errs = parse(f"param __set = {raw}", OVERRIDE_FILE)
    if f is None or not f.items or not isinstance(f.items[0], A.Param):
        diags.append(make("FTP212", f"`--set {ov}`: `{raw}` is not a value", whole, label="not a value",
                          hint='strings need quotes: --set \'name="text"\''))
        return
    value = _shift(f.items[0].value, line, len(key) + 1 - len("param __set = "))
    parts = key.split(".")
    if len(parts) == 1:
        if key not in params:
            diags.append(make("FTP212", f"`--set {key}=...`: no param named `{key}`", whole, label="unknown param",
                              hint=did_you_mean(key, list(params) + list(blocks)) or
                              "to set a block attribute write `BLOCK.ATTR=VALUE`"))
            return
        p = params[key]
        params[key] = A.Param(p.name, p.name_span, value, p.span)
        param_over.add(key)
        return
    bname, attr, rest = parts[0], parts[1], parts[2:]
    if bname not in blocks:
        diags.append(make("FTP212", f"`--set {key}=...`: no block named `{bname}`", whole, label="unknown block",
                          hint=did_you_mean(bname, blocks)))
        return
    b = blocks[bname]
    attrs = list(b.attrs)
    idx = next((j for j, a in enumerate(attrs) if a.name == attr), None)
    if rest:
        if idx is None:
            diags.append(make("FTP212", f"`--set {key}=...`: `{bname}.{attr}` is not written in the file, so "
                                        f"`{'.'.join(rest)}` cannot be set inside it", whole, label="nothing to set",
                              hint=f"set the whole value: --set {bname}.{attr}=..."))
            return
        current = attrs[idx].value
        if isinstance(current, A.Ref) and len(current.parts) == 1 and current.parts[0] in params:
            pname = current.parts[0]
            diags.append(make("FTP212", f"`--set {key}=...`: `{bname}.{attr}` is the param `{pname}`", whole,
                              label="set through a param", hint=f"set the param instead: --set {pname}=..."))
            return
        new = _set_inner(current, rest, value)
        if new is None:
            diags.append(make("FTP212", f"`--set {key}=...`: `{attrs[idx].name}` has no part `{'.'.join(rest)}`",
                              whole, label="unknown part"))
            return
        attrs[idx] = A.Attr(attrs[idx].name, attrs[idx].name_span, new, attrs[idx].span)
    elif idx is None:
        kind = S.KINDS.get(b.kind)
        if kind is not None and kind.field(attr) is None:
            diags.append(make("FTP212", f"`--set {key}=...`: `{b.kind}` blocks have no attribute `{attr}`", whole,
                              label="unknown attribute", hint=did_you_mean(attr, [x.name for x in kind.fields])))
            return
        attrs.append(A.Attr(attr, whole, value, whole))
    else:
        attrs[idx] = A.Attr(attr, attrs[idx].name_span, value, attrs[idx].span)
    blocks[bname] = A.Block(b.kind, b.kind_span, b.name, b.name_span, tuple(attrs), b.span)


def _set_inner(v: A.Value, path: list[str], value: A.Value) -> A.Value | None:
    head, rest = path[0], path[1:]
    if isinstance(v, A.Call):
        kws = list(v.kwargs)
        for j, kw in enumerate(kws):
            if kw.name == head:
                inner = value if not rest else _set_inner(kw.value, rest, value)
                if inner is None:
                    return None
                kws[j] = A.KwArg(kw.name, kw.name_span, inner)
                return A.Call(v.name, v.name_span, v.args, tuple(kws), v.span)
        if rest:
            return None
        from ftdsl.ir.schema import all_constructors

        ctor = all_constructors().get(v.name)
        if ctor is None or ctor.arg(head) is None:
            return None
        # A positional argument with this name is replaced; otherwise the keyword is added.
        names = [a.name for a in ctor.args]
        pos = names.index(head)
        if pos < len(v.args):
            args = list(v.args)
            args[pos] = value
            return A.Call(v.name, v.name_span, tuple(args), v.kwargs, v.span)
        return A.Call(v.name, v.name_span, v.args, v.kwargs + (A.KwArg(head, value.span, value),), v.span)
    if isinstance(v, A.Ref) and not rest:
        # `schedule = cosine` then `--set t.schedule.warmup=0.1`: make it a call first.
        return _set_inner(A.Call(v.dotted, v.span, (), (), v.span), path, value)
    if isinstance(v, A.DictV):
        ents = list(v.entries)
        for j, e in enumerate(ents):
            if e.key == head:
                inner = value if not rest else _set_inner(e.value, rest, value)
                if inner is None:
                    return None
                ents[j] = A.Entry(e.key, e.key_span, inner, e.quoted)
                return A.DictV(tuple(ents), v.span)
        if rest:
            return None
        return A.DictV(v.entries + (A.Entry(head, value.span, value),), v.span)
    return None


def _shift(v: A.Value, line: int, dcol: int) -> A.Value:
    """Move spans parsed from `param __set = VALUE` onto the override's own line."""
    import dataclasses

    def sp(s: A.Span) -> A.Span:
        return A.Span(OVERRIDE_FILE, line, s.col + dcol, line, s.end_col + dcol)

    def walk(x):
        if isinstance(x, A.Span):
            return sp(x)
        if isinstance(x, (tuple, A.PackedItems)):
            return tuple(walk(y) for y in x)
        if dataclasses.is_dataclass(x):
            return type(x)(*(walk(getattr(x, f.name)) for f in dataclasses.fields(x)))
        return x

    return walk(v)
