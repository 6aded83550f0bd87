"""The context every stage runs in. No torch here."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class Reporter:
    """Progress sink. The executor passes a rich implementation; tests use this silent one."""

    def start(self, total_steps: int | None, desc: str = "") -> None:
        pass

    def update(self, step: int, **metrics: Any) -> None:
        pass

    def log(self, text: str) -> None:
        pass

    def finish(self, **metrics: Any) -> None:
        pass


@dataclass
class StageContext:
    name: str
    kind: str
    pipeline_dir: Path
    out_dir: Path
    work_dir: Path
    seed: int = 0
    device: str = "cpu"
    reporter: Reporter = field(default_factory=Reporter)
    verify: bool = False
    key: str = ""
    force_resume: bool = False
    threads: int | None = None
    cache: Any = None  # the run's runtime.cache.Cache (a sweep publishes its trials as entries)
    on_eval: Any = None  # (step, {"valid": {...}, "train": {...}}) -> None after each evaluation; may raise
    tracking: dict | None = None  # {"track": [...], "pipeline": path, "out": out/NAME} (runtime/tracking.py)
