"""What both `quantize` backends (:mod:`~ftdsl.stages.quant_onnx`, :mod:`~ftdsl.stages.quant_torch`)
share: the report's file name, the stage's label, one-line errors and a quiet quantizer."""

from __future__ import annotations

import contextlib
import logging
from typing import Any

__all__ = ["REPORT_FILE", "label_of", "first_line", "is_classifier", "quiet_quantizer"]

REPORT_FILE = "quantize.json"


def label_of(attrs: dict) -> str:
    """The name of the stage quantized (its ``from``)."""
    ref = attrs.get("from")
    return ref.get("$ref", "model") if isinstance(ref, dict) else str(ref or "model")


def first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:400]


def is_classifier(task: Any) -> bool:
    return not isinstance(task, dict) or task.get("$call", "classify") == "classify"


@contextlib.contextmanager
def quiet_quantizer():
    """Silence onnxruntime's quantizer (and torch.ao's deprecation warning): its warnings go
    through the *root* logger (``logging.warning``), so logging below ERROR is disabled for the
    duration; a NullHandler keeps ``logging.warning`` from installing a stderr handler on the
    root logger for good (``basicConfig``). Prints and Python warnings are captured too."""
    from ftdsl.stages.onnx_utils import quiet_exporter

    root = logging.getLogger()
    added = None
    if not root.handlers:
        added = logging.NullHandler()
        root.addHandler(added)
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with quiet_exporter() as buf:
            yield buf
    finally:
        logging.disable(previous)
        if added is not None:
            root.removeHandler(added)
