"""Evaluation metrics, computed by ``sklearn.metrics``.

Which metrics exist, the tasks they apply to and their direction are declared once, in the schema's
metric registry (``ftdsl/ir/schema/metrics.py``); ``quality_metrics(task, ...)`` computes exactly
the registry's quality metrics of a task (tests/test_schema_contract.py ties the two). Latency and
size are measured by the evaluate stage, not computed from predictions. The token tasks
(causal_lm, seq2seq, token_classify) compute their teacher-forced metrics themselves
(``ftdsl.stages.tasks``), and the generation metrics (``GENERATED``) are computed by
``ftdsl.stages.seq_metrics`` from the texts `evaluate` generates.

Conventions are scikit-learn's defaults: macro averages run over the labels that occur in
``y_true`` or ``y_pred`` (unless ``labels`` is given), and a class whose precision or recall is
undefined (0/0) counts as 0 (``zero_division=0``). sklearn is imported on first use (it costs
seconds of start-up). Two things stay here: the cross-entropy, computed from logits with a
log-softmax (``sklearn.metrics.log_loss`` takes probabilities and clips them, which differs for
confident wrong predictions), and the cases sklearn refuses or answers with NaN and a warning
(no samples; ``r2`` of one sample; ``labels`` none of which occur), which keep the values they
always had.
"""

from __future__ import annotations

import statistics

import numpy as np

__all__ = [
    "latency_summary",
    "accuracy",
    "confusion_matrix",
    "precision_recall_f1",
    "cross_entropy",
    "mse",
    "mae",
    "r2",
    "classification_metrics",
    "regression_metrics",
    "quality_metrics",
    "generation_metrics",
    "BY_TASK",
    "GENERATED",
]


def _skm():
    import sklearn.metrics as skm  # lazy: seconds of import time, and only stages compute metrics

    return skm


def accuracy(y_true, y_pred) -> float:
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.size == 0:
        return float("nan")
    return float(_skm().accuracy_score(y_true, y_pred))


