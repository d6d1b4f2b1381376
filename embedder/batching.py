"""Length-sorted batches, by a fixed count or by a padded-token budget (pure functions over lengths)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def length_order(lengths: Sequence[int]) -> list[int]:
    """Input indices sorted by length, longest first.

    Ties fall in numpy's default argsort order, the order sentence-transformers uses: with the same
    lengths the batches hold the same texts, so the vectors match it bit for bit (and int8 buckets too).
    """
    return [int(i) for i in np.argsort(-np.asarray(lengths, dtype=np.int64))]


def batches_by_count(order: Sequence[int], batch_size: int) -> list[list[int]]:
    """Cut `order` into consecutive batches of `batch_size` indices (the last one may be shorter)."""
    if batch_size <= 0:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
    return [list(order[i : i + batch_size]) for i in range(0, len(order), batch_size)]


def batches_by_tokens(
    order: Sequence[int], lengths: Sequence[int], max_batch_tokens: int, max_batch_size: int | None = None
) -> list[list[int]]:
    """Cut `order` (longest first) into batches whose padded size, rows x longest row, fits `max_batch_tokens`.

    A text longer than the budget on its own still gets a batch of one; `max_batch_size` caps rows per batch.
    """
    if max_batch_tokens <= 0:
        raise ValueError(f"max_batch_tokens must be a positive integer, got {max_batch_tokens}")
    if max_batch_size is not None and max_batch_size <= 0:
        raise ValueError(f"max_batch_size must be a positive integer, got {max_batch_size}")
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for idx in order:
        n = max(int(lengths[idx]), 1)
        new_longest = max(longest, n)
        full = max_batch_size is not None and len(current) >= max_batch_size
        if current and (full or new_longest * (len(current) + 1) > max_batch_tokens):
            batches.append(current)
            current, new_longest = [], n
        current.append(idx)
        longest = new_longest
    if current:
        batches.append(current)
    return batches


def padded_tokens(batches: Sequence[Sequence[int]], lengths: Sequence[int]) -> int:
    """Total tokens fed to the forward pass when each batch is padded to its longest row."""
    return sum(len(b) * max(int(lengths[i]) for i in b) for b in batches if b)


def pad_rows(
    rows: Sequence[Sequence[int]], pad_value: int, *, left: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention_mask) int64 tensors of shape (len(rows), longest row), padded on the right (or left)."""
    longest = max((len(r) for r in rows), default=0)
    ids = np.full((len(rows), longest), pad_value, dtype=np.int64)
    mask = np.zeros((len(rows), longest), dtype=np.int64)
    for i, row in enumerate(rows):
        n = len(row)
        cols = slice(longest - n, longest) if left else slice(0, n)
        ids[i, cols] = row
        mask[i, cols] = 1
    return torch.from_numpy(ids), torch.from_numpy(mask)
