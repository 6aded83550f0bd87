"""Adapter (peft) checks, without loading any model or importing torch.

FTP250: an adapter's `targets` (or `ia3`'s `feedforward`) names no module of the model, with
"did you mean" and the names it has; the names come from `ftdsl/ir/schema/module_names.py`
(a pretrained folder's config.json `model_type` and layer counts; a from-scratch architecture's
own names). A model type not in that table is not checked here (the run reports it).
FTP251: `prefix(...)` on a model that is not a causal_lm/seq2seq language model; `ia3`'s
`feedforward` outside its `targets`.
FTP252: `gradient_checkpointing = true` on ftdsl's own nets (not transformers models).
FTP253: `load_in = int8|int4` on a from-scratch model, or where bitsandbytes or CUDA is missing.
FTP243 (`format = adapter` of a model without an adapter) and FTP251 (a prefix-tuned model where its
weights would be merged): `adapter_exports`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ftdsl import capabilities
from ftdsl.check.rules.compat import origin
from ftdsl.diagnostics import Label, make
from ftdsl.ir.lower import lower_value
from ftdsl.ir.nodes import CallV, ListIR, Lit, RefV, Sym
from ftdsl.ir.schema import module_names as MN

_OWN_NETS = ("mlp", "cnn", "rnn", "transformer")  # ftdsl.stages.nets: not transformers models
_PREFIX_TASKS = ("causal_lm", "seq2seq")
_MODEL_REF = {"train": "model", "distill": "student"}  # the model a training stage adapts
_MAX_CONFIG = 4 << 20


def _adapted(prog):
    """(stage name, block, adapter call, model origin) for every train/distill with `lora = ...`."""
    memo: dict = {}
    for name, b in prog.blocks.items():
        ref = _MODEL_REF.get(b.kind)
        call = b.value("lora") if ref else None
        mref = b.value(ref) if ref else None
        if not isinstance(call, CallV) or not isinstance(mref, RefV):
            continue
        o = origin(prog, mref.target, memo)
        if o is not None:
            yield name, b, call, o


def _read_json(path: Path) -> dict | None:
    try:
        if path.stat().st_size > _MAX_CONFIG:
            return None
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _hub_cache_config(name: str) -> Path | None:
    """config.json of model id ``name`` in the local Hugging Face cache (read, never downloaded)."""
    cache = os.environ.get("HF_HUB_CACHE") or os.path.join(
        os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface"), "hub")
    repo = Path(cache) / ("models--" + name.replace("/", "--"))
    ref = repo / "refs" / "main"
    try:
        if ref.is_file():
            cfg = repo / "snapshots" / ref.read_text(encoding="utf-8").strip() / "config.json"
            return cfg if cfg.is_file() else None
        snaps = sorted((repo / "snapshots").glob("*/config.json")) if repo.is_dir() else []
    except OSError:
        return None
    return snaps[0] if len(snaps) == 1 else None


def pretrained_config(root: str, name: str) -> dict | None:
    """The config.json of `pretrained = name` where it is found without loading anything: a local
    folder, a package that ships the model, the local Hugging Face cache. None otherwise."""
    import importlib.util

    from ftdsl.paths import resolve_input
    from ftdsl.stages import OFFLINE_MODELS

    try:
        local = resolve_input(Path(root), name)
        if local.is_dir():
            return _read_json(local / "config.json") if (local / "config.json").is_file() else None
    except (OSError, ValueError):
        return None
    if name in OFFLINE_MODELS:
        _, mod, sub = OFFLINE_MODELS[name]
        try:
            spec = importlib.util.find_spec(mod)
        except (ImportError, ValueError):
            spec = None
        if spec is not None and spec.submodule_search_locations:
            cfg = Path(list(spec.submodule_search_locations)[0]) / sub / "config.json"
            if cfg.is_file():
                return _read_json(cfg)
    cfg = _hub_cache_config(name) if "/" in name and not name.startswith((".", "/")) else None
    return _read_json(cfg) if cfg is not None else None


def module_names(prog, o, cache: dict) -> MN.ModuleNames | None:
    """The adaptable module names of the model block `o` goes back to (None: unknown)."""
    if o.name in cache:
        return cache[o.name]
    b = prog.blocks[o.name]
    names = None
    if o.source == "arch":
        arch = b.value("arch")
        if isinstance(arch, CallV):
            names = MN.for_arch(arch.name, {k: lower_value(v) for k, v in arch.args})
    else:
        pre = b.value("pretrained")
        if isinstance(pre, Lit) and isinstance(pre.value, str) and pre.value and "\x00" not in pre.value:
            cfg = pretrained_config(prog.root_dir, pre.value)
            names = MN.for_hf_config(cfg) if cfg is not None else None
    cache[o.name] = names
    return names


def _strings(v) -> list[tuple[str, object]]:
    if not isinstance(v, ListIR):
        return []
    return [(x.value, x.span or v.span) for x in v.items if isinstance(x, Lit) and isinstance(x.value, str)]


def _shown(names: MN.ModuleNames) -> str:
    short = names.short_names()
    more = f", ... ({len(short) - 16} more)" if len(short) > 16 else ""
    return ", ".join(f"`{n}`" for n in short[:16]) + more


def adapter_targets(ctx):
    """FTP250 for targets that name no module; FTP251 for ia3's feedforward outside its targets."""
    prog = ctx.program
    cache: dict = {}
    for name, b, call, o in _adapted(prog):
        targets, ff = _strings(call.get("targets")), _strings(call.get("feedforward"))
        names = module_names(prog, o, cache) if (targets or ff) else None
        secondary = (Label(o.span, "the model"),) if o.span is not None else ()
        arch = prog.blocks[o.name].value("arch") if o.source == "arch" else None
        if not targets and call.name != "prefix" and isinstance(arch, CallV) and arch.name == "rnn":
            yield make("FTP251", f"`{b.kind} {name}`: an `rnn` has no Linear layer for {call.name} to adapt "
                                 "besides its head (recurrent cells are not adapted)", call.span,
                       label="nothing to adapt by default", secondary=secondary,
                       hint='name `targets = ["embed"]` (the token embedding; lora only), or train all weights')
        if names is not None:
            for what, items in (("targets", targets), ("feedforward", ff)):
                for t, span in items:
                    if names.matches(t):
                        continue
                    close = names.did_you_mean(t)
                    yield make("FTP250", f"`{b.kind} {name}`: {call.name}({what}) `{t}` names no module of "
                                         f"{names.what}", span,
                               label=f"did you mean `{close}`?" if close else "no such module",
                               secondary=secondary,
                               hint=(f"did you mean `{close}`? " if close else "")
                               + f"adaptable modules: {_shown(names)}")
        if call.name == "ia3" and targets and ff:
            tset = {t for t, _ in targets}
            for t, span in ff:
                if t not in tset:
                    yield make("FTP251", f"`{b.kind} {name}`: ia3(feedforward) `{t}` is not among its targets",
                               span, label="not in targets",
                               hint=f"add `{t}` to targets, or drop it from feedforward (feed-forward modules "
                                    "are a subset of the targets)")


