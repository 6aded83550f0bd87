"""ONNX helpers shared by the `export` stage, `evaluate` and (later) ONNX quantization.

* :func:`quiet_exporter` silences the exporters' noise (stack.md §1): the "torchvision is not
  installed" and version-converter lines (loggers ``torch.onnx`` / ``onnxscript``), warnings
  (the legacy exporter's DeprecationWarning, tracer warnings) and anything printed to
  stdout/stderr from Python. What was printed is kept, for error messages.
* :func:`export_onnx` exports an :class:`~ftdsl.stages.model.FtdslModule` with dynamic batch
  (and sequence length for text) and returns the ``onnx.ModelProto``; nothing is written, so
  the caller writes it atomically (a full disk is then FTP505 and never a partial file).
* :func:`parity` computes the ORT-vs-PyTorch differences that `verify` judges
  (:class:`~ftdsl.stages.agreement.Parity`: ``|ort - torch| <= atol + rtol * |torch|`` elementwise).
* :func:`session` opens an onnxruntime CPU session with its log level at "error".

Exporter choice: the dynamo exporter (``torch.onnx.export(..., dynamo=True)``, torch's default
since 2.9) is used first. The legacy TorchScript exporter is 4-30x faster, but it is deprecated
and, measured on this stack, it bakes the batch size into ``nn.MultiheadAttention``'s reshapes,
so a from-scratch ``transformer`` export fails in onnxruntime at any other batch size even
with ``dynamic_axes``. The legacy exporter is kept only as a fallback when dynamo cannot
export a model; ``verify`` then checks several batch sizes, which catches exactly that failure.
"""

from __future__ import annotations

import contextlib
import io
import logging
import sys
import warnings
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from ftdsl.stages.agreement import Parity, compare_outputs

__all__ = [
    "OUTPUT_NAME",
    "quiet_exporter",
    "export_onnx",
    "dynamic_dims",
    "serialize",
    "session",
    "ort_feed",
    "compare_outputs",
    "parity",
    "Parity",
]

OUTPUT_NAME = "logits"
# Loggers that print during an export; raised to ERROR for its duration, then restored.
_NOISY_LOGGERS = ("torch.onnx", "onnxscript", "torch.export", "torch._export", "torch._dynamo",
                  "torch.fx.experimental.symbolic_shapes", "onnx_ir")
_PROTOBUF_LIMIT = 2_000_000_000 - 64_000_000  # one-file ONNX must stay below protobuf's 2 GB


@contextlib.contextmanager
def quiet_exporter():
    """Silence exporter logging, warnings and prints; yields a StringIO with what was printed."""
    buf = io.StringIO()
    levels = {}
    for name in _NOISY_LOGGERS:
        lg = logging.getLogger(name)
        levels[name] = lg.level
        lg.setLevel(logging.ERROR)
    hf = None
    if "transformers" in sys.modules:  # a Hugging Face model: its config and save warnings, too
        from transformers.utils import logging as hf

        hf_level, hf_bars = hf.get_verbosity(), hf.is_progress_bar_enabled()
        hf.set_verbosity_error()
        hf.disable_progress_bar()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            warnings.simplefilter("ignore")
            yield buf
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
        if hf is not None:
            hf.set_verbosity(hf_level)
            if hf_bars:
                hf.enable_progress_bar()


def dynamic_dims(module, example: Sequence[Any], max_seq: int | None):
    """Named dynamic dims: batch for every input, and sequence length for text inputs."""
    import torch

    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    if "input_ids" in tuple(getattr(module, "input_names", ()) or ()):  # token ids: a sequence axis too
        seq = torch.export.Dim("seq", min=1, max=int(max_seq) if max_seq else 1 << 14)
        return tuple({0: batch, 1: seq} for _ in example)
    return tuple({0: batch} for _ in example)


