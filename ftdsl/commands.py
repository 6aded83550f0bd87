"""One function per CLI command. Each returns the exit code.

`lint`, `plan`, `fmt`, `explain` never import torch; `run` imports it only when a stage runs.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from ftdsl.errors import UsageError

MAX_FILES = 10_000


# --- lint ----------------------------------------------------------------------------------------

def _collect_paths(paths: list[str]) -> list[str]:
    out: list[str] = []
    for p in paths:
        if p == "-":
            out.append("-")
            continue
        path = Path(p)
        if path.is_dir():
            found = sorted(x for x in path.rglob("*.ftp") if x.is_file() and ".ftdsl" not in x.parts)
            out.extend(x.as_posix() for x in found)
        elif path.exists():
            out.append(p)
        else:
            raise UsageError("FTP001", f"no such file or folder: {p}")
    return out[:MAX_FILES]


def _codes_filter(select: str, ignore: str):
    sel = [s.strip() for s in select.split(",") if s.strip()]
    ign = [s.strip() for s in ignore.split(",") if s.strip()]
    from ftdsl.diagnostics.codes import NAMES

    sel = [NAMES.get(s, s) for s in sel]
    ign = [NAMES.get(s, s) for s in ign]

    def keep(d) -> bool:
        if sel and not any(d.code.startswith(s) for s in sel):
            return False
        return not any(d.code.startswith(s) for s in ign)

    return keep


def cmd_lint(args) -> int:
    from ftdsl.diagnostics.render import render

    t0 = time.perf_counter()
    from ftdsl.frontend import compile_pipeline

    try:
        files = _collect_paths(args.paths)
    except UsageError as e:
        if args.format in ("json", "sarif", "github"):
            # machine formats stay valid even when a path is missing (formats.md §1)
            from ftdsl.diagnostics import make
            from ftdsl.syntax.ast import Span

            missing = [p for p in args.paths if p != "-" and not Path(p).exists()]
            render(args.format, [make("FTP001", f"no such file or folder: {p}", Span(p, 1, 1, 1, 1))
                                 for p in missing], {}, sys.stdout)
        raise e
    keep = _codes_filter(args.select, args.ignore)
    diags, sources = [], {}
    for f in files:
        if f == "-":
            data = sys.stdin.buffer.read()
            from ftdsl.syntax.parser import decode

            text, errs = decode(data, "<stdin>")
            if text is None:
                diags.extend(errs)
                continue
            c = compile_pipeline("<stdin>", args.overrides, text=text)
        else:
            c = compile_pipeline(f, args.overrides)
        sources.update(c.sources)
        diags.extend(c.diagnostics)  # suppressions already applied by the front end
    diags = [d for d in diags if keep(d)]
    diags.sort(key=lambda d: d.sort_key())
    stream = sys.stderr if args.format in ("text", "concise") else sys.stdout
    quiet, verbose = getattr(args, "quiet", False), getattr(args, "verbose", 0)
    if quiet and args.format in ("text", "concise"):  # the diagnostics, without the summary line
        from ftdsl.diagnostics.text import render_concise, render_text

        (render_text if args.format == "text" else render_concise)(diags, sources, stream, summary=False)
    else:
        render(args.format, diags, sources, stream)
    if args.format == "text" and not files and not quiet:
        print("no .ftp files found", file=sys.stderr)
    if verbose and not quiet:
        print(f"checked {len(files)} file{'s' if len(files) != 1 else ''} in {time.perf_counter() - t0:.2f} s",
              file=sys.stderr)
    errors = sum(d.severity == "error" for d in diags)
    warnings = sum(d.severity == "warning" for d in diags)
    return 1 if errors or (args.strict and warnings) else 0


# --- shared by plan and run ---------------------------------------------------------------------

def _compile_or_report(file: str, overrides, strict: bool = False):
    """Compile a pipeline; print its diagnostics; return it, or None when it has errors."""
    from ftdsl.diagnostics.render import render
    from ftdsl.frontend import compile_pipeline

    p = Path(file)
    if not p.exists():
        raise UsageError("FTP001", f"no such file: {file}")
    if p.is_dir():
        raise UsageError("FTP001", f"{file} is a folder; give one pipeline file")
    c = compile_pipeline(file, overrides)
    if c.diagnostics:
        render("text", c.diagnostics, c.sources, sys.stderr)
    if not c.ok:
        return None
    return c


def _cache_for(compiled, override: str | None, lock_timeout: float = 600.0):
    from ftdsl.plan import cache_root
    from ftdsl.runtime.cache import Cache

    cache = Cache(cache_root(compiled, override), lock_timeout=lock_timeout)
    cache.require_ours()  # FTP515 (exit 4) for a folder that is not an ftdsl cache; writes nothing
    return cache


# --- plan ---------------------------------------------------------------------------------------

def cmd_plan(args) -> int:
    from ftdsl.plan import make_plan
    from ftdsl.plan_render import render_plan

    c = _compile_or_report(args.file, args.overrides)
    if c is None:
        return 1
    _check_stage_names(c, args.only + args.force)
    cache = _cache_for(c, args.cache)
    plan = make_plan(c, cache, force=set(args.force), only=set(args.only) or None, device=args.device,
                     verify=args.verify)
    from ftdsl.runtime.distributed import LaunchOptions, annotate_plan

    annotate_plan(plan, LaunchOptions(nproc=args.nproc, nnodes=str(args.nnodes)))
    if getattr(args, "quiet", False) and args.format == "text":
        from ftdsl.plan_render import plan_text

        print(plan_text(plan).rstrip("\n").splitlines()[-1])  # the `Plan: N to run, ...` line only
    else:
        render_plan(plan, args.format, sys.stdout)
    if getattr(args, "verbose", 0) and not getattr(args, "quiet", False):
        _say_keys(plan, cache)
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary:
        from ftdsl.plan_render import plan_markdown

        try:
            with open(summary, "a", encoding="utf-8") as fh:
                fh.write(plan_markdown(plan))
        except OSError:
            pass
    if args.detailed_exitcode and any(s.will_run for s in plan.stages):
        return 2
    return 0


def _say_keys(plan, cache) -> None:
    """-v: the cache folder and each stage's key and status (stderr)."""
    print(f"cache: {cache.root}  device: {plan.device}", file=sys.stderr)
    for s in plan.stages:
        print(f"  {s.address}: {s.status}  sha256:{s.key}", file=sys.stderr)


