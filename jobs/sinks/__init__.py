"""Where a job's rows go, and the commit protocol that makes them trustworthy: `open_sink(spec)`."""

from __future__ import annotations

from jobs.retry import RetryPolicy
from jobs.sinks.base import Sink
from jobs.sinks.parquet import ParquetSink
from jobs.spec import JobSpec

__all__ = ["ParquetSink", "Sink", "open_sink"]


def open_sink(spec: JobSpec, policy: RetryPolicy | None = None) -> Sink:
    """The sink of a job's output: Parquet part files, or a Lance dataset (output.format, or a .lance URI)."""
    o = spec.output
    if o.kind == "lance":
        from jobs.sinks.lance import LanceSink

        return LanceSink(o.uri, o.storage_options, policy, o.vector_index, o.id_index)
    return ParquetSink(o.uri, o.storage_options, policy, o.compression)
