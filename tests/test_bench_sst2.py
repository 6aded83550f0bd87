"""The SST-2 benchmark (issue 10 item 1): its pipeline states the issue's job exactly, so that the
numbers in docs/benchmarks.md measure what they claim; the full-train-set row is a `slow` test."""

from __future__ import annotations

import importlib.util
import io
import json
from contextlib import redirect_stdout
from pathlib import Path

import pytest

from ftdsl.cli import main

ROOT = Path(__file__).resolve().parents[1]
SST2 = ROOT.parent / "shared" / "data" / "sst2"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_sst2", ROOT / "bench" / "sst2.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _write_job(mod, work: Path, rows: list[tuple[str, int]], clip=None) -> Path:
    mod.write_tsv(work / "train.tsv", rows)
    mod.write_tsv(work / "test.tsv", rows)
    p = work / "sst2.ftp"
    p.write_text(mod.pipeline_text(3, clip), encoding="utf-8")
    return p


@pytest.mark.parametrize("clip", [None, 1.0])
def test_bench_pipeline_is_the_issue_job(tmp_path, monkeypatch, clip):
    mod = _bench()
    # SST-2's sentences (no quotes, no backslashes) must survive the bench's TSV round trip.
    rows = [("it 's a fine , moving film", 1), ("-lrb- bad -rrb- ` trash '", 0)]
    p = _write_job(mod, tmp_path, rows, clip)
    assert mod.read_tsv(tmp_path / "train.tsv") == rows
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FTDSL_CACHE", str(tmp_path / "cache"))
    with redirect_stdout(io.StringIO()):
        assert main(["lint", str(p)]) == 0
    buf = io.StringIO()
    with redirect_stdout(buf):
        assert main(["plan", str(p), "--format", "json"]) == 0
    plan = json.loads(buf.getvalue())
    assert plan["seed"] == 3
    st = {s["name"]: s["settings"] for s in plan["stages"]}
    assert st["sst"]["max_length"] == 64 and st["sst"]["train"]["delimiter"] == "\t"
    assert st["base"]["pretrained"] == "sentence-transformers/all-MiniLM-L6-v2"
    t = st["finetune"]
    assert (t["epochs"], t["batch"], t["precision"]) == (1, 32, "auto")
    opt = t["optimizer"]
    assert (opt["$call"], opt["lr"], opt["weight_decay"]) == ("adamw", 1e-4, 0.01)
    assert t["schedule"]["$call"] == "linear" and t["schedule"]["warmup"] == 0.1
    assert t["clip"] == clip  # off unless asked: the Trainer's default max_grad_norm is 1.0


@pytest.mark.slow  # the full 60,614-row SST-2 train set: ~15-25 min on 2 CPU cores
@pytest.mark.skipif(not (SST2 / "train.tsv").exists(), reason="needs ../shared/data/sst2")
def test_full_sst2_reaches_90(tmp_path):
    mod = _bench()
    out = tmp_path / "sst2_full.json"
    assert mod.main(["--rows", "60614", "--only", "ftdsl", "--out", str(out)]) == 0
    acc = json.loads(out.read_text())["summary"]["ftdsl"]["accuracy"]
    assert acc >= 0.90, f"full SST-2 accuracy {acc:.4f} < 0.90 (published MiniLM-L6-H384: 0.913)"
