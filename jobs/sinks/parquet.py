"""The Parquet sink: part files plus the manifest on any fsspec filesystem.

The part files sit at the top of the output folder; everything else in its hidden metadata folder
`.embedjob/`, which readers of a folder of Parquet files skip.

Commit sequence of a shard (in the replica that embedded it):
1. `.embedjob/_errors/<shard>.parquet` with its quarantined rows, if any;
2. `part-<index>-<shard>.parquet` at its final name, whole or not at all (local: a staged file renamed;
   object stores: one PUT, or a multipart upload completed only at the end);
3. `.embedjob/_manifest/<shard>.json`, the record, created only if absent (a hard link on local disk, If-None-Match
   on S3): the commit point. Readers and reruns trust only records.
A rerun skips shards with a record and rewrites any other file, so a crash between steps loses nothing and
duplicates nothing.
"""

from __future__ import annotations

import logging
import posixpath
import time
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from jobs.index import INDEX_DIR, INDEX_META, build_index
from jobs.keypass import WORK_DIR
from jobs.manifest import (
    ERRORS_DIR,
    JOB_FILE,
    META_DIR,
    PLAN_FILE,
    SUCCESS_FILE,
    OutputConflict,
    OutputStore,
    check_compatible,
    part_name,
)
from jobs.retry import RetryPolicy
from jobs.shards import Plan, Shard
from jobs.sinks.base import Sink
from jobs.write import parquet_bytes

log = logging.getLogger(__name__)

# The driver folds the manifest records it received into one Parquet segment this often.
FOLD_EVERY_RECORDS = 1000
FOLD_EVERY_S = 60.0


class IncompleteOutput(RuntimeError):
    """The end-of-job check found a planned shard without a record, or rows neither written nor quarantined."""


class ParquetSink(Sink):
    """Part files and metadata under one output folder (see the module docstring for the commit sequence)."""

    def __init__(
        self,
        uri: str,
        storage_options: dict[str, Any] | None = None,
        policy: RetryPolicy | None = None,
        compression: str = "zstd",
    ):
        self.uri = uri
        self.data = OutputStore(uri, storage_options, policy)  # the part files
        self.store = OutputStore(posixpath.join(uri.rstrip("/"), META_DIR), storage_options, policy)
        self.compression = compression
        self._received: list[dict[str, Any]] = []
        self._folded_at = time.monotonic()

    # --- driver ---
    def existing_job(self, overwrite: bool) -> dict[str, Any] | None:
        """_job.json, if any; refuses (naming them) files no embedjob output writes when they are in danger."""
        if overwrite:
            self.data.refuse_foreign()  # before any work: overwrite deletes only an output's own files
        existing = self.store.read_json(JOB_FILE)
        if existing is None and not overwrite and self._has_data():
            self.data.refuse_foreign()
            old = (
                " (written by an embedjob before 0.2, metadata at the top)"
                if self.data.exists(JOB_FILE)
                else ""
            )
            raise OutputConflict(
                f"output.uri: {self.uri} holds the files of an embedjob output{old} but no {META_DIR}/{JOB_FILE}; "
                "use --overwrite to delete them and start again"
            )
        return existing

    def _has_data(self) -> bool:
        data = self.data
        if data.is_empty():
            return False
        names = [n.rstrip("/").rsplit("/", 1)[-1] for n in data.fs.ls(data.root, detail=False)]
        return any(n != META_DIR for n in names)

    def records(self) -> pa.Table:
        """Every record, one per shard id, ordered by shard index."""
        return self.store.records_table()

    def prepare(self, existing: dict[str, Any] | None, job: dict[str, Any], overwrite: bool) -> None:
        """--overwrite: delete the old output; otherwise refuse to resume another job's output."""
        if overwrite:
            self.data.clear(keep=(META_DIR,))
            self.store.clear()  # but this run's lease
        elif existing is not None:
            check_compatible(existing, job, self.uri)

    def on_write_start(self, existing: dict[str, Any] | None, job: dict[str, Any], plan: Plan) -> None:
        """_job.json, then _plan.parquet (rewritten too when a run was killed between the two)."""
        if existing is None:
            self.store.write_json(JOB_FILE, job)
        if existing is None or not self.store.exists(PLAN_FILE):
            self.store.write_bytes(PLAN_FILE, parquet_bytes(plan.to_table(), "zstd"))

    def on_shard_written(self, record: dict[str, Any]) -> dict[str, Any]:
        """The replica committed the shard; buffer its record and fold every 1,000 records or 60 s."""
        if record.get("skipped"):
            return record
        self._received.append(record)
        due = time.monotonic() - self._folded_at > FOLD_EVERY_S
        if len(self._received) >= FOLD_EVERY_RECORDS or due:
            self._fold()
        return record

    def _fold(self) -> None:
        self.store.fold(self._received)
        self._received, self._folded_at = [], time.monotonic()

    def on_write_complete(self, plan: Plan, summary: dict[str, Any]) -> dict[str, Any]:
        """Fold the manifest, check every planned shard, finish the output, write _SUCCESS, drop work files."""
        self._fold()
        records = self._fold_all()
        check_complete(plan, records)
        total = {
            k: int(pc.sum(records.column(k)).as_py() or 0) for k in ("embedded", "reused", "quarantined")
        }
        for k in ("documents", "chunks", "truncated"):
            if records.num_rows and records.column(k).null_count < records.num_rows:
                total[k] = int(pc.sum(records.column(k)).as_py() or 0)
        written = int(pc.sum(records.column("rows")).as_py() or 0)
        summary = {**summary, "total": total, "rows_written": written, **self._finish(records, written)}
        summary["output"] = self.uri
        self.store.write_json(SUCCESS_FILE, {**summary, "plan_fingerprint": plan.fingerprint})
        self.store.remove_dir(WORK_DIR)
        self.data.remove_tmp()
        return summary

    def _fold_all(self) -> pa.Table:
        """Every record, folded into one manifest.parquet."""
        return self.store.fold_all()

    def _finish(self, records: pa.Table, written: int) -> dict[str, Any]:
        """Build the id index a later --previous joins (kept when it already covers these records)."""
        index = self.store.read_json(f"{INDEX_DIR}/{INDEX_META}")
        if not index or (index.get("rows"), index.get("parts")) != (written, records.num_rows):
            index = build_index(self.data, records, self.store, INDEX_DIR)
        return {"indexed": index["rows"]}

    def on_write_failed(self, error: BaseException) -> dict[str, Any]:
        """Fold what was received, so a rerun reads few files; committed shards stay, the rest is redone."""
        try:
            self._fold()
            committed = len(self.store.committed_ids())
        except Exception as e:  # noqa: BLE001 - the job's own error is what the user must see
            log.warning("output %s: could not fold the manifest after a failure: %s", self.uri, e)
            committed = None
        return {
            "output": self.uri,
            "shards_committed": committed,
            "error": f"{type(error).__name__}: {error}",
        }

    # --- replica ---
    def committed_record(self, shard: Shard) -> dict[str, Any] | None:
        """The shard's JSON record, when a replica committed it and the driver has not yet folded it."""
        return self.store.read_json(self.store.record_name(shard.shard_id))

    def write_shard(
        self, shard: Shard, table: pa.Table, errors: pa.Table | None, counts: dict[str, Any]
    ) -> dict[str, Any]:
        """Errors file, then the part file, then the record (the commit point)."""
        errors_file = self.write_errors(shard, errors)
        name = part_name(shard.index, shard.shard_id)
        self.data.write_bytes(name, parquet_bytes(table, self.compression))
        return self.commit_record(shard_record(shard, name, table, errors, errors_file, counts))

    def commit_record(self, record: dict[str, Any]) -> dict[str, Any]:
        """Create the shard's record, the commit point; if another runner's replica created it first, its
        record stands and this one's work is dropped (two runners never both commit a shard)."""
        name = self.store.record_name(record["shard_id"])
        if self.store.create_json(name, record):
            return record
        return {**(self.store.read_json(name) or record), "skipped": True}

    def write_errors(self, shard: Shard, errors: pa.Table | None) -> str | None:
        """The shard's quarantined rows as _errors/<shard>.parquet (None when there are none)."""
        if errors is None or not errors.num_rows:
            return None
        rel = f"{ERRORS_DIR}/{shard.shard_id}.parquet"
        self.store.write_bytes(rel, parquet_bytes(errors, self.compression))
        return rel


