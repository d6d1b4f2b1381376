"""End-to-end jobs on a local Ray: one output row per input row, ids kept, vectors equal to encode()."""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from jobs import run_job
from jobs.manifest import OutputConflict
from jobs.redact import redact
from jobs.run import JobError

pytestmark = pytest.mark.usefixtures("ray_session")


def texts_for(jobio, n: int, seed: int = 0) -> list[str]:
    return jobio.corpus(n, seed=seed)


def test_parquet_files_with_row_groups(tmp_path, tiny_st_model, oracle, jobio, jobkit, capsys):
    texts = texts_for(jobio, 130)
    texts[7] = ""  # an empty text is embedded, as sentence-transformers does
    lang = [["en", "de"][i % 2] for i in range(130)]
    jobkit.write_files(str(tmp_path / "in"), texts, files=3, row_group_size=10, extra={"lang": lang})
    out = str(tmp_path / "out")
    spec = jobkit.job_spec(tiny_st_model, str(tmp_path / "in"), out, input={"passthrough": ["lang"]})
    summary = run_job(spec, progress=False, keep_warm=True, log_file=str(tmp_path / "log.jsonl"))
    assert summary["rows_written"] == 130 and summary["embedded"] == 130 and summary["quarantined"] == 0

    records, table = jobkit.read_job(out)
    assert len(records) == summary["shards"] >= 6
    assert table.column("id").to_pylist() == [f"doc-{i}" for i in range(130)]
    assert table.column("lang").to_pylist() == lang
    got = jobkit.vectors(table)
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), got.shape[1])
    assert np.abs(got - oracle(texts)).max() <= 1e-4
    from jobs.fingerprint import text_hash

    assert table.column("text_hash").to_pylist() == [text_hash(t) for t in texts]

    # the output opens as a dataset (underscore paths ignored) and with HF datasets
    assert pads.dataset(out).to_table().num_rows == 130
    import datasets

    files = sorted(os.path.join(out, r["file"]) for r in records)
    hf = datasets.load_dataset("parquet", data_files=files, split="train")
    assert len(hf) == 130 and len(hf[0]["embedding"]) == got.shape[1]

    job = json.load(open(os.path.join(out, ".embedjob", "_job.json")))
    assert job["model"]["dimension"] == got.shape[1] and job["weights_fingerprint"]
    assert job["versions"]["pyarrow"] == pa.__version__
    success = json.load(open(os.path.join(out, ".embedjob", "_SUCCESS")))
    assert success["rows_written"] == 130
    from jobs.cli import main

    capsys.readouterr()
    assert main(["status", out, "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["complete"] and status["shards_committed"] == status["shards_total"] == len(records)
    assert status["rows_committed"] == status["rows_total"] == 130 and status["rows_per_s"] > 0
    lines = [json.loads(x) for x in open(tmp_path / "log.jsonl")]
    assert (
        sum(x["event"] == "shard_committed" for x in lines) == len(records)
        and lines[-1]["event"] == "job_done"
    )


def test_hf_save_to_disk_dataset(tmp_path, tiny_st_model, oracle, jobio, jobkit):
    import datasets

    texts = texts_for(jobio, 60, seed=1)
    ds = datasets.Dataset.from_dict({"id": list(range(60)), "text": texts})
    ds.save_to_disk(str(tmp_path / "ds"))
    out = str(tmp_path / "out")
    summary = run_job(
        jobkit.job_spec(tiny_st_model, str(tmp_path / "ds"), out), progress=False, keep_warm=True
    )
    assert summary["rows_written"] == 60
    _, table = jobkit.read_job(out)
    assert table.column("id").to_pylist() == list(range(60))
    assert np.abs(jobkit.vectors(table) - oracle(texts)).max() <= 1e-4


def test_settings_and_precision(tmp_path, tiny_st_model, oracle, jobio, jobkit):
    texts = texts_for(jobio, 40, seed=2)
    jobkit.write_files(str(tmp_path / "in"), texts, files=1, row_group_size=40)
    out = str(tmp_path / "out")
    spec = jobkit.job_spec(
        tiny_st_model,
        str(tmp_path / "in"),
        out,
        model={"normalize": True, "precision": "ubinary"},
        input={"id_column": None},
    )
    run_job(spec, progress=False, keep_warm=True)
    _, table = jobkit.read_job(out)
    assert table.schema.field("embedding").type.value_type == pa.uint8()
    assert table.column("id").to_pylist()[:2] == ["part-0.parquet:0", "part-0.parquet:1"]  # derived ids
    want = oracle(texts, normalize_embeddings=True, precision="ubinary")
    assert np.array_equal(jobkit.vectors(table), want)


def test_bad_rows_quarantine_and_fail(tmp_path, tiny_st_model, jobio, jobkit):
    texts: list = texts_for(jobio, 30, seed=3)
    texts[4] = None
    pq.write_table(
        pa.table({"id": [f"doc-{i}" for i in range(30)], "text": texts}), str(tmp_path / "in.parquet")
    )
    out = str(tmp_path / "q")
    spec = jobkit.job_spec(
        tiny_st_model, str(tmp_path / "in.parquet"), out, policy={"on_bad_row": "quarantine"}
    )
    summary = run_job(spec, progress=False, keep_warm=True)
    assert summary["quarantined"] == 1 and summary["rows_written"] == 29
    errors = pq.read_table(os.path.join(out, ".embedjob", "_errors")).to_pylist()
    assert errors == [{"id": "doc-4", "file": "in.parquet", "row": 4, "reason": "null text"}]
    spec = jobkit.job_spec(tiny_st_model, str(tmp_path / "in.parquet"), str(tmp_path / "f"))
    with pytest.raises(JobError, match=r"shard 0 .*in\.parquet.*row 4: null text"):
        run_job(spec, progress=False, keep_warm=True)


def test_refuses_other_job_unless_overwrite(tmp_path, tiny_st_model, jobio, jobkit):
    texts = texts_for(jobio, 20, seed=4)
    jobkit.write_files(str(tmp_path / "in"), texts, files=1, row_group_size=10)
    out = str(tmp_path / "out")
    run_job(jobkit.job_spec(tiny_st_model, str(tmp_path / "in"), out), progress=False, keep_warm=True)
    again = run_job(jobkit.job_spec(tiny_st_model, str(tmp_path / "in"), out), progress=False, keep_warm=True)
    assert again["skipped_shards"] == again["shards"] and again["tokens"] == 0
    assert again["already_complete"] is True and again["timings"]["wall"] < 5  # no Ray start, no model load
    changed = jobkit.job_spec(tiny_st_model, str(tmp_path / "in"), out, model={"normalize": True})
    with pytest.raises(OutputConflict, match="embedding settings .*model.normalize: False then, True now"):
        run_job(changed, progress=False, keep_warm=True)
    jobkit.write_files(str(tmp_path / "in"), texts + ["one more"], files=1, row_group_size=10)
    with pytest.raises(OutputConflict, match="input plan"):
        run_job(jobkit.job_spec(tiny_st_model, str(tmp_path / "in"), out), progress=False, keep_warm=True)
    summary = run_job(changed, progress=False, keep_warm=True, overwrite=True)
    assert summary["rows_written"] == 21 and summary["skipped_shards"] == 0


@pytest.mark.parametrize("where", ["same", "inside", "contains"])
def test_output_overlapping_the_input_is_refused_before_any_work(
    tmp_path, tiny_st_model, jobio, jobkit, where
):
    """--overwrite with the input folder as output once deleted the input: refused, the input untouched."""
    inp = tmp_path / "data"
    paths = jobkit.write_files(str(inp), texts_for(jobio, 10, seed=5), files=2, row_group_size=5)
    out = {"same": inp, "inside": inp / "vectors", "contains": tmp_path}[where]
    spec = jobkit.job_spec(tiny_st_model, str(inp), str(out))
    with pytest.raises(ValueError, match=r"output\.uri: .* input\.uri"):
        run_job(spec, progress=False, keep_warm=True, overwrite=True)
    assert all(os.path.exists(p) for p in paths)


def test_overwrite_deletes_only_what_an_output_consists_of(tmp_path, tiny_st_model, jobio, jobkit):
    """A folder with a user's file and no _job.json: --overwrite refuses, naming the file, and deletes nothing."""
    jobkit.write_files(str(tmp_path / "in"), texts_for(jobio, 10, seed=6), files=1, row_group_size=5)
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "part-00000-x.parquet").write_bytes(b"an old part")
    spec = jobkit.job_spec(tiny_st_model, str(tmp_path / "in"), str(out))
    with pytest.raises(OutputConflict, match=r"'notes\.txt'"):
        run_job(spec, progress=False, keep_warm=True)
    with pytest.raises(OutputConflict, match=r"'notes\.txt'"):
        run_job(spec, progress=False, keep_warm=True, overwrite=True)
    assert (out / "notes.txt").read_text() == "mine" and (out / "part-00000-x.parquet").exists()
    (out / "notes.txt").unlink()
    with pytest.raises(OutputConflict, match="use --overwrite"):
        run_job(spec, progress=False, keep_warm=True)
    summary = run_job(spec, progress=False, keep_warm=True, overwrite=True)
    assert summary["rows_written"] == 10 and not (out / "part-00000-x.parquet").exists()


def test_a_missing_model_folder_fails_before_ray(tmp_path, capsys):
    """Named at once, with exit 2, instead of after Ray's start and a failed model load in a replica."""
    from jobs.cli import main

    pq.write_table(pa.table({"id": ["a"], "text": ["x"]}), str(tmp_path / "in.parquet"))
    code = main(["run", "--model", str(tmp_path / "no-model"), "--input", str(tmp_path / "in.parquet"),
                 "--output", str(tmp_path / "out"), "--no-progress"])  # fmt: skip
    assert code == 2 and f"model.name: {tmp_path / 'no-model'} does not exist" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("compute", "asked"),
    [
        ({"device": "cuda"}, "1 GPU"),
        ({"gpus_per_replica": 1}, "1 GPU"),
        ({"cpus_per_replica": 64}, "64 CPU"),
    ],
)
def test_replicas_no_node_can_hold_fail_at_once(tmp_path, tiny_st_model, jobio, jobkit, compute, asked):
    """Once hung forever with nothing printed (`--device cuda` on a CPU cluster) or ran on the CPU unasked."""
    jobkit.write_files(str(tmp_path / "in"), texts_for(jobio, 10, seed=7), files=1, row_group_size=5)
    spec = jobkit.job_spec(tiny_st_model, str(tmp_path / "in"), str(tmp_path / "out"), compute=compute)
    with pytest.raises(
        JobError, match=rf"compute: a replica asks for .*{asked}.*no node has that \(node 0: 2 CPU, 0 GPU\)"
    ):
        run_job(spec, progress=False, keep_warm=True)


