"""FTP210 (a metric nothing produces) and FTP232 (a metric that does not fit the task).

Metric names, the tasks they apply to and whether they are tracked during training come from the
schema's metric registry (`ftdsl/ir/schema/metrics.py`), the same table the engine and the
lowering (`mode` defaults) read.
"""

from __future__ import annotations

from ftdsl.check.graph import declared_splits, model_task, training_data
from ftdsl.diagnostics import make
from ftdsl.ir.convert import did_you_mean
from ftdsl.ir.nodes import DictIR, ListIR, Lit, RefV, Sym
from ftdsl.ir.schema.metrics import METRIC_REGISTRY, TRAIN_SPLIT_METRICS, metrics_for


def _check_metric(ctx, text: str, span, data_name: str | None, task: str | None, where: str):
    split, dot, metric = text.partition(".")
    if not dot:
        yield make("FTP210", f"`{where}` must name `SPLIT.METRIC` (like `valid.accuracy`), not `{text}`", span,
                   label="expected SPLIT.METRIC")
        return
    if split not in ("train", "valid"):
        hint = "stopping on the test split leaks it into training" if split == "test" else None
        yield make("FTP210", f"`{where}`: metrics are produced for `train` and `valid`, not `{split}`", span,
                   label="unknown split", hint=hint or did_you_mean(split, ["train", "valid"]))
        return
    known = metrics_for(task, tracked_only=True)
    if split == "train" and metric not in TRAIN_SPLIT_METRICS:
        yield make("FTP210", f"`{where}`: only `train.loss` is tracked on the train split", span,
                   label="not produced", hint=f"use `valid.{metric}` with a `valid` split")
        return
    if metric not in known:
        m = METRIC_REGISTRY.get(metric)
        if task and m is not None and (m.tracked or (m.tasks and task not in m.tasks)):
            yield make("FTP232", f"`{where}`: `{metric}` does not apply to a {task} model", span,
                       label="wrong metric for the task", hint=f"{task} models produce: {', '.join(known)}")
        elif m is not None:
            yield make("FTP210", f"`{where}`: `{metric}` is measured by `evaluate`, not tracked during training",
                       span, label="not produced while training", hint=f"tracked: {', '.join(known)}")
        else:
            yield make("FTP210", f"`{where}`: unknown metric `{metric}`", span, label="unknown metric",
                       hint=did_you_mean(metric, known) or f"known: {', '.join(known)}")
        return
    if split == "valid" and data_name and data_name in ctx.program.blocks:
        splits = declared_splits(ctx.program.blocks[data_name])
        if "valid" not in splits:
            yield make("FTP210", f"`{where}` watches `{text}`, but data `{data_name}` has no `valid` split", span,
                       label="nothing produces this metric",
                       hint=f"add `valid` to `{data_name}.split`, or watch `train.loss`")


def metrics_produced(ctx):
    """FTP210/FTP232: early_stop, sweep and evaluate metrics must be produced by the pipeline."""
    prog = ctx.program
    tasks_memo: dict = {}
    data_memo: dict = {}
    for name, b in prog.blocks.items():
        if b.kind in ("train", "distill"):
            es = b.value("early_stop")
            if isinstance(es, DictIR):
                m = es.get("metric")
                if isinstance(m, Lit) and isinstance(m.value, str):
                    data = b.value("data")
                    yield from _check_metric(ctx, m.value, m.span, data.target if isinstance(data, RefV) else None,
                                             model_task(prog, name, tasks_memo), f"{name}.early_stop.metric")
        elif b.kind == "sweep":
            m = b.value("metric")
            t = b.value("target")
            if isinstance(m, Lit) and isinstance(m.value, str) and isinstance(t, RefV):
                yield from _check_metric(ctx, m.value, m.span, training_data(prog, t.target, data_memo),
                                         model_task(prog, t.target, tasks_memo), f"{name}.metric")
        elif b.kind == "evaluate":
            ms = b.value("metrics")
            models = b.value("models")
            tasks = {model_task(prog, r.target, tasks_memo) for r in (models.items if isinstance(models, ListIR) else ())
                     if isinstance(r, RefV)} - {None}
            if isinstance(ms, ListIR) and len(tasks) == 1:
                task = tasks.pop()
                for s in ms.items:
                    if isinstance(s, Sym) and s.name not in metrics_for(task):
                        yield make("FTP232", f"`{name}.metrics`: `{s.name}` does not apply to a {task} model", s.span,
                                   label="wrong metric for the task",
                                   hint=f"{task} models: {', '.join(metrics_for(task))}")
