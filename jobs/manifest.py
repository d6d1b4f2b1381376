"""The output folder's metadata: _job.json, _plan.parquet, the manifest, _SUCCESS; readers trust only these.

The manifest is one record per committed shard. A replica commits a shard by writing its record as
_manifest/<shard>.json; the driver folds the records it has received into Parquet segments at intervals
(_manifest/segment-*.parquet) and into one _manifest/manifest.parquet at the end, deleting the folded JSON
files. A reader takes the Parquet files plus the JSON tail, one record per shard id, so 100,000 shards cost
a few Parquet reads, not 100,000 GETs.
"""

from __future__ import annotations

import io
import json
import platform
import posixpath
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from jobs.fingerprint import VECTOR_FIELDS, digest
from jobs.redact import redact
from jobs.retry import RetryPolicy
from jobs.write import create_atomic, open_output_fs, retried, write_atomic

if TYPE_CHECKING:
    from jobs.shards import Plan
    from jobs.spec import JobSpec

# An output's metadata folder: hidden, so that readers of a folder of Parquet files (datasets.load_dataset,
# pyarrow.dataset, pandas, Polars, DuckDB) see the part files only. Every name below lives in it.
META_DIR = ".embedjob"
JOB_FILE = "_job.json"
PLAN_FILE = "_plan.parquet"
MANIFEST_DIR = "_manifest"
MANIFEST_FILE = f"{MANIFEST_DIR}/manifest.parquet"
ERRORS_DIR = "_errors"
DELETED_DIR = "_deleted"
SUCCESS_FILE = "_SUCCESS"

_PACKAGES = (
    "embedjob",
    "torch",
    "transformers",
    "tokenizers",
    "ray",
    "pyarrow",
    "datasets",
    "fsspec",
    "numpy",
)
# One committed shard. Types are fixed so that segments written at different times concatenate.
RECORD_SCHEMA = pa.schema(
    [
        ("shard_id", pa.string()),
        ("index", pa.int64()),
        ("file", pa.string()),
        ("source", pa.string()),
        ("start", pa.int64()),
        ("stop", pa.int64()),
        ("rows_in", pa.int64()),
        ("rows", pa.int64()),
        ("embedded", pa.int64()),
        ("reused", pa.int64()),
        ("quarantined", pa.int64()),
        ("errors_file", pa.string()),
        ("text_hash_digest", pa.string()),
        ("tokens", pa.int64()),
        ("seconds", pa.float64()),
        ("committed_at", pa.float64()),
        ("fragments", pa.string()),  # Lance outputs: the shard's fragments (JSON), committed with the run
        # Chunking: input rows written (each may give several output rows), window rows among the output
        # rows, and previous rows of changed documents not carried on; without it, texts cut at the limit.
        ("documents", pa.int64()),
        ("chunks", pa.int64()),
        ("deleted", pa.int64()),
        ("truncated", pa.int64()),
    ]
)
TAIL_READERS = 16  # JSON records of the tail read at once

# What must agree between an output's _job.json and a new run for the run to resume into it.
COMPATIBILITY_KEYS = ("weights_fingerprint", "settings_fingerprint", "spec_fingerprint", "plan_fingerprint")


class OutputConflict(RuntimeError):
    """The output already holds a different job (model, spec or input); names what differs."""


def part_name(index: int, shard_id: str) -> str:
    """The deterministic final name of a shard's data file."""
    return f"part-{index:05d}-{shard_id}.parquet"


def _json_bytes(obj: Any) -> bytes:
    """How an output's JSON files are written (stable key order, readable)."""
    return json.dumps(obj, indent=2, sort_keys=True, default=str).encode("utf-8")


