"""The id index of an output, and a previous output seen through it.

`_index/g=<group>.parquet` holds (id, text_hash, part, row) for every written row, one row group per id-hash
bucket (jobs.buckets), so that a later run joins its own ids with one bucket at a time whatever its file
layout, reading just that bucket's row group of each file. `_index/_map.parquet` says which row group holds
which bucket in each file. `part` is the shard index of the part file (the manifest maps it to the file name)
and `row` the row within it. The index is built at the end of a job by Ray tasks, each over a group of parts
(a single group: in the driver).
"""

from __future__ import annotations

import posixpath
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from jobs.buckets import HASH_NAME, bucket_count, bucketed_parquet, id_keys
from jobs.manifest import JOB_FILE, OutputStore
from jobs.retry import RetryPolicy
from jobs.tasks import groups_of_rows, run_tasks
from jobs.write import parquet_bytes, retried

INDEX_DIR = "_index"
INDEX_META = "_index.json"
INDEX_MAP = "_map.parquet"
ROWS_PER_INDEX_TASK = 1_000_000
INDEX_SCHEMA = pa.schema(
    [("id", pa.string()), ("text_hash", pa.string()), ("part", pa.int32()), ("row", pa.int32())]
)


def build_index(
    source: OutputStore, records: pa.Table, target: OutputStore, target_dir: str, buckets: int | None = None
) -> dict[str, Any]:
    """Write the id index of `source`'s parts (manifest `records`) under target/target_dir; returns its meta."""
    target.remove_dir(target_dir)
    rows = int(sum(records.column("rows").to_pylist()))
    buckets = buckets or bucket_count(rows)
    parts = list(
        zip(
            records.column("index").to_pylist(),
            records.column("file").to_pylist(),
            records.column("rows").to_pylist(),
            strict=True,
        )
    )
    groups = groups_of_rows(parts, lambda p: p[2], ROWS_PER_INDEX_TASK)
    calls = [
        (
            store_args(source),
            [(index, file) for index, file, _ in group],
            store_args(target),
            target_dir,
            buckets,
            g,
        )
        for g, group in enumerate(groups)
    ]
    # One group is built here: starting a Ray worker for it cost ~1 s of a 100k-row job's finish, the work 0.07 s.
    # (A group holds at most ROWS_PER_INDEX_TASK rows, so the driver's memory stays bounded.)
    results = [_index_parts(*calls[0])] if len(calls) == 1 else run_tasks(_index_parts, calls)
    files = sorted((rel, groups) for rows, rel, groups in results if rows)
    indexed = sum(c for _, _, c in parts)
    bucket_map = pa.table(
        {"file": [f for f, _ in files], "groups": pa.array([g for _, g in files], pa.list_(pa.int32()))}
    )
    target.write_bytes(posixpath.join(target_dir, INDEX_MAP), parquet_bytes(bucket_map, "zstd"))
    meta = {"version": 2, "hash": HASH_NAME, "buckets": buckets, "rows": indexed, "parts": len(parts)}
    target.write_json(posixpath.join(target_dir, INDEX_META), meta)
    return meta


def load_map(store: OutputStore, index_dir: str) -> list[tuple[str, list[int]]]:
    """(file, row group of each bucket) of every file of an index."""
    table = store.read_table(posixpath.join(index_dir, INDEX_MAP))
    if table is None:
        raise FileNotFoundError(f"output {store.path(index_dir)}: the id index has no {INDEX_MAP}")
    return list(zip(table.column("file").to_pylist(), table.column("groups").to_pylist(), strict=True))


def store_args(store: OutputStore) -> tuple[str, dict[str, Any], int]:
    """What a Ray task needs to open the same store (open_store): URI, storage options, retry attempts."""
    return store.uri, store.storage_options, store.policy.attempts


def open_store(args: tuple[str, dict[str, Any], int]) -> OutputStore:
    """An OutputStore inside a task, from store_args."""
    uri, options, attempts = args
    return OutputStore(uri, options, RetryPolicy(attempts=attempts))


