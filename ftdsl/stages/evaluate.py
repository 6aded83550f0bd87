"""`evaluate`: compare models on one split — quality metrics, latency and size — as a Report.

Models are TorchModels (run in PyTorch; size = the weights' bytes) or ONNX exports (run in
onnxruntime with the tokenizer shipped beside them; size = the .onnx file). Latency is measured
the same way for both: the median wall time of one batch, after two warm-up batches.

Writes `report.json`, `report.md` (a table) and `report.png` under `out/<stage>/`, and
`samples.jsonl` (one generation per line) when generative models generated.

Token-task models (causal_lm, seq2seq, token_classify) are evaluated by
``ftdsl.stages.evaluate_seq``: teacher-forced metrics from the task, generation metrics from
generated texts.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ftdsl.errors import StageError
from ftdsl.ir.schema.metrics import QUALITY_METRICS as QUALITY  # computed from predictions (the registry's)
from ftdsl.stages.tasks import is_seq_task
MEASURED = ("latency", "size")  # the registry's evaluate-only metrics, measured here rather than computed


@dataclass
class Report:
    split: str
    wanted: list[str]
    rows: list[dict] = field(default_factory=list)  # one per model: {"model": name, metric: value, ...}

    @property
    def metrics(self) -> dict:
        """`{"finetune.accuracy": 0.91, ...}`: what the run summary shows."""
        return {f"{r['model']}.{k}": v for r in self.rows for k, v in r.items() if k != "model"}

    def save(self, dir: Path) -> None:
        Path(dir).mkdir(parents=True, exist_ok=True)
        (Path(dir) / "report.json").write_text(json.dumps({"split": self.split, "metrics": self.wanted,
                                                           "rows": self.rows}, indent=1), encoding="utf-8")

    @classmethod
    def load(cls, dir: Path) -> "Report":
        d = json.loads((Path(dir) / "report.json").read_text(encoding="utf-8"))
        return cls(d["split"], d["metrics"], d["rows"])


def _predict(module, split, *, batch: int, tokenizer, max_length, timings: list | None = None):
    """Outputs and labels of ``split``. ``module``: a torch module, or any callable taking the
    batch's inputs as keywords (``x`` or ``input_ids``/``attention_mask``) and returning logits
    as a tensor or a numpy array (an onnxruntime model, see :class:`_OrtRunner`)."""
    import torch

    from ftdsl.stages.batching import iter_batches

    outs, ys = [], []
    with torch.inference_mode():
        for b in iter_batches(split, batch_size=batch, shuffle=False, tokenizer=tokenizer, max_length=max_length):
            inputs = {k: v for k, v in b.items() if k in ("x", "input_ids", "attention_mask")}
            t0 = time.perf_counter()
            out = module(**inputs)
            if timings is not None:
                timings.append((time.perf_counter() - t0, len(b["y"])))
            outs.append(out.float().numpy() if hasattr(out, "float") else np.asarray(out, dtype=np.float32))
            ys.append(b["y"].numpy())
    return np.concatenate(outs), np.concatenate(ys)


def _latency(module, split, *, batch: int, tokenizer, max_length) -> dict:
    """Wall time of a forward pass on `batch` rows (fastest per row, after two warm-up batches).

    A small split is passed over again until there are 12 timed batches (at most 20 passes), so
    the median is not one of the first, slow calls (PyTorch's first few forward passes build
    kernels and caches)."""
    timings: list = []
    for _ in range(20):
        _predict(module, split, batch=batch, tokenizer=tokenizer, max_length=max_length, timings=timings)
        if len(timings) >= 12:
            break
    from ftdsl.stages.metrics import latency_summary

    return latency_summary(timings)



class _OrtRunner:
    """Calls an OnnxModel like a module: keyword inputs (torch tensors) -> numpy logits. ORT gets
    as many intra-op threads as torch uses, so the latency columns compare like with like."""

    def __init__(self, art):
        import torch

        self.art = art
        self.threads = torch.get_num_threads()
        art.session(self.threads)  # open it now: loading is not inference time

    def __call__(self, **inputs):
        return self.art.predict(inputs, threads=self.threads)


def _runner(art, name: str):
    """(callable for _predict, size in bytes (lazy), parameter count or None) for an artifact:
    an OnnxModel runs in onnxruntime (size: the .onnx file); anything with ``build()``
    (TorchModel, a quantized TorchModel) runs in PyTorch (size: its weights)."""
    from ftdsl.stages.artifacts import runs_in_onnxruntime

    if runs_in_onnxruntime(art):
        return _OrtRunner(art), lambda: int(art.size_bytes), None
    if hasattr(art, "build"):
        module = art.build()

        # a quantized model's packed int8 weights are not `parameters()`: it counts them itself
        n = getattr(art, "num_params", None)
        n = n() if callable(n) else n
        size = lambda: int(art.size_bytes)  # noqa: E731
        if getattr(art, "adapter", None):  # what runs is the base and the adapter (the cache keeps the adapter)
            size = lambda: sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))  # noqa: E731
        return module, size, int(n if n is not None else sum(p.numel() for p in module.parameters()))
    # the front end lets only models reach `evaluate.models` (FTP209): anything else is a bug
    raise TypeError(f"`{name}`: evaluate got a {type(art).__name__}, not a model")


def run(inputs: dict, attrs: dict, ctx) -> Report:
    import torch

    from ftdsl.stages import metrics as M

    data = inputs["data"]
    split_name = attrs["data"]["split"]
    split = data.split(split_name) if hasattr(data, "split") else data.splits[split_name]
    if split is None or len(split) == 0:
        raise StageError("FTP510", f"split `{split_name}` of `{attrs['data']['$ref']}` is empty")
    wanted = list(attrs["metrics"])  # the lowering fills the task's default (schema DEFAULT_EVALUATE)
    report = Report(split_name, wanted)
    torch.manual_seed(ctx.seed)
    ctx.reporter.start(len(attrs["models"]), f"evaluate on {split_name} ({len(split)} rows)")
    samples: list[dict] | None = None  # generations of the generative models (samples.jsonl)
    for i, ref in enumerate(attrs["models"]):
        name = ref["$ref"]
        art = inputs[f"models[{i}]"]
        if not getattr(art, "trained", False):
            raise StageError("FTP510", f"`{name}` is an untrained model; evaluate a `train` stage instead")
        if is_seq_task(_task_name(art)):
            row, got = _seq_model(art, name, data, split, attrs, wanted, ctx)
            if got is not None:
                samples = (samples or []) + got
            report.rows.append(row)
            ctx.reporter.update(i + 1)
            ctx.reporter.log(name + ": " + "  ".join(f"{k} {v:.4g}" for k, v in row.items() if isinstance(v, float)))
            continue
        runner, size_bytes, params = _runner(art, name)
        tokenizer = art.load_tokenizer()
        if tokenizer is None and getattr(data, "tokenizer_dir", None) is not None:
            from ftdsl.stages.tokenizer import load_tokenizer

            tokenizer = load_tokenizer(data.tokenizer_dir)
        max_length = getattr(data, "max_length", None) or art.spec.get("max_length")
        pred, y = _predict(runner, split, batch=attrs["batch"], tokenizer=tokenizer, max_length=max_length)
        task = _task_name(art)
        row: dict = {"model": name}
        q = M.quality_metrics(task, pred, y if task == "classify" else y.reshape(pred.shape))
        for m in wanted:
            if m in QUALITY and m in q:
                row[m] = float(q[m])
        if MEASURED[0] in wanted:
            row.update(_latency(runner, split, batch=attrs["batch"], tokenizer=tokenizer, max_length=max_length))
        if MEASURED[1] in wanted:
            row["size_mb"] = size_bytes() / 1e6
            if params is not None:
                row["params"] = params
        report.rows.append(row)
        ctx.reporter.update(i + 1)
        ctx.reporter.log(name + ": " + "  ".join(f"{k} {v:.4g}" for k, v in row.items()
                                                  if isinstance(v, float)))
    _write_outputs(report, Path(ctx.out_dir), samples)
    return report


def _task_name(art) -> str:
    task = getattr(art, "task", None)
    if task is None:
        task = (getattr(art, "spec", None) or getattr(art, "meta", None) or {}).get("task")
    return task.get("$call", "classify") if isinstance(task, dict) else "classify"


def _seq_model(art, name: str, data, split, attrs: dict, wanted: list[str], ctx) -> tuple[dict, list | None]:
    """A token-task model's row (ftdsl.stages.evaluate_seq) and its first `samples` generations
    (None when it generated nothing)."""
    from ftdsl.stages import evaluate_seq
    from ftdsl.stages.artifacts import runs_in_onnxruntime
    from ftdsl.stages.tasks.generation import settings

    if runs_in_onnxruntime(art):
        raise StageError("FTP510", f"`{name}`: evaluate runs {_task_name(art)} models in PyTorch, and this one is "
                         f"a {type(art).__name__}", hint="evaluate the stage it was exported from")
    module, tokenizer = evaluate_seq.seq_module(art)
    q, got = evaluate_seq.evaluate_model(art, module, name, data, split, attrs, wanted, ctx, tokenizer)
    row: dict = {"model": name, **q}
    if MEASURED[1] in wanted:
        size = int(art.size_bytes)
        if getattr(art, "adapter", None):  # what runs is the base and the adapter, as for the other models
            size = sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))
        row["size_mb"] = size / 1e6
        row["params"] = int(sum(p.numel() for p in module.parameters()))
    if not got:
        return row, None
    n = settings(attrs.get("generate")).samples
    return row, [{"model": name, **s} for s in got[:n]]


def _write_outputs(report: Report, out: Path, samples: list[dict] | None = None) -> None:
    from ftdsl.runtime.atomic import write_bytes_atomic, write_json_atomic

    out.mkdir(parents=True, exist_ok=True)
    if samples is not None:  # one JSON object per line: model, row, input, reference, generated
        write_bytes_atomic(out / "samples.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n"
                                                          for r in samples).encode("utf-8"))
    write_json_atomic(out / "report.json", {"split": report.split, "rows": report.rows})
    cols: list[str] = []  # every column any row has (an ONNX row has no `params`), in first-seen order
    for r in report.rows:
        cols += [c for c in r if c != "model" and c not in cols]
    md = ["| model | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for r in report.rows:
        md.append(f"| {r['model']} | " + " | ".join(_cell(r.get(c)) for c in cols) + " |")
    write_bytes_atomic(out / "report.md", ("\n".join(md) + "\n").encode())
    numeric = [c for c in cols if c in QUALITY or c in ("latency_ms", "size_mb")]
    if not numeric or not report.rows:
        return
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(numeric), figsize=(3.2 * len(numeric), 3), squeeze=False)
    names = [r["model"] for r in report.rows]
    for ax, c in zip(axes[0], numeric):
        ax.bar(names, [r.get(c, 0) or 0 for r in report.rows], color="#4c72b0")
        ax.set_title(c)
        ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    write_bytes_atomic(out / "report.png", buf.getvalue())


def _cell(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)
