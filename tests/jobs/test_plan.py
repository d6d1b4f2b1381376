"""Planning: listing files, cutting row-group-aligned shards with stable ids, schema errors that name the file."""

from __future__ import annotations

import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.cli import main
from jobs.plan import Plan, PlanError, _cut, plan_job
from jobs.spec import JobSpec


def spec_for(inp: str, rows: int = 25, **input_fields) -> JobSpec:
    return JobSpec.from_dict(
        {
            "model": "m",
            "input": {"uri": inp, "id_column": "id", **input_fields},
            "output": {"uri": "out", "rows_per_file": rows},
        }
    )


def write(path, n: int, row_group_size: int, **extra) -> str:
    cols = {
        "id": [f"{os.path.basename(str(path))}-{i}" for i in range(n)],
        "text": [f"text {i}" for i in range(n)],
        **extra,
    }
    pq.write_table(pa.table(cols), str(path), row_group_size=row_group_size)
    return str(path)


def test_cut_aligns_to_row_groups_and_splits_big_ones():
    assert _cut([10, 10, 10], 25) == [(0, 20, (0, 1), (0, 10)), (20, 30, (2,), (20,))]
    # a row group larger than the bound is split into near-equal row ranges
    assert [(a, b) for a, b, *_ in _cut([5, 50], 20)] == [(0, 5), (5, 22), (22, 39), (39, 55)]
    assert _cut([], 10) == [] and _cut([0, 3], 10) == [(0, 3, (1,), (0,))]


