"""Static compatibility between data, models and tasks, and what each artifact and this install support.

FTP240 (the model or its task takes another modality than the data has, or a data set that has
no columns given a `text` or record column), FTP241 (labels that cannot fit the task head),
FTP246 (a from-scratch architecture that cannot carry its task), FTP208/FTP211 for data columns
that need another (`prompt` without `response`) or exclude each other (two modalities' columns), FTP203 for argument
combinations a constructor cannot build (`heads` that do not divide `dim`), FTP242 (a quantization method the artifact does not support), FTP243 (an export
format the model's origin does not support), FTP244 (a setting this install cannot honour), and
FTP207 for re-quantizing a quantized ONNX graph. Everything here is read from the schema's tables
(`ftdsl/ir/schema/modality.py`, `ftdsl/capabilities.py`), which the engine shares.
"""

from __future__ import annotations

from dataclasses import dataclass

from ftdsl import capabilities
from ftdsl.check.graph import follow
from ftdsl.diagnostics import Label, make
from ftdsl.ir.lower import lower_value
from ftdsl.ir.nodes import CallV, DictIR, ListIR, Lit, RefV, Sym
from ftdsl.ir.schema import modality as M

_FOLLOW = ("model", "student", "from", "target")  # how a model-producing stage names its model


@dataclass(frozen=True)
class Origin:
    """The `model` block a model-producing stage goes back to, and what it consumes."""

    name: str
    source: str  # "arch" | "pretrained"
    what: str  # `mlp(...)`, `pretrained "ID"`
    inputs: tuple[str, ...]
    span: object


def origin(prog, name: str, memo: dict | None = None) -> Origin | None:
    """Follow `model`/`student`/`from`/`target` back to a `model` block (shared `memo`: linear)."""
    return follow(prog, name, _FOLLOW, lambda b: (True, _model_origin(b.name, b)) if b.kind == "model" else None,
                  memo)


def _model_origin(name: str, b) -> Origin | None:
    arch, pre = b.value("arch"), b.value("pretrained")
    if isinstance(arch, CallV) and arch.name in M.ARCH_INPUTS:
        return Origin(name, "arch", f"arch = {arch.name}(...)", M.ARCH_INPUTS[arch.name], arch.span)
    if isinstance(pre, Lit) and isinstance(pre.value, str):
        return Origin(name, "pretrained", f"pretrained \"{pre.value}\"", M.PRETRAINED_INPUTS, pre.span)
    return None


@dataclass(frozen=True)
class Data:
    name: str
    modality: str
    info: M.DataInfo | None  # labels known without reading (sklearn, synthetic)
    source_span: object


def _column(b, name: str) -> bool:
    """A data block's column attribute is written with a name (not `null`)."""
    v = b.value(name)
    return isinstance(v, Lit) and isinstance(v.value, str)


def record_modalities(b) -> list[str]:
    """The structured modalities whose columns the data block sets (MODALITY_COLUMNS)."""
    return [m for m, cols in M.MODALITY_COLUMNS.items() if any(_column(b, c) for c in cols)]


def data_of(prog, name: str) -> Data | None:
    b = prog.blocks.get(name)
    if b is None or b.kind != "data":
        return None
    if any(m not in b.attrs for m in b.mentioned):
        return None  # a misspelled or invalid attribute (`txt = ...`) is reported already; don't guess on
    src = b.value("source")
    info = None
    if isinstance(src, CallV):
        info = M.source_info(src.name, {k: lower_value(v) for k, v in src.args})
    structured = record_modalities(b)
    if structured:
        if len(structured) > 1 or info is not None:
            return None  # two kinds of columns, or records from a source without columns: data_columns says it
        return Data(name, structured[0], None, src.span if isinstance(src, CallV) else b.name_span)
    text = b.value("text")
    if isinstance(text, Lit) and isinstance(text.value, str):
        if info is not None:
            return None  # `text` on a source without columns: FTP240 (constructor_constraints) says it
        modality = M.TEXT
    else:
        modality = info.modality if info is not None else M.FEATURES
    return Data(name, modality, info, src.span if isinstance(src, CallV) else b.name_span)


