"""Shared helpers for the fault suite: run the CLI in a subprocess with a clean, offline environment."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"NO_COLOR": "1", "TERM": "dumb", "COLUMNS": "100", "HF_HUB_OFFLINE": "1",
                "TRANSFORMERS_OFFLINE": "1", "PYTHONHASHSEED": "0"})
    env.pop("FTDSL_CACHE", None)
    if extra:
        env.update(extra)
    return env


@pytest.fixture
def ftdsl_cli():
    """`ftdsl_cli(args, cwd=..., env=..., timeout=..., preexec_fn=...)` -> CompletedProcess (text)."""

    def run(args, *, cwd: str | Path | None = None, env: dict[str, str] | None = None, timeout: float = 120,
            preexec_fn=None, input: str | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "ftdsl", *map(str, args)], cwd=cwd, env=_env(env),
                              capture_output=True, text=True, timeout=timeout, preexec_fn=preexec_fn,
                              input=input)

    return run
