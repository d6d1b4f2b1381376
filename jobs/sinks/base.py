"""The sink lifecycle, after Ray Data's Datasink: one object owns how an output is started, how each shard
is committed exactly once, and how the output is completed or left after a failure.

Driver:  existing_job -> resumes -> prepare -> on_write_start -> on_shard_written (each) -> on_write_complete
                                                                               or on_write_failed
Replica: committed_record (skip a shard already in) -> write_shard (stage, commit, record)
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import pyarrow as pa

from jobs.shards import Plan, Shard


class Sink(ABC):
    """One job output. Nothing outside a sink knows how a shard is committed."""

    uri: str
    # True where unchanged rows stay in the output as they are (a live table), instead of being written again.
    keeps_unchanged = False

    # --- driver ---
    @abstractmethod
    def existing_job(self, overwrite: bool) -> dict[str, Any] | None:
        """The job metadata already in the output (None: a new output); refuses outputs it must not touch."""

    @abstractmethod
    def records(self) -> pa.Table:
        """Every committed shard's record, ordered by shard index: the only shards a rerun skips."""

    def resumes(self, existing: dict[str, Any], plan: Plan) -> bool:
        """Whether a run of `plan` continues the run whose job metadata is `existing` (else it starts anew)."""
        return True

    @abstractmethod
    def prepare(self, existing: dict[str, Any] | None, job: dict[str, Any], overwrite: bool) -> None:
        """Before any write: delete the old output (overwrite) or check that `job` may resume into it."""

    @abstractmethod
    def on_write_start(self, existing: dict[str, Any] | None, job: dict[str, Any], plan: Plan) -> None:
        """Write the job's metadata (model, settings, plan) before the first shard."""

    @abstractmethod
    def on_shard_written(self, record: dict[str, Any]) -> dict[str, Any]:
        """The driver received a replica's record: commit the shard if the replica did not, and return the
        record as committed."""

    @abstractmethod
    def on_write_complete(self, plan: Plan, summary: dict[str, Any]) -> dict[str, Any]:
        """Every shard is in: check each planned row is written or quarantined, write the success marker
        with the totals; returns the summary with the totals."""

    @abstractmethod
    def on_write_failed(self, error: BaseException) -> dict[str, Any]:
        """The job stopped: keep every committed shard findable by a rerun; returns what is in and what is left."""

    # --- replica ---
    @abstractmethod
    def committed_record(self, shard: Shard) -> dict[str, Any] | None:
        """The shard's record if it is already committed (a retry after a replica's death)."""

    @abstractmethod
    def write_shard(
        self, shard: Shard, table: pa.Table, errors: pa.Table | None, counts: dict[str, Any]
    ) -> dict[str, Any]:
        """Write one shard's rows (and its quarantined rows); returns its record. Committed when this returns,
        or when the driver's on_shard_written does, as the sink defines."""