def _pairs(b):
    """(model reference, data reference) pairs a stage feeds together."""
    data = b.value("data")
    if b.kind == "train":
        yield b.value("model"), data
    elif b.kind == "distill":
        yield b.value("teacher"), data
        yield b.value("student"), data
    elif b.kind == "evaluate":
        models = b.value("models")
        for m in models.items if isinstance(models, ListIR) else ():
            yield m, data
    elif b.kind == "export":
        v = b.value("verify")
        if isinstance(v, DictIR):
            yield b.value("from"), v.get("data")
    elif b.kind == "quantize":
        m = b.value("method")
        if isinstance(m, CallV):
            yield b.value("from"), m.get("calibrate")
    elif b.kind == "prune":
        r = b.value("recover")
        if isinstance(r, DictIR):
            yield b.value("from"), r.get("data")


def _hint_for(d: Data) -> str:
    if d.modality == M.TEXT:
        return "text needs a text model: `arch = rnn(...)`, `arch = transformer(...)` or `pretrained = \"ID\"`"
    if d.modality in M.NUMERIC:
        return "numeric data needs a features model: `arch = mlp(...)` or `arch = cnn(...)`"
    archs = [f"`arch = {a}(...)`" for a, ins in M.ARCH_INPUTS.items() if d.modality in ins]
    return f"{M.describe_modality(d.modality)} need " + " or ".join(archs + ['`pretrained = "FOLDER"`'])


# what a user writes in a data block to give each task its data
_TASK_DATA = {
    "classify": "a label column with `text = \"COLUMN\"` or numeric features",
    "regress": "a label column with `text = \"COLUMN\"` or numeric features",
    "causal_lm": "`text = \"COLUMN\"` (plain text), `prompt` + `response`, or `messages`",
    "seq2seq": "`text = \"COLUMN\"` (the source) + `target = \"COLUMN\"`",
    "token_classify": "`tokens = \"COLUMN\"` + `tags = \"COLUMN\"` (lists of words and tags, jsonl)",
}


def _task_call(prog, o: Origin):
    t = prog.blocks[o.name].value("task")
    return t if isinstance(t, CallV) and t.name in M.TASK_INPUTS else None


def _task_mismatch(prog, b, name: str, o: Origin, d: Data, dref):
    """FTP240 when the model's task does not take the data's modality (TASK_INPUTS), or None."""
    task = _task_call(prog, o)
    if task is None or d.modality in M.TASK_INPUTS[task.name]:
        return None
    takes = " or ".join(M.describe_modality(m) for m in M.TASK_INPUTS[task.name])
    return make("FTP240", f"`{b.kind} {name}` feeds {M.describe_modality(d.modality)} from `{d.name}` to "
                          f"`{o.name}`, whose task `{task.name}()` takes {takes}",
                dref.span, label=M.describe_modality(d.modality),
                secondary=(Label(task.span, f"{task.name}() takes {takes}"),) if task.span is not None else (),
                hint=f"{task.name}() reads {_TASK_DATA[task.name]}; or use the task for this data"
                     + (f": {_task_for(d.modality)}" if _task_for(d.modality) else ""))


def _task_for(modality: str) -> str:
    tasks = [t for t, ins in M.TASK_INPUTS.items() if modality in ins and t not in ("classify", "regress")]
    return " or ".join(f"`task = {t}(...)`" for t in tasks)


def modality_and_labels(ctx):
    """FTP240/FTP241: the model must take the data's modality, and its head must fit the labels."""
    prog = ctx.program
    seen: set[tuple[str, str, str]] = set()
    memo: dict = {}
    for name, b in prog.blocks.items():
        for mref, dref in _pairs(b):
            if not isinstance(mref, RefV) or not isinstance(dref, RefV):
                continue
            o, d = origin(prog, mref.target, memo), data_of(prog, dref.target)
            if o is None or d is None:
                continue
            if ("task", o.name, d.name) not in seen:
                seen.add(("task", o.name, d.name))
                diag = _task_mismatch(prog, b, name, o, d, dref)
                if diag is not None:
                    seen.add(("modality", o.name, d.name))  # one diagnostic for the pair
                    yield diag
            if d.modality not in o.inputs and ("modality", o.name, d.name) not in seen:
                seen.add(("modality", o.name, d.name))
                yield make("FTP240", f"`{b.kind} {name}` feeds {M.describe_modality(d.modality)} from `{d.name}` to "
                                     f"`{mref.target}`, whose model takes {' or '.join(M.describe_modality(m) for m in o.inputs[:1])}",
                           dref.span, label=f"{M.describe_modality(d.modality)}",
                           secondary=(Label(o.span, f"{o.what} takes {M.describe_modality(o.inputs[0])}"),)
                           if o.span is not None else (), hint=_hint_for(d))
            if b.kind in ("train", "distill") and ("labels", o.name, d.name) not in seen:
                seen.add(("labels", o.name, d.name))
                yield from _labels(prog, o, d)


