"""What `ftdsl --help` and `ftdsl COMMAND --help` say beyond the options: examples, exit codes and
environment variables (docs/cli.md has the long form), and the help formatter.

Kept apart from cli.py so the parser stays a list of flags; tests/test_cli.py checks that every
option has a help text and every command an example.
"""

from __future__ import annotations

import argparse

EXIT_CODES = """\
exit codes:
  0    success (warnings allowed, unless lint --strict)
  1    the pipeline has errors; lint --strict with warnings; fmt --check with a file to reformat
  2    usage error: a bad flag, a missing file, an unknown stage; run without the engine (FTP550);
       plan --detailed-exitcode when something would run
  3    a stage failed at run time
  4    a resource problem: disk full, permission, lock timeout, a folder ftdsl does not own
  70   internal error (a bug: a crash report is written; --debug shows the traceback)
  130  interrupted (Ctrl-C); 143 on SIGTERM"""

ENVIRONMENT = """\
environment:
  FTDSL_CACHE          cache folder when neither --cache nor the pipeline's `cache` is set
  FTDSL_DEVICE         cpu or cuda: the device for plan and run when --device is not given
  FTDSL_DEBUG=1        like --debug
  NO_COLOR             any value: no colour (TERM=dumb too); output that is not a terminal is never
                       wrapped at 80 columns
  COLUMNS              the width of rich tables and bars (default: the terminal's)
  CI                   set: plain progress lines instead of bars
  GITHUB_STEP_SUMMARY  set by GitHub Actions: plan appends a Markdown table of the stages to it
  MLFLOW_TRACKING_URI  where `track = [mlflow]` logs (default: mlruns/ beside the pipeline)
  WANDB_MODE           `track = [wandb]` runs offline unless this is set
  HF_HUB_OFFLINE=1     never contact the Hugging Face hub (TRANSFORMERS_OFFLINE=1 too)"""

TOP_EXAMPLES = """\
examples:
  ftdsl lint pipelines/                      check every .ftp file (no torch needed)
  ftdsl plan pipelines/quickstart.ftp        what would run, what is cached, and why
  ftdsl run pipelines/quickstart.ftp         run it; an edit re-runs only what it changes
  ftdsl fmt --check pipelines/               is everything formatted?
  ftdsl runs pipelines/quickstart.ftp        its recorded runs: what changed, metrics
  ftdsl diff latest~1 latest                 compare the last two runs, attribute by attribute
  ftdsl explain FTP201                       the long form of a diagnostic
  ftdsl COMMAND --help                       the options of one command

install: `pip install ftdsl` (lint, fmt, plan, explain, cache); `pip install "ftdsl[train]"` to run."""

