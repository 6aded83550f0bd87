"""`ftdsl plan` as a user sees it (SPEC §7; formats.md §5; reliability.md §8 A, O7).

A fresh cache: every stage will run. A cache that holds every stage (simulated here by publishing
a small entry per key and recording the run, as the executor does, so no torch is needed): every
stage is cached. One changed attribute: that stage and everything downstream re-run with the
attribute-level reason, and nothing else.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from ftdsl.cli import main
from ftdsl.frontend import compile_pipeline
from ftdsl.plan import make_plan
from ftdsl.runtime.cache import Cache

PIPELINE = """\
ftp 1
pipeline sentiment { seed = 13 }

param lr = 3e-5

data reviews {
  source = csv("data/reviews.csv")
  text = "sentence", label = "label"
  split = { train = 0.8, valid = 0.1, test = 0.1 }
}

model base {
  pretrained = "sentence-transformers/all-MiniLM-L6-v2"
  task = classify(labels = 2)
}

train finetune {
  model = base, data = reviews
  epochs = 3, batch = 32
  optimizer = adamw(lr = lr, weight_decay = 0.01)
}

prune sparse { from = finetune, method = global_magnitude(amount = 0.3) }
export onnx  { from = sparse, format = onnx(opset = 17), verify = true }
evaluate report { models = [finetune, sparse, onnx], data = reviews.test, metrics = [accuracy, f1] }
"""
STAGES = ["reviews", "base", "finetune", "sparse", "onnx", "report"]
DOWNSTREAM_OF_FINETUNE = {"finetune", "sparse", "onnx", "report"}


@pytest.fixture
def project(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setenv("TERM", "dumb")
    monkeypatch.setenv("FTDSL_DEVICE", "cpu")
    monkeypatch.delenv("FTDSL_CACHE", raising=False)
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "reviews.csv").write_text("sentence,label\ngood,1\nbad,0\n")
    (tmp_path / "p.ftp").write_text(PIPELINE)

    def plan(*args: str) -> tuple[int, str, str]:
        try:
            rc = main(["plan", "p.ftp", "--cache", "cache", *args])
        except SystemExit as e:
            rc = e.code
        out, err = capsys.readouterr()
        assert "Traceback" not in err
        return rc, out, err

    return plan


def plan_json(plan, *args):
    rc, out, err = plan("--format", "json", *args)
    assert rc in (0, 2), err
    doc = json.loads(out)
    return {s["name"]: s for s in doc["stages"]}, doc


def simulate_run(tmp_path: Path) -> None:
    """Publish a cache entry for every stage and record the run, as a successful `ftdsl run` would."""
    c = compile_pipeline("p.ftp")
    assert c.ok, c.diagnostics
    cache = Cache(tmp_path / "cache")
    p = make_plan(c, cache)
    pipeline = getattr(p, "pipeline_abs", "") or str(Path(p.pipeline).resolve())
    for st in p.stages:
        cache.publish(st.key, lambda d, name=st.name: (d / "artifact.txt").write_text(name),
                      {"stage": st.name, "kind": st.kind})
        cache.record_run(pipeline, st.name, st.key, st.payload, st.inputs)


# --- a fresh cache ---------------------------------------------------------------------------------

def test_fresh_cache_json_lists_every_stage_in_dependency_order(project):
    stages, doc = plan_json(project)
    assert doc["format_version"] == "1.0"
    assert list(stages) == STAGES
    for s in stages.values():
        assert {"name", "kind", "status", "reasons", "actions", "cache_key"} <= set(s)
        assert s["status"].startswith("run (")
        assert s["reasons"]
        assert re.fullmatch(r"sha256:[0-9a-f]{64}", s["cache_key"])
    assert stages["finetune"]["kind"] == "train"
    assert stages["finetune"]["depends_on"] == ["base", "reviews"] or \
        set(stages["finetune"]["depends_on"]) == {"base", "reviews"}
    assert stages["reviews"]["status"] == "run (new)"


def test_fresh_cache_text_shows_new_stages_and_a_summary(project):
    rc, out, _ = project()
    assert rc == 0
    assert out.splitlines()[0] == "ftdsl plan for p.ftp (seed 13, device cpu)"
    assert re.search(r"^symbols: .*\+ run.*~ re-run.*= cached", out, re.M)  # the legend
    assert '# data.reviews will run: new\n  + data "reviews"' in out
    assert '# model.base will run: new\n  + model "base"' in out
    assert re.search(r"^Plan: \d+ to run, \d+ to re-run, 0 cached\.$", out, re.M)
    assert "optimizer = adamw(lr=3e-05, weight_decay=0.01)" in out  # the param is substituted


def test_fresh_cache_every_stage_is_new(project):
    # Nothing ran before, so nothing is a re-run: stages downstream of new ones are new too.
    stages, doc = plan_json(project)
    assert {s["status"] for s in stages.values()} == {"run (new)"}
    assert doc["summary"] == {"run": 6, "rerun": 0, "cached": 0}
    _, out, _ = project()
    assert "Plan: 6 to run, 0 to re-run, 0 cached." in out
    assert "changed" not in out


def test_plan_is_a_dry_run_that_creates_no_cache(project, tmp_path):
    project()
    project("--format", "json")
    assert not (tmp_path / "cache").exists()
    assert not (tmp_path / "out").exists()


def test_mermaid_is_a_flowchart_with_every_edge(project):
    rc, out, _ = project("--format", "mermaid")
    assert rc == 0
    assert out.startswith("flowchart")
    for src, dst in [("base", "finetune"), ("reviews", "finetune"), ("finetune", "sparse"), ("sparse", "onnx"),
                     ("onnx", "report")]:
        assert re.search(rf"^\s*{src} -->(\|[^|]*\|)? {dst}$", out, re.M), (src, dst)


def test_detailed_exitcode_is_2_when_something_would_run(project):
    rc, _, _ = project("--detailed-exitcode")
    assert rc == 2
    rc, _, _ = project()
    assert rc == 0


def test_plan_of_a_broken_pipeline_with_detailed_exitcode_is_1(project, tmp_path):
    (tmp_path / "p.ftp").write_text(PIPELINE.replace("epochs = 3", "epochs = 0"))
    rc, out, err = project("--detailed-exitcode")
    assert rc == 1 and out == "" and "FTP203" in err


def test_unknown_stage_for_only_or_force_is_a_usage_error(project):
    rc, _, err = project("--only", "finetun")
    assert rc == 2
    assert "no stage named `finetun`" in err and "did you mean `finetune`" in err
    rc, _, _ = project("--force", "nope")
    assert rc == 2


def test_only_keeps_the_stage_and_its_inputs(project):
    stages, _ = plan_json(project, "--only", "sparse")
    assert set(stages) == {"reviews", "base", "finetune", "sparse"}


def test_github_step_summary_gets_markdown(project, tmp_path, monkeypatch):
    summary = tmp_path / "summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    project()
    text = summary.read_text()
    assert "| stage | kind | status |" in text and "`finetune`" in text


def test_key_changes_with_the_data_file_and_set_but_not_with_formatting(project, tmp_path):
    base, _ = plan_json(project)
    (tmp_path / "p.ftp").write_text(PIPELINE.replace("epochs = 3, batch = 32", "epochs = 3\n  batch = 32  # c"))
    reformatted, _ = plan_json(project)
    assert {n: s["cache_key"] for n, s in base.items()} == {n: s["cache_key"] for n, s in reformatted.items()}
    (tmp_path / "data" / "reviews.csv").write_text("sentence,label\ngood,1\nbad,1\n")
    changed, _ = plan_json(project)
    assert all(changed[n]["cache_key"] != base[n]["cache_key"] for n in ("reviews", "finetune", "report"))
    assert changed["base"]["cache_key"] == base["base"]["cache_key"]


# --- after a run --------------------------------------------------------------------------------

def test_everything_cached_after_a_run(project, tmp_path):
    simulate_run(tmp_path)
    rc, out, _ = project("--detailed-exitcode")
    assert rc == 0
    assert "Plan: 0 to run, 0 to re-run, 6 cached." in out
    assert re.search(r"# train\.finetune is cached \(sha256:[0-9a-f]{12}\)\n  = train \"finetune\"", out)
    stages, doc = plan_json(project)
    assert {s["status"] for s in stages.values()} == {"cached"}
    assert {a for s in stages.values() for a in s["actions"]} == {"noop"}


def test_a_changed_attribute_reruns_that_stage_and_downstream_only(project, tmp_path):
    simulate_run(tmp_path)
    stages, _ = plan_json(project, "--set", "finetune.epochs=4")
    rerun = {n for n, s in stages.items() if s["status"] != "cached"}
    assert rerun == DOWNSTREAM_OF_FINETUNE
    ft = stages["finetune"]
    assert ft["status"].startswith("run (changed: epochs 3 -> 4")
    assert ft["changes"] == [{"path": "epochs", "old": 3, "new": 4}]
    assert ft["actions"] == ["rerun"]
    assert any(r.startswith("upstream") and "finetune" in r for r in stages["sparse"]["reasons"])
    rc, out, _ = project("--set", "finetune.epochs=4", "--detailed-exitcode")
    assert rc == 2
    assert "~ epochs = 3 -> 4   # forces re-run" in out
    assert "Plan: 0 to run, 4 to re-run, 2 cached." in out


def test_a_changed_param_shows_the_attribute_it_reaches(project, tmp_path):
    simulate_run(tmp_path)
    stages, _ = plan_json(project, "--set", "lr=1e-5")
    assert stages["finetune"]["status"].startswith("run (changed: optimizer.lr 3e-05 -> 1e-05")
    assert stages["reviews"]["status"] == stages["base"]["status"] == "cached"


def test_an_edited_data_file_reruns_the_data_stage_with_the_file_named(project, tmp_path):
    simulate_run(tmp_path)
    (tmp_path / "data" / "reviews.csv").write_text("sentence,label\ngood,1\nworse,0\n")
    stages, _ = plan_json(project, "--verify")
    assert stages["reviews"]["status"] == "run (changed: file data/reviews.csv)"
    assert stages["base"]["status"] == "cached"


def test_force_reruns_the_stage(project, tmp_path):
    simulate_run(tmp_path)
    stages, _ = plan_json(project, "--force", "sparse")
    assert stages["sparse"]["status"].startswith("run (forced")
    assert stages["finetune"]["status"] == "cached"


SWEEP_PIPELINE = """\
ftp 1
data d { source = synthetic(n = 200, features = 8, classes = 3, seed = 1) }
model m { arch = mlp(hidden = [16]), task = classify(labels = 3) }
train t { model = m, data = d, max_steps = 24, batch = 16, optimizer = adamw(lr = 0.01) }
sweep r {
  target = t
  over = { "optimizer.lr" = loguniform(1e-4, 1e-1), "batch" = int_range(8, 32, 8) }
  strategy = random(n = 5, seed = 2)
  metric = "valid.accuracy"
}
sweep o {
  target = t
  over = { "optimizer.lr" = uniform(0.001, 0.1), "batch" = [8, 16] }
  strategy = optuna(n = 4)
  metric = "valid.loss"
}
"""

PLAN_PROBE = """
import contextlib, io, json, sys
from ftdsl.cli import main
buf = io.StringIO()
with contextlib.redirect_stdout(buf):
    code = main(["plan", "p.ftp", "--cache", "cache", "--format", "json"])
