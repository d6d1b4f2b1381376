"""Bad input data: each case has one defined outcome (docs/data-quality.md), and input = written + quarantined."""

from __future__ import annotations

import io
import json
import os
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.cli import main as cli_main
from jobs.plan import PlanError
from jobs.run import JobError, run_job

pytestmark = pytest.mark.usefixtures("ray_session")


def string_array_with_raw_bytes(values: list[bytes | None]) -> pa.Array:
    """A pa.string() array holding arbitrary bytes (invalid UTF-8 included), as foreign writers produce."""
    offsets, data, valid = [0], b"", []
    for v in values:
        data += v or b""
        offsets.append(len(data))
        valid.append(v is not None)
    mask = pa.array(valid).buffers()[1]
    return pa.Array.from_buffers(
        pa.string(), len(values), [mask, pa.array(offsets, pa.int32()).buffers()[1], pa.py_buffer(data)]
    )


def spec_for(model: str, inp: str, out: str, **policy) -> dict:
    return {
        "model": model,
        "input": {"uri": inp, "id_column": "id"},
        "output": {"uri": out, "rows_per_file": 10},
        "compute": {"replicas": 1, "batch_size": 8},
        "policy": {"retries": 2, **policy},
    }


BIG_TEXT = "the cat sat on the road and " * 120_000  # 3.4 MB in one row


def bad_rows_input(folder, jobio) -> tuple[str, list[str], dict[int, str]]:
    """Two files: 24 rows with a null, an empty, an invalid-UTF-8 and a several-MB text, and a null id."""
    os.makedirs(folder, exist_ok=True)
    texts: list[bytes | None] = [t.encode() for t in jobio.corpus(24, seed=7)]
    texts[3] = None
    texts[5] = b""
    texts[8] = b"caf\xc3\xa9 ok \xff\xfe broken"
    texts[11] = BIG_TEXT.encode()
    ids: list[str | None] = [f"doc-{i}" for i in range(24)]
    ids[14] = None
    reasons = {3: "null text", 8: "invalid UTF-8 at byte 9", 14: "null id"}
    for k, (lo, hi) in enumerate([(0, 12), (12, 24)]):
        table = pa.table(
            {"id": pa.array(ids[lo:hi], pa.string()), "text": string_array_with_raw_bytes(texts[lo:hi])}
        )
        pq.write_table(table, os.path.join(folder, f"file-{k}.parquet"), row_group_size=5)
    return str(folder), ids, reasons


def test_quarantine_writes_errors_and_counts_add_up(tmp_path, jobio, tiny_st_model, capsys):
    inp, ids, reasons = bad_rows_input(tmp_path / "in", jobio)
    out = str(tmp_path / "out")
    spec = spec_for(tiny_st_model, inp, out, on_bad_row="quarantine")
    summary = run_job(spec, progress=False)
    assert summary["rows"] == 24 and summary["quarantined"] == 3 and summary["rows_written"] == 21
    assert summary["rows"] == summary["rows_written"] + summary["quarantined"]

    errors = pq.read_table(os.path.join(out, ".embedjob", "_errors")).to_pylist()
    got = sorted((e["file"], e["row"], e["id"], e["reason"]) for e in errors)
    want = sorted((f"file-{p // 12}.parquet", p % 12, ids[p], reason) for p, reason in reasons.items())
    assert got == want

    table = pq.read_table(out)  # underscore paths (_errors, _manifest, _tmp) are ignored by readers
    written = table.column("id").to_pylist()
    assert sorted(written) == sorted(i for p, i in enumerate(ids) if p not in reasons)
    assert "doc-5" in written  # the empty text is a good row


