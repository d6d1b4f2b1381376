"""The Lance sink: one dataset, each shard in exactly one committed version, indexes at the end."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs import run_job

lance = pytest.importorskip("lance")
pytestmark = pytest.mark.usefixtures("ray_session")


def table_of(uri: str) -> pa.Table:
    return lance.dataset(uri).to_table().sort_by("id")


def embedding(table: pa.Table) -> np.ndarray:
    col = table.column("embedding").combine_chunks()
    return col.flatten().to_numpy(zero_copy_only=False).reshape(len(col), col.type.list_size)


def test_lance_output_holds_every_row_once_with_an_index(tmp_path, tiny_st_model, jobio, jobkit, oracle):
    texts = jobio.corpus(300, seed=31)
    jobkit.write_files(str(tmp_path / "in"), texts, files=3, row_group_size=20)
    out = str(tmp_path / "vectors.lance")  # the suffix picks the Lance sink
    spec = jobkit.job_spec(
        tiny_st_model,
        str(tmp_path / "in"),
        out,
        output={"rows_per_file": 50, "vector_index": "ivf_pq", "id_index": True},
    )
    summary = run_job(spec, progress=False, keep_warm=True)
    assert summary["rows_written"] == 300 and summary["embedded"] == 300

    table = table_of(out)
    ids = table.column("id").to_pylist()
    assert len(ids) == len(set(ids)) == 300
    want = oracle([texts[int(i.split("-")[1])] for i in ids])
    assert np.abs(embedding(table) - want).max() <= 1e-4
    ds = lance.dataset(out)
    # One version per committed shard (9 shards: row groups of 20 cut at 50 rows), then one per index.
    shard_versions = [
        t
        for t in ds.get_transactions(ds.version)
        if t and "__lance_commit_message" in (t.transaction_properties or {})
    ]
    assert len(shard_versions) == summary["shards"] == 9
    indexed = {tuple(d.field_names): (d.type_url, d.num_rows_indexed) for d in ds.describe_indices()}
    assert indexed[("embedding",)] == ("/lance.index.pb.VectorIndexDetails", 300)
    assert indexed[("id",)] == ("/lance.table.BTreeIndexDetails", 300)
    assert json.load(open(os.path.join(out, "_embedjob", "_SUCCESS")))["rows_written"] == 300


def test_a_commit_not_yet_in_the_manifest_is_not_redone(tmp_path, tiny_st_model, jobio, jobkit):
    """The driver dies after committing shards but before folding their records: the rerun finds them in
    the versions' commit messages, redoes nothing and duplicates nothing."""
    texts = jobio.corpus(120, seed=32)
    jobkit.write_files(str(tmp_path / "in"), texts, files=2, row_group_size=20)
    out = str(tmp_path / "out.lance")
    spec = jobkit.job_spec(tiny_st_model, str(tmp_path / "in"), out, output={"rows_per_file": 40})
    run_job(spec, progress=False, keep_warm=True)
    meta = os.path.join(out, "_embedjob")
    shutil.rmtree(os.path.join(meta, "_manifest"))
    os.remove(os.path.join(meta, "_SUCCESS"))
    again = run_job(spec, progress=False, keep_warm=True)
    assert again["skipped_shards"] == again["shards"] == 4 and again["tokens"] == 0
    ids = table_of(out).column("id").to_pylist()
    assert len(ids) == len(set(ids)) == 120


def test_lance_quarantine_and_overwrite(tmp_path, tiny_st_model, jobkit):
    pq.write_table(
        pa.table({"id": ["a", "b", "c", "d"], "text": ["one", None, "three", "four"]}),
        str(tmp_path / "in.parquet"),
    )
    out = str(tmp_path / "q.lance")
    spec = jobkit.job_spec(
        tiny_st_model, str(tmp_path / "in.parquet"), out, policy={"on_bad_row": "quarantine"}
    )
    summary = run_job(spec, progress=False, keep_warm=True)
    assert summary["rows_written"] == 3 and summary["quarantined"] == 1
    assert table_of(out).column("id").to_pylist() == ["a", "c", "d"]
    errors = pq.read_table(os.path.join(out, "_embedjob", "_errors")).to_pylist()
    assert [(e["id"], e["reason"]) for e in errors] == [("b", "null text")]
    summary = run_job(spec, progress=False, keep_warm=True, overwrite=True)
    assert lance.dataset(out).count_rows() == 3


@pytest.mark.parametrize("suffix", ["parquet-out", "out.lance"])
def test_search_top_k_equals_brute_force(tmp_path, tiny_st_model, jobio, jobkit, suffix, capsys):
    """`embedjob search` on either sink: the same ids, in the same order, as numpy over the stored vectors."""
    from embedder import EmbeddingModel
    from jobs.cli import main

    texts = jobio.corpus(200, seed=33)
    jobkit.write_files(str(tmp_path / "in"), texts, files=2, row_group_size=25)
    out = str(tmp_path / suffix)
    run_job(jobkit.job_spec(tiny_st_model, str(tmp_path / "in"), out), progress=False, keep_warm=True)
    if suffix.endswith(".lance"):
        stored = table_of(out)
    else:
        stored = pq.read_table(out).sort_by("id")
    vectors = embedding(stored)
    query = "the cat sat on the mat"
    q = EmbeddingModel(tiny_st_model).encode_query([query])[0]
    cos = (vectors @ q) / (np.linalg.norm(vectors, axis=1) * np.linalg.norm(q))
    want = [stored.column("id")[int(j)].as_py() for j in np.argsort(-cos, kind="stable")[:10]]

    assert main(["search", out, query, "-k", "10", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert [h["rank"] for h in hits] == list(range(1, 11))
    assert [h["id"] for h in hits] == want
    assert np.allclose([h["score"] for h in hits], np.sort(cos)[::-1][:10], atol=1e-5)
    assert main(["search", out, query, "-k", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and lines[0].split()[2] == want[0]