print(json.dumps({"code": code, "plan": json.loads(buf.getvalue()), "modules": sorted(sys.modules)}))
"""


def test_plan_of_sweeps_with_ranges_counts_trials_without_torch_or_numpy(tmp_path):
    """plan enumerates a seeded random sweep's trials (a trial with t's settings would be
    counted) and bounds an optuna sweep, importing neither torch, numpy nor optuna."""
    import os
    import subprocess
    import sys

    (tmp_path / "p.ftp").write_text(SWEEP_PIPELINE)
    env = dict(os.environ, NO_COLOR="1", FTDSL_DEVICE="cpu")
    p = subprocess.run([sys.executable, "-c", PLAN_PROBE], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout.strip().splitlines()[-1])
    assert r["code"] == 0
    tops = {m.split(".")[0] for m in r["modules"]}
    assert not tops & {"torch", "numpy", "optuna", "sklearn"}
    by = {s["name"]: s for s in r["plan"]["stages"]}
    assert by["r"]["trials"] == {"strategy": "random", "trials": 5, "exact": True, "cached": 0, "from_stages": {},
                                 "failed": 0, "resume": [], "to_run": 5}
    assert by["o"]["trials"]["exact"] is False and by["o"]["trials"]["to_run"] == 4


def test_a_new_engine_version_reruns_that_kind_and_plan_says_why(project, tmp_path, monkeypatch):
    """Entries an older engine computed are not reused: the kind's engine version is in the key."""
    from ftdsl.stages import ENGINE_VERSION

    simulate_run(tmp_path)
    before, _ = plan_json(project)
    old = ENGINE_VERSION["prune"]
    monkeypatch.setitem(ENGINE_VERSION, "prune", old + 1)
    stages, _ = plan_json(project)
    assert stages["sparse"]["cache_key"] != before["sparse"]["cache_key"]
    assert stages["finetune"]["cache_key"] == before["finetune"]["cache_key"]
    assert f"engine changed: prune engine {old} -> {old + 1}" in stages["sparse"]["reasons"]
    assert stages["sparse"]["status"].startswith(f"run (engine changed: prune engine {old} -> {old + 1}")
    assert {n for n, s in stages.items() if s["status"] != "cached"} == {"sparse", "onnx", "report"}
