"""The Lance sink: one Lance table (id, embedding, text_hash, passthrough columns), optionally indexed.

Commit sequence of a shard (in the replica that embedded it), as the Parquet sink's:
1. `.embedjob/_errors/<shard>.parquet` with its quarantined rows, if any;
2. the shard's rows as Lance fragments: data files that no version of the table refers to yet;
3. `.embedjob/_manifest/<shard>.json`, the record, listing the fragments: the commit point of the shard.
Then one commit per run, at the end: a single Lance version adds every record's fragments (and, for an update
of a live table, deletes the rows the run replaced or found gone). Readers see the table before the run or
after it, never half of it; the version's commit message names the run, so a rerun after a crash between the
commit and `_SUCCESS` does not commit twice. Fragments of a shard without a record are files no version refers
to: invisible, redone by a rerun, and removed by Lance's cleanup of old files.

A run whose `--previous` is the output itself updates the live table (jobs.sinks.lance_table): rows whose id,
text and passthrough values are unchanged stay where they are, untouched; changed and new rows are embedded and
added; the old rows of changed ids and the ids gone from the input are deleted, all in the run's one version.
The job's metadata (_job.json, _plan.parquet, manifest, _SUCCESS) lives in `<table>/.embedjob/`, for the
latest run; every run's summary is also the commit message of its version.
"""

from __future__ import annotations

import json
import posixpath
from typing import Any

import pyarrow as pa

from jobs.faults import maybe_fail
from jobs.manifest import JOB_FILE, META_DIR, OutputConflict, check_compatible
from jobs.retry import RetryPolicy, call_with_retries
from jobs.shards import Plan, Shard
from jobs.sinks.lance_table import (
    MESSAGE_KEY,
    SCHEMA_KEY,
    LiveTable,
    import_lance,
    lance_storage_options,
)
from jobs.sinks.parquet import ParquetSink, shard_record
from jobs.write import parquet_bytes

SCHEMA_FILE = "_schema.parquet"  # an empty table of the shards' schema
# What a Lance table folder holds besides our metadata folder.
LANCE_NAMES = ("_versions", "_transactions", "_indices", "_deletions", "_refs", "data", META_DIR, "_embedjob")
INDEX_TYPES = {"ivf_pq": "IVF_PQ", "ivf_hnsw_sq": "IVF_HNSW_SQ", "ivf_flat": "IVF_FLAT"}