@pytest.mark.slow
def test_cli_exit_status_and_summary(tmp_path, jobio, tiny_st_model, capsys):
    """0 clean, 3 finished with quarantined rows, 1 failed (policy fail), 2 bad usage/spec."""
    inp, _, _ = bad_rows_input(tmp_path / "in", jobio)
    base = [
        "run",
        "--model",
        tiny_st_model,
        "--input",
        inp,
        "--id-column",
        "id",
        "--no-progress",
        "--rows-per-file",
        "10",
    ]
    assert cli_main([*base, "--output", str(tmp_path / "q"), "--on-bad-row", "quarantine"]) == 3
    printed = capsys.readouterr().out
    assert "rows: 24 in = 21 written + 3 quarantined" in printed
    assert cli_main([*base, "--output", str(tmp_path / "f"), "--on-bad-row", "fail"]) == 1
    err = capsys.readouterr().err
    # Shards run in parallel: whichever bad shard fails first is named, with its file, row and reason.
    assert re.search(r"file-[01]\.parquet.*row \d+: (null text|null id|invalid UTF-8)", err), err[-2000:]
    assert cli_main([*base, "--output", str(tmp_path / "s"), "--on-bad-row", "skip"]) == 2
    assert "policy.on_bad_row" in capsys.readouterr().err
    assert cli_main([*base, "--text-column", "body", "--output", str(tmp_path / "m")]) == 1  # before work
    err = capsys.readouterr().err
    assert "input.text_column: column 'body' not found in" in err and "file-0.parquet" in err
    assert not (tmp_path / "m").exists()
    clean = tmp_path / "clean"
    clean.mkdir()
    pq.write_table(pa.table({"id": ["a", "b"], "text": ["hello world", "the cat"]}), str(clean / "c.parquet"))
    assert (
        cli_main(
            [
                "run",
                "--model",
                tiny_st_model,
                "--input",
                str(clean),
                "--id-column",
                "id",
                "--no-progress",
                "--output",
                str(tmp_path / "c"),
            ]
        )
        == 0
    )


def test_fail_policy_names_file_row_and_reason(tmp_path, jobio, tiny_st_model):
    inp, _, _ = bad_rows_input(tmp_path / "in", jobio)
    with pytest.raises(JobError, match=r"file-0\.parquet.*row 3: null text"):
        run_job(spec_for(tiny_st_model, inp, str(tmp_path / "out"), on_bad_row="fail"), progress=False)


@pytest.mark.slow
def test_several_mb_text_embeds_like_sentence_transformers(tmp_path, tiny_st_model):
    """A 3.4 MB text is cut before tokenising, yet its vector equals sentence-transformers' on the full text."""
    from sentence_transformers import SentenceTransformer

    inp = tmp_path / "big.parquet"
    pq.write_table(pa.table({"id": ["big", "small"], "text": [BIG_TEXT, "hello world"]}), str(inp))
    out = str(tmp_path / "out")
    run_job(spec_for(tiny_st_model, str(inp), out), progress=False)
    table = pq.read_table(out)
    got = np.array(table.column("embedding").to_pylist(), dtype=np.float32)
    want = SentenceTransformer(tiny_st_model, device="cpu").encode([BIG_TEXT, "hello world"])
    cos = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    assert cos.min() >= 0.99999 and np.abs(got - want).max() <= 1e-4


def test_missing_columns_fail_before_work(tmp_path, tiny_st_model):
    inp = tmp_path / "in"
    inp.mkdir()
    pq.write_table(pa.table({"id": ["a"], "body": ["hello"]}), str(inp / "a.parquet"))
    out = tmp_path / "out"
    with pytest.raises(PlanError, match=r"input\.text_column: column 'text' not found in .*a\.parquet"):
        run_job(spec_for(tiny_st_model, str(inp), str(out)), progress=False)
    spec = spec_for(tiny_st_model, str(inp), str(out))
    spec["input"].update(text_column="body", id_column="doc_id")
    with pytest.raises(PlanError, match=r"input\.id_column: column 'doc_id' not found in .*a\.parquet"):
        run_job(spec, progress=False)
    assert not out.exists()  # nothing was written


