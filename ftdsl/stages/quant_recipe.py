"""PyTorch quantization recipes: :func:`torch_recipe` (the canonical recipe a
:class:`~ftdsl.stages.quant_torch_model.QuantizedTorchModel` saves), :func:`quantize_module` (applies
one to a float module, deterministically, so the artifact can store the float weights and the recipe
and rebuild the same quantized module on load) and :func:`calibrate_static`. torch.ao's
quantization is deprecated upstream (still present in torch 2.13); its warnings are silenced.
"""

from __future__ import annotations

import numpy as np

from ftdsl.errors import StageError
from ftdsl.stages.quant_common import quiet_quantizer

__all__ = ["torch_recipe", "quantize_module", "calibrate_static"]


def torch_recipe(method: dict) -> dict:
    """The canonical PyTorch quantization recipe saved with the artifact."""
    import torch

    kind = method["$call"]
    if kind == "dynamic":
        return {"method": "dynamic", "dtype": "int8", "per_channel": bool(method["per_channel"]),
                "modules": ["Linear"], "backend": "torch.ao.quantization.quantize_dynamic"}
    if kind == "static":
        ref = method.get("calibrate") or {}
        engine = "x86" if "x86" in torch.backends.quantized.supported_engines else "qnnpack"
        return {"method": "static", "dtype": "int8", "per_channel": engine == "x86", "qconfig": engine,
                "calibrate": f"{ref.get('$ref', 'data')}.{ref.get('split', '?')}",
                "samples": int(method["samples"]), "backend": "torch.ao.quantization.quantize_fx"}
    return {"method": "fp16", "dtype": "float16", "per_channel": None, "backend": "torch"}


def quantize_module(module, recipe: dict, observers: dict | None = None):
    """Apply ``recipe`` (see :func:`torch_recipe`) to a float FtdslModule; returns the module to
    use (the same object for dynamic, quantized in place; a float16 wrapper for fp16; an FX
    GraphModule for static, whose activation ranges are ``observers``, see :func:`calibrate_static`)."""
    import torch
    from torch import nn

    module.eval()
    if recipe["method"] == "static":
        if observers is None:
            raise StageError("FTP503", "a statically quantized model without its calibration (observers.safetensors)",
                             hint="rerun the quantize stage with --force")
        prepared = _prepare_static(module, recipe)
        missing, unexpected = prepared.load_state_dict(observers, strict=False)
        if unexpected or any(k.startswith("activation_post_process") for k in missing):
            raise StageError("FTP503", "the saved calibration does not fit the model "
                                       f"(unexpected {list(unexpected)[:3]}, missing {list(missing)[:3]})",
                             hint="rerun the quantize stage with --force")
        return _convert_static(prepared, module)
    if recipe["method"] == "dynamic":
        with quiet_quantizer():
            from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig
            from torch.ao.quantization import quantize_dynamic

            qconfig = per_channel_dynamic_qconfig if recipe.get("per_channel") else default_dynamic_qconfig
            q = quantize_dynamic(module, {nn.Linear: qconfig}, dtype=torch.qint8, inplace=True)
        _no_transformer_fast_path(q)
        return q.eval()
    if recipe["method"] == "fp16":
        return _half(module).eval()
    raise StageError("FTP530", f"unknown PyTorch quantization {recipe.get('method')!r}")  # pragma: no cover


def _example(module):
    import torch

    return (torch.zeros((2, *tuple(module.norm_mean.shape)), dtype=torch.float32),)


def _prepare_static(module, recipe: dict):
    """FX graph-mode preparation (observers inserted) of a features module."""
    import torch

    from ftdsl.stages.modules import FeaturesModule

    if not isinstance(module, FeaturesModule):  # the front end guarantees it (FTP242)
        raise TypeError(f"static PyTorch quantization of a {type(module).__name__}")
    engine = recipe.get("qconfig") or "x86"
    if engine not in torch.backends.quantized.supported_engines:  # pragma: no cover - other CPUs
        raise StageError("FTP530", f"this PyTorch has no `{engine}` quantized engine "
                                   f"(it has {', '.join(torch.backends.quantized.supported_engines)})",
                         hint="rerun the quantize stage on this machine with --force")
    with quiet_quantizer():
        from torch.ao.quantization import get_default_qconfig_mapping
        from torch.ao.quantization.quantize_fx import prepare_fx

        torch.backends.quantized.engine = engine
        return prepare_fx(module, get_default_qconfig_mapping(engine), _example(module))


def _convert_static(prepared, float_module):
    with quiet_quantizer():
        from torch.ao.quantization.quantize_fx import convert_fx

        q = convert_fx(prepared)
    q.modality, q.input_names = float_module.modality, tuple(float_module.input_names)
    return q.eval()


def calibrate_static(module, recipe: dict, batches: list[dict]) -> dict:
    """Run ``batches`` through the observed ``module``; returns the observers' state (plain
    float tensors: ranges and histograms), which :func:`quantize_module` turns into the same
    quantized model every time."""
    import torch

    prepared = _prepare_static(module, recipe)
    with torch.inference_mode(), quiet_quantizer():
        for b in batches:
            prepared(torch.from_numpy(np.ascontiguousarray(b["x"])))
    return {k: v.detach().clone().contiguous() for k, v in prepared.state_dict().items()
            if "activation_post_process" in k and isinstance(v, torch.Tensor)}


def _skip_fast_path(module, args, output):
    return None


def _no_transformer_fast_path(module) -> None:
    """``nn.TransformerEncoderLayer``'s inference fast path reads ``linear1.weight.device``, but
    a dynamically quantized Linear's ``weight`` is a method: the layer then fails. A forward hook
    on the layer (any hook turns the fast path off, see torch/nn/modules/transformer.py) and
    ``use_nested_tensor = False`` on the encoder make them take the regular path."""
    from torch import nn

    for m in module.modules():
        if isinstance(m, nn.TransformerEncoder):
            m.use_nested_tensor = False
        elif isinstance(m, nn.TransformerEncoderLayer) and callable(getattr(m.linear1, "weight", None)):
            m.register_forward_hook(_skip_fast_path)


def _half(module):
    from ftdsl.stages.modules import FeaturesModule, TextModule

    features, text = _half_classes()
    if isinstance(module, FeaturesModule):
        return features(module)
    if isinstance(module, TextModule):
        return text(module)
    raise StageError("FTP530", f"fp16 quantization of a {type(module).__name__} is not supported")  # pragma: no cover


_HALF: tuple = ()


def _half_classes():
    """(HalfFeatures, HalfText), defined on first use (torch is imported lazily here)."""
    global _HALF
    if _HALF:
        return _HALF
    import torch

    from ftdsl.stages.modules import FeaturesModule, TextModule

    class HalfFeatures(FeaturesModule):
        """float16 network; float32 raw features in, normalized in float32, float32 out."""

        def __init__(self, inner):
            shape = tuple(inner.norm_mean.shape)
            super().__init__(inner.net.half(), shape, inner.norm_mean.float(), inner.norm_std.float())

        def forward(self, x):
            z = (x.float() - self.norm_mean) / self.norm_std
            return self.net(z.to(torch.float16)).float()

    class HalfText(TextModule):
        """float16 network; token ids in, float32 out."""

        def __init__(self, inner):
            super().__init__(inner.net.half(), hf=inner.hf)

        def forward(self, input_ids, attention_mask):
            return super().forward(input_ids, attention_mask).float()

    _HALF = (HalfFeatures, HalfText)
    return _HALF
