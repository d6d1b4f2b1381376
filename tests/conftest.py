"""Suite-wide fixtures: a real S3-compatible server (moto server mode) on loopback for the storage tests.

Notes for code that writes to S3 through s3fs (checked against this server by tests/jobs/test_s3.py):
- There are no directories and no rename. `fs.mv(a, b)` is `fs.copy(a, b)` (a server-side CopyObject: the
  destination appears whole or not at all, never half-written) followed by `fs.rm(a)`; it is not atomic as a
  pair, so a crash between the two leaves both objects. Readers must therefore trust only the manifest
  record (written after the data object) and ignore _tmp/. A plain `fs.pipe(path, data)` / `fs.open(path,
  "wb")` upload is itself all-or-nothing on S3 (single PUT, or multipart completed only on close), so a
  staged copy is not needed for atomicity on S3; it is kept for local disk, where it is.
- `fs.makedirs`/`fs.mkdir` under a bucket are no-ops; `fs.exists(prefix)` is True only once an object sits
  under it. `fs.ls` of a missing prefix raises FileNotFoundError; `fs.find(prefix)` returns [].
- s3fs caches listings per filesystem instance (`use_listings_cache`) and caches instances by their
  arguments: after another process wrote, call `fs.invalidate_cache(path)` (or open with
  `skip_instance_cache=True`) before trusting `ls`/`exists`.
- Credentials reach s3fs either as storage options (key/secret/token, endpoint in endpoint_url or
  client_kwargs) or from the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN,
  AWS_ENDPOINT_URL); both are what users pass, and both are exercised.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

# Distinctive values so the security tests can grep outputs and logs for them.
S3_ACCESS_KEY = "AKIAMOTOTESTKEY4242"
S3_SECRET_KEY = "moto-secret-Zq8x7Kf3pL0wVbN2"
S3_SESSION_TOKEN = "moto-session-Tk9Qw3Er5Ty7Ui1Op"
S3_REGION = "us-east-1"
S3_BUCKETS = ("embedjob-in", "embedjob-out")


def embedder_helpers():
    """tests/embedder/conftest.py as a module (its tiny-model writers), without making tests/ a package."""
    name = "_embedder_test_helpers"
    if name not in sys.modules:
        path = os.path.join(os.path.dirname(__file__), "embedder", "conftest.py")
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture(scope="session")
def tiny_st_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny random sentence-transformers folder (BERT + mean pooling, safetensors), shared by the session."""
    helpers = embedder_helpers()
    path = helpers.save_tiny_bert(tmp_path_factory.mktemp("tiny-st") / "model")
    return helpers.add_st_files(path, max_seq_length=32)


@pytest.fixture(scope="session")
def tiny_pickle_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The same tiny model with its weights only in pytorch_model.bin (pickle), for the allow_pickle tests."""
    helpers = embedder_helpers()
    path = helpers.save_tiny_bert(tmp_path_factory.mktemp("tiny-pickle") / "model", safetensors=False)
    return helpers.add_st_files(path, max_seq_length=32)


@pytest.fixture(scope="session")
def ray_session():
    """ONE local Ray (2 CPUs) for every test that runs jobs in-process: ray.init costs seconds and hundreds
    of MiB. Stopped at the end of the session (pytest_sessionfinish)."""
    ray = pytest.importorskip("ray")
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    yield ray


def pytest_sessionfinish(session, exitstatus):
    """Stop the shared local Ray (if a test started one) before the interpreter exits."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()


def corpus(n: int, *, seed: int = 0, prefix: str = "") -> list[str]:
    """`n` short texts in the tiny models' vocabulary, distinct and reproducible."""
    import random

    words = embedder_helpers().WORDS
    rng = random.Random(seed)
    return [
        f"{prefix}{i} " + " ".join(rng.choice(words) for _ in range(rng.randint(1, 12))) for i in range(n)
    ]


def write_parquet(fs, path: str, table, row_group_size: int | None = None) -> str:
    """Write `table` as Parquet at `path` on `fs` (an fsspec filesystem); returns the path."""
    import pyarrow.parquet as pq

    with fs.open(path, "wb") as f:
        pq.write_table(table, f, row_group_size=row_group_size)
    return path


