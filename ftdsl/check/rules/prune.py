"""FTP245: `structured(...)` pruning of a model without the structure it removes.

Follows the prune stage's `from` back to its `model` block (`compat.origin`); an `arch` model's
prunable units are the schema's `PRUNE_STRUCTURE` table. A pretrained model is checked at run time.
"""

from __future__ import annotations

from ftdsl.check.rules.compat import origin, sourced_calls
from ftdsl.diagnostics import Label, make
from ftdsl.ir.nodes import CallV, ListIR, Sym
from ftdsl.ir.schema import modality as M


def _what(method: CallV) -> tuple[list[str], object] | None:
    """The unit kinds `what = ...` names (None: `all` or not written) and the value's span."""
    for k, v in method.args:
        if k != "what":
            continue
        if isinstance(v, Sym):
            return (None if v.name == "all" else [v.name]), v.span
        if isinstance(v, ListIR):
            names = [x.name for x in v.items if isinstance(x, Sym)]
            return (names or None), v.span
    return None


def structured_support(ctx):
    prog = ctx.program
    memo: dict = {}
    for name, src, method in sourced_calls(prog, "prune", "method"):
        if method.name != "structured":
            continue
        o = origin(prog, src.target, memo)
        if o is None or o.source != "arch":
            continue
        arch = prog.blocks[o.name].value("arch")
        has = M.PRUNE_STRUCTURE.get(arch.name) if isinstance(arch, CallV) else None
        if has is None:
            continue
        secondary = (Label(o.span, "defined here"),) if o.span is not None else ()
        if not has:
            yield make("FTP245", f"`prune {name}`: `{arch.name}` models have no structure `structured(...)` can "
                                 "remove", method.span or src.span, label="nothing to remove",
                       secondary=secondary,
                       hint="use `method = magnitude(amount = ...)` (zeros weights, same size), or an `mlp`/`cnn` "
                            "or a BERT-like pretrained model")
            continue
        what = _what(method)
        if what is None or what[0] is None:
            continue
        missing = [w for w in what[0] if w not in has]
        if missing:
            yield make("FTP245", f"`prune {name}`: a `{arch.name}` model has no {' or '.join(missing)} to remove",
                       what[1] or method.span, label=f"{arch.name} has {' and '.join(has)}", secondary=secondary,
                       hint=f"what = [{', '.join(has)}]")


def vocab_needs_data(ctx):
    """FTP256: `what = [..., vocab]` keeps the tokens of `recover`'s data; without `recover` the
    stage has none (it would stop at run time, FTP510, after the stages upstream)."""
    prog = ctx.program
    for name, src, method in sourced_calls(prog, "prune", "method"):
        what = _what(method) if method.name == "structured" else None
        if what is None or not what[0] or "vocab" not in what[0] or prog.blocks[name].written("recover"):
            continue
        yield make("FTP256", f"`prune {name}`: `vocab` keeps the tokens the training data uses, but the stage has "
                             "no `recover` (the only data a prune stage sees)", what[1] or method.span,
                   label="needs data", hint="add `recover = { epochs = 1 }` (its data defaults to the data the "
                                            "model was trained on), or leave `vocab` out of `what`")

def hf_export_after_head_pruning(ctx):
    """FTP243: an `hf` export of a model whose attention heads `structured(...)` removes (a Hugging
    Face config has one head count for every layer, so the folder could not be loaded)."""
    prog = ctx.program
    for name, src, fmt in sourced_calls(prog, "export", "format"):
        pruned = prog.blocks.get(src.target)
        if fmt.name != "hf" or pruned is None or pruned.kind != "prune":
            continue
        method = pruned.value("method")
        if not isinstance(method, CallV) or method.name != "structured":
            continue
        what = _what(method)
        if what is not None and what[0] is not None and "heads" not in what[0]:
            continue  # only FFN rows (or units/channels): the config still describes the model
        yield make("FTP243", f"`export {name}`: `hf` cannot describe `{src.target}`, whose structured pruning removes "
                             "attention heads (a different number per layer)", fmt.span or src.span,
                   label="heads removed upstream",
                   secondary=(Label(method.span, "removes heads"),) if method.span is not None else (),
                   hint="export with `format = onnx()` or `safetensors()`, or prune with `what = ffn`")
