"""Compute precision: the dtype the matrix products run in (float32, or bf16/fp16 autocast), per device."""

from __future__ import annotations

import contextlib
import warnings
from typing import Any, Literal

import torch

from embedder.cpu import CpuFeatures, cpu_features

ComputePrecision = Literal["float32", "bfloat16", "float16"]
COMPUTE_PRECISIONS: tuple[ComputePrecision, ...] = ("float32", "bfloat16", "float16")
# CPU flags that run each reduced dtype's dot products in hardware; without them oneDNN emulates them in fp32
# and the "faster" precision runs slower than float32.
NATIVE_CPU_FLAGS = {"bfloat16": ("avx512_bf16", "amx_bf16"), "float16": ("avx512_fp16", "amx_fp16")}


def check_compute_precision(value: str) -> None:
    """Raise when `value` is not one of COMPUTE_PRECISIONS."""
    if value not in COMPUTE_PRECISIONS:
        raise ValueError(f"compute_precision {value!r} is not supported; valid: {COMPUTE_PRECISIONS}")


def autocast_dtype(value: str) -> torch.dtype | None:
    """The dtype autocast runs matmuls in for `value`, None for float32 (no autocast)."""
    check_compute_precision(value)
    return None if value == "float32" else getattr(torch, value)


def unsupported_reason(value: str, device: torch.device, features: CpuFeatures | None = None) -> str | None:
    """Why `value` would not run natively on `device` (None when it does, or for float32)."""
    check_compute_precision(value)
    if value == "float32":
        return None
    if device.type == "cuda":
        if value == "bfloat16" and not torch.cuda.is_bf16_supported():
            return f"{torch.cuda.get_device_name(device)} has no native bfloat16"
        return None
    if device.type != "cpu":
        return None
    features = features or cpu_features()
    flags = NATIVE_CPU_FLAGS[value]
    if any(f in features.flags for f in flags):
        return None
    return f"the CPU ({features.model_name}) has none of {flags}: {value} is emulated, slower than float32"


def warn_if_emulated(value: str, device: torch.device, features: CpuFeatures | None = None) -> str | None:
    """Warn (and return the reason) when `value` is emulated on `device`; vectors stay valid, only speed suffers."""
    reason = unsupported_reason(value, device, features)
    if reason is not None:
        warnings.warn(f"compute_precision {value!r}: {reason}", RuntimeWarning, stacklevel=3)
    return reason


def compute_context(value: str, device: torch.device) -> Any:
    """Autocast for `value` on `device`: Linear/matmul/attention in bf16/fp16; LayerNorm statistics, pooling and
    normalisation stay float32 (autocast leaves them out); float32: a no-op."""
    dtype = autocast_dtype(value)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
