"""--previous: only new and changed rows are embedded, deleted ids are listed, and the output equals a full run."""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs import run_job

pytestmark = pytest.mark.usefixtures("ray_session")


def write(folder, rows: dict[int, str], files: int = 2) -> None:
    """rows {i: text} as ids doc-<i>, split by id into `files` files (each with several row groups)."""
    os.makedirs(folder, exist_ok=True)
    for k in range(files):
        ids = [i for i in sorted(rows) if i % files == k]
        table = pa.table({"id": [f"doc-{i}" for i in ids], "text": [rows[i] for i in ids]})
        pq.write_table(table, os.path.join(folder, f"f{k}.parquet"), row_group_size=10)


def test_incremental_embeds_only_changes_and_equals_full_run(tmp_path, tiny_st_model, jobio, jobkit):
    texts = jobio.corpus(84, seed=8)
    before = {i: texts[i] for i in range(80)}
    write(tmp_path / "in1", before)
    out1 = str(tmp_path / "out1")
    run_job(jobkit.job_spec(tiny_st_model, str(tmp_path / "in1"), out1), progress=False, keep_warm=True)

    after = dict(before)
    after[3] = "a changed text about the cat"
    after[50] = "another changed text"
    del after[10], after[61]
    after[80], after[81] = texts[80], texts[81]
    write(tmp_path / "in2", after)
    out2 = str(tmp_path / "out2")
    spec = jobkit.job_spec(tiny_st_model, str(tmp_path / "in2"), out2, previous=out1)
    summary = run_job(spec, progress=False, keep_warm=True)
    assert (summary["embedded"], summary["reused"], summary["deleted"]) == (4, 76, 2)
    assert summary["rows_written"] == 80
    deleted = pq.read_table(os.path.join(out2, "_deleted")).column("id").to_pylist()
    assert sorted(deleted) == ["doc-10", "doc-61"]
    assert json.load(open(os.path.join(out2, "_SUCCESS")))["deleted"] == 2

    out3 = str(tmp_path / "full")
    run_job(jobkit.job_spec(tiny_st_model, str(tmp_path / "in2"), out3), progress=False, keep_warm=True)
    _, inc = jobkit.read_job(out2)
    _, full = jobkit.read_job(out3)
    assert inc.column("id").to_pylist() == full.column("id").to_pylist()
    assert inc.column("text_hash").to_pylist() == full.column("text_hash").to_pylist()
    assert np.abs(jobkit.vectors(inc) - jobkit.vectors(full)).max() <= 1e-4


def test_previous_with_other_settings_reuses_nothing(tmp_path, tiny_st_model, jobio, jobkit):
    rows = dict(enumerate(jobio.corpus(30, seed=9)))
    write(tmp_path / "in", rows)
    out1 = str(tmp_path / "out1")
    run_job(jobkit.job_spec(tiny_st_model, str(tmp_path / "in"), out1), progress=False, keep_warm=True)
    spec = jobkit.job_spec(
        tiny_st_model, str(tmp_path / "in"), str(tmp_path / "out2"), previous=out1, model={"normalize": True}
    )
    summary = run_job(spec, progress=False, keep_warm=True)
    assert (summary["embedded"], summary["reused"], summary["deleted"]) == (30, 0, 0)