def _index_parts(
    source_args: tuple,
    parts: list[tuple[int, str]],
    target_args: tuple,
    target_dir: str,
    buckets: int,
    group: int,
) -> int:
    """Ray task: read id and text_hash of some parts and write their rows, split by bucket; returns the rows."""
    source, target = open_store(source_args), open_store(target_args)
    tables = []
    for index, file in parts:
        t = source.read_table(file, ["id", "text_hash"])
        if t is None:
            raise FileNotFoundError(
                f"output {source.path(file)}: part file listed in the manifest is missing"
            )
        tables.append(
            pa.table(
                {
                    "id": id_keys(t.column("id")),
                    "text_hash": t.column("text_hash").combine_chunks().cast(pa.string()),
                    "part": pa.array(np.full(t.num_rows, index, np.int32)),
                    "row": pa.array(np.arange(t.num_rows, dtype=np.int32)),
                },
                schema=INDEX_SCHEMA,
            )
        )
    return write_bucketed(target, posixpath.join(target_dir, f"g={group:06d}.parquet"), tables, buckets)


def write_bucketed(
    store: OutputStore, rel: str, pieces: list[pa.Table], buckets: int
) -> tuple[int, str, list[int]]:
    """Write `pieces` as one file with a row group per id bucket; returns (rows, file, row group per bucket)."""
    if not pieces:
        return 0, "", []
    table = pa.concat_tables(pieces)
    data, groups = bucketed_parquet(table, "id", buckets)
    store.write_bytes(rel, data)
    return table.num_rows, rel, groups


def read_row_groups(store: OutputStore, sources: list[tuple[str, int]]) -> pa.Table | None:
    """Row group `rg` of each (file, rg), concatenated (None when there are none)."""
    tables = []
    for rel, rg in sources:
        path = store.path(rel)

        def read(path: str = path, rg: int = rg) -> pa.Table:
            with store.fs.open(path, "rb") as f:
                return pq.ParquetFile(f).read_row_group(rg)

        tables.append(retried(read, f"output {path}: read row group {rg}", store.policy, key=path))
    return pa.concat_tables(tables) if tables else None


class PreviousOutput:
    """A previous job's output (--previous): its job metadata, manifest, and id index."""

    live = False  # not the table this run updates (jobs.sinks.lance_table.LiveTable)

    def __init__(self, uri: str, storage_options: dict[str, Any] | None, policy: RetryPolicy):
        from jobs.sinks import metadata_store

        self.data = OutputStore(uri, storage_options, policy)  # the part files
        self.store = metadata_store(uri, storage_options, policy)
        self.job = self.store.read_json(JOB_FILE)
        if self.job is None:
            raise FileNotFoundError(
                f"previous: {uri} holds no {JOB_FILE}; is it the output of an embedjob run?"
            )
        self.records = self.store.records_table()
        self.index = self.store.read_json(posixpath.join(INDEX_DIR, INDEX_META))
        if self.index is not None and (self.index.get("hash") != HASH_NAME or self.index.get("version") != 2):
            self.index = None  # another hash or layout: rebuilt into this run's work folder

    def reusable(self, settings_fingerprint: str) -> bool:
        """Whether the previous vectors came from the same weights and embedding settings."""
        return self.job.get("settings_fingerprint") == settings_fingerprint

    @property
    def rows(self) -> int:
        """Rows the previous output holds."""
        return int(sum(self.records.column("rows").to_pylist()))

    def parts(self, lo: int, hi: int) -> dict[int, str]:
        """{shard index: part file} of the previous parts with lo <= index < hi (records are sorted by index)."""
        idx = self.records.column("index").to_numpy()
        a, b = np.searchsorted(idx, [lo, hi])
        sel = self.records.slice(int(a), int(b - a))
        return dict(zip(sel.column("index").to_pylist(), sel.column("file").to_pylist(), strict=True))
