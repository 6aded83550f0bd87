"""PEFT adapters (peft 0.21): `lora`, `adalora`, `ia3` and `prefix` built for a module, attached
for training, and kept apart from their base in the trained artifact.

Which peft task type a module gets follows its network: a Hugging Face model by the ftdsl task
(``classify``/``regress`` -> SEQ_CLS, ``token_classify`` -> TOKEN_CLS, ``causal_lm`` -> CAUSAL_LM,
``seq2seq`` -> SEQ_2_SEQ_LM; peft keeps the classifier of the first two trainable); a net of
``ftdsl.stages.nets`` gets no task type and ``modules_to_save = ["head"]``. Prefix-tuning needs a
model that takes past key values (decoders, encoder-decoders): anything else is FTP530 here and
FTP251 at lint.

Stored form of an adapter-trained TorchModel (``TorchModel.spec["adapter"]``)::

    spec["adapter"] = {
        "method": the lowered call (`{"$call": "lora", "r": 8, ...}`),
        "peft": the peft config as JSON (what adapter_config.json holds),
        "base": {"seed": the seed a from-scratch base was materialized with,
                 "fingerprint": digest of the base's weights (checked when rebuilt),
                 "weights": true when the base's own weights are stored below},
    }
    model.safetensors:
        adapter.<key>   peft's adapter state (get_peft_model_state_dict: adapters + modules_to_save)
        module.<name>   tensors of the FtdslModule outside its net (a features model's normalization)
        base.<name>     only for a base trained by an earlier stage: its whole state

The base is what the spec without ``adapter`` builds: the pretrained folder (``pretrained_path``)
or the from-scratch arch with the seed; a base trained before is stored. ``build`` rebuilds it,
checks the fingerprint (FTP503 when it no longer matches: the folder changed) and attaches the
adapter; ``merged`` folds the adapter into plain weights for the stages that need them (ONNX and
other exports, prune, quantize, a further train stage).
"""

from __future__ import annotations

import hashlib
import json
import warnings
from typing import Any

import torch
from torch import nn

from ftdsl.errors import StageError

__all__ = ["HF_TASK_TYPES", "attach", "adapter_weights", "build", "merged", "check_weights", "is_hf",
           "peft_config_dict", "save_adapter_folder", "check_load_in", "is_kbit"]

# ftdsl task -> peft TaskType name, for Hugging Face models
HF_TASK_TYPES = {"classify": "SEQ_CLS", "regress": "SEQ_CLS", "token_classify": "TOKEN_CLS",
                 "causal_lm": "CAUSAL_LM", "seq2seq": "SEQ_2_SEQ_LM"}
# the task heads a pretrained model gets fresh (DistilBERT's pre_classifier, BART's
# classification_head too): trained with the adapter, and not part of the base's fingerprint
HF_HEADS = ("classifier", "score", "pre_classifier", "classification_head")
_HEADS = (*HF_HEADS, "head")
_PROMPT = ("prefix",)  # prompt-learning methods: no merge, no modules to adapt


def is_hf(module: nn.Module) -> bool:
    """Whether the module's net is a transformers model (has a config with a model_type)."""
    net = getattr(module, "net", module)
    return isinstance(getattr(getattr(net, "config", None), "model_type", None), str)


def _linear_targets(net: nn.Module) -> list[str]:
    """Default targets of a from-scratch ftdsl net: its Linear layers, except the head and the
    projections inside nn.MultiheadAttention (which bypasses their forward)."""
    mha = [n for n, m in net.named_modules() if isinstance(m, nn.MultiheadAttention)]
    return [n for n, m in net.named_modules()
            if isinstance(m, nn.Linear) and n != "head" and not any(n.startswith(p + ".") for p in mha)]


def _task_type(module: nn.Module, task: str):
    import peft

    if not is_hf(module):
        return None
    return getattr(peft.TaskType, HF_TASK_TYPES.get(task, "SEQ_CLS"))


