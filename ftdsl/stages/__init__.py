"""Registries of stage implementations and artifact types, by dotted path (imported lazily)."""

from __future__ import annotations

import importlib

# kind -> "module:function"; the executor imports a module only when a stage of that kind runs.
STAGES: dict[str, str] = {
    "data": "ftdsl.stages.data:run",
    "model": "ftdsl.stages.model:run",
    "train": "ftdsl.stages.train:run",
    "evaluate": "ftdsl.stages.evaluate:run",
}

# artifact type name -> "module:Class" with save(dir) and classmethod load(dir)
ARTIFACTS: dict[str, str] = {
    "Dataset": "ftdsl.stages.data:Dataset",
    "TorchModel": "ftdsl.stages.model:TorchModel",
    "Report": "ftdsl.stages.evaluate:Report",
}


def load_object(path: str):
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)