def confusion_matrix(y_true, y_pred, labels=None) -> np.ndarray:
    """``C[i, j]`` = number of samples of true class ``labels[i]`` predicted as ``labels[j]``."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if labels is not None and not np.isin(np.asarray(labels), y_true).any():
        # sklearn refuses labels none of which is in y_true; the counts are all zero then
        labs = np.asarray(labels)
        index = {v: i for i, v in enumerate(labs.tolist())}
        cm = np.zeros((len(labs), len(labs)), dtype=np.int64)
        for t, p in zip(y_true.tolist(), y_pred.tolist()):
            if t in index and p in index:
                cm[index[t], index[p]] += 1
        return cm
    if y_true.size == 0 and labels is None:
        return np.zeros((0, 0), dtype=np.int64)
    return _skm().confusion_matrix(y_true, y_pred, labels=labels).astype(np.int64)


def precision_recall_f1(y_true, y_pred, labels=None) -> tuple[float, float, float]:
    """Macro-averaged precision, recall and F1 (sklearn's ``average="macro"``, zero_division=0)."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.size == 0 and (labels is None or len(labels) == 0):
        return 0.0, 0.0, 0.0
    p, r, f1, _ = _skm().precision_recall_fscore_support(y_true, y_pred, labels=labels, average="macro",
                                                        zero_division=0)
    return float(p), float(r), float(f1)


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def cross_entropy(logits, y_true) -> float:
    """Mean negative log-likelihood of integer labels under softmax(logits)."""
    logits = np.asarray(logits, dtype=np.float64)
    y = np.asarray(y_true, dtype=np.int64)
    if y.size == 0:
        return float("nan")
    return float(-_log_softmax(logits)[np.arange(len(y)), y].mean())


def mse(y_true, y_pred) -> float:
    a, b = np.asarray(y_true, dtype=np.float64), np.asarray(y_pred, dtype=np.float64)
    if a.size == 0:
        return float("nan")
    return float(_skm().mean_squared_error(a.reshape(len(a), -1), b.reshape(len(b), -1)))


def mae(y_true, y_pred) -> float:
    a, b = np.asarray(y_true, dtype=np.float64), np.asarray(y_pred, dtype=np.float64)
    if a.size == 0:
        return float("nan")
    return float(_skm().mean_absolute_error(a.reshape(len(a), -1), b.reshape(len(b), -1)))


def r2(y_true, y_pred) -> float:
    """Coefficient of determination averaged over the outputs (scikit-learn's ``r2_score`` with
    ``multioutput="uniform_average"``: an output with constant targets scores 1 if predicted
    exactly, else 0)."""
    a, b = np.asarray(y_true, dtype=np.float64), np.asarray(y_pred, dtype=np.float64)
    if a.size == 0:
        return float("nan")
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    if len(a) < 2:  # sklearn: NaN and a warning; one sample has constant targets: 1 if exact, else 0
        return float(np.mean(np.where((a - b) ** 2 == 0, 1.0, 0.0)))
    return float(_skm().r2_score(a, b, multioutput="uniform_average"))


def classification_metrics(logits, y_true, num_classes: int | None = None) -> dict[str, float]:
    """accuracy, macro precision/recall/F1 and cross-entropy ``loss`` from raw logits."""
    logits = np.asarray(logits)
    y_pred = logits.argmax(axis=1)
    # Macro averages run over the classes seen in y_true or y_pred, as sklearn's do; a class
    # absent from both would only drag the average towards 0.
    del num_classes
    p, r, f1 = precision_recall_f1(y_true, y_pred)
    return {
        "accuracy": accuracy(y_true, y_pred),
        "precision": p,
        "recall": r,
        "f1": f1,
        "loss": cross_entropy(logits, y_true),
    }


def regression_metrics(pred, y_true) -> dict[str, float]:
    """mse, mae, r2 and ``loss`` (= mse) of regression outputs."""
    err = mse(y_true, pred)
    return {"mse": err, "mae": mae(y_true, pred), "r2": r2(y_true, pred), "loss": err}


def _token_task(name: str):
    """The teacher-forced metrics of a token task (``ftdsl.stages.tasks``): ``outputs`` is the
    list of its ``batch_stats`` (one per evaluated batch), ``task_call`` the model's task call."""

    def compute(outputs, task_call) -> dict[str, float]:
        from ftdsl.stages.tasks import get_task

        return get_task(name).metrics(outputs, task_call if isinstance(task_call, dict) else {"$call": name})

    compute.__name__ = f"{name}_metrics"
    return compute


# task -> (outputs, labels) -> every tracked quality metric the schema's registry lists for that
# task. Token tasks: (their batch statistics, the task call) -> the teacher-forced metrics;
# the generation metrics (`exact_match`, `rouge_l`, `bleu`: evaluate-only) are GENERATED's.
BY_TASK = {"classify": classification_metrics, "regress": regression_metrics,
           "causal_lm": _token_task("causal_lm"), "seq2seq": _token_task("seq2seq"),
           "token_classify": _token_task("token_classify")}


def _generated():
    from ftdsl.stages.seq_metrics import GENERATION

    return GENERATION


# metric -> (generated texts, references) -> value: computed by `evaluate` from generations
GENERATED: tuple[str, ...] = ("exact_match", "rouge_l", "bleu")


def generation_metrics(names, generated, references) -> dict[str, float]:
    """The generation metrics ``names`` (of GENERATED) of generated texts against references."""
    fns = _generated()
    return {n: float(fns[n](generated, references)) for n in names if n in fns}


def quality_metrics(task: str, outputs, y_true) -> dict[str, float]:
    """The registry's tracked quality metrics of ``task`` (``metrics_for(task, tracked_only=True)``
    less latency and size)."""
    return BY_TASK[task](outputs, y_true)


def latency_summary(timings: list) -> dict:
    """`latency` from (seconds, rows) per timed batch, after two warm-up batches. Per row, the
    fastest of the timed batches (as timeit does): other processes only ever add time, so the
    minimum is the stable number; the median is kept for the curious."""
    steady = timings[2:] or timings
    per_row = [t / max(1, n) for t, n in steady]
    rows = statistics.median(n for _, n in steady)
    best = min(per_row)
    return {"latency_ms": best * rows * 1000, "latency_ms_per_row": best * 1000,
            "latency_ms_median": statistics.median(t for t, _ in steady) * 1000}
