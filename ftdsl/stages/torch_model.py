"""The `TorchModel` artifact: a (possibly untrained) model's spec, weights and tokenizer.

A TorchModel is a JSON spec, optional weights (``model.safetensors``, absent while untrained),
an optional ``tokenizer/`` folder and, for a trained Hugging Face model, its ``hf_config/``.
``TorchModel.build()`` returns an :class:`~ftdsl.stages.modules.FtdslModule`.

Saved form (never pickle)::

    dir/spec.json              the spec (see docs/internals.md §2)
    dir/model.safetensors      weights of the whole FtdslModule (trained models only)
    dir/metrics.json           final metrics of the stage that produced the weights
    dir/tokenizer/             tokenizer files (text models)
    dir/hf_config/config.json  a trained pretrained model's architecture

A model shrunk by ``structured(...)`` pruning keeps the spec of the model it came from plus
``spec["shrunk"]`` (tensor name -> shape, attention head counts per layer): ``_skeleton`` builds
the original architecture and gives it those shapes (``prune_shrink.apply_record``) before the
weights are read, so loading, validation, export and quantization see the smaller model.

``load`` validates the weights up front (the safetensors header parses, the tensors are those the
spec builds, with their shapes, and every float is finite): a damaged entry is FTP503/FTP507 at
load, which the executor answers by quarantining the entry and computing the stage again.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ftdsl.errors import StageError
from ftdsl.stages.artifacts import copy_tokenizer_files, load_tokenizer_dir
from ftdsl.stages.hf_archs import is_hf_arch, materialize as materialize_hf
from ftdsl.stages.modules import FtdslModule, TextModule, materialize
from ftdsl.stages.pretrained import PICKLE_WEIGHTS, load_hf_model, quiet_transformers

__all__ = ["TorchModel", "FORMAT_VERSION", "WEIGHTS_FILE", "read_weights", "check_finite"]

FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors; a file that does not parse is FTP503."""
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as e:  # noqa: BLE001 - safetensors' own error types: a damaged file
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise StageError("FTP503", f"cannot read weights {path}: {first}",
                         hint="rerun the stage that produced them with --force") from None


def check_finite(state: dict[str, torch.Tensor], where: Path | str) -> None:
    for k, t in state.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise StageError("FTP507", f"weights in {where} contain NaN or infinite values (`{k}`)",
                             hint="rerun the stage that produced them with --force")


