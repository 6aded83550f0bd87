"""Evaluation metrics in plain numpy (checked against sklearn.metrics in tests).

Which metrics exist, the tasks they apply to and their direction are declared once, in the schema's
metric registry (``ftdsl/ir/schema/metrics.py``); ``quality_metrics(task, ...)`` computes exactly
the registry's quality metrics of a task (tests/test_schema_contract.py ties the two). Latency and
size are measured by the evaluate stage, not computed from predictions.

Conventions follow scikit-learn's defaults: macro averages run over the labels that occur in
``y_true`` or ``y_pred`` (unless ``labels`` is given), and a class whose precision or recall is
undefined (0/0) counts as 0.
"""

from __future__ import annotations

import numpy as np

__all__ = [
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
    "BY_TASK",
]


def _labels(y_true: np.ndarray, y_pred: np.ndarray, labels=None) -> np.ndarray:
    if labels is not None:
        return np.asarray(labels)
    return np.union1d(np.unique(y_true), np.unique(y_pred))


def accuracy(y_true, y_pred) -> float:
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.size == 0:
        return float("nan")
    return float(np.mean(y_true == y_pred))


def confusion_matrix(y_true, y_pred, labels=None) -> np.ndarray:
    """``C[i, j]`` = number of samples of true class ``labels[i]`` predicted as ``labels[j]``."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    labs = _labels(y_true, y_pred, labels)
    index = {v: i for i, v in enumerate(labs.tolist())}
    k = len(labs)
    ti = np.array([index.get(v, -1) for v in y_true.tolist()], dtype=np.int64)
    pi = np.array([index.get(v, -1) for v in y_pred.tolist()], dtype=np.int64)
    keep = (ti >= 0) & (pi >= 0)
    cm = np.zeros((k, k), dtype=np.int64)
    np.add.at(cm, (ti[keep], pi[keep]), 1)
    return cm


def precision_recall_f1(y_true, y_pred, labels=None) -> tuple[float, float, float]:
    """Macro-averaged precision, recall and F1 (sklearn's ``average="macro"``, zero_division=0)."""
    cm = confusion_matrix(y_true, y_pred, labels)
    if cm.size == 0:
        return 0.0, 0.0, 0.0
    tp = np.diag(cm).astype(np.float64)
    pred_pos = cm.sum(axis=0).astype(np.float64)
    true_pos = cm.sum(axis=1).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        prec = np.where(pred_pos > 0, tp / pred_pos, 0.0)
        rec = np.where(true_pos > 0, tp / true_pos, 0.0)
        denom = pred_pos + true_pos  # = 2tp + fp + fn
        f1 = np.where(denom > 0, 2 * tp / denom, 0.0)
    return float(prec.mean()), float(rec.mean()), float(f1.mean())


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
    return float(np.mean((a - b) ** 2))


def mae(y_true, y_pred) -> float:
    a, b = np.asarray(y_true, dtype=np.float64), np.asarray(y_pred, dtype=np.float64)
    return float(np.mean(np.abs(a - b)))


def r2(y_true, y_pred) -> float:
    """Coefficient of determination averaged over the outputs (scikit-learn's ``r2_score`` with
    ``multioutput="uniform_average"``: an output with constant targets scores 1 if predicted
    exactly, else 0)."""
    a, b = np.asarray(y_true, dtype=np.float64), np.asarray(y_pred, dtype=np.float64)
    if a.size == 0:
        return float("nan")
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    sse = ((a - b) ** 2).sum(axis=0)
    sst = ((a - a.mean(axis=0)) ** 2).sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        per = np.where(sst > 0, 1.0 - sse / np.where(sst > 0, sst, 1.0), np.where(sse == 0, 1.0, 0.0))
    return float(per.mean())


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


# task -> (outputs, labels) -> every quality metric the schema's registry lists for that task
BY_TASK = {"classify": classification_metrics, "regress": regression_metrics}


def quality_metrics(task: str, outputs, y_true) -> dict[str, float]:
    """The registry's quality metrics of ``task`` (``metrics_for(task)`` less latency and size)."""
    return BY_TASK[task](outputs, y_true)
