"""`export`'s ``verify``: the written file against the PyTorch module it came from.

``verify = true`` compares on random but valid inputs (:func:`~ftdsl.stages.probe_inputs.random_batches`);
``verify = { data = d.test, atol, rtol }`` on up to 256 real rows of that split. A difference
beyond ``|got - torch| <= atol + rtol * |torch|`` is StageError FTP502 (exit 3) with the numbers.
"""

from __future__ import annotations

from ftdsl.errors import StageError
from ftdsl.stages.agreement import compare_outputs
from ftdsl.stages.export_artifacts import OnnxModel
from ftdsl.stages.probe_inputs import random_batches, split_batches

__all__ = ["parity_error", "verify_onnx", "verify_decoder", "verify_reloaded", "verify_settings", "verification_batches", "verify_metrics",
           "VERIFY_ATOL", "VERIFY_RTOL", "VERIFY_MAX_ROWS"]

VERIFY_ATOL = 1e-4  # the schema's defaults for `verify = true`
VERIFY_RTOL = 1e-3
VERIFY_MAX_ROWS = 256  # real rows used by `verify = { data = ... }`


def _fmt(v: float) -> str:
    return f"{v:.3g}"


def parity_error(what: str, label: str, p, hint: str | None = None) -> StageError:
    extra = f"; {p.nonfinite} non-finite values differ" if p.nonfinite else ""
    return StageError(
        "FTP502",
        f"{what} of `{label}` differs from PyTorch: max abs diff {_fmt(p.max_abs)} (atol {_fmt(p.atol)}), "
        f"max rel diff {_fmt(p.max_rel)} (rtol {_fmt(p.rtol)}) on {p.rows} rows{extra}",
        hint=hint or ("the exported graph does not compute what the PyTorch model computes: try another opset "
                      "(`format = onnx(opset = 18)`), or, if the difference is only rounding, loosen the tolerance "
                      "with `verify = { atol = ..., rtol = ... }`; the export was not kept"),
    )


def verify_onnx(model: OnnxModel, module, batches: list[dict], *, atol: float, rtol: float,
                label: str = "model"):
    """Compare ``model`` (onnxruntime) with ``module`` (PyTorch) on ``batches``; returns the
    :class:`~ftdsl.stages.agreement.Parity`, or raises StageError FTP502 with the diffs."""
    from ftdsl.stages.onnx_utils import parity

    try:
        p = parity(model.session(), module, batches, atol=atol, rtol=rtol)
    except StageError:
        raise
    except Exception as e:  # ORT refused a batch shape, or the output shape differs
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:400]
        raise StageError(
            "FTP502", f"ONNX export of `{label}` fails in onnxruntime on verification inputs: {first}",
            hint="the graph may have a fixed batch size or sequence length baked in; try another opset, "
                 "or another format (pt2, torchscript)") from e
    if not p.ok:
        raise parity_error("ONNX export", label, p)
    return p


def verify_decoder(model: OnnxModel, module, batches: list[dict], layout: dict, *, atol: float, rtol: float,
                   label: str = "model"):
    """The same for a causal LM's graph with past key values (export_decoder.py): the prompt pass
    and token-by-token decoding through the pasts, against the PyTorch model."""
    from ftdsl.stages.export_decoder import decoder_parity

    try:
        p = decoder_parity(model.session(), module, batches, layout, atol=atol, rtol=rtol)
    except StageError:
        raise
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:400]
        raise StageError("FTP502", f"ONNX export of `{label}` fails in onnxruntime on verification inputs: {first}",
                         hint="the decoder graph may have a size baked in; try another opset") from e
    if not p.ok:
        raise parity_error("ONNX export (with past key values)", label, p)
    return p


def verify_reloaded(what: str, label: str, reference, candidate, batches, atol, rtol):
    """Same check for the non-ONNX formats (the file reloaded vs the PyTorch module)."""
    import torch

    names = list(reference.input_names)

    def call(m):
        def f(b):  # positional: a reloaded pt2 module does not keep the argument names; a token
            # task's inputs beyond the first two (seq2seq's decoder_labels) are keyword-only
            with torch.inference_mode():
                return m(*(b[n] for n in names[:2]), **{n: b[n] for n in names[2:]}).float().numpy()
        return f

    try:
        p = compare_outputs(call(reference), call(candidate), batches, atol=atol, rtol=rtol)
    except StageError:
        raise
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:400]
        raise StageError("FTP502", f"{what} of `{label}` fails on verification inputs: {first}",
                         hint="the file may have a fixed batch size or sequence length baked in; "
                              "try `format = pt2` or `onnx`") from e
    if not p.ok:
        raise parity_error(what, label, p, hint="the reloaded export does not compute what the PyTorch model "
                                                 "computes; try another format")
    return p


def verify_settings(v) -> dict | None:
    if v is None or v is False:
        return None
    if v is True:
        return {"data": None, "atol": VERIFY_ATOL, "rtol": VERIFY_RTOL}
    if isinstance(v, dict):
        return {"data": v.get("data"), "atol": float(v.get("atol", VERIFY_ATOL) if v.get("atol") is not None
                                                    else VERIFY_ATOL),
                "rtol": float(v.get("rtol", VERIFY_RTOL) if v.get("rtol") is not None else VERIFY_RTOL)}
    raise TypeError(f"verify must be true or {{ data, atol, rtol }}, got {v!r}")  # the schema guarantees it


def verification_batches(settings, src, module, inputs, ctx) -> tuple[list[dict], str]:
    ref = settings.get("data")
    if ref:
        dataset = inputs.get("verify.data")
        where = f"{ref.get('$ref')}.{ref.get('split')}"
        if dataset is None:  # pragma: no cover - the executor always passes it
            raise TypeError(f"verify: data `{where}` was not passed to the stage")
        return split_batches(src, dataset, ref["split"], where, what="verify", rows=VERIFY_MAX_ROWS,
                             batch_sizes=(1, 32)), where
    return random_batches(src, module, ctx.seed), "random"


def verify_metrics(p, secs: float) -> dict:
    return {"verify.max_abs_diff": p.max_abs, "verify.max_rel_diff": p.max_rel, "verify.rows": p.rows,
            "verify.atol": p.atol, "verify.rtol": p.rtol, "verify_s": secs}
