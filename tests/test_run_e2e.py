"""End-to-end `ftdsl run` / `plan` on tiny pipelines: caching, plan truth, faults, bad data.

Every pipeline here is small (synthetic data, a tiny MLP, a few dozen steps) so the whole file
stays fast on 2 CPU cores.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ftdsl.cli import main

from spec_example import TINY  # noqa: E402


def write(tmp_path: Path, text: str = TINY, name: str = "p.ftp") -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def run_cli(args, capsys=None) -> int:
    return main(list(map(str, args)))


def plan_json(p: Path, cache: Path, *extra) -> dict:
    import io
    from contextlib import redirect_stdout

    buf = io.StringIO()
    with redirect_stdout(buf):
        assert main(["plan", str(p), "--cache", str(cache), "--format", "json", *extra]) == 0
    return json.loads(buf.getvalue())


def run_summary(p: Path, cache: Path, tmp_path: Path, *extra) -> tuple[int, dict]:
    out = tmp_path / f"summary-{os.getpid()}-{len(list(tmp_path.glob('summary-*')))}.json"
    code = main(["run", str(p), "--cache", str(cache), "--quiet", "--summary-json", str(out), *extra])
    return code, json.loads(out.read_text())


def statuses(summary: dict) -> dict[str, str]:
    return {s["name"]: s["status"] for s in summary["stages"]}


def test_run_then_fully_cached_without_calling_stages(tmp_path, monkeypatch):
    p, cache = write(tmp_path), tmp_path / "cache"
    code, s = run_summary(p, cache, tmp_path)
    assert code == 0
    assert statuses(s) == {"d": "ran", "m": "ran", "t": "ran"}
    assert s["stages"][2]["metrics"]["test.accuracy"] >= 0.0
    # Second run: every stage is a cache hit, and no stage function is called.
    import ftdsl.stages.data as data_mod
    import ftdsl.stages.train as train_mod

    calls = []
    monkeypatch.setattr(data_mod, "run", lambda *a, **k: calls.append("data"))
    monkeypatch.setattr(train_mod, "run", lambda *a, **k: calls.append("train"))
    code, s = run_summary(p, cache, tmp_path)
    assert code == 0 and calls == []
    assert set(statuses(s).values()) == {"cached"}
    # user-facing outputs exist
    out = tmp_path / "out" / "t"
    assert (out / "metrics.json").is_file() and (out / "curves.png").is_file() and (out / "metrics.jsonl").is_file()
    assert any((out / "tensorboard").rglob("events.out.tfevents*"))


def test_plan_tells_the_truth(tmp_path):
    """For a sequence of edits, the stages `plan` says will run are exactly the ones `run` runs."""
    p, cache = write(tmp_path), tmp_path / "cache"
    steps = [
        [],  # fresh
        [],  # nothing changed
        ["--set", "lr=0.02"],  # train only
        ["--set", "d.split={ train = 0.8, valid = 0.1, test = 0.1 }"],  # data + train
        ["--force", "m"],  # model + train
        ["--set", "t.max_steps=8", "--only", "m"],  # only the model: cached
    ]
    for extra in steps:
        planned = plan_json(p, cache, *extra)
        will_run = {s["name"] for s in planned["stages"] if s["actions"] != ["noop"]}
        code, summary = run_summary(p, cache, tmp_path, *extra)
        assert code == 0
        ran = {n for n, st in statuses(summary).items() if st == "ran"}
        assert ran == will_run, (extra, planned["stages"], summary)
        assert set(statuses(summary)) == {s["name"] for s in planned["stages"]}


def test_plan_reasons_name_the_changed_attribute(tmp_path, capsys):
    p, cache = write(tmp_path), tmp_path / "cache"
    assert run_cli(["run", p, "--cache", cache, "--quiet"]) == 0
    capsys.readouterr()
    planned = plan_json(p, cache, "--set", "lr=0.05")
    by = {s["name"]: s for s in planned["stages"]}
    assert by["d"]["status"] == "cached" and by["m"]["status"] == "cached"
    assert by["t"]["status"] == "run (changed: optimizer.lr 0.01 -> 0.05)"
    assert by["t"]["changes"] == [{"path": "optimizer.lr", "old": 0.01, "new": 0.05}]
    # text form, and reformatting the file does not invalidate anything (spans are not in keys)
    p.write_text("# a comment\n" + p.read_text().replace("  ", "    "))
    assert run_cli(["plan", p, "--cache", cache]) == 0
    text = capsys.readouterr().out
    assert "Plan: 0 to run, 0 to re-run, 3 cached." in text


def test_upstream_change_reason(tmp_path):
    p, cache = write(tmp_path), tmp_path / "cache"
    assert run_cli(["run", p, "--cache", cache, "--quiet"]) == 0
    planned = plan_json(p, cache, "--set", "d.source=synthetic(task = classify, n = 300, features = 8, classes = 3)")
    by = {s["name"]: s for s in planned["stages"]}
    assert by["d"]["status"].startswith("run (changed: source.n 240 -> 300")
    assert by["t"]["status"] == "run (upstream d changed)"
    assert by["m"]["status"] == "cached"


def test_corrupt_cache_entry_is_detected_and_recomputed(tmp_path, capsys):
    p, cache = write(tmp_path), tmp_path / "cache"
    assert run_cli(["run", p, "--cache", cache, "--quiet"]) == 0
    planned = plan_json(p, cache)
    key = next(s["cache_key"] for s in planned["stages"] if s["name"] == "d").split(":")[1]
    entry = cache / "entries" / key[:2] / key
    victim = next(f for f in sorted((entry / "artifact").rglob("*")) if f.is_file() and f.stat().st_size > 16)
    os.chmod(victim, 0o644)
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    capsys.readouterr()
    code, summary = run_summary(p, cache, tmp_path)
    err = capsys.readouterr().err
    assert code == 0
    assert "FTP503" in err and "cache entry for `d` is corrupt" in err and "recomputing" in err
    assert statuses(summary)["d"] == "ran"
    assert list((cache / "quarantine").iterdir())


def test_bad_data_is_a_clean_stage_error(tmp_path):
    (tmp_path / "rows.csv").write_text("x1,x2,label\n1,2,0\n3,oops,1\n" + "".join(f"{i},{i},{i % 2}\n" for i in range(40)))
    src = """\
    data d {
      source = csv("rows.csv")
      split = { train = 0.8, valid = 0.2 }
    }
    model m { arch = mlp(hidden = [4]), task = classify(labels = 2) }
    train t { model = m, data = d, max_steps = 2 }
    """
    p = write(tmp_path, src)
    r = subprocess.run([sys.executable, "-m", "ftdsl", "run", str(p), "--cache", str(tmp_path / "c"), "--quiet"],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 3, r.stderr
    assert "Traceback" not in r.stderr
    assert "rows.csv" in r.stderr and "x2" in r.stderr and "oops" in r.stderr and "row 2" in r.stderr


@pytest.mark.parametrize("case,expect", [
    ("missing_column", ["no column `target`", "rows.csv", "available columns"]),
    ("label_out_of_range", ["label", "row", "rows.csv"]),
    ("missing_file", ["FTP511", "nope.csv"]),
    ("empty_split", ["split", "empty"]),
])
def test_bad_data_cases(tmp_path, capsys, case, expect):
    rows = "a,b,label\n" + "".join(f"{i},{i * 2},{i % 2}\n" for i in range(30))
    if case == "label_out_of_range":
        rows += "1,2,7\n"
    (tmp_path / "rows.csv").write_text(rows)
    source = {"missing_file": 'csv("nope.csv")'}.get(case, 'csv("rows.csv")')
    label = 'label = "target"' if case == "missing_column" else ""
    split = "{ train = 0.98, valid = 0.01 }" if case == "empty_split" else "{ train = 0.8, valid = 0.2 }"
    p = write(tmp_path, f"""\
    data d {{
      source = {source}
      {label}
      split = {split}
    }}
    model m {{ arch = mlp(hidden = [4]), task = classify(labels = 2) }}
    train t {{ model = m, data = d, max_steps = 2 }}
    """)
    code = run_cli(["run", p, "--cache", tmp_path / "c", "--quiet"])
    err = capsys.readouterr().err
    assert code == 3
    assert "Traceback" not in err
    low = err.lower()
    for e in expect:
        assert e.lower() in low, err


def test_failed_stage_skips_downstream_but_not_siblings(tmp_path, capsys):
    (tmp_path / "bad.csv").write_text("a,label\n" + "".join(f"{i},{i % 2}\n" for i in range(20)) + "x,1\n")
    src = TINY + """
