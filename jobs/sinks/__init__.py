"""Where a job's rows go, and the commit protocol that makes them trustworthy: `open_sink(spec)`."""

from __future__ import annotations

from jobs.manifest import OutputStore
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


def metadata_store(uri: str, storage_options: dict | None = None) -> OutputStore:
    """The folder holding an output's _job.json, plan and manifest: the output itself, or a Lance dataset's
    `_embedjob/` folder."""
    store = OutputStore(uri, storage_options)
    if uri.rstrip("/").endswith(".lance") or store.exists("_embedjob/_job.json"):
        return OutputStore(uri.rstrip("/") + "/_embedjob", storage_options)
    return store
