"""The per-row parity check shared by the Router and StaticEmbedding tests."""

from __future__ import annotations

import numpy as np


def assert_parity(ours: np.ndarray, ref: np.ndarray) -> None:
    """Per-vector cosine >= 0.99999 and max abs diff <= 1e-4 (zero vectors must be zero on both sides)."""
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    assert np.abs(ours - ref).max() <= 1e-4, np.abs(ours - ref).max()
    for i, (a, b) in enumerate(zip(ours, ref, strict=True)):
        na, nb = np.linalg.norm(a), np.linalg.norm(b)
        if nb == 0:
            assert na == 0, f"row {i}: reference is zero, ours has norm {na}"
            continue
        cos = float(a @ b / (na * nb))
        assert cos >= 0.99999, f"row {i}: cosine {cos}"
