"""Experiment tracking: where a training stage's curve goes besides ``metrics.jsonl``.

The pipeline's ``track = [tensorboard, mlflow, wandb]`` (default ``[tensorboard]``) picks the
backends of ``BACKENDS``; ``MetricsWriter`` (ftdsl/stages/outputs.py) calls one ``Tracking`` per
training run, so train, distill, sweep trials and prune recovery all get it.

- ``tensorboard``: the scalars are MetricsWriter's own event file; this module adds the hparams
  (the stage's resolved attributes and final metrics) to it, so TensorBoard's HPARAMS tab
  compares the runs under ``out/``.
- ``mlflow``: params, per-step metrics, final metrics and the stage's output files (curves,
  metrics) in MLflow's local file store ``mlruns/`` beside the pipeline, or wherever
  ``$MLFLOW_TRACKING_URI`` points. Logged through ``MlflowClient`` (no global active run).
- ``wandb``: the same, offline (``WANDB_MODE=offline`` unless the user set ``WANDB_MODE``).

Tracking never changes a result and is never part of a cache key; a backend that is not
installed is a lint warning (FTP233, found with ``importlib.util.find_spec``, nothing imported),
and a backend that fails at run time is reported once and switched off: training goes on.
Nothing heavy is imported here until a backend is started.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

__all__ = ["BACKENDS", "Backend", "RunInfo", "Tracking", "DEFAULT", "missing", "flat_params"]

DEFAULT = ("tensorboard",)


@dataclass(frozen=True)
class Backend:
    name: str
    module: str  # the import name whose absence is FTP233
    install: str  # what to run to get it
    factory: str  # "module:Class" of the tracker (None for tensorboard: MetricsWriter writes its events)
    doc: str = ""


BACKENDS: dict[str, Backend] = {b.name: b for b in (
    Backend("tensorboard", "tensorboard", 'pip install "ftdsl[train]"', "",
            "scalars and hparams in out/NAME/tensorboard (`tensorboard --logdir out`)"),
    Backend("mlflow", "mlflow", 'pip install "ftdsl[track]"  (or mlflow / mlflow-skinny)',
            "ftdsl.runtime.tracking:MlflowTracker",
            "params, metrics per step, final metrics and output files; mlruns/ beside the pipeline or "
            "$MLFLOW_TRACKING_URI (`mlflow ui --backend-store-uri mlruns`)"),
    Backend("wandb", "wandb", "pip install wandb", "ftdsl.runtime.tracking:WandbTracker",
            "Weights & Biases, offline (`wandb sync wandb/offline-run-*` uploads later)"),
)}


def installed(name: str) -> bool:
    """Whether the backend's library can be imported (found on disk; nothing is imported)."""
    try:
        return importlib.util.find_spec(BACKENDS[name].module) is not None
    except (ImportError, ValueError):
        return False


def missing(names) -> list[str]:
    return [n for n in names if n in BACKENDS and not installed(n)]


def track_setting(program) -> tuple[str, ...]:
    """The pipeline block's `track` (lowered), or the default."""
    pipe = getattr(program, "pipeline", None)
    attr = pipe.attrs.get("track") if pipe is not None else None
    if attr is None:
        return DEFAULT
    from ftdsl.ir.lower import lower_value

    value = lower_value(attr.value)
    if not isinstance(value, list):
        return DEFAULT
    return tuple(dict.fromkeys(v for v in value if isinstance(v, str) and v in BACKENDS))


# --- what a tracker is told ------------------------------------------------------------------

@dataclass
class RunInfo:
    stage: str
    kind: str
    pipeline: str = ""  # the pipeline file (absolute)
    pipeline_dir: Path = field(default_factory=Path)
    key: str = ""  # the stage's cache key
    out: str = ""  # where the stage's outputs are published (out/NAME)
    params: dict[str, Any] = field(default_factory=dict)  # flat_params of the resolved attributes

    @property
    def experiment(self) -> str:
        return Path(self.pipeline).stem if self.pipeline else "ftdsl"


