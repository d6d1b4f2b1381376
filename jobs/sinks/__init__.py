"""Where a job's rows go, and the commit protocol that makes them trustworthy: `open_sink(spec)`."""

from __future__ import annotations

from jobs.retry import RetryPolicy
from jobs.sinks.base import Sink
from jobs.sinks.parquet import ParquetSink
from jobs.spec import JobSpec

__all__ = ["ParquetSink", "Sink", "open_sink"]


def open_sink(spec: JobSpec, policy: RetryPolicy | None = None) -> Sink:
    """The sink of a job's output (Parquet part files on any fsspec filesystem)."""
    return ParquetSink(spec.output.uri, spec.output.storage_options, policy, spec.output.compression)
