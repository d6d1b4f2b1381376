"""The job flow: check, plan, start the replicas, run the key pass, dispatch the shards, complete the output."""

from __future__ import annotations

import os
import time
from typing import Any

from jobs.dispatch import JobError, dispatch
from jobs.fingerprint import VECTOR_FIELDS, digest, weights_fingerprint
from jobs.index import PreviousOutput
from jobs.keypass import KeyPassResult, run_key_pass
from jobs.lease import Lease
from jobs.manifest import (
    SUCCESS_FILE,
    OutputConflict,
    differing_fields,
    job_metadata,
    spec_fingerprint,
)
from jobs.paths import check_local_paths, check_separate
from jobs.plan import plan_job
from jobs.pool import connect_ray, first_info, get_pool, release_pool
from jobs.progress import Progress, format_summary
from jobs.redact import redact, register_secrets_in
from jobs.retry import RetryPolicy
from jobs.rows import default_max_chars
from jobs.shards import Plan
from jobs.sinks import Sink, open_sink
from jobs.sinks.lance_table import LiveTable
from jobs.spec import JobSpec, SpecError, as_spec, resolve_model_name


def absolutize(spec: JobSpec) -> JobSpec:
    """Local relative paths made absolute, since Ray workers need not share the driver's working directory."""
    d = spec.to_dict()

    def fix(value: str | None) -> str | None:
        if value and "://" not in value and not value.startswith("python-package:"):
            return os.path.abspath(os.path.expanduser(value))
        return value

    d["input"]["uri"] = fix(d["input"]["uri"])
    d["output"]["uri"] = fix(d["output"]["uri"])
    d["previous"] = fix(d["previous"])
    d["input"]["previous"] = fix(d["input"]["previous"])
    if os.path.exists(d["model"]["name"]):
        d["model"]["name"] = fix(d["model"]["name"])
    return JobSpec.from_dict(d)


def _key_pass_fingerprint(spec: JobSpec, plan: Any, settings: str | None = None) -> str:
    """What a finished key pass depends on: the plan and bad-row policy, and with --previous the settings."""
    if not spec.previous_uri:
        return digest(plan.fingerprint, spec.policy.on_bad_row)
    return digest(plan.fingerprint, settings, spec.previous_uri, spec.policy.on_bad_row)


class Stages:
    """Wall time per stage of a run (plan, Ray start, model load, key pass, embed, finish)."""

    def __init__(self) -> None:
        self.started = self.last = time.perf_counter()
        self.seconds: dict[str, float] = {}

    def mark(self, stage: str) -> None:
        """The time since the last mark belongs to `stage`."""
        now = time.perf_counter()
        self.seconds[stage] = round(self.seconds.get(stage, 0.0) + now - self.last, 2)
        self.last = now

    def as_dict(self) -> dict[str, float]:
        return {**self.seconds, "wall": round(time.perf_counter() - self.started, 2)}


def _already_complete(
    spec: JobSpec, plan: Plan, sink: Sink, existing: dict[str, Any]
) -> dict[str, Any] | None:
    """The summary of an output this very job already completed, without starting Ray or loading the model:
    same plan, spec and local model folder (weights hashed), same settings, and _SUCCESS written."""
    done = sink.store.read_json(SUCCESS_FILE)
    path = resolve_model_name(spec.model.name)
    if done is None or not os.path.isdir(path):
        return None  # a hub model: resolving its weights is the model load this shortcut avoids
    if (existing.get("plan_fingerprint"), existing.get("spec_fingerprint")) != (
        plan.fingerprint,
        spec_fingerprint(spec),
    ):
        return None
    d = spec.to_dict()
    stored = existing.get("spec") or {}
    if d["model"].get("int8_ranges") is None:  # calibrated by the run that made the output
        d["model"]["int8_ranges"] = (stored.get("model") or {}).get("int8_ranges")
    if any(f in VECTOR_FIELDS for f, _, _ in differing_fields(stored, redact(d))):
        return None
    if weights_fingerprint(path) != existing.get("weights_fingerprint"):
        return None
    committed = set(sink.records().column("shard_id").to_pylist())
    if any(s.shard_id not in committed for s in plan.shards):
        return None  # _SUCCESS, but a record is gone: the normal path redoes the shard
    zero = {"embedded": 0, "reused": 0, "quarantined": 0, "tokens": 0, "deleted": 0, "seconds": 0.0}
    return {**done, **zero, "skipped_shards": len(plan.shards), "already_complete": True, "rows_per_s": None}


