"""Rules about references: FTP204 (unknown split), FTP209 (wrong artifact type), FTP205 (cycles)."""

from __future__ import annotations

from ftdsl.check.graph import declared_splits
from ftdsl.diagnostics import make
from ftdsl.ir import schema as S
from ftdsl.ir.convert import did_you_mean

_ARTIFACT_WORDS = {"Dataset": "a Dataset", "TorchModel": "a TorchModel", "QuantizedTorchModel": "a quantized TorchModel",
                   "OnnxModel": "an ONNX model", "ExportedFile": "an exported file", "Report": "a report"}


def reference_types(ctx):
    """FTP204/FTP209: a reference must name a split that exists and a stage producing the right artifact."""
    prog = ctx.program
    for e in ctx.edges:
        t = e.type
        if not isinstance(t, S.RefT):
            continue
        src = prog.blocks.get(e.src)
        if src is None:
            continue
        where = f"{e.dst}.{e.attr}"
        got = ctx.types.get(e.src, "?")
        accepted = set(t.artifacts)
        if "TorchModel" in accepted:
            accepted.add("QuantizedTorchModel")  # order rules (FTP207) say where that is wrong
        if got not in accepted:
            want = " or ".join(_ARTIFACT_WORDS.get(a, a) for a in t.artifacts)
            hint = None
            if "Dataset" in accepted:
                datas = [n for n, b in prog.blocks.items() if b.kind == "data"]
                hint = did_you_mean(e.src, datas) or (f"data blocks: {', '.join(datas)}" if datas else None)
            elif "TorchModel" in accepted:
                models = [n for n, k in ctx.types.items() if k in accepted]
                hint = f"stages producing a model: {', '.join(models)}" if models else None
            yield make("FTP209", f"`{where}` needs {want}, but `{e.src}` ({src.kind}) produces "
                                 f"{_ARTIFACT_WORDS.get(got, got)}", e.ref.span, label=f"expected {want}", hint=hint)
            continue
        if src.kind == "data":
            splits = declared_splits(src)
            if t.split == "required" and e.ref.split is None:
                yield make("FTP209", f"`{where}` needs a split of `{e.src}`, not the whole dataset", e.ref.span,
                           label="expected `NAME.SPLIT`", hint=f"for example `{e.src}.{'test' if 'test' in splits else splits[-1]}`")
            elif t.split == "forbidden" and e.ref.split is not None:
                yield make("FTP209", f"`{where}` takes the whole dataset `{e.src}`, not one split", e.ref.span,
                           label=f"write `{e.src}`",
                           hint="training uses the `train` split and evaluates on `valid` when there is one")
            elif e.ref.split is not None and e.ref.split not in splits:
                yield make("FTP204", f"data block `{e.src}` has no split `{e.ref.split}`", e.ref.span,
                           label="unknown split", hint=did_you_mean(e.ref.split, splits) or
                           f"its splits: {', '.join(splits)}")
        elif e.ref.split is not None:
            yield make("FTP204", f"`{e.src}.{e.ref.split}`: only data blocks have splits", e.ref.span,
                       label="not a data block", hint=f"write `{e.src}`")
        if e.dst in prog.blocks and prog.blocks[e.dst].kind == "evaluate" and src.kind == "model":
            trained = [n for n, b in prog.blocks.items() if b.kind in ("train", "distill")
                       and getattr(b.value("model" if b.kind == "train" else "student"), "target", None) == e.src]
            yield make("FTP209", f"`{where}`: `{e.src}` is an untrained model; evaluate compares trained models",
                       e.ref.span, label="untrained",
                       hint=(f"evaluate a stage that trains it ({', '.join(trained)})" if trained else
                             f"add a `train` stage with `model = {e.src}` and evaluate that"))
        if e.attr == "target" and src.kind not in ("train", "distill"):
            yield make("FTP209", f"`{where}` must be a `train` or `distill` stage, not `{src.kind} {e.src}`",
                       e.ref.span, label="not a training stage")


def cycles(ctx):
    """FTP205: stages that depend on themselves."""
    seen = set()
    for cyc in ctx.cycles:
        key = frozenset(cyc)
        if key in seen:
            continue
        seen.add(key)
        first = cyc[0]
        # point at the reference that closes the cycle
        span = None
        for e in ctx.edges:
            if e.dst == cyc[-2] and e.src == cyc[-1]:
                span = e.ref.span
        yield make("FTP205", "stages form a cycle: " + " -> ".join(cyc), span or ctx.program.blocks[first].name_span,
                   label="closes the cycle")
