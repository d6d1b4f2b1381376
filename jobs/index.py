"""The id index of an output, and a previous output seen through it.

`_index/b=<bucket>/g=<group>.parquet` holds (id, text_hash, part, row) for every written row, partitioned by
the hash of the id (jobs.buckets), so that a later run joins its own ids with one bucket at a time whatever
its file layout. `part` is the shard index of the part file (the manifest maps it to the file name) and
`row` the row within it. The index is built by Ray tasks at the end of a job, each over a group of parts.
"""

from __future__ import annotations

import posixpath
from typing import Any

import numpy as np
import pyarrow as pa

from jobs.buckets import HASH_NAME, bucket_count, bucket_dir, id_keys, split_by_bucket
from jobs.manifest import JOB_FILE, OutputStore
from jobs.retry import RetryPolicy
from jobs.tasks import run_tasks
from jobs.write import parquet_bytes

INDEX_DIR = "_index"
INDEX_META = "_index.json"
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
    groups, cur, n = [], [], 0
    for index, file, count in parts:
        if cur and n + count > ROWS_PER_INDEX_TASK:
            groups.append(cur)
            cur, n = [], 0
        cur.append((index, file))
        n += count
    if cur:
        groups.append(cur)
    calls = [
        (_store_args(source), group, _store_args(target), target_dir, buckets, g)
        for g, group in enumerate(groups)
    ]
    indexed = sum(run_tasks(_index_parts, calls))
    meta = {"version": 1, "hash": HASH_NAME, "buckets": buckets, "rows": indexed, "parts": len(parts)}
    target.write_json(posixpath.join(target_dir, INDEX_META), meta)
    return meta


def _store_args(store: OutputStore) -> tuple[str, dict[str, Any], int]:
    return store.uri, store.storage_options, store.policy.attempts


def open_store(args: tuple[str, dict[str, Any], int]) -> OutputStore:
    """An OutputStore inside a task, from _store_args."""
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
    if not tables:
        return 0
    table = pa.concat_tables(tables)
    for b, rows in split_by_bucket(table, "id", buckets):
        rel = posixpath.join(target_dir, bucket_dir(b), f"g={group:06d}.parquet")
        target.write_bytes(rel, parquet_bytes(rows, "zstd"))
    return table.num_rows


def read_bucket(store: OutputStore, folder: str, columns: list[str] | None = None) -> pa.Table | None:
    """All files of one bucket folder concatenated (None when the folder is absent: an empty bucket)."""
    path = store.path(folder)
    store.fs.invalidate_cache(path)
    try:
        names = sorted(n for n in store.fs.ls(path, detail=False) if n.endswith(".parquet"))
    except FileNotFoundError:
        return None
    tables = [store.read_table(posixpath.relpath(n, store.root), columns) for n in names]
    tables = [t for t in tables if t is not None]
    return pa.concat_tables(tables) if tables else None


class PreviousOutput:
    """A previous job's output (--previous): its job metadata, manifest, and id index."""

    def __init__(self, uri: str, storage_options: dict[str, Any] | None, policy: RetryPolicy):
        self.store = OutputStore(uri, storage_options, policy)
        self.job = self.store.read_json(JOB_FILE)
        if self.job is None:
            raise FileNotFoundError(
                f"previous: {uri} holds no {JOB_FILE}; is it the output of an embedjob run?"
            )
        self.records = self.store.records_table()
        self.index = self.store.read_json(posixpath.join(INDEX_DIR, INDEX_META))
        if self.index is not None and self.index.get("hash") != HASH_NAME:
            self.index = None  # another id hash: rebuilt into this run's work folder

    def reusable(self, settings_fingerprint: str) -> bool:
        """Whether the previous vectors came from the same weights and embedding settings."""
        return self.job.get("settings_fingerprint") == settings_fingerprint

    @property
    def rows(self) -> int:
        """Rows the previous output holds."""
        return int(sum(self.records.column("rows").to_pylist()))

    def parts(self, lo: int, hi: int) -> dict[int, str]:
        """{shard index: part file} of the previous parts with lo <= index < hi."""
        idx = self.records.column("index").to_pylist()
        files = self.records.column("file").to_pylist()
        return {i: f for i, f in zip(idx, files, strict=True) if lo <= i < hi}