def _labels(prog, o: Origin, d: Data):
    info = d.info
    task = prog.blocks[o.name].value("task")
    if info is None or not isinstance(task, CallV):
        return
    if task.name == "classify":
        n = task.get("labels")
        if info.task == "regress":
            yield make("FTP241", f"model `{o.name}` classifies, but `{d.name}` has real-valued (regression) labels",
                       task.span, label="classify(...)", secondary=(Label(d.source_span, "regression data"),),
                       hint="use `task = regress(outputs = 1)`, or a classification data set")
        elif isinstance(n, Lit) and isinstance(n.value, int) and info.classes and n.value < info.classes:
            yield make("FTP241", f"model `{o.name}` has {n.value} classes, but `{d.name}` has {info.classes}",
                       n.span or task.span, label=f"{info.classes} classes in the data",
                       secondary=(Label(d.source_span, f"{info.classes} classes"),),
                       hint=f"use `task = classify(labels = {info.classes})`")
    elif task.name == "regress" and info.task == "regress":
        n = task.get("outputs")
        if isinstance(n, Lit) and isinstance(n.value, int) and n.value != info.outputs:
            yield make("FTP241", f"model `{o.name}` predicts {n.value} outputs, but `{d.name}` has "
                                 f"{info.outputs} target column(s)", n.span or task.span,
                       label="outputs", hint=f"use `task = regress(outputs = {info.outputs})`")


def sourced_calls(prog, kind: str, attr: str):
    """``(name, source ref, call)`` for every ``kind`` block whose `from` is a reference and whose
    ``attr`` is a constructor call: what the per-stage support rules below look at."""
    for name, b in prog.blocks.items():
        if b.kind != kind:
            continue
        src, call = b.value("from"), b.value(attr)
        if isinstance(src, RefV) and isinstance(call, CallV):
            yield name, src, call


def quantize_support(ctx):
    """FTP242/FTP207: the quantization method must suit the artifact it quantizes."""
    prog = ctx.program
    memo: dict = {}
    for name, src, method in sourced_calls(prog, "quantize", "method"):
        art = ctx.types.get(src.target)
        table = M.QUANTIZE_SUPPORT.get(art)
        if table is None:
            continue  # a QuantizedTorchModel: FTP207 (order rules)
        upstream = prog.blocks.get(src.target)
        if upstream is not None and upstream.kind == "quantize":
            yield make("FTP207", f"`quantize {name}` would quantize `{src.target}` again", src.span,
                       label="already quantized", hint="quantize the float export, once")
            continue
        where = "in PyTorch" if art == "TorchModel" else "with onnxruntime"
        rules = table.get(method.name)
        if rules is None:
            yield make("FTP242", f"`{method.name}` quantization is not supported {where}", method.span,
                       label="unsupported method", hint="supported: " + ", ".join(table))
            continue
        fuse = method.get("fuse")
        if (art == "TorchModel" and "fuse" in method.written and isinstance(fuse, Lit) and fuse.value is True):
            yield make("FTP242", f"`quantize {name}`: graph fusion (`fuse = true`) is for ONNX transformer graphs; "
                                 f"`{src.target}` is quantized in PyTorch, where nothing is fused", fuse.span or method.span,
                       label=f"not supported {where}",
                       hint="remove `fuse`, or export to ONNX and quantize that export")
        dtype = method.get("dtype")
        if "dtype" in rules and isinstance(dtype, Sym) and dtype.name not in rules["dtype"]:
            yield make("FTP242", f"`quantize {name}`: {method.name} quantization {where} stores weights as "
                                 f"{' or '.join(rules['dtype'])}, not {dtype.name}", dtype.span or method.span,
                       label=f"not supported {where}",
                       hint=f"use `dtype = {rules['dtype'][0]}`, or export to ONNX and quantize that "
                            "(onnxruntime takes uint8 weights)")
        o = origin(prog, src.target, memo)
        if "inputs" in rules and o is not None and not set(o.inputs) & set(rules["inputs"]):
            yield make("FTP242", f"`quantize {name}`: {method.name} quantization {where} is for numeric-feature "
                                 f"models (mlp, cnn), but `{src.target}` takes {M.describe_modality(o.inputs[0])}",
                       method.span, label=f"not for {M.describe_modality(o.inputs[0])} models",
                       hint="use `method = dynamic()`, or export to ONNX and quantize that export "
                            "(static int8 also costs transformers much accuracy)")


