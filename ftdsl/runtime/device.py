"""Which device and which numeric precision a stage runs with, and why.

``precision = auto`` picks what the hardware runs fast (stack.md §4): bf16 on CUDA devices that
support it, fp16 with gradient scaling on older CUDA devices, bf16 on CPUs with native bf16
instructions (AVX512-BF16 or AMX), fp32 otherwise (emulated bf16 on CPU is slower than fp32).
"""

from __future__ import annotations

import os

from ftdsl.errors import StageError

__all__ = ["resolve_device", "resolve_precision", "cpu_bf16_reason"]

_DEVICES = ("auto", "cpu", "cuda", "mps")
_PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def resolve_device(device: str = "auto") -> str:
    """The device class a stage computes on: ``"cuda"``, ``"mps"`` or ``"cpu"``.

    ``"auto"`` is ``"cuda"`` when a GPU is visible, else ``"cpu"`` (Apple's ``mps`` only when
    asked for). ``"cuda:N"`` makes GPU N the current device and returns ``"cuda"``, so every
    ``.to("cuda")`` lands there; ``CUDA_VISIBLE_DEVICES`` is respected (N counts the visible GPUs).
    Under torchrun each rank has already made its local rank's GPU current (runtime.distributed).
    A device that is not there is a StageError (FTP530) rather than a crash deep inside torch."""
    import re

    import torch

    index = None
    m = re.fullmatch(r"cuda:(\d+)", device or "")
    if m:
        device, index = "cuda", int(m.group(1))
    if device not in _DEVICES:
        raise StageError("FTP530", f"unknown device `{device}`", hint="use auto, cpu, cuda, cuda:N or mps")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise StageError(
            "FTP530",
            "device `cuda` was requested but no CUDA device is available "
            f"(torch {torch.__version__})",
            hint="use `device = auto` or `--device cpu`",
        )
    if device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise StageError("FTP530", "device `mps` was requested but this machine has no Apple GPU (MPS)",
                         hint="use `--device cpu` (or auto)")
    if index is not None:
        n = torch.cuda.device_count()
        if index >= n:
            raise StageError("FTP530", f"device `cuda:{index}` was requested but {n} GPU{'s are' if n != 1 else ' is'} "
                             f"visible (CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')})",
                             hint=f"use cuda:0 to cuda:{n - 1}")
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):  # under torchrun: the local rank's GPU
            torch.cuda.set_device(index)
    return device


def cpu_bf16_reason() -> str | None:
    """Why this CPU runs bf16 natively (e.g. ``"CPU has AVX512-BF16"``), or None if it does not."""
    import torch

    try:
        if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            return None
    except (AttributeError, RuntimeError):
        return None
    probes = (("_is_amx_tile_supported", "AMX"), ("_is_avx512_bf16_supported", "AVX512-BF16"))
    for probe, name in probes:
        fn = getattr(torch.cpu, probe, None)
        try:
            if fn is not None and fn():
                return f"CPU has {name}"
        except RuntimeError:  # pragma: no cover - defensive: probe unavailable in this build
            continue
    return None


# Below this many parameters, bf16 autocast on a CPU costs more (casts, per-op overhead) than its
# faster matrix products save: the quickstart CNN (53k) ran 11% slower in bf16, MiniLM (22.7M)
# 1.8x faster (bench/train_overhead.py).
CPU_BF16_MIN_PARAMS = 1_000_000


def resolve_precision(precision: str, device: str, n_params: int | None = None) -> tuple[str, str]:
    """The concrete precision (``"fp32"|"bf16"|"fp16"``) for ``precision`` on ``device``, and a
    human reason, e.g. ``("bf16", "bf16: CPU has AVX512-BF16")``. On a CPU, `auto` keeps small
    models (``n_params`` below ``CPU_BF16_MIN_PARAMS``) in fp32."""
    import torch

    if precision not in _PRECISIONS:
        raise StageError("FTP530", f"unknown precision `{precision}`", hint="use auto, fp32, bf16 or fp16")
    if precision != "auto":
        return precision, f"{precision}: requested"
    if device == "mps":  # Apple GPUs: autocast support varies by macOS and PyTorch version
        return "fp32", "fp32: on Apple GPUs (mps) `auto` stays in fp32; ask for bf16 or fp16 explicitly"
    if device == "cuda":
        if torch.cuda.is_bf16_supported():
            return "bf16", "bf16: the GPU supports bfloat16"
        return "fp16", "fp16: the GPU has no bfloat16 support (gradients are scaled)"
    reason = cpu_bf16_reason()
    if reason is not None and n_params is not None and n_params < CPU_BF16_MIN_PARAMS:
        return "fp32", f"fp32: {n_params:,} parameters is too small for bf16 to pay off on a CPU ({reason})"
    if reason is not None:
        return "bf16", f"bf16: {reason}"
    return "fp32", "fp32: this CPU has no native bf16 (AVX512-BF16 or AMX)"
