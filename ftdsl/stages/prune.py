"""The `prune` stage: zero weights of a trained TorchModel, permanently, optionally fine-tune.

Methods (``method = ...``), all by ``torch.nn.utils.prune`` and made permanent with
``prune.remove`` (the artifact holds plain ``weight`` tensors with zeros; no ``weight_orig`` /
``weight_mask`` keys, no hooks):

* ``magnitude(amount)``: L1 unstructured, per layer: each pruned tensor loses the fraction
  ``amount`` of its entries with the smallest magnitude (``prune.l1_unstructured``).
* ``global_magnitude(amount)``: L1 unstructured over all pruned tensors at once
  (``prune.global_unstructured``): the fraction ``amount`` of all their entries, unevenly spread.
* ``structured(amount, what, criterion)``: removes whole attention heads, FFN rows, MLP units or
  CNN channels (``ftdsl.stages.prune_structured`` / ``prune_shrink``): the artifact is a smaller
  dense model whose spec records its shapes (``spec["shrunk"]``), so it is smaller on disk and
  faster, and every later stage loads it like any model.
  ``what = [..., vocab]`` also trims a pretrained model's vocabulary to what the train split of
  ``recover.data`` uses, and its tokenizer with it (``ftdsl.stages.prune_vocab``; never in ``all``).

``magnitude`` and ``global_magnitude`` store the zeros densely: no runtime ftdsl exports to
(PyTorch eager, ONNX Runtime on CPU) runs unstructured sparse weights faster, so the file keeps
its size and inference its speed; ``prune.json`` says so (``storage``).

What is pruned: the weights of every ``nn.Linear`` (including Hugging Face's ``Conv1D``) and
``nn.Conv1d/2d/3d``, and the packed input projection of ``nn.MultiheadAttention``. Not pruned:
embeddings, normalization layers, biases (except as above), and the output head (``head`` in
ftdsl's nets, ``classifier`` / ``score`` in Hugging Face models): it is small, and pruning it
costs the most accuracy for the least saving.

``recover = { epochs, data, batch, optimizer }`` fine-tunes the pruned model with the train
stage's loop (``train.fit``; resumable like a train stage) on ``recover.data`` (required: the
stage sees only the model, not the data it was trained on). The masks stay fixed: after every
optimizer step the pruned entries are set back to zero, so the result has exactly the sparsity
of the pruning. Recovery uses constant LR, the default loss of the task and the precision the
model was trained with.

Reports: ``out/<stage>/prune.json`` (per-layer and overall sparsity, method, before/after
recovery) and the artifact's ``metrics``: ``sparsity`` (zeros among the pruned tensors),
``model_sparsity`` (zeros among all parameters), ``pruned_params``, and after recovery the
train stage's ``valid.*`` / ``test.*`` metrics.
"""

from __future__ import annotations

import json
from typing import Any

import torch
from torch import nn
from torch.nn.utils import prune as tprune

from ftdsl.errors import StageError
from ftdsl.stages.modules import FtdslModule
from ftdsl.stages.torch_model import TorchModel

__all__ = ["run", "prune_targets", "apply_pruning", "sparsity_report", "HEAD_NAMES"]

# Output heads left dense: ftdsl nets name theirs `head`; transformers `classifier` / `score`.
HEAD_NAMES = ("head", "classifier", "score")


# --------------------------------------------------------------------------------------------
# Which tensors


def _is_hf_conv1d(m: nn.Module) -> bool:
    return type(m).__name__ == "Conv1D" and type(m).__module__.startswith("transformers")


def _in_head(name: str) -> bool:
    parts = name.split(".")
    # names are relative to the FtdslModule: `net.head`, `net.classifier.out_proj`, ...
    return any(p in HEAD_NAMES for p in parts)


def prune_targets(module: FtdslModule) -> list[tuple[str, nn.Module, str]]:
    """``(qualified name, module, parameter name)`` of every tensor the stage prunes."""
    out: list[tuple[str, nn.Module, str]] = []
    for name, m in module.named_modules():
        if _in_head(name):
            continue
        if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd)) or _is_hf_conv1d(m):
            if isinstance(getattr(m, "weight", None), nn.Parameter):
                out.append((f"{name}.weight", m, "weight"))
        elif isinstance(m, nn.MultiheadAttention):
            if m.in_proj_weight is not None:
                out.append((f"{name}.in_proj_weight", m, "in_proj_weight"))
            else:
                out += [(f"{name}.{p}", m, p) for p in ("q_proj_weight", "k_proj_weight", "v_proj_weight")]
    return out


# --------------------------------------------------------------------------------------------
# Pruning


def _method(call: Any) -> dict:
    if isinstance(call, str):
        call = {"$call": call}
    if not isinstance(call, dict) or call.get("$call") not in ("magnitude", "global_magnitude", "structured"):
        raise TypeError(f"unknown pruning method {call!r}")  # the schema guarantees a known one (FTP215)
    amount = call.get("amount")
    if not isinstance(amount, (int, float)) or isinstance(amount, bool) or not 0 < float(amount) < 1:
        raise StageError("FTP510", f"{call['$call']}(amount = {amount!r}): amount must be a fraction in (0, 1)")
    return dict(call)


