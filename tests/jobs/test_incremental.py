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
    deleted = pq.read_table(os.path.join(out2, ".embedjob", "_deleted")).column("id").to_pylist()
    assert sorted(deleted) == ["doc-10", "doc-61"]
    assert json.load(open(os.path.join(out2, ".embedjob", "_SUCCESS")))["deleted"] == 2

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


def test_previous_at_another_compute_precision_reuses_nothing(tmp_path, tiny_st_model, jobio, jobkit):
    """bf16 vectors never mix with float32 ones: the settings fingerprint covers model.compute_precision."""
    rows = dict(enumerate(jobio.corpus(30, seed=9)))
    write(tmp_path / "in", rows)
    out1 = str(tmp_path / "out1")
    run_job(jobkit.job_spec(tiny_st_model, str(tmp_path / "in"), out1), progress=False, keep_warm=True)
    out2 = str(tmp_path / "out2")
    spec = jobkit.job_spec(
        tiny_st_model, str(tmp_path / "in"), out2, previous=out1, model={"compute_precision": "bfloat16"}
    )
    summary = run_job(spec, progress=False, keep_warm=True)
    assert (summary["embedded"], summary["reused"], summary["deleted"]) == (30, 0, 0)
    job = json.load(open(os.path.join(out2, ".embedjob", "_job.json")))
    assert job["spec"]["model"]["compute_precision"] == "bfloat16"
    assert job["model"]["pipeline"]["compute_precision"] == "bfloat16"
    _, first = jobkit.read_job(out1)
    _, second = jobkit.read_job(out2)
    a, b = jobkit.vectors(by_id(first)), jobkit.vectors(by_id(second))
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    assert np.abs(a - b).max() > 0 and cos.min() >= 0.99


