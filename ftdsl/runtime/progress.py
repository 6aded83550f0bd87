"""What a user sees while `ftdsl run` works: rich progress bars on a terminal, plain lines in CI.

Everything goes to stderr, so stdout stays free for machine output.
"""

from __future__ import annotations

import os
import sys
import threading
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


NOT_A_TERMINAL_WIDTH = 10_000  # "no wrapping": the width rich gets when stderr is not a terminal


class Console:
    """A thin wrapper choosing rich (terminal) or plain text (pipes, CI, NO_COLOR)."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet
        self.interactive = sys.stderr.isatty() and os.environ.get("TERM") != "dumb" and not os.environ.get("CI")
        self._rich = None
        if not quiet:
            from rich.console import Console as RichConsole

            # Not a terminal (a CI log, a file): rich would wrap at 80 columns; lines and tables keep
            # their natural width instead, unless COLUMNS says otherwise.
            width = None if sys.stderr.isatty() or os.environ.get("COLUMNS") else NOT_A_TERMINAL_WIDTH
            self._rich = RichConsole(stderr=True, highlight=False, width=width, soft_wrap=width is not None,
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
    """Progress of one stage: a bar with loss, learning rate and throughput on a terminal.

    Work without steps (loading a model, exporting, quantizing: `start(None, ...)`, or a stage that
    never calls `start`) gets a spinner with the elapsed time on a terminal, and in a log a
    `still working` line every HEARTBEAT_S seconds of silence, so a long export never looks hung.
    """

    SPINNER_AFTER_S = 1.0  # a stage that finishes sooner (a cache hit) shows no spinner
    HEARTBEAT_S = 30.0  # plain mode: a line after this long without one
    TICK_S = 0.25

    def __init__(self, console: Console, stage: str):
        self.console = console
        self.stage = stage
        self._progress = None
        self._task = None
        self._last_plain = 0.0
        self._total = None
        self._desc = ""
        self._lock = threading.RLock()
        self._t0 = time.monotonic()
        self._last_said = self._t0
        self._started = False  # start() was called
        self._done = threading.Event()
        self._thread = None
        if not console.quiet:
            self._thread = threading.Thread(target=self._watch, name=f"ftdsl-progress-{stage}", daemon=True)
            self._thread.start()

    # --- the watcher: spinner on a terminal, heartbeat lines in a log ---------------------------

    def _watch(self) -> None:
        while not self._done.wait(self.TICK_S):
            with self._lock:
                if self._done.is_set():
                    return
                now = time.monotonic()
                if self.console.interactive:
                    if self._progress is None and not self._started and now - self._t0 >= self.SPINNER_AFTER_S:
                        self._start_spinner("working")
                elif (self._total is None or not self._started) and now - self._last_said >= self.HEARTBEAT_S:
                    what = f" ({self._desc})" if self._desc else ""
                    self._say(f"{self.stage}: still working{what}, {now - self._t0:.0f} s")

    def _start_spinner(self, desc: str) -> None:
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self._progress = Progress(SpinnerColumn(), TextColumn(f"[bold]{self.stage}[/] {{task.description}}"),
                                  TimeElapsedColumn(), TextColumn("{task.fields[info]}"), console=self.console.rich,
                                  transient=True, redirect_stdout=False, redirect_stderr=False)
        self._progress.start()
        self._task = self._progress.add_task(desc, total=None, info="")

    def _stop_progress(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def _say(self, text: str) -> None:
        self._last_said = time.monotonic()
        self.console.line(text)

    # --- Reporter -----------------------------------------------------------------------------

    def start(self, total_steps: int | None, desc: str = "") -> None:
        with self._lock:
            self._total = total_steps
            self._desc = desc
            self._started = True
            if self.console.quiet:
                return
            self._stop_progress()
            if self.console.interactive:
                if total_steps is None:  # no steps to count: a spinner and the elapsed time
                    self._start_spinner(desc)
                    return
                from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                           TimeRemainingColumn)

                self._progress = Progress(TextColumn(f"[bold]{self.stage}[/] {{task.description}}"), BarColumn(),
                                          MofNCompleteColumn(), TimeRemainingColumn(),
                                          TextColumn("{task.fields[info]}"), console=self.console.rich,
                                          transient=True, redirect_stdout=False, redirect_stderr=False)
                self._progress.start()
                self._task = self._progress.add_task(desc, total=total_steps, info="")
            else:
                self._say(f"{self.stage}: {desc}" + (f" ({total_steps} steps)" if total_steps else ""))

    def update(self, step: int, **metrics: Any) -> None:
        # Called every optimizer step: format and redraw at most ~10 times a second.
        if self.console.quiet:
            return
        now = time.monotonic()
        last = self._total is not None and step >= self._total
        with self._lock:
            if self._progress is not None:
                if now - self._last_plain >= 0.1 or last:
                    self._last_plain = now
                    info = "  ".join(_fmt_metric(k, v) for k, v in metrics.items() if v is not None)
                    self._progress.update(self._task, completed=step, info=info)
            elif now - self._last_plain >= 10 or last:
                self._last_plain = now
                info = "  ".join(_fmt_metric(k, v) for k, v in metrics.items() if v is not None)
                total = f"/{self._total}" if self._total else ""
                self._say(f"{self.stage}: step {step}{total}  {info}")

    def log(self, text: str) -> None:
        with self._lock:
            if self._progress is not None:
                self._last_said = time.monotonic()
                self._progress.console.print(f"{self.stage}: {text}", markup=False, highlight=False)
            else:
                self._say(f"{self.stage}: {text}")

    def finish(self, **metrics: Any) -> None:
        self._done.set()
        with self._lock:
            self._stop_progress()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=1.0)
        if metrics and not self.console.quiet:
            self.console.line(f"{self.stage}: " + "  ".join(_fmt_metric(k, v) for k, v in metrics.items()))
