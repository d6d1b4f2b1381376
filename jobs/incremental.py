"""--previous: reuse vectors of rows whose id and text are unchanged, and list the ids that disappeared.

Memory stays bounded: a shard looks up only the previous shards cut from the same source file (the manifest
records each shard's source), and deletions are found bucket by bucket over the id columns alone.
"""

from __future__ import annotations

import math
import posixpath
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from jobs.manifest import DELETED_DIR, JOB_FILE, OutputStore
from jobs.retry import RetryPolicy
from jobs.write import parquet_bytes, retried, write_atomic

IDS_PER_BUCKET = 2_000_000


class PreviousOutput:
    """A previous job's output, seen from the driver: whether its vectors can be reused, and its shards by source."""

    def __init__(self, uri: str, storage_options: dict[str, Any] | None, policy: RetryPolicy):
        self.store = OutputStore(uri, storage_options, policy)
        self.job = self.store.read_json(JOB_FILE)
        if self.job is None:
            raise FileNotFoundError(
                f"previous: {uri} holds no {JOB_FILE}; is it the output of an embedjob run?"
            )
        self.records = self.store.records()
        self.by_source: dict[str, list[str]] = {}
        for r in self.records:
            self.by_source.setdefault(r["source"], []).append(r["file"])

    def reusable(self, settings_fingerprint: str) -> bool:
        """Whether the previous vectors came from the same weights and embedding settings."""
        return self.job.get("settings_fingerprint") == settings_fingerprint

    def task_for(self, source: str) -> dict[str, Any] | None:
        """The `previous` argument of a worker task for a shard cut from `source` (None: nothing to look up)."""
        parts = self.by_source.get(source)
        if not parts:
            return None
        return {"uri": self.store.uri, "storage_options": self.store.storage_options, "parts": parts}

    @property
    def rows(self) -> int:
        """Rows the previous output holds."""
        return sum(r["rows"] for r in self.records)


class PreviousLookup:
    """Inside a worker: id -> (part, row, text_hash) of the previous shards of one source file."""

    def __init__(self, uri: str, storage_options: dict[str, Any], parts: list[str], policy: RetryPolicy):
        self.store = OutputStore(uri, storage_options, policy)
        self.parts = parts
        self.index: dict[Any, tuple[int, int, str]] = {}
        for n, part in enumerate(parts):
            table = self._read(part, ["id", "text_hash"])
            for row, (i, h) in enumerate(
                zip(table.column("id").to_pylist(), table.column("text_hash").to_pylist(), strict=True)
            ):
                self.index[i] = (n, row, h)

    def _read(self, part: str, columns: list[str]) -> pa.Table:
        path = self.store.path(part)

        def read() -> pa.Table:
            with self.store.fs.open(path, "rb") as f:
                return pq.read_table(f, columns=columns)

        return retried(read, f"previous {path}: read", self.store.policy, key=path)

    def match(self, ids: list[Any], hashes: list[str]) -> dict[int, tuple[int, int]]:
        """{position: (part, row)} for the rows whose id exists in the previous output with the same text hash."""
        out = {}
        for k, (i, h) in enumerate(zip(ids, hashes, strict=True)):
            hit = self.index.get(i)
            if hit is not None and hit[2] == h:
                out[k] = (hit[0], hit[1])
        return out

    def gather(self, wanted: list[tuple[int, int, int]], into: np.ndarray) -> None:
        """Copy previous vectors into `into[target]` for each (target, part, row), one part file at a time."""
        by_part: dict[int, list[tuple[int, int]]] = {}
        for target, part, row in wanted:
            by_part.setdefault(part, []).append((target, row))
        for part, pairs in by_part.items():
            column = self._read(self.parts[part], ["embedding"]).column("embedding").combine_chunks()
            width = column.type.list_size
            if width != into.shape[1]:
                raise ValueError(
                    f"previous {self.parts[part]}: embedding width {width} != this job's {into.shape[1]}"
                )
            values = column.flatten().to_numpy(zero_copy_only=False).reshape(-1, width)
            targets, rows = zip(*pairs, strict=True)
            into[list(targets)] = values[list(rows)]


def _ids(store: OutputStore, rel: str) -> pa.Array:
    path = store.path(rel)

    def read() -> pa.Array:
        with store.fs.open(path, "rb") as f:
            return pq.read_table(f, columns=["id"]).column("id").combine_chunks()

    return retried(read, f"output {path}: read ids", store.policy, key=path)


def _bucket(ids: pa.Array, buckets: int, b: int) -> pa.Array:
    if buckets == 1:
        return ids
    import pandas as pd

    h = pd.util.hash_array(np.asarray(ids.cast(pa.string()).to_pylist(), dtype=object))
    return ids.filter(pa.array(h % buckets == b))


def find_deleted(
    previous: PreviousOutput, current: OutputStore, records: list[dict[str, Any]], compression: str
) -> int:
    """Write the ids in `previous` that the current output lacks to _deleted/; returns how many there are.

    Bounded memory: ids are split into hash buckets and each bucket is diffed on its own.
    """
    buckets = max(1, math.ceil(max(previous.rows, sum(r["rows"] for r in records)) / IDS_PER_BUCKET))
    current_files = [r["file"] for r in records] + [r["errors_file"] for r in records if r.get("errors_file")]
    previous_files = [r["file"] for r in previous.records]
    total = 0
    for b in range(buckets):
        now = [_bucket(_ids(current, f), buckets, b) for f in current_files]
        before = [_bucket(_ids(previous.store, f), buckets, b) for f in previous_files]
        now_ids = pa.concat_arrays([a.cast(pa.string()) for a in now]) if now else pa.array([], pa.string())
        gone = []
        for ids in before:
            mask = pc.invert(pc.is_in(ids.cast(pa.string()), value_set=now_ids))
            gone.append(ids.filter(mask))
        gone_ids = pa.concat_arrays(gone) if gone else pa.array([], pa.string())
        total += len(gone_ids)
        write_atomic(
            current.fs,
            current.root,
            posixpath.join(DELETED_DIR, f"deleted-{b:05d}.parquet"),
            parquet_bytes(pa.table({"id": gone_ids}), compression),
            current.policy,
            "deleted ids",
        )
    return total