def flat_params(attrs: dict) -> dict[str, Any]:
    """The resolved attributes as flat scalars: `optimizer.lr = 0.001`, `optimizer = "adamw(...)"`, lists
    as JSON text, `null` as "null". Keys starting with `$` (engine-internal) are dropped."""
    from ftdsl.ir.lower import flatten

    out: dict[str, Any] = {}
    for k, v in flatten({k: v for k, v in attrs.items() if not str(k).startswith("$")}).items():
        if v is None:
            out[k] = "null"
        elif isinstance(v, (bool, int, str)) or (isinstance(v, float) and math.isfinite(v)):
            out[k] = v
        else:
            out[k] = json.dumps(v, sort_keys=True, default=str)[:500]
    return out


def _numbers(metrics: dict) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))}


# --- the trackers of one run -----------------------------------------------------------------

class Tracking:
    """The backends one training run logs to. Every call is best effort: a backend that raises is
    reported once through ``warn`` and switched off."""

    def __init__(self, names, info: RunInfo, warn: Callable[[str], None] | None = None):
        self.names = tuple(names)
        self.info = info
        self.tensorboard = "tensorboard" in self.names
        self._warn = warn or (lambda text: None)
        self._trackers: dict[str, Any] = {}
        self._off: set[str] = set()
        self._finished = False

    @property
    def external(self) -> list[str]:
        return [n for n in self.names if n != "tensorboard" and n in BACKENDS and n not in self._off]

    def _each(self, what: str, call: Callable[[Any], None]) -> None:
        for name in self.external:
            try:
                tracker = self._trackers.get(name)
                if tracker is None:
                    if not installed(name):
                        raise ModuleNotFoundError(f"{BACKENDS[name].module} is not installed "
                                                  f"({BACKENDS[name].install})")
                    from ftdsl.stages import load_object

                    tracker = self._trackers[name] = load_object(BACKENDS[name].factory)(self.info)
                call(tracker)
            except Exception as e:  # noqa: BLE001 - tracking never stops training
                self._off.add(name)
                self._trackers.pop(name, None)
                self._warn(f"warning: {name} tracking is off for this stage ({what}: {type(e).__name__}: "
                           f"{str(e)[:300]})")

    def log(self, step: int, split: str, metrics: dict[str, Any]) -> None:
        values = _numbers({k: v for k, v in metrics.items() if k not in ("step", "split", "epoch")})
        if values:
            self._each("log", lambda t: t.log(int(step), split, values))

    def replay(self, records: list[dict[str, Any]]) -> None:
        """A resumed run: the checkpointed curve goes to the (new) tracker runs first."""
        for r in records:
            self.log(int(r.get("step", 0)), str(r.get("split", "train")), r)

    def finish(self, final: dict[str, Any], files: list[Path], tb_writer=None) -> None:
        if self.tensorboard and tb_writer is not None:
            try:
                write_hparams(tb_writer, self.info.params, _numbers(final))
            except Exception as e:  # noqa: BLE001
                self._warn(f"warning: TensorBoard hparams not written ({type(e).__name__}: {str(e)[:300]})")
        values = _numbers(final)
        self._each("finish", lambda t: t.finish(values, [f for f in files if f.is_file()]))
        self._finished = True
        self.close()

    def close(self) -> None:
        """End the backends' runs: finished after `finish`, killed otherwise (an interrupted stage)."""
        for name, tracker in list(self._trackers.items()):
            try:
                tracker.close(finished=self._finished)
            except Exception:  # noqa: BLE001
                pass
        self._trackers.clear()


# --- TensorBoard hparams ---------------------------------------------------------------------

