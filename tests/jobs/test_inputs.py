"""JSON lines, JSON and CSV inputs: format from names, bounded shards, typed reads, errors naming the line."""

from __future__ import annotations

import csv
import gzip
import json
import os

import numpy as np
import pyarrow as pa
import pytest

from jobs import run_job
from jobs.formats import path_format
from jobs.plan import PlanError, plan_job
from jobs.read import ID, ROW, TEXT, iter_shard_batches
from jobs.retry import RetryPolicy
from jobs.shards import Plan
from jobs.spec import JobSpec


def write_rows(path: str, rows: list[dict]) -> str:
    """Rows as the format the name says: JSON lines, a JSON array or CSV (a .gz name: gzip-compressed)."""
    fmt = path_format(path)
    if fmt == "jsonl":
        data = "".join(json.dumps(r) + "\n" for r in rows)
    elif fmt == "json":
        data = json.dumps(rows, indent=1)
    else:
        with open(path + ".tmp", "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        data = open(path + ".tmp", encoding="utf-8", newline="").read()
        os.remove(path + ".tmp")
    raw = data.encode("utf-8")
    with open(path, "wb") as f:
        f.write(gzip.compress(raw) if path.endswith(".gz") else raw)
    return path


def rows_for(n: int, start: int = 0) -> list[dict]:
    return [{"id": f"d{i}", "text": f"text {i}", "n": i} for i in range(start, start + n)]


def spec_for(uri: str, rows: int = 10, **input_fields) -> JobSpec:
    return JobSpec.from_dict(
        {
            "model": "m",
            "input": {"uri": uri, "id_column": "id", **input_fields},
            "output": {"uri": "out", "rows_per_file": rows},
        }
    )


def read_all(spec: JobSpec, **kwargs) -> pa.Table:
    plan = plan_job(spec)
    batches = [
        b
        for s in plan.shards
        for b in iter_shard_batches(s, spec.input, 4, RetryPolicy(attempts=1), **kwargs)
    ]
    return pa.concat_tables(batches)


def test_format_from_the_file_name():
    names = [
        "a.parquet",
        "b.PQ",
        "c.jsonl",
        "d.ndjson.gz",
        "e.json",
        "f.csv.zst",
        "g.parquet.gz",
        "h.txt",
        "i",
    ]
    assert [path_format(n) for n in names] == [
        "parquet", "parquet", "jsonl", "jsonl", "json", "csv", None, None, None
    ]  # fmt: skip


@pytest.mark.parametrize("name", ["a.jsonl", "a.ndjson.gz", "a.json", "a.csv", "a.csv.gz"])
def test_each_format_detected_cut_into_bounded_shards_and_read_back(tmp_path, name):
    path = write_rows(str(tmp_path / name), rows_for(23))
    plan = plan_job(spec_for(path, passthrough=["n"]))
    fmt = path_format(name)
    assert plan.kind == fmt and plan.rows == 23 and plan.files == 1
    assert [(s.start, s.stop) for s in plan.shards] == [(0, 10), (10, 20), (20, 23)]
    assert {s.kind for s in plan.shards} == {fmt}
    # CSV values are text (ids such as 007 keep their zeros); JSON keeps its types
    assert plan.schema == {"text": "string", "id": "string", "n": "string" if fmt == "csv" else "int64"}
    table = read_all(spec_for(path, passthrough=["n"]))
    assert table.column(TEXT).to_pylist() == [f"text {i}" for i in range(23)]
    assert table.column(ID).to_pylist() == [f"d{i}" for i in range(23)]
    assert table.column(ROW).to_pylist() == list(range(23))
    assert table.column("n").to_pylist() == [str(i) if fmt == "csv" else i for i in range(23)]
    keys = read_all(spec_for(path), keys_only=True)  # what the key pass reads
    assert keys.column_names == [ID, ROW] and keys.column(ID).to_pylist() == [f"d{i}" for i in range(23)]
    again = plan_job(spec_for(path, passthrough=["n"]))
    assert [s.shard_id for s in again.shards] == [s.shard_id for s in plan.shards]
    assert Plan.from_table(plan.to_table()).shards == plan.shards  # _plan.parquet keeps byte ranges and types


def test_folder_detected_hidden_files_skipped_and_format_picks_one_kind(tmp_path):
    write_rows(str(tmp_path / "a.jsonl"), rows_for(12))
    write_rows(str(tmp_path / "b.jsonl.gz"), rows_for(5, start=12))
    write_rows(str(tmp_path / "_tmp.csv"), rows_for(3))  # metadata, as for Parquet inputs
    write_rows(str(tmp_path / ".hidden.json"), rows_for(3))
    (tmp_path / "notes.txt").write_text("not an input")
    plan = plan_job(spec_for(str(tmp_path)))
    assert plan.kind == "jsonl" and plan.files == 2 and plan.rows == 17
    assert [(s.source, s.start, s.stop) for s in plan.shards] == [
        ("a.jsonl", 0, 10),
        ("a.jsonl", 10, 12),
        ("b.jsonl.gz", 0, 5),
    ]
    assert plan_job(spec_for(str(tmp_path / "*.jsonl*"))).rows == 17
    write_rows(str(tmp_path / "c.csv"), rows_for(4))
    with pytest.raises(PlanError, match=r"a\.jsonl \(jsonl\) and .*c\.csv \(csv\); set input\.format"):
        plan_job(spec_for(str(tmp_path)))
    assert plan_job(spec_for(str(tmp_path), format="csv")).rows == 4
    assert plan_job(spec_for(str(tmp_path), format="jsonl")).rows == 17
    with pytest.raises(PlanError, match=r"input\.uri: no json \(\.json\) files found"):
        plan_job(spec_for(str(tmp_path), format="json"))
    # a name that says no format: input.format says it
    os.rename(tmp_path / "a.jsonl", tmp_path / "export.txt")
    assert plan_job(spec_for(str(tmp_path / "export.txt"), format="jsonl")).rows == 12
    with pytest.raises(PlanError, match=r"export\.txt: not a readable Parquet file.*set input\.format"):
        plan_job(spec_for(str(tmp_path / "export.txt")))


def test_json_lines_in_a_json_file_and_one_object_per_line(tmp_path):
    # Many .json files (Spark's, for one) hold JSON lines; those read as such.
    path = tmp_path / "lines.json"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows_for(12)))
    plan = plan_job(spec_for(str(path)))
    assert plan.kind == "json" and {s.kind for s in plan.shards} == {"jsonl"} and plan.rows == 12
    path.write_text(json.dumps(rows_for(2)))
    with pytest.raises(PlanError, match=r"lines\.json line 1: expected a JSON object, got list"):
        plan_job(spec_for(str(path), format="jsonl"))


