"""Quantised job outputs: int8/uint8 ranges calibrated once per output and kept by resumes and reruns."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from embedder.quantize import quantize_embeddings
from jobs import run_job
from jobs.manifest import OutputStore
from jobs.spec import JobSpec, SpecError

pytestmark = pytest.mark.usefixtures("ray_session")


def job_of(out: str) -> dict:
    return json.load(open(os.path.join(out, ".embedjob", "_job.json")))


@pytest.mark.parametrize("precision", ["int8", "uint8"])
def test_an_int8_job_calibrates_its_ranges_once_and_keeps_them(
    tmp_path, tiny_st_model, jobio, jobkit, oracle, precision
):
    """The ranges come from a sample of the input, are stored in _job.json, quantise every shard (the vectors
    equal float32 vectors quantised with them), and a redone shard and a --previous run use the same ones."""
    texts = jobio.corpus(120, seed=61)
    jobkit.write_files(str(tmp_path / "in"), texts, files=2, row_group_size=20)
    out = str(tmp_path / "out")
    spec = jobkit.job_spec(tiny_st_model, str(tmp_path / "in"), out, model={"precision": precision})
    run_job(spec, progress=False, keep_warm=True)
    job = job_of(out)
    ranges = np.asarray(job["spec"]["model"]["int8_ranges"], np.float32)
    assert job["model"]["int8_calibration"]["from"] == "input sample"
    assert ranges.shape == (2, job["model"]["dimension"]) and (ranges[1] > ranges[0]).all()
    records, table = jobkit.read_job(out)
    ids = table.column("id").to_pylist()
    want = quantize_embeddings(oracle([texts[int(i.split("-")[1])] for i in ids]), precision, ranges=ranges)
    got = jobkit.vectors(table)
    assert got.dtype == want.dtype and np.abs(got.astype(int) - want.astype(int)).max() <= 1

    # A shard redone after a crash quantises with the stored ranges: the same bytes as before.
    store = OutputStore(os.path.join(out, ".embedjob"))
    store.fold_all()
    os.remove(os.path.join(out, ".embedjob", "_SUCCESS"))
    first_part = records[0]["file"]
    before = jobkit.vectors(jobkit.read_job(out)[1])
    table0 = store.records_table()
    store.remove(["_manifest/manifest.parquet"])
    store.fold([r for r in table0.to_pylist() if r["file"] != first_part])
    again = run_job(spec, progress=False, keep_warm=True)
    assert again["skipped_shards"] == again["shards"] - 1
    assert np.array_equal(jobkit.vectors(jobkit.read_job(out)[1]), before)

    # A --previous run takes the previous output's ranges, so its unchanged vectors are reused.
    texts[0] = "a changed first text about a boat"
    jobkit.write_files(str(tmp_path / "in2"), texts, files=3, row_group_size=20)
    spec2 = jobkit.job_spec(
        tiny_st_model,
        str(tmp_path / "in2"),
        str(tmp_path / "out2"),
        model={"precision": precision},
        previous=out,
    )
    summary = run_job(spec2, progress=False, keep_warm=True)
    assert (summary["embedded"], summary["reused"]) == (1, 119)
    assert job_of(str(tmp_path / "out2"))["model"]["int8_calibration"] == {"from": "previous"}
    assert job_of(str(tmp_path / "out2"))["spec"]["model"]["int8_ranges"] == ranges.tolist()


def test_given_int8_ranges_are_used_as_they_are(tmp_path, tiny_st_model, jobio, jobkit, oracle):
    texts = jobio.corpus(30, seed=62)
    jobkit.write_files(str(tmp_path / "in"), texts, files=1, row_group_size=10)
    dim = oracle(["x"]).shape[1]
    ranges = [[-0.5] * dim, [0.5] * dim]
    out = str(tmp_path / "out")
    model = {"precision": "int8", "int8_ranges": ranges}
    run_job(
        jobkit.job_spec(tiny_st_model, str(tmp_path / "in"), out, model=model), progress=False, keep_warm=True
    )
    assert "int8_calibration" not in job_of(out)["model"]
    table = jobkit.read_job(out)[1]
    want = quantize_embeddings(oracle([texts[int(i.split("-")[1])] for i in table.column("id").to_pylist()]),
                               "int8", ranges=np.asarray(ranges))  # fmt: skip
    assert np.abs(jobkit.vectors(table).astype(int) - want.astype(int)).max() <= 1


def test_int8_ranges_are_checked():
    base = {"model": "m", "input": {"uri": "in.parquet"}, "output": {"uri": "out"}}
    with pytest.raises(SpecError, match="model.int8_ranges: expected"):
        JobSpec.from_dict({**base, "model": {"name": "m", "precision": "int8", "int8_ranges": [[0.0, 1.0]]}})
    with pytest.raises(SpecError, match="used by precision int8 or uint8 only"):
        JobSpec.from_dict({**base, "model": {"name": "m", "int8_ranges": [[0.0], [1.0]]}})


def test_a_live_lance_table_keeps_its_int8_ranges(tmp_path, tiny_st_model, jobio, jobkit):
    """The second nightly update of an int8 Lance table quantises with the ranges the table was made with."""
    pytest.importorskip("lance")
    texts = jobio.corpus(40, seed=63)
    out = str(tmp_path / "live.lance")
    model = {"precision": "int8"}
    jobkit.write_files(str(tmp_path / "in1"), texts, files=1, row_group_size=20)
    run_job(jobkit.job_spec(tiny_st_model, str(tmp_path / "in1"), out, model=model, previous=out),
            progress=False, keep_warm=True)  # fmt: skip
    first = json.load(open(os.path.join(out, ".embedjob", "_job.json")))["spec"]["model"]["int8_ranges"]
    texts[0] = "a changed text about a boat"
    jobkit.write_files(str(tmp_path / "in2"), texts, files=1, row_group_size=20)
    summary = run_job(jobkit.job_spec(tiny_st_model, str(tmp_path / "in2"), out, model=model, previous=out),
                      progress=False, keep_warm=True)  # fmt: skip
    job = json.load(open(os.path.join(out, ".embedjob", "_job.json")))
    assert (summary["embedded"], summary["reused"]) == (1, 39)
    assert (
        job["model"]["int8_calibration"] == {"from": "previous"}
        and job["spec"]["model"]["int8_ranges"] == first
    )