def export_support(ctx):
    """FTP243: the export format must suit where the model comes from (`hf` needs a pretrained model)."""
    prog = ctx.program
    memo: dict = {}
    for name, src, fmt in sourced_calls(prog, "export", "format"):
        allowed = M.EXPORT_ORIGINS.get(fmt.name)
        o = origin(prog, src.target, memo)
        task = prog.blocks[o.name].value("task") if o is not None else None
        refused = M.EXPORT_REFUSED.get((fmt.name, task.name)) if isinstance(task, CallV) else None
        if refused is not None:
            yield make("FTP243", f"`export {name}`: `{fmt.name}` of a `{task.name}` model: {refused[0]}",
                       fmt.span or src.span, label="not for this model",
                       secondary=(Label(task.span, f"a {task.name} model"),) if task.span is not None else (),
                       hint=refused[1])
            continue
        if allowed is None or o is None or o.source in allowed:
            continue
        arch = prog.blocks[o.name].value("arch")
        if o.source == "arch" and isinstance(arch, CallV) and arch.name in allowed:
            continue  # gpt, llama, t5: transformers models built from scratch
        yield make("FTP243", f"`export {name}`: `{fmt.name}` needs a {' or '.join(allowed)} model, but `{src.target}` "
                             f"is built from scratch ({o.what})", fmt.span or src.span, label="not for this model",
                   secondary=(Label(o.span, "built from scratch"),) if o.span is not None else (),
                   hint="use `format = safetensors()` (weights + spec), `onnx()` or `pt2()` for a from-scratch model")


def install_capabilities(ctx):
    """FTP244: settings the engine of this install cannot honour (e.g. `distributed`)."""
    for name, b in ctx.program.blocks.items():
        if b.kind not in ("train", "distill"):
            continue
        v = b.value("distributed")
        if isinstance(v, Sym) and not capabilities.distributed_supported(v.name):
            ok = ", ".join(capabilities.distributed_modes())
            yield make("FTP244", f"`{b.kind} {name}`: `distributed = {v.name}` is not supported by this install's engine",
                       v.span, label="not supported here", hint=f"supported: {ok}")
        elif isinstance(v, Sym):
            for attr in capabilities.DISTRIBUTED_EXCLUDES.get(v.name, ()):
                other = b.value(attr)
                if other is not None and not (isinstance(other, Lit) and other.value is None):
                    others = [m for m in capabilities.distributed_modes()
                              if m not in ("none", v.name) and attr not in capabilities.DISTRIBUTED_EXCLUDES.get(m, ())]
                    yield make("FTP244", f"`{b.kind} {name}`: `{attr}` with `distributed = {v.name}` is not supported "
                                         "by this engine", v.span, label=f"not with `{attr}`",
                               hint=f"use `distributed = {others[0]}`" if others else f"remove `{attr}`")


def _int_arg(call: CallV, name: str):
    v = call.get(name)
    return (v.value, v.span) if isinstance(v, Lit) and isinstance(v.value, int) else (None, None)