def test_changed_file_changes_shard_ids(tmp_path):
    path = write_rows(str(tmp_path / "a.jsonl"), rows_for(15))
    before = plan_job(spec_for(path))
    rows = rows_for(15)
    rows[12]["text"] = "text 21"  # the same size
    write_rows(path, rows)
    os.utime(path, (1_000_000_000, 1_000_000_000))
    after = plan_job(spec_for(path))
    assert [(s.start, s.stop) for s in after.shards] == [(s.start, s.stop) for s in before.shards]
    assert not {s.shard_id for s in after.shards} & {s.shard_id for s in before.shards}
    assert after.fingerprint != before.fingerprint


def test_every_shard_reads_the_types_of_the_whole_input(tmp_path):
    rows = rows_for(25)
    for r in rows[:10]:
        r["n"] = None  # the first shard alone would read n as null, the second as int64
    rows[24]["n"] = 2.5  # ... and the third as double
    rows[3]["when"] = "2024-01-01"  # a string that looks like a date stays a string
    rows[5]["meta"], rows[6]["meta"] = 1, {"a": "x"}  # a column the job does not read may change type
    path = write_rows(str(tmp_path / "a.jsonl"), rows)
    plan = plan_job(spec_for(path, passthrough=["n", "when"]))
    assert plan.schema["n"] == "double" and plan.schema["when"] == "string"
    parts = [
        next(iter_shard_batches(s, spec_for(path, passthrough=["n", "when"]).input, 100, RetryPolicy()))
        for s in plan.shards
    ]
    assert {str(p.schema.field("n").type) for p in parts} == {"double"}
    assert parts[0].column("when").to_pylist()[3] == "2024-01-01"
    for r in rows[20:]:
        r["n"] = "many"
    write_rows(path, rows)
    with pytest.raises(
        PlanError,
        match=r"a\.jsonl lines 21-25: column 'n' holds string values, but int64 in .*a\.jsonl lines 11-20",
    ):
        plan_job(spec_for(path, passthrough=["n"]))