def write_layout(folder, rows: dict[int, str], files: int, seed: int) -> None:
    """rows {i: text} shuffled, then split into `files` files under names no earlier export used."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(sorted(rows))
    os.makedirs(folder, exist_ok=True)
    for k, ids in enumerate(np.array_split(order, files)):
        table = pa.table({"id": [f"doc-{i}" for i in ids], "text": [rows[int(i)] for i in ids]})
        pq.write_table(table, os.path.join(folder, f"export-{seed}-{k:03d}.parquet"), row_group_size=7)


def by_id(table: pa.Table) -> pa.Table:
    return table.sort_by("id")


@pytest.fixture
def small_buckets(monkeypatch):
    """Many id buckets and gather tasks on a small input, so each path crosses boundaries (the second run's
    larger input also splits each of the previous index's buckets in two)."""
    import jobs.index
    import jobs.keypass

    monkeypatch.setenv("EMBEDJOB_IDS_PER_BUCKET", "40")
    monkeypatch.setattr(jobs.keypass, "GATHER_BYTES", 2 * 25 * 32 * 4)  # two previous parts per gather task
    monkeypatch.setattr(jobs.keypass, "ROWS_PER_SCAN", 60)
    monkeypatch.setattr(jobs.index, "ROWS_PER_INDEX_TASK", 60)


def test_reexport_under_new_names_and_repartitioned_reuses_by_id(
    tmp_path, tiny_st_model, jobio, jobkit, small_buckets
):
    """Nightly: the same corpus exported again (new names, other partitioning, rows moved), 1% changed,
    added and deleted: counts exact, the output equal to a fresh full run, and reported in _SUCCESS."""
    texts = jobio.corpus(310, seed=21)
    before = {i: texts[i] for i in range(300)}
    write_layout(tmp_path / "in1", before, files=3, seed=1)
    out1 = str(tmp_path / "out1")
    first = run_job(
        jobkit.job_spec(tiny_st_model, str(tmp_path / "in1"), out1), progress=False, keep_warm=True
    )
    assert first["embedded"] == 300 and first["indexed"] == 300

    # The same rows under new names and in 5 files instead of 3: every vector is reused.
    write_layout(tmp_path / "same", before, files=5, seed=2)
    out_same = str(tmp_path / "same-out")
    spec = jobkit.job_spec(tiny_st_model, str(tmp_path / "same"), out_same, previous=out1)
    same = run_job(spec, progress=False, keep_warm=True)
    assert (same["embedded"], same["reused"], same["deleted"]) == (0, 300, 0)

    after = dict(before)
    for i in (5, 150, 299):
        after[i] = f"changed text number {i} about the dog"
    for i in (17, 88, 240):
        del after[i]
    for i in (300, 301, 302):
        after[i] = texts[i]
    write_layout(tmp_path / "in2", after, files=7, seed=3)
    out2 = str(tmp_path / "out2")
    spec = jobkit.job_spec(tiny_st_model, str(tmp_path / "in2"), out2, previous=out_same)
    summary = run_job(spec, progress=False, keep_warm=True)
    assert (summary["embedded"], summary["reused"], summary["deleted"]) == (6, 294, 3)
    success = json.load(open(os.path.join(out2, ".embedjob", "_SUCCESS")))
    assert (success["embedded"], success["reused"], success["deleted"]) == (6, 294, 3)
    deleted = pq.read_table(os.path.join(out2, ".embedjob", "_deleted")).column("id").to_pylist()
    assert sorted(deleted) == ["doc-17", "doc-240", "doc-88"]
    assert not os.path.exists(
        os.path.join(out2, ".embedjob", "_work")
    )  # the key pass's files go once the job succeeds

    full = str(tmp_path / "full")
    run_job(jobkit.job_spec(tiny_st_model, str(tmp_path / "in2"), full), progress=False, keep_warm=True)
    inc, fresh = by_id(jobkit.read_job(out2)[1]), by_id(jobkit.read_job(full)[1])
    assert inc.column("id").to_pylist() == fresh.column("id").to_pylist()
    assert inc.column("text_hash").to_pylist() == fresh.column("text_hash").to_pylist()
    assert np.abs(jobkit.vectors(inc) - jobkit.vectors(fresh)).max() <= 1e-4


def test_previous_output_without_an_index_is_indexed_on_the_fly(tmp_path, tiny_st_model, jobio, jobkit):
    """An output written before the id index existed (no _index/) still lends its vectors."""
    import shutil

    rows = dict(enumerate(jobio.corpus(60, seed=22)))
    write_layout(tmp_path / "in1", rows, files=2, seed=4)
    out1 = str(tmp_path / "out1")
    run_job(jobkit.job_spec(tiny_st_model, str(tmp_path / "in1"), out1), progress=False, keep_warm=True)
    shutil.rmtree(os.path.join(out1, ".embedjob", "_index"))
    write_layout(tmp_path / "in2", rows, files=3, seed=5)
    spec = jobkit.job_spec(tiny_st_model, str(tmp_path / "in2"), str(tmp_path / "out2"), previous=out1)
    summary = run_job(spec, progress=False, keep_warm=True)
    assert (summary["embedded"], summary["reused"], summary["deleted"]) == (0, 60, 0)


def test_an_output_of_the_old_layout_still_lends_its_vectors(tmp_path, tiny_st_model, jobio, jobkit):
    """An output written before the metadata folder (its _job.json, manifest and index at the top) is read as
    --previous: every unchanged vector is reused."""
    import shutil

    rows = dict(enumerate(jobio.corpus(40, seed=23)))
    write_layout(tmp_path / "in1", rows, files=2, seed=6)
    old = str(tmp_path / "old")
    run_job(jobkit.job_spec(tiny_st_model, str(tmp_path / "in1"), old), progress=False, keep_warm=True)
    meta = os.path.join(old, ".embedjob")
    for name in os.listdir(meta):
        shutil.move(os.path.join(meta, name), os.path.join(old, name))
    os.rmdir(meta)
    write_layout(tmp_path / "in2", rows, files=3, seed=7)
    spec = jobkit.job_spec(tiny_st_model, str(tmp_path / "in2"), str(tmp_path / "new"), previous=old)
    summary = run_job(spec, progress=False, keep_warm=True)
    assert (summary["embedded"], summary["reused"], summary["deleted"]) == (0, 40, 0)
