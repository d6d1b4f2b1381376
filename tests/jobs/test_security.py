"""Security: no credentials in outputs or logs, no remote code or pickle unless asked, keys under the prefix."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.run import JobError, run_job

# Credentials given as storage options in the job file (the environment carries the fixture's other ones).
OPTS_KEY = "AKIAOPTIONSKEY777"
OPTS_SECRET = "opts-secret-Hq2Wj8Lz5Xc3Vb9N"
OPTS_TOKEN = "opts-session-Rt6Yu1Io4Pa7Sd0F"


@pytest.mark.slow
def test_credentials_never_reach_outputs_or_logs(s3_server, jobio, tiny_st_model, tmp_path):
    """`embedjob run` with secrets in storage options AND the environment; grep every object and log for them."""
    import yaml

    fs = s3_server.fs()
    inp = s3_server.prefix(s3_server.buckets[0], "sec-in")
    out = s3_server.prefix(s3_server.buckets[1], "sec-out")
    texts = jobio.corpus(40, seed=11)
    jobio.write_parquet(fs, f"{inp}/a.parquet", pa.table({"id": [f"d{i}" for i in range(40)], "text": texts}))
    options = {
        "key": OPTS_KEY,
        "secret": OPTS_SECRET,
        "token": OPTS_TOKEN,
        "client_kwargs": {"endpoint_url": s3_server.endpoint, "region_name": "us-east-1"},
    }
    job = {
        "model": tiny_st_model,
        "input": {"uri": inp, "id_column": "id", "storage_options": options},
        "output": {"uri": out, "rows_per_file": 15, "storage_options": options},
        "compute": {"replicas": 1, "batch_size": 8},
        "policy": {"retries": 3},
    }
    job_file = tmp_path / "job.yaml"
    job_file.write_text(yaml.safe_dump(job))
    log_file = tmp_path / "log.jsonl"
    env = {**os.environ, **s3_server.env, "PYTHONPATH": os.getcwd(), "EMBEDJOB_WORKER_LOGS": "1"}
    # One transient write failure so the retry warning (with its error text) is logged too.
    env["EMBEDJOB_FAULTS"] = json.dumps([{"point": "storage.write", "match": "part-00001-", "times": 1}])
    env["EMBEDJOB_FAULTS_STATE"] = str(tmp_path / "faults")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "jobs.cli",
            "run",
            str(job_file),
            "--log-file",
            str(log_file),
            "--no-progress",
        ],
        env=env,
        capture_output=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    assert len(os.listdir(tmp_path / "faults")) == 1  # the retry path really ran

    secrets = [
        OPTS_KEY,
        OPTS_SECRET,
        OPTS_TOKEN,
        s3_server.env["AWS_SECRET_ACCESS_KEY"],
        s3_server.env["AWS_SESSION_TOKEN"],
    ]
    blobs = {"stdout": proc.stdout, "stderr": proc.stderr, "log file": log_file.read_bytes()}
    keys = fs.find(out[len("s3://") :])
    assert any(k.endswith("_job.json") for k in keys) and any("/_manifest/" in k for k in keys)
    for key in keys:
        blobs[key] = fs.cat(key)
    for name, blob in blobs.items():
        for secret in secrets:
            assert secret.encode() not in blob, f"{secret!r} found in {name}"
    assert b"attempt 1/" in proc.stderr  # the worker's retry warning reached the captured logs
    recorded = json.loads(blobs[next(k for k in keys if k.endswith("_job.json"))])
    assert recorded["spec"]["output"]["storage_options"]["secret"] == "***"
    assert (
        recorded["spec"]["output"]["storage_options"]["client_kwargs"]["endpoint_url"] == s3_server.endpoint
    )


def _remote_code_model(tiny_st_model: str, folder, marker) -> str:
    """A copy of the tiny model whose config needs custom code (auto_map); importing that code writes `marker`."""
    import shutil

    path = shutil.copytree(tiny_st_model, folder)
    config = json.load(open(os.path.join(path, "config.json")))
    config.update(
        model_type="xbert",
        auto_map={"AutoConfig": "configuration_xbert.XBertConfig", "AutoModel": "modeling_xbert.XBertModel"},
        architectures=["XBertModel"],
    )
    json.dump(config, open(os.path.join(path, "config.json"), "w"))
    with open(os.path.join(path, "configuration_xbert.py"), "w") as f:
        f.write(
            f"open({str(marker)!r}, 'a').write('imported\\n')\n"
            "from transformers import BertConfig\n\n\nclass XBertConfig(BertConfig):\n    model_type = 'xbert'\n"
        )
    with open(os.path.join(path, "modeling_xbert.py"), "w") as f:
        f.write(
            "from transformers import BertModel\n\nfrom .configuration_xbert import XBertConfig\n\n\n"
            "class XBertModel(BertModel):\n    config_class = XBertConfig\n"
        )
    return str(path)


def _spec(model: str, inp: str, out: str, **model_flags) -> dict:
    return {
        "model": {"name": model, **model_flags},
        "input": {"uri": inp, "id_column": "id"},
        "output": {"uri": out},
        "compute": {"replicas": 1, "batch_size": 8},
    }


@pytest.fixture
def small_input(tmp_path, jobio) -> tuple[str, list[str]]:
    texts = jobio.corpus(6, seed=5)
    path = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": [f"d{i}" for i in range(6)], "text": texts}), str(path))
    return str(path), texts


def test_remote_code_refused_unless_trusted(tmp_path, tiny_st_model, small_input, ray_session):
    from embedder import EmbeddingModel

    inp, texts = small_input
    marker = tmp_path / "remote-code-ran"
    model = _remote_code_model(tiny_st_model, tmp_path / "xbert", marker)
    with pytest.raises(JobError, match="could not load the model: .*trust_remote_code") as info:
        run_job(_spec(model, inp, str(tmp_path / "off")), progress=False)
    assert "Traceback" not in str(info.value) and len(str(info.value).splitlines()) == 1
    assert not marker.exists()  # the custom code never ran, in the driver or in an actor
    assert not (tmp_path / "off" / ".embedjob" / "_job.json").exists()

    run_job(_spec(model, inp, str(tmp_path / "on"), trust_remote_code=True), progress=False)
    assert marker.exists()
    got = np.array(pq.read_table(str(tmp_path / "on")).column("embedding").to_pylist())
    np.testing.assert_allclose(got, EmbeddingModel(tiny_st_model).encode(texts), atol=1e-5)


def test_pickle_weights_refused_unless_allowed(tmp_path, tiny_pickle_model, small_input, ray_session):
    inp, _ = small_input
    with pytest.raises(JobError, match="could not load the model: .*allow_pickle"):
        run_job(_spec(tiny_pickle_model, inp, str(tmp_path / "off")), progress=False)
    assert not (tmp_path / "off" / ".embedjob" / "_job.json").exists()
    summary = run_job(_spec(tiny_pickle_model, inp, str(tmp_path / "on"), allow_pickle=True), progress=False)
    assert summary["rows_written"] == 6


ODD_IDS = [
    "../../x",
    "/etc/passwd",
    "s3://other-bucket/key",
    "a/b/../../c",
    "..",
    "",
    "naïve 文件",
    "%2e%2e%2f",
    "a\\b",
    "\x00z",
]
ODD_NAMES = [
    "we ird #1%20.parquet",
    "dots..in...name.parquet",
    "naïve 文件.parquet",
    "q?x=1&y=[2].parquet",
    "-rf.parquet",
]


def test_output_keys_stay_under_prefix_on_s3(s3_server, jobio, tiny_st_model, ray_session):
    fs = s3_server.fs()
    inp = s3_server.prefix(s3_server.buckets[0], "odd-in")
    out = s3_server.prefix(s3_server.buckets[1], "odd-out")
    expected_ids = []
    for k, name in enumerate(ODD_NAMES):
        ids = [f"{i}{k}" for i in ODD_IDS]
        expected_ids += ids
        jobio.write_parquet(
            fs, f"{inp}/{name}", pa.table({"id": ids, "text": jobio.corpus(len(ids), seed=k)})
        )
    before_in = set(fs.find(s3_server.buckets[0]))
    before_out = set(fs.find(s3_server.buckets[1]))
    spec = {
        "model": tiny_st_model,
        "input": {"uri": inp, "id_column": "id", "storage_options": s3_server.storage_options},
        "output": {"uri": out, "rows_per_file": 7, "storage_options": s3_server.storage_options},
        "compute": {"replicas": 1, "batch_size": 8},
        "policy": {"on_bad_row": "quarantine"},
    }
    summary = run_job(spec, progress=False)
    assert summary["rows_written"] == len(expected_ids) and summary["quarantined"] == 0
    fs.invalidate_cache()
    assert set(fs.find(s3_server.buckets[0])) == before_in  # the input bucket is untouched
    new = set(fs.find(s3_server.buckets[1])) - before_out
    prefix = out[len("s3://") :] + "/"
    assert new and all(k.startswith(prefix) and ".." not in k[len(prefix) :].split("/") for k in new)
    records, table = jobio.read_output(fs, out)
    assert sorted(table.column("id").to_pylist()) == sorted(expected_ids)
    assert sorted(r["source"] for r in records if r["start"] == 0) == sorted(ODD_NAMES)


def test_output_keys_stay_under_prefix_on_local_disk(tmp_path, jobio, tiny_st_model, ray_session):
    inp = tmp_path / "in"
    inp.mkdir()
    for k, name in enumerate(ODD_NAMES):
        ids = [f"{i}{k}" for i in ODD_IDS]
        pq.write_table(pa.table({"id": ids, "text": jobio.corpus(len(ids), seed=k)}), str(inp / name))
    out = tmp_path / "deep" / "out"
    run_job(_spec(tiny_st_model, str(inp), str(out)), progress=False)
    outside = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()}
    assert {p for p in outside if not p.startswith(("deep/out/", "in/"))} == set()
    assert sorted(os.listdir(inp)) == sorted(ODD_NAMES)
