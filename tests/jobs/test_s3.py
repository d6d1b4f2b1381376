"""s3fs against the loopback moto server: the storage behaviours the runner's commit protocol relies on."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest


def test_write_read_ls_roundtrip(s3_server):
    fs = s3_server.fs()
    base = s3_server.prefix(name="rw")
    fs.pipe(f"{base}/a/x.bin", b"hello")
    with fs.open(f"{base}/a/y.bin", "wb") as f:
        f.write(b"world" * 1000)
    assert fs.cat(f"{base}/a/x.bin") == b"hello"
    assert sorted(p.rsplit("/", 1)[1] for p in fs.ls(f"{base}/a")) == ["x.bin", "y.bin"]
    assert fs.size(f"{base}/a/y.bin") == 5000
    assert fs.find(f"{base}/missing") == []
    with pytest.raises(FileNotFoundError):
        fs.cat(f"{base}/a/nope.bin")


def test_mv_is_server_side_copy_then_delete(s3_server):
    fs = s3_server.fs()
    base = s3_server.prefix(name="mv")
    fs.pipe(f"{base}/_tmp/part.parquet", b"payload")
    fs.mv(f"{base}/_tmp/part.parquet", f"{base}/part.parquet")
    assert fs.cat(f"{base}/part.parquet") == b"payload"
    assert not fs.exists(f"{base}/_tmp/part.parquet")
    assert fs.find(f"{base}/_tmp") == []


def test_parquet_through_pyarrow_and_s3fs(s3_server):
    fs = s3_server.fs()
    base = s3_server.prefix(name="pq")
    table = pa.table({"id": [1, 2, 3], "text": ["a", "b", None]})
    with fs.open(f"{base}/in.parquet", "wb") as f:
        pq.write_table(table, f)
    with fs.open(f"{base}/in.parquet", "rb") as f:
        assert pq.read_table(f).equals(table)
    assert (
        pq.ParquetFile(
            f"{base}/in.parquet"[5:], filesystem=pa.fs.PyFileSystem(pa.fs.FSSpecHandler(fs))
        ).metadata.num_rows
        == 3
    )


def test_credentials_from_environment(s3_env):
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    base = s3_env.prefix(name="env")
    fs.pipe(f"{base}/x", b"1")
    assert fs.cat(f"{base}/x") == b"1"


def test_process_dying_mid_upload_leaves_no_object(s3_server):
    """A writer killed after flushing one multipart part leaves no object: S3 objects appear whole or not at all."""
    base = s3_server.prefix(name="abort")
    code = f"""
import os, s3fs
fs = s3fs.S3FileSystem(skip_instance_cache=True, **{s3_server.storage_options!r})
f = fs.open({base + "/big.bin"!r}, "wb", block_size=5 * 2**20)
f.write(b"x" * (6 * 2**20))
f.flush()
os._exit(1)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    assert proc.returncode == 1, proc.stderr.decode()[-2000:]
    fs = s3_server.fs()
    assert not fs.exists(f"{base}/big.bin")
    assert fs.find(base) == []


# --- jobs from s3:// to s3:// ---------------------------------------------------------------------------


def _s3_input(s3_server, jobio, n_files: int = 2, rows: int = 30) -> tuple[str, dict[str, str]]:
    """Parquet files under a fresh s3:// prefix; returns (prefix, {id: text})."""
    fs = s3_server.fs()
    base = s3_server.prefix(s3_server.buckets[0], "input")
    expected: dict[str, str] = {}
    for k in range(n_files):
        texts = jobio.corpus(rows, seed=k, prefix=f"f{k} ")
        ids = [f"doc-{k}-{i}" for i in range(rows)]
        expected.update(zip(ids, texts, strict=True))
        jobio.write_parquet(
            fs, f"{base}/part-{k}.parquet", pa.table({"id": ids, "text": texts}), row_group_size=10
        )
    return base, expected


def s3_job(s3_server, model: str, inp: str, out: str, **policy) -> dict:
    """A job spec reading and writing through s3fs with credentials and endpoint as storage options."""
    return {
        "model": model,
        "input": {"uri": inp, "id_column": "id", "storage_options": s3_server.storage_options},
        "output": {"uri": out, "rows_per_file": 20, "storage_options": s3_server.storage_options},
        "compute": {"replicas": 2, "batch_size": 8},
        "policy": {"retries": 3, **policy},
    }


