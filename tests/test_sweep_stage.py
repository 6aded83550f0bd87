"""The `sweep` stage: strategies, type-checked paths, failed trials, trials as cache entries.

End-to-end tests run TINY (tests/test_run_e2e.py) plus a sweep through `ftdsl.cli.main`, with
the target trimmed to 12 steps so the whole file stays fast on 2 CPU cores. The unit tests at
the end drive `ftdsl.stages.sweep` with a fake, instant train stage.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ftdsl.cli import main
from ftdsl.errors import StageError
from ftdsl.stages import sweep as sweep_mod
from ftdsl.stages.base import Reporter, StageContext

from spec_example import TINY

FAST = ["--set", "t.max_steps=12"]


def pipeline(over: str = '"optimizer.lr" = [0.001, 0.05], "batch" = [8, 16]', strategy: str = "grid",
             metric: str = "valid.accuracy", mode: str = "max") -> str:
    return textwrap.dedent(TINY) + textwrap.dedent(f"""\
        sweep s {{
          target = t
          over = {{ {over} }}
          strategy = {strategy}
          metric = "{metric}"
          mode = {mode}
        }}
        """)


def write(folder: Path, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    p = folder / "p.ftp"
    p.write_text(text)
    return p


def run(p: Path, cache: Path, *extra) -> tuple[int, dict]:
    out = p.parent / f"summary-{len(list(p.parent.glob('summary-*')))}.json"
    code = main(["run", str(p), "--cache", str(cache), "--quiet", "--summary-json", str(out), *FAST, *extra])
    return code, json.loads(out.read_text())


def stage(summary: dict, name: str) -> dict:
    return next(s for s in summary["stages"] if s["name"] == name)


def trials_of(p: Path) -> dict:
    return json.loads((p.parent / "out" / "s" / "trials.json").read_text())


def best_of(table: dict) -> dict:
    ok = [t for t in table["trials"] if t["status"] == "ok"]
    sign = 1 if table["mode"] == "max" else -1
    return max(ok, key=lambda t: (sign * t["metric"], -t["trial"]))


@pytest.fixture(scope="module")
def warm(tmp_path_factory) -> Path:
    """A cache holding d, m and t (trained once for the module): most tests only run the sweep."""
    root = tmp_path_factory.mktemp("warm")
    p = write(root, textwrap.dedent(TINY))
    code, _ = run(p, root / "cache")
    assert code == 0
    shutil.copytree(root / "cache", root / "pristine")  # d, m and t only: a fresh cache for a sweep
    return root / "cache"


def fresh_cache(warm: Path, dest: Path) -> Path:
    """A new cache holding only the upstream stages (d, m, t), none of the sweeps."""
    shutil.copytree(warm.parent / "pristine", dest)
    return dest


def entry_of(cache: Path, p: Path, name: str) -> Path:
    """The cache entry `out/<name>/` of pipeline `p` was synced from."""
    key = json.loads((p.parent / "out" / name / ".ftdsl-key").read_text())["key"]  # the ownership marker
    return cache / "entries" / key[:2] / key


# --------------------------------------------------------------------------------------------
# End to end


def test_grid_runs_every_combination_picks_the_best_and_is_cached(tmp_path, warm, monkeypatch):
    p = write(tmp_path, pipeline())
    code, s = run(p, warm)
    assert code == 0, s
    assert stage(s, "s")["status"] == "ran"
    table = trials_of(p)
    got = [(t["params"]["optimizer.lr"], t["params"]["batch"]) for t in table["trials"]]
    assert got == list(itertools.product([0.001, 0.05], [8, 16]))  # grid order: first path slowest
    assert all(type(t["params"]["batch"]) is int for t in table["trials"])  # typed by the schema
    assert all(t["status"] == "ok" for t in table["trials"])
    # trial (0.001, 16) is not t (lr 0.01): every trial trained except none; t's own config is not in the grid
    assert [t["source"] for t in table["trials"]] == ["trained"] * 4
    best = best_of(table)
    m = stage(s, "s")["metrics"]
    assert table["best_trial"] == best["trial"] == m["sweep.best_trial"]
    assert m["sweep.trials"] == 4 and m["valid.accuracy"] == best["metric"]
    out = p.parent / "out" / "s"
    for f in ("trials.md", "sweep.png", "metrics.json"):
        assert (out / f).is_file(), f
    md = (out / "trials.md").read_text()
    assert "`optimizer.lr`" in md and "**best**" in md and md.count("\n| ") == 5
    for i in range(1, 5):  # each trial's own training outputs
        assert (out / "trials" / str(i) / "metrics.json").is_file()
    # the work dir (trial checkpoints and artifacts) is gone once the entry is published
    assert not any((warm / "work").glob("*/study.json"))

    # A rerun is a cache hit: no stage function is called.
    import ftdsl.stages.train as train_mod

    calls = []
    monkeypatch.setattr(sweep_mod, "run", lambda *a, **k: calls.append("sweep"))
    monkeypatch.setattr(train_mod, "run", lambda *a, **k: calls.append("train"))
    code, s = run(p, warm)
    assert code == 0 and calls == []
    assert stage(s, "s")["status"] == "cached" and stage(s, "s")["metrics"] == m


@pytest.mark.parametrize("strategy,n", [("random(n = 2, seed = 0)", 2), ("optuna(n = 3, seed = 1)", 3)])
def test_random_and_optuna_are_deterministic(tmp_path, warm, strategy, n):
    tables = []
    for run_dir in ("a", "b"):  # two fresh caches, two fresh output folders
        p = write(tmp_path / run_dir, pipeline(strategy=strategy))
        code, s = run(p, fresh_cache(warm, tmp_path / run_dir / "cache"))
        assert code == 0, s
        tables.append(trials_of(p))
    a, b = tables
    assert len(a["trials"]) == n
    key = lambda t: (t["trial"], t["params"], t["metric"], t["status"], t.get("same_as"), t["key"])  # noqa: E731
    assert [key(t) for t in a["trials"]] == [key(t) for t in b["trials"]]
    assert a["best_trial"] == b["best_trial"]
    if strategy.startswith("random"):  # n distinct combinations
        assert len({json.dumps(t["params"], sort_keys=True) for t in a["trials"]}) == n
    else:  # a repeated proposal is not trained again
        firsts = {}
        for t in a["trials"]:
            k = json.dumps(t["params"], sort_keys=True)
            if k in firsts:
                assert t["same_as"] == firsts[k] and t["source"] == "same"
            firsts.setdefault(k, t["trial"])


def test_unknown_path_is_ftp212_with_did_you_mean_at_lint_time(tmp_path, capsys):
    """The checker runs the sweep's own path logic (torch-free), so a typo fails before training."""
    from ftdsl.cli import main

    p = write(tmp_path, pipeline(over='"optimizer.lrr" = [0.001, 0.05]'))
    assert main(["lint", str(p)]) == 1
    err = capsys.readouterr().err
    assert "FTP212" in err and "optimizer.lrr" in err and "did you mean `optimizer.lr`" in err
    assert main(["run", str(p), "--cache", str(tmp_path / "c"), "--quiet"]) == 1
    assert not (tmp_path / "c").exists()