def export_onnx(module, example: Sequence[Any], *, input_names: Sequence[str], opset: int,
                max_seq: int | None = None, exporter: str = "dynamo"):
    """Export ``module`` (eval mode, CPU) to an ``onnx.ModelProto`` with a dynamic batch axis
    (and a dynamic sequence axis for text). Returns ``(proto, exporter_used, log_text)``; the
    log starts with the errors of the exporters that failed before the one used.

    ``exporter="dynamo"`` falls back to the legacy exporter when dynamo fails; the error of
    the last attempt is raised when every attempt fails.
    """
    import torch

    attempts: list[str] = ["dynamo", "legacy"] if exporter == "dynamo" else [exporter]
    errors: list[str] = []
    for how in attempts:
        with quiet_exporter() as log:
            try:
                if how == "dynamo":
                    prog = torch.onnx.export(
                        module, tuple(example), None, input_names=list(input_names), output_names=[OUTPUT_NAME],
                        opset_version=int(opset), dynamo=True, external_data=False,
                        dynamic_shapes=dynamic_dims(module, example, max_seq), verbose=False, optimize=True)
                    proto = prog.model_proto
                else:
                    tokens = "input_ids" in tuple(input_names)
                    axes = {n: ({0: "batch", 1: "seq"} if tokens else {0: "batch"}) for n in input_names}
                    axes[OUTPUT_NAME] = {0: "batch", 1: "seq"} if getattr(module, "task_name", None) else {0: "batch"}
                    f = io.BytesIO()
                    torch.onnx.export(module, tuple(example), f, input_names=list(input_names),
                                      output_names=[OUTPUT_NAME], opset_version=min(int(opset), 20), dynamo=False,
                                      dynamic_axes=axes, do_constant_folding=True)
                    import onnx

                    proto = onnx.load_model_from_string(f.getvalue())
            except Exception as e:  # noqa: BLE001 - try the next exporter, report all
                if getattr(e, "signum", None) is not None:  # SIGTERM turned into an exception: stop
                    raise
                first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
                errors.append(f"{how}: {type(e).__name__}: {first}")
                continue
        # the log names the exporters that failed before this one (the caller warns about them)
        return proto, how, "\n".join(errors + [log.getvalue()]).strip()
    raise RuntimeError("; ".join(errors))


def serialize(proto) -> tuple[bytes, bytes | None]:
    """``(model bytes, None)``; for a model over protobuf's 2 GB limit, the weights go to a
    second blob: ``(model bytes, external data bytes)`` with location ``model.onnx.data``."""
    size = proto.ByteSize()
    if size < _PROTOBUF_LIMIT:
        return proto.SerializeToString(), None
    import tempfile

    import onnx

    with tempfile.TemporaryDirectory() as d:  # pragma: no cover - needs a > 2 GB model
        p = Path(d) / "model.onnx"
        onnx.save_model(proto, str(p), save_as_external_data=True, all_tensors_to_one_file=True,
                        location="model.onnx.data", size_threshold=1024)
        return p.read_bytes(), (Path(d) / "model.onnx.data").read_bytes()


def session(path: str | Path, *, threads: int | None = None):
    """An onnxruntime CPU InferenceSession for ``path``; ORT's own warnings are not printed."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3  # errors only
    if threads:
        so.intra_op_num_threads = int(threads)
        so.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])


_ORT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
              "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(bool)": np.bool_,
              "tensor(bfloat16)": np.float32}


def ort_feed(sess, inputs: dict[str, Any]) -> dict[str, np.ndarray]:
    """The session's inputs from ``inputs`` (numpy arrays or torch tensors), cast to the dtypes
    the graph declares. A missing input is a KeyError naming the graph's inputs."""
    feed = {}
    for meta in sess.get_inputs():
        filled = _fills(meta, inputs) if meta.name not in inputs else None
        if filled is not None:  # a decoder's empty pasts and positions, given whole sequences
            feed[meta.name] = filled
            continue
        if meta.name not in inputs:
            raise KeyError(f"the ONNX model needs input `{meta.name}` (it takes "
                           f"{', '.join(i.name for i in sess.get_inputs())}); got {', '.join(inputs)}")
        v = inputs[meta.name]
        if hasattr(v, "detach"):
            v = v.detach().cpu().numpy()
        feed[meta.name] = np.ascontiguousarray(np.asarray(v, dtype=_ORT_TYPES.get(meta.type, None)))
    return feed


def _fills(meta, inputs: dict[str, Any]) -> np.ndarray | None:
    """What a causal LM's graph with past key values (export_decoder.py) takes when it is given
    whole sequences: empty pasts, and positions counted from the attention mask; else None."""
    ids, mask = inputs.get("input_ids"), inputs.get("attention_mask")
    if ids is None or mask is None:
        return None
    mask = mask.detach().cpu().numpy() if hasattr(mask, "detach") else np.asarray(mask)
    if meta.name == "position_ids":
        return np.where(mask == 0, 0, np.cumsum(mask, axis=1) - 1).astype(np.int64)
    dims = meta.shape
    if meta.name.startswith("past_key_values.") and len(dims) == 4 and isinstance(dims[1], int) \
            and isinstance(dims[3], int):
        return np.zeros((int(np.shape(ids)[0]), dims[1], 0, dims[3]), dtype=np.float32)
    return None


def parity(sess, module, batches: Iterable[dict], *, atol: float, rtol: float) -> Parity:
    """ORT session vs PyTorch module on ``batches`` (dicts of torch tensors)."""
    import torch

    names = [i.name for i in sess.get_inputs()]
    out = sess.get_outputs()[0].name

    def ref(b):
        with torch.inference_mode():
            return module(**{k: b[k] for k in names}).float().numpy()

    def got(b):
        return sess.run([out], ort_feed(sess, {k: b[k] for k in names}))[0]

    return compare_outputs(ref, got, batches, atol=atol, rtol=rtol)
