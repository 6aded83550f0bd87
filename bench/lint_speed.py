"""Wall time of `ftdsl lint|plan|fmt --check` on a 10,000-line and a 30-line pipeline.

    python bench/lint_speed.py            # 5 runs each, a markdown table on stdout
    python bench/lint_speed.py --runs 9   # more runs
    python bench/lint_speed.py --keep DIR # write the pipelines into DIR and keep them

Each run is a fresh `python -m ftdsl ...` subprocess, so the numbers include interpreter start-up
and every import, which is what a user or a pre-commit hook pays. Requirement: 10k lines < 1 s,
30 lines < 0.3 s (best of N, lint). The exit code is 0 when both are met, 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SMALL = """\
ftp 1
# Fine-tune a small pretrained encoder, prune it, export it, quantize the ONNX graph.
pipeline sentiment { seed = 13 }

param lr = 3e-5

data reviews {
  source = csv("data/reviews.csv")
  text = "sentence", label = "label"
  split = { train = 0.8, valid = 0.1, test = 0.1 }
  max_length = 64
}

model base {
  pretrained = "sentence-transformers/all-MiniLM-L6-v2"
  task = classify(labels = 2)
}

train finetune {
  model = base, data = reviews
  epochs = 3, batch = 32
  optimizer = adamw(lr = lr, weight_decay = 0.01)
  schedule = linear(warmup = 0.1)
  precision = auto
  early_stop = { metric = "valid.accuracy", mode = max, patience = 2 }
}

prune sparse { from = finetune, method = global_magnitude(amount = 0.3), recover = { epochs = 1 } }
export onnx  { from = sparse, format = onnx(opset = 17), verify = true }
evaluate report { models = [finetune, sparse, onnx], data = reviews.test, metrics = [accuracy, f1, latency, size] }
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

HEADER = "ftp 1\n# A generated 10,000-line pipeline for timing the front end.\npipeline big { seed = 1 }\n\nparam lr = 3e-4\n\n"


def time_cmd(argv: list[str], runs: int, cwd: Path) -> tuple[list[float], int]:
    env = dict(os.environ, NO_COLOR="1", TERM="dumb")
    times, rc = [], 0
    for _ in range(runs):
        t = time.perf_counter()
        p = subprocess.run([sys.executable, "-m", "ftdsl", *argv], cwd=cwd, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - t)
        rc = p.returncode
    return times, rc


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
    big = root / "big.ftp"
    small = root / "small.ftp"
    big_text = _whole_groups(10_000)
    big.write_text(big_text, encoding="utf-8")
    small.write_text(SMALL, encoding="utf-8")
    cache = root / "cache"

    baseline, _ = time_cmd(["--version"], args.runs, root)
    rows = []
    results: dict[tuple[str, str], float] = {}
    for label, f in (("30 lines", small), (f"{big_text.count(chr(10)):,} lines", big)):
        for cmd in (["lint", f.name], ["plan", f.name, "--cache", str(cache)], ["fmt", "--check", f.name]):
            times, rc = time_cmd(cmd, args.runs, root)
            name = cmd[0] + (" --check" if cmd[0] == "fmt" else "")
            results[(label, name)] = min(times)
            rows.append(f"| {label} | `ftdsl {name}` | {min(times):.3f} | {statistics.median(times):.3f} | {rc} |")
    print(f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs, {args.runs} runs each; "
          f"`python -m ftdsl --version` alone: best {min(baseline):.3f} s, median {statistics.median(baseline):.3f} s\n")
    print("| file | command | best (s) | median (s) | exit |")
    print("|---|---|---|---|---|")
    print("\n".join(rows))
    small_ok = results[("30 lines", "lint")] < 0.3
    big_label = next(k[0] for k in results if k[0] != "30 lines")
    big_ok = results[(big_label, "lint")] < 1.0
    print(f"\nrequirement: 30-line lint < 0.3 s: {'met' if small_ok else 'NOT met'}; "
          f"10k-line lint < 1 s: {'met' if big_ok else 'NOT met'}")
    if tmp is not None:
        tmp.cleanup()
    return 0 if small_ok and big_ok else 1


def _whole_groups(lines: int) -> str:
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


if __name__ == "__main__":
    raise SystemExit(main())
