"""Id-hash buckets: the partitioning that the duplicate check, reuse by id and the output index share."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

# Ids per bucket: one bucket (new keys plus the previous index's) is what one join task holds in memory.
IDS_PER_BUCKET = 1_000_000
# Recorded in each index, so a future change of the hash is refused instead of silently matching nothing.
HASH_NAME = "pandas-siphash-utf8-v1"


def ids_per_bucket() -> int:
    """The bucket size; EMBEDJOB_IDS_PER_BUCKET overrides it (tests use it to force many buckets)."""
    return int(os.environ.get("EMBEDJOB_IDS_PER_BUCKET", IDS_PER_BUCKET))


def bucket_count(rows: int) -> int:
    """How many buckets hold `rows` ids at ids_per_bucket() each (at least one)."""
    return max(1, math.ceil(rows / ids_per_bucket()))


def id_keys(ids: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Ids as strings: the join key, so an int id 7 and a string id "7" of a re-export still match."""
    if isinstance(ids, pa.ChunkedArray):
        ids = ids.combine_chunks()
    if not (pa.types.is_string(ids.type) or pa.types.is_large_string(ids.type)):
        ids = pc.cast(ids, pa.string())
    return ids.cast(pa.string())


def bucket_of(keys: pa.Array, buckets: int) -> np.ndarray:
    """The bucket (0..buckets-1) of each string key: a seeded SipHash of its UTF-8 bytes, stable across runs."""
    if buckets == 1 or len(keys) == 0:
        return np.zeros(len(keys), dtype=np.int32)
    import pandas as pd

    values = keys.to_numpy(zero_copy_only=False)
    return (pd.util.hash_array(values.astype(object), categorize=False) % buckets).astype(np.int32)


def split_by_bucket(table: pa.Table, key_column: str, buckets: int) -> Iterator[tuple[int, pa.Table]]:
    """(bucket, rows of `table` in that bucket), for each non-empty bucket, rows kept in their order."""
    b = bucket_of(table.column(key_column).combine_chunks(), buckets)
    order = np.argsort(b, kind="stable")
    sorted_b = b[order]
    edges = np.flatnonzero(np.diff(sorted_b)) + 1
    for lo, hi in zip(np.concatenate(([0], edges)), np.concatenate((edges, [len(b)])), strict=True):
        if hi > lo:
            yield int(sorted_b[lo]), table.take(pa.array(order[lo:hi]))


def bucket_dir(b: int) -> str:
    """The folder name of bucket b."""
    return f"b={b:05d}"