def prefix_support(ctx):
    """FTP251: prefix-tuning needs a decoder or encoder-decoder language model."""
    prog = ctx.program
    for name, b, call, o in _adapted(prog):
        if call.name != "prefix":
            continue
        mb = prog.blocks[o.name]
        task = mb.value("task")
        arch = mb.value("arch")
        own = o.source == "arch" and isinstance(arch, CallV) and arch.name in _OWN_NETS
        tname = task.name if isinstance(task, CallV) else None
        if not own and (tname is None or tname in _PREFIX_TASKS):
            continue
        what = f"`{arch.name}`, an ftdsl net without attention caches" if own else f"a `{tname}` model"
        yield make("FTP251", f"`{b.kind} {name}`: prefix-tuning needs a causal_lm or seq2seq language model; "
                             f"`{o.name}` is {what}", call.span,
                   label="peft cannot prefix-tune this model",
                   secondary=(Label(o.span, "the model"),) if o.span is not None else (),
                   hint="use `lora = lora(...)` or `ia3()`; prefix-tuning fits `causal_lm` (gpt, llama) and "
                        "`seq2seq` (t5) models")


def gradient_checkpointing(ctx):
    """FTP252: gradient checkpointing is a transformers switch; ftdsl's own nets have none."""
    prog = ctx.program
    memo: dict = {}
    for name, b in prog.blocks.items():
        ref = _MODEL_REF.get(b.kind)
        v = b.value("gradient_checkpointing") if ref else None
        if not (isinstance(v, Lit) and v.value is True):
            continue
        mref = b.value(ref)
        o = origin(prog, mref.target, memo) if isinstance(mref, RefV) else None
        arch = prog.blocks[o.name].value("arch") if o is not None and o.source == "arch" else None
        if isinstance(arch, CallV) and arch.name in _OWN_NETS:
            yield make("FTP252", f"`{b.kind} {name}`: gradient_checkpointing needs a transformers model; "
                                 f"`{o.name}` is an ftdsl `{arch.name}`", v.span, label="no effect on this model",
                       secondary=(Label(o.span, f"arch = {arch.name}(...)"),) if o.span is not None else (),
                       hint="drop `gradient_checkpointing`, or use a pretrained model or gpt/llama/t5")


