"""Atomic and exclusive writes: the commit point of a shard is created once, by one writer."""

from __future__ import annotations

import json
import os

import pyarrow as pa
import pytest

from jobs.manifest import OutputStore
from jobs.shards import Shard
from jobs.sinks import ParquetSink


def _record(shard_id: str, who: str) -> dict:
    return {"shard_id": shard_id, "index": 0, "rows": 1, "quarantined": 0, "who": who}


def _exclusive_create(store: OutputStore) -> None:
    assert store.create_json("_manifest/s1.json", _record("s1", "first"))
    assert not store.create_json("_manifest/s1.json", _record("s1", "second"))
    assert store.read_json("_manifest/s1.json")["who"] == "first"
    # The same bytes again (an attempt whose answer was lost is retried): it is ours.
    assert store.create_json("_manifest/s2.json", {"a": 1})
    assert store.create_json("_manifest/s2.json", {"a": 1})


def test_exclusive_create_on_local_disk_leaves_no_staged_file(tmp_path):
    store = OutputStore(str(tmp_path / "out"))
    _exclusive_create(store)
    assert sorted(os.listdir(tmp_path / "out" / "_manifest")) == ["s1.json", "s2.json"]


def test_exclusive_create_on_s3(s3_server):
    store = OutputStore(s3_server.prefix(s3_server.buckets[1], "exclusive"), s3_server.storage_options)
    _exclusive_create(store)


@pytest.mark.parametrize("where", ["local", "s3"])
def test_two_runners_cannot_both_commit_a_shard(tmp_path, request, where):
    """Two replicas of two runners finish the same shard: the first record stands, the second is told so."""
    if where == "s3":
        s3 = request.getfixturevalue("s3_server")
        uri, options = s3.prefix(s3.buckets[1], "race"), s3.storage_options
    else:
        uri, options = str(tmp_path / "race"), None
    shard = Shard(
        index=0, shard_id="abc", kind="parquet", source="in.parquet", path="in.parquet", start=0, stop=1
    )
    table = pa.table({"id": ["a"], "text_hash": ["h"]})
    one, two = ParquetSink(uri, options), ParquetSink(uri, options)
    first = one.write_shard(shard, table, None, {"embedded": 1, "reused": 0, "tokens": 5})
    second = two.write_shard(shard, table, None, {"embedded": 1, "reused": 0, "tokens": 7})
    assert not first.get("skipped") and second["skipped"] is True
    assert second["tokens"] == 5  # the record that stands is the first runner's
    stored = one.store.read_json(one.store.record_name("abc"))
    assert json.dumps(stored, sort_keys=True) == json.dumps(first, sort_keys=True, default=str)


def test_a_corrupt_record_is_named(tmp_path):
    store = OutputStore(str(tmp_path / "out"))
    os.makedirs(tmp_path / "out" / "_manifest")
    (tmp_path / "out" / "_manifest" / "s1.json").write_text('{"shard_id": "s1", "ro')
    with pytest.raises(ValueError, match=r"output .*_manifest/s1.json: invalid JSON"):
        store.read_json("_manifest/s1.json")
