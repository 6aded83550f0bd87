"""The shape of a checkpoint's ``state.json``, checked with pydantic before anything in it is
trusted: a tampered or half-written file is rejected (and an earlier checkpoint used) instead of
failing deep inside a restore, and a file name like ``../../x`` never becomes a path.
"""

from __future__ import annotations

import functools
from typing import Any

__all__ = ["FORMAT_VERSION", "validate_state"]

FORMAT_VERSION = 1


def validate_state(state: Any) -> None:
    """Raise ``pydantic.ValidationError`` (a ValueError) when ``state`` is not a checkpoint's state."""
    _state_model().model_validate(state)


@functools.lru_cache(maxsize=1)
def _state_model():
    """The pydantic model (built on first use: pydantic is imported only when a checkpoint is read)."""
    from typing import Literal

    from pydantic import BaseModel, ConfigDict, Field, field_validator

    class FileRecord(BaseModel):
        model_config = ConfigDict(extra="forbid")
        size: int = Field(ge=0)
        sha256: str = Field(pattern=r"^[0-9a-f]{64}$")

    class State(BaseModel):
        model_config = ConfigDict(extra="allow")
        format_version: Literal[FORMAT_VERSION]  # type: ignore[valid-type]
        step: int = Field(ge=0)
        epoch: int = Field(ge=0)
        batch_in_epoch: int = Field(ge=0)
        files: dict[str, FileRecord]
        rng: dict
        config_hash: str = ""

        @field_validator("files")
        @classmethod
        def _plain_names(cls, files):
            for name in files:
                if "/" in name or "\\" in name or name in ("", ".", "..") or not name.endswith(".safetensors"):
                    raise ValueError(f"unexpected file name {name!r} in a checkpoint")
            if "model.safetensors" not in files or "rng.safetensors" not in files:
                raise ValueError("model.safetensors or rng.safetensors is missing from the checkpoint")
            return files

    return State
