"""Resume: a killed driver, a dying replica and a half-committed shard all end with every row exactly once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
import yaml

from jobs import run_job
from jobs.manifest import OutputStore

pytestmark = pytest.mark.usefixtures("ray_session")


def check_exactly_once(out: str, texts: list[str], oracle, jobkit) -> None:
    records, table = jobkit.read_job(out)
    ids = table.column("id").to_pylist()
    assert sorted(ids) == sorted(f"doc-{i}" for i in range(len(texts)))
    assert len(set(r["shard_id"] for r in records)) == len(records)
    # what a reader of the folder sees (pyarrow.dataset ignores _tmp/ and the other _ paths)
    seen = pads.dataset(out).to_table().column("id").to_pylist()
    assert sorted(seen) == sorted(ids)
    order = [int(i.split("-")[1]) for i in ids]
    assert np.abs(jobkit.vectors(table) - oracle([texts[i] for i in order])).max() <= 1e-4


def test_killed_driver_resumes_without_duplicates(
    tmp_path, tiny_st_model, oracle, jobio, jobkit, ray_session
):
    texts = jobio.corpus(120, seed=5)
    jobkit.write_files(str(tmp_path / "in"), texts, files=3, row_group_size=10)
    out = str(tmp_path / "out")
    spec = jobkit.job_spec(tiny_st_model, str(tmp_path / "in"), out, output={"rows_per_file": 10})
    job_file = tmp_path / "job.yaml"
    job_file.write_text(yaml.safe_dump(spec))
    env = {
        **os.environ,
        "EMBEDJOB_FAULTS": json.dumps([{"point": "worker.batch", "action": "sleep", "seconds": 0.5}]),
    }
    address = ray_session.get_runtime_context().gcs_address
    proc = subprocess.Popen(
        [sys.executable, "-m", "jobs.cli", "run", str(job_file), "--address", address, "--no-progress"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    store = OutputStore(os.path.join(out, ".embedjob"))
    deadline = time.monotonic() + 180
    try:
        while len(store.committed_ids()) < 3:
            assert proc.poll() is None, proc.stdout.read().decode()
            assert time.monotonic() < deadline, "driver committed no shards in time"
            time.sleep(0.1)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    done_before = len(store.committed_ids())
    assert 3 <= done_before < 12 and not os.path.exists(os.path.join(out, ".embedjob", "_SUCCESS"))

    summary = run_job(spec, progress=False, keep_warm=True)
    assert summary["shards"] == 12 and summary["skipped_shards"] >= 3
    assert summary["rows_written"] == 120
    check_exactly_once(out, texts, oracle, jobkit)


def test_replica_death_resubmits_shard(tmp_path, tiny_st_model, oracle, jobio, jobkit, monkeypatch):
    texts = jobio.corpus(60, seed=6)
    jobkit.write_files(str(tmp_path / "in"), texts, files=2, row_group_size=10)
    monkeypatch.setenv(
        "EMBEDJOB_FAULTS",
        json.dumps([{"point": "worker.batch", "shard_index": 2, "action": "exit", "times": 1}]),
    )
    monkeypatch.setenv("EMBEDJOB_FAULTS_STATE", str(tmp_path / "faults"))
    out = str(tmp_path / "out")
    spec = jobkit.job_spec(tiny_st_model, str(tmp_path / "in"), out, output={"rows_per_file": 10})
    summary = run_job(spec, progress=False, log_file=str(tmp_path / "log.jsonl"))
    assert summary["rows_written"] == 60 and summary["shards"] == 6
    events = [json.loads(line) for line in open(tmp_path / "log.jsonl")]
    retries = [e for e in events if e["event"] == "shard_retry"]
    # shard 2 killed its replica; shard 3, queued on the same replica, failed with it: each ran once more
    assert [e["index"] for e in retries] in ([2], [2, 3], [3, 2])
    committed = [e for e in events if e["event"] == "shard_committed"]
    assert sorted(e["index"] for e in committed) == list(range(6))
    check_exactly_once(out, texts, oracle, jobkit)


def test_uncommitted_final_file_is_rewritten(tmp_path, tiny_st_model, oracle, jobio, jobkit):
    texts = jobio.corpus(40, seed=7)
    jobkit.write_files(str(tmp_path / "in"), texts, files=1, row_group_size=10)
    out = str(tmp_path / "out")
    spec = jobkit.job_spec(tiny_st_model, str(tmp_path / "in"), out, output={"rows_per_file": 10})
    run_job(spec, progress=False, keep_warm=True)
    records, _ = jobkit.read_job(out)
    victim = records[1]
    # A crash between the data file's move and its record: the file is at its final name, no record.
    manifest = os.path.join(out, ".embedjob", "_manifest", "manifest.parquet")
    folded = pq.read_table(manifest)
    pq.write_table(folded.filter(pc.not_equal(folded.column("shard_id"), victim["shard_id"])), manifest)
    with open(os.path.join(out, victim["file"]), "wb") as f:
        f.write(b"half-written garbage")
    stale = os.path.join(out, ".part-00009-x.parquet.0123abcd.tmp")  # what a killed local write leaves
    open(stale, "wb").write(b"junk")
    summary = run_job(spec, progress=False, keep_warm=True)
    # This run embedded the one shard it redid; the output holds all 40 rows.
    assert summary["skipped_shards"] == 3 and summary["embedded"] == 10 and summary["total"]["embedded"] == 40
    assert not os.path.exists(stale)
    check_exactly_once(out, texts, oracle, jobkit)
