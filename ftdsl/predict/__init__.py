"""`ftdsl predict PIPELINE.ftp STAGE --input FILE`: run a cached model on new rows.

Module map (each one job):

- ``locate``  — which cache entry holds the stage's model (the keys `plan` computes) and which
  data stage's preprocessing it was trained with; predict never trains and never reads `out/`.
- ``rows``    — read CSV/TSV/JSONL input as a stream of rows, each with its file line, and turn
  rows into model inputs (feature columns or the text column) as the data stage did.
- ``runners`` — a registry: artifact type -> a callable from a batch of inputs to raw outputs
  (PyTorch, PyTorch-quantized, ONNX / ONNX-quantized, Hugging Face folder).
- ``writers`` — a registry: task family -> how raw outputs become prediction records (classify:
  label + probabilities; regress: values), and the JSONL / CSV writers. The generative and
  token-level families (issue 9) add an entry to ``TASK_OUTPUTS`` and, where their inputs differ,
  to ``rows.INPUT_KINDS``.
- ``engine``  — the loop: read a batch, preprocess, run, write, report bad rows.
"""

from __future__ import annotations

__all__ = ["predict"]


def predict(*args, **kwargs):
    from ftdsl.predict.engine import predict as _predict

    return _predict(*args, **kwargs)
