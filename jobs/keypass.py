"""The key pass, before any shard is embedded: the input's ids, shuffled into id-hash buckets by Ray tasks.

1. scan (one task per group of shards): read ids (and, when a previous output can lend vectors, the texts,
   cleaned exactly as a replica cleans them, to hash them); write (id, shard, row, text_hash) per bucket.
2. join (one task per bucket): repeated ids in plan order; with --previous, the previous ids that are gone
   (written to _deleted/ here) and the rows whose id and text hash the previous output holds.
3. gather (one task per group of previous parts): copy the matched previous vectors into a file with one row
   group per shard of this run, so a replica reads only its own shard's reused vectors.
When the previous output is the live Lance table this run updates (jobs.sinks.lance_table), there is no
gather: matched rows stay in the table, so the join writes them per shard for the replicas to skip, and the
table's other rows per fragment group, for the run's commit to delete.
Each map task writes one file with a row group per partition (jobs.buckets.partitioned_parquet), so the
shuffle makes as many files as tasks. No process holds every id: a task holds one group or one bucket; the
driver holds counts, the repeats and where each partition's row group is. All of it lives in OUT/_work/ and
is deleted once the job succeeds.
"""

from __future__ import annotations

import posixpath
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from jobs.buckets import bucket_count, bucket_of, bucket_sources, id_keys, partitioned_parquet
from jobs.fingerprint import match_hashes, text_hashes
from jobs.images import shard_reader
from jobs.index import (
    INDEX_DIR,
    INDEX_SCHEMA,
    PreviousOutput,
    build_index,
    load_map,
    open_store,
    read_row_groups,
    store_args,
    write_bucketed,
)
from jobs.manifest import DELETED_DIR, OutputStore
from jobs.plan import PlanError
from jobs.read import ID, ROW, TEXT, iter_shard_batches
from jobs.retry import RetryPolicy
from jobs.rows import check_column, duplicate_ids
from jobs.shards import Plan, Shard
from jobs.spec import JobSpec
from jobs.tasks import groups_of_rows, run_tasks
from jobs.write import parquet_bytes

WORK_DIR = "_work"
KEYS_DIR = f"{WORK_DIR}/keys"
MATCH_DIR = f"{WORK_DIR}/match"
VEC_DIR = f"{WORK_DIR}/vec"
PREV_INDEX_DIR = f"{WORK_DIR}/previous-index"
DONE_FILE = f"{WORK_DIR}/_keys.json"
REPEATS_FILE = f"{WORK_DIR}/repeats.parquet"
SOURCES_FILE = f"{WORK_DIR}/reuse-sources.json"
DROP_DIR = f"{WORK_DIR}/drop"
DROP_SOURCES = f"{WORK_DIR}/drop-sources.json"
FRAGMENTS_PER_DROP = 64  # table fragments one deletion task handles
ROWS_PER_SCAN = 1_000_000  # rows one scan task reads
GATHER_BYTES = 256 << 20  # previous vectors one gather task holds
READ_ROWS = 65_536
FAIL_SHOWN = 5  # repeats per bucket a join returns under policy fail (the message shows five)


class DuplicateIdsError(PlanError):
    """policy fail and the input repeats ids: names the first repeats, their files and rows."""


class KeyPassError(RuntimeError):
    """A key pass task failed for a reason its retries did not fix; names the step and the cause."""


def _named(step: str, results: Iterator[Any]) -> Iterator[Any]:
    """The results of a step's tasks; a task's error becomes a KeyPassError naming the step."""
    try:
        yield from results
    except Exception as e:
        cause = getattr(e, "cause", None) or e
        if isinstance(cause, PlanError):
            raise cause from None
        raise KeyPassError(f"key pass {step}: {type(cause).__name__}: {cause}") from e


