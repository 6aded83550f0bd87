"""What a user looks at under ``out/<stage>/``: metrics.jsonl, metrics.json, TensorBoard events
and curves.png.

``metrics.jsonl`` has one JSON object per logged train step or evaluation
(``{"step": 10, "split": "train", "loss": 0.52, "lr": 0.001, ...}``). It is appended while
training runs and rewritten atomically from the checkpointed history on resume, so a resumed
run's file has no duplicate or lost lines. ``metrics.json`` (final metrics) and ``curves.png``
are written atomically at the end.

The pipeline's ``track`` setting picks the experiment trackers (ftdsl/runtime/tracking.py):
``tensorboard`` is the event file here (plus hparams at the end); MLflow and W&B get the same
records through ``Tracking``. ``MetricsWriter.for_stage(ctx, attrs)`` builds a stage's writer.

These files are written into the stage's cache entry while it is built (``ctx.out_dir``); the
executor copies them to ``out/<stage>/`` through ``ftdsl.runtime.outdir`` (ownership-checked,
atomic, disk full = FTP505), so nothing here writes to the user's folder directly.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

from ftdsl.runtime.atomic import json_safe, write_bytes_atomic, write_json_atomic

__all__ = ["MetricsWriter", "plot_curves", "json_safe"]


class MetricsWriter:
    """Writes the training curve and final metrics of one stage under ``out_dir``."""

    def __init__(self, out_dir: str | os.PathLike[str], *, tensorboard: bool = True, tracking=None):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.jsonl_path = self.out_dir / "metrics.jsonl"
        self.json_path = self.out_dir / "metrics.json"
        self.png_path = self.out_dir / "curves.png"
        self.tb_dir = self.out_dir / "tensorboard"
        self.records: list[dict[str, Any]] = []
        self.tracking = tracking  # runtime.tracking.Tracking: hparams, MLflow, W&B (None: TensorBoard scalars only)
        self._tensorboard = tensorboard if tracking is None else tracking.tensorboard
        self._tb = None
        self._purge_step: int | None = None
        self._jsonl = None

    @classmethod
    def for_stage(cls, ctx, attrs: dict) -> "MetricsWriter":
        """The writer of a training stage, with the pipeline's trackers (`ctx.tracking`, set by the executor)."""
        from ftdsl.runtime.tracking import DEFAULT, RunInfo, Tracking, flat_params

        t = getattr(ctx, "tracking", None) or {}
        info = RunInfo(ctx.name, ctx.kind, t.get("pipeline", ""), Path(ctx.pipeline_dir), getattr(ctx, "key", ""),
                       t.get("out", ""), flat_params(attrs))
        reporter = getattr(ctx, "reporter", None)
        warn = reporter.log if reporter is not None else None
        return cls(ctx.out_dir, tracking=Tracking(t.get("track", DEFAULT), info, warn))

    # -- the curve -------------------------------------------------------------------------

    def reset(self, history: list[dict[str, Any]] | None = None, *, resume_step: int | None = None) -> None:
        """Start the curve over from ``history`` (the records a checkpoint kept).

        ``resume_step``: TensorBoard events after it (from the killed run) are purged.
        """
        self.close()
        self.records = [dict(r) for r in (history or [])]
        text = "".join(json.dumps(json_safe(r), sort_keys=True) + "\n" for r in self.records)
        write_bytes_atomic(self.jsonl_path, text.encode("utf-8"), durable=False)
        self._purge_step = None if resume_step is None else resume_step + 1
        if self.tracking is not None and self.records:
            self.tracking.replay(self.records)

    def log(self, step: int, split: str = "train", **metrics: Any) -> dict[str, Any]:
        """Append one record (and its TensorBoard scalars); returns the record."""
        rec = {"step": int(step), "split": split, **json_safe(metrics)}
        self.records.append(rec)
        if self._jsonl is None:
            self._jsonl = open(self.jsonl_path, "a", encoding="utf-8")
        self._jsonl.write(json.dumps(rec, sort_keys=True) + "\n")
        self._jsonl.flush()
        tb = self._writer()
        if tb is not None:
            for k, v in rec.items():
                if k not in ("step", "split", "epoch") and isinstance(v, (int, float)) and not isinstance(v, bool):
                    tb.add_scalar(f"{split}/{k}", v, int(step))
        if self.tracking is not None:
            self.tracking.log(int(step), split, rec)
        return rec

    def _writer(self):
        if not self._tensorboard:
            return None
        if self._tb is None:
            from torch.utils.tensorboard import SummaryWriter

            kwargs = {"purge_step": self._purge_step} if self._purge_step is not None else {}
            self._tb = SummaryWriter(str(self.tb_dir), **kwargs)
        return self._tb

    # -- the end ---------------------------------------------------------------------------

    def finalize(self, metrics: dict[str, Any], *, plot: bool = True) -> None:
        """Write metrics.json and curves.png (both atomically) and close the event file."""
        write_json_atomic(self.json_path, json_safe(metrics))
        if plot and self.records:
            write_bytes_atomic(self.png_path, plot_curves(self.records))
        if self.tracking is not None:
            if self._jsonl is not None:
                self._jsonl.flush()
            self.tracking.finish(metrics, [self.json_path, self.jsonl_path, self.png_path], self._writer())
        self.close()

    def close(self) -> None:
        if self.tracking is not None:
            self.tracking.close()
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
        if self._tb is not None:
            self._tb.flush()
            self._tb.close()
            self._tb = None


def plot_curves(records: list[dict[str, Any]]) -> bytes:
    """PNG bytes: losses vs step (train and every eval split), and eval accuracy/F1 (or MSE/MAE)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    def series(split: str, key: str):
        pts = [(r["step"], r[key]) for r in records if r.get("split") == split and isinstance(r.get(key), (int, float))]
        return [p[0] for p in pts], [p[1] for p in pts]

    splits = sorted({r.get("split") for r in records if r.get("split") not in (None, "train")})
    from ftdsl.ir.schema.metrics import DEFAULT_EVALUATE

    quality_keys = [k for names in DEFAULT_EVALUATE.values() for k in names  # accuracy, f1 / mse, mae
                    if any(k in r for r in records if r.get("split") != "train")]
    ncols = 2 if quality_keys else 1
    fig = Figure(figsize=(6 * ncols, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, ncols, 1)
    xs, ys = series("train", "loss")
    if xs:
        ax.plot(xs, ys, label="train loss", linewidth=1)
    for s in splits:
        xs, ys = series(s, "loss")
        if xs:
            ax.plot(xs, ys, marker="o", label=f"{s} loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    if quality_keys:
        ax2 = fig.add_subplot(1, ncols, 2)
        for s in splits:
            for k in quality_keys:
                xs, ys = series(s, k)
                if xs:
                    ax2.plot(xs, ys, marker="o", label=f"{s} {k}")
        ax2.set_xlabel("step")
        ax2.grid(alpha=0.3)
        ax2.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
