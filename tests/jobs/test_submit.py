"""Submission: auth token lookup, runtime_env and entrypoint, status codes, the nightly templating, and a real
local Ray head (token auth on) that runs `embedjob submit` end to end."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from jobs import nightly, submit
from jobs.manifest import OutputStore

BIN = os.path.dirname(sys.executable)
REPO = Path(__file__).resolve().parents[2]
SECRET = "fwd-secret-Vb7Qx2Lm9Pz4"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="embedjob")
    submit.add_commands(parser.add_subparsers(dest="command", required=True))
    return parser


# ---------------------------------------------------------------- auth token


def test_auth_token_env_wins(tmp_path: Path) -> None:
    token_file = tmp_path / "tok"
    token_file.write_text("from-file\n")
    env = {"RAY_AUTH_TOKEN": "from-env", "RAY_AUTH_TOKEN_PATH": str(token_file), "HOME": str(tmp_path)}
    assert submit.auth_token(env) == "from-env"
    assert submit.auth_token({"RAY_AUTH_TOKEN_PATH": str(token_file), "HOME": str(tmp_path)}) == "from-file"


def test_auth_token_default_file_and_disabled(tmp_path: Path) -> None:
    assert submit.auth_token({"HOME": str(tmp_path)}) is None
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("home-token")
    assert submit.auth_token({"HOME": str(tmp_path)}) == "home-token"
    assert (
        submit.auth_token({"HOME": str(tmp_path), "RAY_AUTH_MODE": "disabled", "RAY_AUTH_TOKEN": "x"}) is None
    )


def test_auth_token_named_file_must_exist(tmp_path: Path) -> None:
    with pytest.raises(submit.SubmitError, match="RAY_AUTH_TOKEN_PATH=.*missing"):
        submit.auth_token({"RAY_AUTH_TOKEN_PATH": str(tmp_path / "missing"), "HOME": str(tmp_path)})
    (tmp_path / "empty").write_text("  \n")
    with pytest.raises(submit.SubmitError, match="empty"):
        submit.auth_token({"RAY_AUTH_TOKEN_PATH": str(tmp_path / "empty"), "HOME": str(tmp_path)})


# ---------------------------------------------------------------- what gets submitted


def test_entrypoint_forwards_overrides_only() -> None:
    entry = submit.build_entrypoint(
        {"output": "s3://b/out dir", "previous": None, "model": "m"}, overwrite=True
    )
    assert shlex.split(entry) == [
        *submit.ENTRYPOINT,
        "job.yaml",
        "--model",
        "m",
        "--output",
        "s3://b/out dir",
        "--overwrite",
        "--no-progress",
    ]


def test_entrypoint_refuses_password_in_uri() -> None:
    with pytest.raises(submit.SubmitError, match="--input s3://.*password"):
        submit.build_entrypoint({"input": "s3://AKIA:hunter2-secret@bucket/in"})


def test_runtime_env_carries_packages_job_and_forwarded_env(tmp_path: Path) -> None:
    env = submit.forwarded_env(["AWS_SECRET_ACCESS_KEY"], {"AWS_SECRET_ACCESS_KEY": SECRET})
    runtime_env = submit.build_runtime_env(str(tmp_path), env)
    assert runtime_env["working_dir"] == str(tmp_path)
    assert [os.path.basename(p) for p in runtime_env["py_modules"]] == ["embedder", "jobs"]
    assert all(os.path.isfile(os.path.join(p, "__init__.py")) for p in runtime_env["py_modules"])
    assert runtime_env["env_vars"] == {"AWS_SECRET_ACCESS_KEY": SECRET}
    assert "py_modules" not in submit.build_runtime_env(str(tmp_path), {}, upload_package=False)
    with pytest.raises(submit.SubmitError, match="--env NOPE_A, NOPE_B: not set"):
        submit.forwarded_env(["NOPE_A", "HOME", "NOPE_B"], {"HOME": "/root"})


def test_relative_paths_are_refused(tmp_path: Path) -> None:
    job = tmp_path / "job.yaml"
    job.write_text(
        yaml.safe_dump({"model": "org/model", "input": {"uri": "s3://b/in"}, "output": {"uri": "out/x"}})
    )
    data = yaml.safe_load(job.read_text())
    with pytest.raises(submit.SubmitError, match="output.uri: 'out/x' is a relative path"):
        submit.check_locations(data)
    submit.check_locations({**data, "output": {"uri": "/shared/out"}})
    with pytest.raises(submit.SubmitError, match="previous: 'prev' is a relative path"):
        submit.check_locations({**data, "output": {"uri": "gs://b/out"}, "previous": "prev"})


def test_submission_id_is_readable_and_unique() -> None:
    now = dt.datetime(2026, 11, 25, 2, 0, tzinfo=dt.timezone.utc)
    a, b = submit.submission_id("conf/My Job.yaml", now), submit.submission_id("conf/My Job.yaml", now)
    assert a.startswith("embedjob-My-Job-20261125t020000z-") and a != b


def test_cli_parses_submit_flags() -> None:
    args = _parser().parse_args(
        [
            "submit",
            "job.yaml",
            "--address",
            "http://h:8265",
            "--env",
            "A",
            "--env",
            "B",
            "--no-wait",
            "--previous",
            "s3://b/prev",
            "--overwrite",
        ]
    )
    assert args.func is submit.submit
    assert (args.job, args.address, args.env, args.no_wait) == (
        "job.yaml",
        "http://h:8265",
        ["A", "B"],
        True,
    )
    assert (args.previous, args.overwrite, args.output) == ("s3://b/prev", True, None)


class FakeClient:
    """Stands in for JobSubmissionClient: a log stream (or a broken one) and a status sequence."""

    def __init__(
        self,
        chunks: list[str],
        statuses: list[str],
        message: str = "",
        broken: bool = False,
        driver_exit_code: int | None = None,
    ):
        self.chunks, self.statuses, self.message, self.broken = chunks, statuses, message, broken
        self.driver_exit_code = driver_exit_code

    async def tail_job_logs(self, job_id: str):
        for chunk in self.chunks:
            yield chunk
        if self.broken:
            raise RuntimeError("WebSocket connection closed unexpectedly with close code 1006")

    def get_job_status(self, job_id: str) -> str:
        return self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]

    def get_job_info(self, job_id: str) -> argparse.Namespace:
        return argparse.Namespace(
            status=self.statuses[-1], message=self.message, driver_exit_code=self.driver_exit_code
        )


def test_follow_streams_logs_and_returns_the_outcome(capsys: pytest.CaptureFixture[str]) -> None:
    client = FakeClient(["line 1\n", "line 2\n"], ["RUNNING", "SUCCEEDED"])
    assert submit.follow(client, "j1") == 0
    out = capsys.readouterr()
    assert out.out == "line 1\nline 2\n" and "job j1: SUCCEEDED" in out.err
    failed = FakeClient(
        [], ["FAILED"], message="Job entrypoint command failed with exit code 1, last logs:\nboom"
    )
    assert submit.follow(failed, "j2") == 1
    assert (
        "job j2: FAILED (Job entrypoint command failed with exit code 1, last logs:)"
        in capsys.readouterr().err
    )


def test_follow_survives_a_broken_log_stream(monkeypatch, capsys: pytest.CaptureFixture[str]) -> None:
    client = FakeClient(["partial\n"], ["RUNNING", "RUNNING", "STOPPED"], broken=True)
    monkeypatch.setattr(submit.time, "sleep", lambda s: None)
    assert submit.follow(client, "j3") == 1
    assert "log stream for j3 broke" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("status", "driver_exit", "code"),
    [
        ("SUCCEEDED", 0, 0),
        ("FAILED", 1, 1),
        ("FAILED", 2, 2),  # the spec was invalid on the cluster (e.g. a python-package: model not there)
        ("FAILED", 3, 3),  # `embedjob run` finished with quarantined rows: the same 3 as a local run
        ("FAILED", None, 1),  # Ray could not start the entrypoint
        ("FAILED", 137, 1),
        ("STOPPED", None, 1),  # once 3, which now means quarantined rows only
        ("RUNNING", None, 4),
        ("PENDING", None, 4),
    ],
)
def test_submit_exit_codes_mean_what_runs_do(status: str, driver_exit: int | None, code: int) -> None:
    assert submit.exit_code(status, driver_exit) == code


def test_follow_passes_on_a_quarantine_exit(capsys: pytest.CaptureFixture[str]) -> None:
    message = "Job entrypoint command failed with exit code 3, last available logs:\n..."
    client = FakeClient([], ["FAILED"], message=message, driver_exit_code=3)
    assert submit.follow(client, "j4") == 3
    assert "exit 3: finished with quarantined rows" in capsys.readouterr().err


def test_status_of_unreachable_cluster_is_exit_5(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert submit.job_status("nope", f"http://127.0.0.1:{port}", {"HOME": "/nonexistent"}) == 5
    assert "job 'nope'" in capsys.readouterr().err


def test_submit_missing_job_file_is_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = _parser().parse_args(["submit", str(tmp_path / "nope.yaml"), "--address", "http://127.0.0.1:1"])
    assert args.func(args) == 2
    assert "nope.yaml" in capsys.readouterr().err


# ---------------------------------------------------------------- nightly: last good run, templated RayJob


def _run(root: Path, name: str, success: bool) -> None:
    (root / name / ".embedjob" / "_manifest").mkdir(parents=True)
    if success:
        (root / name / ".embedjob" / "_SUCCESS").write_text("{}")


def test_latest_successful_run_skips_unfinished(tmp_path: Path) -> None:
    assert nightly.latest_successful_run(str(tmp_path / "missing")) is None
    assert nightly.latest_successful_run(str(tmp_path)) is None
    # Created out of order; the newest-named one has no _SUCCESS (still running or failed).
    _run(tmp_path, "20261124T020000Z", True)
    _run(tmp_path, "20261125T020000Z", False)
    _run(tmp_path, "20261122T020000Z", True)
    (tmp_path / "20261126T020000Z").write_text("a file, not a run")
    assert nightly.latest_successful_run(str(tmp_path) + "/") == f"{tmp_path}/20261124T020000Z"


def test_latest_successful_run_on_s3(s3_server) -> None:
    prefix = s3_server.prefix(name="nightly")
    fs = s3_server.fs()
    for name, ok in (("20261123T020000Z", True), ("20261124T020000Z", True), ("20261125T020000Z", False)):
        fs.pipe(f"{prefix}/{name}/_manifest/s0.json", b"{}")
        if ok:
            fs.pipe(f"{prefix}/{name}/_SUCCESS", b"{}")
    assert nightly.latest_successful_run(prefix, s3_server.storage_options) == f"{prefix}/20261124T020000Z"


TEMPLATE = {
    "apiVersion": "ray.io/v1",
    "kind": "RayJob",
    "metadata": {"name": "embed-nightly", "labels": {"app": "embedjob"}},
    "spec": {
        "entrypoint": "embedjob run /etc/embedjob/nightly.yaml",
        "clusterSelector": {"ray.io/cluster": "x"},
    },
}


def test_nightly_rayjob_points_previous_at_last_good_run() -> None:
    now = dt.datetime(2026, 11, 25, 2, 0, 5, tzinfo=dt.timezone.utc)
    doc = nightly.nightly_rayjob(TEMPLATE, "s3://b/nightly/", now, "s3://b/nightly/20261124T020000Z")
    assert doc["metadata"]["name"] == "embed-nightly-20261125t020005z"
    assert doc["metadata"]["labels"] == {"app": "embedjob", "embedjob/run": "20261125t020005z"}
    assert shlex.split(doc["spec"]["entrypoint"]) == [
        "embedjob",
        "run",
        "/etc/embedjob/nightly.yaml",
        "--output",
        "s3://b/nightly/20261125T020005Z",
        "--previous",
        "s3://b/nightly/20261124T020000Z",
    ]
    assert TEMPLATE["spec"]["entrypoint"] == "embedjob run /etc/embedjob/nightly.yaml"  # template untouched
    first = nightly.nightly_rayjob(TEMPLATE, "s3://b/nightly", now, None)
    assert "--previous" not in first["spec"]["entrypoint"]
    bad = {**TEMPLATE, "spec": {"entrypoint": "embedjob run j.yaml --output s3://x"}}
    with pytest.raises(nightly.NightlyError, match="--output is set per run"):
        nightly.nightly_rayjob(bad, "s3://b/n", now, None)
    bad = {**TEMPLATE, "spec": {"entrypoint": "embedjob run j.yaml --previous=s3://x"}}
    with pytest.raises(nightly.NightlyError, match="--previous is set per run"):
        nightly.nightly_rayjob(bad, "s3://b/n", now, None)


def test_nightly_rayjob_updates_a_lance_table_in_place() -> None:
    """A `.lance` prefix is one live table: every night's --output and --previous; a full run overwrites it."""
    now = dt.datetime(2026, 11, 25, 2, 0, 5, tzinfo=dt.timezone.utc)
    table = "s3://b/vectors.lance"
    doc = nightly.nightly_rayjob(TEMPLATE, table, now, table)
    assert shlex.split(doc["spec"]["entrypoint"])[3:] == ["--output", table, "--previous", table]
    full = nightly.nightly_rayjob(TEMPLATE, table, now, None)
    assert shlex.split(full["spec"]["entrypoint"])[3:] == ["--output", table, "--overwrite"]