def write_hparams(writer, params: dict[str, Any], final: dict[str, float]) -> None:
    """The HPARAMS tab's session (the attributes and the final metrics, as `final/NAME` scalars) in the
    run's own event file (SummaryWriter.add_hparams would make a sub-run per call)."""
    from torch.utils.tensorboard.summary import hparams

    metric_dict = {f"final/{k}": v for k, v in final.items()}
    hp = {k: v for k, v in params.items() if isinstance(v, (bool, int, float, str))}
    exp, ssi, sei = hparams(hp, metric_dict)
    fw = writer._get_file_writer()
    for s in (exp, ssi, sei):
        fw.add_summary(s)
    for k, v in metric_dict.items():
        writer.add_scalar(k, v, 0)
    writer.flush()


# --- MLflow ----------------------------------------------------------------------------------

_MLFLOW_KEY = re.compile(r"[^A-Za-z0-9_\-. :/]")


def _mlflow_key(k: str) -> str:
    return _MLFLOW_KEY.sub("_", k)[:250] or "_"


def mlflow_uri(pipeline_dir: Path) -> str:
    """$MLFLOW_TRACKING_URI, else the file store `mlruns/` beside the pipeline."""
    return os.environ.get("MLFLOW_TRACKING_URI") or (Path(pipeline_dir).resolve() / "mlruns").as_uri()


class MlflowTracker:
    def __init__(self, info: RunInfo):
        uri = mlflow_uri(info.pipeline_dir)
        if uri.startswith("file:") or "://" not in uri:
            # MLflow 3 refuses its file store unless asked (it recommends a database; `mlflow ui` reads both)
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=uri)
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or info.experiment
        exp = self.client.get_experiment_by_name(name)
        exp_id = exp.experiment_id if exp is not None else self.client.create_experiment(name)
        tags = {"ftdsl.stage": info.stage, "ftdsl.kind": info.kind, "ftdsl.key": info.key,
                "ftdsl.pipeline": info.pipeline, "ftdsl.out": info.out}
        self.run_id = self.client.create_run(exp_id, run_name=info.stage,
                                             tags={k: v for k, v in tags.items() if v}).info.run_id
        self.step = 0
        from mlflow.entities import Param

        params = [Param(_mlflow_key(k), str(v)[:6000]) for k, v in info.params.items()]
        for i in range(0, len(params), 100):
            self.client.log_batch(self.run_id, params=params[i:i + 100])

    def _metrics(self, values: dict[str, float], step: int, prefix: str = ""):
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        return [Metric(_mlflow_key(prefix + k), v, ts, step) for k, v in values.items()]

    def log(self, step: int, split: str, values: dict[str, float]) -> None:
        self.step = max(self.step, step)
        self.client.log_batch(self.run_id, metrics=self._metrics(values, step, f"{split}/"))

    def finish(self, final: dict[str, float], files: list[Path]) -> None:
        ms = self._metrics(final, self.step)
        for i in range(0, len(ms), 500):
            self.client.log_batch(self.run_id, metrics=ms[i:i + 500])
        for f in files:
            self.client.log_artifact(self.run_id, str(f))

    def close(self, finished: bool) -> None:
        self.client.set_terminated(self.run_id, "FINISHED" if finished else "KILLED")


# --- Weights & Biases (offline) ------------------------------------------------------------

class WandbTracker:
    def __init__(self, info: RunInfo):
        os.environ.setdefault("WANDB_MODE", "offline")  # never uploads unless the user says so
        os.environ.setdefault("WANDB_SILENT", "true")
        import wandb

        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT") or info.experiment, name=info.stage,
                              dir=str(info.pipeline_dir), config=dict(info.params), reinit="create_new",
                              tags=[info.kind], notes=f"ftdsl key {info.key}" if info.key else None)

    def log(self, step: int, split: str, values: dict[str, float]) -> None:
        self.run.log({f"{split}/{k}": v for k, v in values.items()}, step=step)

    def finish(self, final: dict[str, float], files: list[Path]) -> None:
        self.run.summary.update(final)
        for f in files:
            self.run.save(str(f), base_path=str(f.parent), policy="now")

    def close(self, finished: bool) -> None:
        self.run.finish(exit_code=0 if finished else 1)