def test_bad_value_fails_before_any_training(tmp_path, capsys):
    from ftdsl.cli import main

    p = write(tmp_path, pipeline(over='"batch" = [8, 0]'))
    assert main(["lint", str(p)]) == 1
    err = capsys.readouterr().err
    assert "FTP212" in err and "`batch` = 0" in err and ("must be >= 1" in err or "must be in [1, " in err)


def test_unknown_path_is_also_refused_by_the_stage(tmp_path):
    """Defence in depth: the stage itself names the valid paths when handed a bad one."""
    from ftdsl.stages.sweep import _Bad, apply_params, sweep_paths

    cfg = {"batch": 32, "optimizer": {"$call": "adamw", "lr": 1e-3, "weight_decay": 0.01}}
    assert "optimizer.lr" in sweep_paths("train", cfg)
    with pytest.raises(_Bad):
        apply_params("train", cfg, {"optimizer.lrr": 0.1})


@pytest.fixture
def nan_at_lr_3(monkeypatch):
    """The real train stage, except that lr = 3 fails as a diverging run does (FTP501)."""
    import ftdsl.stages.train as train_mod

    real, names = train_mod.run, []

    def train(inputs, attrs, ctx):
        names.append(ctx.name)
        if attrs["optimizer"]["lr"] == 3:
            raise StageError("FTP501", "loss is nan at step 3")
        return real(inputs, attrs, ctx)

    monkeypatch.setattr(train_mod, "run", train)
    return names