def shard_record(
    shard: Shard,
    file: str | None,
    table: pa.Table,
    errors: pa.Table | None,
    errors_file: str | None,
    counts: dict,
) -> dict[str, Any]:
    """A shard's manifest record: where its rows are, how many were written and quarantined, and counts."""
    return {
        "shard_id": shard.shard_id,
        "index": shard.index,
        "file": file,
        "source": shard.source,
        "start": shard.start,
        "stop": shard.stop,
        "rows_in": shard.rows,
        "rows": table.num_rows,
        "quarantined": 0 if errors is None else errors.num_rows,
        "errors_file": errors_file,
        **counts,
        "committed_at": round(time.time(), 3),
    }


def check_complete(plan: Plan, records: pa.Table) -> None:
    """Every planned shard has exactly one record and every input row is written or quarantined."""
    # Under chunking a document gives several rows; what was read is the documents.
    documents = [
        r if d is None else d
        for r, d in zip(
            records.column("rows").to_pylist(), records.column("documents").to_pylist(), strict=True
        )
    ]
    by_id = dict(
        zip(
            records.column("shard_id").to_pylist(),
            zip(documents, records.column("quarantined").to_pylist(), strict=True),
            strict=True,
        )
    )
    missing = [s.shard_id for s in plan.shards if s.shard_id not in by_id]
    if missing:
        raise IncompleteOutput(
            f"output: {len(missing)} planned shards have no manifest record (first: {missing[:3]})"
        )
    for s in plan.shards:
        rows, quarantined = by_id[s.shard_id]
        if rows + quarantined != s.rows:
            raise IncompleteOutput(
                f"shard {s.index} ({s.shard_id}): {rows} rows (documents) written + {quarantined} quarantined "
                f"!= {s.rows} planned"
            )