def _previous(spec: JobSpec, sink: Sink, policy: RetryPolicy) -> PreviousOutput | LiveTable | None:
    """The output a run reuses vectors from: an earlier Parquet output, or the live Lance table it updates."""
    if not spec.previous_uri:
        return None
    if getattr(sink, "live", False):
        if sink._dataset() is None:
            return None  # the first run of a nightly update: nothing to compare with yet
        return LiveTable(sink.lance, sink.uri, sink.lance_options)
    return PreviousOutput(spec.previous_uri, spec.output.storage_options, policy)


CALIBRATION_SHARDS = 8  # shards, spread over the plan, whose first rows calibrate int8 ranges
CALIBRATION_ROWS = 128  # rows per calibration shard


def _with_int8_ranges(
    spec: JobSpec, pool: Any, plan: Plan, existing: dict[str, Any] | None, previous: Any
) -> tuple[JobSpec, dict[str, Any] | None]:
    """int8/uint8: the ranges every shard quantises with, fixed once per output. Given in the spec; else the
    output's own (a resume); else the previous output's, so reused vectors stay comparable; else calibrated
    on the float32 vectors of a sample of the input. Returns the spec with them, and where they came from."""
    import ray

    m = spec.model
    if m.precision not in ("int8", "uint8") or m.int8_ranges is not None:
        return spec, None
    source: dict[str, Any] | None = None
    for name, job in (("output", existing), ("previous", previous.job if previous is not None else None)):
        model = ((job or {}).get("spec") or {}).get("model") or {}
        if model.get("int8_ranges") and model.get("precision", m.precision) == m.precision:
            ranges, source = model["int8_ranges"], {"from": name}
            break
    if source is None:
        step = max(1, len(plan.shards) // CALIBRATION_SHARDS)
        sample = [s.to_dict() for s in plan.shards[::step][:CALIBRATION_SHARDS]]
        try:
            found = ray.get(pool.slots[0].actor.calibrate.remote(sample, CALIBRATION_ROWS, spec.to_dict()))
        except ray.exceptions.RayTaskError as e:
            raise JobError(f"{getattr(e, 'cause', None) or e}") from None
        ranges, source = found.pop("ranges"), {"from": "input sample", **found}
    d = spec.to_dict()
    d["model"]["int8_ranges"] = ranges
    return JobSpec.from_dict(d), source


def run_job(
    spec: JobSpec | dict[str, Any] | str,
    *,
    overwrite: bool = False,
    address: str | None = None,
    progress: bool | str = True,
    log_file: str | None = None,
    keep_warm: bool = False,
) -> dict[str, Any]:
    """Run a job end to end (resuming into an existing output of the same job) and return its summary.

    progress: True draws a progress bar (JSON event lines go only to `log_file`, if given); "json" writes the
    event lines to stderr (or `log_file`) with no bar; False stays quiet (but for `log_file`).
    keep_warm: leave the model replicas running for the next run_job of this process with the same model
    (notebooks, tests); the default frees them when the job ends.
    """

    stages = Stages()
    spec = absolutize(as_spec(spec))
    register_secrets_in(spec.to_dict())
    check_local_paths(spec.model.name, spec.output.uri)
    if spec.input.uri:
        check_separate(
            spec.output.uri,
            spec.input.uri,
            spec.input.storage_options,
            spec.output.storage_options,
            spec.previous_uri,
        )
    policy = RetryPolicy(attempts=spec.policy.retries)
    sink = open_sink(spec, policy)
    existing = sink.existing_job(overwrite)
    plan = plan_job(spec)  # reads the input only: a bad input fails here, before the output is touched
    if existing is not None and not sink.resumes(existing, plan):
        existing = None  # a new run over the output: a live table's update from another input
    stages.mark("plan")
    if existing is not None and not overwrite:
        done = _already_complete(spec, plan, sink, existing)
        if done is not None:
            return {**done, "timings": stages.as_dict()}
    lease = Lease(sink.store)
    lease.acquire()  # one runner per output: a second one is refused while this one's heartbeat is fresh
    try:
        return _run(
            spec, plan, sink, existing, lease, overwrite, address, progress, log_file, keep_warm, stages
        )
    finally:
        lease.release()


def _run(
    spec: JobSpec,
    plan: Plan,
    sink: Sink,
    existing: dict[str, Any] | None,
    lease: Lease,
    overwrite: bool,
    address: str | None,
    progress: bool | str,
    log_file: str | None,
    keep_warm: bool,
    stages: Stages,
) -> dict[str, Any]:
    """run_job once the output is held: plan, replicas, key pass, dispatch, completion."""
    import ray

    policy = sink.store.policy
    previous = _previous(spec, sink, policy)
    started_ray = connect_ray(address)
    stages.mark("ray_start")
    pool = None
    bar = None
    try:
        # One read of the manifest serves the resume set and the progress of the shards already in.
        records = None if overwrite or existing is None else sink.records()
        committed = set(records.column("shard_id").to_pylist()) if records is not None else set()
        todo = [s for s in plan.shards if s.shard_id not in committed]
        pool = get_pool(spec, max(1, len(todo)), keep_warm and not started_ray)
        keys = None
        if existing is None and not spec.previous_uri and spec.input.id_column:
            # A new output and only the duplicate check to do: it reads ids while the replicas load the model.
            # (--overwrite of a folder with no output in it clears its files below; the result stays in memory.)
            keys = run_key_pass(spec, plan, sink.store, None, False, None, _key_pass_fingerprint(spec, plan))
        info = first_info(pool, spec)
        spec, calibration = _with_int8_ranges(spec, pool, plan, existing, previous)
        if calibration is not None:
            info = first_info(pool, spec)  # the ranges are part of the settings fingerprint
        job = job_metadata(spec, plan, info)
        if calibration is not None:
            job["model"]["int8_calibration"] = calibration
        stages.mark("model_load")
        sink.prepare(existing, job, overwrite)
        if overwrite:
            existing, committed, todo = None, set(), list(plan.shards)
        reuse = previous is not None and previous.reusable(job["settings_fingerprint"])
        done = sink.store.read_json(SUCCESS_FILE) if existing is not None and not todo else None
        if keys is None and done is not None:
            keys = KeyPassResult(deleted=done.get("deleted"))  # complete: the key pass has nothing to find
        elif keys is None and (spec.input.id_column or previous is not None):
            # Before the first shard: repeated ids fail the job (or are quarantined) before anything is embedded.
            max_chars = spec.policy.max_text_chars or default_max_chars(
                info["max_seq_length"], spec.chunking.enabled
            )
            fp = _key_pass_fingerprint(spec, plan, job["settings_fingerprint"])
            keys = run_key_pass(spec, plan, sink.store, previous, reuse, max_chars, fp)
        keys = keys or KeyPassResult()
        sink.on_write_start(existing, job, plan)
        # "keys", not "key_pass": a key named like a secret would be masked in the logs
        stages.mark("keys")
        bar = Progress(
            plan.rows, len(plan.shards), bar=progress is True, events=progress == "json", log_file=log_file
        )
        bar.event(
            "job_started",
            output=spec.output.uri,
            shards=len(plan.shards),
            rows=plan.rows,
            resumed_shards=len(committed),
            replicas=pool.replicas,
            resources=pool.options.get("num_gpus") and "gpu" or "cpu",
            previous=spec.previous_uri,
            previous_reusable=reuse,
            id_pass_seconds=keys.seconds,
            repeated_ids=keys.repeats,
            reusable_rows=keys.matched,
        )
        if committed:
            bar.resumed(records)
        try:
            dispatch(pool, todo, spec, bar, sink, reuse and keys.matched > 0, keys, lease)
        except BaseException as e:
            bar.event("job_failed", **sink.on_write_failed(e))
            raise
        stages.mark("embed")
        release_pool(pool, spec, keep_warm and not started_ray)
        pool = None
        done_rows = plan.rows - sum(s.rows for s in plan.shards if s.shard_id in committed)
        # Deleted: previous rows of ids gone (key pass), and under chunking windows gone from changed documents.
        deleted = (keys.deleted or 0) + bar.counts.get("deleted", 0)
        summary = sink.on_write_complete(plan, {**bar.summary(done_rows), "deleted": deleted})
        stages.mark("finish")
        summary["timings"] = stages.as_dict()
        bar.event("job_done", **summary)
        return summary
    finally:
        if bar is not None:
            bar.close()
        if pool is not None:
            release_pool(pool, spec, keep_warm and not started_ray)
        if started_ray:
            ray.shutdown()


def print_summary(summary: dict[str, Any]) -> None:
    """Print the human-readable summary to stdout."""
    print(format_summary(summary), flush=True)


__all__ = ["JobError", "OutputConflict", "SpecError", "connect_ray", "print_summary", "run_job"]