class TorchModel:
    """A (possibly untrained) model: spec + weights + tokenizer. See the module docstring."""

    def __init__(self, spec: dict, weights: dict[str, torch.Tensor] | None = None, *,
                 tokenizer_dir: Path | None = None, hf_config: Any = None, metrics: dict | None = None):
        self.spec = dict(spec)
        self._weights = weights
        self.tokenizer_dir = Path(tokenizer_dir) if tokenizer_dir is not None else None
        self.hf_config = hf_config  # a transformers PretrainedConfig, or a folder with config.json
        self.metrics = dict(metrics or {})

    # -- queries ---------------------------------------------------------------------------

    @property
    def trained(self) -> bool:
        return self._weights is not None

    @property
    def modality(self) -> str | None:
        return self.spec.get("modality")

    @property
    def task(self) -> dict:
        return self.spec["task"]

    @property
    def size_bytes(self) -> int:
        """Bytes of the weights (0 while untrained)."""
        return sum(t.numel() * t.element_size() for t in (self._weights or {}).values())

    def state_dict(self) -> dict[str, torch.Tensor] | None:
        """The weights (validated when loaded), or None if untrained."""
        return self._weights

    def load_tokenizer(self):
        """The tokenizer (transformers) for a text model, or None."""
        return load_tokenizer_dir(self.tokenizer_dir, pretrained=self.spec.get("source") == "pretrained",
                                  trust_remote_code=bool(self.spec.get("trust_remote_code")))

    # -- building --------------------------------------------------------------------------

    def build(self, *, load_weights: bool = True) -> FtdslModule:
        """The nn.Module (fp32, CPU, train mode off) with this artifact's weights."""
        spec = self.spec
        if spec.get("adapter") and load_weights:  # the base rebuilt, the adapter attached (peft)
            from ftdsl.stages import adapters

            return adapters.build(self)
        weights = self._weights if load_weights else None
        if spec["source"] == "pretrained" and weights is None:
            net = load_hf_model(spec["pretrained_path"], spec["task"],
                                trust_remote_code=bool(spec.get("trust_remote_code")),
                                use_safetensors=spec.get("use_safetensors", True), load_in=spec.get("load_in"))
            module: FtdslModule = self._wrap_hf(net)
        else:
            module = self._skeleton()
        if weights is not None:
            missing, unexpected = module.load_state_dict(weights, strict=False)
            if missing or unexpected:
                raise StageError(
                    "FTP503",
                    f"weights do not fit the model spec (missing {list(missing)[:5]}, unexpected {list(unexpected)[:5]})",
                )
        module.eval()
        return module

    def _skeleton(self) -> FtdslModule:
        """The module the spec builds, before any weights are loaded into it."""
        spec = self.spec
        if spec["source"] == "pretrained":
            module: FtdslModule = self._wrap_hf(self._hf_from_config())
        elif spec.get("modality") is None or (spec.get("input_shape") is None and spec.get("vocab_size") is None):
            raise StageError(
                "FTP530",
                "this model is untrained and has no input shape yet; train it first "
                "(`train { model = ..., data = ... }`)",
            )
        elif is_hf_arch(spec["arch"]["$call"]):  # gpt, llama, t5: a transformers model from its config
            module = materialize_hf(spec, seed=int(spec.get("seed", 0)))
        else:
            module = materialize(spec, seed=int(spec.get("seed", 0)))
        if spec.get("shrunk"):  # structured pruning removed units: rebuild the smaller shapes
            from ftdsl.stages.prune_shrink import apply_record

            apply_record(module, spec["shrunk"])
        return module

    def _expected_shapes(self) -> dict[str, tuple[int, ...]]:
        """name -> shape of every tensor the spec's module holds.

        A pretrained (transformers) model is built on the meta device: no memory, no
        initialization. Any other is built on the CPU unless ``torch._dynamo`` is already
        imported: on the meta device, ops such as ``nn.Embedding(padding_idx=...)``'s indexing or
        ``torch.where`` run Python decompositions that import ``torch._dynamo`` (1.4 s), far more
        than building a from-scratch net (an MLP: milliseconds; a 22M-parameter transformer:
        ~0.4 s); transformers' modeling code imports it anyway. The global RNG is left as it was
        (``materialize`` seeds it)."""
        pretrained = self.spec["source"] == "pretrained"
        with torch.random.fork_rng(devices=[]):
            if pretrained or "torch._dynamo" in sys.modules:
                try:
                    with torch.device("meta"):
                        module = self._skeleton()
                except StageError:
                    raise
                except Exception:  # noqa: BLE001 - an init or a remote model that needs real tensors
                    module = self._skeleton()
            else:
                module = self._skeleton()
        return {k: tuple(v.shape) for k, v in module.state_dict().items()}

    def _check_weights(self, weights: dict[str, torch.Tensor], path: Path) -> None:
        """The weights are the tensors the spec builds, with their shapes (FTP503), and finite (FTP507)."""
        want = self._expected_shapes()
        got = {k: tuple(v.shape) for k, v in weights.items()}
        if got != want:
            missing = sorted(set(want) - set(got))[:3]
            unexpected = sorted(set(got) - set(want))[:3]
            shapes = [f"{k} {list(got[k])} (expected {list(want[k])})" for k in sorted(set(got) & set(want))
                      if got[k] != want[k]][:3]
            raise StageError("FTP503", f"weights {path} do not fit the model spec (missing {missing}, "
                                       f"unexpected {unexpected}, wrong shape {shapes})",
                             hint="rerun the stage that produced them with --force")
        check_finite(weights, path)

    def _hf_from_config(self) -> nn.Module:
        from ftdsl.stages.pretrained import hf_auto_class

        with quiet_transformers() as transformers:
            cfg = self.hf_config
            if cfg is None:
                raise StageError("FTP503", "a trained pretrained model has no hf_config/ folder")
            if not hasattr(cfg, "to_dict"):
                cfg = transformers.AutoConfig.from_pretrained(
                    str(cfg), trust_remote_code=bool(self.spec.get("trust_remote_code")))
            return getattr(transformers, hf_auto_class(self.spec["task"])).from_config(
                cfg, trust_remote_code=bool(self.spec.get("trust_remote_code")))

    def _wrap_hf(self, net: nn.Module) -> FtdslModule:
        """A transformers model as the FtdslModule of this spec's task."""
        from ftdsl.stages.tasks import is_seq_task

        task = self.spec["task"]["$call"]
        if is_seq_task(task):
            from ftdsl.stages.tasks.module import SeqModule

            return SeqModule(net, task=task, modality=self.spec.get("modality"))
        return TextModule(net, hf=True)

    @property
    def adapter(self) -> dict | None:
        """``spec["adapter"]`` of a model trained with `lora = ...` (ftdsl.stages.adapters), or None."""
        return self.spec.get("adapter")

    def merged(self) -> "TorchModel":
        """This model with plain weights: an adapter folded into its base (itself when it has none);
        for the stages that need plain weights (export, prune, quantize, a further train)."""
        if not self.adapter:
            return self
        from ftdsl.stages import adapters

        return adapters.merged(self)

    def with_module(self, module: nn.Module, *, metrics: dict | None = None, **spec_updates) -> "TorchModel":
        """A new trained artifact with ``module``'s weights (same tokenizer); for stages that
        change weights (train, prune, ...). ``module`` is the FtdslModule (or its state dict)."""
        state = module if isinstance(module, dict) else module.state_dict()
        weights = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items() if isinstance(v, torch.Tensor)}
        hf_config = self.hf_config
        if getattr(module, "hf", False) and hasattr(getattr(module, "net", None), "config"):
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
            save_file(weights, str(dir / WEIGHTS_FILE), metadata={"format": "pt"})
        if self.tokenizer_dir is not None:
            copy_tokenizer_files(self.tokenizer_dir, dir / "tokenizer")
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
        weights_path = dir / WEIGHTS_FILE
        if spec.get("trained") and not weights_path.is_file():
            pickles = [p for p in dir.iterdir() if p.suffix.lower() in PICKLE_WEIGHTS]
            if pickles:
                raise StageError("FTP302", f"refusing to load pickle weights {pickles[0]}")
            raise ValueError(f"{dir}: {WEIGHTS_FILE} is missing")
        metrics = {}
        if (dir / "metrics.json").is_file():
            metrics = json.loads((dir / "metrics.json").read_text(encoding="utf-8"))
        art = cls(
            spec,
            tokenizer_dir=dir / "tokenizer" if (dir / "tokenizer").is_dir() else None,
            hf_config=dir / "hf_config" if (dir / "hf_config" / "config.json").is_file() else None,
            metrics=metrics,
        )
        if weights_path.is_file():
            art._weights = read_weights(weights_path)
            if spec.get("adapter"):
                from ftdsl.stages import adapters

                adapters.check_weights(art, art._weights, weights_path, check_finite)
            else:
                art._check_weights(art._weights, weights_path)
        return art

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        src = self.spec.get("arch", {}).get("$call") if self.spec.get("source") == "arch" else self.spec.get("pretrained")
        return f"TorchModel({self.spec.get('source')}={src!r}, trained={self.trained})"