def test_non_string_text_column_fails_before_work(tmp_path, tiny_st_model):
    inp = tmp_path / "nums.parquet"
    pq.write_table(pa.table({"id": ["a", "b"], "text": [1, 2]}), str(inp))
    with pytest.raises(
        PlanError, match=r"input\.text_column: column 'text' in .*nums\.parquet has type int64"
    ):
        run_job(spec_for(tiny_st_model, str(inp), str(tmp_path / "out")), progress=False)


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_unreadable_parquet_fails_before_work(tmp_path, tiny_st_model, damage):
    inp = tmp_path / "in"
    inp.mkdir()
    pq.write_table(pa.table({"id": ["a"], "text": ["hello"]}), str(inp / "good.parquet"))
    buf = io.BytesIO()
    pq.write_table(pa.table({"id": ["b"] * 50, "text": ["world"] * 50}), buf)
    data = buf.getvalue()
    (inp / "bad.parquet").write_bytes(
        data[: len(data) // 2] if damage == "truncated" else b"not parquet" * 20
    )
    with pytest.raises(PlanError, match=r"input .*bad\.parquet: not a readable Parquet file"):
        run_job(spec_for(tiny_st_model, str(inp), str(tmp_path / "out")), progress=False)


def test_corrupt_page_stops_the_job_naming_the_file(tmp_path, tiny_st_model):
    """Footer intact, a data page corrupt: found only when read; the shard fails at once (not retried)."""
    inp = tmp_path / "in"
    inp.mkdir()
    buf = io.BytesIO()
    pq.write_table(
        pa.table({"id": [f"d{i}" for i in range(100)], "text": [f"text {i} " * 5 for i in range(100)]}),
        buf,
        compression="zstd",
    )
    data = bytearray(buf.getvalue())
    # Zero the text column's data page header: Parquet pages carry no checksum by default, so damage inside
    # a page body can go unnoticed, but a broken header cannot.
    offset = pq.ParquetFile(io.BytesIO(bytes(data))).metadata.row_group(0).column(1).data_page_offset
    data[offset : offset + 16] = b"\0" * 16
    (inp / "paged.parquet").write_bytes(bytes(data))
    with pytest.raises(JobError, match=r"paged\.parquet.*(thrift|decompression)"):
        run_job(spec_for(tiny_st_model, str(inp), str(tmp_path / "out")), progress=False)


def test_duplicate_ids(tmp_path, tiny_st_model):
    """policy fail: a validation error before work naming the id, files and rows; quarantine: later repeats go to _errors."""
    inp = tmp_path / "in"
    inp.mkdir()
    pq.write_table(
        pa.table({"id": ["a", "b", "c"], "text": ["x one", "x two", "x three"]}), str(inp / "1.parquet")
    )
    pq.write_table(
        pa.table({"id": ["d", "a", "e"], "text": ["y one", "y two", "y three"]}), str(inp / "2.parquet")
    )
    with pytest.raises(
        PlanError, match=r"input\.id_column: 1 duplicate id.*'a'.*2\.parquet row 1.*1\.parquet row 0"
    ):
        run_job(spec_for(tiny_st_model, str(inp), str(tmp_path / "f")), progress=False)
    out = str(tmp_path / "q")
    summary = run_job(spec_for(tiny_st_model, str(inp), out, on_bad_row="quarantine"), progress=False)
    assert summary["rows_written"] == 5 and summary["quarantined"] == 1
    errors = pq.read_table(os.path.join(out, ".embedjob", "_errors")).to_pylist()
    assert errors == [
        {"id": "a", "file": "2.parquet", "row": 1, "reason": "duplicate id (first at 1.parquet row 0)"}
    ]
    assert json.load(open(os.path.join(out, ".embedjob", "_SUCCESS")))["quarantined"] == 1


def test_duplicate_ids_across_files_and_shards_in_many_buckets(tmp_path, tiny_st_model, monkeypatch):
    """Repeats spread over 3 files and many shards, checked in 8 buckets by separate tasks: the fail message
    names the first repeats in plan order, and quarantine keeps exactly the first row of each id."""
    import jobs.keypass

    monkeypatch.setenv("EMBEDJOB_IDS_PER_BUCKET", "12")
    monkeypatch.setattr(jobs.keypass, "ROWS_PER_SCAN", 20)
    rng = np.random.default_rng(5)
    inp = tmp_path / "in"
    inp.mkdir()
    files = []
    for k in range(3):
        ids = [f"id-{int(v)}" for v in rng.integers(0, 60, size=30)]
        texts = [f"text {k} {r}" for r in range(30)]
        pq.write_table(pa.table({"id": ids, "text": texts}), str(inp / f"{k}.parquet"), row_group_size=10)
        files.append((f"{k}.parquet", ids))
    seen: dict[str, tuple[str, int]] = {}
    expected = []
    for name, ids in files:  # plan order: files by name, rows in order
        for row, i in enumerate(ids):
            if i in seen:
                first = seen[i]
                expected.append(
                    {
                        "id": i,
                        "file": name,
                        "row": row,
                        "reason": f"duplicate id (first at {first[0]} row {first[1]})",
                    }
                )
            else:
                seen[i] = (name, row)
    assert len(expected) > 20
    with pytest.raises(PlanError, match=rf"input\.id_column: {len(expected)} duplicate ids") as failed:
        run_job(spec_for(tiny_st_model, str(inp), str(tmp_path / "f")), progress=False)
    for e in expected[:5]:
        assert f"'{e['id']}' at {e['file']} row {e['row']}" in str(failed.value)
    assert not os.path.exists(tmp_path / "f" / ".embedjob" / "_job.json")  # refused before the job is started
    out = str(tmp_path / "q")
    summary = run_job(spec_for(tiny_st_model, str(inp), out, on_bad_row="quarantine"), progress=False)
    assert summary["quarantined"] == len(expected) and summary["rows_written"] == 90 - len(expected)
    errors = pq.read_table(os.path.join(out, ".embedjob", "_errors")).to_pylist()
    key = lambda e: (e["file"], e["row"])  # noqa: E731
    assert sorted(errors, key=key) == sorted(expected, key=key)
    written = pq.read_table(out).column("id").to_pylist()
    assert sorted(written) == sorted(seen)


def test_binary_ids_are_checked_and_kept(tmp_path, tiny_st_model):
    """Raw 16-byte ids (not UTF-8) go through the duplicate check and reach the output unchanged."""
    ids = [bytes([k, 0xFF, 0xFE]) + bytes(13) for k in range(6)] + [bytes([2, 0xFF, 0xFE]) + bytes(13)]
    pq.write_table(
        pa.table({"id": pa.array(ids, pa.binary(16)), "text": [f"text {k}" for k in range(7)]}),
        str(tmp_path / "in.parquet"),
    )
    out = str(tmp_path / "out")
    summary = run_job(
        spec_for(tiny_st_model, str(tmp_path / "in.parquet"), out, on_bad_row="quarantine"), progress=False
    )
    assert summary["rows_written"] == 6 and summary["quarantined"] == 1
    assert sorted(pq.read_table(out).column("id").to_pylist()) == sorted(ids[:6])
    errors = pq.read_table(os.path.join(out, ".embedjob", "_errors")).to_pylist()
    assert [(e["row"], e["reason"]) for e in errors] == [(6, "duplicate id (first at in.parquet row 2)")]


def test_a_nested_id_column_is_refused_naming_the_field(tmp_path, tiny_st_model):
    pq.write_table(pa.table({"id": [[1], [2]], "text": ["a", "b"]}), str(tmp_path / "in.parquet"))
    with pytest.raises(PlanError, match=r"input\.id_column: column 'id' in .*in\.parquet has type list"):
        run_job(spec_for(tiny_st_model, str(tmp_path / "in.parquet"), str(tmp_path / "out")), progress=False)
