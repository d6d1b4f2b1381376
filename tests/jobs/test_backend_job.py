"""A job on the ONNX Runtime backend: same vectors as torch within the parity bound, another settings fingerprint."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from jobs import run_job

pytestmark = pytest.mark.usefixtures("ray_session")


def job_file(out: str) -> dict:
    with open(os.path.join(out, ".embedjob", "_job.json"), encoding="utf-8") as f:
        return json.load(f)


def test_a_job_runs_on_onnx_runtime(tmp_path, tiny_st_model, oracle, jobio, jobkit):
    texts = jobio.corpus(30, seed=5)
    jobkit.write_files(str(tmp_path / "in"), texts, files=1, row_group_size=30)
    outs = {}
    for backend in ("torch", "onnx"):
        outs[backend] = str(tmp_path / backend)
        spec = jobkit.job_spec(tiny_st_model, str(tmp_path / "in"), outs[backend], model={"backend": backend})
        run_job(spec, progress=False, keep_warm=True)
    _, table = jobkit.read_job(outs["onnx"])
    got, want = jobkit.vectors(table), oracle(texts)
    cosine = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    assert cosine.min() >= 0.99999 and np.abs(got - want).max() <= 1e-4
    torch_job, onnx_job = job_file(outs["torch"]), job_file(outs["onnx"])
    assert onnx_job["model"]["pipeline"]["backend"] == "onnx"
    assert onnx_job["model"]["pipeline"]["packed_reason"] == "backend 'onnx'"
    assert "backend" not in torch_job["model"]["pipeline"]
    assert onnx_job["settings_fingerprint"] != torch_job["settings_fingerprint"]