def test_nightly_command_prints_rayjob_yaml(tmp_path: Path) -> None:
    """What the CronJob runs: `python -m jobs.nightly nightly-rayjob ...` prints the RayJob on stdout."""
    template = tmp_path / "t.yaml"
    template.write_text(yaml.safe_dump(TEMPLATE))
    runs = tmp_path / "runs"
    _run(runs, "20261124T020000Z", True)
    argv = [
        "nightly-rayjob",
        "--template",
        str(template),
        "--prefix",
        str(runs),
        "--now",
        "2026-11-25T02:00:00",
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "jobs.nightly", *argv], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    doc = yaml.safe_load(proc.stdout)
    assert shlex.split(doc["spec"]["entrypoint"])[-4:] == [
        "--output", f"{runs}/20261125T020000Z", "--previous", f"{runs}/20261124T020000Z"]  # fmt: skip
    assert f"previous successful run: {runs}/20261124T020000Z" in proc.stderr
    full = subprocess.run(
        [sys.executable, "-m", "jobs.nightly", *argv, "--full"], capture_output=True, text=True
    )
    assert "--previous" not in yaml.safe_load(full.stdout)["spec"]["entrypoint"]


# ---------------------------------------------------------------- a real local Ray head


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class RayHead:
    """A `ray start --head` of our own: its dashboard address and the client environment that reaches it."""

    address: str
    env: dict[str, str]
    temp_dir: str
    log: str


