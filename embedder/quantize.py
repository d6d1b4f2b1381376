"""float32 embeddings -> int8 / uint8 / binary / ubinary, with sentence-transformers' quantize_embeddings semantics."""

from __future__ import annotations

from typing import Literal, get_args

import numpy as np
import torch

Precision = Literal["float32", "int8", "uint8", "binary", "ubinary"]
PRECISIONS: tuple[str, ...] = get_args(Precision)


def check_precision(precision: str) -> None:
    """Raise a ValueError naming `precision` and the valid ones if it is not supported."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not supported; valid: {PRECISIONS}")


def quantization_ranges(calibration: np.ndarray, precision: str = "int8") -> np.ndarray:
    """Per-dimension [min; max] of `calibration` as a (2, dim) array, the buckets int8/uint8 use."""
    calibration = np.asarray(calibration)
    if calibration.ndim == 1 or calibration.shape[0] < 2:
        raise ValueError(
            f"cannot compute {precision} ranges from {1 if calibration.ndim == 1 else calibration.shape[0]} "
            "embedding(s); pass `ranges` or `calibration_embeddings` computed from a representative set"
        )
    return np.vstack((calibration.min(axis=0), calibration.max(axis=0)))


def quantize_embeddings(
    embeddings: np.ndarray | torch.Tensor,
    precision: Precision,
    ranges: np.ndarray | None = None,
    calibration_embeddings: np.ndarray | None = None,
) -> np.ndarray:
    """Quantise float `embeddings` (n, dim) to `precision`.

    int8/uint8 split each dimension's [min, max] into 255 buckets; the range comes from `ranges`, else
    `calibration_embeddings`, else the embeddings themselves. binary/ubinary pack the sign bits (> 0)
    eight to a byte (binary is the packed byte minus 128, as int8).
    """
    check_precision(precision)
    if isinstance(embeddings, torch.Tensor):
        tensor = embeddings.detach()
        embeddings = (tensor.float() if tensor.dtype == torch.bfloat16 else tensor).cpu().numpy()
    embeddings = np.asarray(embeddings)
    if embeddings.dtype in (np.int8, np.uint8):
        raise ValueError(f"embeddings to quantise must be float, got {embeddings.dtype}")
    if precision == "float32":
        return embeddings.astype(np.float32)
    if precision in ("int8", "uint8"):
        if ranges is None:
            source = embeddings if calibration_embeddings is None else np.asarray(calibration_embeddings)
            ranges = quantization_ranges(source, precision)
        ranges = np.asarray(ranges).astype(np.float32, copy=False)
        if ranges.shape != (2, embeddings.shape[-1]):
            raise ValueError(f"ranges must have shape (2, {embeddings.shape[-1]}), got {ranges.shape}")
        starts = ranges[0, :]
        steps = (ranges[1, :] - starts) / 255
        # A constant dimension has no spread: any step maps it to bucket 0.
        steps = np.where(steps == 0, 1, steps)
        buckets = np.clip(np.floor((embeddings - starts) / steps), 0, 255)
        return buckets.astype(np.uint8) if precision == "uint8" else (buckets - 128).astype(np.int8)
    packed = np.packbits(embeddings > 0, axis=-1)
    return packed if precision == "ubinary" else (packed - 128).astype(np.int8)
