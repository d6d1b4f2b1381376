"""s3fs against the loopback moto server: the storage behaviours the runner's commit protocol relies on."""

from __future__ import annotations

import subprocess
import sys

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
