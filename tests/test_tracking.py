"""`track = [tensorboard, mlflow, wandb]` (issue 11, item 6): what each tracker receives from a real
`ftdsl run` of a tiny iris MLP, read back with the tracker's own reader (TensorBoard's
EventAccumulator and hparams protos, MlflowClient), and FTP233 for a tracker that is not installed.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from ftdsl.cli import main
from ftdsl.runtime import tracking

PIPE = """\
pipeline p {{ seed = 1{track} }}
data d {{ source = sklearn("iris") }}
model m {{ arch = mlp(hidden = [16]), task = classify(labels = 3) }}
train fit {{
  model = m, data = d
  max_steps = 6, batch = 16
  optimizer = adamw(lr = 0.003)
  precision = fp32
}}
"""


def pipeline(tmp_path: Path, track: str | None = None) -> Path:
    p = tmp_path / "p.ftp"
    p.write_text(PIPE.format(track=f", track = {track}" if track is not None else ""))
    return p


def run(p: Path, *extra) -> dict:
    out = p.parent / "summary.json"
    assert main(["run", str(p), "--cache", str(p.parent / "cache"), "-q", "--summary-json", str(out), *extra]) == 0
    return json.loads(out.read_text())


def fit_of(summary: dict) -> dict:
    return next(s for s in summary["stages"] if s["name"] == "fit")


# --- TensorBoard: hparams beside the scalars -----------------------------------------------------

def test_tensorboard_hparams_hold_the_attributes_and_final_metrics(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    p = pipeline(tmp_path)  # the default: track = [tensorboard]
    run(p)
    final = json.loads((tmp_path / "out" / "fit" / "metrics.json").read_text())
    acc = EventAccumulator(str(tmp_path / "out" / "fit" / "tensorboard"))
    acc.Reload()
    content = acc.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    hp = start.session_start_info.hparams
    assert hp["optimizer.lr"].number_value == pytest.approx(0.003)
    assert hp["batch"].number_value == 16 and hp["max_steps"].number_value == 6
    assert hp["optimizer"].string_value == "adamw(...)" and hp["precision"].string_value == "fp32"
    exp = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert "final/test.accuracy" in {m.name.tag for m in exp.metric_infos}
    # the metric the HPARAMS tab shows is a scalar of the same run, equal to metrics.json
    assert acc.Scalars("final/test.accuracy")[-1].value == pytest.approx(final["test.accuracy"])
    assert [e.step for e in acc.Scalars("train/loss")]  # the curve is still there


def test_track_empty_writes_no_tensorboard_events(tmp_path):
    p = pipeline(tmp_path, "[]")
    run(p)
    out = tmp_path / "out" / "fit"
    assert (out / "metrics.jsonl").is_file() and (out / "metrics.json").is_file()
    assert not (out / "tensorboard").exists()


def test_track_is_in_no_cache_key(tmp_path, capsys):
    keys = []
    for track in (None, "[tensorboard, mlflow, wandb]", "[]"):
        p = pipeline(tmp_path, track)
        capsys.readouterr()
        assert main(["plan", str(p), "--cache", str(tmp_path / "cache"), "--format", "json"]) == 0
        doc = json.loads(capsys.readouterr().out)
        keys.append({st["name"]: st["cache_key"] for st in doc["stages"]})
    assert keys[0] == keys[1] == keys[2]


def test_schema_names_every_backend():
    from ftdsl.ir.schema import KINDS, TRACKERS

    assert TRACKERS == tuple(tracking.BACKENDS)
    assert KINDS["pipeline"].field("track").default == ["tensorboard"]


# --- MLflow ---------------------------------------------------------------------------------------

def test_mlflow_logs_params_metrics_and_artifacts_to_mlruns(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    p = pipeline(tmp_path, "[tensorboard, mlflow]")
    summary = run(p)
    store = tmp_path / "mlruns"
    assert store.is_dir()  # beside the pipeline
    client = MlflowClient(tracking_uri=store.as_uri())
    exp = client.get_experiment_by_name("p")  # the pipeline's file name
    (r,) = client.search_runs([exp.experiment_id])
    assert r.info.run_name == "fit" and r.info.status == "FINISHED"
    assert r.data.params["optimizer.lr"] == "0.003" and r.data.params["batch"] == "16"
    final = json.loads((tmp_path / "out" / "fit" / "metrics.json").read_text())
    assert r.data.metrics["test.accuracy"] == pytest.approx(final["test.accuracy"])
    assert r.data.tags["ftdsl.stage"] == "fit" and r.data.tags["ftdsl.out"] == str(tmp_path / "out" / "fit")
    plan_key = fit_of(summary)
    assert len(r.data.tags["ftdsl.key"]) == 64 and plan_key["status"] == "ran"
    curve = [json.loads(x) for x in (tmp_path / "out" / "fit" / "metrics.jsonl").read_text().splitlines()]
    train_steps = [c["step"] for c in curve if c["split"] == "train" and "loss" in c]
    hist = client.get_metric_history(r.info.run_id, "train/loss")
    assert sorted(m.step for m in hist) == sorted(train_steps)
    assert {a.path for a in client.list_artifacts(r.info.run_id)} >= {"metrics.json", "metrics.jsonl", "curves.png"}
    # a cached re-run logs nothing new; the run is still one
    run(p)
    assert len(client.search_runs([exp.experiment_id])) == 1


def test_mlflow_tracking_uri_setting_wins(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    elsewhere = tmp_path / "server-store"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", elsewhere.as_uri())
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "team")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    run(pipeline(tmp_path, "[mlflow]"))
    assert not (tmp_path / "mlruns").exists()
    client = MlflowClient(tracking_uri=elsewhere.as_uri())
    (r,) = client.search_runs([client.get_experiment_by_name("team").experiment_id])
    assert r.data.params["max_steps"] == "6"


# --- a tracker that is missing or fails ------------------------------------------------------------

@pytest.fixture
def mlflow_absent(monkeypatch):
    """MLflow as this install would be without it: its module is not found (whatever is installed)."""
    monkeypatch.setitem(tracking.BACKENDS, "mlflow",
                        dataclasses.replace(tracking.BACKENDS["mlflow"], module="ftdsl_test_absent_tracker"))


def test_missing_tracker_is_ftp233_with_the_install_hint(tmp_path, capsys, mlflow_absent):
    p = pipeline(tmp_path, "[tensorboard, mlflow]")
    capsys.readouterr()
    assert main(["lint", str(p), "--format", "json"]) == 0  # a warning
    (d,) = [x for x in json.loads(capsys.readouterr().out)["diagnostics"] if x["code"] == "FTP233"]
    assert d["severity"] == "warning"
    assert d["range"]["start"] == {"line": 1, "column": p.read_text().splitlines()[0].index("mlflow") + 1,
                                   "byte": p.read_text().splitlines()[0].index("mlflow")}
    assert main(["lint", str(p), "--strict"]) == 1
    err = capsys.readouterr().err
    assert "warning[FTP233]" in err and 'pip install "ftdsl[track]"' in err
    assert main(["lint", str(pipeline(tmp_path, "[tensorboard]"))]) == 0
    assert "FTP233" not in capsys.readouterr().err


def test_run_with_a_missing_tracker_trains_anyway(tmp_path, capsys, mlflow_absent):
    p = pipeline(tmp_path, "[tensorboard, mlflow]")
    code = main(["run", str(p), "--cache", str(tmp_path / "cache")])
    err = capsys.readouterr().err
    assert code == 0 and "FTP233" in err and "mlflow tracking is off" in err
    assert (tmp_path / "out" / "fit" / "metrics.json").is_file()
    assert not (tmp_path / "mlruns").exists()


class _Recorder:
    calls: list = []

    def __init__(self, info):
        self.calls.append(("start", info.stage, dict(info.params)))

    def log(self, step, split, values):
        self.calls.append(("log", step, split, values))
        if values.get("loss") == 666.0:
            raise ConnectionError("tracking server went away")

    def finish(self, final, files):
        self.calls.append(("finish", final, sorted(f.name for f in files)))

    def close(self, finished):
        self.calls.append(("close", finished))


@pytest.fixture
def recorder(monkeypatch):
    _Recorder.calls = []
    monkeypatch.setitem(tracking.BACKENDS, "mlflow", dataclasses.replace(
        tracking.BACKENDS["mlflow"], module="json", factory="ftdsl.runtime.tracking:MlflowTracker"))
    monkeypatch.setattr(tracking, "MlflowTracker", _Recorder)
    return _Recorder.calls


def _writer(tmp_path, warnings=None):
    from ftdsl.stages.outputs import MetricsWriter

    info = tracking.RunInfo("fit", "train", params=tracking.flat_params(
        {"optimizer": {"$call": "adamw", "lr": 0.001}, "batch": 8, "freeze": [], "clip": None}))
    warn = warnings.append if warnings is not None else None
    return MetricsWriter(tmp_path, tracking=tracking.Tracking(["mlflow"], info, warn))


def test_writer_feeds_the_tracker_and_replays_a_resumed_curve(tmp_path, recorder):
    w = _writer(tmp_path)
    w.log(1, "train", loss=0.9, lr=0.1)
    w.log(2, "valid", loss=0.8, accuracy=0.5, f1=float("nan"))
    w.finalize({"valid.accuracy": 0.5, "steps": 2, "note": "text"})
    assert recorder[0] == ("start", "fit", {"optimizer": "adamw(...)", "optimizer.lr": 0.001, "batch": 8,
                                            "freeze": "[]", "clip": "null"})
    assert recorder[1] == ("log", 1, "train", {"loss": 0.9, "lr": 0.1})
    assert recorder[2] == ("log", 2, "valid", {"loss": 0.8, "accuracy": 0.5})  # NaN is not sent
    assert recorder[3] == ("finish", {"valid.accuracy": 0.5, "steps": 2.0}, ["curves.png", "metrics.json", "metrics.jsonl"])
    assert recorder[4] == ("close", True)
    assert not (tmp_path / "tensorboard").exists()  # track = [mlflow]: no TensorBoard
    # a resumed run: the checkpointed history goes to the new tracker run first
    recorder.clear()
    w2 = _writer(tmp_path)
    w2.reset([{"step": 1, "split": "train", "loss": 0.9}], resume_step=1)
    w2.close()  # killed again before the end
    assert recorder == [("start", "fit", recorder[0][2]), ("log", 1, "train", {"loss": 0.9}), ("close", False)]


def test_a_failing_tracker_is_switched_off_not_the_stage(tmp_path, recorder):
    warnings: list[str] = []
    w = _writer(tmp_path, warnings)
    w.log(1, "train", loss=666.0)  # the fake server fails here
    w.log(2, "train", loss=0.5)
    w.finalize({"steps": 2})
    assert [c[0] for c in recorder] == ["start", "log"]  # nothing after the failure
    assert len(warnings) == 1 and "mlflow tracking is off" in warnings[0] and "server went away" in warnings[0]
    assert json.loads((tmp_path / "metrics.json").read_text()) == {"steps": 2}


def test_wandb_runs_offline_beside_the_pipeline(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "unset below")  # so that teardown removes what the tracker sets
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.setenv("WANDB_SILENT", "true")
    from ftdsl.stages.outputs import MetricsWriter

    warnings: list[str] = []
    info = tracking.RunInfo("fit", "train", pipeline=str(tmp_path / "p.ftp"), pipeline_dir=tmp_path,
                            params=tracking.flat_params({"optimizer": {"$call": "adamw", "lr": 0.001}}))
    w = MetricsWriter(tmp_path / "out", tracking=tracking.Tracking(["wandb"], info, warnings.append))
    w.log(1, "train", loss=0.9)
    w.log(1, "valid", loss=0.8, accuracy=0.5)
    w.finalize({"valid.accuracy": 0.5}, plot=False)
    assert warnings == [] and __import__("os").environ["WANDB_MODE"] == "offline"
    (run,) = (tmp_path / "wandb").glob("offline-run-*")
    assert (run / "files" / "metrics.json").is_file()