def peft_config(module: nn.Module, call: dict, task: str, total_steps: int):
    """The peft config of adapter ``call`` (a lowered, completed `lora`/`adalora`/`ia3`/`prefix` call)."""
    import peft

    method = call["$call"]
    hf = is_hf(module)
    tt = _task_type(module, task)
    targets = list(call.get("targets") or []) or (None if hf else _linear_targets(module.net))
    if targets == [] and method != "prefix":
        embeds = [n for n, m in module.net.named_modules() if isinstance(m, nn.Embedding)]
        raise StageError("FTP510", f"{method}(...): this model has no Linear layer to adapt besides its head "
                                   "(recurrent cells are not adapted)",
                         hint=(f"name `targets = [\"{embeds[0]}\"]` (the token embedding; lora only)" if embeds
                               else "train all weights (drop `lora`)"))
    common: dict[str, Any] = {"task_type": tt}
    if not hf:
        common["modules_to_save"] = ["head"]
    elif task in ("classify", "regress", "token_classify"):
        common["modules_to_save"] = list(HF_HEADS)  # peft's SEQ_CLS default has classifier and score only
    if method == "lora":
        return peft.LoraConfig(r=int(call["r"]), lora_alpha=float(call["alpha"]), lora_dropout=float(call["dropout"]),
                               target_modules=targets, **common)
    if method == "adalora":
        tinit, tfinal = total_steps // 10, total_steps // 5
        if tinit >= total_steps - tfinal:
            tinit, tfinal = 0, 0
        # peft's last step (total_step - tfinal) masks by the importance scores of the steps before:
        # a one-step run must not reach it with none
        return peft.AdaLoraConfig(init_r=int(call["r"]), target_r=int(call["target_r"]), total_step=max(2, total_steps),
                                  tinit=tinit, tfinal=tfinal, target_modules=targets, **common)
    if method == "ia3":
        ff = call.get("feedforward")
        if targets is not None and ff is None:
            ff = []  # targets written, none named feed-forward
        if targets is not None and not set(ff or ()) <= set(targets):
            extra = sorted(set(ff) - set(targets))
            raise StageError("FTP510", f"ia3(feedforward = {extra}): feed-forward modules must be among `targets`",
                             hint="add them to targets, or drop them from feedforward")
        return peft.IA3Config(target_modules=targets, feedforward_modules=ff, **common)
    if method == "prefix":
        if not hf or tt not in (peft.TaskType.CAUSAL_LM, peft.TaskType.SEQ_2_SEQ_LM):
            what = "a from-scratch ftdsl net" if not hf else f"a {task} model"
            raise StageError("FTP530", f"prefix-tuning needs a decoder or encoder-decoder language model "
                                       f"(causal_lm, seq2seq); this is {what}",
                             hint="use `lora = lora(...)` or `ia3(...)` for this model")
        return peft.PrefixTuningConfig(num_virtual_tokens=int(call["tokens"]), **common)
    raise TypeError(f"unknown adapter {method!r}")  # the schema guarantees a known one (FTP215)


