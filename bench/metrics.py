"""Pure benchmark math: model FLOPs per token, padding of a batching, vector parity, rates."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def layer_flops_per_token(hidden: int, intermediate: int) -> int:
    """FLOPs of one BERT layer's Linear layers for one token: Q, K, V, O (h x h) and the FFN (h x i, i x h)."""
    return 2 * (4 * hidden * hidden + 2 * hidden * intermediate)


def flops_per_token(config: dict[str, Any], token_counts: Sequence[int]) -> float:
    """Mean FLOPs per real token over a corpus: Linear layers plus attention (QK^T and AV) at each text's length.

    Attention costs 2*2*seq*h per token per layer, so its corpus mean is token-weighted: sum(n^2) / sum(n).
    Embedding lookups, LayerNorm, GELU, softmax and pooling are left out (they are not FLOP-bound).
    """
    h, i, layers = (
        int(config["hidden_size"]),
        int(config["intermediate_size"]),
        int(config["num_hidden_layers"]),
    )
    n = np.asarray(token_counts, dtype=np.float64)
    if n.size == 0 or n.sum() == 0:
        raise ValueError(f"flops_per_token needs at least one non-empty text, got {n.size} texts")
    mean_seq = float((n * n).sum() / n.sum())
    return layers * (layer_flops_per_token(h, i) + 2 * 2 * mean_seq * h)


def st_order(char_lengths: Sequence[int]) -> np.ndarray:
    """The order sentence-transformers encodes in: longest text (in characters) first, same argsort call."""
    return np.argsort([-length for length in char_lengths])


def count_batches(indices: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Consecutive batches of `batch_size` indices (the last one shorter)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return [indices[s : s + batch_size] for s in range(0, len(indices), batch_size)]


def st_batches(
    char_lengths: Sequence[int], batch_size: int, chunk_size: int | None = None
) -> list[np.ndarray]:
    """sentence-transformers' batches: the input cut into chunks (pool / Ray batch), each sorted by chars, cut in batches."""
    n = len(char_lengths)
    chunk = chunk_size or max(n, 1)
    out: list[np.ndarray] = []
    for start in range(0, n, chunk):
        order = st_order(char_lengths[start : start + chunk]) + start
        out += count_batches(order, batch_size)
    return out


def padded_tokens(token_counts: Sequence[int], batches: Sequence[np.ndarray]) -> int:
    """Tokens the forward pass sees when each batch is padded to its longest text."""
    counts = np.asarray(token_counts)
    return int(sum(len(b) * int(counts[b].max()) for b in batches if len(b)))


def padding_efficiency(real: int, padded: int) -> float:
    """Real tokens / padded tokens (1.0 = no padding)."""
    if padded <= 0:
        raise ValueError(f"padded tokens must be > 0, got {padded} (real {real})")
    return real / padded


def parity(ours: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """Row-wise agreement of two embedding matrices: min cosine and max abs diff over all rows."""
    a, b = np.asarray(ours, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"embedding shapes differ: {a.shape} vs reference {b.shape}")
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    cos = (a * b).sum(axis=1) / np.maximum(na * nb, 1e-30)
    return {
        "min_cosine": float(cos.min()),
        "max_abs_diff": float(np.abs(a - b).max()),
        "rows": int(a.shape[0]),
    }


def align_rows(ids: Sequence[str], emb: np.ndarray, wanted: Sequence[str]) -> np.ndarray:
    """Reorder rows of `emb` (keyed by `ids`) into the order of `wanted`; a missing id is an error."""
    pos = {k: j for j, k in enumerate(ids)}
    missing = [k for k in wanted if k not in pos]
    if missing:
        raise ValueError(f"{len(missing)} ids missing from output (of {len(wanted)}), e.g. {missing[:3]!r}")
    return emb[[pos[k] for k in wanted]]


def gemm_flops(m: int, k: int, n: int) -> int:
    """FLOPs of an (m x k) @ (k x n) matrix product."""
    return 2 * m * k * n


def cosine_stats(ours: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """Min and mean row-wise cosine of two embedding matrices of the same shape."""
    a, b = np.asarray(ours, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"embedding shapes differ: {a.shape} vs reference {b.shape}")
    cos = (a * b).sum(axis=1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30)
    return {"min_cosine": float(cos.min()), "mean_cosine": float(cos.mean())}


def top_k_neighbours(emb: np.ndarray, k: int) -> np.ndarray:
    """(n, k) indices of each row's k most cosine-similar other rows, best first."""
    x = np.asarray(emb, dtype=np.float64)
    if not 0 < k < len(x):
        raise ValueError(f"k must be between 1 and {len(x) - 1} (rows - 1), got {k}")
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-30)
    sim = x @ x.T
    np.fill_diagonal(sim, -np.inf)
    top = np.argpartition(-sim, k, axis=1)[:, :k]
    order = np.take_along_axis(sim, top, axis=1).argsort(axis=1)[:, ::-1]
    return np.take_along_axis(top, order, axis=1)


def top_k_overlap(ours: np.ndarray, reference: np.ndarray, k: int = 10) -> float:
    """Mean share of each row's k nearest neighbours under `reference` that `ours` finds too (1.0 = same sets)."""
    a, b = top_k_neighbours(ours, k), top_k_neighbours(reference, k)
    return float(np.mean([len(set(x) & set(y)) / k for x, y in zip(a, b, strict=True)]))