def test_a_failing_trial_is_recorded_and_the_sweep_goes_on(tmp_path, warm, nan_at_lr_3):
    p = write(tmp_path, pipeline(over='"optimizer.lr" = [0.05, 3]'))
    code, s = run(p, warm)
    assert code == 0, s
    table = trials_of(p)
    ok, bad = table["trials"]
    assert ok["status"] == "ok" and table["best_trial"] == 1
    assert bad["status"] == "failed" and bad["metric"] is None and bad["error"]["code"] == "FTP501"
    m = stage(s, "s")["metrics"]
    assert m["sweep.trials"] == 2 and m["sweep.failed"] == 1
    assert "failed (FTP501)" in (p.parent / "out" / "s" / "trials.md").read_text()
    # a failure is remembered with the trial's key: a changed sweep does not train it again
    p.write_text(pipeline(over='"optimizer.lr" = [0.05, 3, 0.02]'))
    nan_at_lr_3.clear()
    code, s = run(p, warm)
    assert code == 0 and nan_at_lr_3 == ["s[3]"]
    assert [t["source"] for t in trials_of(p)["trials"]] == ["cached", "recorded", "trained"]


def test_all_trials_failing_fails_the_sweep(tmp_path, warm, capsys, nan_at_lr_3):
    p = write(tmp_path, pipeline(over='"optimizer.lr" = [3]'))
    code, s = run(p, warm)
    assert code == 3 and stage(s, "s")["status"] == "failed"
    assert "all 1 trials failed" in capsys.readouterr().err