class LanceSink(ParquetSink):
    """A Lance table at the output URI: replicas stage fragments, the driver commits them once per run."""

    def __init__(
        self,
        uri: str,
        storage_options: dict[str, Any] | None = None,
        policy: RetryPolicy | None = None,
        vector_index: str = "none",
        id_index: bool = False,
        metric: str = "cosine",
        live: bool = False,
    ):
        self.lance = import_lance()
        super().__init__(uri, storage_options, policy)
        self.lance_options = lance_storage_options(storage_options or {})
        self.vector_index, self.id_index, self.metric = vector_index, id_index, metric
        self.live = live  # --previous is this table: update it in place
        self.keeps_unchanged = live  # replicas leave unchanged rows where they are instead of writing them
        self._job: dict[str, Any] | None = None

    def _dataset(self, version: int | None = None) -> Any | None:
        """The table (at `version`, default the latest), or None when there is none yet."""
        return LiveTable.open(self.lance, self.uri, self.lance_options, version)

    # --- driver ---
    def existing_job(self, overwrite: bool) -> dict[str, Any] | None:
        """_job.json from the metadata folder; refuses a folder or a table that is not an embedjob output."""
        if self.data.fs.exists(self.data.root):
            names = self.data.fs.ls(self.data.root, detail=False)
            others = sorted(posixpath.basename(n.rstrip("/")) for n in names)
            others = [n for n in others if n not in LANCE_NAMES]
            if others:
                raise OutputConflict(
                    f"output.uri: {self.uri} holds files a Lance output does not consist of "
                    f"({', '.join(repr(n) for n in others[:5])}); choose another folder"
                )
        existing = self.store.read_json(JOB_FILE)
        if existing is None and not overwrite:
            ds = self._dataset()
            if ds is not None and SCHEMA_KEY.encode() not in (ds.schema.metadata or {}):
                raise OutputConflict(
                    f"output.uri: {self.uri} is a Lance table no embedjob run wrote; "
                    "use --overwrite to replace it, or another output"
                )
            if ds is not None and not self.live:
                raise OutputConflict(
                    f"output.uri: {self.uri} is an embedjob Lance table without the metadata of a run; "
                    f"update it with --previous {self.uri}, or replace it with --overwrite"
                )
        return existing

    def resumes(self, existing: dict[str, Any], plan: Plan) -> bool:
        """A live update of another input is a new run over the table, not a resume of the last one."""
        return not self.live or existing.get("plan_fingerprint") == plan.fingerprint

    def prepare(self, existing: dict[str, Any] | None, job: dict[str, Any], overwrite: bool) -> None:
        """--overwrite: delete the table and its metadata. A new live update: check that the table's vectors
        come from the same settings, and drop the last run's metadata. Otherwise check that the job may resume."""
        if overwrite:
            fs, root = self.data.fs, self.data.root
            if fs.exists(root):
                for entry in fs.ls(root, detail=False):
                    if posixpath.basename(entry.rstrip("/")) != META_DIR:
                        fs.rm(entry, recursive=True)
            self.store.clear()  # the metadata folder, but this run's lease
        elif existing is not None:
            check_compatible(existing, job, self.uri)
        elif self.live:
            ds = self._dataset()
            made_with = LiveTable.job_of(ds) if ds is not None else None
            if made_with is not None and made_with.get("settings_fingerprint") != job["settings_fingerprint"]:
                raise OutputConflict(
                    f"output.uri: {self.uri}: the table's vectors were made with other model settings "
                    f"(model {made_with.get('model')!r}); a live table is updated only with the same ones. "
                    "Write a new table (another output.uri) and switch readers to it, or rebuild this one with "
                    "--overwrite"
                )
            self.store.clear()  # the last run's metadata, but this run's lease

    def on_write_start(self, existing: dict[str, Any] | None, job: dict[str, Any], plan: Plan) -> None:
        """_job.json (with the table version this run builds on), then _plan.parquet."""
        if existing is None:
            ds = self._dataset()
            job = {**job, "lance_base_version": ds.version if ds is not None else 0}
        self._job = existing or job
        super().on_write_start(existing, self._job, plan)

    def _finish(self, records: pa.Table, written: int) -> dict[str, Any]:
        """Commit the run's fragments (and deletions) as one version, check the row count, build indexes."""
        base = int(self._job.get("lance_base_version") or 0)
        run = {"run": self._job["plan_fingerprint"], "base_version": base}
        done = self._committed(run, base) or self._commit(records, run, base)
        ds = self._dataset()
        rows = ds.count_rows()
        if rows != written:
            raise OutputConflict(
                f"output.uri: {self.uri}: the table holds {rows} rows after version {done['version']}, "
                f"the manifest {written}"
            )
        if rows:
            self._build_indexes(ds, rows)
        return {"indexed": None, "lance_version": done["version"], "deleted_rows": done["deleted_rows"]}

    def _committed(self, run: dict[str, Any], base: int) -> dict[str, Any] | None:
        """This run's commit message, with its version, if the run already committed (a crash before
        _SUCCESS, or a commit whose answer was lost); None otherwise."""
        ds = self._dataset()
        if ds is None or ds.version <= base:
            return None
        for k, tx in enumerate(ds.get_transactions(ds.version - base)):  # newest first
            message = (tx.transaction_properties or {}).get(MESSAGE_KEY) if tx is not None else None
            if message and message.startswith("{"):
                found = json.loads(message)
                if found.get("run") == run["run"] and found.get("base_version") == base:
                    return {**found, "version": ds.version - k}
        return None

    def _commit(self, records: pa.Table, run: dict[str, Any], base: int) -> dict[str, Any]:
        """One version: Overwrite for a new table, Update (added fragments, deletions) for a live one."""
        lance = self.lance
        fragments = [
            lance.fragment.FragmentMetadata.from_json(json.dumps(f))
            for listed in records.column("fragments").to_pylist()
            if listed
            for f in json.loads(listed)
        ]
        dropped = 0
        if base:
            table = LiveTable(self.lance, self.uri, self.lance_options, base)
            removed, updated, dropped = table.deletions(self.store)
            op = lance.LanceOperation.Update(
                removed_fragment_ids=removed, updated_fragments=updated, new_fragments=fragments
            )
        else:
            schema = self._read_schema()
            job = {k: self._job.get(k) for k in ("settings_fingerprint", "weights_fingerprint")}
            job["model"] = self._job.get("model", {}).get("name")
            # The quantisation a later live update must reuse, in _job.json's shape (spec.model.*).
            model_spec = (self._job.get("spec") or {}).get("model") or {}
            job["spec"] = {"model": {k: model_spec.get(k) for k in ("precision", "int8_ranges")}}
            meta = {**(schema.metadata or {}), SCHEMA_KEY.encode(): json.dumps(job).encode()}
            op = lance.LanceOperation.Overwrite(schema.with_metadata(meta), fragments)
        message = {**run, "shards": records.num_rows, "deleted_rows": dropped}

        def commit() -> dict[str, Any]:
            done = self._committed(run, base)  # an attempt whose answer was lost may have landed
            if done is not None:
                return done
            latest = self._dataset()
            now = latest.version if latest is not None else 0
            if now != base:
                # Lance would land an Append or Overwrite on top of a newer version; this run's deletions
                # and its row count were worked out against `base`.
                raise OutputConflict(
                    f"output.uri: {self.uri}: the table moved from version {base} to {now} while this "
                    "run was writing (another writer); rerun to update it from its new state"
                )
            maybe_fail("storage.write", key=f"{self.uri}/_versions")
            ds = lance.LanceDataset.commit(
                self.uri,
                op,
                read_version=base,
                storage_options=self.lance_options or None,
                commit_message=json.dumps(message),
            )
            maybe_fail("storage.ack", key=f"{self.uri}/_versions")  # (tests) landed, but the answer is lost
            return {**message, "version": ds.version}

        return call_with_retries(commit, what=f"output {self.uri}: commit the run", policy=self.store.policy)

    def _read_schema(self) -> pa.Schema:
        """The shards' Arrow schema (a replica writes it before its first record)."""
        table = self.store.read_table(SCHEMA_FILE)
        if table is None:
            raise OutputConflict(f"output {self.store.path(SCHEMA_FILE)}: missing; rerun with --overwrite")
        return table.schema

    def _build_indexes(self, ds: Any, rows: int) -> None:
        """The scalar index on id and the vector index: built once, then brought up to date each run."""
        have = {tuple(d.field_names) for d in ds.describe_indices()}
        if self.id_index and ("id",) not in have:
            ds.create_scalar_index("id", "BTREE")
        if self.vector_index != "none" and ("embedding",) not in have:
            partitions = max(1, min(256, int(rows**0.5)))
            kwargs: dict[str, Any] = {"num_partitions": partitions, "metric": self.metric}
            if self.vector_index == "ivf_pq":
                width = ds.schema.field("embedding").type.list_size
                kwargs["num_sub_vectors"] = next(d for d in (16, 8, 4, 2, 1) if width % d == 0)
            ds.create_index("embedding", INDEX_TYPES[self.vector_index], **kwargs)
        elif have:
            ds.optimize.optimize_indices()  # adds the run's new rows to the existing indexes

    # --- replica ---
    def write_shard(
        self, shard: Shard, table: pa.Table, errors: pa.Table | None, counts: dict[str, Any]
    ) -> dict[str, Any]:
        """Errors file, the shard's fragments (in no version yet), then the record listing them."""
        errors_file = self.write_errors(shard, errors)
        self._write_schema(table.schema)
        fragments: list[Any] = []
        if table.num_rows:

            def write() -> list[Any]:
                maybe_fail(
                    "storage.write", key=f"{self.uri}/data", shard=shard.shard_id, shard_index=shard.index
                )
                return self.lance.fragment.write_fragments(
                    table, self.uri, schema=table.schema, storage_options=self.lance_options or None
                )

            what = f"shard {shard.shard_id}: write fragments to {self.uri}"
            fragments = call_with_retries(write, what=what, policy=self.store.policy)
        record = shard_record(shard, None, table, errors, errors_file, counts)
        # Rows left unchanged in the table are this shard's rows too.
        record["rows"] += counts.get("reused", 0) if self.keeps_unchanged else 0
        record["fragments"] = json.dumps([f.to_json() for f in fragments])
        return self.commit_record(record)

    def _write_schema(self, schema: pa.Schema) -> None:
        """The table's Arrow schema, for the run's commit (written by the first shard to find none)."""
        if not self.store.exists(SCHEMA_FILE):
            self.store.write_bytes(SCHEMA_FILE, parquet_bytes(schema.empty_table(), "zstd"))
