"""The `QuantizedTorchModel` artifact: a TorchModel quantized in PyTorch, saved without pickle.

Saved form: the float weights (``model.safetensors``, as a TorchModel saves them) plus
``quantization.json`` (the recipe) and, for ``static``, ``observers.safetensors`` (the calibrated
activation ranges and histograms, plain float tensors). ``build()`` rebuilds the float module and
applies the same quantization (:func:`ftdsl.stages.quant_recipe.quantize_module`), which is
deterministic, so a reload computes exactly what the stage computed. ``size_bytes`` is the
quantized size (int8 weights, a float32 scale and an int32 zero point per channel (or tensor),
and the float tensors left), not the file's; ``num_params`` counts the quantized weights too.
"""

from __future__ import annotations

import json
from pathlib import Path

from ftdsl.errors import StageError
from ftdsl.stages.export_artifacts import write_json

__all__ = ["QuantizedTorchModel", "quantized_size_bytes", "parameter_count", "FORMAT_VERSION"]

FORMAT_VERSION = 1
QUANT_FILE = "quantization.json"
OBSERVERS_FILE = "observers.safetensors"


def quantized_size_bytes(module) -> int:
    """Bytes of a quantized module's weights: each dynamically quantized Linear counts its int8
    weight, a float32 scale and an int32 zero point per output channel (or one per tensor) and
    its float32 bias; every other parameter and buffer counts its own element size."""
    import torch

    total = 0
    counted: set[int] = set()
    for m in module.modules():
        packed = getattr(m, "_packed_params", None)
        if packed is not None and callable(getattr(m, "weight", None)):
            w = m.weight()
            total += w.numel() * w.element_size()
            if w.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric,
                               torch.per_channel_affine_float_qparams):
                total += w.q_per_channel_scales().numel() * 8  # float32 scale + int32 zero point
            else:
                total += 8
            b = m.bias()
            if b is not None:
                total += b.numel() * 4
            for t in list(m.parameters(recurse=False)) + list(m.buffers(recurse=False)):
                counted.add(id(t))
    for t in list(module.parameters()) + list(module.buffers()):
        if id(t) not in counted:
            counted.add(id(t))
            total += t.numel() * t.element_size()
    return int(total)


def parameter_count(module) -> int:
    """Parameters of a (possibly quantized) module, counting each quantized Linear's weight and
    bias (``module.parameters()`` does not list them)."""
    total = 0
    seen: set[int] = set()
    for m in module.modules():
        if getattr(m, "_packed_params", None) is not None and callable(getattr(m, "weight", None)):
            total += m.weight().numel()
            b = m.bias()
            total += 0 if b is None else b.numel()
    for t in module.parameters():
        if id(t) not in seen:
            seen.add(id(t))
            total += t.numel()
    return int(total)


class QuantizedTorchModel:
    """A TorchModel quantized in PyTorch: the float model (spec + safetensors weights +
    tokenizer, saved as a TorchModel saves itself) and the quantization recipe. ``build()``
    applies the recipe to the rebuilt float module, deterministically; nothing is pickled.

    Saved form: the TorchModel files (``spec.json``, ``model.safetensors``, ``tokenizer/``,
    ``hf_config/``) + ``quantization.json`` (``recipe``, ``size_bytes``, ``metrics``).
    """

    trained = True

    def __init__(self, base, recipe: dict, *, size_bytes: int | None = None, num_params: int | None = None,
                 metrics: dict | None = None, observers: dict | None = None, observers_path: Path | None = None):
        self.base = base
        self.recipe = dict(recipe)
        self._observers = observers
        self._observers_path = observers_path
        self._size = size_bytes
        self._params = num_params
        self.metrics = dict(metrics or {})

    # -- TorchModel-like queries -------------------------------------------------------------

    @property
    def spec(self) -> dict:
        return {**self.base.spec, "quantization": self.recipe}

    @property
    def task(self) -> dict:
        return self.base.task

    @property
    def modality(self) -> str | None:
        return self.base.modality

    @property
    def tokenizer_dir(self):
        return self.base.tokenizer_dir

    @property
    def method(self) -> str:
        return self.recipe["method"]

    def load_tokenizer(self):
        return self.base.load_tokenizer()

    def observers(self) -> dict | None:
        """Static quantization: the calibrated observers' state (read on first use)."""
        if self._observers is None and self._observers_path is not None:
            from safetensors.torch import load_file

            try:
                self._observers = load_file(str(self._observers_path))
            except Exception as e:
                raise StageError("FTP503", f"cannot read {self._observers_path}: {e}",
                                 hint="rerun the quantize stage with --force") from e
        return self._observers

    def build(self):
        """The quantized module (CPU, eval mode): the float model rebuilt, then quantized."""
        from ftdsl.stages.quant_recipe import quantize_module

        return quantize_module(self.base.build(), self.recipe, self.observers())

    @property
    def size_bytes(self) -> int:
        """The quantized weights' size in bytes (see :func:`quantized_size_bytes`)."""
        if self._size is None:
            self._size = quantized_size_bytes(self.build())
        return int(self._size)

    @property
    def num_params(self) -> int:
        """Parameters, quantized ones included (``build().parameters()`` misses those)."""
        if self._params is None:
            self._params = parameter_count(self.build())
        return int(self._params)

    # -- persistence -------------------------------------------------------------------------

    def save(self, dir: Path) -> None:
        from ftdsl.stages.torch_model import TorchModel

        dir = Path(dir)
        dir.mkdir(parents=True, exist_ok=True)
        base = self.base
        TorchModel(base.spec, base.state_dict(), tokenizer_dir=base.tokenizer_dir, hf_config=base.hf_config,
                   metrics={}).save(dir)
        obs = self.observers()
        if obs is not None:
            from safetensors.torch import save_file

            save_file(obs, str(dir / OBSERVERS_FILE), metadata={"format": "pt"})
        write_json(dir / QUANT_FILE, {"format_version": FORMAT_VERSION, "recipe": self.recipe,
                                       "size_bytes": self.size_bytes, "num_params": self.num_params,
                                       "metrics": self.metrics})

    @classmethod
    def load(cls, dir: Path) -> "QuantizedTorchModel":
        from ftdsl.stages.torch_model import TorchModel

        dir = Path(dir)
        q = json.loads((dir / QUANT_FILE).read_text(encoding="utf-8"))
        if q.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{dir}: unsupported QuantizedTorchModel format {q.get('format_version')!r}")
        base = TorchModel.load(dir)
        if not base.trained:
            raise ValueError(f"{dir}: the float weights are missing")
        obs = dir / OBSERVERS_FILE
        if q["recipe"].get("method") == "static" and not obs.is_file():
            raise ValueError(f"{dir}: {OBSERVERS_FILE} is missing")
        return cls(base, q["recipe"], size_bytes=q.get("size_bytes"), num_params=q.get("num_params"),
                   metrics=q.get("metrics") or {}, observers_path=obs if obs.is_file() else None)

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return f"QuantizedTorchModel({self.recipe.get('method')}, {self.base!r})"
