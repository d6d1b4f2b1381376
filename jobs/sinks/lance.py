"""The Lance sink: one Lance dataset (id, embedding, text_hash, passthrough columns), optionally indexed.

Commit sequence of a shard:
1. the replica writes the shard's rows as Lance fragments (data files no version refers to yet) and its
   quarantined rows to `_embedjob/_errors/<shard>.parquet`, and returns the fragments with its record;
2. the driver commits them as one Lance version whose commit message is the shard's record: the commit point.
   A shard's rows are in one committed version or in none;
3. the driver folds the records into `_embedjob/_manifest/` as the Parquet sink does.
A rerun takes the manifest plus the records in the messages of versions newer than it, so a crash between a
commit and its manifest record neither loses nor duplicates the shard. Fragments of a shard that was never
committed are files no version refers to: invisible to readers, and removed by Lance's cleanup.

The job's metadata (_job.json, _plan.parquet, manifest, _SUCCESS) lives in `<dataset>/_embedjob/`.
"""

from __future__ import annotations

import json
import posixpath
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from jobs.manifest import OutputConflict, OutputStore, records_to_table
from jobs.retry import RetryPolicy, call_with_retries
from jobs.shards import Shard
from jobs.sinks.parquet import ParquetSink, shard_record

META_DIR = "_embedjob"
MESSAGE_KEY = "__lance_commit_message"
# What a Lance dataset folder holds besides our metadata folder.
LANCE_NAMES = ("_versions", "_transactions", "_indices", "_deletions", "_refs", "data", META_DIR)
INDEX_TYPES = {"ivf_pq": "IVF_PQ", "ivf_hnsw_sq": "IVF_HNSW_SQ", "ivf_flat": "IVF_FLAT"}


def import_lance() -> Any:
    """The `lance` module, or an error saying what to install."""
    try:
        import lance
    except ImportError as e:
        raise ImportError(
            "output.format: lance needs the pylance package: pip install 'embedjob[lance]' (or pylance)"
        ) from e
    return lance


def lance_storage_options(options: dict[str, Any]) -> dict[str, str]:
    """fsspec/s3fs storage options as Lance's object-store options (credentials, endpoint, region)."""
    client = options.get("client_kwargs") or {}
    endpoint = options.get("endpoint_url") or client.get("endpoint_url")
    out = {
        "aws_access_key_id": options.get("key"),
        "aws_secret_access_key": options.get("secret"),
        "aws_session_token": options.get("token"),
        "aws_endpoint": endpoint,
        "aws_region": client.get("region_name") or options.get("region_name"),
    }
    if endpoint and endpoint.startswith("http://"):
        out["allow_http"] = "true"
    return {k: str(v) for k, v in out.items() if v}


def _max_version(records: pa.Table) -> int:
    """The newest Lance version the folded records name (0: none)."""
    if not records.num_rows:
        return 0
    return int(pc.max(records.column("lance_version")).as_py() or 0)


