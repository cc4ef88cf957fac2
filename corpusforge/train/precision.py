"""Mixed precision: which autocast dtype a run uses, and the autocast context for forward passes.

Parameters, optimizer state and the reductions autocast keeps in float32 (softmax, layer norm, the loss)
stay float32 in every mode; only matmuls and their activations run in the lower precision.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from corpusforge.errors import ConfigError

__all__ = ["amp_dtype", "autocast", "cpu_has_bf16"]


def cpu_has_bf16() -> bool:
    """Whether this CPU has native bfloat16 dot products (AVX512-BF16 or AMX-BF16). On such a CPU oneDNN's
    bf16 matmuls run several times faster than MKL's float32 ones; elsewhere bf16 is emulated and slower."""
    try:
        caps = torch.cpu.get_capabilities()  # torch >= 2.6
    except AttributeError:
        return False
    return bool(caps.get("avx512_bf16") or caps.get("amx_bf16"))


def amp_dtype(device: str, dtype: str) -> torch.dtype | None:
    """The autocast dtype of a run, or None for plain float32.

    "auto": bf16 on GPUs that support it (else fp16 with loss scaling); on the CPU, bf16 where the CPU has
    native bf16, else float32.
    """
    if dtype == "float32":
        return None
    if device.startswith("cuda"):
        if dtype == "auto":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if dtype == "bfloat16" else torch.float16
    if dtype == "float16":
        raise ConfigError("dtype 'float16' is for GPUs; on the CPU use 'bfloat16' or 'float32'", path="dtype")
    if dtype == "bfloat16" or cpu_has_bf16():
        return torch.bfloat16
    return None


def autocast(device: str, dt: torch.dtype | None) -> contextlib.AbstractContextManager[Any]:
    """Autocast to ``dt`` on ``device`` ("cpu", "cuda" or "cuda:N"); a no-op context for float32 (None)."""
    if dt is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type="cuda" if device.startswith("cuda") else "cpu", dtype=dt)
