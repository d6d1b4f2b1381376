from __future__ import annotations

import os
import socket
import time

from jobs.cli import main
from jobs.manifest import PLAN_FILE, OutputStore, records_to_table, table_bytes
from jobs.progress import output_progress
from jobs.shards import Plan, Shard


def _plan(n: int, rows: int = 100) -> Plan:
    shards = [
        Shard(i, f"s{i:08d}", "parquet", "f.parquet", "/f.parquet", i * rows, (i + 1) * rows)
        for i in range(n)
    ]
    return Plan("parquet", shards, {"text": "string"}, files=1)


def _record(i: int, committed_at: float, rows_in: int = 100, quarantined: int = 2) -> dict:
    return {
        "shard_id": f"s{i:08d}",
        "index": i,
        "file": f"part-{i:05d}.parquet",
        "source": "f.parquet",
        "start": i * rows_in,
        "stop": (i + 1) * rows_in,
        "rows_in": rows_in,
        "rows": rows_in - quarantined,
        "quarantined": quarantined,
        "seconds": 10.0,
        "committed_at": committed_at,
    }


def test_progress_of_a_half_done_output(tmp_path, capsys):
    store = OutputStore(str(tmp_path))
    store.write_bytes(PLAN_FILE, table_bytes(_plan(4).to_table()))
    for i, t in ((0, 1000.0), (1, 1010.0)):
        store.write_json(store.record_name(f"s{i:08d}"), _record(i, t))
    store.write_json("_job.json", {"model": {"name": "tiny-model", "dimension": 32, "precision": "float32"}})
    p = output_progress(store)
    assert (p["shards_committed"], p["shards_total"]) == (2, 4)
    assert (p["rows_committed"], p["rows_total"], p["rows_written"], p["quarantined"]) == (200, 400, 196, 4)
    # 200 rows committed between t=990 (first shard's start) and t=1010: 10 rows/s; no run holds it: no ETA.
    assert p["rows_per_s"] == 10.0 and p["eta_s"] is None and not p["complete"] and not p["running"]
    assert main(["status", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "stopped before the end" in text and "model tiny-model (32 dims, float32)" in text
    assert "shards 2 of 4 committed" in text and "rate 10.0 rows/s" in text and "ETA" not in text
    # A run holds it (a fresh heartbeat from this process): running, 200 rows left at 10 rows/s.
    lease = {"owner": "x", "host": socket.gethostname(), "pid": os.getpid(), "heartbeat_at": time.time()}
    store.write_json("_lease.json", lease)
    assert output_progress(store)["eta_s"] == 20.0
    assert main(["status", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert ": running" in text and "ETA 20 s" in text


def test_folded_manifest_and_json_tail_read_as_one(tmp_path):
    """Records folded into segments, a JSON tail, and a record left twice by a crash count once each."""
    store = OutputStore(str(tmp_path))
    store.fold([_record(i, 1000.0 + i) for i in range(5)])
    for i in range(5, 8):
        store.write_json(store.record_name(f"s{i:08d}"), _record(i, 1000.0 + i))
    # A crash after a segment was written but before its JSON files were deleted: both forms exist.
    store.write_json(store.record_name("s00000003"), _record(3, 1003.0))
    table = store.records_table()
    assert table.column("index").to_pylist() == list(range(8))
    folded = store.fold_all()
    assert folded.column("index").to_pylist() == list(range(8))
    names = sorted(p.name for p in (tmp_path / "_manifest").iterdir())
    assert names == ["manifest.parquet"]


def test_status_resume_and_check_over_30000_shards_stay_fast(tmp_path, monkeypatch):
    """An output with 30,000 shard records (folded, plus a 200-record tail) is read in a few files."""
    n = 30_000
    plan = _plan(n)
    store = OutputStore(str(tmp_path))
    store.write_bytes(PLAN_FILE, table_bytes(plan.to_table()))
    segment = 1000
    for lo in range(0, n - 200, segment):
        store.write_bytes(
            f"_manifest/segment-{lo:08d}.parquet",
            table_bytes(
                records_to_table([_record(i, 1000.0 + i) for i in range(lo, min(n - 200, lo + segment))])
            ),
        )
    for i in range(n - 200, n):
        store.write_json(store.record_name(f"s{i:08d}"), _record(i, 1000.0 + i))

    reads = {"json": 0, "parquet": 0}
    read_json, read_table = store.read_json, store.read_table

    def count_json(rel):
        reads["json"] += 1
        return read_json(rel)

    def count_table(rel, columns=None):
        reads["parquet"] += 1
        return read_table(rel, columns)

    monkeypatch.setattr(store, "read_json", count_json)
    monkeypatch.setattr(store, "read_table", count_table)
    started = time.perf_counter()
    p = output_progress(store)
    status_s = time.perf_counter() - started
    assert p["shards_committed"] == p["shards_total"] == n and p["rows_committed"] == 100 * n

    from jobs.sinks.parquet import check_complete

    started = time.perf_counter()
    committed = store.committed_ids()
    check_complete(plan, store.records_table())
    check_s = time.perf_counter() - started
    assert len(committed) == n
    print(
        f"\n[30,000 shards] status {status_s:.2f} s, resume set + end-of-job check {check_s:.2f} s, reads {reads}"
    )
    # Three passes over the manifest (status, resume set, check): the tail's JSON files and 30 segments
    # each time, plus _SUCCESS, the lease and the plan, never one read per shard.
    assert reads["json"] == 3 * 200 + 3 and reads["parquet"] == 3 * 30 + 1  # + _SUCCESS, the lease, _job.json


def test_status_of_a_folder_that_is_no_output(tmp_path, capsys):
    assert main(["status", str(tmp_path / "nothing")]) == 1
    assert "no _plan.parquet" in capsys.readouterr().err