class LanceSink(ParquetSink):
    """A Lance dataset at the output URI; shards committed by the driver, one version each."""

    def __init__(
        self,
        uri: str,
        storage_options: dict[str, Any] | None = None,
        policy: RetryPolicy | None = None,
        vector_index: str = "none",
        id_index: bool = False,
        metric: str = "cosine",
    ):
        self.lance = import_lance()
        super().__init__(posixpath.join(uri.rstrip("/"), META_DIR), storage_options, policy)
        self.uri = uri
        self.dataset_store = OutputStore(uri, storage_options, policy)
        self.lance_options = lance_storage_options(storage_options or {})
        self.vector_index, self.id_index, self.metric = vector_index, id_index, metric
        self._version: int | None = None  # the latest version, followed commit by commit (see _read_version)

    def _read_version(self) -> int:
        """The version the next commit builds on (0: no dataset yet). Opened once, then followed commit by
        commit: the lease makes this run the table's only writer."""
        if self._version is None:
            ds = self._dataset()
            self._version = ds.version if ds is not None else 0
        return self._version

    def _dataset(self) -> Any | None:
        """The dataset at its latest version, or None when there is none yet (other errors propagate)."""
        try:
            return self.lance.dataset(self.uri, storage_options=self.lance_options or None)
        except ValueError as e:
            if "not found" in str(e).lower():
                return None
            raise

    # --- driver ---
    def existing_job(self, overwrite: bool) -> dict[str, Any] | None:
        """_job.json from the metadata folder; refuses a folder holding files a Lance output does not."""
        if self.dataset_store.fs.exists(self.dataset_store.root):
            names = self.dataset_store.fs.ls(self.dataset_store.root, detail=False)
            others = sorted(posixpath.basename(n.rstrip("/")) for n in names)
            others = [n for n in others if n not in LANCE_NAMES]
            if others:
                raise OutputConflict(
                    f"output.uri: {self.uri} holds files a Lance output does not consist of "
                    f"({', '.join(repr(n) for n in others[:5])}); choose another folder"
                )
        existing = self.store.read_json("_job.json")
        if existing is None and not overwrite and self._dataset() is not None:
            raise OutputConflict(
                f"output.uri: {self.uri} is a Lance dataset no embedjob run started; "
                "use --overwrite to replace it, or another output"
            )
        return existing

    def prepare(self, existing: dict[str, Any] | None, job: dict[str, Any], overwrite: bool) -> None:
        """--overwrite: delete the dataset and its metadata; otherwise check that the job may resume."""
        if overwrite:
            fs, root = self.dataset_store.fs, self.dataset_store.root
            if fs.exists(root):
                for entry in fs.ls(root, detail=False):
                    if posixpath.basename(entry.rstrip("/")) != META_DIR:
                        fs.rm(entry, recursive=True)
            self.store.clear()  # the metadata folder, but this run's lease
            self._version = None
        else:
            super().prepare(existing, job, overwrite)
            # Shards an earlier run committed but did not fold (it was killed): fold them now, so the manifest
            # covers every version before this run's first commit.
            self.store.fold(self._late(self.store.records_table()))

    def records(self) -> pa.Table:
        """The manifest plus the records of versions committed after it (a crash before they were folded)."""
        table = self.store.records_table()
        late = self._late(table)
        if late:
            table = pa.concat_tables([table, records_to_table(late)]).sort_by("index")
        return table

    def _late(self, folded: pa.Table) -> list[dict[str, Any]]:
        """Records of versions committed after the newest folded one, not folded themselves."""
        known = set(folded.column("shard_id").to_pylist())
        return [r for r in self._committed_messages(_max_version(folded)) if r["shard_id"] not in known]

    def _committed_messages(self, after: int = 0) -> list[dict[str, Any]]:
        """The shard records in the commit messages of the versions after `after`."""
        ds = self._dataset()
        if ds is None or ds.version <= after:
            return []
        out = []
        # Newest first: the k-th transaction made version ds.version - k.
        for k, tx in enumerate(ds.get_transactions(ds.version - after)):
            message = (tx.transaction_properties or {}).get(MESSAGE_KEY) if tx is not None else None
            if message and message.startswith("{"):
                record = json.loads(message)
                if "shard_id" in record:
                    out.append({**record, "lance_version": ds.version - k})
        return out

    def on_shard_written(self, record: dict[str, Any]) -> dict[str, Any]:
        """Commit the shard's fragments as one version (its record in the message), then fold as Parquet does."""
        if record.get("skipped"):
            return record
        fragments, schema = record.pop("_fragments"), record.pop("_schema")
        read_version = self._read_version()
        if not read_version and (self._received or self.store.committed_ids()):
            raise OutputConflict(
                f"output.uri: {self.uri}: the manifest lists shards but the Lance dataset is gone"
            )
        op = (
            self.lance.LanceOperation.Append(fragments)
            if read_version
            else self.lance.LanceOperation.Overwrite(schema, fragments)
        )
        attempts = 0

        def commit() -> int:
            nonlocal attempts
            attempts += 1
            if attempts > 1:
                # The last attempt may have committed before its answer was lost: never append twice.
                for r in self._committed_messages(read_version):
                    if r["shard_id"] == record["shard_id"]:
                        return r["lance_version"]
            return self.lance.LanceDataset.commit(
                self.uri,
                op,
                read_version=read_version,
                storage_options=self.lance_options or None,
                commit_message=json.dumps(record, default=str, sort_keys=True),
            ).version

        what = f"output {self.uri}: commit shard {record['shard_id']}"
        record["lance_version"] = self._version = call_with_retries(
            commit, what=what, policy=self.store.policy
        )
        return super().on_shard_written(record)

    def _fold_all(self) -> pa.Table:
        """Fold the records of versions no manifest file lists yet, then everything into manifest.parquet."""
        self.store.fold(self._late(self.store.records_table()))
        return self.store.fold_all()

    def _finish(self, records: pa.Table, written: int) -> dict[str, Any]:
        """Check the table's row count against the manifest, then build the asked-for indexes."""
        ds = self._dataset()
        rows = ds.count_rows() if ds is not None else 0
        if rows != written:
            raise OutputConflict(
                f"output.uri: {self.uri}: the table holds {rows} rows, the manifest {written}"
            )
        if rows:
            if self.id_index:
                ds.create_scalar_index("id", "BTREE", replace=True)
            if self.vector_index != "none":
                partitions = max(1, min(256, int(rows**0.5)))
                kwargs: dict[str, Any] = {"num_partitions": partitions, "metric": self.metric}
                if self.vector_index == "ivf_pq":
                    width = ds.schema.field("embedding").type.list_size
                    kwargs["num_sub_vectors"] = next(d for d in (16, 8, 4, 2, 1) if width % d == 0)
                ds.create_index("embedding", INDEX_TYPES[self.vector_index], replace=True, **kwargs)
        return {"indexed": None, "lance_version": self._dataset().version if rows else None}

    # --- replica ---
    def write_shard(
        self, shard: Shard, table: pa.Table, errors: pa.Table | None, counts: dict[str, Any]
    ) -> dict[str, Any]:
        """Errors file, then the shard's fragments (not yet in any version); the driver commits them."""
        errors_file = self.write_errors(shard, errors)

        def write() -> list[Any]:
            return self.lance.fragment.write_fragments(
                table, self.uri, schema=table.schema, storage_options=self.lance_options or None
            )

        what = f"shard {shard.shard_id}: write fragments to {self.uri}"
        fragments = call_with_retries(write, what=what, policy=self.store.policy)
        record = shard_record(shard, None, table, errors, errors_file, counts)
        return {**record, "_fragments": fragments, "_schema": table.schema}