def read_output(fs, root: str):
    """(manifest records, concatenated output table) of a job output, trusting only the manifest."""
    import json
    import posixpath

    import pyarrow as pa
    import pyarrow.parquet as pq

    root = root.split("://", 1)[-1].rstrip("/")
    by_id = {}
    for name in sorted(fs.ls(posixpath.join(root, ".embedjob", "_manifest"), detail=False)):
        if name.endswith(".json"):
            found = [json.loads(fs.cat(name))]
        elif name.endswith(".parquet"):  # records the driver folded
            with fs.open(name, "rb") as f:
                found = pq.read_table(f).to_pylist()
        else:
            continue
        for r in found:
            by_id.setdefault(r["shard_id"], r)
    records = sorted(by_id.values(), key=lambda r: r["index"])
    tables = []
    for r in records:
        with fs.open(posixpath.join(root, r["file"]), "rb") as f:
            tables.append(pq.read_table(f))
    return records, (pa.concat_tables(tables) if tables else None)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class S3Server:
    """A running moto S3 server: where it listens and how a user would pass credentials to it."""

    endpoint: str
    buckets: tuple[str, ...]
    storage_options: dict = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)

    def fs(self, **overrides):
        """A fresh s3fs filesystem on this server (no instance or listing cache shared with the code under test)."""
        import s3fs

        options = {**self.storage_options, **overrides}
        return s3fs.S3FileSystem(skip_instance_cache=True, use_listings_cache=False, **options)

    def prefix(self, bucket: str | None = None, name: str = "t") -> str:
        """A fresh, empty `s3://bucket/<name>-<uuid>` prefix, so tests sharing the server never collide."""
        return f"s3://{bucket or self.buckets[0]}/{name}-{uuid.uuid4().hex[:10]}"


@contextlib.contextmanager
def moto_server(env: dict[str, str] | None = None) -> Iterator[tuple[str, S3Server]]:
    """`python -m moto.server` on 127.0.0.1:<free port> with `env` added, its buckets made; stopped by PID."""
    pytest.importorskip("moto.server")
    pytest.importorskip("s3fs")
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    log_file = open(os.path.join(os.environ.get("TMPDIR", "/tmp"), f"moto-{port}.log"), "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log_file,
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"moto server exited with {proc.returncode}; see {log_file.name}")
            try:
                urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"moto server did not answer on {endpoint} within 30 s") from None
                time.sleep(0.1)
        server = S3Server(
            endpoint=endpoint,
            buckets=S3_BUCKETS,
            storage_options={
                "key": S3_ACCESS_KEY,
                "secret": S3_SECRET_KEY,
                "token": S3_SESSION_TOKEN,
                "client_kwargs": {"endpoint_url": endpoint, "region_name": S3_REGION},
            },
            env={
                "AWS_ACCESS_KEY_ID": S3_ACCESS_KEY,
                "AWS_SECRET_ACCESS_KEY": S3_SECRET_KEY,
                "AWS_SESSION_TOKEN": S3_SESSION_TOKEN,
                "AWS_ENDPOINT_URL": endpoint,
                "AWS_ENDPOINT_URL_S3": endpoint,
                "AWS_DEFAULT_REGION": S3_REGION,
                "AWS_REGION": S3_REGION,
            },
        )
        import boto3

        # boto3 rather than fs.mkdir: s3fs sends a LocationConstraint that us-east-1 rejects.
        client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name=S3_REGION,
            aws_access_key_id=S3_ACCESS_KEY,
            aws_secret_access_key=S3_SECRET_KEY,
            aws_session_token=S3_SESSION_TOKEN,
        )
        for bucket in S3_BUCKETS:
            client.create_bucket(Bucket=bucket)
        yield endpoint, server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log_file.close()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """One moto S3 server for the session (no authentication, as moto runs by default)."""
    with moto_server() as (_, server):
        yield server


@pytest.fixture
def s3_env(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    """The S3 server with its credentials and endpoint set in this process's environment (as users do)."""
    for name, value in s3_server.env.items():
        monkeypatch.setenv(name, value)
    return s3_server


@pytest.fixture(scope="session")
def jobio():
    """Helpers for job tests: corpus(n), write_parquet(fs, path, table), read_output(fs, root)."""
    import types

    return types.SimpleNamespace(corpus=corpus, write_parquet=write_parquet, read_output=read_output)


@pytest.fixture(scope="session")
def start_moto():
    """moto_server as a fixture: `with start_moto(env) as (endpoint, server):` for a server of its own."""
    return moto_server
