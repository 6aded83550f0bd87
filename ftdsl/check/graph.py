"""The pipeline as a graph: edges from references, artifact types, topological order, cycles.

Pure functions over the IR; no diagnostics here except through `check.rules.graph_rules`.
"""

from __future__ import annotations

from dataclasses import dataclass

from ftdsl.ir import schema as S
from ftdsl.ir.cycles import walk
from ftdsl.ir.nodes import BlockIR, CallV, DictIR, ListIR, Program, RefV


@dataclass(frozen=True)
class Edge:
    src: str  # the referenced block
    dst: str  # the block holding the reference
    attr: str  # dotted path of the attribute (`recover.data`, `method.calibrate`, `models[1]`)
    ref: RefV
    type: S.Type | None  # the declared type at that place


def refs_in(value, t: S.Type | None, path: str):
    """Yield (path, RefV, declared type) for every reference inside a value."""
    if isinstance(value, RefV):
        yield path, value, t
    elif isinstance(value, ListIR):
        item_t = t.item if isinstance(t, S.ListT) else None
        for i, x in enumerate(value.items):
            yield from refs_in(x, item_t, f"{path}[{i}]")
    elif isinstance(value, DictIR):
        for k, x in value.entries:
            sub = None
            if isinstance(t, S.StructT):
                f = t.get(k)
                sub = f.type if f else None
            elif isinstance(t, S.OneOf):
                for o in t.options:
                    if isinstance(o, S.StructT) and o.get(k):
                        sub = o.get(k).type
            elif isinstance(t, S.MapT):
                sub = t.value
            yield from refs_in(x, sub, f"{path}.{k}")
    elif isinstance(value, CallV):
        ctor = S.all_constructors().get(value.name)
        for k, x in value.args:
            a = ctor.arg(k) if ctor else None
            yield from refs_in(x, a.type if a else None, f"{path}.{k}")


def edges(program: Program) -> list[Edge]:
    out = []
    memo: dict = {}
    for name, b in program.blocks.items():
        kind = S.KINDS[b.kind]
        for aname, a in b.attrs.items():
            f = kind.field(aname)
            for path, ref, t in refs_in(a.value, f.type if f else None, aname):
                out.append(Edge(ref.target, name, path, ref, t))
        implicit = _implicit_recover_data(program, name, b, memo)
        if implicit is not None:
            out.append(implicit)
    return out


def _implicit_recover_data(program: Program, name: str, b: BlockIR, memo: dict | None = None) -> Edge | None:
    """`prune { recover = { epochs = 1 } }` without `data` fine-tunes on the data the pruned model was
    trained on: an edge the planner follows like a written one (so it is part of the cache key)."""
    if b.kind != "prune":
        return None
    rec = b.value("recover")
    if not isinstance(rec, DictIR) or isinstance(rec.get("data"), RefV):
        return None
    src = b.value("from")
    data = training_data(program, src.target, memo) if isinstance(src, RefV) else None
    if data is None:
        return None
    recover_t = S.KINDS["prune"].field("recover").type
    return Edge(data, name, "recover.data", RefV(data, None, rec.span), recover_t.get("data").type)


def declared_splits(b: BlockIR) -> tuple[str, ...]:
    """The splits a data block provides."""
    split = b.value("split")
    if isinstance(split, DictIR) and b.written("split"):
        return tuple(k for k, v in split.entries if getattr(v, "value", None) is not None)
    files = tuple(s for s in ("train", "valid", "test") if b.written(s))
    if files:
        return files
    return ("train", "valid", "test")


def topo_order(program: Program, es: list[Edge]) -> tuple[list[str], list[list[str]]]:
    """Stage names in a topological order (source order among equals) and the cycles found."""
    deps: dict[str, list[str]] = {n: [] for n in program.blocks}
    for e in es:
        if e.src in deps and e.dst in deps and e.src not in deps[e.dst]:
            deps[e.dst].append(e.src)
    order, found = walk(program.blocks, deps.__getitem__)
    return order, [cyc + [cyc[0]] for cyc, _ in found]


def artifact_types(program: Program, order: list[str]) -> dict[str, str]:
    """What each stage produces: Dataset, TorchModel, QuantizedTorchModel, OnnxModel, ExportedFile, Report."""
    out: dict[str, str] = {}
    for name in order:
        b = program.blocks[name]
        produces = S.KINDS[b.kind].produces
        if produces == "input":
            src = b.value("from")
            produces = out.get(src.target, "TorchModel") if isinstance(src, RefV) else "TorchModel"
            if produces == "TorchModel":
                produces = "QuantizedTorchModel"
        elif produces == "target":
            src = b.value("target")
            produces = out.get(src.target, "TorchModel") if isinstance(src, RefV) else "TorchModel"
        elif produces == "export":
            fmt = b.value("format")
            produces = "OnnxModel" if isinstance(fmt, CallV) and fmt.name == "onnx" else "ExportedFile"
        out[name] = produces
    return out


def follow(program: Program, name: str, attrs: tuple[str, ...], stop, memo: dict | None):
    """Walk references (`attrs`, first one set) from `name` until `stop(block)` returns a
    non-None pair `(True, result)`; iterative (a 10,000-stage chain must not hit the recursion
    limit), and linear over many calls when they share `memo`."""
    memo = {} if memo is None else memo
    path: list[str] = []
    on_path: set[str] = set()
    found = None
    cur: str | None = name
    while cur is not None and cur in program.blocks and cur not in on_path:
        if cur in memo:
            found = memo[cur]
            break
        path.append(cur)
        on_path.add(cur)
        b = program.blocks[cur]
        hit = stop(b)
        if hit is not None:
            found = hit[1]
            break
        cur = next((v.target for v in (b.value(a) for a in attrs) if isinstance(v, RefV)), None)
    for n in path:
        memo[n] = found
    return found


def _task_stop(b: BlockIR):
    if b.kind == "model":
        t = b.value("task")
        return True, (t.name if isinstance(t, CallV) else None)
    return None


def _data_stop(b: BlockIR):
    v = b.value("data")
    if b.kind in ("train", "distill") and isinstance(v, RefV):
        return True, v.target
    return None


def model_task(program: Program, name: str, memo: dict | None = None) -> str | None:
    """Follow model-producing stages back to a `model` block and return `classify` or `regress`."""
    return follow(program, name, ("model", "student", "from", "target"), _task_stop, memo)


def training_data(program: Program, name: str, memo: dict | None = None) -> str | None:
    """The data block a model-producing stage was trained on (for metric checks)."""
    return follow(program, name, ("from", "target", "model", "student"), _data_stop, memo)
