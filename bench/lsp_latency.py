"""Diagnostic latency of `ftdsl lsp`: didChange -> publishDiagnostics on a 1,000-line file.

    python bench/lsp_latency.py [--lines 1000] [--repeat 20]

Builds a pipeline of `--lines` lines (a data block and a chain of train blocks, 10 lines each),
opens it in a real server over stdio (ftdsl.lsp.client), then sends full-text didChange
notifications alternately introducing and removing a misspelled attribute, and times each until
the matching publishDiagnostics arrives (wall clock, in this process). Prints the median, p90
and max in milliseconds, and the time `compile_pipeline` alone takes on the same text.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ftdsl.lsp.client import LspClient  # noqa: E402


def pipeline(lines: int) -> str:
    out = ["ftp 1", "", "data d {", '  source = sklearn("digits")', "}", "",
           "model m {", "  arch = mlp(hidden = [32])", "  task = classify(labels = 10)", "}"]
    prev = "m"
    i = 0
    while len(out) + 10 <= lines:
        out += ["", f"train t{i} {{", f"  model = {prev}", "  data = d", "  epochs = 1", "  batch = 32",
                "  optimizer = adamw(lr = 1e-3)", "  schedule = cosine(warmup = 0.1)", "}"]
        prev, i = f"t{i}", i + 1
    out += [""] * (lines - len(out))
    return "\n".join(out[:lines]) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lines", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=20)
    a = ap.parse_args()
    text = pipeline(a.lines)
    bad = text.replace("  epochs = 1", "  epoch = 1", 1)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "big.ftp"
        path.write_text(text, encoding="utf-8")
        uri = path.as_uri()
        from ftdsl.frontend import compile_pipeline

        t0 = time.perf_counter()
        compile_pipeline(path, text=bad)
        frontend_ms = (time.perf_counter() - t0) * 1000
        c = LspClient(cwd=d)
        c.initialize(Path(d).as_uri())
        c.notify("textDocument/didOpen", {"textDocument": {"uri": uri, "languageId": "ftp", "version": 1, "text": text}})
        c.wait_notification("textDocument/publishDiagnostics", timeout=60)
        times = []
        for v in range(2, a.repeat + 2):
            body = bad if v % 2 == 0 else text
            t0 = time.perf_counter()
            c.notify("textDocument/didChange", {"textDocument": {"uri": uri, "version": v},
                                                "contentChanges": [{"text": body}]})
            p = c.wait_notification("textDocument/publishDiagnostics", timeout=60, where=lambda p: p.get("version") == v)
            times.append((time.perf_counter() - t0) * 1000)
            assert any(x["code"] == "FTP201" for x in p["diagnostics"]) == (body is bad)
        c.close()
    times.sort()
    print(f"{a.lines} lines, {a.repeat} didChange: median {statistics.median(times):.0f} ms, "
          f"p90 {times[int(0.9 * (len(times) - 1))]:.0f} ms, max {times[-1]:.0f} ms "
          f"(compile_pipeline alone, first call: {frontend_ms:.0f} ms)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