def constructor_constraints(ctx):
    """FTP203/FTP240: argument combinations that no value range can express.

    `transformer(dim, heads)`: attention splits `dim` across the heads; `synthetic(classes, features)`:
    scikit-learn needs 2**features >= classes informative corners; a data block whose source has no
    columns (`sklearn`, `synthetic`) cannot have a `text` column.
    """
    import math

    for name, b in ctx.program.blocks.items():
        if b.kind == "model":
            arch = b.value("arch")
            if isinstance(arch, CallV) and arch.name == "transformer":
                (dim, _), (heads, hspan) = _int_arg(arch, "dim"), _int_arg(arch, "heads")
                if dim and heads and dim % heads:
                    yield make("FTP203", f"`{name}.arch`: `heads = {heads}` must divide `dim = {dim}`",
                               hspan or arch.span, label="does not divide dim",
                               hint="each head gets dim / heads features: use "
                                    + " or ".join(f"`heads = {h}`" for h in _divisors_near(dim, heads)))
        elif b.kind == "data":
            src = b.value("source")
            if not isinstance(src, CallV):
                continue
            if src.name == "synthetic" and getattr(src.get("task"), "name", None) != "regress":
                (k, _), (classes, cspan) = _int_arg(src, "features"), _int_arg(src, "classes")
                if k and classes and max(2, math.ceil(math.log2(classes))) > k:
                    need = max(2, math.ceil(math.log2(classes)))
                    yield make("FTP203", f"`{name}.source`: {classes} classes need at least {need} features, "
                                         f"not {k}", cspan or src.span, label="too many classes for the features",
                               hint=f"use `features = {need}` or more")
            text = b.value("text")
            if src.name in ("sklearn", "synthetic") and isinstance(text, Lit) and isinstance(text.value, str):
                yield make("FTP240", f"`data {name}`: `{src.name}(...)` yields numeric features, it has no text "
                                     f"column `{text.value}`", text.span, label="no such column",
                           hint="remove `text`, or read a file with a text column: `source = csv(\"...\")`")


def _divisors_near(n: int, h: int) -> list[int]:
    ds = [d for d in range(1, min(n, 1024) + 1) if n % d == 0]
    return sorted(sorted(ds, key=lambda d: (abs(d - h), d))[:2])


def arch_task(ctx):
    """FTP246: a from-scratch architecture must be able to carry the model's task (ARCH_TASKS)."""
    for name, b in ctx.program.blocks.items():
        if b.kind != "model":
            continue
        arch, task = b.value("arch"), b.value("task")
        if not (isinstance(arch, CallV) and isinstance(task, CallV)):
            continue
        allowed = M.ARCH_TASKS.get(arch.name)
        if allowed is None or task.name not in M.TASK_INPUTS or task.name in allowed:
            continue
        others = [f"`arch = {a}(...)`" for a, ts in M.ARCH_TASKS.items() if task.name in ts]
        fix = f"for {task.name}() use " + " or ".join(others + ['`pretrained = "FOLDER"`']) if others else \
            f"{task.name}() needs a pretrained model: `pretrained = \"FOLDER\"`"
        yield make("FTP246", f"`model {name}`: `{arch.name}(...)` carries {' or '.join(f'{t}()' for t in allowed)}, "
                             f"not {task.name}()", task.span or b.name_span, label=f"not a {arch.name} task",
                   secondary=(Label(arch.span, f"{arch.name}(...) is built for {', '.join(allowed)}"),)
                   if arch.span is not None else (),
                   hint=f"{fix}; or keep `{arch.name}` with `task = {allowed[0]}(...)`")


def token_task_loss(ctx):
    """FTP247: `loss` on a train/distill stage whose model has a token task (its own cross-entropy)."""
    prog, memo = ctx.program, {}
    for name, b in prog.blocks.items():
        loss = b.value("loss") if b.kind in ("train", "distill") else None
        if loss is None or not (isinstance(loss, (CallV, Sym))):
            continue
        mref = b.value("model") if b.kind == "train" else b.value("student")
        o = origin(prog, mref.target, memo) if isinstance(mref, RefV) else None
        task = _task_call(prog, o) if o is not None else None
        if task is None or task.name in M.TASK_LOSS:
            continue
        yield make("FTP247", f"`{b.kind} {name}`: `loss` cannot be set for `{o.name}`, whose task `{task.name}()` "
                             "trains with its own token-level cross-entropy", _name_span(b, "loss"),
                   label="not used by token tasks",
                   secondary=(Label(task.span, f"{task.name}() has its own loss"),) if task.span is not None else (),
                   hint="remove `loss`")


