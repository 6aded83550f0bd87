"""A/B: `ftdsl lint` of the 30-line pipeline with the committed LALR tables and with tables built
from the grammar (what every process did before), interleaved in one run so load affects both.

    python bench/parser_tables_ab.py --runs 15

Each run is a fresh interpreter (`python -c` calling the CLI); B hides `ftdsl.syntax.tables`, so
the parser falls back to building from grammar/ftp.lark. Reports best and median wall and CPU.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lint_speed import SMALL  # noqa: E402

CODE = {
    "tables": "from ftdsl.cli import main; raise SystemExit(main(['lint', 'small.ftp']))",
    "grammar": "import sys; sys.modules['ftdsl.syntax.tables'] = None\n"
               "from ftdsl.cli import main; raise SystemExit(main(['lint', 'small.ftp']))",
}


def one(code: str, cwd: str) -> tuple[float, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True,
                       env=dict(os.environ, NO_COLOR="1"))
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert r.returncode == 0, r.stderr
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=15)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        Path(d, "small.ftp").write_text(SMALL)
        res: dict[str, list[tuple[float, float]]] = {k: [] for k in CODE}
        for _ in range(args.runs):
            for k, code in CODE.items():
                res[k].append(one(code, d))
    print(f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs (load {os.getloadavg()[0]:.1f}), "
          f"{args.runs} interleaved runs\n")
    print("| parser from | best wall (s) | median wall (s) | best CPU (s) | median CPU (s) |")
    print("|---|---|---|---|---|")
    for k, v in res.items():
        w, c = [x[0] for x in v], [x[1] for x in v]
        print(f"| {k} | {min(w):.3f} | {statistics.median(w):.3f} | {min(c):.3f} | {statistics.median(c):.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