class OutputStore:
    """One output folder on any fsspec filesystem, with retried reads and atomic writes."""

    def __init__(
        self, uri: str, storage_options: dict[str, Any] | None = None, policy: RetryPolicy | None = None
    ):
        self.uri = uri
        self.storage_options = storage_options or {}
        self.policy = policy or RetryPolicy()
        self.fs, self.root = open_output_fs(uri, self.storage_options)

    def path(self, rel: str) -> str:
        """Full path of a file inside the output."""
        return posixpath.join(self.root, rel)

    def read_json(self, rel: str) -> dict[str, Any] | None:
        """A JSON file of the output, or None when it does not exist."""
        path = self.path(rel)

        def read() -> dict[str, Any] | None:
            try:
                with self.fs.open(path, "rb") as f:
                    data = f.read()
            except FileNotFoundError:
                return None
            try:
                return json.loads(data.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise ValueError(f"output {path}: invalid JSON ({e})") from e

        return retried(read, f"output {path}: read", self.policy, key=path)

    def write_json(self, rel: str, obj: Any) -> None:
        """Write a JSON file atomically (staged, then moved)."""
        write_atomic(self.fs, self.root, rel, _json_bytes(obj), self.policy, f"output {self.uri}")

    def create_json(self, rel: str, obj: Any) -> bool:
        """Write a JSON file only if it does not exist yet; False when another writer created it first."""
        return create_atomic(self.fs, self.root, rel, _json_bytes(obj), self.policy, f"output {self.uri}")

    def exists(self, rel: str) -> bool:
        """Whether a file exists in the output."""
        path = self.path(rel)
        return retried(lambda: self.fs.exists(path), f"output {path}: exists", self.policy, key=path)

    def record_name(self, shard_id: str) -> str:
        """The manifest record of a shard."""
        return f"{MANIFEST_DIR}/{shard_id}.json"

    def _manifest_names(self) -> list[str]:
        folder = self.path(MANIFEST_DIR)

        def ls() -> list[str]:
            try:
                return self.fs.ls(folder, detail=False)
            except FileNotFoundError:
                return []

        self.fs.invalidate_cache(folder)
        return sorted(retried(ls, f"output {folder}: list", self.policy, key=folder))

    def read_table(self, rel: str, columns: list[str] | None = None) -> pa.Table | None:
        """A Parquet file of the output (whole, or some columns), or None when it does not exist."""
        path = self.path(rel)

        def read() -> pa.Table | None:
            try:
                with self.fs.open(path, "rb") as f:
                    return pq.read_table(f, columns=columns)
            except FileNotFoundError:
                return None

        return retried(read, f"output {path}: read", self.policy, key=path)

    def records_table(self) -> pa.Table:
        """Every manifest record (folded Parquet plus the JSON tail), one per shard id, ordered by shard index."""
        names = self._manifest_names()
        tables = []
        for name in names:
            if name.endswith(".parquet"):
                t = self.read_table(posixpath.relpath(name, self.root))
                if t is not None:
                    tables.append(_as_records(t))
        tail = [posixpath.relpath(n, self.root) for n in names if n.endswith(".json")]
        if tail:
            with ThreadPoolExecutor(min(TAIL_READERS, len(tail))) as pool:
                found = [r for r in pool.map(self.read_json, tail) if r is not None]
            if found:
                tables.append(records_to_table(found))
        if not tables:
            return RECORD_SCHEMA.empty_table()
        table = pa.concat_tables(tables)
        # A crash between writing a segment and deleting its JSON files leaves a record twice.
        ids = table.column("shard_id").to_pylist()
        if len(set(ids)) != len(ids):
            seen: set[str] = set()
            keep = [k for k, sid in enumerate(ids) if not (sid in seen or seen.add(sid))]
            table = table.take(pa.array(keep, pa.int64()))
        return table.sort_by("index")

    def committed_ids(self) -> set[str]:
        """Ids of the shards whose manifest record exists: the only shards a rerun trusts."""
        return set(self.records_table().column("shard_id").to_pylist())

    def records(self) -> list[dict[str, Any]]:
        """All manifest records as dicts, ordered by shard index (small outputs and tests; see records_table)."""
        return self.records_table().to_pylist()

    def fold(self, records: list[dict[str, Any]]) -> None:
        """Fold received records into a new Parquet segment, then delete their JSON files."""
        if not records:
            return
        name = f"{MANIFEST_DIR}/segment-{int(time.time()):010d}-{uuid.uuid4().hex[:8]}.parquet"
        self.write_bytes(name, table_bytes(records_to_table(records)))
        self.remove([self.record_name(r["shard_id"]) for r in records])

    def fold_all(self) -> pa.Table:
        """Rewrite the whole manifest as one manifest.parquet (segments and JSON tail removed); returns it."""
        names = self._manifest_names()
        table = self.records_table()
        self.write_bytes(MANIFEST_FILE, table_bytes(table))
        final = self.path(MANIFEST_FILE)
        self.remove([posixpath.relpath(n, self.root) for n in names if n != final])
        return table

    def write_bytes(self, rel: str, data: bytes) -> None:
        """Write a file atomically (staged, then moved)."""
        write_atomic(self.fs, self.root, rel, data, self.policy, f"output {self.uri}")

    def remove(self, rels: list[str]) -> None:
        """Delete files of the output (missing ones are fine); batched, since object stores delete in bulk."""
        if not rels:
            return
        paths = [self.path(r) for r in rels]

        def rm() -> None:
            try:
                self.fs.rm(paths)
            except FileNotFoundError:
                for p in paths:
                    if self.fs.exists(p):
                        self.fs.rm(p)

        retried(rm, f"output {self.uri}: delete {len(paths)} files", self.policy, key=paths[0])

    def remove_dir(self, rel: str) -> None:
        """Delete a folder of the output and all it holds, if it exists."""
        path = self.path(rel)
        self.fs.invalidate_cache(path)
        if self.fs.exists(path):
            self.fs.rm(path, recursive=True)

    def is_empty(self) -> bool:
        """Whether the output folder has no files at all."""
        if not self.fs.exists(self.root):
            return True
        return not self.fs.ls(self.root, detail=False)

    def foreign(self) -> list[str]:
        """Names in the output folder that an embedjob output does not consist of (never deleted)."""
        if not self.fs.exists(self.root):
            return []
        names = [posixpath.basename(n.rstrip("/")) for n in self.fs.ls(self.root, detail=False)]
        return sorted(n for n in names if not is_owned(n))

    def refuse_foreign(self) -> None:
        """Raise OutputConflict naming the files the output folder holds that no embedjob output writes."""
        others = self.foreign()
        if others:
            shown = ", ".join(repr(n) for n in others[:5]) + (
                f" and {len(others) - 5} more" if len(others) > 5 else ""
            )
            raise OutputConflict(
                f"output.uri: {self.uri} holds files an embedjob output does not consist of ({shown}); "
                "--overwrite deletes only an output's own files: choose an empty folder, or remove them yourself"
            )

    def clear(self, keep: tuple[str, ...] = ("_lease.json",)) -> None:
        """Delete what an embedjob output consists of (for --overwrite) but the names in `keep` (this run's
        lease); refuses when anything else is there."""
        self.refuse_foreign()
        if self.fs.exists(self.root):
            for entry in self.fs.ls(self.root, detail=False):
                if posixpath.basename(entry.rstrip("/")) not in keep:
                    self.fs.rm(entry, recursive=True)

    def remove_tmp(self) -> None:
        """Drop staging leftovers of killed runs (hidden `.*.tmp` files beside their final names; never read)."""
        if not self.fs.exists(self.root):
            return
        names = self.fs.ls(self.root, detail=False)
        self.remove([posixpath.basename(n) for n in names if is_staged(posixpath.basename(n))])
        self.remove_dir("_tmp")  # where outputs written before 0.2 staged


# What an output consists of: its metadata folder, its part files "part-*.parquet", staging leftovers, and
# the "_"-prefixed metadata of outputs written before the metadata folder existed.


def is_owned(name: str) -> bool:
    """Whether a top-level name of an output folder is one an embedjob output writes."""
    if name.startswith("part-"):
        return name.endswith(".parquet")
    return name == META_DIR or name.startswith("_") or is_staged(name)


def is_staged(name: str) -> bool:
    """A file staged by write_atomic (local disk) before its rename."""
    return name.startswith(".") and name.endswith(".tmp")


def _as_records(table: pa.Table) -> pa.Table:
    """A folded manifest segment in RECORD_SCHEMA; columns added since it was written read as null."""
    for name in RECORD_SCHEMA.names:
        if name not in table.column_names:
            table = table.append_column(name, pa.nulls(table.num_rows, RECORD_SCHEMA.field(name).type))
    return table.select(RECORD_SCHEMA.names).cast(RECORD_SCHEMA)


def records_to_table(records: list[dict[str, Any]]) -> pa.Table:
    """Manifest records (dicts) as a table of RECORD_SCHEMA; fields outside it are dropped."""
    return pa.Table.from_pylist(
        [{k: r.get(k) for k in RECORD_SCHEMA.names} for r in records], schema=RECORD_SCHEMA
    )


def table_bytes(table: pa.Table) -> bytes:
    """A small metadata table as Parquet bytes."""
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue()


def check_compatible(existing: dict[str, Any], job: dict[str, Any], uri: str) -> None:
    """Refuse to resume into an output that another model, spec or input plan started."""
    what = {
        "weights_fingerprint": "other model weights",
        "settings_fingerprint": "other embedding settings",
        "spec_fingerprint": "another job spec (input, output or policy)",
        "plan_fingerprint": "another input plan (files, sizes or row ranges changed)",
    }
    for key in COMPATIBILITY_KEYS:
        if existing.get(key) != job.get(key):
            fields = differing_fields(existing.get("spec") or {}, job.get("spec") or {})
            if key == "settings_fingerprint":
                fields = [f for f in fields if f[0] in VECTOR_FIELDS]
            elif key == "spec_fingerprint":
                fields = [f for f in fields if f[0] not in VECTOR_FIELDS and not f[0].startswith("compute.")]
            if key != "plan_fingerprint" and fields:
                shown = "; ".join(f"{f}: {a!r} then, {b!r} now" for f, a, b in fields[:5])
            else:
                shown = f"{key}: existing {existing.get(key)!r}, this run {job.get(key)!r}"
            raise OutputConflict(
                f"output.uri: {uri} already holds a job made with {what[key]} ({shown}); "
                "use another output, or --overwrite to delete it and start again"
            )


def differing_fields(
    old: dict[str, Any], new: dict[str, Any], prefix: str = ""
) -> list[tuple[str, Any, Any]]:
    """(dotted field, old value, new value) of every spec field that differs between two spec dicts."""
    out: list[tuple[str, Any, Any]] = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict) and key != "model_kwargs":
            out += differing_fields(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append((f"{prefix}{key}", a, b))
    return out


def spec_fingerprint(spec: JobSpec) -> str:
    """Hash of the spec fields that shape an output (model settings are covered by the settings fingerprint)."""
    d = spec.to_dict()
    inp = {k: v for k, v in d["input"].items() if k != "storage_options"}
    out = {k: d["output"][k] for k in ("rows_per_file", "compression")}
    return digest(inp, out, spec.previous_uri, d["policy"]["on_bad_row"], size=16)


def package_versions() -> dict[str, str | None]:
    """Versions of the packages that shape the vectors and the files."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def job_metadata(spec: JobSpec, plan: Plan, info: dict[str, Any]) -> dict[str, Any]:
    """The content of _job.json."""
    m = spec.model
    return {
        "model": {
            "name": m.name,
            "path": info["model_path"],
            "revision": m.revision,
            "dimension": info["dimension"],
            "model_dimension": info["model_dimension"],
            "dtype": info["dtype"],
            "precision": m.precision,
            "normalize": m.normalize,
            "prompt_name": m.prompt_name,
            "prompt": m.prompt,
            "task": m.task,
            "truncate_dim": m.truncate_dim,
            "max_seq_length": info["max_seq_length"],
            "similarity_fn_name": info["similarity_fn_name"],
            "pipeline": info["describe"],
        },
        "weights_fingerprint": info["weights_fingerprint"],
        "settings_fingerprint": info["settings_fingerprint"],
        "spec_fingerprint": spec_fingerprint(spec),
        "plan_fingerprint": plan.fingerprint,
        "rows": plan.rows,
        "shards": len(plan.shards),
        "versions": package_versions(),
        "spec": redact(spec.to_dict()),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
