"""Driver progress: a tqdm bar (shards, rows, rows/s, tokens/s, ETA) and machine-parseable JSON log lines."""

from __future__ import annotations

import json
import sys
import time
from typing import IO, Any

import pyarrow as pa
import pyarrow.compute as pc

from jobs.manifest import JOB_FILE, PLAN_FILE, SUCCESS_FILE, OutputStore
from jobs.redact import redact
from jobs.shards import plan_summary

CHUNK_COUNTS = ("documents", "chunks", "deleted", "truncated")


def _total(table: pa.Table, column: str) -> int:
    """Sum of an integer column (0 for an empty table)."""
    return int(pc.sum(table.column(column)).as_py() or 0) if table.num_rows else 0


class Progress:
    """Counts committed shards; draws the bar and writes one JSON line per event (to a file, or stderr)."""

    def __init__(
        self,
        total_rows: int,
        total_shards: int,
        *,
        bar: bool = True,
        events: bool = True,
        log_file: str | None = None,
    ):
        """bar: draw a progress bar; events: write JSON event lines (to `log_file`, else stderr)."""
        self.started = time.perf_counter()
        self.total_rows, self.total_shards = total_rows, total_shards
        self.shards = self.rows = self.tokens = 0
        self.counts = {"embedded": 0, "reused": 0, "quarantined": 0, "skipped_shards": 0}
        self._log: IO[str] = open(log_file, "a", encoding="utf-8") if log_file else sys.stderr  # noqa: SIM115
        self._own_log = log_file is not None
        self._partial = 0  # rows of shards still in work, as far as their replicas are
        self._events = events or self._own_log
        self._bar = None
        if bar:
            from tqdm import tqdm

            self._bar = tqdm(total=total_rows, unit="row", dynamic_ncols=True, file=sys.stderr, smoothing=0.1)
            self._bar.set_description(f"shards 0/{total_shards}")

    def event(self, event: str, **fields: Any) -> None:
        """Write one JSON log line: {"event": ..., "ts": ..., **fields} (secrets masked)."""
        if not self._events:
            return
        line = json.dumps(
            redact({"event": event, "ts": round(time.time(), 3), **fields}), default=str, sort_keys=False
        )
        if self._bar is not None and not self._own_log:
            self._bar.write(line, file=sys.stderr)
        else:
            print(line, file=self._log, flush=True)

    def resumed(self, records: pa.Table) -> None:
        """Count shards an earlier run committed (they are not redone); `records` is the manifest table."""
        rows_in = _total(records, "rows_in")
        self.shards += records.num_rows
        self.rows += rows_in
        self.counts["skipped_shards"] += (
            records.num_rows
        )  # their rows count in the output's total, not this run's
        self._draw()

    def partial(self, rows: int, draw: bool = True) -> None:
        """Rows done so far of the shards in work (moves the bar between commits); draw=False when a commit
        follows at once, so the bar never steps back between the two."""
        if rows != self._partial:
            self._partial = rows
            if draw:
                self._draw()

    def _draw(self) -> None:
        if self._bar is not None:
            self._bar.n = min(self.total_rows, self.rows + self._partial)
            self._bar.set_description(f"shards {self.shards}/{self.total_shards}", refresh=False)
            self._bar.refresh()

    def committed(self, record: dict[str, Any], attempt: int) -> None:
        """Count a shard this run committed, update the bar, and log it."""
        self.shards += 1
        self.rows += record["rows_in"]
        self.tokens += record.get("tokens", 0)
        for key in ("embedded", "reused", "quarantined"):
            self.counts[key] += record.get(key, 0)
        for key in CHUNK_COUNTS:  # per run: chunking's counts, or texts cut without it
            if record.get(key) is not None:
                self.counts[key] = self.counts.get(key, 0) + record[key]
        elapsed = max(1e-9, time.perf_counter() - self.started)
        if self._bar is not None:
            self._bar.set_postfix_str(f"{self.tokens / elapsed:,.0f} tok/s", refresh=False)
        self._draw()
        self.event(
            "shard_committed",
            shard_id=record["shard_id"],
            index=record["index"],
            rows=record["rows"],
            embedded=record.get("embedded", 0),
            reused=record.get("reused", 0),
            quarantined=record.get("quarantined", 0),
            **{k: record[k] for k in CHUNK_COUNTS if record.get(k) is not None},
            tokens=record.get("tokens", 0),
            seconds=record.get("seconds"),
            attempt=attempt,
            shards_done=self.shards,
            shards_total=self.total_shards,
        )

    def close(self) -> None:
        """Close the bar and the log file."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._own_log:
            self._log.close()

    def summary(self, rows_done: int) -> dict[str, Any]:
        """Totals for the final log line and the printed summary."""
        elapsed = time.perf_counter() - self.started
        return {
            "shards": self.shards,
            "rows": self.rows,
            **self.counts,
            "tokens": self.tokens,
            "seconds": round(elapsed, 2),
            "rows_per_s": round(rows_done / elapsed, 1) if elapsed > 0 else None,
            "tokens_per_s": round(self.tokens / elapsed, 1) if elapsed > 0 else None,
        }


def format_summary(summary: dict[str, Any]) -> str:
    """A short human-readable summary of a finished job: this run's work, then the output's totals."""
    total = summary.get("total", summary)
    lines = [
        f"done: {summary['rows']:,} rows in {summary['shards']} shards -> {summary['output']}",
        f"  this run: embedded {summary['embedded']:,}, reused {summary['reused']:,}, "
        f"quarantined {summary['quarantined']:,}, deleted {summary.get('deleted', 0):,}",
    ]
    if summary.get("skipped_shards"):
        lines.append(
            f"  the output: embedded {total['embedded']:,}, reused {total['reused']:,}, quarantined "
            f"{total['quarantined']:,} ({summary['skipped_shards']} shards committed by an earlier run)"
        )
    if "chunks" in summary:
        lines.append(
            f"  chunking: {summary.get('documents', 0):,} documents -> {summary['chunks']:,} chunks; "
            f"chunks embedded {summary['embedded']:,}, reused {summary['reused']:,}, deleted "
            f"{summary.get('deleted', 0):,}"
        )
    elif summary.get("truncated"):
        lines.append(
            f"  truncated: {summary['truncated']:,} texts longer than the model's limit were cut "
            "(--chunk-tokens splits them into windows instead)"
        )
    lines += [
        f"  rows: {summary['rows']:,} in = {total.get('documents', summary.get('rows_written', 0)):,} written"
        f" + {total['quarantined']:,} quarantined",
        f"  embedding {summary['seconds']:.1f} s, {summary['rows_per_s'] or 0:,.1f} rows/s, "
        f"{summary['tokens_per_s'] or 0:,.0f} tokens/s",
    ]
    if summary.get("already_complete"):
        lines[1:] = ["  already complete: nothing to do (no model loaded)"]
    if t := summary.get("timings"):
        names = {"plan": "plan", "ray_start": "Ray start", "model_load": "model load", "keys": "key pass",
                 "embed": "embed", "finish": "finish"}  # fmt: skip
        parts = ", ".join(f"{names[k]} {v:.1f}" for k, v in t.items() if k in names)
        lines.append(f"  wall {t['wall']:.1f} s: {parts}")
    return "\n".join(lines)


def output_progress(store: OutputStore) -> dict[str, Any] | None:
    """Progress of a run read from its output alone: planned vs committed shards and rows, rate, ETA.

    Reads the plan's footer-level summary, the folded manifest and its JSON tail: a few reads, whatever
    the number of shards.
    """
    plan_table = store.read_table(PLAN_FILE, ["start", "stop"])
    if plan_table is None:
        return None
    plan = plan_summary(plan_table)
    records = store.records_table()
    success = store.read_json(SUCCESS_FILE)
    rows_total = int(plan["rows"])
    rows_in = _total(records, "rows_in")
    rate = None
    if records.num_rows:
        ends = records.column("committed_at")
        starts = pc.subtract(ends, records.column("seconds"))
        span = pc.max(ends).as_py() - pc.min(starts).as_py()
        rate = rows_in / span if span > 0 else None
    remaining = rows_total - rows_in
    from jobs.lease import is_live, read_lease

    running = success is None and is_live(read_lease(store))
    model = (store.read_json(JOB_FILE) or {}).get("model") or {}
    return {
        "output": store.uri,
        "model": {k: model.get(k) for k in ("name", "dimension", "precision", "normalize")},
        "complete": success is not None,
        "running": running,
        "shards_total": int(plan["shards"]),
        "shards_committed": records.num_rows,
        "rows_total": rows_total,
        "rows_committed": rows_in,
        "rows_written": _total(records, "rows"),
        "quarantined": _total(records, "quarantined"),
        "percent": 100.0 * rows_in / rows_total if rows_total else 100.0,
        "rows_per_s": rate,
        "eta_s": remaining / rate if rate and remaining > 0 and running else None,
        "success": success,
    }
