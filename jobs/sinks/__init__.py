"""Where a job's rows go, and the commit protocol that makes them trustworthy: `open_sink(spec)`."""

from __future__ import annotations

from jobs.manifest import JOB_FILE, META_DIR, PLAN_FILE, OutputStore
from jobs.retry import RetryPolicy
from jobs.sinks.base import Sink
from jobs.sinks.parquet import ParquetSink
from jobs.spec import JobSpec

__all__ = ["ParquetSink", "Sink", "metadata_store", "open_sink"]


def open_sink(spec: JobSpec, policy: RetryPolicy | None = None) -> Sink:
    """The sink of a job's output: Parquet part files, or a Lance dataset (output.format, or a .lance URI)."""
    o = spec.output
    if o.kind == "lance":
        from jobs.sinks.lance import LanceSink

        live = bool(spec.previous_uri) and spec.previous_uri.rstrip("/") == o.uri.rstrip("/")
        return LanceSink(o.uri, o.storage_options, policy, o.vector_index, o.id_index, live=live)
    return ParquetSink(o.uri, o.storage_options, policy, o.compression)


def metadata_store(
    uri: str, storage_options: dict | None = None, policy: RetryPolicy | None = None
) -> OutputStore:
    """The folder holding an output's _job.json, plan and manifest: its `.embedjob/` folder, or where an
    output written before it existed kept them (the output folder itself, a Lance table's `_embedjob/`)."""
    root = uri.rstrip("/")
    store = OutputStore(f"{root}/{META_DIR}", storage_options, policy)
    if store.exists(JOB_FILE) or store.exists(PLAN_FILE):
        return store
    for legacy in (f"{root}/_embedjob", root):
        old = OutputStore(legacy, storage_options, policy)
        if old.exists(JOB_FILE) or old.exists(PLAN_FILE):
            return old
    return store
