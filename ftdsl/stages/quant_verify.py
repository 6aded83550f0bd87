"""`quantize`'s agreement check: the quantized model against the float one it came from.

Both backends run the float and the quantized model on the same rows (the calibration rows for
``static``, else random valid inputs at the data's scale, see :mod:`ftdsl.stages.probe_inputs`)
and accumulate a :class:`~ftdsl.stages.agreement.Parity`. :func:`check_budget` then fails the
stage with FTP502 (exit 3, nothing cached) when the quantized model is further from the float one
than its method's budget, so a model that disagrees is never shipped:

* every output finite where the float model's is;
* ``max |quantized - float| <= rel * scale`` over those rows, where ``scale`` is the float
  model's largest |output| (logits of different models differ in size), and at least 1 for
  classifiers (a nearly untrained model's logits are all close to 0, and a few hundredths of
  a logit change no probability that matters);
* for classifiers, top-1 agreement with the float model ``>= agreement``.

=========  =====  =========  =====================================================
method     rel    agreement  why
=========  =====  =========  =====================================================
fp16       0.02   0.98       float16 keeps 11 bits: differences are rounding
dynamic    0.40   0.90       int8 weights, activations per batch
static     0.50   0.80       int8 activations from calibrated ranges (coarser)
=========  =====  =========  =====================================================

The budgets catch a broken quantization, not rounding: measured (docs/benchmarks.md, "int8
settings"), dynamic int8 moves an MLP's logits by 1-2% of their scale and MiniLM's by 15-20%
(the largest over all rows; MiniLM's SST-2 logits stay within +-2.2) with 99-100% top-1
agreement; fp16 by 0.02%. Saturation on CPUs without VNNI is ruled out by construction
(:mod:`ftdsl.stages.quant_onnx`), not by this check.
"""

from __future__ import annotations

from ftdsl.errors import StageError
from ftdsl.stages.agreement import Parity

__all__ = ["BUDGETS", "check_budget", "parity_metrics", "summary_line", "describe"]

# method -> (max abs diff relative to max |float output|, min top-1 agreement)
BUDGETS: dict[str, tuple[float, float]] = {
    "fp16": (0.02, 0.98),
    "dynamic": (0.40, 0.90),
    "static": (0.50, 0.80),
}


def check_budget(p: Parity, method: str, label: str, where: str, what: str) -> dict:
    """The budget's verdict as a dict (saved in the report); raises FTP502 with the numbers when
    the quantized model is beyond it. ``what`` describes the quantization ("dynamic int8, per
    channel"), ``where`` the rows ("random inputs", "d.valid")."""
    rel, min_agree = BUDGETS[method]
    scale = max(p.ref_max, 1.0) if p.classify else p.ref_max
    tol = rel * scale
    verdict = {"method": method, "rel": rel, "max_abs_diff_allowed": tol, "min_top1_agreement": min_agree,
               "passed": True}
    if not p.rows:
        return {**verdict, "note": "no inputs: not checked"}
    problems = []
    if p.nonfinite:
        problems.append(f"{p.nonfinite} outputs are NaN or infinite where the float model's are finite")
    if p.max_abs > tol:
        problems.append(f"max abs diff {p.max_abs:.3g} > {tol:.3g} allowed ({rel:.0%} of the output scale "
                        f"{scale:.3g}; the float model's largest output is {p.ref_max:.3g})")
    agree = p.top1_agreement
    if agree is not None and agree < min_agree:
        problems.append(f"top-1 agreement {agree:.1%} < {min_agree:.0%}")
    if not problems:
        return verdict
    numbers = f"max abs diff {p.max_abs:.3g} (allowed {tol:.3g})"
    if agree is not None:
        numbers += f", top-1 agreement {agree:.1%} (at least {min_agree:.0%})"
    raise StageError(
        "FTP502",
        f"the quantized `{label}` ({what}) disagrees with the float model beyond the `{method}` budget on "
        f"{p.rows} rows ({where}): " + "; ".join(problems) + f" [{numbers}]",
        hint=_hint(method))


def _hint(method: str) -> str:
    if method == "static":
        return ("static int8 suits CNNs; for this model use `method = dynamic()` (weights only) or `fp16`, "
                "or calibrate on more rows: `static(calibrate = DATA.valid, samples = 1024)`; nothing was kept")
    if method == "dynamic":
        return "use `method = fp16`, or `dynamic(per_channel = true)`; nothing was kept"
    return "quantize the float export of another opset, or keep the float model; nothing was kept"


def parity_metrics(p: dict) -> dict:
    """The artifact's metrics from a :meth:`Parity.summary` dict."""
    if not p["rows"]:
        return {"parity.rows": 0}
    m = {"parity.max_abs_diff": p["max_abs_diff"], "parity.mean_abs_diff": p["mean_abs_diff"],
         "parity.rows": p["rows"]}
    if "top1_agreement" in p:
        m["parity.top1_agreement"] = p["top1_agreement"]
    return m


def describe(q: dict) -> str:
    """"dynamic int8, per channel" / "float16 weights" from a quantization record."""
    if q["method"] == "fp16":
        return "float16" + (" weights" if q.get("fp16") == "weights" else "")
    what = f"{q['method']} {q.get('dtype')}"
    if q.get("per_channel") is not None:
        what += ", per channel" if q.get("per_channel") else ", per tensor"
    return what


def summary_line(label: str, what: str, before: int, after: int, parity: dict) -> str:
    from ftdsl.runtime.atomic import format_bytes

    line = (f"quantized `{label}` ({what}): {format_bytes(before)} -> {format_bytes(after)} "
            f"({before / max(1, after):.2f}x smaller)")
    if not parity["rows"]:
        return line + "; not compared with the float model (no inputs)"
    line += f"; vs float on {parity['rows']} rows ({parity['data']}): max abs diff {parity['max_abs_diff']:.3g}"
    if "top1_agreement" in parity:
        line += f", top-1 agreement {parity['top1_agreement']:.1%}"
    return line
