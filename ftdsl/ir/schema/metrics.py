"""The metric registry: every metric ftdsl computes, the tasks it applies to, and its direction.

This is the one place that says whether higher is better. `early_stop.mode` and `sweep.mode`
default from it (the lowering fills them in, so `plan` shows the direction `run` uses), the
checker validates `SPLIT.METRIC` names against it, and the engine's metric functions
(`ftdsl/stages/metrics.py: FUNCTIONS`) are tied to it by tests/test_schema_contract.py.
Nothing here imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass

CLASSIFY, REGRESS = "classify", "regress"
CAUSAL_LM, SEQ2SEQ, TOKEN_CLASSIFY = "causal_lm", "seq2seq", "token_classify"
GENERATIVE = (CAUSAL_LM, SEQ2SEQ)


@dataclass(frozen=True)
class Metric:
    name: str
    tasks: tuple[str, ...]  # the model tasks it applies to; () for any model (latency, size)
    higher_is_better: bool
    doc: str  # how it is computed
    tracked: bool = True  # computed on `valid` during training (usable as `valid.NAME`); else evaluate-only

    @property
    def mode(self) -> str:
        return "max" if self.higher_is_better else "min"


_METRICS = (
    Metric("accuracy", (CLASSIFY,), True, "fraction of rows whose arg-max class is the label"),
    Metric("f1", (CLASSIFY,), True, "macro-averaged F1 over the classes present (scikit-learn's `average=\"macro\"`)"),
    Metric("precision", (CLASSIFY,), True, "macro-averaged precision (a class never predicted counts 0)"),
    Metric("recall", (CLASSIFY,), True, "macro-averaged recall"),
    Metric("loss", (CLASSIFY, REGRESS, CAUSAL_LM, SEQ2SEQ, TOKEN_CLASSIFY), False,
           "mean cross-entropy of the logits (classify; per labelled token for causal_lm, seq2seq, "
           "token_classify) or mean squared error (regress)"),
    Metric("perplexity", GENERATIVE, False, "exp of the mean per-token cross-entropy of the labelled tokens"),
    Metric("token_accuracy", (CAUSAL_LM, SEQ2SEQ, TOKEN_CLASSIFY), True,
           "fraction of labelled tokens whose arg-max prediction is the label (teacher forcing; "
           "token_classify: words)"),
    Metric("exact_match", GENERATIVE, True, "fraction of rows whose generated text equals the reference "
           "(whitespace-normalized)", tracked=False),
    Metric("rouge_l", GENERATIVE, True, "mean ROUGE-L F-measure of generations against references "
           "(Google's `rouge-score`, with stemming)", tracked=False),
    Metric("bleu", GENERATIVE, True, "corpus BLEU of generations against references (`sacrebleu`, 0-100)",
           tracked=False),
    Metric("entity_f1", (TOKEN_CLASSIFY,), True, "micro-averaged entity-level F1 over BIO spans (`seqeval`)"),
    Metric("entity_precision", (TOKEN_CLASSIFY,), True, "micro-averaged entity-level precision (`seqeval`)"),
    Metric("entity_recall", (TOKEN_CLASSIFY,), True, "micro-averaged entity-level recall (`seqeval`)"),
    Metric("mse", (REGRESS,), False, "mean squared error over all outputs"),
    Metric("mae", (REGRESS,), False, "mean absolute error over all outputs"),
    Metric("r2", (REGRESS,), True, "coefficient of determination, 1 - SSE/SST averaged over the outputs"),
    Metric("latency", (), False, "milliseconds per row: the fastest timed batch, divided by its rows", tracked=False),
    Metric("size", (), False, "size of the model's files on disk, in MB", tracked=False),
)

METRIC_REGISTRY: dict[str, Metric] = {m.name: m for m in _METRICS}
METRICS: tuple[str, ...] = tuple(METRIC_REGISTRY)  # the symbols `evaluate.metrics` accepts
QUALITY_METRICS: tuple[str, ...] = tuple(m.name for m in _METRICS if m.tasks)  # computed from predictions
TRAIN_SPLIT_METRICS: tuple[str, ...] = ("loss",)  # what the train split reports while training


# `evaluate.metrics` when it is not written, by the task of the models compared
DEFAULT_EVALUATE: dict[str, tuple[str, ...]] = {
    CLASSIFY: ("accuracy", "f1"), REGRESS: ("mse", "mae"),
    CAUSAL_LM: ("loss", "perplexity", "token_accuracy"), SEQ2SEQ: ("loss", "rouge_l", "exact_match"),
    TOKEN_CLASSIFY: ("entity_f1", "token_accuracy"),
}


def summary_metrics(splits: tuple[str, ...] = ("test", "valid"), *, loss: bool = False) -> tuple[str, ...]:
    """`SPLIT.NAME` paths worth showing first for a model (summary tables, `before.*` comparisons):
    each task's default `evaluate` metrics, split by split, then `valid.loss` when ``loss``."""
    paths = [f"{s}.{m}" for s in splits for names in DEFAULT_EVALUATE.values() for m in names]
    return tuple(dict.fromkeys(paths + (["valid.loss"] if loss else [])))  # once each (several tasks list loss)


def metrics_for(task: str | None, *, tracked_only: bool = False) -> tuple[str, ...]:
    """Metric names that apply to a model of `task` (None: unknown task, every quality metric)."""
    return tuple(m.name for m in _METRICS
                 if (not tracked_only or m.tracked) and (not m.tasks or task is None or task in m.tasks))


def metric_mode(metric: str, default: str = "max") -> str:
    """`max` or `min` for a metric name or a `SPLIT.METRIC` path (`valid.loss` -> `min`)."""
    name = metric.rpartition(".")[2]
    m = METRIC_REGISTRY.get(name)
    return m.mode if m is not None else default


def better(mode: str, value: float, best: float, min_delta: float = 0.0) -> bool:
    """Whether `value` improves on `best` by more than `min_delta` in direction `mode`."""
    return value > best + min_delta if mode == "max" else value < best - min_delta
