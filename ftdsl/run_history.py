"""`ftdsl runs FILE` and `ftdsl diff RUN_A RUN_B`: a pipeline's recorded runs, listed and compared.

Everything comes from the run index (ftdsl/runtime/run_index.py), which `ftdsl run` appends to:
nothing is re-run, no model is loaded, torch is never imported.

A run is named by its id (40 hex digits), any unique prefix of it (the 8 shown), or `latest`,
`latest~1`, ... (the newest run, the one before it, ...).
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any

from ftdsl.errors import UsageError

SHORT = 8  # digits of a run id shown (like git's short commit ids)
MIN_PREFIX = 4


# --- naming a run --------------------------------------------------------------------------------

def resolve(runs: list[dict], ref: str) -> dict:
    """The run ``ref`` names among ``runs`` (oldest first). Unknown or ambiguous: FTP570 (exit 2)."""
    text = ref.strip()
    if not runs:
        raise UsageError("FTP570", f"no run `{ref}`: no runs are recorded here",
                         hint="`ftdsl run FILE` records a run; `ftdsl runs FILE` lists them")
    low = text.lower()
    if low == "latest" or low.startswith("latest~"):
        n = low[len("latest~"):] if "~" in low else "0"
        if n.isdigit() and int(n) < len(runs):
            return runs[-1 - int(n)]
        raise UsageError("FTP570", f"no run `{ref}`: {len(runs)} run{'s are' if len(runs) != 1 else ' is'} recorded",
                         hint=_known(runs))
    found = [r for r in runs if r["id"].startswith(low)] if len(low) >= MIN_PREFIX else []
    if len(found) == 1:
        return found[0]
    if len(found) > 1:
        raise UsageError("FTP570", f"run id `{ref}` is ambiguous: it starts {len(found)} runs",
                         hint="give more digits: " + ", ".join(r["id"][:12] for r in found[-10:]))
    why = f" (give at least {MIN_PREFIX} digits)" if len(low) < MIN_PREFIX else ""
    raise UsageError("FTP570", f"no run `{ref}`{why}", hint=_known(runs))


def _known(runs: list[dict]) -> str:
    newest = list(reversed(runs))[:10]
    more = f", ... ({len(runs) - 10} older)" if len(runs) > 10 else ""
    return ("known runs: " + ", ".join(f"{r['id'][:SHORT]} ({_when(r)})" for r in newest) + more
            + "; or `latest`, `latest~1`, ...")


def _when(run: dict) -> str:
    t = str(run.get("time", ""))
    return t[:19].replace("T", " ")


# --- comparing two runs --------------------------------------------------------------------------

def compare(a: dict, b: dict) -> list[dict]:
    """Per stage (in B's order, then stages only A has): statuses, changed attributes, changed files and
    the metrics side by side with their deltas."""
    from ftdsl.ir.lower import flatten

    out = []
    names = list(b["stages"]) + [n for n in a["stages"] if n not in b["stages"]]
    for name in names:
        sa, sb = a["stages"].get(name), b["stages"].get(name)
        fa = flatten(sa["attrs"]) if sa else {}
        fb = flatten(sb["attrs"]) if sb else {}
        attrs = [{"attr": k, "a": fa.get(k, "(unset)"), "b": fb.get(k, "(unset)")}
                 for k in sorted(set(fa) | set(fb)) if fa.get(k, "(unset)") != fb.get(k, "(unset)")] if sa and sb else []
        files_a, files_b = (sa or {}).get("files") or {}, (sb or {}).get("files") or {}
        files = [f for f in sorted(set(files_a) | set(files_b)) if files_a.get(f) != files_b.get(f)] if sa and sb else []
        ma, mb = (sa or {}).get("metrics") or {}, (sb or {}).get("metrics") or {}
        metrics = []
        for k in sorted(list(mb) + [k for k in ma if k not in mb], key=_metric_rank):
            va, vb = ma.get(k), mb.get(k)
            delta = vb - va if _num(va) and _num(vb) else None
            metrics.append({"metric": k, "a": va, "b": vb, "delta": delta})
        out.append({"stage": name, "kind": (sb or sa)["kind"],
                    "status": {"a": sa["status"] if sa else None, "b": sb["status"] if sb else None},
                    "same_key": bool(sa and sb and sa.get("key") == sb.get("key")),
                    "key": {"a": (sa or {}).get("key"), "b": (sb or {}).get("key")},
                    "attrs": attrs, "files": files, "metrics": metrics})
    return out


def changes_since(prev: dict | None, run: dict) -> list[dict]:
    """The attributes that changed from ``prev`` to ``run`` in the stages both have (for `runs`)."""
    if prev is None:
        return []
    return [{"stage": s["stage"], **c} for s in compare(prev, run) if s["status"]["a"] and s["status"]["b"]
            for c in s["attrs"]]


def _metric_rank(k: str) -> tuple[int, str]:
    """test.* first, then valid.*, train.*, and the rest (steps, timings), each alphabetical."""
    for i, prefix in enumerate(("test.", "valid.", "train.")):
        if k.startswith(prefix):
            return i, k
    return 3, k


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# --- rendering -----------------------------------------------------------------------------------

def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, str):
        return v if v.endswith("(...)") or v == "(unset)" else f'"{v}"'
    return json.dumps(v) if isinstance(v, (list, dict)) else str(v)


def _metric(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return f"{v:.4g}" if isinstance(v, float) else ("-" if v is None else str(v))


def _delta(d: float | None) -> str:
    return "" if d is None else ("0" if d == 0 else f"{d:+.4g}")


def _console():
    from rich.console import Console

    from ftdsl.runtime.progress import NOT_A_TERMINAL_WIDTH

    # Not a terminal (a file, a pipe, CI): no wrapping at 80 columns (COLUMNS still wins).
    width = None if sys.stdout.isatty() or os.environ.get("COLUMNS") else NOT_A_TERMINAL_WIDTH
    return Console(highlight=False, width=width, soft_wrap=width is not None,
                   no_color=bool(os.environ.get("NO_COLOR")) or None)


def headline(metrics: dict) -> list[tuple[str, Any]]:
    """The metrics worth a column: test.* (else valid.*, else any) numbers, at most two."""
    for prefix in ("test.", "valid.", ""):
        picked = [(k, v) for k, v in metrics.items() if k.startswith(prefix) and _num(v) and not k.endswith("_seconds")
                  and k not in ("samples_per_s", "steps", "epochs")]
        if picked:
            return picked[:2]
    return []


def runs_json(pipeline: str, runs: list[dict]) -> dict:
    rows = []
    for i, r in enumerate(runs):
        prev = runs[i - 1] if i else None
        n = len(runs) - 1 - i
        rows.append({"id": r["id"], "short": r["id"][:SHORT], "ref": "latest" if n == 0 else f"latest~{n}",
                     "time": r.get("time"), "git": r.get("git"),
                     "stages": r["stages"], "changes": changes_since(prev, r)})
    return {"format_version": "1.0", "pipeline": pipeline, "runs": list(reversed(rows))}


def render_runs(pipeline: str, runs: list[dict], fmt: str, limit: int | None, verbose: int = 0) -> None:
    if fmt == "json":
        doc = runs_json(pipeline, runs)
        if limit:
            doc["runs"] = doc["runs"][:limit]
        json.dump(doc, sys.stdout, indent=2, sort_keys=False)
        sys.stdout.write("\n")
        return
    from rich.table import Table

    t = Table(title=f"ftdsl runs {pipeline}", title_justify="left", show_edge=False)
    for col in ("run", "time (UTC)", "git", "stages", "changed", "metrics"):
        t.add_column(col)
    shown = list(enumerate(runs))[::-1][:limit] if limit else list(enumerate(runs))[::-1]
    for i, r in shown:
        by_status: dict[str, list[str]] = {}
        for name, st in r["stages"].items():
            by_status.setdefault(st.get("status", "?"), []).append(name)
        stages = "; ".join(f"{s} {', '.join(ns)}" for s, ns in by_status.items())
        changes = changes_since(runs[i - 1] if i else None, r)
        changed = "\n".join(f"{c['stage']}.{c['attr']} {_fmt(c['a'])} -> {_fmt(c['b'])}" for c in changes) \
            or ("(first run)" if i == 0 else "-")
        metrics = "\n".join(f"{name}: " + ", ".join(f"{k} {_metric(v)}" for k, v in picked)
                            for name, st in r["stages"].items() if (picked := headline(st.get("metrics") or {}))) or "-"
        git = (r.get("git") or "-")[: 40 if verbose else 7]
        t.add_row(r["id"][: 40 if verbose else SHORT], _when(r), git, stages, changed, metrics)
    _console().print(t)


def render_diff(a: dict, b: dict, stages: list[dict], fmt: str, ref_a: str, ref_b: str) -> None:
    if fmt == "json":
        doc = {"format_version": "1.0",
               "a": {"id": a["id"], "ref": ref_a, "time": a.get("time"), "git": a.get("git"), "pipeline": a.get("pipeline")},
               "b": {"id": b["id"], "ref": ref_b, "time": b.get("time"), "git": b.get("git"), "pipeline": b.get("pipeline")},
               "stages": stages}
        json.dump(doc, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return
    from rich.table import Table

    con = _console()
    ia, ib = a["id"][:SHORT], b["id"][:SHORT]
    for tag, r in (("A", a), ("B", b)):
        git = f"  git {r['git'][:7]}" if r.get("git") else ""
        con.print(f"{tag}: run {r['id'][:SHORT]}  {_when(r)} UTC{git}  {r.get('pipeline', '')}", markup=False)
    t = Table(show_edge=False)
    for col, just in (("stage", "left"), ("", "left"), ("name", "left"), (f"A {ia}", "right"), (f"B {ib}", "right"),
                      ("delta", "right")):
        t.add_column(col, justify=just)
    for s in stages:
        label = f"{s['stage']} ({s['kind']})"
        st = s["status"]
        same = " (same cache key)" if st["a"] and st["b"] and s["same_key"] else ""
        t.add_row(label, "status", same.strip(" ()"), st["a"] or "(absent)", st["b"] or "(absent)", "")
        if st["a"] and st["b"] and not s["same_key"]:
            t.add_row("", "key", "", (s["key"]["a"] or "")[:12], (s["key"]["b"] or "")[:12], "")
        for c in s["attrs"]:
            t.add_row("", "attribute", c["attr"], _fmt(c["a"]), _fmt(c["b"]), "")
        for f in s["files"]:
            t.add_row("", "file", f, "", "changed", "")
        for m in s["metrics"]:
            t.add_row("", "metric", m["metric"], _metric(m["a"]), _metric(m["b"]), _delta(m["delta"]))
        t.add_section()
    con.print(t)


# --- the commands --------------------------------------------------------------------------------

def pipeline_runs(file: str, cache_override: str | None) -> tuple[str, list[dict], Path]:
    """The runs of pipeline ``file`` (oldest first) from its cache, the cache folder. Reads only."""
    from ftdsl.frontend import compile_pipeline
    from ftdsl.plan import cache_root
    from ftdsl.runtime.cache import Cache

    p = Path(file)
    if not p.exists():
        raise UsageError("FTP001", f"no such file: {file}")
    if p.is_dir():
        raise UsageError("FTP001", f"{file} is a folder; give one pipeline file")
    c = compile_pipeline(file, [])
    if c.program is None:  # unreadable: say why (the history needs only the pipeline's `cache` setting)
        from ftdsl.diagnostics.render import render

        render("text", c.diagnostics, c.sources, sys.stderr)
        raise UsageError("FTP001", f"cannot read {file}; its runs are found through its `cache` setting")
    cache = Cache(cache_root(c, cache_override))
    cache.require_ours()  # FTP515 (exit 4) for a folder that is not an ftdsl cache
    return str(Path(c.program.path).resolve()), cache.index.history(Path(c.program.path).resolve()), cache.root


def cmd_runs(args) -> int:
    if args.limit is not None and args.limit < 1:
        raise UsageError("FTP001", "--limit must be at least 1")
    pipeline, runs, root = pipeline_runs(args.file, args.cache)
    if not runs and args.format == "text":
        if not getattr(args, "quiet", False):
            print(f"no runs of {args.file} are recorded in {root} (`ftdsl run {args.file}` records one)",
                  file=sys.stderr)
        return 0
    render_runs(args.file, runs, args.format, args.limit, getattr(args, "verbose", 0))
    return 0


def cmd_diff(args) -> int:
    if args.pipeline:
        _, runs, _ = pipeline_runs(args.pipeline, args.cache)
    else:
        from ftdsl.runtime.cache import Cache

        cache = Cache(Path(args.cache or os.environ.get("FTDSL_CACHE") or Path(".ftdsl") / "cache"))
        cache.require_ours()
        runs = cache.index.all_histories()
    a, b = resolve(runs, args.run_a), resolve(runs, args.run_b)
    render_diff(a, b, compare(a, b), args.format, args.run_a, args.run_b)
    return 0
