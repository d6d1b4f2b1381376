"""The Lance sink: one table, each run in exactly one committed version, indexes at the end; nightly updates."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs import run_job
from jobs.manifest import OutputConflict

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
    # One version for the run (its message lists the 9 shards: row groups of 20 cut at 50 rows), then one
    # per index.
    runs = run_messages(ds)
    assert [r["shards"] for r in runs] == [summary["shards"]] == [9] and summary["lance_version"] == 1
    indexed = {tuple(d.field_names): (d.type_url, d.num_rows_indexed) for d in ds.describe_indices()}
    assert indexed[("embedding",)] == ("/lance.index.pb.VectorIndexDetails", 300)
    assert indexed[("id",)] == ("/lance.table.BTreeIndexDetails", 300)
    assert json.load(open(os.path.join(out, ".embedjob", "_SUCCESS")))["rows_written"] == 300


def run_messages(ds) -> list[dict]:
    """The commit messages of the runs that committed to a table, oldest first."""
    out = []
    for t in ds.get_transactions(ds.version):
        message = (t.transaction_properties or {}).get("__lance_commit_message", "") if t else ""
        if message.startswith("{"):
            out.append(json.loads(message))
    return out[::-1]


def test_a_run_committed_but_not_marked_done_is_not_committed_again(tmp_path, tiny_st_model, jobio, jobkit):
    """The driver dies after the run's commit but before _SUCCESS: the rerun finds its commit in the table's
    history, redoes nothing and commits nothing twice."""
    texts = jobio.corpus(120, seed=32)
    jobkit.write_files(str(tmp_path / "in"), texts, files=2, row_group_size=20)
    out = str(tmp_path / "out.lance")
    spec = jobkit.job_spec(tiny_st_model, str(tmp_path / "in"), out, output={"rows_per_file": 40})
    run_job(spec, progress=False, keep_warm=True)
    os.remove(os.path.join(out, ".embedjob", "_SUCCESS"))
    again = run_job(spec, progress=False, keep_warm=True)
    assert again["skipped_shards"] == again["shards"] == 4 and again["tokens"] == 0
    ds = lance.dataset(out)
    assert len(run_messages(ds)) == 1 and ds.version == 1
    ids = table_of(out).column("id").to_pylist()
    assert len(ids) == len(set(ids)) == 120


def test_a_killed_run_leaves_the_table_as_it_was(tmp_path, tiny_st_model, jobio, jobkit):
    """Shards staged but the run not committed: readers see no table (or the last run's), never part of one."""
    texts = jobio.corpus(80, seed=34)
    jobkit.write_files(str(tmp_path / "in"), texts, files=2, row_group_size=20)
    out = str(tmp_path / "out.lance")
    spec = jobkit.job_spec(tiny_st_model, str(tmp_path / "in"), out, output={"rows_per_file": 40})
    run_job(spec, progress=False, keep_warm=True)
    meta = os.path.join(out, ".embedjob")
    # As if killed before its commit: the records stay, the table's history does not.
    shutil.rmtree(os.path.join(out, "_versions"))
    shutil.rmtree(os.path.join(out, "_transactions"), ignore_errors=True)
    os.remove(os.path.join(meta, "_SUCCESS"))
    with pytest.raises(ValueError, match="not found"):
        lance.dataset(out)
    again = run_job(spec, progress=False, keep_warm=True)
    assert again["skipped_shards"] == 2 and again["rows_written"] == 80
    ids = table_of(out).column("id").to_pylist()
    assert len(ids) == len(set(ids)) == 80


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
    errors = pq.read_table(os.path.join(out, ".embedjob", "_errors")).to_pylist()
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


def write_export(folder, rows: dict[int, tuple[str, str]], files: int, seed: int) -> None:
    """rows {i: (text, tag)} shuffled into `files` files under names no earlier export used."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(sorted(rows))
    os.makedirs(folder, exist_ok=True)
    for k, ids in enumerate(np.array_split(order, files)):
        table = pa.table(
            {
                "id": [f"doc-{i}" for i in ids],
                "text": [rows[int(i)][0] for i in ids],
                "tag": [rows[int(i)][1] for i in ids],
            }
        )
        pq.write_table(table, os.path.join(folder, f"export-{seed}-{k:03d}.parquet"), row_group_size=9)


def test_nightly_updates_of_a_live_table(tmp_path, tiny_st_model, jobio, jobkit, monkeypatch):
    """Three nightly runs into one live table (--previous is the table): unchanged rows stay, changed texts
    and changed passthrough values are re-embedded, new ids added, gone ids deleted; after each run the table
    equals a fresh full run of that night's input, and the run is one version of the table."""
    import jobs.keypass
    import jobs.sinks.lance_table

    monkeypatch.setenv("EMBEDJOB_IDS_PER_BUCKET", "40")  # several buckets, index and deletion tasks
    monkeypatch.setattr(jobs.keypass, "FRAGMENTS_PER_DROP", 2)
    monkeypatch.setattr(jobs.sinks.lance_table, "ROWS_PER_TASK", 50)
    texts = jobio.corpus(220, seed=35)
    night = {i: (texts[i], "a" if i % 2 else "b") for i in range(200)}
    out = str(tmp_path / "live.lance")
    output = {"rows_per_file": 30, "id_index": True, "vector_index": "ivf_flat"}

    def run_night(k: int, rows: dict[int, tuple[str, str]]) -> dict:
        inp = str(tmp_path / f"night{k}")
        write_export(inp, rows, files=3 + k, seed=k)
        spec = jobkit.job_spec(
            tiny_st_model, inp, out, output=output, input={"passthrough": ["tag"]}, previous=out
        )
        summary = run_job(spec, progress=False, keep_warm=True)
        fresh = str(tmp_path / f"fresh{k}.lance")
        run_job(jobkit.job_spec(tiny_st_model, inp, fresh, input={"passthrough": ["tag"]}), progress=False,
                keep_warm=True)  # fmt: skip
        live, full = table_of(out), table_of(fresh)
        for col in ("id", "text_hash", "tag"):
            assert live.column(col).to_pylist() == full.column(col).to_pylist(), col
        assert np.abs(embedding(live) - embedding(full)).max() <= 1e-4
        return summary

    first = run_night(1, night)
    assert (first["embedded"], first["reused"], first["deleted"]) == (200, 0, 0)

    for i in (3, 50, 199):
        night[i] = (f"changed text {i} about a bird", night[i][1])
    for i in (10, 11):
        night[i] = (night[i][0], "c")  # the text is the same, the passthrough value is not
    for i in (20, 120, 160):
        del night[i]
    for i in (200, 201, 202):
        night[i] = (texts[i], "a")
    second = run_night(2, night)
    assert (second["embedded"], second["reused"], second["deleted"]) == (8, 192, 3)
    assert second["deleted_rows"] == 8  # 3 changed texts, 2 changed tags, 3 gone
    deleted = pq.read_table(os.path.join(out, ".embedjob", "_deleted")).column("id").to_pylist()
    assert sorted(deleted) == ["doc-120", "doc-160", "doc-20"]

    night[20] = (texts[20], "b")  # an id deleted last night comes back
    night[3] = (texts[3], night[3][1])  # and a changed text is changed back
    del night[0]
    third = run_night(3, night)
    assert (third["embedded"], third["reused"], third["deleted"]) == (2, 198, 1)

    ds = lance.dataset(out)
    runs = run_messages(ds)
    assert [(r["shards"], r["deleted_rows"]) for r in runs] == [
        (first["shards"], 0),
        (second["shards"], 8),
        (third["shards"], 2),
    ]
    assert [r["base_version"] for r in runs[1:]] == [first["lance_version"] + 2, second["lance_version"] + 1]
    indexed = {tuple(d.field_names): d.num_rows_indexed for d in ds.describe_indices()}
    assert indexed[("id",)] == ds.count_rows() == 200
    assert success_of(out)["rows_written"] == 200


def test_a_live_table_refuses_other_model_settings(tmp_path, tiny_st_model, jobio, jobkit):
    texts = jobio.corpus(40, seed=36)
    jobkit.write_files(str(tmp_path / "in"), texts, files=1, row_group_size=20)
    out = str(tmp_path / "live.lance")
    spec = jobkit.job_spec(tiny_st_model, str(tmp_path / "in"), out, previous=out)
    run_job(spec, progress=False, keep_warm=True)
    jobkit.write_files(str(tmp_path / "in2"), texts[:30], files=1, row_group_size=20)
    spec = jobkit.job_spec(tiny_st_model, str(tmp_path / "in2"), out, previous=out, model={"normalize": True})
    with pytest.raises(OutputConflict, match="other model settings"):
        run_job(spec, progress=False, keep_warm=True)
    assert lance.dataset(out).count_rows() == 40


def success_of(out: str) -> dict:
    return json.load(open(os.path.join(out, ".embedjob", "_SUCCESS")))