def test_bad_lines_and_missing_columns_are_named(tmp_path):
    lines = [json.dumps(r) for r in rows_for(14)]
    lines[4] = ""  # blank lines are skipped, and counted in line numbers
    lines[12] = '{"id": "d12", "text": "x" "n": 12}'
    path = tmp_path / "a.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(PlanError, match=r"input .*a\.jsonl line 13: not valid JSON \(Expecting ','"):
        plan_job(spec_for(str(path)))
    lines[12] = '{"id": "d12", "text": 12}'
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(PlanError, match=r"a\.jsonl line 13: .*Column\(/text\) changed from string to number"):
        plan_job(spec_for(str(path)))
    lines[12] = json.dumps(rows_for(13)[12]) + json.dumps(rows_for(13)[12])
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(PlanError, match=r"a\.jsonl line 13: not valid JSON \(Extra data"):
        plan_job(spec_for(str(path)))
    path.write_text("".join(json.dumps(r) + "\n" for r in rows_for(3)))
    with pytest.raises(PlanError, match=r"input\.text_column: column 'body' not found in .*a\.jsonl; its"):
        plan_job(spec_for(str(path), text_column="body"))

    (tmp_path / "b.json").write_text('[{"id": "a", "text": "x"},\n {"id": "b", "text": "y"]\n')
    with pytest.raises(PlanError, match=r"b\.json line 2: not valid JSON"):
        plan_job(spec_for(str(tmp_path / "b.json")))
    (tmp_path / "b.json").write_text('[{"id": "a", "text": "x"}, ["b", "y"]]')
    with pytest.raises(PlanError, match=r"b\.json element 1: expected a JSON object, got list"):
        plan_job(spec_for(str(tmp_path / "b.json")))

    (tmp_path / "c.csv").write_text("id,body\na,some text\n")
    with pytest.raises(
        PlanError,
        match=r"input\.text_column: column 'text' not found in .*c\.csv; its columns are \['id', 'body'\]",
    ):
        plan_job(spec_for(str(tmp_path / "c.csv")))
    (tmp_path / "c.csv").write_text('id,text\na,"one, with\na newline"\nb,two,three\n')
    with pytest.raises(PlanError, match=r"c\.csv line 4: 3 values, but the header has 2 columns"):
        plan_job(spec_for(str(tmp_path / "c.csv")))


def test_csv_quoted_newlines_and_leading_zeros(tmp_path):
    rows = [
        {"id": f"00{i}", "text": f'line {i}, "quoted"\nand more' if i % 3 == 0 else f"t{i}"}
        for i in range(25)
    ]
    path = write_rows(str(tmp_path / "a.csv"), rows)
    plan = plan_job(spec_for(path))
    assert [(s.start, s.stop) for s in plan.shards] == [(0, 10), (10, 20), (20, 25)]
    table = read_all(spec_for(path))
    assert table.column(TEXT).to_pylist() == [r["text"] for r in rows]
    assert table.column(ID).to_pylist() == [r["id"] for r in rows]


def test_values_longer_than_a_read_block(tmp_path):
    big = "word " * 300_000  # 1.5 MB: more than pyarrow's and this reader's 1 MiB blocks
    rows = [{"id": f"d{i}", "text": big if i == 4 else f"t{i}"} for i in range(7)]
    for name in ("a.jsonl", "a.csv"):
        path = write_rows(str(tmp_path / name), rows)
        assert read_all(spec_for(path, rows=3)).column(TEXT).to_pylist() == [r["text"] for r in rows]


FORMAT_FILES = {"jsonl": "part-{k}.jsonl.gz", "json": "part-{k}.json", "csv": "part-{k}.csv"}


@pytest.mark.parametrize("fmt", list(FORMAT_FILES))
def test_job_over_text_files_gives_the_vectors_of_parquet(
    fmt, tmp_path, tiny_st_model, oracle, jobio, jobkit, ray_session
):
    texts = jobio.corpus(50, seed=4)
    texts[7] = 'a "quoted", text\nover two lines'
    lang = [["en", "de"][i % 2] for i in range(50)]
    rows = [
        {"id": f"doc-{i}", "text": t, "lang": g} for i, (t, g) in enumerate(zip(texts, lang, strict=True))
    ]
    os.makedirs(tmp_path / "in")
    for k in range(2):
        write_rows(str(tmp_path / "in" / FORMAT_FILES[fmt].format(k=k)), rows[k * 25 : (k + 1) * 25])
    out = str(tmp_path / "out")
    spec = jobkit.job_spec(tiny_st_model, str(tmp_path / "in"), out, input={"passthrough": ["lang"]})
    summary = run_job(spec, progress=False, keep_warm=True)
    assert summary["rows_written"] == 50 and summary["quarantined"] == 0
    _, table = jobkit.read_job(out)
    assert table.column("id").to_pylist() == [f"doc-{i}" for i in range(50)]
    assert table.column("lang").to_pylist() == lang
    # oracle: EmbeddingModel.encode, which a Parquet input of the same rows matches (tests/jobs/test_run.py)
    assert np.abs(jobkit.vectors(table) - oracle(texts)).max() <= 1e-4


def test_repeated_ids_in_json_lines_named_by_the_key_pass(tmp_path, tiny_st_model, jobkit, ray_session):
    rows = rows_for(12)
    rows[9]["id"] = "d2"
    path = write_rows(str(tmp_path / "a.jsonl"), rows)
    spec = jobkit.job_spec(tiny_st_model, path, str(tmp_path / "out"))
    with pytest.raises(
        PlanError, match=r"input\.id_column: 1 duplicate id.*'d2'.*a\.jsonl row 9.*a\.jsonl row 2"
    ):
        run_job(spec, progress=False, keep_warm=True)


def test_overwrite_keeps_the_duplicate_check_and_quarantine(tmp_path, tiny_st_model, jobkit, ray_session):
    # --overwrite of an empty folder runs the id pass beside the model load, then clears the folder: what the
    # pass found (a repeated id to quarantine) must survive that, and so must a second --overwrite over the output.
    rows = rows_for(12)
    rows[9]["id"] = "d2"
    path = write_rows(str(tmp_path / "a.jsonl"), rows)
    out = str(tmp_path / "out")
    spec = jobkit.job_spec(tiny_st_model, path, out, policy={"on_bad_row": "quarantine"})
    for _ in range(2):
        summary = run_job(spec, progress=False, keep_warm=True, overwrite=True)
        assert summary["rows_written"] == 11 and summary["quarantined"] == 1
        _, table = jobkit.read_job(out)
        assert table.column("id").to_pylist().count("d2") == 1


def test_job_over_json_lines_on_s3(s3_server, tmp_path, tiny_st_model, oracle, jobio, jobkit, ray_session):
    fs = s3_server.fs()
    base = s3_server.prefix(name="jsonl")
    texts = jobio.corpus(30, seed=5)
    for k in range(2):
        part = [{"id": f"doc-{i}", "text": texts[i]} for i in range(k * 15, (k + 1) * 15)]
        fs.pipe(f"{base}/part-{k}.jsonl", "".join(json.dumps(r) + "\n" for r in part).encode())
    out = str(tmp_path / "out")
    options = s3_server.storage_options
    # 10 rows a shard: the second shard of each file starts mid-object (a ranged read)
    spec = jobkit.job_spec(
        tiny_st_model, base, out, input={"storage_options": options}, output={"rows_per_file": 10}
    )
    summary = run_job(spec, progress=False, keep_warm=True)
    assert summary["rows_written"] == 30
    _, table = jobkit.read_job(out)
    assert table.column("id").to_pylist() == [f"doc-{i}" for i in range(30)]
    assert np.abs(jobkit.vectors(table) - oracle(texts)).max() <= 1e-4
