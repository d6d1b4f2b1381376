"""Metadata at scale, on a real S3 endpoint (moto's server on loopback) and on local disk:

- planning many input files: time with footers read concurrently against one at a time, and the planner's
  memory per input file and per planned shard (tracemalloc), and the size of _plan.parquet per shard;
- an output with 100,000 shard records: `status`, the resume set and the end-of-job check, with the records
  folded into Parquet segments (as the driver leaves them) plus a JSON tail.

    .venv/bin/python -m bench.metadata_scale --files 2000 --local-files 10000 --records 100000
"""

from __future__ import annotations

import argparse
import io
import os
import socket
import subprocess
import sys
import tempfile
import time
import tracemalloc
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa
import pyarrow.parquet as pq

from bench.scale import cpu_name

KEY, SECRET, REGION = "bench", "bench-secret", "us-east-1"


def start_moto() -> tuple[subprocess.Popen, str]:
    """moto's S3 server on a free loopback port; the caller stops it by its PID."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1).close()
            return proc, endpoint
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise SystemExit("moto server did not start") from None
            time.sleep(0.1)


def small_file(rows_per_group: int, groups: int) -> bytes:
    """One Parquet file of `groups` row groups (string ids and texts)."""
    n = rows_per_group * groups
    table = pa.table({"id": [f"d{i}" for i in range(n)], "text": [f"text {i}" for i in range(n)]})
    sink = io.BytesIO()
    pq.write_table(table, sink, row_group_size=rows_per_group)
    return sink.getvalue()


def spec_for(uri: str, options: dict, out: str):
    from jobs.spec import JobSpec

    return JobSpec.from_dict(
        {
            "model": {"name": "unused"},
            "input": {"uri": uri, "text_column": "text", "id_column": "id", "storage_options": options},
            "output": {"uri": out, "rows_per_file": 10},
        }
    )


def time_plan(spec, readers: int) -> tuple[float, object]:
    import jobs.plan

    jobs.plan.FOOTER_READERS = readers
    started = time.perf_counter()
    plan = jobs.plan.plan_job(spec)
    return time.perf_counter() - started, plan


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--files", type=int, default=2000, help="input files on S3")
    p.add_argument("--local-files", type=int, default=10000, help="input files on local disk")
    p.add_argument("--records", type=int, default=100_000, help="shard records of the S3 output")
    a = p.parse_args(argv)
    import s3fs

    proc, endpoint = start_moto()
    try:
        options = {
            "key": KEY,
            "secret": SECRET,
            "client_kwargs": {"endpoint_url": endpoint, "region_name": REGION},
        }
        fs = s3fs.S3FileSystem(**options)
        import boto3

        boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name=REGION,
            aws_access_key_id=KEY,
            aws_secret_access_key=SECRET,
        ).create_bucket(Bucket="bench")
        data = small_file(10, 10)  # 10 shards per file at rows_per_file 10
        with ThreadPoolExecutor(32) as pool:
            list(pool.map(lambda k: fs.pipe(f"bench/in/f-{k:05d}.parquet", data), range(a.files)))
        rows = []
        spec = spec_for("s3://bench/in", options, "s3://bench/out")
        for readers in (1, 32):
            seconds, plan = time_plan(spec, readers)
            rows.append((f"S3 (moto), {a.files:,} files", readers, seconds, len(plan.shards)))

        with tempfile.TemporaryDirectory() as tmp:
            for k in range(a.local_files):
                with open(os.path.join(tmp, f"f-{k:05d}.parquet"), "wb") as f:
                    f.write(data)
            spec = spec_for(tmp, {}, os.path.join(tmp, "out"))
            tracemalloc.start()
            seconds, plan = time_plan(spec, 32)
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            rows.append((f"local disk, {a.local_files:,} files", 32, seconds, len(plan.shards)))
            plan_bytes = len(pq_bytes(plan.to_table()))
            shards = len(plan.shards)

        status_rows = manifest_on_s3(fs, options, a.records)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()

    print(f"\nCPU: {cpu_name()}, {os.cpu_count()} cores")
    print("| input | footer readers | plan s | shards | per file ms |")
    print("| :--- | ---: | ---: | ---: | ---: |")
    for name, readers, seconds, n in rows:
        files = a.files if name.startswith("S3") else a.local_files
        print(f"| {name} | {readers} | {seconds:.1f} | {n:,} | {1000 * seconds / files:.2f} |")
    print(
        f"\nplanner peak memory (tracemalloc, local, {shards:,} shards): {peak / 2**20:.1f} MiB = "
        f"{peak / shards:.0f} B per shard, {peak / a.local_files:.0f} B per file; "
        f"_plan.parquet {plan_bytes / 2**20:.2f} MiB = {plan_bytes / shards:.0f} B per shard"
    )
    print(f"\n| output on S3 (moto), {a.records:,} shard records | seconds |")
    print("| :--- | ---: |")
    for name, seconds in status_rows:
        print(f"| {name} | {seconds:.2f} |")


def pq_bytes(table: pa.Table) -> bytes:
    from jobs.manifest import table_bytes

    return table_bytes(table)


def manifest_on_s3(fs, options: dict, n: int) -> list[tuple[str, float]]:
    """Time status, the resume set and the end-of-job check over n records: folded segments + a JSON tail."""
    from jobs.manifest import PLAN_FILE, OutputStore, records_to_table, table_bytes
    from jobs.progress import output_progress
    from jobs.shards import Plan, Shard
    from jobs.sinks.parquet import check_complete

    uri = "s3://bench/out-manifest"
    store = OutputStore(uri, options)
    shards = [Shard(i, f"s{i:08d}", "parquet", "f", "f", i * 10, i * 10 + 10) for i in range(n)]
    plan = Plan("parquet", shards, {}, 1)
    store.write_bytes(PLAN_FILE, table_bytes(plan.to_table()))
    tail = 500
    records = [
        {
            "shard_id": s.shard_id,
            "index": s.index,
            "file": f"part-{s.index}.parquet",
            "source": "f",
            "start": s.start,
            "stop": s.stop,
            "rows_in": 10,
            "rows": 10,
            "embedded": 10,
            "reused": 0,
            "quarantined": 0,
            "seconds": 1.0,
            "committed_at": 1000.0 + s.index,
        }
        for s in shards
    ]
    for lo in range(0, n - tail, 1000):
        store.write_bytes(
            f"_manifest/segment-{lo:08d}.parquet",
            table_bytes(records_to_table(records[lo : min(lo + 1000, n - tail)])),
        )
    with ThreadPoolExecutor(32) as pool:
        list(pool.map(lambda r: store.write_json(store.record_name(r["shard_id"]), r), records[n - tail :]))
    out = []
    started = time.perf_counter()
    progress = output_progress(store)
    out.append(
        (
            f"status ({n - tail:,} folded in {(n - tail) // 1000} segments + {tail} JSON tail)",
            time.perf_counter() - started,
        )
    )
    assert progress["shards_committed"] == n
    started = time.perf_counter()
    committed = store.committed_ids()
    out.append(("resume: the set of committed shards", time.perf_counter() - started))
    assert len(committed) == n
    started = time.perf_counter()
    table = store.fold_all()
    check_complete(plan, table)
    out.append(("end of job: fold into manifest.parquet + check every shard", time.perf_counter() - started))
    started = time.perf_counter()
    output_progress(store)
    out.append(("status after the final fold (one manifest.parquet)", time.perf_counter() - started))
    return out


if __name__ == "__main__":
    main()