def test_folder_of_files_shards_cover_every_row_once(tmp_path):
    for k, n in enumerate([60, 35, 7]):
        write(tmp_path / f"f{k}.parquet", n, row_group_size=10)
    (tmp_path / "_SUCCESS").write_text("")  # metadata files are ignored
    plan = plan_job(spec_for(str(tmp_path)))
    assert plan.rows == 102 and plan.files == 3
    assert all(s.rows <= 25 for s in plan.shards)
    by_file: dict[str, list] = {}
    for s in plan.shards:
        by_file.setdefault(s.source, []).append((s.start, s.stop))
        # The shard's row groups are exactly those its rows fall in, each starting where the last one ended.
        assert s.group_starts[0] <= s.start < s.stop <= s.group_starts[-1] + 10
        assert list(s.group_starts) == [s.group_starts[0] + 10 * k for k in range(len(s.row_groups))]
        assert list(s.row_groups) == [g // 10 for g in s.group_starts]
    assert by_file["f0.parquet"] == [(0, 20), (20, 40), (40, 60)]
    assert by_file["f1.parquet"] == [(0, 20), (20, 35)]
    assert [s.index for s in plan.shards] == list(range(len(plan.shards)))
    again = plan_job(spec_for(str(tmp_path)))
    assert [s.shard_id for s in again.shards] == [s.shard_id for s in plan.shards]
    assert len({s.shard_id for s in plan.shards}) == len(plan.shards)
    assert Plan.from_table(plan.to_table()).fingerprint == plan.fingerprint


def test_changed_file_changes_ids_and_fingerprint(tmp_path):
    write(tmp_path / "a.parquet", 30, 10)
    write(tmp_path / "b.parquet", 30, 10)
    before = plan_job(spec_for(str(tmp_path)))
    write(tmp_path / "b.parquet", 31, 10)
    after = plan_job(spec_for(str(tmp_path)))
    assert before.shards[0].shard_id == after.shards[0].shard_id  # a.parquet untouched
    assert before.shards[-1].shard_id != after.shards[-1].shard_id
    assert before.fingerprint != after.fingerprint


def test_glob_and_single_file(tmp_path):
    (tmp_path / "sub").mkdir()
    write(tmp_path / "sub" / "x.parquet", 5, 5)
    write(tmp_path / "y.parquet", 5, 5)
    plan = plan_job(spec_for(str(tmp_path / "**" / "*.parquet")))
    assert sorted(s.source for s in plan.shards) == ["sub/x.parquet", "y.parquet"]
    assert [s.source for s in plan_job(spec_for(str(tmp_path / "y.parquet"))).shards] == ["y.parquet"]


def test_missing_column_names_file_and_column(tmp_path):
    write(tmp_path / "a.parquet", 5, 5)
    pq.write_table(pa.table({"id": ["x"], "body": ["t"]}), str(tmp_path / "b.parquet"))
    with pytest.raises(PlanError, match=r"input.text_column: column 'text' not found in .*b\.parquet"):
        plan_job(spec_for(str(tmp_path)))
    with pytest.raises(PlanError, match=r"input.id_column: column 'key' not found in .*a\.parquet"):
        plan_job(spec_for(str(tmp_path / "a.parquet"), id_column="key"))
    with pytest.raises(PlanError, match=r"input.passthrough\[0\]: column 'lang' not found"):
        plan_job(spec_for(str(tmp_path / "a.parquet"), passthrough=["lang"]))


def test_corrupt_and_truncated_files_are_named(tmp_path):
    good = write(tmp_path / "a.parquet", 50, 10)
    data = open(good, "rb").read()
    (tmp_path / "b.parquet").write_bytes(data[: len(data) // 2])
    with pytest.raises(PlanError, match=r"input .*b\.parquet: not a readable Parquet file"):
        plan_job(spec_for(str(tmp_path)))
    (tmp_path / "b.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(PlanError, match=r"b\.parquet: not a readable Parquet file"):
        plan_job(spec_for(str(tmp_path)))


def test_mismatched_types_across_files(tmp_path):
    write(tmp_path / "a.parquet", 5, 5)
    pq.write_table(pa.table({"id": [1, 2], "text": ["x", "y"]}), str(tmp_path / "b.parquet"))
    with pytest.raises(PlanError, match=r"b\.parquet: column types differ"):
        plan_job(spec_for(str(tmp_path)))


def test_missing_input(tmp_path):
    with pytest.raises(PlanError, match="input.uri: .* does not exist"):
        plan_job(spec_for(str(tmp_path / "nope.parquet")))
    with pytest.raises(PlanError, match="input.uri: no Parquet, JSON lines, JSON or CSV files found"):
        plan_job(spec_for(str(tmp_path)))


def test_hf_save_to_disk_contiguous_ranges(tmp_path):
    import datasets

    ds = datasets.Dataset.from_dict(
        {"id": [f"r{i}" for i in range(60)], "text": [f"t {i}" for i in range(60)]}
    )
    ds.save_to_disk(str(tmp_path / "ds"))
    plan = plan_job(spec_for(str(tmp_path / "ds")))
    assert plan.kind == "dataset" and [(s.start, s.stop) for s in plan.shards] == [
        (0, 25),
        (25, 50),
        (50, 60),
    ]
    with pytest.raises(PlanError, match="input.text_column: column 'body' not found"):
        plan_job(
            JobSpec.from_dict(
                {
                    "model": "m",
                    "input": {"uri": str(tmp_path / "ds"), "text_column": "body"},
                    "output": {"uri": "o"},
                }
            )
        )


def test_plan_cli_prints_shards_and_estimate(tmp_path, capsys):
    write(tmp_path / "a.parquet", 40, 10)
    code = main(
        [
            "plan",
            "--model",
            "m",
            "--input",
            str(tmp_path),
            "--output",
            "o",
            "--id-column",
            "id",
            "--rows-per-file",
            "20",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0 and "2 shards, 40 rows in 1 file(s)" in out and "tokens" in out
    assert (
        main(["plan", "--model", "m", "--input", str(tmp_path), "--output", "o", "--id-column", "nope"]) == 1
    )
    assert "input.id_column: column 'nope' not found" in capsys.readouterr().err


def test_hf_data_files(tmp_path):
    rows = [{"id": i, "text": f"line {i}"} for i in range(30)]
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    spec = JobSpec.from_dict(
        {
            "model": "m",
            "input": {"data_files": str(tmp_path / "a.jsonl"), "id_column": "id"},
            "output": {"uri": "o", "rows_per_file": 20},
        }
    )
    plan = plan_job(spec)
    assert plan.kind == "dataset" and plan.rows == 30 and [s.rows for s in plan.shards] == [20, 10]


def test_a_local_file_rewritten_at_the_same_size_gets_new_shard_ids(tmp_path):
    """Local files have no ETag: the modification time joins the size, so a resume cannot mix old and new rows."""
    path = tmp_path / "f.parquet"
    write(path, 30, row_group_size=10)
    before = [s.shard_id for s in plan_job(spec_for(str(tmp_path))).shards]
    size = path.stat().st_size
    write(path, 30, row_group_size=10)  # the same bytes' size, written again
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert path.stat().st_size == size
    after = [s.shard_id for s in plan_job(spec_for(str(tmp_path))).shards]
    assert len(after) == len(before) and not set(after) & set(before)


def test_a_dictionary_encoded_text_column_is_accepted(tmp_path):
    from jobs.rows import raw_text_values

    texts = pa.array(["a cat", "a dog", "a cat", None]).dictionary_encode()
    pq.write_table(pa.table({"id": ["1", "2", "3", "4"], "text": texts}), str(tmp_path / "d.parquet"))
    plan = plan_job(spec_for(str(tmp_path)))
    assert plan.rows == 4
    column = pq.read_table(str(tmp_path / "d.parquet")).column("text")
    assert pa.types.is_dictionary(column.type)
    assert raw_text_values(column) == [b"a cat", b"a dog", b"a cat", None]


def test_plan_check_finds_repeated_ids_and_loads_the_model_as_the_job_would(
    tmp_path, tiny_st_model, ray_session, capsys
):
    """`plan --check`: the job's duplicate-id pass and model load, real token counts; failures are named."""
    texts = [f"row number {i} about a cat" for i in range(30)]
    texts[5] = "a cat sat on the mat " * 200  # longer than the model reads: cut
    ids = [f"d{i}" for i in range(30)]
    ids[17] = "d3"  # a repeat
    pq.write_table(pa.table({"id": ids, "text": texts}), str(tmp_path / "in.parquet"), row_group_size=10)
    base = ["plan", "--model", tiny_st_model, "--input", str(tmp_path / "in.parquet"), "--output", str(tmp_path / "o"),
            "--id-column", "id", "--rows-per-file", "10"]  # fmt: skip
    assert main([*base, "--check", "--on-bad-row", "quarantine", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["check"]["repeated_ids"] == 1 and info["check"]["ids"] == 30
    from embedder import EmbeddingModel

    model = EmbeddingModel(tiny_st_model)
    want = sum(len(model.tokenize([t])["input_ids"][0]) for t in texts) / len(texts)  # as cut to the limit
    assert info["calibration"]["tokens_per_row"] == pytest.approx(want, abs=0.05)
    assert info["calibration"]["dimension"] == model.get_embedding_dimension()
    assert info["calibration"]["truncated_share"] == round(1 / 30, 4)
    assert info["calibration"]["est_truncated_rows"] == 1
    assert main([*base, "--calibrate", "--on-bad-row", "quarantine"]) == 0
    assert "~1 of 30 rows will be truncated" in capsys.readouterr().out
    assert main([*base, "--calibrate", "--chunk-tokens", "16", "--json"]) == 0
    chunking = json.loads(capsys.readouterr().out)["calibration"]["chunking"]
    assert chunking["est_chunks"] > 30 and chunking["per_row"] > 1

    assert main([*base, "--check"]) == 1  # policy fail: the repeat is named, as the job would name it
    err = capsys.readouterr().err
    assert "'d3' at in.parquet row 17 (first at in.parquet row 3)" in err and "Traceback" not in err

    assert main([*base[:2], str(tmp_path / "no-model"), *base[3:], "--calibrate"]) == 1
    assert "model.name" in capsys.readouterr().err
    (tmp_path / "not-a-model").mkdir()
    assert main([*base[:2], str(tmp_path / "not-a-model"), *base[3:], "--calibrate"]) == 1
    err = capsys.readouterr().err
    assert "the model does not load" in err and "Traceback" not in err
