"""`ftdsl predict PIPELINE.ftp STAGE --input FILE`: run a cached model on new rows.

Module map (each one job):

- ``locate``  — which cache entry holds the stage's model (the keys `plan` computes) and which
  data stage's preprocessing it was trained with; predict never trains and never reads `out/`.
- ``rows``    — read CSV/TSV/JSONL input as a stream of rows, each with its file line, and turn
  rows into model inputs (feature columns or the text column) as the data stage did.
- ``runners`` — a registry: artifact type -> a callable from a batch of inputs to raw outputs
  (PyTorch, PyTorch-quantized, ONNX / ONNX-quantized, Hugging Face folder).
- ``writers`` — a registry: task family -> how raw outputs become prediction records (classify:
  label + probabilities; regress: values), and the JSONL / CSV writers.
- ``seq``     — the token-task families (issue 9): rows -> prompts / sources / word lists, and
  records of generated text (causal_lm, seq2seq: ``ftdsl.stages.tasks.generation``, what
  `evaluate` runs) or tags (token_classify: the task's ``predict_tags``); the generate settings
  of the evaluate stage of the model (or of the stage an export came from).
- ``onnx_generate`` — greedy decoding of a causal LM's ONNX graph in onnxruntime (past key values).
- ``engine``  — the loop: read a batch, preprocess, run, write, report bad rows (``Batches``: one
  per family, so every family shares the streaming, the bad-row handling and the atomic output).
"""

from __future__ import annotations

__all__ = ["predict"]


def predict(*args, **kwargs):
    from ftdsl.predict.engine import predict as _predict

    return _predict(*args, **kwargs)