data bad { source = csv("bad.csv"), split = { train = 0.8, valid = 0.2 } }
train t2 { model = m, data = bad, max_steps = 2 }
"""
    p = write(tmp_path, src)
    code, s = run_summary(p, tmp_path / "c", tmp_path)
    assert code == 3
    st = statuses(s)
    assert st["bad"] == "failed" and st["t2"] == "skipped" and st["t"] == "ran"
    note = next(x["note"] for x in s["stages"] if x["name"] == "t2")
    assert "bad" in note


def test_concurrent_runs_compute_once(tmp_path):
    p, cache = write(tmp_path), tmp_path / "cache"
    procs = [subprocess.Popen([sys.executable, "-m", "ftdsl", "run", str(p), "--cache", str(cache), "--quiet",
                               "--summary-json", str(tmp_path / f"s{i}.json")], cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    outs = [pr.communicate(timeout=240) for pr in procs]
    for pr, (o, e) in zip(procs, outs):
        assert pr.returncode == 0, e
        assert "Traceback" not in e
    sums = [statuses(json.loads((tmp_path / f"s{i}.json").read_text())) for i in range(2)]
    for stage in ("d", "m", "t"):
        assert sorted(s[stage] for s in sums) == ["cached", "ran"], sums
    assert len(list((cache / "entries").glob("*/*/manifest.json"))) == 3


def _train_weights(cache: Path, p: Path) -> bytes:
    planned = plan_json(p, cache)
    key = next(s["cache_key"] for s in planned["stages"] if s["name"] == "t").split(":")[1]
    return (cache / "entries" / key[:2] / key / "artifact" / "model.safetensors").read_bytes()


def test_kill_9_then_resume_equals_uninterrupted(tmp_path):
    p = write(tmp_path)
    env = {**os.environ, "FTDSL_TEST_KILL_AT_STEP": "10"}
    cmd = [sys.executable, "-m", "ftdsl", "run", str(p), "--cache", str(tmp_path / "killed")]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=tmp_path, timeout=240)
    assert r.returncode == -signal.SIGKILL, r.stderr
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=240)
    assert r.returncode == 0, r.stderr
    assert "resumed from step 8" in r.stderr
    r = subprocess.run([sys.executable, "-m", "ftdsl", "run", str(p), "--cache", str(tmp_path / "clean"), "--quiet"],
                       capture_output=True, text=True, cwd=tmp_path, timeout=240)
    assert r.returncode == 0, r.stderr
    assert _train_weights(tmp_path / "killed", p) == _train_weights(tmp_path / "clean", p)


def test_fully_cached_run_does_not_import_torch(tmp_path):
    p, cache = write(tmp_path), tmp_path / "cache"
    assert run_cli(["run", p, "--cache", cache, "--quiet"]) == 0
    code = ("import sys; from ftdsl.cli import main; "
            f"rc = main(['run', {str(p)!r}, '--cache', {str(cache)!r}, '--quiet']); "
            "print(rc, 'torch' in sys.modules, 'transformers' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert r.stdout.split() == ["0", "False", "False"], r.stderr


def test_internal_error_in_a_stage_is_reported_not_raised(tmp_path, monkeypatch, capsys):
    import ftdsl.stages.model as model_mod

    def boom(*a, **k):
        raise KeyError("surprise")

    monkeypatch.setattr(model_mod, "run", boom)
    p = write(tmp_path)
    code = run_cli(["run", p, "--cache", tmp_path / "c", "--quiet"])
    err = capsys.readouterr().err
    assert code == 70
    assert "internal error in stage `m`" in err and "crash report:" in err and "Traceback" not in err


def test_unknown_stage_in_only_is_a_usage_error(tmp_path, capsys):
    p = write(tmp_path)
    assert run_cli(["run", p, "--cache", tmp_path / "c", "--only", "tt"]) == 2
    assert "did you mean `t`" in capsys.readouterr().err


def test_pipeline_errors_exit_1_and_run_nothing(tmp_path, capsys):
    p = write(tmp_path, TINY.replace("max_steps = 24", "max_step = 24"))
    assert run_cli(["run", p, "--cache", tmp_path / "c"]) == 1
    err = capsys.readouterr().err
    assert "FTP201" in err and "max_steps" in err
    assert not (tmp_path / "c").exists()


def test_evaluate_stage_against_sklearn(tmp_path):
    """The evaluate report's numbers equal scikit-learn's on the same predictions."""
    src = TINY + """
