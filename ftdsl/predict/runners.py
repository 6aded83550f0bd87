"""Runners: a registry from artifact type to a callable that maps one batch of model inputs
(``{"x": float32 [B, ...]}`` or ``{"input_ids", "attention_mask"}``, torch tensors, as
``ftdsl.stages.batching.iter_batches`` makes them) to raw outputs (numpy float32 ``[B, k]``:
logits for classify, values for regress).

Each runner uses the artifact's public interface, the same calls `evaluate` makes: ``build()``
for PyTorch models (a trained TorchModel, a PyTorch-quantized model), ``predict()`` for ONNX
graphs (exported or ONNX-quantized), and for a Hugging Face folder export the folder itself
(``from_pretrained``, its own tokenizer). A new artifact type adds an entry to ``RUNNERS``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ftdsl.errors import UsageError


@dataclass
class Runner:
    run: Callable[[dict], np.ndarray]
    info: dict  # spec-like: modality, task, input_shape, max_length, label_names
    tokenizer: Any = None
    what: str = ""  # "PyTorch", "onnxruntime", ... for the progress line
    extra: dict = field(default_factory=dict)  # "module": the nn.Module of a PyTorch runner (token tasks)


def spec_of(art) -> dict:
    """A TorchModel-like view of any model artifact (TorchModel.spec, OnnxModel.spec, or an
    export's metadata)."""
    spec = getattr(art, "spec", None)
    if isinstance(spec, dict):
        return spec
    meta = getattr(art, "meta", None) or {}
    return {k: meta.get(k) for k in ("modality", "task", "input_shape", "max_length", "label_names", "vocab_size")}


def _torch_call(module, device: str):
    import torch

    if device != "cpu":
        module = module.to(device)

    def run(inputs: dict) -> np.ndarray:
        with torch.inference_mode():
            out = module(**{k: v.to(device) for k, v in inputs.items()})
        return out.float().cpu().numpy()

    return run


def _torch(art, device: str) -> Runner:
    module = art.build()
    return Runner(_torch_call(module, device), spec_of(art), _tokenizer_of(art), "PyTorch", {"module": module})


def _tokenizer_of(art):
    from ftdsl.stages.tasks import is_seq_task

    task = (spec_of(art).get("task") or {}).get("$call")
    if is_seq_task(task):  # token tasks read with their transformers tokenizer (ftdsl.predict.seq)
        return None
    return art.load_tokenizer()


def _torch_quantized(art, device: str) -> Runner:
    # PyTorch's quantized kernels are CPU kernels
    module = art.build()
    return Runner(_torch_call(module, "cpu"), spec_of(art), _tokenizer_of(art), "PyTorch (quantized)",
                  {"module": module, "cpu_only": True})


def _onnx(art, device: str) -> Runner:
    import torch

    threads = torch.get_num_threads()
    art.session(threads)  # open it now: a graph that does not load fails before any row is read

    def run(inputs: dict) -> np.ndarray:
        return np.asarray(art.predict({k: v.numpy() for k, v in inputs.items()}, threads=threads),
                          dtype=np.float32)

    q = (art.meta.get("quantization") or {}) if hasattr(art, "meta") else {}
    return Runner(run, spec_of(art), art.load_tokenizer(), "onnxruntime" + (" (quantized)" if q else ""))


def _exported_seq(art, info: dict) -> Runner:
    """A token-task model from its export (hf folder or adapter), loaded as `evaluate` loads it."""
    from ftdsl.stages.evaluate_seq import seq_module

    module, tokenizer = seq_module(art)
    what = "peft adapter" if art.format == "adapter" or art.meta.get("adapter") else "transformers (hf folder)"
    return Runner(lambda inputs: None, info, tokenizer, what, {"module": module})


def _exported_adapter(art, info: dict, device: str) -> Runner:
    """A classify/regress model from `format = adapter` or `hf(merge = false)`: its base rebuilt and
    the adapter loaded by peft (ftdsl.stages.export_adapter.reload_export)."""
    from ftdsl.stages.artifacts import load_tokenizer_dir
    from ftdsl.stages.export_adapter import reload_export

    module = reload_export(art)
    base = (art.meta.get("adapter") or {}).get("base_spec") or {}
    tok_dir = art.path if art.format == "hf" else art.root / "tokenizer"
    tokenizer = load_tokenizer_dir(tok_dir, pretrained=base.get("source") == "pretrained")
    return Runner(_torch_call(module, device), info, tokenizer, "peft adapter", {"module": module})


def _exported(art, device: str) -> Runner:
    from ftdsl.stages.tasks import is_seq_task

    fmt = art.format
    info = spec_of(art)
    if fmt in ("hf", "adapter") and is_seq_task((info.get("task") or {}).get("$call")):
        return _exported_seq(art, info)
    if fmt == "adapter" or art.meta.get("adapter"):  # the base with its peft adapter, not the base alone
        return _exported_adapter(art, info, device)
    if fmt != "hf":
        src = (art.meta.get("source") or {}).get("stage")
        raise UsageError("FTP562", f"predict does not load `{fmt}` exports (they need the code that wrote them)",
                         hint=f"predict the stage it came from (`{src}`), or export with format = onnx(...) or hf"
                         if src else "export with format = onnx(...) or hf")
    from ftdsl.stages.modules import TextModule
    from ftdsl.stages.pretrained import load_hf_model, quiet_transformers

    module = TextModule(load_hf_model(art.path, info.get("task") or {"$call": "classify"}), hf=True).eval()
    with quiet_transformers() as transformers:
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(art.path))
    cfg = getattr(module.net, "config", None)
    if not info.get("label_names") and cfg is not None and getattr(cfg, "id2label", None):
        names = [cfg.id2label[i] for i in sorted(cfg.id2label)]
        if not all(n == f"LABEL_{i}" for i, n in enumerate(names)):  # transformers' placeholder names
            info = {**info, "label_names": names}
    return Runner(_torch_call(module, device), info, tokenizer, "transformers (hf folder)", {"module": module})


RUNNERS: dict[str, Callable[[Any, str], Runner]] = {
    "TorchModel": _torch,
    "QuantizedTorchModel": _torch_quantized,
    "OnnxModel": _onnx,
    "ExportedFile": _exported,
}


def runner_for(artifact_type: str, art, device: str = "cpu") -> Runner:
    return RUNNERS[artifact_type](art, device)
