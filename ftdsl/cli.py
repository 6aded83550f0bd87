"""The `ftdsl` command: parse flags, call the modules, render. Thin on purpose.

Exit codes (SPEC §7): 0 success, 1 the pipeline has errors, 2 usage error, 3 a stage failed,
4 a resource problem (disk full, permission, lock timeout), 70 internal error, 130/143 signals.
"""

from __future__ import annotations

import argparse
import os
import sys

import ftdsl
from ftdsl.errors import FtdslError, ResourceError, StageError, UsageError

EXIT_OK, EXIT_ERRORS, EXIT_USAGE, EXIT_STAGE, EXIT_RESOURCE, EXIT_INTERNAL = 0, 1, 2, 3, 4, 70


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):
        from ftdsl.cli_help import Formatter

        kwargs.setdefault("formatter_class", Formatter)
        super().__init__(*args, **kwargs)

    def error(self, message):  # exit 2 with a short message (argparse's default, without the full usage dump)
        self.print_usage(sys.stderr)
        sys.stderr.write(f"{self.prog}: error: {message}\n  = help: `{self.prog} --help` lists the options\n")
        raise SystemExit(EXIT_USAGE)

    def parse_args(self, args=None, namespace=None):
        # argparse reports a command's unknown flags from the top parser, with the top usage: report
        # them from the command's own parser instead (`ftdsl lint --bogus` shows lint's usage).
        ns, extras = self.parse_known_args(args, namespace)
        if extras:
            sub = next((a for a in self._actions if isinstance(a, argparse._SubParsersAction)), None)
            command = getattr(ns, "command", None)
            argv = list(sys.argv[1:] if args is None else args)
            before = argv[:argv.index(command)] if command in argv else argv  # flags given before the command
            ours = sub is not None and command in sub.choices and not any(e in before for e in extras)
            (sub.choices[command] if ours else self).error("unrecognized arguments: " + " ".join(extras))
        return ns