def test_progress_false_is_quiet_and_the_summary_splits_wall_time(
    tmp_path, tiny_st_model, jobio, jobkit, capfd
):
    """run_job(progress=False) prints nothing; the summary's timings add up to the wall time."""
    from jobs.run import print_summary

    jobkit.write_files(str(tmp_path / "in"), texts_for(jobio, 20, seed=9), files=1, row_group_size=10)
    capfd.readouterr()
    summary = run_job(
        jobkit.job_spec(tiny_st_model, str(tmp_path / "in"), str(tmp_path / "out")),
        progress=False,
        keep_warm=True,
    )
    assert '"event"' not in capfd.readouterr().err
    t = summary["timings"]
    assert set(t) == {"plan", "ray_start", "model_load", "keys", "embed", "finish", "wall"}
    assert abs(sum(v for k, v in t.items() if k != "wall") - t["wall"]) < 0.1
    assert redact(t) == t  # the job_done event logs every stage's seconds, none masked as a secret
    print_summary(summary)
    assert "wall " in capfd.readouterr().out


def test_progress_moves_within_a_shard(tmp_path, tiny_st_model, jobio, jobkit, monkeypatch):
    """A one-shard job: the bar learns the rows done batch by batch, before the shard commits."""
    import jobs.progress

    jobkit.write_files(str(tmp_path / "in"), texts_for(jobio, 40, seed=10), files=1, row_group_size=40)
    monkeypatch.setenv(
        "EMBEDJOB_FAULTS", json.dumps([{"point": "worker.batch", "action": "sleep", "seconds": 0.6}])
    )
    monkeypatch.setenv("EMBEDJOB_FAULTS_STATE", str(tmp_path / "faults"))
    seen: list[tuple[int, int]] = []  # (partial rows, committed rows) as the bar saw them
    original = jobs.progress.Progress.partial

    def spy(self, rows, draw=True):
        seen.append((rows, self.rows))
        original(self, rows, draw)

    monkeypatch.setattr(jobs.progress.Progress, "partial", spy)
    spec = jobkit.job_spec(
        tiny_st_model, str(tmp_path / "in"), str(tmp_path / "out"),
        output={"rows_per_file": 40}, compute={"batch_size": 1, "rows_per_call": 8},
    )  # fmt: skip
    summary = run_job(spec, progress=False)
    assert summary["shards"] == 1 and summary["rows_written"] == 40
    during = sorted({rows for rows, committed in seen if committed == 0 and rows})
    assert during and during[0] < 40, seen  # batches of 8 rows, reported while the shard is in work
