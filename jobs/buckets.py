"""Id-hash buckets: the partitioning that the duplicate check, reuse by id and the output index share."""

from __future__ import annotations

import io
import math
import os

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

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
    """Ids as strings: the join key, so an int id 7 and a string id "7" of a re-export still match.

    Binary ids (raw UUIDs) need not be UTF-8: they become their hex digits.
    """
    if isinstance(ids, pa.ChunkedArray):
        ids = ids.combine_chunks()
    if pa.types.is_dictionary(ids.type):
        ids = ids.cast(ids.type.value_type)
    t = ids.type
    if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t):
        return pa.array([None if v is None else v.hex() for v in ids.to_pylist()], pa.string())
    if not (pa.types.is_string(t) or pa.types.is_large_string(t)):
        ids = pc.cast(ids, pa.string())
    return ids.cast(pa.string())


def bucket_of(keys: pa.Array, buckets: int) -> np.ndarray:
    """The bucket (0..buckets-1) of each string key: a seeded SipHash of its UTF-8 bytes, stable across runs."""
    if buckets == 1 or len(keys) == 0:
        return np.zeros(len(keys), dtype=np.int32)
    import pandas as pd

    values = keys.to_numpy(zero_copy_only=False)
    return (pd.util.hash_array(values.astype(object), categorize=False) % buckets).astype(np.int32)


def partitioned_parquet(table: pa.Table, partition: np.ndarray) -> tuple[bytes, dict[int, int]]:
    """`table` as one Parquet file with one row group per partition value: (bytes, {partition: row group}).

    One file per map task with a row group per partition (read back by ranged GETs) keeps a shuffle's file
    count at the number of map tasks, not map tasks x partitions. Rows keep their order within a partition.
    """
    order = np.argsort(partition, kind="stable")
    sorted_p = partition[order]
    edges = np.flatnonzero(np.diff(sorted_p)) + 1
    where: dict[int, int] = {}
    sink = io.BytesIO()
    # No column statistics: a reader opens the footer once per row group it reads, and with a row group
    # per partition the statistics would make footers grow with the partition count.
    with pq.ParquetWriter(sink, table.schema, compression="zstd", write_statistics=False) as writer:
        for lo, hi in zip(np.concatenate(([0], edges)), np.concatenate((edges, [len(order)])), strict=True):
            if hi > lo:
                rows = table.take(pa.array(order[lo:hi]))
                writer.write_table(rows, row_group_size=rows.num_rows)
                where[int(sorted_p[lo])] = len(where)
    return sink.getvalue(), where


def bucketed_parquet(table: pa.Table, key_column: str, buckets: int) -> tuple[bytes, list[int]]:
    """partitioned_parquet by id bucket: (bytes, groups) with groups[b] the row group of bucket b, or -1."""
    data, where = partitioned_parquet(table, bucket_of(table.column(key_column).combine_chunks(), buckets))
    return data, [where.get(b, -1) for b in range(buckets)]


def bucket_sources(files: list[tuple[str, list[int]]], b: int) -> list[tuple[str, int]]:
    """(file, row group) of bucket b in each bucketed file that has rows in it."""
    return [(rel, groups[b]) for rel, groups in files if groups[b] >= 0]