def _device(value: str) -> str:
    import re

    if value in ("auto", "cpu", "cuda", "mps") or re.fullmatch(r"cuda:\d+", value):
        return value
    raise argparse.ArgumentTypeError(f"invalid device {value!r} (use auto, cpu, cuda, cuda:N or mps)")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="ftdsl", description="Declarative fine-tuning pipelines: lint, plan, run.")
    p.add_argument("--version", action="version", version=f"ftdsl {ftdsl.__version__}")
    p.add_argument("--debug", action="store_true", help="show Python tracebacks")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser, prog="ftdsl")

    def common_pipeline(sp):
        sp.add_argument("--set", dest="overrides", action="append", default=[], metavar="K=V",
                        help="override a param (`lr=1e-4`) or an attribute (`finetune.epochs=1`)")
        sp.add_argument("--cache", metavar="DIR", help="cache folder (default: pipeline's `cache`, $FTDSL_CACHE, "
                                                       ".ftdsl/cache)")
        sp.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)

    sp = sub.add_parser("lint", help="static checks only (for CI)")
    sp.add_argument("paths", nargs="+", metavar="PATH", help="files or folders (`-` reads stdin)")
    sp.add_argument("--format", default="text", choices=["text", "concise", "json", "github", "sarif"],
                    help="text/concise for people (stderr); json, github annotations, sarif for machines (stdout)")
    sp.add_argument("--strict", action="store_true", help="warnings fail the run too")
    sp.add_argument("--select", default="", metavar="CODES", help="only these codes or prefixes (FTP2,FTP301)")
    sp.add_argument("--ignore", default="", metavar="CODES", help="drop these codes or prefixes")
    sp.add_argument("--set", dest="overrides", action="append", default=[], metavar="K=V",
                    help="lint with an override applied, as `run --set` would (`fit.epochs=1`); repeatable")
    sp.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)

    sp = sub.add_parser("plan", help="dry run: what would run, what is cached, and why")
    sp.add_argument("file", metavar="FILE")
    sp.add_argument("--format", default="text", choices=["text", "json", "mermaid"],
                    help="text (Terraform style), json (format_version 1.0) or a mermaid flowchart")
    sp.add_argument("--only", action="append", default=[], metavar="STAGE",
                    help="plan this stage and its inputs (repeatable)")
    sp.add_argument("--force", action="append", default=[], metavar="STAGE",
                    help="show this stage as re-run even when cached (repeatable)")
    sp.add_argument("--device", type=_device, metavar="D", help="auto, cpu, cuda, cuda:N or mps")
    sp.add_argument("--verify", action="store_true", help="re-hash data files (ignore the stat memo)")
    sp.add_argument("--detailed-exitcode", action="store_true", help="exit 2 when something would run")
    sp.add_argument("--nproc", type=int, default=1, metavar="N", help="as `run --nproc`: show world size and "
                    "per-process batch of distributed stages")
    sp.add_argument("--nnodes", default="1", metavar="N", help="as `run --nnodes`")
    common_pipeline(sp)

    sp = sub.add_parser("run", help="run every stage, caching each one")
    sp.add_argument("file", metavar="FILE")
    sp.add_argument("--only", action="append", default=[], metavar="STAGE", help="run this stage and its inputs")
    sp.add_argument("--force", action="append", default=[], metavar="STAGE", help="re-run this stage")
    sp.add_argument("--device", type=_device, metavar="D", help="auto, cpu, cuda, cuda:N or mps")
    sp.add_argument("--nproc", type=int, default=1, metavar="N",
                    help="processes per machine for stages with distributed = ddp | fsdp (through torchrun)")
    sp.add_argument("--nnodes", default="1", metavar="N", help="machines in the job (torchrun's --nnodes; 1:4 elastic)")
    sp.add_argument("--node-rank", type=int, metavar="R", help="this machine's rank (static rendezvous)")
    sp.add_argument("--rdzv-endpoint", metavar="HOST:PORT", help="rendezvous address (torchrun's --rdzv-endpoint)")
    sp.add_argument("--rdzv-id", metavar="ID", help="the job's id, the same on every machine")
    sp.add_argument("--rdzv-backend", choices=["c10d", "static"], help="default: static with --node-rank, else c10d")
    sp.add_argument("--max-restarts", type=int, default=0, metavar="N",
                    help="restart the distributed workers up to N times after a failure (resuming from checkpoints)")
    sp.add_argument("--verify", action="store_true", help="verify every cache entry's checksums on load")
    sp.add_argument("--force-resume", action="store_true", help="resume a checkpoint written with other settings")
    sp.add_argument("--lock-timeout", type=float, default=600.0, metavar="S",
                    help="seconds to wait for another run's lock on a cache entry before FTP504 (exit 4)")
    sp.add_argument("-q", "--quiet", action="store_true", help="no progress bars, stage lines or summary "
                    "table; errors only")
    sp.add_argument("--summary-json", metavar="PATH", help="write what ran, was cached, failed (and metrics) as JSON")
    common_pipeline(sp)

    sp = sub.add_parser("predict", help="run a cached model of the pipeline on new rows (never trains)")
    sp.add_argument("file", metavar="FILE")
    sp.add_argument("stage", metavar="STAGE", help="a train, distill, prune, sweep, export or quantize stage")
    sp.add_argument("--input", required=True, metavar="PATH", help="rows to predict: .csv, .tsv or .jsonl")
    sp.add_argument("--input-format", choices=["csv", "tsv", "jsonl"], help="default: from the extension")
    sp.add_argument("--output", metavar="PATH", help="where predictions go (default: stdout)")
    sp.add_argument("--format", choices=["jsonl", "csv"], help="default: from --output's extension, else jsonl")
    sp.add_argument("--on-error", choices=["fail", "skip"], default="fail",
                    help="a row that cannot be read: stop with exit 1 (default) or skip it with a warning")
    sp.add_argument("--batch", type=int, default=64, metavar="N", help="rows per forward pass")
    sp.add_argument("--digits", type=int, metavar="N", help="round probabilities and values to N digits")
    sp.add_argument("--device", type=_device, metavar="D", help="as `run --device` (which cache entry, where "
                                                                "PyTorch runs)")
    sp.add_argument("--quiet", action="store_true", help="no progress bar or summary line")
    common_pipeline(sp)

    sp = sub.add_parser("fmt", help="canonical formatting (keeps comments)")
    sp.add_argument("paths", nargs="+", metavar="PATH", help="files or folders (every .ftp file under a folder)")
    sp.add_argument("--check", action="store_true", help="exit 1 if a file would change; write nothing")
    sp.add_argument("--diff", action="store_true", help="print a unified diff instead of writing")
    sp.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)

    sp = sub.add_parser("explain", help="the long explanation of a diagnostic code")
    sp.add_argument("code", metavar="CODE", help="a code (FTP201) or its name (unknown-attribute)")

    sp = sub.add_parser("lsp", help="the language server for editors (stdio; needs the `lsp` extra)")
    sp.add_argument("--stdio", action="store_true", help="talk over stdin/stdout (the default and only transport; "
                    "accepted because editors pass it)")

    sp = sub.add_parser("runs", help="list a pipeline's recorded runs: stages, changed attributes, metrics")
    sp.add_argument("file", metavar="FILE")
    sp.add_argument("--format", default="text", choices=["text", "json"], help="a table (text) or json")
    sp.add_argument("--limit", type=int, metavar="N", help="only the N newest runs")
    sp.add_argument("--cache", metavar="DIR", help="cache folder (default: pipeline's `cache`, $FTDSL_CACHE, "
                                                   ".ftdsl/cache)")
    sp.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)

    sp = sub.add_parser("diff", help="compare two recorded runs: attributes and metrics side by side")
    sp.add_argument("run_a", metavar="RUN_A", help="a run id (a unique prefix is enough), `latest` or `latest~N`")
    sp.add_argument("run_b", metavar="RUN_B", help="the run to compare it with (deltas are B - A)")
    sp.add_argument("--pipeline", metavar="FILE", help="look the runs up among this pipeline's (default: every "
                    "pipeline's runs in the cache; `latest` is then the newest of them all)")
    sp.add_argument("--format", default="text", choices=["text", "json"], help="a table (text) or json")
    sp.add_argument("--cache", metavar="DIR", help="cache folder (default: --pipeline's `cache`, $FTDSL_CACHE, "
                                                   ".ftdsl/cache)")
    sp.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)

    sp = sub.add_parser("cache", help="inspect, check and clean the cache")
    sp.add_argument("action", choices=["ls", "verify", "gc"],
                    help="ls: list entries; verify: re-check checksums; gc: remove entries (needs a scope)")
    sp.add_argument("--cache", metavar="DIR", help="the cache folder (default: $FTDSL_CACHE, then .ftdsl/cache)")
    sp.add_argument("--older-than", type=float, metavar="DAYS", help="gc: entries older than this")
    sp.add_argument("--keep", metavar="FILE", action="append", default=[],
                    help="gc: keep every entry this pipeline's current plan uses")
    sp.add_argument("--all", action="store_true", help="gc: remove every unlocked entry")
    sp.add_argument("--dry-run", action="store_true", help="gc: list what would be removed, remove nothing")
    sp.add_argument("--format", default="text", choices=["text", "json"], help="ls: text or json")

    from ftdsl.cli_help import add_epilogs, add_verbosity, fill_positional_help

    add_verbosity(sub)  # -q/--quiet and -v/--verbose on every command
    fill_positional_help(sub)
    add_epilogs(p, sub)  # examples, exit codes, environment variables
    return p