def load_in(ctx):
    """FTP253: k-bit loading of a pretrained base needs bitsandbytes and a CUDA device."""
    prog = ctx.program
    device = prog.setting("device", "auto")
    for name, b in prog.blocks.items():
        if b.kind != "model":
            continue
        v = b.value("load_in")
        bits = v.value if isinstance(v, Lit) else (v.name if isinstance(v, Sym) else None)
        if bits not in ("int8", "int4"):
            continue
        pre = b.value("pretrained")
        if isinstance(b.value("arch"), CallV) and not (isinstance(pre, Lit) and isinstance(pre.value, str)):
            yield make("FTP253", f"`model {name}`: load_in = {bits} loads a pretrained base; this model is built "
                                 "from scratch", v.span, label="not a pretrained model",
                       hint="drop `load_in` (k-bit loading is for adapters on a large pretrained model)")
            continue
        why = capabilities.kbit_problem(device)
        if why:
            yield make("FTP253", f"`model {name}`: load_in = {bits} cannot load here: {why}", v.span,
                       label="needs bitsandbytes on CUDA",
                       hint="load_in = full (train adapters on the full-precision base), or run on a CUDA machine "
                            "with `pip install bitsandbytes`")


def _adapter_of(prog, name: str) -> str | None | bool:
    """The adapter method a stage's model carries (`lora`, `prefix`, ...), None for plain weights,
    False when unknown (a sweep chooses its trial's settings)."""
    b = prog.blocks.get(name)
    if b is None or b.kind == "sweep":
        return False
    if b.kind not in _MODEL_REF:
        return None  # a model block, prune, quantize: plain weights
    call = b.value("lora")
    return call.name if isinstance(call, CallV) else None


_MERGING = {"prune": "prune", "quantize": "quantize", "train": "train further", "distill": "distill into"}


def adapter_exports(ctx):
    """FTP243: `format = adapter` / `hf(merge = false)` of a model trained without an adapter.
    FTP251: a prefix-tuned model where its weights would be merged (other exports, prune, quantize,
    a further training stage): prefix-tuning has no weights to merge into."""
    prog = ctx.program
    for name, b in prog.blocks.items():
        if b.kind == "export":
            src, fmt = b.value("from"), b.value("format")
            if not isinstance(src, RefV) or not isinstance(fmt, CallV):
                continue
            method = _adapter_of(prog, src.target)
            merge = fmt.get("merge")
            keeps = fmt.name == "adapter" or (fmt.name == "hf" and isinstance(merge, Lit) and merge.value is False)
            if keeps and method is None:
                shown = "format = adapter" if fmt.name == "adapter" else "hf(merge = false)"
                yield make("FTP243", f"`export {name}`: `{shown}` writes an adapter, but `{src.target}` was not "
                                     "trained with one", fmt.span or src.span, label="no adapter to write",
                           hint=f"train `{src.target}` with `lora = lora(...)`, or export `format = hf` "
                                "(the whole model)")
            elif not keeps and method == "prefix":
                yield make("FTP251", f"`export {name}`: `{src.target}` is prefix-tuned, which has no weights to "
                                     f"merge into a `{fmt.name}` export", fmt.span or src.span,
                           label="needs merged weights",
                           hint="export `format = adapter` or `hf(merge = false)`; or train with lora/ia3")
            continue
        ref_attr = {"prune": "from", "quantize": "from", "train": "model", "distill": "student"}.get(b.kind)
        ref = b.value(ref_attr) if ref_attr else None
        if isinstance(ref, RefV) and _adapter_of(prog, ref.target) == "prefix":
            yield make("FTP251", f"`{b.kind} {name}`: `{ref.target}` is prefix-tuned, which has no weights to "
                                 f"merge; it cannot {_MERGING[b.kind]}", ref.span, label="prefix-tuned",
                       hint="train the earlier stage with lora/ia3 (they merge), or use the prefix-tuned model "
                            "in evaluate/predict and export it with `format = adapter`")