def test_killed_sweep_reuses_finished_trials(tmp_path, warm, monkeypatch):
    """SIGKILL once trial 1 is done; the rerun reuses it from the cache (a trial is an ordinary
    cache entry), reuses trial 2 from the plain train block `t` (same configuration, same key)
    and trains only trial 3. The sweep's model is the best trial's entry, bit for bit."""
    p = write(tmp_path, pipeline(over='"optimizer.lr" = [0.0001, 0.01, 0.05]'))
    warm = fresh_cache(warm, tmp_path / "cache")  # d, m and t only: no trial of another test
    env = {**os.environ, sweep_mod.KILL_ENV: "1"}
    proc = subprocess.run([sys.executable, "-m", "ftdsl", "run", str(p), "--cache", str(warm), "--quiet", *FAST],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode in (-signal.SIGKILL, 128 + signal.SIGKILL), proc.stderr

    import ftdsl.stages.train as train_mod

    real, names = train_mod.run, []

    def counting(inputs, attrs, ctx):
        names.append(ctx.name)
        return real(inputs, attrs, ctx)

    monkeypatch.setattr(train_mod, "run", counting)
    code, s = run(p, warm)
    assert code == 0, s
    assert names == ["s[3]"]  # t is cached; trial 1 finished before the kill; trial 2 is t
    table = trials_of(p)
    assert [t["source"] for t in table["trials"]] == ["cached", "cached", "trained"]
    t_key = entry_of(warm, p, "t").name
    assert table["trials"][1]["key"] == t_key
    assert stage(s, "s")["metrics"]["sweep.trained"] == 1 and stage(s, "s")["metrics"]["sweep.cached"] == 2
    best = best_of(table)
    assert table["best_trial"] == best["trial"]
    assert (p.parent / "out" / "s" / "trials" / "1" / "metrics.json").is_file()  # outputs of reused trials too
    w_s = (entry_of(warm, p, "s") / "artifact" / "model.safetensors").read_bytes()
    w_best = (warm / "entries" / best["key"][:2] / best["key"] / "artifact" / "model.safetensors").read_bytes()
    assert w_s == w_best


# --------------------------------------------------------------------------------------------
# Unit tests with a fake, instant train stage


class _Log(Reporter):
    def __init__(self):
        self.lines = []

    def log(self, text):
        self.lines.append(text)


BASE = {"model": {"$ref": "m"}, "data": {"$ref": "d"}, "max_steps": 24, "batch": 16,
        "optimizer": {"$call": "adamw", "lr": 0.01, "weight_decay": 0.01},
        "schedule": {"$call": "constant", "warmup": 0.0}, "loss": None, "early_stop": None,
        "precision": "fp32", "epochs": None, "accumulate": 1}


PAYLOAD = {"kind": "train", "attrs": BASE, "inputs": {"data": "d" * 64, "model": "e" * 64}, "files": {},
           "versions": {"ftdsl": "test"}, "env": {"seed": 0, "device": "cpu"}}


def _ctx(tmp_path: Path, rep=None, cache: Path | None = None) -> StageContext:
    from ftdsl.runtime.cache import Cache

    out = tmp_path / "out"
    out.mkdir(parents=True, exist_ok=True)
    c = Cache(cache or tmp_path / "cache")
    return StageContext(name="s", kind="sweep", pipeline_dir=tmp_path, out_dir=out, work_dir=c.work_dir("f" * 64),
                        reporter=rep or _Log(), cache=c)


def _attrs(over, strategy="grid", metric="valid.accuracy", mode="max"):
    return {"target": {"$ref": "t"}, "over": over, "strategy": strategy, "metric": metric, "mode": mode,
            "$target": {"name": "t", "kind": "train", "config": BASE, "payload": PAYLOAD}}


@pytest.fixture
def fake_train(monkeypatch):
    """train.run replaced by a function of the config: no torch training."""
    import ftdsl.stages.train as train_mod
    from ftdsl.stages.model import TorchModel

    seen = []

    def fake(inputs, attrs, ctx):
        seen.append((ctx.name, attrs))
        lr = attrs["optimizer"]["lr"]
        if lr > 1:
            raise StageError("FTP501", "loss is nan at step 1")
        acc = 1.0 - abs(lr - 0.02) - 0.001 * attrs["batch"]
        return TorchModel({"source": "arch", "lr": lr}, metrics={"valid.accuracy": acc, "valid.loss": 1 - acc})

    monkeypatch.setattr(train_mod, "run", fake)
    return seen


def test_apply_params_switches_constructors_and_types_values():
    cfg = sweep_mod.apply_params("train", BASE, {"optimizer.lr": 0.1, "optimizer": "sgd", "batch": 8.0})
    assert cfg["optimizer"] == {"$call": "sgd", "lr": 0.1, "momentum": 0.0, "weight_decay": 0.0, "nesterov": False}
    assert cfg["batch"] == 8 and type(cfg["batch"]) is int
    assert BASE["optimizer"]["$call"] == "adamw"  # a deep copy
    assert sweep_mod.apply_params("train", BASE, {"loss": "cross_entropy"})["loss"] == {
        "$call": "cross_entropy", "weights": None, "label_smoothing": 0.0}
    for params, why in [({"batch": 8.5}, "expects an integer"), ({"batch": 0}, r"must be (>= 1|in \[1, )"),
                        ({"optimizer.lr": 0.0}, r"must be (> 0|in \(0, )"), ({"precision": "fp8"}, "one of"),
                        ({"optimizer": "adamx"}, "an optimizer name .sgd, adam, adamw.*did you mean 'adam' or 'adamw'"),
                        ({"schedule": "step"}, "needs `every`"),
                        ({"loss.label_smoothing": 0.1}, "not set in the target"),
                        ({"model": "x"}, "not an attribute")]:
        with pytest.raises(sweep_mod._Bad, match=why):
            sweep_mod.apply_params("train", BASE, params)
    ok = sweep_mod.apply_params("train", BASE, {"schedule": "step", "schedule.every": 5.0})
    assert ok["schedule"] == {"$call": "step", "every": 5, "gamma": 0.1}
    paths = sweep_mod.sweep_paths("train", BASE)
    assert "optimizer.lr" in paths and "batch" in paths and "model" not in paths and "data" not in paths


def test_switched_constructor_arguments_validate_against_the_switch(tmp_path, fake_train):
    # `momentum` exists for sgd only: fine when the sweep switches to sgd, FTP212 otherwise
    art = sweep_mod.run({}, _attrs({"optimizer": ["sgd"], "optimizer.momentum": [0.5, 0.9]}), _ctx(tmp_path / "a"))
    assert [a["optimizer"] for _, a in fake_train] == [
        {"$call": "sgd", "lr": 0.01, "momentum": m, "weight_decay": 0.0, "nesterov": False} for m in (0.5, 0.9)]
    assert art.metrics["sweep.trials"] == 2
    with pytest.raises(StageError, match="momentum") as e:
        sweep_mod.run({}, _attrs({"optimizer.momentum": [0.5]}), _ctx(tmp_path / "b"))
    assert e.value.code == "FTP212"


def test_missing_metric_names_the_available_ones(tmp_path, fake_train):
    with pytest.raises(StageError) as e:
        sweep_mod.run({}, _attrs({"batch": [8]}, metric="valid.acuracy"), _ctx(tmp_path))
    assert e.value.code == "FTP210" and "valid.accuracy" in e.value.hint and "valid.loss" in e.value.hint


def test_mode_min_and_logs(tmp_path, fake_train):
    rep = _Log()
    art = sweep_mod.run({}, _attrs({"optimizer.lr": [0.001, 0.02, 5.0], "batch": [16]}, metric="valid.loss",
                                   mode="min"), _ctx(tmp_path, rep))
    assert art.metrics["sweep.best_trial"] == 2 and art.metrics["sweep.failed"] == 1
    assert art.spec["lr"] == 0.02  # the best trial's artifact, loaded back from its cache entry
    assert "trial 2/3: optimizer.lr=0.02 batch=16 -> valid.loss 0.016" in rep.lines
    assert any(line.startswith("trial 3/3: optimizer.lr=5 batch=16 -> failed (FTP501") for line in rep.lines)
    assert [n for n, _ in fake_train] == ["s[1]", "s[2]", "s[3]"]


def test_optuna_resume_replays_the_same_sequence(tmp_path, fake_train, monkeypatch):
    over = {"optimizer.lr": [0.001, 0.005, 0.01, 0.02, 0.05, 0.1], "batch": [8, 16, 32]}
    attrs = _attrs(over, strategy={"$call": "optuna", "n": 8, "seed": 3})
    sweep_mod.run({}, attrs, _ctx(tmp_path / "full"))
    full = json.loads((tmp_path / "full" / "out" / "trials.json").read_text())

    # an interrupted run: the 5th trial's training is interrupted (SIGTERM-like)
    import ftdsl.stages.train as train_mod

    fake, calls = train_mod.run, []

    def interrupted(inputs, a, ctx):
        calls.append(ctx.name)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return fake(inputs, a, ctx)

    monkeypatch.setattr(train_mod, "run", interrupted)
    with pytest.raises(KeyboardInterrupt):
        sweep_mod.run({}, attrs, _ctx(tmp_path / "cut"))
    first = len(calls)
    (tmp_path / "cut" / "out").rename(tmp_path / "cut" / "out-killed")  # a fresh out dir, as the executor does
    rep = _Log()
    sweep_mod.run({}, attrs, _ctx(tmp_path / "cut", rep))
    resumed = json.loads((tmp_path / "cut" / "out" / "trials.json").read_text())
    key = lambda t: (t["trial"], t["params"], t["metric"], t.get("same_as"))  # noqa: E731
    assert [key(t) for t in resumed["trials"]] == [key(t) for t in full["trials"]]
    n_reused = sum(t["source"] in ("cached", "same") for t in resumed["trials"])
    assert n_reused >= 4 and sum(line.endswith(("(cached)",)) for line in rep.lines) >= 4
    trained = [t for t in resumed["trials"] if t["source"] == "trained"]
    assert len(calls) - first == len(trained) and len(trained) <= len(full["trials"]) - 4  # finished: not redone


def test_random_n_larger_than_the_space_runs_each_combination_once(tmp_path, fake_train):
    rep = _Log()
    art = sweep_mod.run({}, _attrs({"batch": [8, 16]}, strategy={"$call": "random", "n": 5, "seed": 0}),
                        _ctx(tmp_path, rep))
    assert art.metrics["sweep.trials"] == 2
    assert sorted(a["batch"] for _, a in fake_train) == [8, 16]
    assert any("only 2 distinct combinations" in line for line in rep.lines)
