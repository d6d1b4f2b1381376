"""A live Lance table seen by a run that updates it: its id index, built from its fragments, and the deletion
of the rows the run replaces or finds gone.

The key pass joins this run's (id, match hash) with the table's (jobs.keypass), as it does with a previous
Parquet output: `part` is a fragment id and `row` the row's offset in the fragment. Rows whose id and match hash
(the text hash, with the passthrough values when the job has some) are unchanged stay; every other row of the
table is dropped, fragment by fragment, into deletion files that the run's one commit refers to.
"""

from __future__ import annotations

import json
import posixpath
from typing import Any

import numpy as np
import pyarrow as pa

from jobs.buckets import bucket_count, id_keys
from jobs.fingerprint import match_hashes
from jobs.index import INDEX_MAP, INDEX_SCHEMA, open_store, read_row_groups, store_args, write_bucketed
from jobs.keypass import DROP_SOURCES
from jobs.manifest import OutputStore
from jobs.tasks import groups_of_rows, run_tasks
from jobs.write import parquet_bytes

MESSAGE_KEY = "__lance_commit_message"
SCHEMA_KEY = "embedjob"  # the table's schema metadata: the settings its vectors were made with
ROWS_PER_TASK = 1_000_000  # table rows one index or deletion task reads


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


class LiveTable:
    """The Lance table a run updates, at the version the run builds on (the `previous` of a live update)."""

    live = True

    def __init__(self, lance: Any, uri: str, options: dict[str, str], version: int | None = None):
        self.lance, self.uri, self.options = lance, uri, options
        self.ds = self.open(lance, uri, options, version)
        if self.ds is None:
            raise FileNotFoundError(f"previous: no Lance table at {uri}")
        self.version = self.ds.version
        self.job = self.job_of(self.ds) or {}

    @staticmethod
    def open(lance: Any, uri: str, options: dict[str, str], version: int | None = None) -> Any | None:
        """The table at `version` (default: the latest), or None when there is none yet."""
        try:
            return lance.dataset(uri, version=version, storage_options=options or None)
        except ValueError as e:
            if "not found" in str(e).lower():
                return None
            raise

    @staticmethod
    def job_of(ds: Any) -> dict[str, Any] | None:
        """What the table's schema metadata says about its vectors (settings fingerprint, model)."""
        raw = (ds.schema.metadata or {}).get(SCHEMA_KEY.encode())
        return json.loads(raw) if raw else None

    def reusable(self, settings_fingerprint: str) -> bool:
        """Whether the table's vectors came from the same weights and settings."""
        return self.job.get("settings_fingerprint") == settings_fingerprint

    @property
    def rows(self) -> int:
        """Rows the table holds."""
        return self.ds.count_rows()

    def fragment_groups(self) -> list[list[int]]:
        """Fragment ids in groups of about ROWS_PER_TASK rows (counted from the manifest: no file is read)."""
        fragments = [(f.fragment_id, f.metadata.physical_rows) for f in self.ds.get_fragments()]
        return [[fid for fid, _ in g] for g in groups_of_rows(fragments, lambda f: f[1], ROWS_PER_TASK)]

    def build_index(self, target: OutputStore, target_dir: str, passthrough: list[str]) -> dict[str, Any]:
        """Write the table's (id, match hash, fragment, offset) under target/target_dir, bucketed by id."""
        target.remove_dir(target_dir)
        buckets = bucket_count(self.rows)
        table_args = (self.uri, self.options, self.version)
        calls = [
            (table_args, group, passthrough, store_args(target), target_dir, buckets, g)
            for g, group in enumerate(self.fragment_groups())
        ]
        files = sorted((rel, groups) for rows, rel, groups in run_tasks(_index_fragments, calls) if rows)
        bucket_map = pa.table(
            {"file": [f for f, _ in files], "groups": pa.array([g for _, g in files], pa.list_(pa.int32()))}
        )
        target.write_bytes(posixpath.join(target_dir, INDEX_MAP), parquet_bytes(bucket_map, "zstd"))
        return {"buckets": buckets}

    def deletions(self, store: OutputStore) -> tuple[list[int], list[Any], int]:
        """Delete the rows the key pass dropped: (fragment ids emptied, fragments with deletion files, rows)."""
        sources = store.read_json(DROP_SOURCES) or {}
        calls = [
            ((self.uri, self.options, self.version), store_args(store), [(f, rg) for f, rg in where])
            for where in sources.values()
        ]
        removed: list[int] = []
        updated: list[Any] = []
        dropped = 0
        for gone, changed, n in run_tasks(_delete_rows, calls):
            removed += gone
            updated += [self.lance.fragment.FragmentMetadata.from_json(j) for j in changed]
            dropped += n
        return removed, updated, dropped


def _index_fragments(
    table_args: tuple,
    fragment_ids: list[int],
    passthrough: list[str],
    target_args: tuple,
    target_dir: str,
    buckets: int,
    group: int,
) -> tuple[int, str, list[int]]:
    """Ray task: (id, match hash, fragment, offset) of some fragments, in one file with a row group per bucket."""
    lance = import_lance()
    uri, options, version = table_args
    ds = LiveTable.open(lance, uri, options, version)
    pieces = []
    for fid in fragment_ids:
        t = ds.get_fragment(fid).to_table(columns=["id", "text_hash", *passthrough], with_row_address=True)
        hashes = t.column("text_hash").to_pylist()
        pieces.append(
            pa.table(
                {
                    "id": id_keys(t.column("id")),
                    "text_hash": pa.array(match_hashes(hashes, t.select(passthrough)), pa.string()),
                    "part": pa.array(np.full(t.num_rows, fid, np.int32)),
                    # The physical offset in the fragment: the low 32 bits of the row address.
                    "row": pa.array(
                        (t.column("_rowaddr").to_numpy() & 0xFFFFFFFF).astype(np.int32), pa.int32()
                    ),
                },
                schema=INDEX_SCHEMA,
            )
        )
    rel = posixpath.join(target_dir, f"g={group:06d}.parquet")
    return write_bucketed(open_store(target_args), rel, pieces, buckets)


def _delete_rows(
    table_args: tuple, store_arg: tuple, sources: list[tuple[str, int]]
) -> tuple[list[int], list[str], int]:
    """Ray task: delete the dropped rows of some fragments; (emptied ids, updated fragment JSON, rows dropped)."""
    lance = import_lance()
    uri, options, version = table_args
    ds = LiveTable.open(lance, uri, options, version)
    drops = read_row_groups(open_store(store_arg), sources)
    if drops is None or not drops.num_rows:
        return [], [], 0
    part, row = drops.column("part").to_numpy(), drops.column("row").to_numpy()
    gone: list[int] = []
    changed: list[str] = []
    for fid in np.unique(part):
        addresses = (int(fid) << 32) + row[part == fid].astype(np.int64)
        meta = ds.get_fragment(int(fid)).delete(f"_rowaddr IN ({','.join(map(str, addresses.tolist()))})")
        if meta is None:
            gone.append(int(fid))
        else:
            changed.append(json.dumps(meta.to_json()))
    return gone, changed, int(drops.num_rows)