def _check_stage_names(c, names) -> None:
    from ftdsl.ir.convert import did_you_mean

    for n in names:
        if n not in c.program.blocks:
            hint = did_you_mean(n, c.program.blocks) or "stages: " + ", ".join(c.program.blocks)
            raise UsageError("FTP212", f"no stage named `{n}`", hint=hint)


# --- run ----------------------------------------------------------------------------------------

def cmd_run(args) -> int:
    from ftdsl.plan import make_plan

    c = _compile_or_report(args.file, args.overrides)
    if c is None:
        return 1
    _check_stage_names(c, args.only + args.force)
    cache = _cache_for(c, args.cache, args.lock_timeout)
    plan = make_plan(c, cache, force=set(args.force), only=set(args.only) or None, device=args.device,
                     verify=args.verify)
    if any(s.will_run for s in plan.stages):
        require_engine()  # FTP550 (exit 2) before anything imports torch; a fully cached run needs no engine
    if getattr(args, "verbose", 0) and not args.quiet:
        _say_keys(plan, cache)
    return _execute_run(plan, cache, args)


# The `train` extra's modules that running a stage imports (pyproject.toml [project.optional-dependencies]).
ENGINE_MODULES = ("torch", "numpy", "sklearn", "safetensors", "transformers", "onnx", "onnxruntime", "pydantic")


