"""One runner per output: the lease, its heartbeat, take-over after expiry, and what `status` reads from it."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from jobs.lease import LEASE_FILE, Lease, is_live, read_lease
from jobs.manifest import OutputConflict, OutputStore


def test_a_second_runner_is_refused_while_the_first_holds_the_output(tmp_path):
    store = OutputStore(str(tmp_path / "out"))
    first = Lease(store)
    first.acquire()
    with pytest.raises(OutputConflict, match=r"being written by another run \(host .*, pid \d+, heartbeat"):
        Lease(store).acquire()
    first.release()
    assert read_lease(store) is None
    again = Lease(store)
    again.acquire()
    again.release()


def test_an_expired_lease_is_taken_over_and_a_taken_lease_stops_its_old_holder(tmp_path):
    store = OutputStore(str(tmp_path / "out"))
    gone = Lease(store, ttl_s=0.2, heartbeat_s=10)
    gone.acquire()  # its heartbeat will not run again within the test: the runner is "gone"
    time.sleep(0.3)
    assert not is_live(read_lease(store))
    new = Lease(store, heartbeat_s=0.05)
    new.acquire()
    assert read_lease(store)["owner"] == new.owner
    beat = read_lease(store)["heartbeat_at"]
    time.sleep(0.2)
    assert read_lease(store)["heartbeat_at"] > beat  # the heartbeat renews it
    # The old holder wakes up: it finds the lease is not its own any more and stops.
    gone.heartbeat_s = 0.01
    gone._beat()  # one heartbeat of the old holder, as its thread would run it
    with pytest.raises(OutputConflict, match="another run took over"):
        gone.check()
    gone.release()  # stops its thread and leaves the new holder's lease alone
    assert read_lease(store)["owner"] == new.owner
    new.release()


@pytest.mark.parametrize("output", ["out", "out.lance"])
def test_a_job_is_refused_while_another_run_holds_its_output(
    output, tmp_path, tiny_st_model, jobio, jobkit, ray_session
):
    """Either sink: the lease lives in the output's metadata folder (a Lance dataset's `.embedjob/`)."""
    from jobs import run_job
    from jobs.sinks import metadata_store

    if output.endswith(".lance"):
        pytest.importorskip("lance")
    jobkit.write_files(str(tmp_path / "in"), jobio.corpus(20, seed=51), files=1, row_group_size=10)
    out = tmp_path / output
    meta = metadata_store(str(out))
    lease_file = Path(meta.path(LEASE_FILE))
    lease_file.parent.mkdir(parents=True)
    lease = {"owner": "someone", "host": "other-host", "pid": 4242, "heartbeat_at": time.time(), "ttl_s": 60}
    lease_file.write_text(json.dumps(lease))
    spec = jobkit.job_spec(tiny_st_model, str(tmp_path / "in"), str(out))
    with pytest.raises(OutputConflict, match="other-host, pid 4242"):
        run_job(spec, progress=False, keep_warm=True)
    assert [p for p in out.rglob("*") if p.is_file()] == [lease_file]  # nothing else was written

    from jobs.progress import output_progress

    lease["heartbeat_at"] = time.time() - 120  # that run died two minutes ago
    lease_file.write_text(json.dumps(lease))
    summary = run_job(spec, progress=False, keep_warm=True)
    assert summary["rows_written"] == 20 and not lease_file.exists()
    assert output_progress(meta)["running"] is False


def test_status_tells_running_from_stopped(tmp_path):
    from jobs.manifest import PLAN_FILE, table_bytes
    from jobs.progress import output_progress
    from jobs.shards import Plan, Shard

    store = OutputStore(str(tmp_path))
    plan = Plan("parquet", [Shard(0, "s0", "parquet", "f", "f", 0, 10)], {}, 1)
    store.write_bytes(PLAN_FILE, table_bytes(plan.to_table()))
    lease = Lease(store)
    lease.acquire()
    assert output_progress(store)["running"] is True
    lease.release()
    assert output_progress(store)["running"] is False


def test_conditional_create_on_s3(s3_server):
    """Two runners on one S3 output: If-None-Match lets exactly one of them create the lease."""
    store = OutputStore(s3_server.prefix(s3_server.buckets[1], "leased"), s3_server.storage_options)
    first = Lease(store)
    first.acquire()
    with pytest.raises(OutputConflict, match="being written by another run"):
        Lease(store).acquire()
    first.release()


def test_a_killed_runner_on_this_host_is_taken_over_at_once(tmp_path):
    """Kill -9 then rerun (the common case) need not wait for the heartbeat to expire."""
    import socket
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()  # a pid that no longer runs
    store = OutputStore(str(tmp_path / "out"))
    os.makedirs(store.root)
    lease = {
        "owner": "x",
        "host": socket.gethostname(),
        "pid": proc.pid,
        "heartbeat_at": time.time(),
        "ttl_s": 60,
    }
    (tmp_path / "out" / LEASE_FILE).write_text(json.dumps(lease))
    assert not is_live(read_lease(store))
    mine = Lease(store)
    mine.acquire()
    assert read_lease(store)["owner"] == mine.owner
    mine.release()