@dataclass
class KeyPassResult:
    """What the key pass found; `bad_rows` maps shard id -> [(row, reason)] of repeated ids."""

    bad_rows: dict[str, list[tuple[int, str]]] = field(default_factory=dict)
    keys: int = 0
    repeats: int = 0
    deleted: int | None = None  # None: no previous output
    matched: int = 0
    # shard index -> (gather file, row group) of the shard's reusable vectors, in each file that has some
    reuse_sources: dict[int, list[tuple[str, int]]] = field(default_factory=dict)
    seconds: float = 0.0

    def reuse_for(self, shard_index: int) -> list[tuple[str, int]]:
        """Where a replica finds the reusable vectors of a shard ([] when it has none)."""
        return self.reuse_sources.get(shard_index, [])


_COUNTS = ("keys", "repeats", "deleted", "matched")


def run_key_pass(
    spec: JobSpec,
    plan: Plan,
    store: OutputStore,
    previous: PreviousOutput | None,
    reuse: bool,
    max_chars: int | None,
    fingerprint: str,
) -> KeyPassResult:
    """Find repeated ids, gone ids and reusable vectors of the whole input; resumes from OUT/_work/_keys.json."""
    started = time.perf_counter()
    done = store.read_json(DONE_FILE)
    if done is not None and done.get("fingerprint") == fingerprint:
        result = KeyPassResult(**{k: done[k] for k in _COUNTS})
        repeats = store.read_table(REPEATS_FILE)
        result.bad_rows = _bad_rows(plan, repeats.to_pylist()) if repeats is not None else {}
        sources = store.read_json(SOURCES_FILE) or {}
        result.reuse_sources = {int(g): [(f, rg) for f, rg in v] for g, v in sources.items()}
        result.seconds = round(time.perf_counter() - started, 3)
        return result
    store.remove_dir(WORK_DIR)
    store.remove_dir(DELETED_DIR)
    out_args = store_args(store)
    live = previous is not None and previous.live
    ch = spec.chunking
    # A row per window: every previous row of an id that is still there travels to its shard, where the
    # windows whose text hash is among them take their vectors; the texts need not be read here.
    by_id = reuse and previous is not None and not live and ch.enabled and ch.emit != "documents"
    with_text = reuse and previous is not None and not by_id
    passthrough = list(spec.input.passthrough) if live else []
    prev_index = _previous_index(previous, store, passthrough) if previous is not None else None
    buckets = bucket_count(plan.rows)
    if prev_index:
        # A multiple of the previous index's count: join b reads previous bucket b % that count.
        pb = prev_index["buckets"]
        buckets = pb * -(-bucket_count(plan.rows + previous.rows) // pb)

    scans = (
        (spec.to_dict(), [s.to_dict() for s in g], k, out_args, buckets, max_chars, with_text, passthrough)
        for k, g in enumerate(groups_of_rows(plan.shards, lambda s: s.rows, ROWS_PER_SCAN))
    )
    scanned = [(rel, groups) for _, rel, groups in _named("scan", run_tasks(_scan, scans)) if rel]
    ppg = _parts_per_gather(previous) if (with_text or by_id) and not live else 0
    joins = (
        (
            out_args,
            b,
            buckets,
            prev_index["buckets"] if prev_index else buckets,
            bucket_sources(scanned, b),
            prev_index["store"] if prev_index else None,
            bucket_sources(prev_index["files"], b % prev_index["buckets"]) if prev_index else None,
            ppg,
            spec.policy.on_bad_row == "fail",
            with_text and live,
            by_id,
        )
        for b in range(buckets)
    )
    result = KeyPassResult(deleted=0 if previous is not None else None)
    repeats: list[dict[str, Any]] = []
    repeated = 0
    match_files: list[tuple[str, dict[int, int]]] = []
    drop_sources: dict[int, list[tuple[str, int]]] = {}
    for r in _named("join", run_tasks(_join, joins)):
        result.keys += r["keys"]
        repeated += r["repeated"]
        repeats += r["repeats"]
        result.matched += r["matched"]
        if previous is not None:
            result.deleted += r["deleted"]
        if r.get("match_file"):
            match_files.append((r["match_file"], r["match_groups"]))
        for g, rg in (r.get("drop_groups") or {}).items():
            drop_sources.setdefault(g, []).append((r["drop_file"], rg))
    repeats.sort(key=lambda d: (d["shard"], d["row"]))
    if repeated and spec.policy.on_bad_row == "fail":
        raise DuplicateIdsError(_fail_message(spec, plan, repeats, repeated))
    result.repeats, result.bad_rows = len(repeats), _bad_rows(plan, repeats)

    if live:  # matched rows stay in the table: a replica reads its shard's matches to skip them
        for rel, where in match_files:
            for g, rg in where.items():
                result.reuse_sources.setdefault(g, []).append((rel, rg))
        store.write_json(DROP_SOURCES, {str(g): v for g, v in drop_sources.items()})
    elif result.matched:
        gathers = (
            (
                out_args,
                pg,
                [(rel, where[pg]) for rel, where in match_files if pg in where],
                previous.parts(pg * ppg, (pg + 1) * ppg),
                store_args(previous.data),
            )
            for pg in sorted({pg for _, where in match_files for pg in where})
        )
        for rel, where in _named("gather", run_tasks(_gather, gathers)):
            for g, rg in where.items():
                result.reuse_sources.setdefault(g, []).append((rel, rg))
    if repeats:
        store.write_bytes(REPEATS_FILE, parquet_bytes(pa.Table.from_pylist(repeats), "zstd"))
    if result.reuse_sources:
        store.write_json(SOURCES_FILE, {str(g): v for g, v in result.reuse_sources.items()})
    store.write_json(DONE_FILE, {"fingerprint": fingerprint, **{k: getattr(result, k) for k in _COUNTS}})
    result.seconds = round(time.perf_counter() - started, 3)
    return result


def _previous_index(previous: Any, store: OutputStore, passthrough: list[str]) -> dict[str, Any]:
    """Where the previous output's id index is, building it into OUT/_work/ when the output has none (a live
    Lance table's is always built, with the passthrough values in its match hashes)."""
    if previous.live:
        meta = previous.build_index(store, PREV_INDEX_DIR, passthrough)
        return {
            "store": store_args(store),
            "files": load_map(store, PREV_INDEX_DIR),
            "buckets": meta["buckets"],
        }
    if previous.index is not None:
        files = load_map(previous.store, INDEX_DIR)
        return {"store": store_args(previous.store), "files": files, "buckets": previous.index["buckets"]}
    meta = build_index(previous.data, previous.records, store, PREV_INDEX_DIR)
    files = load_map(store, PREV_INDEX_DIR)
    return {
        "store": store_args(store),
        "files": files,
        "buckets": meta["buckets"],
    }


def _parts_per_gather(previous: PreviousOutput) -> int:
    """Previous parts per gather task, so one task holds about GATHER_BYTES of vectors."""
    width = int(previous.job.get("model", {}).get("dimension") or 1024)
    rows_per_part = max(1, previous.rows // max(1, previous.records.num_rows))
    return max(1, GATHER_BYTES // (width * 4) // rows_per_part)


def _scan(
    spec_dict: dict,
    shards: list[dict],
    group: int,
    out_args: tuple,
    buckets: int,
    max_chars: int | None,
    with_text: bool,
    passthrough: list[str],
) -> tuple[int, str, list[int]]:
    """Ray task: the keys of a group of shards in one bucketed file; returns (rows, file, row group per bucket)."""
    spec = JobSpec.from_dict(spec_dict)
    store = open_store(out_args)
    policy = RetryPolicy(attempts=spec.policy.retries)
    pieces = []
    for d in shards:
        shard = Shard.from_dict(d)
        # Image jobs hash each image's bytes (read as a replica reads them), not its path.
        images = shard_reader(spec, shard, policy) if with_text else None
        for batch in iter_shard_batches(shard, spec.input, READ_ROWS, policy, keys_only=not with_text):
            ids = batch.column(ID).combine_chunks()
            valid = pc.is_valid(ids)
            if ids.type in (pa.float32(), pa.float64()):
                valid = pc.and_(valid, pc.invert(pc.is_nan(ids)))
            cols = {
                "id": id_keys(ids),
                "shard": pa.array(np.full(batch.num_rows, shard.index, np.int32)),
                "row": batch.column(ROW).combine_chunks(),
            }
            if with_text:
                clean, bad = check_column(batch.column(TEXT), max_chars=max_chars, images=images)
                bad_pos = {p for p, _ in bad}
                hashes = iter(text_hashes(clean))
                all_hashes = [None if p in bad_pos else next(hashes) for p in range(batch.num_rows)]
                cols["text_hash"] = pa.array(match_hashes(all_hashes, batch.select(passthrough)), pa.string())
            pieces.append(pa.table(cols).filter(valid))
    return write_bucketed(store, posixpath.join(KEYS_DIR, f"s={group:06d}.parquet"), pieces, buckets)


def _join(
    out_args: tuple,
    b: int,
    buckets: int,
    prev_buckets: int,
    new_sources: list[tuple[str, int]],
    prev_args: tuple | None,
    prev_sources: list[tuple[str, int]] | None,
    parts_per_gather: int,
    fail_fast: bool,
    live: bool,
    by_id: bool = False,
) -> dict[str, Any]:
    """Ray task: one bucket's repeated ids, gone previous ids (to _deleted/) and reusable matches.

    new_sources / prev_sources: (file, row group) of this bucket in this run's key files and in the previous
    output's index files (prev_sources None: no previous output). live: the previous output is the table this
    run updates; the matches are written per shard and the table's other rows per fragment group (to drop).
    by_id: every previous row of an id still in the input matches (chunking: its windows' rows).
    """
    store = open_store(out_args)
    new = read_row_groups(store, new_sources)
    repeats: list[dict[str, Any]] = []
    first = None
    if new is not None:
        new = new.sort_by([("shard", "ascending"), ("row", "ascending")])  # plan order
        pairs = duplicate_ids(new.column("id"))
        first = new
        if pairs:
            shard, row, key = (new.column(c).to_pylist() for c in ("shard", "row", "id"))
            shown = (
                pairs[:FAIL_SHOWN] if fail_fast else pairs
            )  # policy fail names a few; quarantine needs all
            repeats = [
                {"shard": shard[p], "row": row[p], "first_shard": shard[f], "first_row": row[f], "id": key[p]}
                for p, f in shown
            ]
            keep = np.ones(new.num_rows, bool)
            keep[[p for p, _ in pairs]] = False
            first = new.filter(pa.array(keep))
    out: dict[str, Any] = {
        "keys": 0 if new is None else new.num_rows,
        "repeated": len(pairs) if new is not None else 0,
        "repeats": repeats,
        "deleted": 0,
        "matched": 0,
    }
    if prev_sources is None:
        return out
    prev = read_row_groups(open_store(prev_args), prev_sources)
    if prev is None:
        prev = INDEX_SCHEMA.empty_table()
    elif buckets != prev_buckets:  # this run's buckets split each previous one: keep this bucket's ids
        prev = prev.filter(pa.array(bucket_of(prev.column("id").combine_chunks(), buckets) == b))
    now_ids = new.column("id").combine_chunks() if new is not None else pa.array([], pa.string())
    gone = prev.filter(pc.invert(pc.is_in(prev.column("id"), value_set=now_ids)))
    gone_ids = gone.column("id").combine_chunks()
    store.write_bytes(
        posixpath.join(DELETED_DIR, f"deleted-{b:05d}.parquet"),
        parquet_bytes(pa.table({"id": pc.unique(gone_ids) if by_id else gone_ids}), "zstd"),
    )
    out["deleted"] = gone.num_rows
    if by_id and parts_per_gather and first is not None and prev.num_rows:
        joined = first.select(["id", "shard", "row"]).join(
            prev.rename_columns(["id", "text_hash", "part", "prev_row"]), keys="id", join_type="inner"
        )
        joined = joined.select(["shard", "row", "text_hash", "part", "prev_row"])
        out["matched"] = joined.num_rows
        if joined.num_rows:
            by_gather = joined.column("part").to_numpy() // parts_per_gather
            out["match_file"], out["match_groups"] = _write_parts(store, MATCH_DIR, b, joined, by_gather)
    elif live:
        out.update(_live_matches(store, b, first, prev))
    elif parts_per_gather and first is not None and "text_hash" in first.column_names and prev.num_rows:
        # An id written twice by an old output would match twice; the first of each id is the one kept.
        dup = duplicate_ids(prev.column("id"))
        if dup:
            keep = np.ones(prev.num_rows, bool)
            keep[[p for p, _ in dup]] = False
            prev = prev.filter(pa.array(keep))
        joined = first.filter(pc.is_valid(first.column("text_hash"))).join(
            prev.rename_columns(["id", "prev_hash", "part", "prev_row"]), keys="id", join_type="inner"
        )
        joined = joined.filter(pc.equal(joined.column("text_hash"), joined.column("prev_hash")))
        joined = joined.select(["shard", "row", "text_hash", "part", "prev_row"])
        out["matched"] = joined.num_rows
        if joined.num_rows:
            by_gather = joined.column("part").to_numpy() // parts_per_gather
            out["match_file"], out["match_groups"] = _write_parts(store, MATCH_DIR, b, joined, by_gather)
    return out


def _write_parts(
    store: OutputStore, folder: str, b: int, table: pa.Table, partition: np.ndarray
) -> tuple[str, dict[int, int]]:
    """Bucket b's rows as folder/b=<b>.parquet, one row group per partition; (file, {partition: row group})."""
    rel = posixpath.join(folder, f"b={b:05d}.parquet")
    data, where = partitioned_parquet(table, partition)
    store.write_bytes(rel, data)
    return rel, where


def _live_matches(store: OutputStore, b: int, first: pa.Table | None, prev: pa.Table) -> dict[str, Any]:
    """A live update's bucket: rows whose id and match hash the table holds (skipped, by shard), and the
    table's other rows (deleted by the run's commit, by fragment group)."""
    out: dict[str, Any] = {"matched": 0}
    prev = prev.append_column("prev_pos", pa.array(np.arange(prev.num_rows, dtype=np.int64)))
    kept = np.zeros(prev.num_rows, bool)
    if first is not None and first.num_rows and prev.num_rows:
        joined = first.filter(pc.is_valid(first.column("text_hash"))).join(
            prev.select(["id", "text_hash", "prev_pos"]).rename_columns(["id", "prev_hash", "prev_pos"]),
            keys="id",
            join_type="inner",
        )
        joined = joined.filter(pc.equal(joined.column("text_hash"), joined.column("prev_hash")))
        # Input ids are unique here; an id the table holds twice keeps one copy, the other is dropped.
        twice = duplicate_ids(joined.column("id"))
        if twice:
            keep = np.ones(joined.num_rows, bool)
            keep[[p for p, _ in twice]] = False
            joined = joined.filter(pa.array(keep))
        kept[joined.column("prev_pos").to_numpy()] = True
        out["matched"] = joined.num_rows
        if joined.num_rows:
            matches = joined.select(["shard", "row", "text_hash"]).sort_by(
                [("shard", "ascending"), ("row", "ascending")]
            )
            by_shard = matches.column("shard").to_numpy()
            out["match_file"], out["match_groups"] = _write_parts(store, MATCH_DIR, b, matches, by_shard)
    drop = prev.filter(pa.array(~kept)).select(["part", "row"])
    if drop.num_rows:
        by_group = drop.column("part").to_numpy() // FRAGMENTS_PER_DROP
        out["drop_file"], out["drop_groups"] = _write_parts(store, DROP_DIR, b, drop, by_group)
    return out


def _gather(
    out_args: tuple,
    pg: int,
    sources: list[tuple[str, int]],
    parts: dict[int, str],
    prev_args: tuple,
) -> tuple[str, dict[int, int]]:
    """Ray task: copy the matched vectors of some previous parts into one file with a row group per shard of
    this run; returns (file, {shard index: row group})."""
    store, prev = open_store(out_args), open_store(prev_args)
    matches = read_row_groups(store, sources)
    if matches is None:
        return "", {}
    matches = matches.sort_by("part")
    part_col = matches.column("part").to_numpy()
    pieces = []
    for part in np.unique(part_col):
        sel = matches.filter(pa.array(part_col == part))
        file = parts[int(part)]
        column = prev.read_table(file, ["embedding"])
        if column is None:
            raise FileNotFoundError(
                f"previous {prev.path(file)}: part file listed in its manifest is missing"
            )
        emb = column.column("embedding").combine_chunks().take(sel.column("prev_row"))
        pieces.append(
            pa.table(
                {
                    "shard": sel.column("shard"),
                    "row": sel.column("row"),
                    "text_hash": sel.column("text_hash"),
                    "embedding": emb,
                }
            )
        )
    table = pa.concat_tables(pieces).sort_by([("shard", "ascending"), ("row", "ascending")])
    data, where = partitioned_parquet(table, table.column("shard").to_numpy())
    rel = posixpath.join(VEC_DIR, f"pg={pg:06d}.parquet")
    store.write_bytes(rel, data)
    return rel, where


def read_reused(
    store: OutputStore, sources: list[tuple[str, int]], shard_index: int
) -> dict[int, tuple[str, Any]]:
    """Inside a replica: {input row: (text_hash, vector)} of the shard's rows the key pass found reusable (vector
    None for a live update's unchanged rows).

    sources: (gather file, row group) of the shard in each gather file that has rows for it.
    """
    table = read_row_groups(store, [(f, rg) for f, rg in sources])
    if table is None or table.num_rows == 0:
        return {}
    if "embedding" in table.column_names:
        emb = table.column("embedding").combine_chunks()
        values = list(emb.flatten().to_numpy(zero_copy_only=False).reshape(len(emb), emb.type.list_size))
    else:  # a live update's matches: the rows stay in the table, no vector travels
        values = [None] * table.num_rows
    pairs = zip(table.column("text_hash").to_pylist(), values, strict=True)
    return dict(zip(table.column("row").to_pylist(), pairs, strict=True))


def read_reused_rows(
    store: OutputStore, sources: list[tuple[str, int]], shard_index: int
) -> dict[int, list[tuple[str, Any]]]:
    """Inside a replica, under chunking: {input row: [(text_hash, vector)]} of every previous row of its id."""
    table = read_row_groups(store, [(f, rg) for f, rg in sources])
    out: dict[int, list[tuple[str, Any]]] = {}
    if table is None or table.num_rows == 0:
        return out
    emb = table.column("embedding").combine_chunks()
    values = emb.flatten().to_numpy(zero_copy_only=False).reshape(len(emb), emb.type.list_size)
    for row, h, v in zip(
        table.column("row").to_pylist(), table.column("text_hash").to_pylist(), values, strict=True
    ):
        out.setdefault(row, []).append((h, v))
    return out


def _bad_rows(plan: Plan, repeats: list[dict[str, Any]]) -> dict[str, list[tuple[int, str]]]:
    out: dict[str, list[tuple[int, str]]] = {}
    for r in repeats:
        shard, first = plan.shards[r["shard"]], plan.shards[r["first_shard"]]
        out.setdefault(shard.shard_id, []).append(
            (r["row"], f"duplicate id (first at {first.source} row {r['first_row']})")
        )
    return out


def _fail_message(spec: JobSpec, plan: Plan, repeats: list[dict[str, Any]], n: int) -> str:
    lines = [
        f"{r['id']!r} at {plan.shards[r['shard']].source} row {r['row']} "
        f"(first at {plan.shards[r['first_shard']].source} row {r['first_row']})"
        for r in repeats[:5]
    ]
    more = f" (and {n - 5} more)" if n > 5 else ""
    return (
        f"input.id_column: {n} duplicate id{'s' if n != 1 else ''} in column {spec.input.id_column!r}: "
        f"{'; '.join(lines)}{more}; ids must be unique, or set policy.on_bad_row: quarantine to embed the "
        "first row of each id and quarantine the repeats"
    )
