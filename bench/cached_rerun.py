"""Wall time of the quickstart: one cold `ftdsl run`, then fully cached re-runs and `ftdsl plan`.

    python bench/cached_rerun.py               # 5 cached re-runs and 5 plans, a markdown table
    python bench/cached_rerun.py --runs 9      # more
    python bench/cached_rerun.py --in-place    # run pipelines/quickstart.ftp where it is (writes pipelines/out/)

Every command is a fresh subprocess (the venv's `ftdsl` script), so the times include the
interpreter start-up and every import: what a user at a shell pays. By default the pipeline file
is copied, byte for byte, into a temporary folder and run there, so its `out/` folder does not
collide with anyone else's run of the same file; the cache is a fresh temporary folder.

Targets: cold quickstart < 60 s with test accuracy >= 0.95; a fully cached re-run < 1.0 s;
`ftdsl plan` < 0.5 s (medians). Exit code 0 when all are met, 1 otherwise.
One extra cached re-run under `python -X importtime` tells whether torch was imported.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PIPELINE = ROOT / "pipelines" / "quickstart.ftp"
RESULTS = ROOT / "bench" / "results"


def ftdsl_cmd() -> list[str]:
    script = Path(sys.executable).parent / "ftdsl"
    return [str(script)] if script.exists() else [sys.executable, "-m", "ftdsl"]


def timed(cmd: list[str], cwd: Path, env: dict) -> tuple[float, subprocess.CompletedProcess]:
    t = time.perf_counter()
    p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    return time.perf_counter() - t, p


def check(p: subprocess.CompletedProcess, what: str) -> None:
    if p.returncode != 0:
        sys.stderr.write(p.stdout[-3000:] + p.stderr[-3000:])
        raise SystemExit(f"{what} failed with exit code {p.returncode}")


def summary_of(path: Path) -> dict:
    return json.loads(path.read_text())


def imports_of(cmd: list[str], cwd: Path, env: dict) -> dict:
    """Run once under -X importtime: was torch imported, and the slowest top-level imports."""
    p = subprocess.run([sys.executable, "-X", "importtime", "-m", "ftdsl", *cmd], cwd=cwd, env=env,
                       capture_output=True, text=True)
    top = []
    mods = set()
    for line in p.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        parts = [x.strip() for x in line[len("import time:"):].split("|")]
        try:
            cum = int(parts[1])
        except ValueError:
            continue
        name = parts[2]
        mods.add(name.strip())
        if not name.startswith(" "):  # a top-level import
            top.append((cum / 1e3, name.strip()))
    top.sort(reverse=True)
    return {"torch_imported": "torch" in mods, "transformers_imported": "transformers" in mods,
            "numpy_imported": "numpy" in mods, "slowest_top_level_ms": [[round(ms, 1), n] for ms, n in top[:8]]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--in-place", action="store_true", help="run pipelines/quickstart.ftp itself, not a copy")
    ap.add_argument("--out", default=str(RESULTS / "cached_rerun.json"))
    args = ap.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="ftdsl-rerun-"))
    cache = tmp / "cache"
    if args.in_place:
        pipeline = PIPELINE
    else:
        pipeline = tmp / "pipe" / PIPELINE.name
        pipeline.parent.mkdir()
        shutil.copyfile(PIPELINE, pipeline)
    cwd = pipeline.parent
    env = dict(os.environ, HF_HUB_OFFLINE="1", FTDSL_DEBUG="")
    env.pop("FTDSL_CACHE", None)
    base = ftdsl_cmd()
    run = [*base, "run", str(pipeline), "--cache", str(cache), "--quiet"]
    plan = [*base, "plan", str(pipeline), "--cache", str(cache)]

    # 1. cold
    sj = tmp / "cold.json"
    cold_s, p = timed([*run, "--summary-json", str(sj)], cwd, env)
    check(p, "cold run")
    cold = summary_of(sj)
    statuses = {s["name"]: s["status"] for s in cold["stages"]}
    fit = next(s for s in cold["stages"] if s["kind"] == "train")
    acc = fit["metrics"].get("test.accuracy")
    print(f"cold run: {cold_s:.2f} s, stages {statuses}, test accuracy {acc}", file=sys.stderr)

    # 2. cached re-runs and plans, interleaved
    cached, plans = [], []
    for i in range(args.runs):
        sj = tmp / f"cached{i}.json"
        dt, p = timed([*run, "--summary-json", str(sj)], cwd, env)
        check(p, "cached run")
        st = {s["name"]: s["status"] for s in summary_of(sj)["stages"]}
        if set(st.values()) != {"cached"}:
            raise SystemExit(f"re-run {i} was not fully cached: {st}")
        cached.append(dt)
        dt, p = timed(plan, cwd, env)
        check(p, "plan")
        plans.append(dt)
        print(f"  {i + 1}: cached run {cached[-1]:.3f} s, plan {plans[-1]:.3f} s", file=sys.stderr)
    plan_text = p.stdout

    imp_run = imports_of(run[len(base):], cwd, env)
    imp_plan = imports_of(plan[len(base):], cwd, env)

    med = statistics.median
    targets = {
        "cold < 60 s": cold_s < 60,
        "test accuracy >= 0.95": acc is not None and acc >= 0.95,
        "cached re-run < 1.0 s (median)": med(cached) < 1.0,
        "plan < 0.5 s (median)": med(plans) < 0.5,
    }
    rows = [
        ("cold `ftdsl run` (all 3 stages)", [cold_s], "< 60 s"),
        ("cached `ftdsl run`", cached, "< 1.0 s"),
        ("`ftdsl plan` (all cached)", plans, "< 0.5 s"),
    ]
    lines = ["| command | runs | median s | min s | max s | target |", "|---|---|---|---|---|---|"]
    for name, xs, target in rows:
        lines.append(f"| {name} | {len(xs)} | {med(xs):.3f} | {min(xs):.3f} | {max(xs):.3f} | {target} |")
    lines += ["", f"quickstart test accuracy: {acc} (target >= 0.95); stage times (cold): "
              + ", ".join(f"{s['name']} {s['seconds']:.2f} s" for s in cold["stages"]), "",
              f"torch imported by a cached run: {imp_run['torch_imported']}; by plan: {imp_plan['torch_imported']}",
              "", "targets: " + ", ".join(f"{k}: {'met' if v else 'MISSED'}" for k, v in targets.items())]
    print("\n".join(lines))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "nproc": os.cpu_count(), "loadavg": os.getloadavg(), "command_prefix": base,
        "pipeline": str(pipeline), "in_place": args.in_place,
        "cold": {"seconds": cold_s, "stages": cold["stages"], "test_accuracy": acc},
        "cached_run_seconds": cached, "plan_seconds": plans,
        "imports_cached_run": imp_run, "imports_plan": imp_plan, "plan_output": plan_text,
        "targets": targets, "table_markdown": "\n".join(lines)}, indent=1) + "\n")
    shutil.rmtree(tmp, ignore_errors=True)
    return 0 if all(targets.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