def _fingerprint(net: nn.Module) -> str:
    """A digest of the base's weights: names, shapes, dtypes and the exact bytes of a sample of
    each tensor (its ends, its middle and an even stride through it), taken where the tensor lives
    (no copy of a large model to the host). Heads are left out (peft trains its own copy; a
    pretrained model's fresh head is random)."""
    h = hashlib.sha256()
    for k, v in sorted(net.state_dict().items()):
        if not isinstance(v, torch.Tensor) or any(p in _HEADS for p in k.split(".")):
            continue
        h.update(f"{k}:{tuple(v.shape)}:{v.dtype};".encode())
        t = v.detach().reshape(-1)
        n = t.numel()
        if n == 0:
            continue
        if n > 65536:
            t = torch.cat([t[:4096], t[n // 2:n // 2 + 4096], t[-4096:], t[:: n // 4096]])
        t = t.to("cpu").contiguous()
        h.update((t.view(torch.uint8) if t.element_size() == 1 else t.float() if t.dtype == torch.bfloat16
                  else t).numpy().tobytes())
    return h.hexdigest()


def attach(module: nn.Module, call: dict, task: str, total_steps: int, *, seed: int,
           base_weights: dict[str, torch.Tensor] | None = None) -> None:
    """Wrap ``module.net`` in a peft model for ``call``; remember what rebuilds the base
    (``module._ftdsl_adapter``). ``base_weights``: the base's own state when it was trained
    before (stored with the adapter)."""
    import peft

    from ftdsl.stages.pretrained import quiet_transformers

    cfg = peft_config(module, call, task, total_steps)
    kbit = is_kbit(module)
    if kbit:  # norms in fp32, input gradients on: what peft needs to train on a k-bit base
        module.net = peft.prepare_model_for_kbit_training(module.net, use_gradient_checkpointing=False)
    if not is_hf(module):
        _check_scratch_targets(module.net, call)
    # a k-bit base's packed weights are bitsandbytes tensors: its folder is not fingerprinted
    info = {"seed": int(seed), "fingerprint": None if kbit else _fingerprint(module.net),
            "base_weights": base_weights}
    try:
        with quiet_transformers(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # transformers deprecations peft triggers
            module.net = peft.get_peft_model(module.net, cfg)
    except ValueError as e:
        names = [n for n, m in module.net.named_modules() if n and isinstance(m, nn.Linear)][:8]
        targets = call.get("targets")
        raise StageError("FTP510", f"{call['$call']}(targets = {targets}): {str(e).splitlines()[0]}",
                         hint="targets are module names such as " + ", ".join(n.rsplit('.', 1)[-1] for n in names)
                         + " (`ftdsl lint` lists them for known models)") from e
    module._ftdsl_adapter = info
    _no_fast_path(module.net)
    if call["$call"] in _PROMPT:
        _quiet_prefix()
        _probe(module, call)


def _check_scratch_targets(net: nn.Module, call: dict) -> None:
    """nn.MultiheadAttention computes with its projections' weights, never calling their forward:
    an adapter there would be silently ignored (FTP510)."""
    mha = [n for n, m in net.named_modules() if isinstance(m, nn.MultiheadAttention)]
    for t in call.get("targets") or ():
        inside = [n for n, _ in net.named_modules()
                  if (n == t or n.endswith("." + t)) and any(n.startswith(p + ".") for p in mha)]
        if inside:
            raise StageError("FTP510", f"{call['$call']}(targets = [{t!r}]): `{inside[0]}` is inside "
                                       "nn.MultiheadAttention, which does not call it (an adapter there does nothing)",
                             hint="target the feed-forward layers `linear1`, `linear2` (the default adapts every "
                                  "Linear layer outside attention)")


def _no_fast_path(net: nn.Module) -> None:
    """nn.TransformerEncoderLayer's inference fast path reads linear1/linear2's weights directly and
    would skip an adapter on them: keep an adapted net on the ordinary path (same numbers)."""
    for m in net.modules():
        if isinstance(m, nn.TransformerEncoderLayer):
            m.activation_relu_or_gelu = 0


def _quiet_prefix() -> None:
    """peft hands prefix-tuning's virtual keys/values to the model as `past_key_values`, which
    transformers 5 calls deprecated on every forward: not the user's concern."""
    warnings.filterwarnings("ignore", message=r".*`past_key_values` is deprecated.*", category=FutureWarning)


def _probe(module: nn.Module, call: dict) -> None:
    """Prefix-tuning fails only in the forward of a model without past key values: try one."""
    net = module.net
    dev = next(net.parameters()).device
    ids = torch.ones((1, 2), dtype=torch.long, device=dev)
    kw = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if getattr(net.config, "is_encoder_decoder", False):
        kw["decoder_input_ids"] = ids
    try:
        with torch.no_grad():
            net(**kw)
    except ValueError as e:
        raise StageError("FTP530", f"prefix-tuning cannot adapt this model: {str(e).splitlines()[0]}",
                         hint="use `lora = lora(...)` or `ia3(...)`") from e


def peft_config_dict(net) -> dict:
    """The attached adapter's config as JSON (what adapter_config.json holds)."""
    cfg = net.peft_config[getattr(net, "active_adapter", "default")]
    d = cfg.to_dict()
    return json.loads(json.dumps(d, default=lambda v: sorted(v) if isinstance(v, (set, frozenset)) else str(v)))


def adapter_weights(module: nn.Module, call: dict, spec: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """(weights, spec) of the trained artifact: the adapter apart from its base (module docstring)."""
    import peft

    info = getattr(module, "_ftdsl_adapter", None) or {}
    net = module.net
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # AdaLoRA ranks pruned to 0 read as "unsharded FSDP" to peft
        state = peft.get_peft_model_state_dict(net)
    weights = {f"adapter.{k}": v for k, v in state.items()}
    for k, v in module.state_dict().items():
        if not k.startswith("net."):
            weights[f"module.{k}"] = v
    if info.get("base_weights") is not None:
        weights.update({f"base.{k}": v for k, v in info["base_weights"].items()})
    weights = {k: v.detach().to("cpu").contiguous().clone() for k, v in weights.items()}
    spec = {**spec, "adapter": {
        "method": dict(call), "peft": peft_config_dict(net),
        "base": {"seed": int(info.get("seed", spec.get("seed", 0))), "fingerprint": info.get("fingerprint"),
                 "weights": info.get("base_weights") is not None}}}
    return weights, spec


def _parts(weights: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    n = len(prefix)
    return {k[n:]: v for k, v in weights.items() if k.startswith(prefix)}


def base_artifact(art):
    """The TorchModel of the adapter's base (the spec without ``adapter``)."""
    TorchModel = type(art)  # not imported: torch_model imports this module
    ad = art.spec["adapter"]
    spec = {k: v for k, v in art.spec.items() if k != "adapter"}
    spec["seed"] = int(ad["base"].get("seed", spec.get("seed", 0)))
    weights = _parts(art.state_dict() or {}, "base.") if ad["base"].get("weights") else None
    return TorchModel(spec, weights or None, tokenizer_dir=art.tokenizer_dir, hf_config=art.hf_config,
                      metrics=art.metrics)


def _peft_config_from(d: dict):
    import peft

    d = dict(d)
    d.pop("peft_version", None)
    return peft.PeftConfig.from_peft_type(**d) if hasattr(peft.PeftConfig, "from_peft_type") else \
        peft.get_peft_config(d)


def build(art) -> nn.Module:
    """The FtdslModule of an adapter-trained artifact: its base rebuilt, the adapter attached."""
    import peft

    from ftdsl.stages.pretrained import quiet_transformers

    ad = art.spec["adapter"]
    weights = art.state_dict()
    if weights is None:
        raise StageError("FTP503", "an adapter-trained model has no weights")
    base = base_artifact(art)
    module = base.build(load_weights=True) if base.trained else fresh_base(base)
    extras = _parts(weights, "module.")
    if extras:
        module.load_state_dict({**module.state_dict(), **extras}, strict=True)
    want = ad["base"].get("fingerprint")
    if not ad["base"].get("weights") and want and _fingerprint(module.net) != want:
        raise StageError("FTP503", "the base of this adapter-trained model is not the one it was trained on "
                                   f"({_base_name(art)} changed since)",
                         hint="rerun the train stage with --force")
    cfg = _peft_config_from(ad["peft"])
    cfg.inference_mode = False
    if cfg.is_prompt_learning:
        _quiet_prefix()
    # AdaLoRA's final rank pattern resizes the modules when the state loads, not when they are made
    pattern = getattr(cfg, "rank_pattern", None) if cfg.peft_type == peft.PeftType.ADALORA else None
    if pattern is not None:
        cfg.rank_pattern = None
    with quiet_transformers(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module.net = peft.get_peft_model(module.net, cfg)
        if pattern is not None:
            module.net.peft_config[module.net.active_adapter].rank_pattern = pattern
        res = peft.set_peft_model_state_dict(module.net, _parts(weights, "adapter."))
    # prompt learning: peft loads `prompt_embeddings` into the prompt encoder itself, after the
    # generic load that reports them as unexpected / missing
    unexpected = [k for k in (getattr(res, "unexpected_keys", []) or []) if k != "prompt_embeddings"]
    missing = [k for k in (getattr(res, "missing_keys", []) or [])
               if _adapter_key(k) and not (k.startswith("prompt_encoder.") and cfg.is_prompt_learning)]
    if unexpected or missing:
        raise StageError("FTP503", f"adapter weights do not fit the model (missing {missing[:3]}, "
                                   f"unexpected {unexpected[:3]})", hint="rerun the stage that produced them with --force")
    module._ftdsl_adapter = {"seed": ad["base"].get("seed"), "fingerprint": want, "base_weights": None}
    _no_fast_path(module.net)
    module.eval()
    return module


def _adapter_key(k: str) -> bool:
    return any(s in k for s in ("lora_", "ia3_", "prompt_encoder", "modules_to_save"))


def fresh_base(base) -> nn.Module:
    """An untrained base: the pretrained folder's weights, or the seeded from-scratch init."""
    if base.spec["source"] == "pretrained":
        return base.build(load_weights=False)
    return base._skeleton()


def _base_name(art) -> str:
    s = art.spec
    return f"pretrained model {s.get('pretrained_path') or s.get('pretrained')}" if s.get("source") == "pretrained" \
        else f"the {(s.get('arch') or {}).get('$call', 'model')} initialization"


def merged(art):
    """A plain TorchModel (no adapter): the adapter folded into the base's weights. Prefix-tuning
    has no weights to fold into: FTP530."""
    from ftdsl.stages.pretrained import quiet_transformers

    TorchModel = type(art)  # not imported: torch_model imports this module
    ad = art.spec["adapter"]
    method = ad["method"]["$call"]
    if method in _PROMPT:
        raise StageError("FTP530", f"a {method}-tuned model has no weights to merge its adapter into",
                         hint="export it with `format = adapter` (or `hf(merge = false)`), or train with lora/ia3")
    if art.spec.get("load_in"):  # a k-bit base: merge into the full-precision weights (QLoRA's practice)
        art = TorchModel({k: v for k, v in art.spec.items() if k != "load_in"}, art.state_dict(),
                         tokenizer_dir=art.tokenizer_dir, hf_config=art.hf_config, metrics=art.metrics)
    module = build(art)
    with quiet_transformers(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module.net = module.net.merge_and_unload()
    del module._ftdsl_adapter
    spec = {k: v for k, v in art.spec.items() if k != "adapter"}
    spec["merged_adapter"] = method
    hf_config = module.net.config if is_hf(module) else art.hf_config
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in module.state_dict().items()}
    return TorchModel(spec, state, tokenizer_dir=art.tokenizer_dir, hf_config=hf_config, metrics=art.metrics)


def check_weights(art, weights: dict[str, torch.Tensor], path, check_finite) -> None:
    """What ``TorchModel.load`` can check of an adapter artifact without building it: the adapter
    tensors are there (FTP503) and finite (FTP507, ``check_finite`` of torch_model); their shapes
    are checked when it is built."""

    if not any(k.startswith("adapter.") for k in weights):
        raise StageError("FTP503", f"weights {path} hold no adapter tensors",
                         hint="rerun the stage that produced them with --force")
    bad = [k for k in weights if not k.startswith(("adapter.", "module.", "base."))]
    if bad:
        raise StageError("FTP503", f"weights {path} hold unexpected tensors {bad[:3]}",
                         hint="rerun the stage that produced them with --force")
    check_finite(weights, path)


def save_adapter_folder(art, folder) -> nn.Module:
    """Write the adapter as a PEFT folder (adapter_config.json + adapter_model.safetensors) that
    ``PeftModel.from_pretrained(base, folder)`` loads; returns the built module."""
    from ftdsl.stages.pretrained import quiet_transformers

    module = build(art)
    net = module.net
    cfg = net.peft_config[net.active_adapter]
    if art.spec.get("source") == "pretrained":
        cfg.base_model_name_or_path = str(art.spec.get("pretrained") or "")
    with quiet_transformers(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net.save_pretrained(str(folder))
    return module


def is_kbit(module: nn.Module) -> bool:
    net = getattr(module, "net", module)
    return bool(getattr(net, "is_loaded_in_8bit", False) or getattr(net, "is_loaded_in_4bit", False))


def check_load_in(load_in: str | None, device: str) -> None:
    """`load_in = int8|int4` needs bitsandbytes and a CUDA device: FTP530 otherwise (lint: FTP253)."""
    if not load_in or load_in == "full":
        return
    from ftdsl.capabilities import kbit_problem

    why = kbit_problem(device)
    if why:
        raise StageError("FTP530", f"load_in = {load_in}: {why}",
                         hint="use load_in = full (train adapters on the full-precision base), or run on a "
                              "CUDA machine with `pip install bitsandbytes`")
