"""From-scratch transformers architectures: ``gpt(...)``, ``llama(...)``, ``t5(...)``.

Each registry entry turns the lowered arch call plus the vocabulary of the data's trained tokenizer
(size, pad / bos / eos ids) into a transformers config; :func:`materialize` builds the model from
that config with the seed (transformers initializes from the global torch RNG, so the same seed
gives the same weights) and wraps it in a :class:`~ftdsl.stages.tasks.module.SeqModule`.

The spec a TorchModel keeps for such a model (``spec["arch"]``, ``vocab_size``, ``pad_id``,
``bos_id``, ``eos_id``, ``task``, ``modality``) is everything :func:`build_config` needs, so
``TorchModel.load/build`` rebuild the same module; the trained artifact also saves the config
itself (``hf_config/``), which exports and ``from_pretrained`` read.

No constructor here has a default: the schema (``ftdsl/ir/schema``) declares the arguments and
``complete_call`` fills what a lowered call leaves out.
"""

from __future__ import annotations

from typing import Any, Callable

from ftdsl.errors import StageError

__all__ = ["HF_ARCHS", "ARCH_TASK", "is_hf_arch", "build_config", "materialize"]


def _divides(arch: str, width: int, heads: int) -> None:
    if width % heads:
        raise StageError("FTP510", f"{arch}(width = {width}, heads = {heads}): the width must be divisible by heads",
                         hint=f"use width = {max(heads, width - width % heads)} or heads that divide {width}")


def _gpt(a: dict, ids: dict, transformers) -> Any:
    _divides("gpt", int(a["width"]), int(a["heads"]))
    p = float(a["dropout"])
    return transformers.GPT2Config(
        vocab_size=ids["vocab_size"], n_positions=int(a["max_len"]), n_embd=int(a["width"]),
        n_layer=int(a["layers"]), n_head=int(a["heads"]), resid_pdrop=p, embd_pdrop=p, attn_pdrop=p,
        pad_token_id=ids["pad_id"], bos_token_id=ids["bos_id"], eos_token_id=ids["eos_id"])


def _llama(a: dict, ids: dict, transformers) -> Any:
    width, heads = int(a["width"]), int(a["heads"])
    _divides("llama", width, heads)
    kv = int(a["kv_heads"]) if a.get("kv_heads") is not None else heads
    if heads % kv:
        raise StageError("FTP510", f"llama(heads = {heads}, kv_heads = {kv}): heads must be a multiple of kv_heads",
                         hint="use kv_heads that divides heads (1, 2, ... or heads itself)")
    ff = int(a["ff"]) if a.get("ff") is not None else 4 * width
    return transformers.LlamaConfig(
        vocab_size=ids["vocab_size"], hidden_size=width, intermediate_size=ff, num_hidden_layers=int(a["layers"]),
        num_attention_heads=heads, num_key_value_heads=kv, max_position_embeddings=int(a["max_len"]),
        rope_theta=float(a["rope_theta"]), tie_word_embeddings=False,
        pad_token_id=ids["pad_id"], bos_token_id=ids["bos_id"], eos_token_id=ids["eos_id"])


def _t5(a: dict, ids: dict, transformers) -> Any:
    width, heads = int(a["width"]), int(a["heads"])
    head_dim = int(a["head_dim"]) if a.get("head_dim") is not None else None
    if head_dim is None:
        _divides("t5", width, heads)
        head_dim = width // heads
    return transformers.T5Config(
        vocab_size=ids["vocab_size"], d_model=width, d_kv=head_dim, d_ff=int(a["ff"]), num_layers=int(a["layers"]),
        num_decoder_layers=int(a["layers"]), num_heads=heads, dropout_rate=float(a["dropout"]),
        pad_token_id=ids["pad_id"], eos_token_id=ids["eos_id"], bos_token_id=ids["bos_id"],
        decoder_start_token_id=ids["pad_id"])


# arch name -> (lowered call, ids, transformers) -> a PretrainedConfig
HF_ARCHS: dict[str, Callable[[dict, dict, Any], Any]] = {"gpt": _gpt, "llama": _llama, "t5": _t5}
# the task each architecture's model is built for (its Auto class: the task's `auto_class`)
ARCH_TASK: dict[str, str] = {"gpt": "causal_lm", "llama": "causal_lm", "t5": "seq2seq"}


def is_hf_arch(name: str | None) -> bool:
    return name in HF_ARCHS


def build_config(spec: dict) -> Any:
    """The transformers config of a complete from-scratch spec (arch + vocabulary ids)."""
    from ftdsl.ir.lower import complete_call
    from ftdsl.stages.pretrained import quiet_transformers

    arch = complete_call(spec["arch"], "arch")
    if spec.get("vocab_size") is None:
        raise StageError("FTP530", f"arch = {arch['$call']}(...) has no vocabulary yet; train it first")
    ids = {"vocab_size": int(spec["vocab_size"]), "pad_id": spec.get("pad_id"), "bos_id": spec.get("bos_id"),
           "eos_id": spec.get("eos_id")}
    with quiet_transformers() as transformers:
        return HF_ARCHS[arch["$call"]](arch, ids, transformers)


def materialize(spec: dict, *, seed: int):
    """A fresh, seeded SeqModule for a complete from-scratch spec (then ``init`` applied)."""
    import torch

    from ftdsl.stages import nets
    from ftdsl.stages.pretrained import quiet_transformers
    from ftdsl.stages.tasks import get_task
    from ftdsl.stages.tasks.module import SeqModule

    cfg = build_config(spec)
    task = spec["task"]["$call"]
    if ARCH_TASK[spec["arch"]["$call"]] != task:
        raise StageError("FTP510", f"arch = {spec['arch']['$call']}(...) cannot carry task = {task}(...)",
                         hint=f"use task = {ARCH_TASK[spec['arch']['$call']]}()")
    torch.manual_seed(int(seed))
    with quiet_transformers() as transformers:
        net = getattr(transformers, get_task(task).auto_class).from_config(cfg, dtype=torch.float32)
    module = SeqModule(net, task=task, modality=spec.get("modality"))
    nets.apply_init(module.net, spec.get("init", "default"))
    return module
