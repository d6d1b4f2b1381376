from __future__ import annotations

from jobs.cli import main
from jobs.manifest import PLAN_FILE, OutputStore
from jobs.progress import output_progress


def _shard(i: int) -> dict:
    return {"start": i * 100, "stop": (i + 1) * 100}


def test_progress_of_a_half_done_output(tmp_path, capsys):
    store = OutputStore(str(tmp_path))
    store.write_json(PLAN_FILE, {"shards": [_shard(i) for i in range(4)]})
    for sid, t in (("a", 1000.0), ("b", 1010.0)):
        store.write_json(
            store.record_name(sid),
            {"index": t, "rows_in": 100, "rows": 98, "quarantined": 2, "seconds": 10.0, "committed_at": t},
        )
    p = output_progress(store)
    assert (p["shards_committed"], p["shards_total"]) == (2, 4)
    assert (p["rows_committed"], p["rows_total"], p["rows_written"], p["quarantined"]) == (200, 400, 196, 4)
    # 200 rows committed between t=990 (first shard's start) and t=1010: 10 rows/s, 200 rows left.
    assert p["rows_per_s"] == 10.0 and p["eta_s"] == 20.0 and not p["complete"]
    assert main(["status", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "shards 2 of 4 committed" in text and "rate 10.0 rows/s" in text and "ETA 20 s" in text


def test_status_of_a_folder_that_is_no_output(tmp_path, capsys):
    assert main(["status", str(tmp_path / "nothing")]) == 1
    assert "no _plan.json" in capsys.readouterr().err