evaluate report { models = [t], data = d.test, metrics = [accuracy, f1, precision, recall, loss, latency, size] }
"""
    p, cache = write(tmp_path, src), tmp_path / "cache"
    code, s = run_summary(p, cache, tmp_path)
    assert code == 0, s
    rep = json.loads((tmp_path / "out" / "report" / "report.json").read_text())
    row = rep["rows"][0]
    assert row["model"] == "t" and row["latency_ms"] > 0 and row["size_mb"] > 0 and row["params"] == 195
    assert (tmp_path / "out" / "report" / "report.png").is_file()
    # independent computation: load the trained model and the test split, predict, score with sklearn
    import torch
    from sklearn.metrics import accuracy_score, f1_score, log_loss, precision_score, recall_score

    from ftdsl.stages.dataset import Dataset
    from ftdsl.stages.model import TorchModel

    planned = {x["name"]: x["cache_key"].split(":")[1] for x in plan_json(p, cache)["stages"]}
    entry = lambda n: cache / "entries" / planned[n][:2] / planned[n] / "artifact"  # noqa: E731
    data = Dataset.load(entry("d"))
    model = TorchModel.load(entry("t")).build()
    test = data.splits["test"]
    with torch.no_grad():
        logits = model(torch.from_numpy(test.features)).numpy()
    pred = logits.argmax(1)
    y = test.labels
    assert row["accuracy"] == pytest.approx(accuracy_score(y, pred), abs=1e-9)
    assert row["f1"] == pytest.approx(f1_score(y, pred, average="macro", labels=[0, 1, 2], zero_division=0), abs=1e-6)
    assert row["precision"] == pytest.approx(precision_score(y, pred, average="macro", labels=[0, 1, 2],
                                                             zero_division=0), abs=1e-6)
    assert row["recall"] == pytest.approx(recall_score(y, pred, average="macro", labels=[0, 1, 2],
                                                       zero_division=0), abs=1e-6)
    probs = torch.softmax(torch.from_numpy(logits), 1).numpy()
    assert row["loss"] == pytest.approx(log_loss(y, probs, labels=[0, 1, 2]), rel=1e-4)


def test_symlinked_out_dir_escaping_the_pipeline_is_refused(tmp_path, capsys):
    """F8: after lint, `out/` becomes a symlink to somewhere else: the write is refused (FTP303)."""
    p = write(tmp_path)
    elsewhere = tmp_path.parent / (tmp_path.name + "-elsewhere")
    elsewhere.mkdir()
    (tmp_path / "out").symlink_to(elsewhere)
    code = run_cli(["run", p, "--cache", tmp_path / "c", "--quiet"])
    err = capsys.readouterr().err
    assert code == 4 and "FTP303" in err
    assert not any(elsewhere.iterdir())


def test_cache_commands(tmp_path, capsys):
    p, cache = write(tmp_path), tmp_path / "cache"
    assert run_cli(["run", p, "--cache", cache, "--quiet"]) == 0
    capsys.readouterr()
    assert run_cli(["cache", "ls", "--cache", cache, "--format", "json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert sorted(e["meta"]["stage"] for e in listing["entries"]) == ["d", "m", "t"]
    assert run_cli(["cache", "verify", "--cache", cache]) == 0
    assert "3 entries checked, 0 corrupt" in capsys.readouterr().err
    # gc needs a scope; --keep keeps what the pipeline uses now
    assert run_cli(["cache", "gc", "--cache", cache]) == 2
    assert run_cli(["run", p, "--cache", cache, "--quiet", "--set", "lr=0.03"]) == 0
    capsys.readouterr()
    assert run_cli(["cache", "gc", "--cache", cache, "--keep", p]) == 0
    removed = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("removed")]
    assert len(removed) == 1  # the old train entry
    planned = plan_json(p, cache)
    assert all(s["status"] == "cached" for s in planned["stages"])
    # a corrupt entry is found by verify
    key = next(s["cache_key"] for s in planned["stages"] if s["name"] == "m").split(":")[1]
    spec = cache / "entries" / key[:2] / key / "artifact" / "spec.json"
    os.chmod(spec, 0o644)
    spec.write_text(spec.read_text() + " ")
    capsys.readouterr()
    assert run_cli(["cache", "verify", "--cache", cache]) == 1
    assert "corrupt" in capsys.readouterr().out
