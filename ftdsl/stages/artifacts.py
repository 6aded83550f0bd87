"""The artifact interface every stage uses, and the one way to reach an artifact type. No torch here.

An *artifact* is what a stage returns and the cache stores (docs/internals.md §2, "Artifacts"):

* every artifact type has ``save(dir)`` and a classmethod ``load(dir)``; ``load`` validates what
  it reads up front, and anything wrong with the stored content is StageError FTP503, so the
  executor quarantines the entry and computes the stage again instead of failing downstream;
* a *model* artifact (``TorchModel``, ``QuantizedTorchModel``, ``OnnxModel``) also has ``spec``
  (a JSON-able dict), ``task`` (the lowered task call), ``modality`` (``"features"``/``"text"``),
  ``trained``, ``tokenizer_dir`` and ``load_tokenizer()`` (None for a features model), ``metrics``,
  ``size_bytes`` (what it weighs deployed), and runs either in PyTorch (``build()`` returns the
  ``nn.Module``) or in onnxruntime (``predict(inputs)`` returns numpy outputs).

A stage that needs another stage's artifact type asks :func:`artifact_class` (the registry
``ftdsl.stages.ARTIFACTS``) instead of importing the module that implements it, so no stage
depends on another stage's internals (``tests/test_stage_imports.py`` enforces it).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Callable, Protocol, runtime_checkable

__all__ = ["Artifact", "ModelArtifact", "artifact_class", "is_artifact", "runs_in_onnxruntime",
           "TOKENIZER_FILES", "copy_tokenizer_files", "load_tokenizer_dir"]

# The files a tokenizer folder may hold (ours: tokenizer.json; a pretrained model's: any of them).
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "vocab.txt", "vocab.json", "merges.txt", "spiece.model", "sentencepiece.bpe.model",
    "tokenizer.model", "chat_template.jinja", "chat_template.json",  # transformers 5 saves the chat template apart
)


@runtime_checkable
class Artifact(Protocol):
    """What the cache stores: saved into a fresh folder, loaded (and validated) from one."""

    def save(self, dir: Path) -> None: ...

    @classmethod
    def load(cls, dir: Path) -> "Artifact": ...


@runtime_checkable
class ModelArtifact(Artifact, Protocol):
    """A model another stage can evaluate, export, quantize or train further."""

    spec: dict
    tokenizer_dir: Path | None
    metrics: dict

    @property
    def task(self) -> dict: ...

    @property
    def modality(self) -> str | None: ...

    @property
    def trained(self) -> bool: ...

    @property
    def size_bytes(self) -> int: ...

    def load_tokenizer(self) -> Any: ...


def artifact_class(name: str) -> type:
    """The class registered for artifact type ``name`` (imported on first use)."""
    from ftdsl.stages import ARTIFACTS, load_object

    return load_object(ARTIFACTS[name])


def is_artifact(obj: Any, name: str) -> bool:
    """``isinstance(obj, artifact_class(name))``."""
    return isinstance(obj, artifact_class(name))


def runs_in_onnxruntime(model: Any) -> bool:
    """True for a model artifact that runs in onnxruntime (``predict``), False for PyTorch (``build``)."""
    return is_artifact(model, "OnnxModel")


def copy_tokenizer_files(src: Path, dst: Path, copy: Callable[[Path, Path], Any] = shutil.copyfile) -> Path:
    """Copy the tokenizer files of folder ``src`` into ``dst`` (created) with ``copy(src_file, dst_file)``."""
    src, dst = Path(src), Path(dst)
    if src.resolve() == dst.resolve():
        return dst
    dst.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            copy(src / name, dst / name)
    return dst


def load_tokenizer_dir(tok_dir: Path | None, *, pretrained: bool, trust_remote_code: bool = False):
    """The tokenizer saved in ``tok_dir`` (None without one): a pretrained model's through
    transformers' AutoTokenizer, ours (a WordPiece ``tokenizer.json``) through
    :func:`ftdsl.stages.tokenizer.load_tokenizer`."""
    if tok_dir is None or not Path(tok_dir).is_dir():
        return None
    if pretrained or not (Path(tok_dir) / "tokenizer.json").is_file():
        from ftdsl.stages.pretrained import quiet_transformers

        with quiet_transformers() as transformers:
            return transformers.AutoTokenizer.from_pretrained(str(tok_dir), trust_remote_code=bool(trust_remote_code))
    from ftdsl.stages.tokenizer import load_tokenizer

    return load_tokenizer(tok_dir)
