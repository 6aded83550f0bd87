"""The `quantize` stage and the `QuantizedTorchModel` artifact.

What a stage gets depends on its ``from`` (SPEC §4; the result is the same kind as the input):

An **OnnxModel** (an ``export`` with ``format = onnx(...)``) is quantized by onnxruntime's
quantizer, the deployment path:

* ``dynamic(dtype, per_channel)``: ``onnxruntime.quantization.quantize_dynamic`` (weights int8
  or uint8, activations quantized at run time; QOperator format: MatMulInteger / ConvInteger).
  Best for transformers and MLPs (MiniLM 2.2x faster, 91 -> 23 MB). Convolutions
  become ConvInteger, which onnxruntime runs 2-6x *slower*: the stage warns and suggests
  ``static``.
* ``static(calibrate, samples)``: ``quantize_static`` in QDQ format, per channel, int8
  activations and weights, MinMax calibration on up to ``samples`` rows of the ``calibrate``
  split (drawn with the pipeline seed; text is tokenized with the model's tokenizer, features
  are passed raw: the normalization is inside the graph). Suits CNNs; it wrecks transformer
  accuracy (MiniLM: cosine 0.44), so the stage warns for text models.
* ``fp16``: every float tensor converted to float16 by onnxruntime's converter
  (``onnxruntime.transformers.float16``) with float32 inputs and outputs kept, so callers feed
  the same arrays. If onnxruntime's CPU provider cannot run that graph, the weights alone are
  stored as float16 with a Cast back to float32 in front of their users (half the file; float32
  compute); ``meta["quantization"]["fp16"]`` says which (``"graph"`` or ``"weights"``).

Before int8 quantization the graph goes through ``quant_pre_process`` (shape inference and
onnxruntime's basic optimizations; ``skip_symbolic_shape=True``, which transformers need); when
that fails the original graph is quantized and ``quantization.preprocessed`` is false. The
quantizer's ~130 root-logger warnings, its prints and Python warnings are silenced.
``dynamic(fuse = true)`` (the default) first fuses a transformer graph for onnxruntime (attention,
LayerNorm, GELU, bias: :mod:`ftdsl.stages.onnx_fusion`), which then replaces ``quant_pre_process``;
``meta["quantization"]["fusion"]`` records the fused operators, or why a graph was not fused.

The result is an ``OnnxModel`` (``model.onnx`` + ``onnx.json`` + ``tokenizer/``) whose
``meta["quantization"]`` is ``{"method", "dtype", "per_channel", "format", "preprocessed",
"from", "weights", "weight_bits", "reduce_range", "saturation_free", "why", "quantized_on", ...}``.
int8 weights are stored in 7 bits (``reduce_range``) so that x86 CPUs without VNNI compute what
VNNI CPUs compute: see :mod:`ftdsl.stages.quant_onnx` for why, and docs/benchmarks.md ("int8
settings") for what it costs.

A **TorchModel** is quantized in PyTorch, into a :class:`QuantizedTorchModel`:

* ``dynamic(dtype = int8, per_channel)``: ``torch.ao.quantization.quantize_dynamic`` of every
  ``nn.Linear`` (int8 weights, per channel or per tensor; activations quantized per batch).
  Runs about 2x faster on CPU, but cannot be exported to ONNX (lint FTP207), trained, pruned or
  quantized again. ``dtype = uint8`` is lint error FTP242 (PyTorch stores dynamic weights as int8 only).
* ``static(calibrate, samples)``: features models (mlp, cnn) only: FX graph-mode quantization
  (``torch.ao.quantization.quantize_fx``, the default ``x86`` qconfig mapping: int8 activations
  with histogram observers, per-channel int8 weights) calibrated on up to ``samples`` rows of
  the split. PT2E (torchao) would be the successor; torchao is not a dependency. A text model
  is lint error FTP242 with a hint (use ``dynamic``, or export to ONNX and quantize that); a
  network FX cannot trace is FTP530 at run time (it depends on the model's code).
* ``fp16``: the weights in float16; ``build()`` returns a module that takes and returns float32
  (features are normalized in float32, then cast).

A QuantizedTorchModel is saved without pickle: the float weights (``model.safetensors``, as a
TorchModel saves them) plus ``quantization.json`` (the recipe) and, for ``static``,
``observers.safetensors`` (the calibrated activation ranges and histograms, plain float
tensors). ``build()`` rebuilds the float module and applies the same quantization, which is
deterministic, so a reload computes exactly what the stage computed. ``size_bytes`` is the
quantized size (int8 weights, a float32 scale and an int32 zero point per channel (or tensor),
and the float tensors left), not the file's; ``num_params`` counts the quantized weights too.
torch.ao's quantization is deprecated upstream (still present in torch 2.13); its deprecation
warnings are silenced.

Both backends then compare the quantized model with the float one, and a model beyond its
method's budget fails the stage with FTP502 and the numbers (:mod:`ftdsl.stages.quant_verify`);
nothing is cached or written to ``out/``.

Reports: ``out/<stage>/quantize.json``: method, sizes before and after, compression, and the
parity of the quantized model against the float one (max / mean abs difference of the outputs,
top-1 agreement for classifiers) on the calibration rows (``static``) or on random valid inputs
at the data's scale; the artifact's ``metrics`` carry the same numbers (``size_mb``,
``size_before_mb``, ``compression``, ``parity.max_abs_diff``, ``parity.top1_agreement``, ...).

Modules: this one (the stage: dispatch and shared helpers), :mod:`~ftdsl.stages.quant_onnx`
(onnxruntime), :mod:`~ftdsl.stages.quant_torch` (PyTorch), :mod:`~ftdsl.stages.quant_torch_model`
(the QuantizedTorchModel artifact), :mod:`~ftdsl.stages.quant_verify` (the agreement budget) and
:mod:`~ftdsl.stages.probe_inputs` (calibration and random inputs, shared with `export`).
"""

