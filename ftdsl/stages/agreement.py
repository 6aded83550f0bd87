"""How far a candidate model's outputs are from a reference's: one accumulator for every check.

`export`'s ``verify`` (the file vs PyTorch, judged elementwise by ``|got - ref| <= atol + rtol *
|ref|``, numpy's ``allclose`` rule) and `quantize`'s agreement check (the quantized model vs the
float one, judged by its budget, see :mod:`ftdsl.stages.quant_verify`) both feed batches of
outputs to :class:`Parity` and read the same numbers: max / mean abs difference, max relative
difference, non-finite values where the reference is finite, rows, and top-1 agreement for
classifiers.
"""

from __future__ import annotations

from typing import Callable, Iterable

import numpy as np

__all__ = ["Parity", "compare_outputs"]


class Parity:
    """Accumulated differences between a reference and a candidate output (numpy arrays,
    rows first). ``atol`` / ``rtol`` set the elementwise test behind :attr:`ok`;
    ``classify`` turns on top-1 agreement (rows whose argmax is the same)."""

    def __init__(self, atol: float = 0.0, rtol: float = 0.0, *, classify: bool = False):
        self.atol, self.rtol = float(atol), float(rtol)
        self.classify = classify
        self.max_abs = 0.0
        self.max_rel = 0.0
        self.sum_abs = 0.0
        self.values = 0
        self.ref_max = 0.0
        self.rows = 0
        self.agree = 0
        self.batches: list[int] = []
        self.failed_elems = 0
        self.nonfinite = 0

    def add(self, ref: np.ndarray, got: np.ndarray) -> None:
        ref = np.asarray(ref, dtype=np.float64)
        got = np.asarray(got, dtype=np.float64)
        if ref.shape != got.shape:
            raise ValueError(f"output shape {tuple(got.shape)} differs from the reference's {tuple(ref.shape)}")
        fin = np.isfinite(ref) & np.isfinite(got)
        same_nonfinite = (~np.isfinite(ref)) & (~np.isfinite(got)) & ((ref == got) | (np.isnan(ref) & np.isnan(got)))
        bad_nonfinite = ~fin & ~same_nonfinite
        self.nonfinite += int(bad_nonfinite.sum())
        diff = np.where(fin, np.abs(got - ref), 0.0)
        rel = np.where(fin, diff / np.maximum(np.abs(ref), 1e-12), 0.0)
        if diff.size:
            self.max_abs = max(self.max_abs, float(diff.max()))
            self.max_rel = max(self.max_rel, float(rel.max()))
            self.sum_abs += float(diff.sum())
            finite_ref = np.abs(ref[np.isfinite(ref)])
            if finite_ref.size:
                self.ref_max = max(self.ref_max, float(finite_ref.max()))
        self.values += int(diff.size)
        self.failed_elems += int((fin & (diff > self.atol + self.rtol * np.abs(ref))).sum()) + int(bad_nonfinite.sum())
        n = int(ref.shape[0]) if ref.ndim else 1
        self.rows += n
        self.batches.append(n)
        if self.classify and ref.ndim == 2 and ref.shape[1] > 1:
            self.agree += int((ref.argmax(1) == got.argmax(1)).sum())

    @property
    def ok(self) -> bool:
        return self.failed_elems == 0 and self.rows > 0

    @property
    def mean_abs(self) -> float:
        return self.sum_abs / max(1, self.values)

    @property
    def top1_agreement(self) -> float | None:
        return self.agree / max(1, self.rows) if self.classify else None

    def as_dict(self) -> dict:
        """The elementwise verdict (`export`'s verify.json)."""
        return {"max_abs_diff": self.max_abs, "max_rel_diff": self.max_rel, "atol": self.atol, "rtol": self.rtol,
                "rows": self.rows, "batch_sizes": list(self.batches), "mismatched_values": self.failed_elems,
                "nonfinite_mismatches": self.nonfinite, "passed": self.ok}

    def summary(self, data: str) -> dict:
        """The agreement numbers (`quantize`'s report): where the rows came from and how close."""
        if not self.rows:
            return {"data": data, "rows": 0, "note": "no inputs to compare with the float model"}
        d = {"data": data, "rows": self.rows, "max_abs_diff": self.max_abs, "mean_abs_diff": self.mean_abs,
             "max_abs_output": self.ref_max, "nonfinite": self.nonfinite}
        if self.classify:
            d["top1_agreement"] = self.top1_agreement
        return d


def compare_outputs(reference: Callable[[dict], np.ndarray], candidate: Callable[[dict], np.ndarray],
                    batches: Iterable[dict], *, atol: float = 0.0, rtol: float = 0.0,
                    classify: bool = False) -> Parity:
    """Run both on every batch (``{"x": ...}`` or ``{"input_ids", "attention_mask"}``)."""
    p = Parity(atol, rtol, classify=classify)
    for b in batches:
        p.add(reference(b), candidate(b))
    return p
