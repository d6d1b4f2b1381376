"""The unit of work (Shard) and the job's list of them (Plan), with the compact Parquet form of a plan."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from jobs.fingerprint import digest

PLAN_SCHEMA = pa.schema(
    [
        ("index", pa.int64()),
        ("shard_id", pa.string()),
        ("kind", pa.string()),
        ("source", pa.string()),
        ("path", pa.string()),
        ("start", pa.int64()),
        ("stop", pa.int64()),
        ("row_groups", pa.list_(pa.int32())),
        ("group_starts", pa.list_(pa.int64())),
        ("byte_start", pa.int64()),
        ("byte_stop", pa.int64()),
        ("read_schema", pa.string()),
    ]
)


@dataclass(frozen=True, slots=True)
class Shard:
    """A bounded row range of one input file (or of a dataset): the unit of work, retry and commit."""

    index: int
    shard_id: str
    kind: str  # "parquet" | "jsonl" | "json" (one array) | "csv" | "dataset"
    source: str  # path relative to the input root (or the dataset split), used for ids and messages
    path: str  # full path on the input filesystem, or "" (dataset)
    start: int  # first row (within the file or dataset)
    stop: int  # one past the last row
    row_groups: tuple[int, ...] = ()
    group_starts: tuple[int, ...] = ()  # first row of each of row_groups
    byte_start: int = 0  # jsonl, csv: the rows' bytes in the (decompressed) file
    byte_stop: int = 0
    read_schema: str = ""  # jsonl, json, csv: the columns' types, the same for all (formats.encode_schema)

    @property
    def rows(self) -> int:
        """How many input rows the shard covers."""
        return self.stop - self.start

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON and Ray."""
        return {name: getattr(self, name) for name in PLAN_SCHEMA.names}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Shard:
        """Inverse of to_dict."""
        return cls(**{**d, "row_groups": tuple(d["row_groups"]), "group_starts": tuple(d["group_starts"])})


@dataclass
class Plan:
    """The shards of a job, the input schema they share, and a fingerprint of both."""

    kind: str
    shards: list[Shard]
    schema: dict[str, str] = field(default_factory=dict)  # column -> Arrow type string
    files: int = 0

    @property
    def rows(self) -> int:
        """Total input rows."""
        return sum(s.rows for s in self.shards)

    @property
    def fingerprint(self) -> str:
        """Hash of the shard ids in order: a changed input gives a different plan."""
        return digest([s.shard_id for s in self.shards], self.schema, size=16)

    def to_table(self) -> pa.Table:
        """The compact form written to _plan.parquet: one row per shard, the rest in the schema metadata."""
        table = pa.Table.from_pylist([s.to_dict() for s in self.shards], schema=PLAN_SCHEMA)
        meta = {"kind": self.kind, "fingerprint": self.fingerprint, "rows": self.rows, "files": self.files}
        meta["schema"] = self.schema
        return table.replace_schema_metadata({"embedjob.plan": json.dumps(meta)})

    @classmethod
    def from_table(cls, table: pa.Table) -> Plan:
        """Inverse of to_table."""
        meta = json.loads(table.schema.metadata[b"embedjob.plan"])
        shards = [Shard.from_dict(d) for d in table.to_pylist()]
        return cls(meta["kind"], shards, meta.get("schema", {}), meta.get("files", 0))


def plan_summary(table: pa.Table) -> dict[str, Any]:
    """What _plan.parquet says without building Shard objects: kind, fingerprint, rows, files, shards."""
    meta = json.loads(table.schema.metadata[b"embedjob.plan"])
    return {**meta, "shards": table.num_rows}
