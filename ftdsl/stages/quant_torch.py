"""`quantize` of a TorchModel in PyTorch (see :mod:`ftdsl.stages.quantize` for the methods): the
recipe applied (:mod:`ftdsl.stages.quant_recipe`), checked against the float model
(:mod:`ftdsl.stages.quant_verify`) and stored as a
:class:`~ftdsl.stages.quant_torch_model.QuantizedTorchModel`.
"""

from __future__ import annotations

import time
from pathlib import Path

from ftdsl.errors import FtdslError, StageError
from ftdsl.stages.export_artifacts import write_json
from ftdsl.stages.quant_common import REPORT_FILE, first_line, is_classifier, label_of
from ftdsl.stages.quant_recipe import calibrate_static, quantize_module, torch_recipe

__all__ = ["run_torch"]


def run_torch(src, method: dict, inputs: dict, attrs: dict, ctx):
    import torch

    from ftdsl.stages.agreement import Parity
    from ftdsl.stages.probe_inputs import random_batches, split_batches
    from ftdsl.stages.quant_torch_model import QuantizedTorchModel, parameter_count, quantized_size_bytes
    from ftdsl.stages.quant_verify import check_budget, describe, parity_metrics, summary_line

    label = label_of(attrs)
    kind = method["$call"]
    if not getattr(src, "trained", False):
        raise StageError("FTP510", f"quantize: `{label}` is an untrained model; there are no weights to quantize",
                         hint="quantize a trained model: `from = <a train, prune or distill stage>`")
    from ftdsl.ir.schema.modality import QUANTIZE_SUPPORT

    rules = QUANTIZE_SUPPORT["TorchModel"][kind]  # what the checker enforces (FTP242): reaching here otherwise is a bug
    if src.modality not in rules.get("inputs", (src.modality,)) or \
            method.get("dtype") not in rules.get("dtype", (method.get("dtype"),)):
        raise TypeError(f"{kind} PyTorch quantization of a {src.modality} model with {method!r}")
    recipe = torch_recipe(method)
    ctx.reporter.start(None, f"quantize {label} ({kind})")
    t0 = time.perf_counter()
    float_module = src.build()
    before = sum(t.numel() * t.element_size() for t in (src.state_dict() or {}).values())
    observers = None
    probe, where = None, "random inputs"
    if kind == "static":
        ref = method.get("calibrate") or {}
        where = f"{ref.get('$ref', 'data')}.{ref.get('split', '?')}"
        batches = split_batches(src, inputs.get("method.calibrate"), ref["split"], where, what="quantize",
                                rows=int(method["samples"]), seed=ctx.seed, as_numpy=True)
        recipe["calibration_rows"] = sum(len(b["x"]) for b in batches)
        try:
            observers = calibrate_static(src.build(), recipe, batches)
            qmodule = quantize_module(src.build(), recipe, observers)
        except FtdslError:
            raise
        except Exception as e:  # FX cannot trace this network
            raise StageError("FTP530", f"PyTorch cannot quantize `{label}` statically: {type(e).__name__}: "
                                       f"{first_line(e)}",
                             hint=f"export it to ONNX and quantize that (`export e {{ from = {label}, format = "
                                  "onnx() }`, then `quantize ... { from = e, method = static(...) }`), or use "
                                  "`method = dynamic()`") from e
        probe = [{"x": torch.from_numpy(b["x"])} for b in batches]
    else:
        qmodule = quantize_module(src.build(), recipe)
    quantize_s = time.perf_counter() - t0
    after = quantized_size_bytes(qmodule)
    agreement = Parity(classify=is_classifier(src.task))
    names = list(float_module.input_names)
    with torch.inference_mode():
        for b in probe or random_batches(src, float_module, ctx.seed):
            args = [b[n] for n in names]
            agreement.add(float_module(*args).float().numpy(), qmodule(*args).float().numpy())
    parity = agreement.summary(where)
    parity["budget"] = check_budget(agreement, kind, label, where, describe(recipe))
    metrics = {"size_mb": after / 1e6, "size_before_mb": before / 1e6, "compression": before / max(1, after),
               "quantize_s": quantize_s, **parity_metrics(parity)}
    from ftdsl.ir.schema.metrics import summary_metrics

    for k in summary_metrics(("valid", "test")):
        if isinstance(src.metrics.get(k), (int, float)):
            metrics[f"before.{k}"] = src.metrics[k]
    art = QuantizedTorchModel(src, recipe, size_bytes=after, num_params=parameter_count(qmodule), metrics=metrics,
                              observers=observers)
    out = Path(ctx.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / REPORT_FILE, {"from": label, "kind": "torch", "method": method, "quantization": recipe,
                                    "size_before_bytes": before, "size_after_bytes": after,
                                    "compression": before / max(1, after), "parity": parity,
                                    "quantize_s": quantize_s, "torch": torch.__version__})
    ctx.reporter.log(summary_line(label, describe(recipe), before, after, parity))
    return art