from __future__ import annotations

from ftdsl.errors import StageError
from ftdsl.stages.quant_common import label_of, quiet_quantizer
from ftdsl.stages.quant_torch_model import FORMAT_VERSION, QuantizedTorchModel, parameter_count, quantized_size_bytes

__all__ = ["run", "QuantizedTorchModel", "quantize_module", "quantized_size_bytes", "parameter_count",
           "quiet_quantizer", "FORMAT_VERSION"]


def _method(attrs: dict) -> dict:
    m = attrs.get("method")
    if isinstance(m, str):
        m = {"$call": m}
    from ftdsl.ir.lower import complete_call
    from ftdsl.ir.schema import CONSTRUCTORS

    if not isinstance(m, dict) or m.get("$call") not in CONSTRUCTORS["quantize_method"]:
        raise TypeError(f"quantize: unknown method {m!r}")  # the schema guarantees a known one (FTP215)
    return complete_call(m, "quantize_method")  # defaults from the schema, the one declaration


def quantize_module(module, recipe: dict, observers: dict | None = None):
    """See :func:`ftdsl.stages.quant_recipe.quantize_module`."""
    from ftdsl.stages.quant_recipe import quantize_module as apply

    return apply(module, recipe, observers)


def run(inputs: dict, attrs: dict, ctx):
    """Quantize ``inputs["from"]``: an OnnxModel with onnxruntime, a TorchModel in PyTorch."""
    from ftdsl.stages.artifacts import is_artifact

    src = inputs.get("from")
    method = _method(attrs)
    label = label_of(attrs)
    if is_artifact(src, "OnnxModel"):
        from ftdsl.stages.quant_onnx import run_onnx

        return run_onnx(src, method, inputs, attrs, ctx)
    if isinstance(src, QuantizedTorchModel):
        raise StageError("FTP207", f"`{label}` is already quantized in PyTorch",
                         hint="quantize the float model, once")
    if is_artifact(src, "TorchModel"):
        from ftdsl.stages.quant_torch import run_torch

        return run_torch(src.merged(), method, inputs, attrs, ctx)  # an adapter folded into the weights
    # the front end lets only models reach `quantize.from` (FTP209): anything else is a bug
    raise TypeError(f"quantize: `{label}` is a {type(src).__name__}, not a model")
