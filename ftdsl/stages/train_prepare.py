"""Setting a trainer up before its first step: the data's shape (task, outputs, batches, total
steps), the distributed world's checks, and the model (pretrained, trained before or built from
the spec and the data), with its tokenizer, max length, frozen parameters and LoRA adapters.

Each function takes the trainer (``train._Trainer``) and sets its attributes; ``train`` owns the
loop that uses them.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from ftdsl.errors import StageError
from ftdsl.stages import train_seq
from ftdsl.stages.hf_archs import is_hf_arch, materialize as materialize_hf
from ftdsl.stages.modules import materialize
from ftdsl.stages.train_factories import call_of
from ftdsl.stages.adapters import is_kbit
from ftdsl.stages.train_setup import apply_lora, freeze as freeze_params, to_regression

__all__ = ["setup_data", "check_world", "setup_model"]


def check_world(t) -> None:
    """Under torchrun: the global batch divides among the ranks; LoRA is not sharded."""
    p = t.parallel
    if not p.active:
        return
    if t.batch % p.world:
        lo = t.batch - t.batch % p.world
        raise StageError(
            "FTP541", f"batch = {t.batch} is the global batch and does not divide among {p.world} processes",
            hint=f"use batch = {lo or p.world} or {lo + p.world}, or --nproc that divides {t.batch}")
    if p.mode == "fsdp" and t.attrs.get("lora"):
        raise StageError("FTP530", "lora with distributed = fsdp is not supported by this engine",
                         hint="use distributed = ddp (LoRA's trainable parameters are small enough to copy)")
    t.log(f"{p.mode}: {p.world} processes, {p.per_rank} rows per process of each global batch of "
         f"{t.batch}")


def setup_data(t) -> None:
    """The task, the splits, the global batch and the number of steps, checked against the model."""
    from ftdsl.stages.dataset import check_labels

    data, spec = t.data, t.art.spec
    if "train" not in data.splits or len(data.splits["train"]) == 0:
        raise StageError("FTP510", f"data from `{data.source}` has no (or an empty) `train` split")
    t.task = spec["task"]["$call"]
    t.seq_task = None
    if train_seq.is_seq_task(t.task):  # causal_lm, seq2seq, token_classify: the task object decides
        train_seq.check_data(t)
        t.splits = dict(data.splits)
    else:
        t.num_outputs = int(spec["task"]["labels"] if t.task == "classify" else spec["task"]["outputs"])
        check_labels(data, t.num_outputs, t.task)
        t.splits = dict(data.splits)
        if t.task == "regress":
            t.splits = {k: to_regression(data, v) for k, v in t.splits.items()}
    want = spec.get("modality")
    if t.seq_task is not None:
        pass  # the task checked the data's modality; the model takes the data's
    elif spec.get("source") == "pretrained" and data.modality != "text":
        raise StageError("FTP510", f"pretrained model {spec.get('pretrained')!r} takes text, but "
                         f"`{data.source}` has numeric features", hint="use arch = mlp(...) or cnn(...)")
    if want and want != data.modality and t.seq_task is None:
        arch = spec.get("arch", {}).get("$call")
        raise StageError("FTP510", f"arch = {arch}(...) takes {want}, but `{data.source}` has {data.modality}",
                         hint="use mlp/cnn for numeric features, rnn/transformer or a pretrained model for text")
    t.batch = int(t.attrs.get("batch") or 32)  # the global batch, all ranks together
    t.accumulate = max(1, int(t.attrs.get("accumulate") or 1))
    from ftdsl.stages.train_state import plan_steps

    plan_steps(t, len(t.splits["train"]))



def setup_model(t) -> None:
    """The module to train (and its tokenizer), on the device, frozen and adapted as asked."""
    art, data, ctx = t.art, t.data, t.ctx
    if getattr(art, "adapter", None):  # trained with an adapter before: train on its merged weights
        art = t.art = art.merged()
    spec = dict(art.spec)
    t.tokenizer = None
    t.tokenizer_dir = art.tokenizer_dir
    if spec["source"] == "pretrained":
        t.tokenizer = art.load_tokenizer()
        if t.tokenizer is None:
            raise StageError("FTP520", f"pretrained model {spec.get('pretrained')!r} has no tokenizer files")
        module = art.build()
    elif art.trained:
        shape = spec.get("input_shape")
        if data.modality == "features" and shape is not None and tuple(shape) != tuple(data.input_shape or ()):
            raise StageError("FTP510", f"model `{spec.get('trained_by', 'model')}` was trained on inputs of shape "
                             f"{tuple(shape)}, but `{data.source}` has {tuple(data.input_shape or ())}")
        module = art.build()
        if data.modality == "text" or t.seq_task is not None:
            t.tokenizer = art.load_tokenizer()
    else:  # from scratch: complete the spec from the data, then materialize with the seed
        spec["modality"] = data.modality
        spec["num_outputs"] = t.num_outputs
        if t.seq_task is not None:  # gpt, llama, t5: vocabulary and special ids from the data's tokenizer
            train_seq.from_scratch_spec(t, spec)
        elif data.modality == "text":
            if data.tokenizer_dir is None:
                raise StageError(
                    "FTP510", f"arch = {spec['arch']['$call']}(...) needs a vocabulary, but data "
                    f"`{data.source}` has no tokenizer", hint="add `tokenizer = wordpiece(vocab = 8000)` to the data block")
            from tokenizers import Tokenizer

            from ftdsl.stages.batching import pad_token_id

            # the raw tokenizers.Tokenizer: same ids as the transformers wrapper, without
            # importing transformers (seconds) for a from-scratch model
            t.tokenizer_dir = Path(data.tokenizer_dir)
            t.tokenizer = Tokenizer.from_file(str(t.tokenizer_dir / "tokenizer.json"))
            spec["vocab_size"] = t.tokenizer.get_vocab_size(with_added_tokens=True)
            spec["pad_id"] = pad_token_id(t.tokenizer)
        else:
            spec["input_shape"] = list(data.input_shape)
            spec["norm"] = data.norm_mean is not None
        if is_hf_arch(spec["arch"]["$call"]):
            module = materialize_hf(spec, seed=int(ctx.seed))
        else:
            module = materialize(spec, seed=int(ctx.seed), norm_mean=data.norm_mean, norm_std=data.norm_std)
    spec["label_names"] = data.label_names
    if t.seq_task is not None:
        spec["modality"] = module.modality = data.modality
    t.spec = spec
    t.max_length = _max_length(t, module)
    if t.max_length is not None:
        spec["max_length"] = t.max_length
    if t.seq_task is not None:
        train_seq.encode_splits(t)
    train_seq.gradient_checkpointing(t, module)
    if not is_kbit(module):  # a k-bit base is placed on its CUDA device when it loads (bitsandbytes)
        module.to(t.device)
    module.train()
    t.module = module
    freeze = list(t.attrs.get("freeze") or [])
    if freeze:
        n = freeze_params(module, freeze)
        t.log(f"froze {n:,} parameters matching {freeze}")
    t.lora = t.attrs.get("lora")
    if t.lora:
        t.lora = call_of(t.lora, "lora")
        apply_lora(module, t.lora, t.total_steps, task=t.task, seed=int(ctx.seed),
                   base_weights=art.state_dict() if art.trained else None)
        if not is_kbit(module):
            module.to(t.device)
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    total = sum(p.numel() for p in module.parameters())
    if trainable == 0:
        raise StageError("FTP510", "nothing to train: every parameter is frozen", hint="check `freeze`")
    t.log(f"{trainable:,} of {total:,} parameters trainable")


def _max_length(t, module: nn.Module) -> int | None:
    """The longest token sequence: the attribute or the data's, capped by the model and tokenizer."""
    if t.data.modality != "text" and t.seq_task is None:
        return None
    ml = t.attrs.get("max_length") or t.data.max_length
    limits = []
    if getattr(module, "hf", False):
        mpe = getattr(module.net.config, "max_position_embeddings", None)
        if isinstance(mpe, int):
            limits.append(mpe)
    elif t.spec.get("arch", {}).get("$call") == "transformer":
        limits.append(int(t.spec["arch"].get("max_len", 128)))
    tml = getattr(t.tokenizer, "model_max_length", None)
    if isinstance(tml, int) and tml < 1_000_000:
        limits.append(tml)
    if ml is None:
        return min(limits) if limits else None
    return min([int(ml), *limits])