EXAMPLES = {
    "lint": """\
examples:
  ftdsl lint pipelines/                       every .ftp file under a folder
  ftdsl lint --strict --format github p.ftp   CI: warnings fail too; annotations on the pull request
  ftdsl lint --format sarif pipelines/ > ftdsl.sarif
  ftdsl lint --select FTP2 --ignore FTP230 p.ftp
  cat p.ftp | ftdsl lint -                    read the pipeline from stdin
exit: 0 clean (or warnings only), 1 errors (or warnings with --strict), 2 usage""",
    "plan": """\
examples:
  ftdsl plan p.ftp                            + run (new), ~ re-run (changed: why), = cached
  ftdsl plan p.ftp --set fit.epochs=3 --format json
  ftdsl plan p.ftp --only fit --detailed-exitcode   exit 2 when something would run
  ftdsl plan p.ftp --format mermaid > plan.mmd
exit: 0, 1 the pipeline has errors, 2 usage (or something would run with --detailed-exitcode)""",
    "run": """\
examples:
  ftdsl run p.ftp                             run every stage that is not cached
  ftdsl run p.ftp --set lr=1e-4 --force fit   override a param, re-run one stage
  ftdsl run p.ftp --only fit --device cpu -q  one stage and its inputs, no progress bars
  ftdsl run p.ftp --nproc 2                   distributed stages on 2 processes (torchrun)
  ftdsl run p.ftp --summary-json run.json     what ran, was cached or failed, as JSON
exit: 0, 1 pipeline errors, 2 usage (FTP550: install "ftdsl[train]"), 3 a stage failed, 4 resource""",
    "predict": """\
examples:
  ftdsl predict p.ftp fit --input new.csv                  JSON lines on stdout
  ftdsl predict p.ftp q8 --input rows.jsonl --output out.csv
exit: 0, 1 pipeline errors, a bad row or the stage is not cached (FTP560), 2 usage or not a model (FTP562)""",
    "fmt": """\
examples:
  ftdsl fmt pipelines/                        rewrite files in canonical form (comments kept)
  ftdsl fmt --check pipelines/                CI: exit 1 if a file would change, write nothing
  ftdsl fmt --diff p.ftp                      show what would change
exit: 0, 1 a file would change (--check/--diff) or cannot be parsed, 2 usage""",
    "explain": """\
examples:
  ftdsl explain FTP201                        by code
  ftdsl explain unknown-attribute             by name
exit: 0, 2 unknown code""",
    "lsp": """\
examples:
  ftdsl lsp --stdio                           started by an editor (docs/editors.md)
exit: 0, 2 the `lsp` extra is not installed""",
    "runs": """\
examples:
  ftdsl runs p.ftp                            newest first: id, time, git commit, what ran, what changed, metrics
  ftdsl runs p.ftp --format json --limit 5    the five newest runs, every stage's attributes and metrics
exit: 0, 2 usage (a missing file), 4 the cache folder is not an ftdsl cache""",
    "diff": """\
examples:
  ftdsl diff latest~1 latest                  what changed between the last two runs (any pipeline in the cache)
  ftdsl diff 3f2a1b7c latest --pipeline p.ftp    a run id prefix from `ftdsl runs p.ftp`, against the newest
  ftdsl diff latest~1 latest --format json
exit: 0, 2 usage (an unknown or ambiguous run id: FTP570 lists the known ones)""",
    "cache": """\
examples:
  ftdsl cache ls                              entries, sizes, stages
  ftdsl cache verify                          re-check checksums; corrupt entries go to quarantine
  ftdsl cache gc --keep p.ftp --dry-run       what would be removed besides p.ftp's current stages
  ftdsl cache gc --older-than 30              entries unused for 30 days
exit: 0, 1 verify found a corrupt entry, 2 usage, 4 the folder is not an ftdsl cache""",
}


class Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the epilog's layout and appends an option's default when it says something."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if ("%(default)" in text or default in (None, False, "", [], argparse.SUPPRESS) or not action.option_strings
                or action.nargs == 0 or "default" in text):
            return text
        return text + " (default: %(default)s)"


QUIET_HELP = "print only errors and the command's own output (no progress, no summary lines)"
VERBOSE_HELP = "say more: files checked, cache folder, stage keys, timings"


def add_verbosity(sub: argparse._SubParsersAction) -> None:
    """`-q/--quiet` and `-v/--verbose` on every command (a command may define its own --quiet)."""
    for sp in sub.choices.values():
        quiet = sp._option_string_actions.get("--quiet")
        if quiet is None:
            sp.add_argument("-q", "--quiet", action="store_true", help=QUIET_HELP)
        elif "-q" not in sp._option_string_actions:
            quiet.option_strings.insert(0, "-q")
            sp._option_string_actions["-q"] = quiet
        if "--verbose" not in sp._option_string_actions:
            sp.add_argument("-v", "--verbose", action="count", default=0, help=VERBOSE_HELP)


def add_epilogs(parser: argparse.ArgumentParser, sub: argparse._SubParsersAction) -> None:
    parser.epilog = "\n\n".join((TOP_EXAMPLES, EXIT_CODES, ENVIRONMENT))
    for name, sp in sub.choices.items():
        sp.epilog = EXAMPLES.get(name, "") + "\n\n(`ftdsl --help` lists every exit code and environment variable)"


def fill_positional_help(sub: argparse._SubParsersAction) -> None:
    """The pipeline-file positional of plan, run, predict... says what it is."""
    for sp in sub.choices.values():
        for a in sp._actions:
            if not a.option_strings and a.dest == "file" and not a.help:
                a.help = "the pipeline (.ftp file)"
