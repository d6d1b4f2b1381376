"""The output folder as the ecosystem's readers see it: the part files only, each carrying its provenance."""

from __future__ import annotations

import json
import os

import pyarrow.parquet as pq
import pytest

from jobs import run_job

pytestmark = pytest.mark.usefixtures("ray_session")


@pytest.fixture(scope="module")
def finished_output(tmp_path_factory, tiny_st_model, jobio):
    """A finished output with every kind of metadata: quarantined rows, deleted ids, an id index."""
    import pyarrow as pa

    tmp = tmp_path_factory.mktemp("layout")
    texts = jobio.corpus(60, seed=71)

    def write(folder, rows: dict[int, str | None]) -> str:
        os.makedirs(folder, exist_ok=True)
        table = pa.table({"id": [f"doc-{i}" for i in rows], "text": list(rows.values())})
        pq.write_table(table, os.path.join(folder, "in.parquet"), row_group_size=10)
        return str(folder)

    def spec(inp: str, out: str, **extra) -> dict:
        return {
            "model": {"name": tiny_st_model},
            "input": {"uri": inp, "text_column": "text", "id_column": "id"},
            "output": {"uri": out, "rows_per_file": 20},
            "compute": {"cpus_per_replica": 1, "batch_size": 8},
            "policy": {"on_bad_row": "quarantine"},
            **extra,
        }

    first = str(tmp / "first")
    run_job(spec(write(tmp / "in1", dict(enumerate(texts))), first), progress=False, keep_warm=True)
    rows: dict[int, str | None] = {i: texts[i] for i in range(5, 60)}
    rows[7] = None  # quarantined
    out = str(tmp / "out")
    summary = run_job(spec(write(tmp / "in2", rows), out, previous=first), progress=False, keep_warm=True)
    assert summary["rows_written"] == 54 and summary["quarantined"] == 1 and summary["deleted"] == 5
    return out, sorted(f"doc-{i}" for i in rows if rows[i] is not None)


def test_hugging_face_datasets_reads_the_folder_as_it_is(finished_output, tmp_path):
    import datasets

    out, ids = finished_output
    for ds in (
        datasets.load_dataset("parquet", data_dir=out, split="train", cache_dir=str(tmp_path / "a")),
        datasets.load_dataset(out, split="train", cache_dir=str(tmp_path / "b")),
    ):
        assert sorted(ds["id"]) == ids and ds.column_names == ["id", "embedding", "text_hash"]


def test_pyarrow_pandas_polars_and_duckdb_read_the_folder_as_it_is(finished_output):
    import pandas as pd
    import pyarrow.dataset as pads

    out, ids = finished_output
    assert sorted(pads.dataset(out).to_table().column("id").to_pylist()) == ids
    assert sorted(pd.read_parquet(out)["id"]) == ids
    polars = pytest.importorskip("polars")
    # Polars lists every file under a folder, hidden ones too: a glob, as for any Spark or Hadoop output.
    assert sorted(polars.read_parquet(f"{out}/*.parquet")["id"].to_list()) == ids
    duckdb = pytest.importorskip("duckdb")
    got = duckdb.sql(f"SELECT id FROM read_parquet('{out}/*.parquet')").fetchall()
    assert sorted(r[0] for r in got) == ids


def test_every_part_file_names_its_model_and_settings(finished_output):
    out, _ = finished_output
    job = json.load(open(os.path.join(out, ".embedjob", "_job.json")))
    # The replicas' describe(): whether token batching skipped padding (a tiny BERT: packed).
    assert (job["model"]["pipeline"]["packed"], job["model"]["pipeline"]["packed_reason"]) == (True, None)
    parts = sorted(n for n in os.listdir(out) if n.endswith(".parquet"))
    assert parts and sorted(os.listdir(out)) == [".embedjob", *parts]
    for name in parts:
        meta = json.loads(pq.read_schema(os.path.join(out, name)).metadata[b"embedjob"])
        assert meta["settings_fingerprint"] == job["settings_fingerprint"]
        assert meta["weights_fingerprint"] == job["weights_fingerprint"]
        assert (
            meta["model"] == job["spec"]["model"]["name"] and meta["dimension"] == job["model"]["dimension"]
        )