MARKER_VAR = "EMBEDJOB_TEST_RAY_SESSION"


def _pids_with_marker(marker: str) -> list[int]:
    """Our Ray processes: every process that inherited the marker variable from our `ray start`."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if f"{MARKER_VAR}={marker}".encode() in f.read().split(b"\0"):
                    pids.append(int(entry))
        except OSError:
            continue
    return pids


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM when the test process dies, even by SIGKILL (Linux prctl)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGTERM))  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _stop_head(proc: subprocess.Popen, marker: str) -> None:
    """Stop only the processes of this head (never `ray stop`, which would kill other Ray sessions here)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        pids = _pids_with_marker(marker)
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGTERM if time.monotonic() < deadline - 10 else signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.5)
    for pid in _pids_with_marker(marker):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="module")
def ray_head() -> Iterator[RayHead]:
    """A local head on 127.0.0.1 with the Jobs API and token auth on, in its own temp dir; stopped afterwards."""
    pytest.importorskip("ray")
    # Short path: Ray's unix sockets live under it and must stay within 107 characters.
    temp_dir = tempfile.mkdtemp(prefix="ejray-", dir="/tmp")
    marker, token = uuid.uuid4().hex, uuid.uuid4().hex
    dash_port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(
        {
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": token,
            "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",  # SIGTERM: stop now, no 30 s drain
            "PATH": BIN + os.pathsep + env.get("PATH", ""),  # the job's `python` is this venv's
            "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            MARKER_VAR: marker,
        }
    )
    ports = {
        name: _free_port()
        for name in (
            "port",
            "ray-client-server-port",
            "dashboard-agent-listen-port",
            "dashboard-agent-grpc-port",
            "runtime-env-agent-port",
            "metrics-export-port",
        )
    }
    cmd = [os.path.join(BIN, "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
           "--dashboard-host=127.0.0.1", f"--dashboard-port={dash_port}", "--include-dashboard=true",
           "--num-cpus=2", "--num-gpus=0", f"--temp-dir={temp_dir}", f"--object-store-memory={200 * 2**20}",
           "--disable-usage-stats", *(f"--{name}={port}" for name, port in ports.items())]  # fmt: skip
    log = os.path.join(temp_dir, "ray-start.log")
    with open(log, "wb") as log_file:
        proc = subprocess.Popen(
            cmd,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd=temp_dir,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
    address = f"http://127.0.0.1:{dash_port}"
    client_env = {"RAY_AUTH_TOKEN": token, "HOME": temp_dir}
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"ray start exited with {proc.returncode}:\n{Path(log).read_text()[-3000:]}"
                )
            try:
                req = urllib.request.Request(
                    f"{address}/api/jobs/", headers={"Authorization": f"Bearer {token}"}
                )
                urllib.request.urlopen(req, timeout=2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"no Jobs API on {address} after 120 s:\n{Path(log).read_text()[-3000:]}"
                    ) from None
                time.sleep(0.5)
        yield RayHead(address=address, env=client_env, temp_dir=temp_dir, log=log)
    finally:
        _stop_head(proc, marker)
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.mark.slow
def test_token_is_required(ray_head: RayHead) -> None:
    # A fresh process: Ray caches the auth token per process once any test has started Ray.
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    env["HOME"] = ray_head.temp_dir
    cmd = [sys.executable, "-m", "jobs.cli", "status", "--job-id", "whatever", "--address", ray_head.address]
    done = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 5, done.stderr
    # Refused by the head ("Missing authentication token") or by the client before it asks; either names it.
    assert "authentication token" in done.stderr or "token authentication" in done.stderr.lower(), done.stderr


def test_explicit_address_beats_ray_address_env(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = {}

    class FakeClient:
        def __init__(self, address, headers=None):
            seen.update(address=address, env=os.environ.get("RAY_ADDRESS"), headers=headers)

    monkeypatch.setattr("ray.job_submission.JobSubmissionClient", FakeClient)
    monkeypatch.setenv("RAY_ADDRESS", "http://elsewhere:8265")
    submit.make_client("http://mine:8265", {"RAY_AUTH_TOKEN": "tok"})
    assert seen == {"address": "http://mine:8265", "env": None, "headers": {"Authorization": "Bearer tok"}}
    assert os.environ["RAY_ADDRESS"] == "http://elsewhere:8265"


# ---------------------------------------------------------------- end to end on the local head


def _conftest_helpers():
    """The tiny-model builders of tests/embedder/conftest.py (loaded by path: tests/ is not a package)."""
    import importlib.util

    path = REPO / "tests" / "embedder" / "conftest.py"
    spec = importlib.util.spec_from_file_location("_embedder_test_helpers", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny_job(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A tiny random sentence-transformers model, a 40-row Parquet input, and a job file writing to a folder."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    helpers = _conftest_helpers()
    root = tmp_path_factory.mktemp("submit-job")
    model = helpers.add_st_files(helpers.save_tiny_bert(root / "model"), pooling_mode="mean")
    words = helpers.WORDS
    texts = [" ".join(words[(i * 7 + k) % len(words)] for k in range(3 + i % 11)) for i in range(40)]
    ids = [f"doc-{i:03d}" for i in range(40)]
    pq.write_table(pa.table({"id": ids, "text": texts}), root / "input.parquet")
    job = root / "tiny-job.yaml"
    job.write_text(
        yaml.safe_dump(
            {
                "model": {"name": str(model)},
                "input": {"uri": str(root / "input.parquet"), "text_column": "text", "id_column": "id"},
                "output": {"uri": str(root / "unused"), "rows_per_file": 10},
                "compute": {"replicas": 1, "cpus_per_replica": 1, "device": "cpu", "batch_size": 8},
                "policy": {"on_bad_row": "quarantine"},
            }
        )
    )
    return {"root": root, "model": model, "job": job, "texts": dict(zip(ids, texts, strict=True))}


def _embedjob(
    head: RayHead, *argv: str, extra_env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run the `embedjob` console script as a user would, with only the token in its environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(head.env, **(extra_env or {}))
    return subprocess.run(
        [os.path.join(BIN, "embedjob"), *argv], env=env, capture_output=True, text=True, timeout=300
    )


@pytest.mark.slow
def test_submit_runs_the_job_on_the_cluster(ray_head: RayHead, tiny_job: dict, tmp_path: Path) -> None:
    import pyarrow.parquet as pq
    from ray.job_submission import JobSubmissionClient
    from sentence_transformers import SentenceTransformer

    out = tmp_path / "out"
    t0 = time.monotonic()
    proc = _embedjob(
        ray_head,
        "submit",
        str(tiny_job["job"]),
        "--address",
        ray_head.address,
        "--output",
        str(out),
        "--env",
        "HF_TOKEN",
        extra_env={"HF_TOKEN": SECRET},
    )
    seconds = time.monotonic() - t0
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    job_id = proc.stdout.splitlines()[0]
    assert job_id.startswith("embedjob-tiny-job-"), proc.stdout[:500]
    assert f"job {job_id}: SUCCEEDED" in proc.stderr
    print(f"embedjob submit end to end: {seconds:.1f} s")

    # The output is complete and right: every row once, vectors equal to sentence-transformers'.
    assert (out / ".embedjob" / "_SUCCESS").is_file() and (out / ".embedjob" / "_job.json").is_file()
    assert len(OutputStore(str(out / ".embedjob")).records()) == 4
    table = pq.read_table(sorted(out.glob("part-*.parquet")))
    assert sorted(table["id"].to_pylist()) == sorted(tiny_job["texts"])
    got = dict(zip(table["id"].to_pylist(), table["embedding"].to_pylist(), strict=True))
    oracle = SentenceTransformer(str(tiny_job["model"]), device="cpu")
    ids = sorted(got)
    want = oracle.encode([tiny_job["texts"][i] for i in ids], convert_to_numpy=True)
    import numpy as np

    have = np.asarray([got[i] for i in ids], dtype=np.float32)
    cos = (have * want).sum(1) / (np.linalg.norm(have, axis=1) * np.linalg.norm(want, axis=1))
    assert cos.min() >= 0.99999 and np.abs(have - want).max() <= 1e-4

    # The forwarded credential reached the job only through runtime_env: not the entrypoint, the metadata,
    # the logs or the output's metadata.
    client = JobSubmissionClient(
        ray_head.address, headers={"Authorization": f"Bearer {ray_head.env['RAY_AUTH_TOKEN']}"}
    )
    info = client.get_job_info(job_id)
    assert info.runtime_env["env_vars"] == {"HF_TOKEN": SECRET}
    assert SECRET not in info.entrypoint and SECRET not in json.dumps(info.metadata)
    assert SECRET not in client.get_job_logs(job_id) and SECRET not in proc.stdout + proc.stderr
    for meta in [
        out / ".embedjob" / "_job.json",
        out / ".embedjob" / "_SUCCESS",
        *(out / ".embedjob" / "_manifest").iterdir(),
    ]:
        assert SECRET.encode() not in meta.read_bytes(), meta.name
    assert ray_head.env["RAY_AUTH_TOKEN"] not in json.dumps(info.runtime_env) + info.entrypoint


@pytest.mark.slow
def test_no_wait_then_status_and_a_failing_job(ray_head: RayHead, tiny_job: dict, tmp_path: Path) -> None:
    bad = _embedjob(
        ray_head,
        "submit",
        str(tiny_job["job"]),
        "--address",
        ray_head.address,
        "--no-wait",
        "--input",
        str(tmp_path / "no-such-input.parquet"),
        "--output",
        str(tmp_path / "out"),
    )
    assert bad.returncode == 0, bad.stderr[-2000:]
    job_id = bad.stdout.strip()
    assert job_id.startswith("embedjob-tiny-job-") and "\n" not in job_id
    deadline = time.monotonic() + 120
    while True:
        status = _embedjob(ray_head, "status", "--job-id", job_id, "--address", ray_head.address)
        if status.returncode != 4 or time.monotonic() > deadline:
            break
        assert status.stdout.split("\t")[1].strip() in ("PENDING", "RUNNING")
        time.sleep(1)
    assert status.returncode == 1, status.stdout + status.stderr
    assert status.stdout.startswith(f"{job_id}\tFAILED")
    assert not (tmp_path / "out" / ".embedjob" / "_SUCCESS").exists()
    # A status query without the token is refused, and says so.
    refused = _embedjob(
        ray_head,
        "status",
        "--job-id",
        job_id,
        "--address",
        ray_head.address,
        extra_env={"RAY_AUTH_TOKEN": "", "HOME": ray_head.temp_dir},
    )
    assert refused.returncode == 5 and "Unauthorized" in refused.stderr
