"""Before/after of the train stage's channels-last batches on the quickstart CNN, in one process:
the hand loop, ftdsl as it is (NHWC batches for a Conv2d model on the CPU) and ftdsl with the
batches left in NCHW order (what the stage fed the model before), in interleaved rounds whose
runner order rotates.

    python bench/train_layout_ab.py                       # fp32, 8 rounds -> bench/results/train_layout_ab.json
    python bench/train_layout_ab.py --precision bf16 --rounds 8 --out bench/results/train_layout_ab_bf16.json

Numbers are samples per CPU-second of the process over steps 4..200 (the steps right after epoch
ends left out), as in bench/train_overhead.py, whose CNN case and runners this script reuses; one
thread. Ratios are medians of the per-round ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import train_overhead as tb  # noqa: E402  (sets the environment and sys.path for ftdsl)

import torch  # noqa: E402

from ftdsl.stages import train as train_stage  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    ap.add_argument("--out", default=str(tb.RESULTS / "train_layout_ab.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="ftdsl-layout-"))
    case = tb.CNN(args.steps, tmp)
    sizes = tb.batch_sizes(case.n, args.steps)
    runners = ["loop", "ftdsl", "ftdsl_nchw"]
    res: dict[str, list[float]] = {k: [] for k in runners}
    info = tb.machine()
    t0 = time.perf_counter()
    for r in range(args.rounds):
        for who in runners[r % 3:] + runners[: r % 3]:
            if who == "loop":
                _, cpu = tb.run_loop(case, args.precision, args.steps)
            else:
                keep = train_stage.channels_last
                if who == "ftdsl_nchw":
                    train_stage.channels_last = lambda x: x
                try:
                    _, cpu = tb.run_ftdsl(case, args.precision, args.steps, Path(tempfile.mkdtemp(dir=tmp)))
                finally:
                    train_stage.channels_last = keep
            res[who].append(tb.steady(cpu, sizes, case.skip_after))
        print(f"round {r + 1}: " + "  ".join(f"{k} {v[-1]:.0f}" for k, v in res.items())
              + f"  samples/CPU-s (load {os.getloadavg()[0]:.1f})", file=sys.stderr, flush=True)
    summary = {k: {"median": statistics.median(v),
                   "ratio_to_loop": statistics.median([a / b for a, b in zip(v, res["loop"])])}
               for k, v in res.items()}
    for k, s in summary.items():
        print(f"{k:11s} {s['median']:8.0f} samples/CPU-s  x loop {s['ratio_to_loop']:.3f}")
    info["loadavg_end"] = os.getloadavg()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": info, "args": vars(args), "per_round": res, "summary": summary,
                               "wall_s": round(time.perf_counter() - t0, 1)}, indent=1) + "\n")
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
