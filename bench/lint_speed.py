"""Wall time of `ftdsl lint|plan|fmt --check` on a 10,000-line and a 30-line pipeline.

    python bench/lint_speed.py             # 5 runs each, a markdown table on stdout
    python bench/lint_speed.py --runs 9    # more runs
    python bench/lint_speed.py --keep DIR  # write the pipelines into DIR and keep them

Each run is a fresh `python -m ftdsl ...` subprocess, so the numbers include interpreter start-up
and every import: what a user, an editor or a pre-commit hook pays per call. Both pipelines are
valid, canonically formatted (`fmt --check` exits 0) and lint clean. Requirement (best of N,
`lint`): 30 lines < 0.3 s, 10,000 lines < 1 s. Exit code 0 when both are met, 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SMALL = """\
ftp 1

# Fine-tune a small pretrained encoder, export it to ONNX, compare both.
pipeline sentiment {
  seed = 13
}

data reviews {
  source = csv("data/reviews.csv")
  text = "sentence"
}

model base {
  pretrained = "sentence-transformers/all-MiniLM-L6-v2"
  task = classify(labels = 2)
}

train finetune {
  model = base
  data = reviews
  epochs = 3
  optimizer = adamw(lr = 3e-5, weight_decay = 0.01)
  early_stop = { metric = "valid.accuracy", mode = max, patience = 2 }
}

export onnx {
  from = finetune
  format = onnx(opset = 17)
  verify = true
}
"""

HEADER = """\
ftp 1

# A generated 10,000-line pipeline for timing the front end.
pipeline big {
  seed = 1
}

param lr = 3e-4

"""

GROUP = """\
# group {i}: a tabular model trained, pruned and exported
data d{i} {{
  source = csv("data/part{i}.csv")
  label = "label"
  split = {{ train = 0.8, valid = 0.1, test = 0.1 }}
}}

model m{i} {{
  arch = mlp(hidden = [64, 32], dropout = 0.1)
  task = classify(labels = 3)
  init = xavier_uniform
}}

train t{i} {{
  model = m{i}
  data = d{i}
  epochs = 2
  batch = 64
  optimizer = adamw(lr = lr, weight_decay = 0.01)
  schedule = cosine(warmup = 0.1)
  early_stop = {{ metric = "valid.accuracy", mode = max, patience = 2 }}
}}

prune p{i} {{
  from = t{i}
  method = magnitude(amount = 0.5)
}}

export e{i} {{
  from = p{i}
  format = onnx(opset = 17)
  verify = true
}}

evaluate r{i} {{
  models = [t{i}, p{i}, e{i}]
  data = d{i}.test
  metrics = [accuracy, f1, latency]
}}

"""


def big_pipeline(lines: int = 10_000) -> str:
    """HEADER plus as many whole groups as fit, padded with comment lines to exactly `lines` lines."""
    out = [HEADER]
    n = HEADER.count("\n")
    i = 0
    while True:
        g = GROUP.format(i=i)
        if n + g.count("\n") > lines:
            break
        out.append(g)
        n += g.count("\n")
        i += 1
    out.append("".join(f"# padding {k}\n" for k in range(lines - n)))
    return "".join(out)


def _child_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def time_cmd(argv: list[str], runs: int, cwd: Path, module: bool = True) -> tuple[list[float], list[float], int]:
    """Wall and CPU (user + sys) seconds of each run, and the last exit code.

    CPU time barely moves when other processes load the machine; wall time is what a user waits.
    """
    env = dict(os.environ, NO_COLOR="1", TERM="dumb")
    env.pop("FTDSL_DEBUG", None)
    walls, cpus, rc = [], [], 0
    for _ in range(runs):
        c, t = _child_cpu(), time.perf_counter()
        cmd = [sys.executable, "-m", "ftdsl", *argv] if module else [sys.executable, *argv]
        p = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        walls.append(time.perf_counter() - t)
        cpus.append(_child_cpu() - c)
        rc = p.returncode
    return walls, cpus, rc


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--keep", metavar="DIR", help="write the pipelines here and keep them")
    args = ap.parse_args(argv)

    tmp = None
    if args.keep:
        root = Path(args.keep)
        root.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="ftdsl-bench-")
        root = Path(tmp.name)
    files = {"30 lines": root / "small.ftp", "10,000 lines": root / "big.ftp"}
    files["30 lines"].write_text(SMALL, encoding="utf-8")
    files["10,000 lines"].write_text(big_pipeline(10_000), encoding="utf-8")
    cache = root / "cache"

    bare, bare_cpu, _ = time_cmd(["-c", "pass"], args.runs, root, module=False)
    start, start_cpu, _ = time_cmd(["--version"], args.runs, root)
    rows, best = [], {}
    for label, f in files.items():
        for cmd in (["lint", f.name], ["plan", f.name, "--cache", str(cache)], ["fmt", "--check", f.name]):
            walls, cpus, rc = time_cmd(cmd, args.runs, root)
            name = "fmt --check" if cmd[0] == "fmt" else cmd[0]
            best[(label, name)] = min(walls)
            rows.append(f"| {label} | `ftdsl {name}` | {min(walls):.3f} | {statistics.median(walls):.3f} | "
                        f"{min(cpus):.3f} | {rc} |")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs (load {load:.1f}), {args.runs} runs each. "
          f"`python -c pass`: best {min(bare):.3f} s wall, {min(bare_cpu):.3f} s CPU; "
          f"`python -m ftdsl --version` (argparse only): best {min(start):.3f} s wall, {min(start_cpu):.3f} s CPU.\n")
    print("| file | command | best wall (s) | median wall (s) | best CPU (s) | exit |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))
    small_ok = best[("30 lines", "lint")] < 0.3
    big_ok = best[("10,000 lines", "lint")] < 1.0
    print(f"\nrequirement (best of {args.runs}): 30-line lint < 0.3 s: {'met' if small_ok else 'NOT met'}; "
          f"10,000-line lint < 1 s: {'met' if big_ok else 'NOT met'}")
    if tmp is not None:
        tmp.cleanup()
    return 0 if small_ok and big_ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
