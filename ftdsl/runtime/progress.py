"""What a user sees while `ftdsl run` works: rich progress bars on a terminal, plain lines in CI.

Everything goes to stderr, so stdout stays free for machine output.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from ftdsl.stages.base import Reporter


def _fmt_metric(k: str, v: Any) -> str:
    if isinstance(v, float):
        if k in ("lr",):
            return f"{k} {v:.2e}"
        if k in ("samples_per_s", "samples/s"):
            return f"{v:,.0f} samples/s"
        return f"{k} {v:.4g}"
    return f"{k} {v}"


class Console:
    """A thin wrapper choosing rich (terminal) or plain text (pipes, CI, NO_COLOR)."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet
        self.interactive = sys.stderr.isatty() and os.environ.get("TERM") != "dumb" and not os.environ.get("CI")
        self._rich = None
        if not quiet:
            from rich.console import Console as RichConsole

            self._rich = RichConsole(stderr=True, highlight=False,
                                     no_color=bool(os.environ.get("NO_COLOR")) or None)

    @property
    def rich(self):
        return self._rich

    def line(self, text: str, style: str | None = None) -> None:
        if self.quiet:
            return
        from rich.text import Text

        self._rich.print(Text(text, style=style or ""))

    def error(self, text: str) -> None:
        # errors are printed even in quiet mode
        print(text, file=sys.stderr, flush=True)


class StageReporter(Reporter):
    """Progress of one stage: a bar with loss, learning rate and throughput on a terminal."""

    def __init__(self, console: Console, stage: str):
        self.console = console
        self.stage = stage
        self._progress = None
        self._task = None
        self._last_plain = 0.0
        self._total = None

    def start(self, total_steps: int | None, desc: str = "") -> None:
        self._total = total_steps
        if self.console.quiet:
            return
        if self.console.interactive:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._progress = Progress(TextColumn(f"[bold]{self.stage}[/] {{task.description}}"), BarColumn(),
                                      MofNCompleteColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
                                      console=self.console.rich, transient=True, redirect_stdout=False,
                                      redirect_stderr=False)
            self._progress.start()
            self._task = self._progress.add_task(desc, total=total_steps, info="")
        else:
            self.console.line(f"{self.stage}: {desc}" + (f" ({total_steps} steps)" if total_steps else ""))

    def update(self, step: int, **metrics: Any) -> None:
        # Called every optimizer step: format and redraw at most ~10 times a second.
        if self.console.quiet:
            return
        now = time.monotonic()
        last = self._total is not None and step >= self._total
        if self._progress is not None:
            if now - self._last_plain >= 0.1 or last:
                self._last_plain = now
                info = "  ".join(_fmt_metric(k, v) for k, v in metrics.items() if v is not None)
                self._progress.update(self._task, completed=step, info=info)
        elif now - self._last_plain >= 10 or last:
            self._last_plain = now
            info = "  ".join(_fmt_metric(k, v) for k, v in metrics.items() if v is not None)
            total = f"/{self._total}" if self._total else ""
            self.console.line(f"{self.stage}: step {step}{total}  {info}")

    def log(self, text: str) -> None:
        if self._progress is not None:
            self._progress.console.print(f"{self.stage}: {text}", markup=False, highlight=False)
        else:
            self.console.line(f"{self.stage}: {text}")

    def finish(self, **metrics: Any) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        if metrics and not self.console.quiet:
            self.console.line(f"{self.stage}: " + "  ".join(_fmt_metric(k, v) for k, v in metrics.items()))