def _name_span(b, name: str):
    return b.attrs[name].name_span if name in b.attrs else b.name_span


def data_columns(ctx):
    """FTP208/FTP211/FTP240: the columns of a data block must make one kind of data.

    `prompt` needs `response` (and back), `tags` needs `tokens` (and back), `target` needs `text`;
    the columns of two modalities, `messages` with `prompt`/`response`, `text` with instruction or
    tagged columns, and `features` with any of them exclude each other; `sampler = balanced` and
    `label` need labelled rows; `sklearn`/`synthetic` sources have no columns to read."""
    for name, b in ctx.program.blocks.items():
        if b.kind != "data":
            continue
        mods = record_modalities(b)
        if not mods:
            continue
        cols = {m: [c for c in M.MODALITY_COLUMNS[m] if _column(b, c)] for m in mods}
        if len(mods) > 1:
            first, second = mods[0], mods[1]
            yield make("FTP211", f"`data {name}` sets {', '.join(f'`{c}`' for c in cols[first])} "
                                 f"({M.describe_modality(first)}) and {', '.join(f'`{c}`' for c in cols[second])} "
                                 f"({M.describe_modality(second)}): a data block holds one kind of data",
                       _name_span(b, cols[second][0]), label=f"conflicts with `{cols[first][0]}`",
                       hint="split them into two data blocks, one per task")
            continue
        m = mods[0]
        pairs = {M.INSTRUCTIONS: (("prompt", "response"), ("response", "prompt")),
                 M.TAGGED: (("tokens", "tags"), ("tags", "tokens")),
                 M.TEXT_PAIRS: (("target", "text"),)}[m]
        if m == M.INSTRUCTIONS and _column(b, "messages"):
            other = [c for c in ("prompt", "response") if _column(b, c)]
            if other:
                yield make("FTP211", f"`data {name}` sets `messages` (chat records) and `{other[0]}`",
                           _name_span(b, other[0]), label="conflicts with `messages`",
                           hint="chat data is one `messages` column; prompt/response data is two columns: use one")
            pairs = ()
        for have, need in pairs:
            if _column(b, have) and not _column(b, need):
                what = {"response": "the text the model learns to write", "prompt": "the instruction",
                        "tags": "one tag per word", "tokens": "the list of words", "text": "the source text"}[need]
                yield make("FTP208", f"`data {name}`: `{have}` needs `{need}` ({what})", _name_span(b, have),
                           label=f"without `{need}`", hint=f"add `{need} = \"COLUMN\"`")
        excl = [a for a in ("text", "features") if (a == "text" and m != M.TEXT_PAIRS and _column(b, a))
                or (a == "features" and a in b.mentioned and not (isinstance(b.value(a), Lit) and b.value(a).value is None))]
        if b.written("label"):
            excl.append("label")
        for a in excl:
            yield make("FTP211", f"`data {name}`: `{a}` does not apply to {M.describe_modality(m)} "
                                 f"(`{cols[m][0]}`)", _name_span(b, a), label=f"conflicts with `{cols[m][0]}`",
                       hint=f"remove `{a}`" + ("; seq2seq data is `text` + `target`" if a == "text" else ""))
        sampler = b.value("sampler")
        if isinstance(sampler, Sym) and sampler.name == "balanced":
            yield make("FTP211", f"`data {name}`: `sampler = balanced` needs class labels, and "
                                 f"{M.describe_modality(m)} have none", sampler.span or _name_span(b, "sampler"),
                       label="no classes to balance", hint="use `sampler = shuffle`")
        src = b.value("source")
        if isinstance(src, CallV) and src.name in ("sklearn", "synthetic"):
            yield make("FTP240", f"`data {name}`: `{src.name}(...)` yields numeric features, it has no column "
                                 f"`{b.value(cols[m][0]).value}`", _name_span(b, cols[m][0]), label="no such column",
                       hint="read a file with these columns: `source = jsonl(\"...\")`")
