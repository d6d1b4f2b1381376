"""Fixtures for the runner's job tests: one shared local Ray, tiny models, input writers, an encode oracle."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest


@pytest.fixture(scope="session")
def oracle(tiny_st_model: str) -> Callable[..., np.ndarray]:
    """EmbeddingModel.encode of the tiny model in this process: what every job output must equal."""
    from embedder import EmbeddingModel

    model = EmbeddingModel(tiny_st_model, device="cpu")

    def encode(texts: list[str], **kwargs: Any) -> np.ndarray:
        return model.encode(texts, **kwargs)

    return encode


def write_files(
    folder: str, texts: list[str], *, files: int, row_group_size: int, extra: dict | None = None
) -> list[str]:
    """Split texts (ids doc-<i>) over `files` Parquet files with several row groups each; returns the paths."""
    os.makedirs(folder, exist_ok=True)
    paths = []
    per = -(-len(texts) // files)
    for k in range(files):
        lo, hi = k * per, min(len(texts), (k + 1) * per)
        cols = {"id": [f"doc-{i}" for i in range(lo, hi)], "text": texts[lo:hi]}
        for name, values in (extra or {}).items():
            cols[name] = values[lo:hi]
        path = os.path.join(folder, f"part-{k}.parquet")
        pq.write_table(pa.table(cols), path, row_group_size=row_group_size)
        paths.append(path)
    return paths


def job_spec(model_path: str, inp: str, out: str, **sections: Any) -> dict[str, Any]:
    """A job spec dict with small shards and one CPU per replica; `sections` update each section."""
    spec: dict[str, Any] = {
        "model": {"name": model_path},
        "input": {"uri": inp, "text_column": "text", "id_column": "id"},
        "output": {"uri": out, "rows_per_file": 25},
        "compute": {"cpus_per_replica": 1, "batch_size": 8, "replicas": 1},
        "policy": {"retries": 2},
    }
    for key, value in sections.items():
        if isinstance(value, dict):
            spec.setdefault(key, {}).update(value)
        else:
            spec[key] = value
    return spec


def read_job(out: str) -> tuple[list[dict[str, Any]], pa.Table]:
    """(manifest records, rows of the committed part files in shard order)."""
    from jobs.sinks import metadata_store

    store = metadata_store(out)
    records = store.records()
    tables = [pq.read_table(os.path.join(out, r["file"])) for r in records]
    return records, pa.concat_tables(tables)


def vectors(table: pa.Table) -> np.ndarray:
    """The embedding column as a (rows, dim) array."""
    col = table.column("embedding").combine_chunks()
    return col.flatten().to_numpy(zero_copy_only=False).reshape(len(col), col.type.list_size)


@pytest.fixture(scope="session")
def jobkit():
    """Helpers: write_files, job_spec, read_job, vectors."""
    import types

    return types.SimpleNamespace(
        write_files=write_files, job_spec=job_spec, read_job=read_job, vectors=vectors
    )
