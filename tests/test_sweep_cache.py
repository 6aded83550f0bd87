"""Sweeps as ordinary cached stages (issue 7 item 4): a trial's key is the key of the train stage
it expands to, ranges (`uniform`, `loguniform`, `int_range`) for random and optuna, Optuna's
pruner, lint errors for bad spaces, and `plan`'s trial counts.

End-to-end tests go through `ftdsl.cli.main` with TINY trimmed to 12 steps; the pruner and
the sampling are tested with a fake, instant train stage and the torch-free space module.
"""

from __future__ import annotations

import json
import math
import shutil
import textwrap
from pathlib import Path

import pytest

from ftdsl.cli import main
from ftdsl.stages import sweep as sweep_mod
from ftdsl.stages.base import Reporter, StageContext
from ftdsl.stages.sweep_space import Space

from spec_example import TINY
from test_sweep_stage import FAST, run, stage  # `ftdsl run` with a --summary-json, TINY cut to 12 steps


def sweep_block(over: str, strategy: str = "grid", name: str = "s") -> str:
    return textwrap.dedent(f"""\
        sweep {name} {{
          target = t
          over = {{ {over} }}
          strategy = {strategy}
          metric = "valid.accuracy"
        }}
        """)


def write(folder: Path, *blocks: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    p = folder / "p.ftp"
    p.write_text(textwrap.dedent(TINY) + "".join(blocks))
    return p


def table(p: Path, name: str = "s") -> dict:
    return json.loads((p.parent / "out" / name / "trials.json").read_text())


@pytest.fixture
def trainings(monkeypatch):
    """The real train stage, counting its calls (the stage name: `t`, `s[3]`, ...)."""
    import ftdsl.stages.train as train_mod

    real, names = train_mod.run, []

    def counting(inputs, attrs, ctx):
        names.append(ctx.name)
        return real(inputs, attrs, ctx)

    monkeypatch.setattr(train_mod, "run", counting)
    return names


@pytest.fixture(scope="module")
def upstream(tmp_path_factory) -> Path:
    """A cache holding d, m and t (trained once for the module)."""
    root = tmp_path_factory.mktemp("upstream")
    p = write(root)
    code, _ = run(p, root / "cache")
    assert code == 0
    return root / "cache"


def cache_copy(upstream: Path, dest: Path) -> Path:
    shutil.copytree(upstream, dest)
    return dest


def plan_text(p: Path, cache: Path, capsys, *extra) -> str:
    capsys.readouterr()
    assert main(["plan", str(p), "--cache", str(cache), *FAST, *extra]) == 0
    return capsys.readouterr().out


# --------------------------------------------------------------------------------------------
# Trials reuse the cache


def test_optuna_n4_to_n5_trains_only_the_new_trial(tmp_path, upstream, trainings, capsys):
    cache = cache_copy(upstream, tmp_path / "cache")
    over = '"optimizer.lr" = loguniform(0.001, 0.1), "batch" = int_range(8, 32, 8)'
    p = write(tmp_path, sweep_block(over, "optuna(n = 4, seed = 1)"))
    code, s = run(p, cache)
    assert code == 0, s
    first = table(p)
    assert len(trainings) == len({t["key"] for t in first["trials"]}) and trainings  # t was cached
    assert stage(s, "s")["metrics"]["sweep.trained"] == len(trainings)

    p.write_text(p.read_text().replace("n = 4", "n = 5"))
    out = plan_text(p, cache, capsys)
    assert "trials: 4 trials cached, up to 1 to run" in out
    trainings.clear()
    code, s = run(p, cache)
    assert code == 0, s
    second = table(p)
    # the same four trials (values, keys, metrics), all from the cache; only trial 5 trained
    keep = lambda t: (t["trial"], t["params"], t["key"], t["metric"])  # noqa: E731
    assert [keep(t) for t in second["trials"][:4]] == [keep(t) for t in first["trials"]]
    assert [t["source"] for t in second["trials"][:4]] == ["cached"] * 4 and second["trials"][4]["source"] in (
        "trained", "same")
    assert trainings == (["s[5]"] if second["trials"][4]["source"] == "trained" else [])
    m = stage(s, "s")["metrics"]
    assert m["sweep.trials"] == 5 and m["sweep.cached"] == 4 and m["sweep.trained"] == len(trainings)
    for t in second["trials"]:  # each row: the trial's full configuration, its key and metrics
        assert t["config"]["optimizer"]["lr"] == t["params"]["optimizer.lr"] and t["config"]["batch"] == t["params"][
            "batch"]
        assert len(t["key"]) == 64 and "valid.accuracy" in t["metrics"]


def test_a_trial_equal_to_a_plain_train_block_shares_its_entry(tmp_path, upstream, trainings, capsys):
    """Both ways: a plain block that ran first makes the trial a cache hit, and a trial that ran
    first makes a plain block with its configuration cached."""
    cache = cache_copy(upstream, tmp_path / "cache")
    t2 = textwrap.dedent("""\
        train t2 {
          model = m, data = d
          max_steps = 24, batch = 8
          optimizer = adamw(lr = 0.05)
          checkpoint_every = 4
          precision = fp32
        }
        """)
    p = write(tmp_path, t2)
    code, s = run(p, cache, "--set", "t2.max_steps=12")
    assert code == 0 and trainings == ["t2"]
    trainings.clear()
    p = write(tmp_path, t2, sweep_block('"optimizer.lr" = [0.05, 0.02], "batch" = [8]'))
    out = plan_text(p, cache, capsys, "--set", "t2.max_steps=12")
    assert "trials: 1 of 2 trials cached, 1 to run" in out
    code, s = run(p, cache, "--set", "t2.max_steps=12")
    assert code == 0, s
    rows = table(p)["trials"]
    t2_key = json.loads((p.parent / "out" / "t2" / ".ftdsl-key").read_text())["key"]
    assert rows[0]["key"] == t2_key and rows[0]["source"] == "cached"
    assert trainings == ["s[2]"]
    assert rows[0]["metrics"]["valid.accuracy"] == stage(s, "t2")["metrics"]["valid.accuracy"]

    # the other way round: trial 2 (lr 0.02, batch 8) ran in the sweep; a plain block like it is cached
    t3 = t2.replace("train t2", "train t3").replace("lr = 0.05", "lr = 0.02")
    p = write(tmp_path, t2, sweep_block('"optimizer.lr" = [0.05, 0.02], "batch" = [8]'), t3)
    out = plan_text(p, cache, capsys, "--set", "t2.max_steps=12", "--set", "t3.max_steps=12")
    assert 'train.t3 is cached' in out
    trainings.clear()
    code, s = run(p, cache, "--set", "t2.max_steps=12", "--set", "t3.max_steps=12")
    assert code == 0 and trainings == [] and stage(s, "t3")["status"] == "cached"


def test_plan_counts_grid_and_random_trials(tmp_path, upstream, capsys):
    cache = cache_copy(upstream, tmp_path / "cache")
    # t is lr 0.01, batch 16: one grid trial is t itself, produced earlier in the same run
    p = write(tmp_path, sweep_block('"optimizer.lr" = [0.01, 0.03], "batch" = [16, 8]'))
    assert "trials: 1 of 4 trials cached, 3 to run" in plan_text(p, cache, capsys)
    p2 = write(tmp_path / "fresh", sweep_block('"optimizer.lr" = [0.01, 0.03], "batch" = [16, 8]'))
    out = plan_text(p2, tmp_path / "empty", capsys)
    assert "trials: 1 of 4 trials cached (1 by `t` in this run), 3 to run" in out
    capsys.readouterr()
    assert main(["plan", str(p2), "--cache", str(tmp_path / "empty"), "--format", "json", *FAST]) == 0
    plan = json.loads(capsys.readouterr().out)
    sweep = next(s for s in plan["stages"] if s["name"] == "s")
    assert sweep["trials"]["trials"] == 4 and sweep["trials"]["to_run"] == 3 and sweep["trials"]["exact"]
    assert sweep["trials"]["from_stages"] == {"t": 1}

    code, _ = run(p, cache)
    assert code == 0
    p.write_text(p.read_text().replace("[16, 8]", "[16, 8, 32]"))
    assert "trials: 4 of 6 trials cached, 2 to run" in plan_text(p, cache, capsys)
    p.write_text(p.read_text().replace("strategy = grid", "strategy = random(n = 3, seed = 5)"))
    # seeded random enumerates its draws without running: each one is cached or not
    space = Space("s", {"name": "t", "kind": "train", "config": {
        "optimizer": {"$call": "adamw", "lr": 0.01, "weight_decay": 0.01}, "batch": 16}},
        {"optimizer.lr": [0.01, 0.03], "batch": [16, 8, 32]})
    draws = list(space.random(3, 5))
    cached = sum(d["batch"] in (16, 8) for d in draws)
    assert f"trials: {cached} of 3 trials cached, {3 - cached} to run" in plan_text(p, cache, capsys)


# --------------------------------------------------------------------------------------------
# Ranges: bounds, types, reproducibility


def _space(over: dict) -> Space:
    cfg = {"optimizer": {"$call": "adamw", "lr": 0.01, "weight_decay": 0.01}, "batch": 16,
           "schedule": {"$call": "cosine", "warmup": 0.0, "min_lr": 0.0}}
    return Space("s", {"name": "t", "kind": "train", "config": cfg}, over)


def test_ranges_sample_within_bounds_and_reproduce_with_the_seed():
    from optuna.distributions import FloatDistribution, IntDistribution

    over = {"optimizer.lr": {"$call": "loguniform", "lo": 1e-5, "hi": 1e-1},
            "optimizer.weight_decay": {"$call": "uniform", "lo": 0.0, "hi": 0.3},
            "batch": {"$call": "int_range", "lo": 8, "hi": 64, "step": 8}}
    space = _space(over)
    a = list(space.random(200, 7))
    assert a == list(_space(over).random(200, 7))  # the seed reproduces the draws
    assert a != list(space.random(200, 8))
    assert a[:50] == list(space.random(50, 7))  # prefix-stable: n does not change earlier trials
    # Optuna's own distributions accept every draw (the same semantics)
    lr_d, wd_d = FloatDistribution(1e-5, 1e-1, log=True), FloatDistribution(0.0, 0.3)
    b_d = IntDistribution(8, 64, step=8)
    for params in a:
        assert type(params["optimizer.lr"]) is float and type(params["batch"]) is int
        assert lr_d._contains(lr_d.to_internal_repr(params["optimizer.lr"]))
        assert wd_d._contains(wd_d.to_internal_repr(params["optimizer.weight_decay"]))
        assert b_d._contains(b_d.to_internal_repr(params["batch"]))
    # loguniform spreads over the decades; int_range hits every value
    decades = {math.floor(math.log10(p["optimizer.lr"])) for p in a}
    assert decades == {-5, -4, -3, -2}
    assert {p["batch"] for p in a} == set(range(8, 65, 8))
    # grid enumerates an int_range; a finite random space never repeats a combination
    assert [g["batch"] for g in _space({"batch": over["batch"]}).grid()] == list(range(8, 65, 8))
    draws = list(_space({"batch": over["batch"]}).random(20, 0))
    assert sorted(d["batch"] for d in draws) == list(range(8, 65, 8))


BAD_SPACES = [
    ('"optimizer.lr" = loguniform(1e-4, 1e-2)', "grid", "FTP216", "`grid` cannot enumerate"),
    ('"optimizer.lr" = uniform(0.1, 0.01)', "random(n = 2)", "FTP216", "`lo` must be less than `hi`"),
    ('"optimizer.lr" = loguniform(0, 0.01)', "random(n = 2)", "FTP203", "must be > 0"),
    ('"batch" = uniform(8, 64)', "optuna(n = 2)", "FTP216", "use `int_range(8, 64, 1)`"),
    ('"batch" = int_range(8, 64, 0)', "random(n = 2)", "FTP203", "step"),
    ('"batch" = int_range(8, 30, 8)', "random(n = 2)", "FTP216", "write `int_range(8, 24, 8)`"),
    ('"precision" = uniform(0, 1)', "random(n = 2)", "FTP216", "use a list of values"),
    ('"optimizer.lr" = uniform(0, 0.1)', "random(n = 2)", "FTP216", "out of range"),
    ('"optimizer" = ["sgd"], "optimizer.momentum" = uniform(0.5, 1.5)', "random(n = 2)", "FTP216", "[0, 1)"),
]


@pytest.mark.parametrize("over,strategy,code,text", BAD_SPACES)
def test_bad_spaces_are_lint_errors_with_a_span(tmp_path, capsys, over, strategy, code, text):
    p = write(tmp_path, sweep_block(over, strategy))
    assert main(["lint", str(p)]) == 1
    err = capsys.readouterr().err
    assert f"error[{code}]" in err and text in err, err
    assert "p.ftp:" in err  # a location
    if code == "FTP216" and "grid" in text:
        assert "random(n = 8, seed = 0)" in err  # the hint
    assert main(["run", str(p), "--cache", str(tmp_path / "c"), "--quiet"]) == 1  # nothing trains


def test_good_spaces_lint_clean(tmp_path, capsys):
    p = write(tmp_path, sweep_block('"optimizer.lr" = loguniform(1e-4, 1e-2), "batch" = int_range(8, 32, 8)',
                                    "optuna(n = 4, seed = 0, pruner = median)"),
              sweep_block('"batch" = int_range(8, 32, 8), "optimizer.lr" = [0.01, 0.1]', "grid", name="g"),
              # an argument of the constructor the sweep itself switches to
              sweep_block('"optimizer" = ["sgd"], "optimizer.momentum" = uniform(0.5, 0.9)', "random(n = 2)",
                          name="w"))
    assert main(["lint", str(p)]) == 0, capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# Optuna's pruner, with a fake train stage that reports one value per epoch


class _Log(Reporter):
    def __init__(self):
        self.lines = []

    def log(self, text):
        self.lines.append(text)


CFG = {"model": {"$ref": "m"}, "data": {"$ref": "d"}, "epochs": 4, "batch": 16, "max_steps": None,
       "optimizer": {"$call": "adamw", "lr": 0.01, "weight_decay": 0.01}}
PAYLOAD = {"kind": "train", "attrs": CFG, "inputs": {}, "files": {}, "versions": {}, "env": {}}


@pytest.fixture
def fake_epochs(monkeypatch):
    """Accuracy rises each epoch towards a ceiling set by the lr: low lr trials look bad early."""
    import ftdsl.stages.train as train_mod
    from ftdsl.stages.model import TorchModel

    epochs_run = []

    def fake(inputs, attrs, ctx):
        lr = attrs["optimizer"]["lr"]
        ceiling = 1.0 - abs(math.log10(lr) + 2) / 4
        lines = []
        for epoch in range(1, 5):
            acc = ceiling * epoch / 4
            epochs_run.append((ctx.name, epoch))
            lines.append(json.dumps({"step": epoch * 10, "split": "valid", "accuracy": acc}))
            ctx.out_dir.mkdir(parents=True, exist_ok=True)
            (ctx.out_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n")
            if ctx.on_eval is not None:
                ctx.on_eval(epoch * 10, {"valid": {"accuracy": acc}})
        return TorchModel({"source": "arch", "lr": lr}, metrics={"valid.accuracy": ceiling})

    monkeypatch.setattr(train_mod, "run", fake)
    return epochs_run


def _sweep(tmp_path: Path, n: int, rep=None, pruner="median"):
    from ftdsl.runtime.cache import Cache

    cache = Cache(tmp_path / "cache")
    out = tmp_path / f"out-{n}"
    out.mkdir(parents=True, exist_ok=True)
    ctx = StageContext(name="s", kind="sweep", pipeline_dir=tmp_path, out_dir=out, work_dir=cache.work_dir("a" * 64),
                       reporter=rep or _Log(), cache=cache)
    attrs = {"over": {"optimizer.lr": {"$call": "loguniform", "lo": 1e-5, "hi": 1.0}}, "metric": "valid.accuracy",
             "mode": "max", "strategy": {"$call": "optuna", "n": n, "seed": 4, "pruner": pruner},
             "$target": {"name": "t", "kind": "train", "config": CFG, "payload": PAYLOAD}}
    art = sweep_mod.run({}, attrs, ctx)
    return art, json.loads((out / "trials.json").read_text())


def test_median_pruner_stops_bad_trials_and_a_rerun_replays_them(tmp_path, fake_epochs):
    art, t12 = _sweep(tmp_path, 12)
    pruned = [t for t in t12["trials"] if t["status"] == "pruned"]
    assert pruned, "the median pruner should stop some of 12 trials"
    for t in pruned:  # stopped before its last epoch, below the median of earlier trials at that step
        stopped = [e for name, e in fake_epochs if name == f"s[{t['trial']}]"]
        assert len(t["curve"]) == max(stopped) and t["metric"] is None
    assert all(t["trial"] > 5 for t in pruned)  # MedianPruner's 5 startup trials always finish
    assert art.metrics["sweep.pruned"] == len(pruned)
    best = max((t for t in t12["trials"] if t["status"] == "ok"), key=lambda t: t["metric"])
    assert art.metrics["sweep.best_trial"] == best["trial"]

    # n = 12 -> 13: the same twelve (pruned ones from their record, finished ones from the cache)
    fake_epochs.clear()
    _, t13 = _sweep(tmp_path, 13)
    keep = lambda t: (t["params"], t["key"], t["status"], t["metric"])  # noqa: E731
    assert [keep(t) for t in t13["trials"][:12]] == [keep(t) for t in t12["trials"]]
    assert {name for name, _ in fake_epochs} <= {"s[13]"}

    # without a pruner every trial runs all its epochs
    fake_epochs.clear()
    _, t_none = _sweep(tmp_path / "none", 12, pruner="none")
    assert all(t["status"] == "ok" for t in t_none["trials"])


def test_cache_gc_keep_keeps_the_trials_of_a_kept_sweep_and_force_retrains_them(tmp_path, upstream, trainings):
    cache = cache_copy(upstream, tmp_path / "cache")
    p = write(tmp_path, sweep_block('"optimizer.lr" = [0.03, 0.07]'))
    p.write_text(p.read_text().replace("max_steps = 24", "max_steps = 12"))  # gc --keep plans the file as written
    code, _ = run(p, cache, "--set", "t.max_steps=12")
    assert code == 0
    keys = [t["key"] for t in table(p)["trials"]]
    entry = lambda k: cache / "entries" / k[:2] / k  # noqa: E731
    assert all(entry(k).is_dir() for k in keys)
    assert main(["cache", "gc", "--cache", str(cache), "--keep", str(p)]) == 0
    assert all(entry(k).is_dir() for k in keys), "gc removed the trials of a sweep the pipeline keeps"
    assert main(["plan", str(p), "--cache", str(cache), "--detailed-exitcode"]) == 0
    # --force on the sweep trains its trials again (a forced sweep does not just reload them)
    trainings.clear()
    code, s = run(p, cache, "--force", "s")
    assert code == 0 and sorted(trainings) == ["s[1]", "s[2]"]
    assert stage(s, "s")["metrics"]["sweep.trained"] == 2