def apply_pruning(module: FtdslModule, method: dict) -> dict[str, torch.Tensor]:
    """Prune ``module`` in place (``magnitude`` / ``global_magnitude``) and make it permanent;
    returns ``{param name: mask}`` (1 = kept) for every pruned tensor. ``structured`` removes units
    instead (``prune_structured.run_structured``)."""
    method = _method(method)
    if method["$call"] == "structured":
        raise ValueError("structured pruning removes units: ftdsl.stages.prune_structured.run_structured")
    targets = prune_targets(module)
    if not targets:
        raise StageError("FTP510", "nothing to prune: the model has no Linear or convolution layers outside its head")
    amount, kind = float(method["amount"]), method["$call"]
    if kind == "magnitude":
        for _, m, p in targets:
            tprune.l1_unstructured(m, p, amount=amount)
    elif kind == "global_magnitude":
        tprune.global_unstructured([(m, p) for _, m, p in targets], pruning_method=tprune.L1Unstructured,
                                   amount=amount)
    masks: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for qual, m, p in targets:
            mask = getattr(m, p + "_mask").detach().clone()
            tprune.remove(m, p)
            masks[qual] = mask
    leftover = [k for k in module.state_dict() if k.endswith(("_orig", "_mask"))]
    if leftover:  # pragma: no cover - prune.remove guarantees this
        raise RuntimeError(f"pruning left reparametrized tensors: {leftover[:3]}")
    return masks


