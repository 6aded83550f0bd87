"""What a training run reports and returns: evaluation on a split (sharded across DDP ranks), the
final metrics, and the trained TorchModel (FSDP's shards gathered into ordinary weights)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ftdsl.stages import metrics as M
from ftdsl.stages.model_card import training_record
from ftdsl.stages.torch_model import TorchModel
from ftdsl.stages.train_parallel import load_model_state

__all__ = ["evaluate", "finish", "weights_on_cpu"]


@torch.no_grad()
def evaluate(trainer, split_name: str) -> dict[str, float]:
    if getattr(trainer, "seq_task", None) is not None:  # token tasks: the task's statistics and metrics
        from ftdsl.stages import train_seq

        return train_seq.evaluate(trainer, split_name)
    split = trainer.splits[split_name]
    par = trainer.parallel
    # DDP: rank r evaluates batches r, r+W, ...; the batches' outputs are gathered to every
    # rank in their order, so each rank computes the metrics one process would. (FSDP's
    # forward is a collective: there every rank evaluates every batch, in step.)
    shard = par.active and par.mode == "ddp"
    trainer.module.eval()
    parts = []  # (batch number, outputs, labels, summed loss)
    try:
        # metrics do not depend on the row order: text batches go longest first (less padding)
        for i, b in enumerate(trainer._batches(split, shuffle=False, by_length=True)):
            if shard and i % par.world != par.rank:
                continue
            y = b["y"].to(trainer.device)
            with trainer._autocast():
                out = trainer.module(**trainer._inputs(b))
            out = out.float()
            parts.append((i, out.cpu().numpy(), b["y"].numpy(), float(trainer.criterion(out, y)) * len(y)))
    finally:
        trainer.module.train()
    if shard:
        parts = sorted((p for ps in par.gather(parts) for p in ps), key=lambda p: p[0])
    outs, ys = [p[1] for p in parts], [p[2] for p in parts]
    loss_sum = 0.0
    for p in parts:
        loss_sum += p[3]
    n = max(1, len(split))
    if not outs:
        return {}
    pred, y = np.concatenate(outs), np.concatenate(ys)
    if trainer.task == "classify":
        res = M.classification_metrics(pred, y, trainer.num_outputs)
    else:
        res = M.regression_metrics(pred, y)
    res["loss"] = loss_sum / n
    return res


def finish(trainer, step: int, has_valid: bool, seconds: float) -> TorchModel:
    st, par = trainer.state, trainer.parallel
    restored = False
    if st.best_state is not None and st.best is not None and st.best["step"] != step:
        load_model_state(par, trainer.module, st.best_state)
        restored = True
        trainer.log(f"restored the best weights: {st.best['metric']} {st.best['value']:.6g} "
                 f"at step {st.best['step']}")
    final: dict[str, Any] = {}
    train_recs = [r for r in trainer.writer.records if r.get("split") == "train"]
    if train_recs:
        final["train.loss"] = train_recs[-1]["loss"]
    if has_valid:
        if not restored and st.last_eval is not None and st.last_eval["step"] == step:
            res = st.last_eval["metrics"]
        else:
            res = trainer.evaluate("valid")
        final.update({f"valid.{k}": v for k, v in res.items()})
    if "test" in trainer.splits and len(trainer.splits["test"]) > 0:
        res = trainer.evaluate("test")
        trainer.writer.log(st.best["step"] if restored else step, "test", **res)
        final.update({f"test.{k}": v for k, v in res.items()})
    final["steps"] = step
    final["epochs"] = round(step / trainer.steps_per_epoch, 4)
    if st.best is not None:
        final["best_step"] = st.best["step"]
    final["stopped_early"] = bool(st.stopped)
    final["train_seconds"] = round(seconds, 3)
    final["samples_per_s"] = round(st.samples / seconds, 2) if seconds > 0 else 0.0
    if par.active:
        final["world_size"] = par.world
    fsdp = par.active and par.mode == "fsdp"
    # FSDP: the shards gathered to rank 0 as ordinary tensors (the others get nothing)
    weights = par.full_model_state(trainer.module) if fsdp else None
    module = trainer.module
    module.eval()
    trainer.writer.finalize({**final, "precision": trainer.precision, "precision_reason": trainer.precision_reason})
    headline = ("train.loss", "valid.loss", "valid.accuracy", "valid.f1", "valid.mse", "valid.perplexity",
                "test.accuracy", "test.f1", "test.mse", "test.perplexity")
    trainer.ctx.reporter.finish(**{k: final[k] for k in headline if k in final})
    spec = {**trainer.spec, "trained_by": trainer.ctx.name, "precision": trainer.precision, "steps": step}
    spec.update(training_record(trainer.data, trainer.attrs))  # data and settings, for an export's model card
    hf_config = module.net.config if getattr(module, "hf", False) else None
    if weights is None:
        weights = module.state_dict()
    weights = {k: v.detach().to("cpu").contiguous().clone() for k, v in weights.items()}
    if trainer.lora:  # the adapter apart from its base, which the spec rebuilds (ftdsl.stages.adapters)
        from ftdsl.stages.adapters import adapter_weights

        weights, spec = adapter_weights(module, trainer.lora, spec)
    return TorchModel(spec, weights, tokenizer_dir=trainer.tokenizer_dir, hf_config=hf_config,
                      metrics={k: v for k, v in final.items() if isinstance(v, (int, float))})

def weights_on_cpu(trainer) -> dict[str, torch.Tensor]:
    """A CPU copy of the current weights (FSDP: gathered; a collective every rank calls)."""
    return {k: v.detach().to("cpu").clone() for k, v in trainer.parallel.full_model_state(trainer.module).items()}