def main(argv: list[str] | None = None) -> int:
    # OpenMP threads that spin while waiting cost 4x the CPU of the same job on a shared machine
    # (docs/benchmarks.md, "Where the time goes"); passive waiting changes no result. Set before
    # torch (and its OpenMP runtime) is imported; a user's own setting wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = getattr(args, "debug", False) or os.environ.get("FTDSL_DEBUG") == "1"
    if not args.command:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        from ftdsl import commands

        if args.command == "lsp":
            from ftdsl.lsp import cmd_lsp

            return cmd_lsp(args)
        return getattr(commands, f"cmd_{args.command}")(args)
    except UsageError as e:
        _err(f"error[{e.code}]: {e.message}" + (f"\n  = help: {e.hint}" if e.hint else ""))
        return EXIT_USAGE
    except ResourceError as e:
        _err(f"error[{e.code}]: {e.message}" + (f"\n  = help: {e.hint}" if e.hint else ""))
        return EXIT_RESOURCE
    except StageError as e:
        _err(f"error[{e.code}]: {e.message}" + (f"\n  = help: {e.hint}" if e.hint else ""))
        return EXIT_STAGE
    except FtdslError as e:
        _err(f"error[{e.code}]: {e.message}" + (f"\n  = help: {e.hint}" if e.hint else ""))
        return EXIT_ERRORS
    except KeyboardInterrupt:
        _err("interrupted")
        return 130
    except BrokenPipeError:
        return EXIT_OK
    except Exception:  # noqa: BLE001 - the last line of defence: an ICE report, never a raw traceback
        if debug:
            raise
        return internal_error()


def internal_error() -> int:
    import platform
    import traceback

    from ftdsl.runtime.crash import write_crash_report

    # Created with O_EXCL|O_NOFOLLOW (mode 0600): a symlink planted at the predictable name is never followed.
    where = write_crash_report(f"ftdsl {ftdsl.__version__}, Python {platform.python_version()}, "
                               f"{platform.platform()}\nargv: {sys.argv}\n\n{traceback.format_exc()}")
    where = where or "(could not write a crash report)"
    exc = sys.exc_info()[1]
    _err("error: internal error: unexpected exception. this is a bug.\n"
         f"  = note: {type(exc).__name__}: {str(exc)[:200]}\n"
         f"  = note: ftdsl {ftdsl.__version__}, Python {platform.python_version()}\n"
         f"  = note: crash report: {where}\n"
         "  = note: run again with --debug for the traceback, and please report it with the crash report")
    return EXIT_INTERNAL


def _err(text: str) -> None:
    print(text, file=sys.stderr)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