def _apply_masks(params: dict[str, torch.Tensor], masks: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for name, mask in masks.items():
            params[name].mul_(mask)


def sparsity_report(state: dict[str, torch.Tensor], names: list[str]) -> dict[str, Any]:
    """Zeros per pruned tensor (``names``), over them all, and over every parameter."""
    layers: dict[str, dict] = {}
    zeros = total = 0
    for n in names:
        t = state[n]
        z, c = int((t == 0).sum()), t.numel()
        layers[n] = {"shape": list(t.shape), "zeros": z, "params": c, "sparsity": round(z / c, 6) if c else 0.0}
        zeros += z
        total += c
    all_zeros = all_total = 0
    for k, t in state.items():
        if t.is_floating_point() and k not in ("norm_mean", "norm_std") and not k.endswith(
                ("running_mean", "running_var")):
            all_zeros += int((t == 0).sum())
            all_total += t.numel()
    return {
        "layers": layers,
        "sparsity": zeros / total if total else 0.0,
        "pruned_params": total,
        "pruned_zeros": zeros,
        "model_sparsity": all_zeros / all_total if all_total else 0.0,
        "model_params": all_total,
    }


# --------------------------------------------------------------------------------------------
# Recovery


def _recover_attrs(rec: dict, data_ref: Any, model: TorchModel) -> dict:
    return {
        "data": data_ref, "epochs": int(rec.get("epochs") or 1), "max_steps": None,
        "batch": int(rec.get("batch") or 32), "accumulate": 1,
        "optimizer": rec.get("optimizer") or {"$call": "adamw", "lr": 1e-3, "weight_decay": 0.01},
        "schedule": {"$call": "constant", "warmup": 0}, "loss": None,
        "precision": "fp32" if model.spec.get("precision") == "fp32" else "auto", "clip": None, "compile": False,
        "freeze": [], "lora": None, "early_stop": None, "eval_every": None, "checkpoint_every": 100, "distributed": "none",
        "max_length": model.spec.get("max_length"), "threads": None,
    }


def _recover(pruned: TorchModel, masks: dict[str, torch.Tensor], data, rec: dict, ctx) -> TorchModel:
    from ftdsl.stages.train import fit

    def prepare(tr) -> None:
        params = dict(tr.module.named_parameters())
        missing = [k for k in masks if k not in params]
        if missing:  # pragma: no cover - same module class, same names
            raise StageError("FTP530", f"recovery: pruned tensors not found in the model: {missing[:3]}")
        tr._prune_params = params
        tr._prune_masks = {k: m.to(params[k].device) for k, m in masks.items()}
        _apply_masks(params, tr._prune_masks)

    def after_step(tr) -> None:
        _apply_masks(tr._prune_params, tr._prune_masks)

    ctx.reporter.log(f"recovering: {rec.get('epochs') or 1} epoch(s) on `{data.source}` with the masks fixed")
    return fit(pruned, data, _recover_attrs(rec, rec.get("data"), pruned), ctx,
                     after_step=after_step, prepare=prepare)


# --------------------------------------------------------------------------------------------
# The stage


def run(inputs: dict[str, object], attrs: dict, ctx) -> TorchModel:
    """Prune ``inputs["from"]`` (a trained TorchModel); optionally recover on ``recover.data``."""
    src = inputs.get("from")
    if not isinstance(src, TorchModel):
        # the front end guarantees a float TorchModel here (FTP209, FTP207): anything else is a bug
        raise TypeError(f"prune needs a TorchModel as `from`, got {type(src).__name__}")
    if not src.trained:
        raise StageError("FTP510", "prune: `from` is an untrained model (a `model` block); there are no weights "
                         "to prune", hint="prune a trained model: `from = <a train or distill stage>`")
    src = src.merged()  # an adapter (`lora = ...`) folded into the weights it prunes
    method = _method(attrs.get("method"))
    rec = attrs.get("recover")
    data = None
    if rec:
        data = inputs.get("recover.data")
        if data is None:
            raise StageError("FTP510", "prune: `recover` needs data to fine-tune on; this stage sees only the "
                             "model, not the data it was trained on",
                             hint="name it: `recover = { epochs = 1, data = DATA }` (the data block the model "
                             "was trained on)")

    if method["$call"] == "structured":  # removes units: a smaller model (prune_structured.py)
        from ftdsl.stages.prune_structured import run_structured

        return run_structured(src, method, rec, data, ctx, _recover)
    module = src.build()
    masks = apply_pruning(module, method)
    names = [k for k, _, _ in prune_targets(module)]
    state = {k: v.detach() for k, v in module.state_dict().items()}
    before = sparsity_report(state, names)
    desc = ", ".join(f"{k} = {v}" for k, v in method.items() if k != "$call")
    ctx.reporter.log(f"{method['$call']}({desc}): {before['pruned_zeros']:,} of {before['pruned_params']:,} weights "
                     f"in {len(names)} tensors are zero ({before['sparsity']:.1%}); "
                     f"whole model {before['model_sparsity']:.1%}; stored dense: the file keeps its size and "
                     f"inference its speed")
    pruned_spec = {"pruned_by": ctx.name, "pruning": method}
    pruned = src.with_module(module, metrics={}, **pruned_spec)

    recovered: TorchModel | None = None
    after = before
    if rec:
        recovered = _recover(pruned, masks, data, rec, ctx)
        after = sparsity_report(recovered.state_dict(), names)
        if after["pruned_zeros"] < before["pruned_zeros"]:  # pragma: no cover - masks are re-applied every step
            raise StageError("FTP530", "recovery un-pruned weights (a bug): sparsity "
                             f"{before['sparsity']:.4f} -> {after['sparsity']:.4f}")

    summary = {k: v for k, v in after.items() if k != "layers"}
    metrics: dict[str, Any] = {"sparsity": round(after["sparsity"], 6),
                               "model_sparsity": round(after["model_sparsity"], 6),
                               "pruned_params": after["pruned_params"], "pruned_zeros": after["pruned_zeros"]}
    if recovered is not None:
        metrics.update({k: v for k, v in recovered.metrics.items() if isinstance(v, (int, float))})
        metrics["recover_steps"] = metrics.pop("steps", 0)
        metrics.pop("epochs", None)
    # `from` scores, for comparison (the metrics of the model before pruning)
    from ftdsl.ir.schema.metrics import summary_metrics

    for k in summary_metrics(("valid", "test"), loss=True):
        if isinstance(src.metrics.get(k), (int, float)):
            metrics[f"before.{k}"] = src.metrics[k]

    report = {
        "method": method,
        "skipped": "output head (" + ", ".join(HEAD_NAMES) + "), embeddings, norms",
        "storage": "dense: the zeros are stored as weights, so the file keeps its size and inference its speed "
                   "(no runtime ftdsl targets runs unstructured sparsity faster); `structured(...)` removes units",
        "pruned": {k: v for k, v in before.items() if k != "layers"},
        "recovered": bool(recovered),
        "final": summary,
        "layers": after["layers"],
        "metrics": metrics,
    }
    ctx.out_dir.mkdir(parents=True, exist_ok=True)
    from ftdsl.stages.outputs import json_safe

    (ctx.out_dir / "prune.json").write_text(json.dumps(json_safe(report), indent=1), encoding="utf-8")
    mpath = ctx.out_dir / "metrics.json"  # after recovery: the train loop's, plus the sparsity
    existing = json.loads(mpath.read_text(encoding="utf-8")) if recovered is not None and mpath.is_file() else {}
    mpath.write_text(json.dumps(json_safe({**existing, **metrics}), indent=1, sort_keys=True), encoding="utf-8")
    if recovered is None:
        return TorchModel({**pruned.spec, "sparsity": metrics["sparsity"]}, pruned.state_dict(),
                          tokenizer_dir=pruned.tokenizer_dir, hf_config=pruned.hf_config, metrics=metrics)
    return TorchModel({**recovered.spec, **pruned_spec, "sparsity": metrics["sparsity"]}, recovered.state_dict(),
                      tokenizer_dir=recovered.tokenizer_dir, hf_config=recovered.hf_config, metrics=metrics)