@pytest.mark.slow
def test_job_s3_to_s3(s3_server, jobio, tiny_st_model, ray_session):
    from embedder import EmbeddingModel
    from jobs.run import run_job

    inp, expected = _s3_input(s3_server, jobio)
    out = s3_server.prefix(s3_server.buckets[1], "out")
    summary = run_job(s3_job(s3_server, tiny_st_model, inp, out), progress=False)
    assert summary["rows"] == summary["rows_written"] == len(expected) and summary["quarantined"] == 0

    fs = s3_server.fs()
    records, table = jobio.read_output(fs, out)
    ids = table.column("id").to_pylist()
    assert sorted(ids) == sorted(expected)  # every input row exactly once
    assert sum(r["rows"] for r in records) == len(expected)
    model = EmbeddingModel(tiny_st_model)
    want = model.encode([expected[i] for i in ids])
    np.testing.assert_allclose(np.array(table.column("embedding").to_pylist()), want, atol=1e-5)

    keys = {p[len(out) - len("s3://") + 1 :] for p in fs.find(out[5:])}
    assert {".embedjob/_SUCCESS", ".embedjob/_job.json", ".embedjob/_plan.parquet"} <= keys
    assert all(k.startswith(("part-", ".embedjob/")) for k in keys)  # no staging left on S3 (one PUT each)
    assert {k for k in keys if k.startswith("part-")} == {r["file"] for r in records}
    job = json.loads(fs.cat(f"{out}/.embedjob/_job.json"))
    assert job["spec"]["input"]["storage_options"]["secret"] == "***"

    # A rerun into the same output finds every shard committed and redoes nothing.
    again = run_job(s3_job(s3_server, tiny_st_model, inp, out), progress=False)
    assert again["skipped_shards"] == len(records) and again["tokens"] == 0  # nothing embedded again
    assert again["embedded"] == 0 and again["total"]["embedded"] == len(expected)  # all from the first run


@pytest.mark.slow
def test_nightly_on_s3_reuses_by_id_after_a_reexport(s3_server, jobio, tiny_st_model, ray_session):
    """The same rows exported again under new names and in 3 files instead of 2, one changed and one
    deleted: reuse by id through the id index on S3, with the key pass's files gone afterwards."""
    from jobs.run import run_job

    inp, expected = _s3_input(s3_server, jobio)
    fs = s3_server.fs()
    out1 = s3_server.prefix(s3_server.buckets[1], "night1")
    run_job(s3_job(s3_server, tiny_st_model, inp, out1), progress=False)
    assert fs.exists(f"{out1[5:]}/.embedjob/_index/_index.json")

    rows = dict(expected)
    changed, gone = sorted(rows)[7], sorted(rows)[40]
    rows[changed] = "a text that changed overnight"
    del rows[gone]
    inp2 = s3_server.prefix(s3_server.buckets[0], "export2")
    ids = sorted(rows, reverse=True)  # another order, other files, other names
    for k, part in enumerate((ids[:20], ids[20:45], ids[45:])):
        table = pa.table({"id": part, "text": [rows[i] for i in part]})
        jobio.write_parquet(fs, f"{inp2}/export-{k}.parquet", table, row_group_size=10)
    out2 = s3_server.prefix(s3_server.buckets[1], "night2")
    spec = {**s3_job(s3_server, tiny_st_model, inp2, out2), "previous": out1}
    summary = run_job(spec, progress=False)
    assert (summary["embedded"], summary["reused"], summary["deleted"]) == (1, len(rows) - 1, 1)
    _, table = jobio.read_output(fs, out2)
    assert sorted(table.column("id").to_pylist()) == sorted(rows)
    assert not fs.find(f"{out2[5:]}/.embedjob/_work")
    with fs.open(f"{out2[5:]}/.embedjob/_deleted/deleted-00000.parquet", "rb") as f:
        assert pq.read_table(f).column("id").to_pylist() == [gone]
