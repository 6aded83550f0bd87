"""Rules about the shape of blocks: FTP211 (conflicting attributes), FTP213 (no stages), split sums."""

from __future__ import annotations

from ftdsl.diagnostics import make
from ftdsl.ir.nodes import DictIR, Lit


def no_stages(ctx):
    """FTP213: the file defines no stages. An empty pipeline runs nothing."""
    if not ctx.program.blocks:
        yield make("FTP213", f"`{ctx.program.path}` defines no stages", None,
                   hint="add a `data` block and a `train` block (see `pipelines/quickstart.ftp`)")


def _given(b, name: str) -> bool:
    """Written in the file (even with an invalid value, already reported) and not `null`."""
    if name not in b.mentioned:
        return False
    return name not in b.attrs or _set(b.value(name))


def _exactly_one(b, a: str, c: str, what: str):
    has_a, has_c = _given(b, a), _given(b, c)
    if not has_a and not has_c:
        # `epoch = 3` is already FTP201 with "did you mean `epochs`?": don't pile on.
        import difflib

        unknown = [m for m in b.mentioned if m not in b.attrs]
        if difflib.get_close_matches(a, unknown, cutoff=0.6) or difflib.get_close_matches(c, unknown, cutoff=0.6):
            return
    if has_a and has_c:
        span = b.attrs[c].name_span if c in b.attrs else b.name_span
        yield make("FTP211", f"`{b.kind} {b.name}` sets both `{a}` and `{c}`", span,
                   label=f"conflicts with `{a}`", hint=f"{what}: keep one of them")
    elif not has_a and not has_c:
        yield make("FTP211", f"`{b.kind} {b.name}` needs `{a}` or `{c}`", b.name_span,
                   label=f"missing `{a}` or `{c}`", hint=what)


def _name_span(b, name: str):
    return b.attrs[name].name_span if name in b.attrs else b.name_span


def _set(v) -> bool:
    return not (isinstance(v, Lit) and v.value is None)


def conflicting_attributes(ctx):
    """FTP211: attributes that exclude each other are both set, or neither is."""
    for b in ctx.program.blocks.values():
        if b.kind == "model":
            yield from _exactly_one(b, "pretrained", "arch", "a model is either `pretrained = \"ID\"` or `arch = ...`")
        elif b.kind in ("train", "distill"):
            yield from _exactly_one(b, "epochs", "max_steps", "say how long to train: `epochs = N` or `max_steps = N`")
        elif b.kind == "data":
            files = [s for s in ("train", "valid", "test") if _given(b, s)]
            has_source = _given(b, "source")
            if has_source and files:
                yield make("FTP211", f"`data {b.name}` sets `source` and per-split files ({', '.join(files)})",
                           _name_span(b, files[0]), label="conflicts with `source`",
                           hint="use `source` with `split = {...}`, or `train`/`valid`/`test` files, not both")
            elif not has_source and not files:
                yield make("FTP211", f"`data {b.name}` needs `source` (or `train = ...` files)", b.name_span,
                           label="no data", hint='for example `source = csv("data/train.csv")`')
            elif files and "train" not in files:
                yield make("FTP211", f"`data {b.name}` has per-split files but no `train`", b.name_span,
                           label="missing `train`")
            if files and "split" in b.mentioned:
                yield make("FTP211", f"`data {b.name}`: `split` applies to `source` only", _name_span(b, "split"),
                           label="ignored with per-split files")


def split_fractions(ctx):
    """FTP203: split fractions must be positive and sum to at most 1."""
    for b in ctx.program.blocks.values():
        if b.kind != "data" or not b.written("split"):
            continue
        split = b.value("split")
        if not isinstance(split, DictIR):
            continue
        vals = [v.value for _, v in split.entries if isinstance(v, Lit) and v.value is not None]
        if not vals:
            yield make("FTP203", f"`{b.name}.split` declares no split", split.span, label="empty",
                       hint="for example `split = { train = 0.8, valid = 0.1, test = 0.1 }`")
        elif sum(vals) > 1.0 + 1e-9:
            yield make("FTP203", f"`{b.name}.split` fractions sum to {sum(vals):g}, more than 1", split.span,
                       label="sums to more than 1")
        elif "train" not in [k for k, v in split.entries if isinstance(v, Lit) and v.value is not None]:
            yield make("FTP203", f"`{b.name}.split` has no `train` fraction", split.span, label="missing train")
