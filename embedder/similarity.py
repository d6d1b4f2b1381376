"""Similarity matrices between two sets of embeddings: cosine, dot, euclidean, manhattan (pure functions)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal, get_args

import numpy as np
import torch

SimilarityName = Literal["cosine", "dot", "euclidean", "manhattan"]
SIMILARITY_NAMES: tuple[str, ...] = get_args(SimilarityName)


def as_matrix(x: np.ndarray | torch.Tensor | Sequence) -> torch.Tensor:
    """A float (n, dim) tensor from a vector, a matrix, or a list of vectors (numpy or torch)."""
    if isinstance(x, torch.Tensor):
        t = x
    elif isinstance(x, np.ndarray):
        t = torch.from_numpy(x)
    elif isinstance(x, Sequence) and len(x) and all(isinstance(v, torch.Tensor) for v in x):
        t = torch.stack(list(x))
    elif isinstance(x, Sequence) and len(x) and all(isinstance(v, np.ndarray) for v in x):
        t = torch.from_numpy(np.stack(x))
    else:
        t = torch.tensor(x)
    # Half-precision matmuls round scores into ties; integer codes must be compared as numbers.
    if not torch.is_floating_point(t) or torch.finfo(t.dtype).bits < 32:
        t = t.to(torch.float32)
    return t.unsqueeze(0) if t.dim() == 1 else t


def cosine(a, b) -> torch.Tensor:
    """res[i, j] = cos(a[i], b[j])."""
    a, b = as_matrix(a), as_matrix(b)
    a = torch.nn.functional.normalize(a, p=2, dim=-1)
    b = torch.nn.functional.normalize(b, p=2, dim=-1)
    return a @ b.T


def dot(a, b) -> torch.Tensor:
    """res[i, j] = a[i] . b[j]."""
    a, b = as_matrix(a), as_matrix(b)
    return a @ b.T


def euclidean(a, b) -> torch.Tensor:
    """res[i, j] = -||a[i] - b[j]||_2 (negative, so larger means more similar)."""
    a, b = as_matrix(a), as_matrix(b)
    return -torch.cdist(a, b, p=2.0)


def manhattan(a, b) -> torch.Tensor:
    """res[i, j] = -||a[i] - b[j]||_1 (negative, so larger means more similar)."""
    a, b = as_matrix(a), as_matrix(b)
    return -torch.cdist(a, b, p=1.0)


def pairwise(name: SimilarityName, a, b) -> torch.Tensor:
    """res[i] = similarity(a[i], b[i]) for the named function."""
    check_similarity_name(name)
    a, b = as_matrix(a), as_matrix(b)
    if a.shape != b.shape:
        raise ValueError(f"pairwise similarity needs equal shapes, got {tuple(a.shape)} and {tuple(b.shape)}")
    if name == "cosine":
        a = torch.nn.functional.normalize(a, p=2, dim=-1)
        b = torch.nn.functional.normalize(b, p=2, dim=-1)
        return (a * b).sum(dim=-1)
    if name == "dot":
        return (a * b).sum(dim=-1)
    if name == "euclidean":
        return -torch.sqrt(((a - b) ** 2).sum(dim=-1))
    return -(a - b).abs().sum(dim=-1)


SIMILARITY_FNS: dict[str, Callable[..., torch.Tensor]] = {
    "cosine": cosine,
    "dot": dot,
    "euclidean": euclidean,
    "manhattan": manhattan,
}


def check_similarity_name(name: str) -> None:
    """Raise a ValueError naming `name` and the valid ones if it is not a known similarity function."""
    if name not in SIMILARITY_NAMES:
        raise ValueError(f"similarity_fn_name {name!r} is not supported; valid: {SIMILARITY_NAMES}")


def similarity_fn(name: SimilarityName) -> Callable[..., torch.Tensor]:
    """The matrix similarity function called `name`."""
    check_similarity_name(name)
    return SIMILARITY_FNS[name]
