"""The fault-injection hook: matching, actions, and "times" counted across processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from jobs import faults
from jobs.faults import FaultSpecError, fault_env, fired, maybe_fail, parse_rules


@pytest.fixture
def rules(monkeypatch, tmp_path):
    """Set EMBEDJOB_FAULTS (and a fresh state dir) for this test."""

    def set_rules(*items, state: bool = True):
        monkeypatch.setenv(faults.ENV_RULES, json.dumps(list(items)))
        if state:
            monkeypatch.setenv(faults.ENV_STATE, str(tmp_path / "state"))
        else:
            monkeypatch.delenv(faults.ENV_STATE, raising=False)
        faults._local_counts.clear()

    return set_rules


def test_unset_does_nothing(monkeypatch):
    monkeypatch.delenv(faults.ENV_RULES, raising=False)
    monkeypatch.delenv(faults.ENV_STATE, raising=False)
    maybe_fail("storage.write", path="x")  # would raise or exit if any rule were left over
    assert fault_env() == {}
    monkeypatch.setenv(faults.ENV_STATE, "/tmp/state")
    assert fault_env() == {faults.ENV_STATE: "/tmp/state"}  # only the variables that are set travel


def test_raise_matches_point_context_and_substring(rules):
    rules({"point": "storage.write", "match": "part-00001", "action": "raise"})
    maybe_fail("storage.read", path="s3://b/part-00001.parquet")  # other point
    maybe_fail("storage.write", path="s3://b/part-00002.parquet")  # no substring
    with pytest.raises(OSError, match="injected fault at storage.write"):
        maybe_fail("storage.write", path="s3://b/part-00001.parquet")


def test_context_keys_must_all_equal(rules):
    rules({"point": "worker.batch", "shard_index": 3, "batch": 2})
    maybe_fail("worker.batch", shard_index=3, batch=1)
    maybe_fail("worker.batch", shard_index=2, batch=2)
    maybe_fail("worker.batch", batch=2)  # a key the rule needs is missing
    with pytest.raises(OSError):
        maybe_fail("worker.batch", shard_index=3, batch=2)


@pytest.mark.parametrize("state", [True, False])
def test_times_caps_firings(rules, state):
    rules({"point": "p", "times": 2}, state=state)
    for _ in range(2):
        with pytest.raises(OSError):
            maybe_fail("p")
    maybe_fail("p")
    assert fired(0) == 2


def test_times_is_shared_across_processes(rules, tmp_path):
    """A restarted process sees the firings of the one that died: an exit rule with times=1 fires once."""
    rules({"point": "worker.batch", "batch": 1, "action": "exit", "times": 1})
    code = "from jobs.faults import maybe_fail\nfor b in range(3): maybe_fail('worker.batch', batch=b)\nprint('done')"
    first = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert first.returncode == 1 and "done" not in first.stdout
    second = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert second.returncode == 0 and "done" in second.stdout
    assert fired(0) == 1


def test_sleep_action(rules):
    rules({"point": "slow", "action": "sleep", "seconds": 0.01})
    maybe_fail("slow")


def test_fault_env_passes_both_variables(rules, tmp_path):
    rules({"point": "p"})
    env = fault_env()
    assert set(env) == {faults.ENV_RULES, faults.ENV_STATE}


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        '"a string"',
        '[{"action": "raise"}]',
        '[{"point": "p", "action": "explode"}]',
        '[{"point": "p", "times": -1}]',
    ],
)
def test_bad_rules_are_rejected(text):
    with pytest.raises(FaultSpecError):
        parse_rules(text)


# --- faults survived by real jobs (slow: they run in the second CI pass) ---------------------------------
#
# Each test checks the invariant the issue asks for: after the fault, every input row appears exactly once
# in the committed output (ids compared as multisets), and the vectors equal an in-process encode().

N_ROWS = 120


def _local_input(tmp_path, jobio, rows: int = N_ROWS, files: int = 2) -> tuple[str, dict[str, str]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "in"
    folder.mkdir()
    expected: dict[str, str] = {}
    per = rows // files
    for k in range(files):
        texts = jobio.corpus(per, seed=k, prefix=f"f{k} ")
        ids = [f"doc-{k}-{i}" for i in range(per)]
        expected.update(zip(ids, texts, strict=True))
        pq.write_table(
            pa.table({"id": ids, "text": texts}), str(folder / f"part-{k}.parquet"), row_group_size=10
        )
    return str(folder), expected


def _spec(model: str, inp: str, out: str, *, storage_options: dict | None = None, **policy) -> dict:
    options = storage_options or {}
    return {
        "model": model,
        "input": {"uri": inp, "id_column": "id", "storage_options": options},
        # several reads per 60-row shard (its 10-row row groups; at most 32 rows each): a death can hit mid-shard.
        "output": {"uri": out, "rows_per_file": 60, "storage_options": options},
        "compute": {"replicas": 2, "batch_size": 4, "rows_per_call": 32},
        "policy": {"retries": 3, **policy},
    }


def _assert_rows_once(table, expected: dict[str, str], model_path: str, where: str) -> None:
    """Every input row exactly once in `table` (ids as multisets), with vectors equal to encode()."""
    from embedder import EmbeddingModel

    ids = table.column("id").to_pylist()
    assert len(ids) == len(set(ids)) == len(expected), (len(ids), len(set(ids)), len(expected))
    assert set(ids) == set(expected)
    want = EmbeddingModel(model_path).encode([expected[i] for i in ids])
    assert np.abs(np.array(table.column("embedding").to_pylist()) - want).max() <= 1e-4
    # One line per fault test for the CI log (run with -s): rows before and after the fault.
    print(f"\n[rows] {where}: input {len(expected)}, output {len(ids)} ({len(set(ids))} distinct ids)")


def _assert_exactly_once(fs, out: str, expected: dict[str, str], model_path: str, jobio) -> list[dict]:
    records, table = jobio.read_output(fs, out)
    _assert_rows_once(table, expected, model_path, f"{out}, {len(records)} shards")
    return records


def _events(log_file) -> list[dict]:
    return [json.loads(line) for line in open(log_file, encoding="utf-8") if line.startswith("{")]


# The fault tests below run against both sinks where the fault and the invariant are the same.
SINKS = ["parquet", "lance"]


def _out(base: str, sink: str) -> str:
    """The output URI of a test: a folder of part files, or a Lance dataset (the .lance suffix picks it)."""
    if sink == "lance":
        pytest.importorskip("lance")
    return f"{base}/out.lance" if sink == "lance" else base


def _shard_write_rule(sink: str, index: int, **extra) -> dict:
    """A rule failing the writes of shard `index`'s rows: its part file (jobs/write.py), or its Lance
    fragments (the fault point in LanceSink.write_shard: Lance writes them through its own object store,
    not fsspec, so jobs/write.py's points never see them)."""
    if sink == "lance":
        return {"point": "storage.write", "match": ".lance/data", "shard_index": index, **extra}
    return {"point": "storage.write", "match": f"part-{index:05d}-", **extra}


def _first_commit_made(sink: str, out: str) -> bool:
    """Whether a local output holds a committed shard: a manifest record in its .embedjob/ folder."""
    folder = os.path.join(out, ".embedjob", "_manifest")
    return os.path.isdir(folder) and any(n.endswith(".json") for n in os.listdir(folder))


def _check_exactly_once(
    sink: str, out: str, expected: dict[str, str], model_path: str, jobio, fs, storage_options=None
) -> None:
    """Every input row exactly once in the committed output of either sink, vectors equal to encode()."""
    if sink == "lance":
        _assert_lance_exactly_once(out, expected, model_path, storage_options)
    else:
        _assert_exactly_once(fs, out, expected, model_path, jobio)


def _committed(sink: str, out: str, jobio, fs, storage_options=None) -> tuple[list[dict], list]:
    """(manifest records, ids of the committed rows) of a stopped job's output."""
    if sink == "lance":
        from jobs.sinks import metadata_store

        records = metadata_store(out, storage_options).records()
        return records, _lance_ids(out, storage_options) if _lance_dataset(out, storage_options) else []
    records, table = jobio.read_output(fs, out)
    return records, [] if table is None else table.column("id").to_pylist()


@pytest.mark.slow
def test_actor_dies_mid_shard(tmp_path, jobio, tiny_st_model, ray_session, rules):
    """A worker process exits on the 2nd batch of shard 1: the shard is redone, the job completes."""
    import fsspec

    from jobs.run import run_job

    inp, expected = _local_input(tmp_path, jobio)
    rules({"point": "worker.batch", "shard_index": 1, "batch": 1, "action": "exit", "times": 1})
    out = str(tmp_path / "out")
    log = tmp_path / "log.jsonl"
    summary = run_job(_spec(tiny_st_model, inp, out), progress=False, log_file=str(log))
    assert fired(0) == 1  # the actor really died once
    assert summary["rows_written"] == N_ROWS and summary["quarantined"] == 0
    retries = [e for e in _events(log) if e["event"] == "shard_retry"]
    assert [e["index"] for e in retries] == [1]
    _assert_exactly_once(fsspec.filesystem("file"), out, expected, tiny_st_model, jobio)


@pytest.mark.slow
@pytest.mark.parametrize("sink", SINKS)
def test_transient_storage_errors_are_retried(sink, s3_server, jobio, tiny_st_model, ray_session, rules):
    """Two failed writes of one shard's data and one failed read of an input file: retried, job completes.
    Lance also: the driver's commit of the run fails once, then lands but its answer is lost once (the retry
    finds the version that holds the run and commits nothing twice)."""
    from jobs.run import run_job

    inp, expected = _s3_input(s3_server, jobio)
    out = _out(s3_server.prefix(s3_server.buckets[1], "transient"), sink)
    injected = [
        _shard_write_rule(sink, 1, times=2, action="raise"),
        {"point": "storage.read", "match": "part-1.parquet", "times": 1, "action": "raise"},
    ]
    if sink == "lance":
        injected += [
            {"point": "storage.write", "match": ".lance/_versions", "times": 1},
            {"point": "storage.ack", "match": ".lance/_versions", "times": 1},
        ]
    rules(*injected)
    summary = run_job(
        _spec(tiny_st_model, inp, out, storage_options=s3_server.storage_options), progress=False
    )
    assert [fired(k) for k in range(len(injected))] == [2, 1] + [1] * (len(injected) - 2)
    assert summary["rows_written"] == N_ROWS
    _check_exactly_once(sink, out, expected, tiny_st_model, jobio, s3_server.fs(), s3_server.storage_options)


# (sink, the rule that fails every write of shard 1's data, what the error names besides the shard).
PERSISTENT = {
    "parquet-part-file": ("parquet", _shard_write_rule("parquet", 1), "shard 1 ({shard}", "part-00001-{shard}"),
    "lance-fragments": ("lance", _shard_write_rule("lance", 1), "shard 1 ({shard}", "write fragments to {out}"),
}  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("case", list(PERSISTENT))
def test_persistent_storage_error_stops_the_job_naming_shard_and_object(
    case, s3_server, jobio, tiny_st_model, ray_session, rules
):
    """Every write of shard 1's data fails (Lance: its fragments): the job stops naming the shard and the
    object; committed shards stay valid (Lance: recorded, the table not yet committed); a rerun completes."""
    from jobs.manifest import PLAN_FILE
    from jobs.run import JobError, run_job
    from jobs.sinks import metadata_store

    sink, rule, *names = PERSISTENT[case]
    inp, expected = _s3_input(s3_server, jobio)
    out = _out(s3_server.prefix(s3_server.buckets[1], "persistent"), sink)
    so = s3_server.storage_options
    # Shard 1 starts a second late, so shard 0 is committed before shard 1's error stops the job.
    rules(rule, {"point": "worker.batch", "shard_index": 1, "batch": 0, "action": "sleep", "seconds": 1})
    spec = _spec(tiny_st_model, inp, out, storage_options=so, retries=2)
    with pytest.raises(JobError) as info:
        run_job(spec, progress=False)
    meta = metadata_store(out, so)
    plan = meta.read_table(PLAN_FILE).to_pylist()
    message = str(info.value)
    print(f"\n[error] {case}: {message}")
    for name in names + ["after 2 attempts"]:
        assert name.format(shard=plan[1]["shard_id"], out=out) in message, (name, message)
    assert fired(0) == 2  # bounded: exactly policy.retries attempts
    fs = s3_server.fs()
    assert not meta.exists("_SUCCESS")
    records, ids = _committed(sink, out, jobio, fs, so)
    assert [r["index"] for r in records] == [0] and records[0]["rows"] == 60  # shard 0 committed, and whole
    # A Lance run commits its table version once every shard is in: readers see no half-written table.
    assert ids == [] if sink == "lance" else (len(ids) == 60 and set(ids) <= set(expected))
    # Fault gone: the rerun resumes and completes with every row exactly once.
    rules()
    summary = run_job(spec, progress=False)
    assert summary["skipped_shards"] == 1 and summary["rows_written"] == N_ROWS
    _check_exactly_once(sink, out, expected, tiny_st_model, jobio, fs, so)


@pytest.mark.slow
def test_driver_killed_then_rerun_resumes_on_s3(s3_server, jobio, tiny_st_model, tmp_path):
    """`embedjob run` (credentials in the environment) is SIGKILLed after its first commit; the rerun resumes."""
    import os
    import signal
    import time

    inp, expected = _s3_input(s3_server, jobio)
    out = s3_server.prefix(s3_server.buckets[1], "killed")
    env = {**os.environ, **s3_server.env, "PYTHONPATH": os.getcwd()}
    env[faults.ENV_RULES] = json.dumps([{"point": "worker.batch", "action": "sleep", "seconds": 0.4}])
    env.pop(faults.ENV_STATE, None)
    cmd = [
        sys.executable,
        "-m",
        "jobs.cli",
        "run",
        "--model",
        tiny_st_model,
        "--input",
        inp,
        "--output",
        out,
        "--id-column",
        "id",
        "--rows-per-file",
        "20",
        "--replicas",
        "1",
        "--batch-size",
        "4",
        "--no-progress",
    ]
    fs = s3_server.fs()
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            fs.invalidate_cache()
            if fs.find(f"{out}/.embedjob/_manifest"):
                break
            time.sleep(0.2)
        assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
        os.kill(proc.pid, signal.SIGKILL)  # the driver dies; Ray processes it started die with it
        proc.wait(timeout=30)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # whatever of that session outlived the driver
        except ProcessLookupError:
            pass
    fs.invalidate_cache()
    committed = len(fs.find(f"{out}/.embedjob/_manifest"))
    assert 1 <= committed < 3 and not fs.exists(f"{out}/.embedjob/_SUCCESS")

    env.pop(faults.ENV_RULES)
    rerun = subprocess.run(
        cmd + ["--log-file", str(tmp_path / "log.jsonl")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    started = [e for e in _events(tmp_path / "log.jsonl") if e["event"] == "job_started"][0]
    assert started["resumed_shards"] >= committed
    fs.invalidate_cache()
    _assert_exactly_once(fs, out, expected, tiny_st_model, jobio)
    assert fs.exists(f"{out}/.embedjob/_SUCCESS")


def _s3_input(s3_server, jobio) -> tuple[str, dict[str, str]]:
    import pyarrow as pa

    fs = s3_server.fs()
    base = s3_server.prefix(s3_server.buckets[0], "input")
    expected: dict[str, str] = {}
    per = N_ROWS // 2
    for k in range(2):
        texts = jobio.corpus(per, seed=k, prefix=f"f{k} ")
        ids = [f"doc-{k}-{i}" for i in range(per)]
        expected.update(zip(ids, texts, strict=True))
        jobio.write_parquet(
            fs, f"{base}/part-{k}.parquet", pa.table({"id": ids, "text": texts}), row_group_size=10
        )
    return base, expected


@pytest.mark.slow
def test_persistent_error_on_the_lance_commit_keeps_every_shard_for_the_rerun(
    s3_server, jobio, tiny_st_model, ray_session, rules
):
    """The run's one Lance commit fails every time: the job stops naming the output; every shard is recorded
    and no table version exists; the rerun embeds nothing and commits the table once."""
    from jobs.retry import StorageError
    from jobs.run import run_job
    from jobs.sinks import metadata_store

    inp, expected = _s3_input(s3_server, jobio)
    out = _out(s3_server.prefix(s3_server.buckets[1], "commit-fails"), "lance")
    so = s3_server.storage_options
    rules({"point": "storage.write", "match": ".lance/_versions"})
    spec = _spec(tiny_st_model, inp, out, storage_options=so, retries=2)
    with pytest.raises(StorageError, match=f"output {out}: commit the run: failed after 2 attempts"):
        run_job(spec, progress=False)
    assert fired(0) == 2
    records = metadata_store(out, so).records()
    assert len(records) == 2 and _lance_dataset(out, so) is None
    rules()
    summary = run_job(spec, progress=False)
    assert summary["skipped_shards"] == 2 and summary["tokens"] == 0 and summary["rows_written"] == N_ROWS
    _assert_lance_exactly_once(out, expected, tiny_st_model, so)


@pytest.mark.slow
@pytest.mark.parametrize("sink", SINKS)
def test_node_lost_mid_job(sink, tmp_path, jobio, tiny_st_model, rules):
    """A simulated 3-node cluster (head + 2 workers) loses a worker node holding a replica mid-job."""
    import threading
    import time

    import fsspec
    import ray
    from ray.cluster_utils import Cluster

    from jobs.run import run_job

    inp, expected = _local_input(tmp_path, jobio, rows=160, files=2)
    out = _out(str(tmp_path / "out"), sink)
    # Slow batches (0.3 s each) so the node dies while shards are in flight.
    rules({"point": "worker.batch", "action": "sleep", "seconds": 0.3})
    had_ray = ray.is_initialized()
    if had_ray:
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    workers = [cluster.add_node(num_cpus=2) for _ in range(2)]
    try:
        ray.init(address=cluster.address, log_to_driver=False, logging_level="WARNING")
        cluster.wait_for_nodes()
        result: dict = {}

        def run() -> None:
            try:
                spec = _spec(tiny_st_model, inp, out)
                spec["output"]["rows_per_file"] = 20
                result["summary"] = run_job(spec, progress=False, log_file=str(tmp_path / "log.jsonl"))
            except BaseException as e:  # noqa: BLE001 - reported by the assertions below
                result["error"] = e

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        victim = None
        deadline = time.monotonic() + 120
        while victim is None and time.monotonic() < deadline and thread.is_alive():
            # Once the first shard is committed, kill a worker node that hosts a live replica.
            if _first_commit_made(sink, out):
                from ray.util.state import list_actors

                nodes = {
                    a.node_id
                    for a in list_actors(address=cluster.address, filters=[("state", "=", "ALIVE")])
                    if "ShardWorker" in a.class_name
                }
                victim = next((w for w in workers if w.node_id in nodes), None)
            time.sleep(0.1)
        assert victim is not None, result
        cluster.remove_node(victim)
        thread.join(timeout=240)
        assert not thread.is_alive(), "job hung after the node was lost"
        assert "error" not in result, result.get("error")
        assert result["summary"]["rows_written"] == 160
        events = _events(tmp_path / "log.jsonl")
        retried = [e["index"] for e in events if e["event"] == "shard_retry"]
        assert retried, "the lost node held no shard in flight; the test proved nothing"
        print(f"node lost with shards {sorted(set(retried))} in flight; {len(retried)} re-dispatches")
    finally:
        ray.shutdown()
        cluster.shutdown()
        if had_ray:
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    _check_exactly_once(sink, out, expected, tiny_st_model, jobio, fsspec.filesystem("file"))


@pytest.mark.slow
def test_persistent_read_error_names_the_object(s3_server, jobio, tiny_st_model, rules, capsys):
    """Every read of one input object fails: `embedjob run` exits 1 naming it; nothing is written."""
    from jobs.cli import main as cli_main

    inp, _ = _s3_input(s3_server, jobio)
    out = s3_server.prefix(s3_server.buckets[1], "unreadable")
    rules({"point": "storage.read", "match": "part-1.parquet", "action": "raise"})
    job = tmp_job_file(_spec(tiny_st_model, inp, out, storage_options=s3_server.storage_options, retries=2))
    assert cli_main(["run", job, "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "part-1.parquet" in err and "after 2 attempts" in err and "Traceback" not in err
    assert fired(0) == 2
    assert s3_server.fs().find(out[len("s3://") :]) == []


def tmp_job_file(spec: dict) -> str:
    import tempfile

    import yaml

    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump(spec, f)
    return f.name


def _lance_dataset(out: str, storage_options: dict | None = None):
    """The table at `out`, or None when no run has committed one."""
    from jobs.sinks.lance_table import LiveTable, import_lance, lance_storage_options

    return LiveTable.open(import_lance(), out, lance_storage_options(storage_options or {}))


def _lance_ids(out: str, storage_options: dict | None = None) -> list:
    return _lance_dataset(out, storage_options).to_table(columns=["id"]).column("id").to_pylist()


def _assert_lance_exactly_once(
    out: str, expected: dict[str, str], model_path: str, storage_options: dict | None = None
) -> None:
    from embedder import EmbeddingModel
    from jobs.sinks.lance_table import MESSAGE_KEY

    ds = _lance_dataset(out, storage_options)
    table = ds.to_table()
    ids = table.column("id").to_pylist()
    assert len(ids) == len(set(ids)) == len(expected), (len(ids), len(set(ids)), len(expected))
    assert set(ids) == set(expected)
    want = EmbeddingModel(model_path).encode([expected[i] for i in ids])
    assert np.abs(np.array(table.column("embedding").to_pylist()) - want).max() <= 1e-4
    # The run landed in one version (its commit message names it): a retried or raced commit added nothing.
    props = [t.transaction_properties or {} for t in ds.get_transactions(ds.version) if t is not None]
    runs = [json.loads(p[MESSAGE_KEY]) for p in props if p.get(MESSAGE_KEY, "").startswith("{")]
    assert len(runs) == 1, runs
    print(
        f"\n[rows] {out}: input {len(expected)}, Lance table {len(ids)} rows ({len(set(ids))} distinct ids)"
    )


@pytest.mark.slow
def test_actor_dies_mid_shard_on_the_lance_sink(tmp_path, jobio, tiny_st_model, ray_session, rules):
    """The Lance sink under the same death: the shard is redone, the table holds every row once."""
    pytest.importorskip("lance")
    from jobs.run import run_job

    inp, expected = _local_input(tmp_path, jobio)
    rules({"point": "worker.batch", "shard_index": 1, "batch": 1, "action": "exit", "times": 1})
    out = str(tmp_path / "out.lance")
    summary = run_job(_spec(tiny_st_model, inp, out), progress=False)
    assert fired(0) == 1 and summary["rows_written"] == N_ROWS
    _assert_lance_exactly_once(out, expected, tiny_st_model)


@pytest.mark.slow
def test_driver_killed_then_rerun_resumes_on_the_lance_sink(jobio, tiny_st_model, tmp_path):
    """`embedjob run` into a .lance output is SIGKILLed after its first committed shard; the rerun commits
    every shard once: no shard's rows twice, none missing."""
    import os
    import signal
    import time

    pytest.importorskip("lance")
    inp, expected = _local_input(tmp_path, jobio)
    out = str(tmp_path / "killed.lance")
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    env[faults.ENV_RULES] = json.dumps([{"point": "worker.batch", "action": "sleep", "seconds": 0.4}])
    env.pop(faults.ENV_STATE, None)
    cmd = [sys.executable, "-m", "jobs.cli", "run", "--model", tiny_st_model, "--input", inp, "--output", out,
           "--id-column", "id", "--rows-per-file", "20", "--replicas", "1", "--batch-size", "4", "--no-progress"]  # fmt: skip
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    records = os.path.join(out, ".embedjob", "_manifest")
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if os.path.isdir(records) and any(n.endswith(".json") for n in os.listdir(records)):
                break
            time.sleep(0.1)
        assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert not os.path.exists(os.path.join(out, ".embedjob", "_SUCCESS"))
    env.pop(faults.ENV_RULES)
    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    _assert_lance_exactly_once(out, expected, tiny_st_model)


@pytest.mark.slow
@pytest.mark.parametrize("sink", SINKS)
def test_a_second_runner_is_refused_while_the_first_is_writing(
    sink, tmp_path, jobio, tiny_st_model, ray_session, rules
):
    """Two runners on one output: once the first has committed a shard, the second (with --overwrite too)
    is refused by the first's live lease, naming it, and touches nothing; the first completes, every row once."""
    import re
    import socket
    import threading
    import time

    import fsspec

    from jobs.manifest import OutputConflict
    from jobs.run import run_job

    inp, expected = _local_input(tmp_path, jobio)
    out = _out(str(tmp_path / "out"), sink)
    rules({"point": "worker.batch", "action": "sleep", "seconds": 1})  # 6 shards of one batch: >= 3 s
    spec = _spec(tiny_st_model, inp, out)
    spec["output"]["rows_per_file"] = 20
    result: dict = {}

    def first() -> None:
        try:
            result["summary"] = run_job(spec, progress=False)
        except BaseException as e:  # noqa: BLE001 - reported by the assertions below
            result["error"] = e

    thread = threading.Thread(target=first, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 120
        while not _first_commit_made(sink, out) and thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert thread.is_alive() and _first_commit_made(sink, out), result
        holder = re.escape(f"(host {socket.gethostname()}, pid {os.getpid()}, heartbeat")
        for overwrite in (False, True):
            with pytest.raises(OutputConflict, match=f"being written by another run {holder}"):
                run_job(spec, progress=False, overwrite=overwrite)
    finally:
        thread.join(timeout=240)
    assert not thread.is_alive(), "the first run hung"
    assert "error" not in result, result.get("error")
    assert result["summary"]["rows_written"] == N_ROWS and result["summary"]["skipped_shards"] == 0
    _check_exactly_once(sink, out, expected, tiny_st_model, jobio, fsspec.filesystem("file"))


def _lance_shard(index: int):
    """A 4-row shard and its output table (ids s<index>-<row>) for the sink-level race."""
    import pyarrow as pa

    from jobs.shards import Shard
    from jobs.write import shard_table

    shard = Shard(index, f"shard{index}", "parquet", "in.parquet", "", index * 4, index * 4 + 4)
    ids = pa.array([f"s{index}-{k}" for k in range(4)])
    vectors = np.full((4, 8), index, np.float32)
    return shard, shard_table(ids, vectors, [f"h{k}" for k in range(4)], {})


COUNTS = {"embedded": 4, "reused": 0, "text_hash_digest": "-", "tokens": 0, "seconds": 0.0}


def test_two_runners_racing_on_one_lance_output_land_each_shard_once(tmp_path):
    """Two drivers (a stalled runner whose lease was taken over, and its successor) finish the same run of
    a Lance output: each shard's record is created once, the run is committed once, and a commit onto a
    table that moved since the run began is refused rather than stacked on it."""
    pytest.importorskip("lance")
    from jobs.manifest import OutputConflict
    from jobs.sinks.lance import LanceSink

    uri = str(tmp_path / "out.lance")
    job = {"plan_fingerprint": "plan-1", "settings_fingerprint": "s", "model": {"name": "m"}}
    first, second = LanceSink(uri), LanceSink(uri)
    for sink in (first, second):
        sink._job = {**job, "lance_base_version": 0}
    records = [first.write_shard(*_lance_shard(0), None, COUNTS)]
    assert second.write_shard(*_lance_shard(0), None, COUNTS)["skipped"] is True  # the first's record stands
    records.append(second.write_shard(*_lance_shard(1), None, COUNTS))
    table = first.records()
    assert table.num_rows == 2

    one = first._finish(table, 8)
    two = second._finish(table, 8)  # finds the first's commit of this run: commits nothing
    assert one["lance_version"] == two["lance_version"] == 1
    run = {"run": "plan-1", "base_version": 0}
    assert second._commit(table, run, 0)["version"] == 1  # even past the check in _finish
    ids = _lance_ids(uri)
    assert sorted(ids) == sorted(f"s{i}-{k}" for i in (0, 1) for k in range(4))

    # Another run that began at version 0 (a stale driver) may not land on version 1.
    stale = LanceSink(uri)
    stale._job = {**job, "plan_fingerprint": "plan-2", "lance_base_version": 0}
    with pytest.raises(OutputConflict, match="moved from version 0 to 1"):
        stale._commit(table, {"run": "plan-2", "base_version": 0}, 0)
    assert sorted(_lance_ids(uri)) == sorted(ids)
