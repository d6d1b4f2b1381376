"""The parity check of every embedder test: our vectors against sentence-transformers' (or model2vec's)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

MIN_COSINE = 0.99999
MAX_ABS_DIFF = 1e-4


def assert_parity(
    ours: Any, theirs: Any, *, min_cos: float = MIN_COSINE, max_abs: float = MAX_ABS_DIFF
) -> None:
    """Per vector (last axis): cosine >= min_cos and max abs diff <= max_abs, or the two vectors are equal."""
    same, diff, cos = _rows(ours, theirs)
    bad = [i for i in range(len(same)) if not (same[i] or (diff[i] <= max_abs and cos[i] >= min_cos))]
    assert not bad, (
        f"vectors {bad[:10]} differ: max abs diff {diff[bad].max():.3g}, min cosine {cos[bad].min():.8f}"
    )


def parity_figures(ours: Any, theirs: Any) -> tuple[float, float]:
    """(max abs diff, min cosine) over all vectors; a vector equal to its reference counts as cosine 1."""
    same, diff, cos = _rows(ours, theirs)
    return float(diff.max(initial=0.0)), float(np.where(same, 1.0, cos).min(initial=1.0))


def _rows(ours: Any, theirs: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per vector: (equal, max abs diff, cosine)."""
    a, b = _vectors(ours), _vectors(theirs)
    assert a.shape == b.shape, f"shapes differ: ours {a.shape}, theirs {b.shape}"
    # A zero vector has no cosine, and max pooling over no known word gives -inf: such rows must be equal.
    same = (a == b).all(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        diff = np.where(a == b, 0.0, np.abs(a - b)).max(axis=1, initial=0.0)
        cos = (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return same, diff, cos


def _vectors(x: Any) -> np.ndarray:
    """A tensor, array or list as float64 rows, one a vector (a single vector becomes one row)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().double().numpy()
    x = np.asarray(x, dtype=np.float64)
    return x.reshape(-1, x.shape[-1])
