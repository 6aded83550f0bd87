"""The `model` stage: a model block's spec (SPEC §4). The artifact it returns is a
:class:`~ftdsl.stages.torch_model.TorchModel`.

An untrained ``pretrained`` model keeps only the resolved folder (``pretrained_path``); the train
stage reads the weights from there. An untrained ``arch`` model is a spec only: the train stage
completes it with the data's input shape / vocabulary and materializes it with the seed.

Modules of the model side: this one (the stage), :mod:`~ftdsl.stages.torch_model` (the artifact),
:mod:`~ftdsl.stages.modules` (the nn.Modules it builds, from-scratch materialization),
:mod:`~ftdsl.stages.pretrained` (where pretrained models come from and how they load),
:mod:`~ftdsl.stages.nets` (the from-scratch architectures). The names below are re-exported for
the stages and tests that import them from here.
"""

from __future__ import annotations

from pathlib import Path

from ftdsl.errors import StageError
from ftdsl.stages.artifacts import TOKENIZER_FILES
from ftdsl.stages.modules import FeaturesModule, FtdslModule, TextModule, materialize
from ftdsl.stages.pretrained import (OFFLINE_PACKAGES, check_pickle_weights, load_hf_model, quiet_transformers,
                                     resolve_pretrained, weights_format)
from ftdsl.stages.torch_model import FORMAT_VERSION, TorchModel

__all__ = [
    "TorchModel",
    "FtdslModule",
    "FeaturesModule",
    "TextModule",
    "FORMAT_VERSION",
    "OFFLINE_PACKAGES",
    "TOKENIZER_FILES",
    "quiet_transformers",
    "resolve_pretrained",
    "check_pickle_weights",
    "load_hf_model",
    "materialize",
    "run",
]


def run(inputs: dict[str, object], attrs: dict, ctx) -> TorchModel:
    """Write the model block's spec (weights stay where they are).

    The front end guarantees what this reads: a `task` constructor with a valid count, exactly one
    of `pretrained` / `arch` (FTP211), a known architecture (FTP215); defaults come from the schema.
    """
    from ftdsl.ir.lower import complete_attrs, complete_call
    from ftdsl.ir.schema.modality import ARCH_INPUTS, PRETRAINED_INPUTS, arch_modality
    from ftdsl.stages.hf_archs import is_hf_arch

    attrs = complete_attrs("model", attrs)
    task = complete_call(attrs["task"], "task")
    pretrained, arch = attrs["pretrained"], attrs["arch"]
    base = {"task": task, "init": attrs["init"], "trust_remote_code": bool(attrs["trust_remote_code"]),
            "revision": attrs["revision"], "seed": int(ctx.seed)}
    if attrs.get("load_in") not in (None, "full"):  # a k-bit base: bitsandbytes on CUDA (lint: FTP253)
        from ftdsl.stages.adapters import check_load_in

        check_load_in(attrs["load_in"], str(getattr(ctx, "device", "cpu")))
        base["load_in"] = attrs["load_in"]
    if arch is not None:
        arch = complete_call(arch, "arch")
        # gpt/llama/t5 take the data's modality (text, instructions, text_pairs) at train time
        modality = ARCH_INPUTS[arch["$call"]][0] if is_hf_arch(arch["$call"]) else arch_modality(arch["$call"])
        spec = {**base, "source": "arch", "arch": arch, "input_shape": None, "modality": modality, "norm": False}
        return TorchModel(spec)
    path, where = resolve_pretrained(str(pretrained), Path(ctx.pipeline_dir), attrs.get("revision"))
    use_safetensors = weights_format(path)
    if not use_safetensors:
        ctx.reporter.log(f"warning[FTP302]: {path} has pickle weights; loaded with torch.load(weights_only=True)")
    with quiet_transformers() as transformers:
        try:
            transformers.AutoConfig.from_pretrained(str(path), trust_remote_code=base["trust_remote_code"])
        except (OSError, ValueError, KeyError) as e:
            raise StageError("FTP520", f"cannot read the config of {pretrained!r} at {path}: {str(e).splitlines()[0]}") from e
    ctx.reporter.log(f"model {ctx.name}: {pretrained} from {where}")
    has_tok = any((path / f).is_file() for f in TOKENIZER_FILES)
    spec = {**base, "source": "pretrained", "pretrained": str(pretrained), "pretrained_path": str(path),
            "resolved_from": where, "use_safetensors": use_safetensors, "modality": PRETRAINED_INPUTS[0],
            "input_shape": None, "norm": False}
    return TorchModel(spec, tokenizer_dir=path if has_tok else None)
