"""`ftdsl runs FILE` and `ftdsl diff RUN_A RUN_B` (issue 11, item 6): the history of runs in the run index,
listed and compared through the CLI, without re-running anything or importing torch.

The runs are real `ftdsl run`s of a tiny iris MLP (a few steps each); the expected values come from
the runs' own --summary-json and from the edit the test made, not from the code under test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ftdsl.cli import main

PIPE = """\
pipeline p { seed = 1 }
data d { source = sklearn("iris") }
model m { arch = mlp(hidden = [16]), task = classify(labels = 3) }
train fit {
  model = m, data = d
  max_steps = 6, batch = 16
  optimizer = adamw(lr = 0.003)
  precision = fp32
}
"""


def _run(p: Path, cache: Path, tmp_path: Path) -> dict:
    out = tmp_path / f"summary{len(list(tmp_path.glob('summary*')))}.json"
    assert main(["run", str(p), "--cache", str(cache), "-q", "--summary-json", str(out)]) == 0
    return json.loads(out.read_text())


def _json(capsys, argv) -> dict:
    capsys.readouterr()
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """Run the pipeline, change the learning rate, run again. Returns (folder, pipeline, cache, summaries)."""
    tmp = tmp_path_factory.mktemp("runs")
    p, cache = tmp / "p.ftp", tmp / "cache"
    p.write_text(PIPE)
    first = _run(p, cache, tmp)
    p.write_text(PIPE.replace("lr = 0.003", "lr = 0.02"))
    second = _run(p, cache, tmp)
    return tmp, p, cache, (first, second)


def _stage(summary: dict, name: str) -> dict:
    return next(s for s in summary["stages"] if s["name"] == name)


def test_runs_json_lists_both_runs_newest_first(two_runs, capsys):
    tmp, p, cache, (first, second) = two_runs
    doc = _json(capsys, ["runs", str(p), "--cache", str(cache), "--format", "json"])
    runs = doc["runs"]
    assert [r["id"] for r in runs] == [second["run_id"], first["run_id"]]
    assert [r["ref"] for r in runs] == ["latest", "latest~1"]
    newest, oldest = runs
    assert {n: s["status"] for n, s in oldest["stages"].items()} == {"d": "ran", "m": "ran", "fit": "ran"}
    assert {n: s["status"] for n, s in newest["stages"].items()} == {"d": "cached", "m": "cached", "fit": "ran"}
    assert newest["changes"] == [{"stage": "fit", "attr": "optimizer.lr", "a": 0.003, "b": 0.02}]
    assert oldest["changes"] == []
    # the recorded metrics are the run's own (the summary the run wrote)
    assert newest["stages"]["fit"]["metrics"]["test.accuracy"] == _stage(second, "fit")["metrics"]["test.accuracy"]
    assert oldest["stages"]["fit"]["metrics"]["test.loss"] == pytest.approx(_stage(first, "fit")["metrics"]["test.loss"])
    assert newest["stages"]["fit"]["attrs"]["optimizer"] == {"$call": "adamw", "lr": 0.02, "weight_decay": 0.01}


def test_runs_table_shows_the_change_and_metrics(two_runs, capsys, monkeypatch):
    tmp, p, cache, (first, second) = two_runs
    monkeypatch.setenv("COLUMNS", "300")  # one line per run
    capsys.readouterr()
    assert main(["runs", str(p), "--cache", str(cache)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    row_new = next(i for i, line in enumerate(lines) if second["run_id"][:8] in line)
    row_old = next(i for i, line in enumerate(lines) if first["run_id"][:8] in line)
    assert row_new < row_old  # newest first
    assert "fit.optimizer.lr 0.003 -> 0.02" in out
    assert "cached d, m; ran fit" in out and "ran d, m, fit" in out
    acc = _stage(second, "fit")["metrics"]["test.accuracy"]
    assert f"test.accuracy {acc:.4g}" in out


def test_diff_json_changed_attribute_and_metric_deltas(two_runs, capsys):
    tmp, p, cache, (first, second) = two_runs
    doc = _json(capsys, ["diff", "latest~1", "latest", "--cache", str(cache), "--format", "json"])
    assert doc["a"]["id"] == first["run_id"] and doc["b"]["id"] == second["run_id"]
    fit = next(s for s in doc["stages"] if s["stage"] == "fit")
    assert fit["attrs"] == [{"attr": "optimizer.lr", "a": 0.003, "b": 0.02}]
    assert fit["status"] == {"a": "ran", "b": "ran"} and not fit["same_key"]
    m = {x["metric"]: x for x in fit["metrics"]}
    la, lb = _stage(first, "fit")["metrics"]["test.loss"], _stage(second, "fit")["metrics"]["test.loss"]
    assert m["test.loss"]["a"] == pytest.approx(la) and m["test.loss"]["b"] == pytest.approx(lb)
    assert m["test.loss"]["delta"] == pytest.approx(lb - la)
    data = next(s for s in doc["stages"] if s["stage"] == "d")
    assert data["same_key"] and data["attrs"] == [] and data["status"] == {"a": "ran", "b": "cached"}


def test_diff_text_by_id_prefix_and_pipeline(two_runs, capsys, monkeypatch):
    tmp, p, cache, (first, second) = two_runs
    monkeypatch.setenv("COLUMNS", "300")
    capsys.readouterr()
    assert main(["diff", first["run_id"][:6], second["run_id"][:10], "--pipeline", str(p), "--cache", str(cache)]) == 0
    out = capsys.readouterr().out
    rows = [[c.strip() for c in x.split("│")] for x in out.splitlines() if "│" in x]
    # columns: stage, what, name, A, B, delta
    assert ["", "attribute", "optimizer.lr", "0.003", "0.02", ""] in rows
    la, lb = _stage(first, "fit")["metrics"]["test.loss"], _stage(second, "fit")["metrics"]["test.loss"]
    loss = next(r for r in rows if r[2] == "test.loss")
    assert loss[1] == "metric" and loss[3:] == [f"{la:.4g}", f"{lb:.4g}", f"{lb - la:+.4g}" if lb != la else "0"]


def test_diff_unknown_or_ambiguous_id_is_a_usage_error_listing_the_runs(two_runs, capsys):
    tmp, p, cache, (first, second) = two_runs
    capsys.readouterr()
    assert main(["diff", "ffffffff", "latest", "--cache", str(cache)]) == 2
    err = capsys.readouterr().err
    assert "error[FTP570]" in err and "no run `ffffffff`" in err
    assert first["run_id"][:8] in err and second["run_id"][:8] in err
    assert main(["diff", "latest~2", "latest", "--cache", str(cache)]) == 2
    assert "error[FTP570]" in capsys.readouterr().err
    assert main(["diff", "ab", "latest", "--cache", str(cache)]) == 2  # too short to be a prefix
    assert "at least 4 digits" in capsys.readouterr().err
    assert "Traceback" not in capsys.readouterr().err


def test_ambiguous_prefix():
    from ftdsl.errors import UsageError
    from ftdsl.run_history import resolve

    runs = [{"id": "abcd1111" + "0" * 32, "time": "t1"}, {"id": "abcd2222" + "0" * 32, "time": "t2"}]
    with pytest.raises(UsageError) as e:
        resolve(runs, "abcd")
    assert e.value.code == "FTP570" and "ambiguous" in e.value.message
    assert resolve(runs, "ABCD2") is runs[1] and resolve(runs, "latest~1") is runs[0]


def test_runs_of_a_pipeline_never_run(tmp_path, capsys):
    p = tmp_path / "p.ftp"
    p.write_text(PIPE)
    assert main(["runs", str(p), "--cache", str(tmp_path / "cache")]) == 0
    assert "no runs of" in capsys.readouterr().err
    assert not (tmp_path / "cache").exists()  # reading the history creates nothing
    assert main(["runs", str(tmp_path / "missing.ftp")]) == 2


def test_history_keeps_a_run_whose_stage_failed(tmp_path, capsys):
    """A run whose stage fails is recorded too (failed, downstream skipped); the earlier run stays."""
    rows = "\n".join(f"{i % 7}.5,{i % 3}.25,{i % 2}" for i in range(60))
    (tmp_path / "rows.csv").write_text("a,b,label\n" + rows + "\n")
    p, cache = tmp_path / "p.ftp", tmp_path / "cache"
    p.write_text(PIPE.replace('source = sklearn("iris")', 'source = csv("rows.csv")')
                 .replace("labels = 3", "labels = 2"))
    _run(p, cache, tmp_path)
    (tmp_path / "rows.csv").write_text("a,b,label\n" + rows.replace("3.5,", "oops,") + "\n")
    assert main(["run", str(p), "--cache", str(cache), "-q"]) == 3
    doc = _json(capsys, ["runs", str(p), "--cache", str(cache), "--format", "json"])
    assert len(doc["runs"]) == 2
    newest, oldest = doc["runs"]
    assert list(newest["stages"]) == ["d", "m", "fit"]  # the plan's order
    assert {n: s["status"] for n, s in newest["stages"].items()} == {"d": "failed", "m": "cached", "fit": "skipped"}
    assert oldest["stages"]["fit"]["status"] == "ran"
    doc = _json(capsys, ["diff", "latest~1", "latest", "--cache", str(cache), "--format", "json"])
    d = next(s for s in doc["stages"] if s["stage"] == "d")
    assert d["files"] == ["rows.csv"] and d["attrs"] == []  # the data file changed, no attribute did


def test_runs_and_diff_do_not_import_torch(two_runs):
    tmp, p, cache, _ = two_runs
    probe = textwrap.dedent(f"""
        import contextlib, io, json, sys
        from ftdsl.cli import main
        codes = []
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            codes.append(main(["runs", {str(p)!r}, "--cache", {str(cache)!r}]))
            codes.append(main(["runs", {str(p)!r}, "--cache", {str(cache)!r}, "--format", "json"]))
            codes.append(main(["diff", "latest~1", "latest", "--cache", {str(cache)!r}]))
            codes.append(main(["diff", "latest~1", "latest", "--pipeline", {str(p)!r}, "--cache", {str(cache)!r},
                               "--format", "json"]))
        heavy = sorted({{m.split(".")[0] for m in sys.modules}} & {{"torch", "numpy", "sklearn", "tensorboard",
                                                                  "matplotlib", "mlflow", "transformers"}})
        print(json.dumps({{"codes": codes, "heavy": heavy}}))
    """)
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, NO_COLOR="1"))
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res == {"codes": [0, 0, 0, 0], "heavy": []}


def test_history_keeps_the_last_runs_and_each_attribute_set_once(tmp_path, monkeypatch):
    """The history is a file of its own (plan reads only the small last-run index), trimmed to MAX_RUNS,
    with each distinct attribute set stored once and dropped with the last run that used it."""
    from ftdsl.runtime import run_index
    from ftdsl.runtime.cache import Cache

    monkeypatch.setattr(run_index, "MAX_RUNS", 3)
    cache, pipe = Cache(tmp_path / "cache"), tmp_path / "p.ftp"
    pipe.write_text("")
    ids = []
    for lr in (0.1, 0.2, 0.2, 0.2, 0.3):
        ids.append(cache.record_history(pipe, [
            {"name": "d", "kind": "data", "key": "a" * 64, "status": "cached", "attrs": {"n": 1}, "metrics": {}},
            {"name": "fit", "kind": "train", "key": "b" * 64, "status": "ran", "attrs": {"lr": lr},
             "metrics": {"test.loss": float("nan"), "test.accuracy": lr}}]))
    hist = cache.index.history(pipe)
    assert [r["id"] for r in hist] == ids[-3:] and len(set(ids)) == 5
    assert [r["stages"]["fit"]["attrs"]["lr"] for r in hist] == [0.2, 0.2, 0.3]
    assert list(hist[0]["stages"]) == ["d", "fit"]
    assert hist[-1]["stages"]["fit"]["metrics"] == {"test.loss": None, "test.accuracy": 0.3}  # NaN is not JSON
    raw = json.loads(cache.index.history_path_of(pipe).read_text())
    assert len(raw["attrs"]) == 3  # {n: 1}, {lr: 0.2}, {lr: 0.3}: {lr: 0.1} went with its run
    assert not cache.index.path_of(pipe).exists()  # record_run's index (what plan reads) is untouched
    assert [r["id"] for r in cache.index.all_histories()] == ids[-3:]


def test_a_history_that_cannot_be_written_does_not_fail_the_run(tmp_path, capsys, monkeypatch):
    from ftdsl.errors import ResourceError
    from ftdsl.runtime.cache import Cache

    def locked(self, *a, **k):
        raise ResourceError("FTP504", "the run index is locked by another process")

    monkeypatch.setattr(Cache, "record_history", locked)
    p = tmp_path / "p.ftp"
    p.write_text(PIPE)
    out = tmp_path / "s.json"
    assert main(["run", str(p), "--cache", str(tmp_path / "cache"), "-q", "--summary-json", str(out)]) == 0
    assert "not added to the run history" in capsys.readouterr().err
    s = json.loads(out.read_text())
    assert s["run_id"] is None and {x["status"] for x in s["stages"]} == {"ran"}