def require_engine() -> None:
    """Raise FTP550 (exit 2) naming the `train` extra when the engine is not installed. Looks the
    modules up with importlib.util.find_spec, which imports none of them."""
    import importlib.util

    missing = [m for m in ENGINE_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        raise UsageError("FTP550", "running a stage needs the training engine, which this install does not have "
                         f"(missing: {', '.join(missing)})",
                         hint='pip install "ftdsl[train]"  (`pip install ftdsl` is the light install: lint, fmt, '
                              'plan, explain, cache)')


def _execute_run(plan, cache, args) -> int:
    from ftdsl.runtime import distributed
    from ftdsl.runtime.executor import execute

    if args.nproc < 1 or (args.max_restarts or 0) < 0:
        raise UsageError("FTP001", "--nproc must be at least 1 and --max-restarts at least 0")
    launch = distributed.LaunchOptions(nproc=args.nproc, nnodes=str(args.nnodes), node_rank=args.node_rank,
                                       rdzv_endpoint=args.rdzv_endpoint, rdzv_id=args.rdzv_id,
                                       rdzv_backend=args.rdzv_backend, max_restarts=args.max_restarts,
                                       quiet=args.quiet)
    if args.device and args.device.startswith("cuda:"):
        plan.device = args.device  # the key has the class (cuda); the stages get the GPU
    if not distributed.annotate_plan(plan, launch) and launch.launches:  # FTP541 before anything runs
        print(f"note: --nproc {args.nproc}: no stage has `distributed = ddp | fsdp`; every stage runs in this "
              "one process", file=sys.stderr)
    world = distributed.external_world()
    quiet = args.quiet or (world is not None and world.rank != 0)  # one rank talks under an outside launcher
    try:
        return execute(plan, cache, verify=args.verify, force_resume=args.force_resume, quiet=quiet,
                       summary_json=args.summary_json if world is None or world.rank == 0 else None, launch=launch)
    finally:
        distributed.leave()


# --- predict ------------------------------------------------------------------------------------

def cmd_predict(args) -> int:
    """Run a cached model on new rows (ftdsl/predict/): the cache entry `plan` would name, never `out/`."""
    from ftdsl.predict.engine import Options, predict

    c = _compile_or_report(args.file, args.overrides)
    if c is None:
        return 1
    _check_stage_names(c, [args.stage])
    cache = _cache_for(c, args.cache)
    require_engine()  # FTP550 before torch is imported
    import shlex

    flags = "".join(f" --set {shlex.quote(o)}" for o in args.overrides)
    flags += (f" --device {args.device}" if args.device else "") + (f" --cache {shlex.quote(args.cache)}"
                                                                    if args.cache else "")
    return predict(c, cache, args.file, args.stage,
                   Options(input=args.input, output=args.output, format=args.format, input_format=args.input_format,
                           on_error=args.on_error, batch=args.batch, device=args.device, quiet=args.quiet,
                           digits=args.digits, run_flags=flags))


# --- fmt ----------------------------------------------------------------------------------------

def cmd_fmt(args) -> int:
    import difflib

    from ftdsl.diagnostics.render import render
    from ftdsl.runtime.atomic import write_text_atomic
    from ftdsl.syntax.format import format_source
    from ftdsl.syntax.parser import read_source

    files = _collect_paths(args.paths)
    changed, failed = [], False
    quiet, verbose = getattr(args, "quiet", False), getattr(args, "verbose", 0) and not getattr(args, "quiet", False)
    for f in files:
        if f == "-":
            raise UsageError("FTP001", "fmt does not read stdin; give files or folders")
        text, errs = read_source(f, f)
        if text is None:
            render("text", errs, {}, sys.stderr)
            failed = True
            continue
        raw = Path(f).read_bytes().decode("utf-8")
        out, errs = format_source(text, f)
        if out is None:
            render("text", errs, {f: text}, sys.stderr)
            failed = True
            continue
        if out == raw:
            if verbose:
                print(f"unchanged {f}", file=sys.stderr)
            continue
        changed.append(f)
        if args.diff:
            sys.stdout.writelines(difflib.unified_diff(raw.splitlines(True), out.splitlines(True), f"a/{f}", f"b/{f}"))
        elif args.check:
            print(f"would reformat {f}", file=sys.stderr)
        else:
            write_text_atomic(Path(f), out)
            if not quiet:
                print(f"reformatted {f}", file=sys.stderr)
    n = len(files)
    if args.check or args.diff:
        if not quiet:
            print(f"{len(changed)} file{'s' if len(changed) != 1 else ''} would be reformatted, "
                  f"{n - len(changed)} already formatted", file=sys.stderr)
        return 1 if changed or failed else 0
    if not quiet:
        print(f"{len(changed)} file{'s' if len(changed) != 1 else ''} reformatted, {n - len(changed)} unchanged",
              file=sys.stderr)
    return 1 if failed else 0


# --- explain ------------------------------------------------------------------------------------

def cmd_explain(args) -> int:
    from ftdsl.diagnostics.codes import CODES, NAMES
    from ftdsl.explain import explain_text

    code = args.code.strip()
    code = NAMES.get(code, code.upper())
    if code not in CODES:
        from ftdsl.ir.convert import did_you_mean

        raise UsageError("FTP001", f"unknown diagnostic code `{args.code}`",
                         hint=did_you_mean(code, list(CODES) + list(NAMES)) or "codes look like FTP201")
    sys.stdout.write(explain_text(CODES[code]))
    return 0


# --- runs, diff (ftdsl/run_history.py: the run index, read only; no torch) -----------------------

def cmd_runs(args) -> int:
    from ftdsl.run_history import cmd_runs as runs

    return runs(args)


def cmd_diff(args) -> int:
    from ftdsl.run_history import cmd_diff as diff

    return diff(args)


# --- cache --------------------------------------------------------------------------------------

def cmd_cache(args) -> int:
    import json

    from ftdsl.runtime.cache import Cache

    root = Path(args.cache or os.environ.get("FTDSL_CACHE") or Path(".ftdsl") / "cache")
    cache = Cache(root)
    # ls, verify and gc refuse a folder that is not an ftdsl cache (FTP515, exit 4) before they
    # read, quarantine or delete anything in it; a missing or empty folder is an empty cache.
    cache.require_ours()
    quiet, verbose = getattr(args, "quiet", False), getattr(args, "verbose", 0)

    def note(text: str) -> None:  # the counts on stderr; -q drops them
        if not quiet:
            print(text, file=sys.stderr)

    if args.action == "ls":
        rows = cache.ls()
        if args.format == "json":
            json.dump({"cache": str(root), "entries": rows}, sys.stdout, indent=2, default=str)
            sys.stdout.write("\n")
            return 0
        total = 0
        for r in rows:
            meta = r.get("meta") or {}
            total += r.get("size") or 0
            print(f"{r['key'] if verbose else r['key'][:12]}  {_size(r.get('size') or 0):>9}  {str(r.get('created', ''))[:19]:19}  "
                  f"{meta.get('kind', '?')}.{meta.get('stage', '?')}  {meta.get('pipeline', '')}")
        note(f"{len(rows)} entr{'y' if len(rows) == 1 else 'ies'}, {_size(total)} in {root}")
        return 0
    if args.action == "verify":
        results = cache.verify_all()
        bad = [(k, p) for k, p in results if p]
        for k, p in bad:
            print(f"corrupt {k[:12]}: {p} (moved to quarantine)")
        note(f"{len(results)} entries checked, {len(bad)} corrupt")
        return 1 if bad else 0
    # gc
    keep: set[str] | None = None
    if args.keep:
        from ftdsl.plan import make_plan

        keep = set()
        for f in args.keep:
            c = _compile_or_report(f, [])
            if c is None:
                return 1
            from ftdsl.plan_trials import kept_keys

            keep |= kept_keys(make_plan(c, cache).stages, cache)  # stages and their sweeps' trials
    older = args.older_than * 86400 if args.older_than is not None else None
    if keep is None and older is None and not args.all:
        raise UsageError("FTP001", "cache gc needs a scope", hint="--keep PIPELINE.ftp, --older-than DAYS or --all")
    if args.all and keep is None:
        keep = set()
    removed = cache.gc(keep=keep, older_than_s=older, dry_run=args.dry_run)
    for k in removed:
        print(f"{'would remove' if args.dry_run else 'removed'} {k[:12]}")
    note(f"{len(removed)} entr{'y' if len(removed) == 1 else 'ies'} {'to remove' if args.dry_run else 'removed'}")
    return 0


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"
