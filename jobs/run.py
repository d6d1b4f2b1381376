"""The driver: plan, start model replicas, stream shards to free actors, resubmit on death, commit, summarise."""

from __future__ import annotations

import collections
import logging
import os
import re
import time
from dataclasses import dataclass
from typing import Any

from jobs.faults import fault_env
from jobs.fingerprint import digest
from jobs.index import PreviousOutput
from jobs.keypass import KeyPassResult, run_key_pass
from jobs.manifest import (
    SUCCESS_FILE,
    OutputConflict,
    job_metadata,
)
from jobs.paths import check_separate
from jobs.plan import plan_job
from jobs.progress import Progress, format_summary
from jobs.redact import register_secrets_in
from jobs.retry import RetryPolicy
from jobs.rows import default_max_chars
from jobs.shards import Shard
from jobs.sinks import Sink, open_sink
from jobs.spec import JobSpec, SpecError
from jobs.worker import LOADING_FIELDS

ACTOR_RESTARTS = 3
PROBE_INTERVAL_S = 0.5


class JobError(RuntimeError):
    """The job stopped: a shard failed for a reason retrying cannot fix, or ran out of attempts."""


def as_spec(spec: JobSpec | dict[str, Any] | str) -> JobSpec:
    """A JobSpec from a JobSpec, a mapping, or a YAML path."""
    if isinstance(spec, JobSpec):
        return spec
    if isinstance(spec, dict):
        return JobSpec.from_dict(spec)
    return JobSpec.load(spec)


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


def connect_ray(address: str | None) -> bool:
    """Join RAY_ADDRESS / --address, or start a local Ray sized to this machine; True if this call started it."""
    import ray

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    show_worker_logs = bool(os.environ.get("EMBEDJOB_WORKER_LOGS"))
    if address:
        ray.init(address=address, log_to_driver=show_worker_logs, logging_level=logging.WARNING)
    else:
        ray.init(
            num_cpus=os.cpu_count(),
            include_dashboard=False,
            log_to_driver=show_worker_logs,
            logging_level=logging.WARNING,
        )
    return True


@dataclass
class _Slot:
    """One replica: its actor handle, its shards in flight, and whether it is coming back from a death."""

    actor: Any
    in_flight: int = 0
    recovering: bool = False  # died; gets no shards until a probe answers
    probe: Any = None
    probe_at: float = 0.0


class ReplicaPool:
    """The model replicas (Ray actors), sized from the spec and the cluster's CPUs/GPUs."""

    def __init__(self, spec: JobSpec, max_replicas: int):
        import ray

        from jobs.worker import ShardWorker

        c = spec.compute
        resources = ray.cluster_resources()
        gpus = resources.get("GPU", 0)
        use_gpu = c.device == "cuda" or (c.device == "auto" and gpus > 0 and c.gpus_per_replica != 0)
        if use_gpu:
            per = c.gpus_per_replica or 1
            replicas = c.replicas or max(1, int(gpus // per))
            self.options = {"num_gpus": per, "num_cpus": c.cpus_per_replica}
            threads = c.cpus_per_replica
        else:
            replicas = c.replicas or max(1, int(resources.get("CPU", 1) // c.cpus_per_replica))
            self.options = {"num_cpus": c.cpus_per_replica, "num_gpus": 0}
            threads = c.cpus_per_replica
        self.replicas = max(1, min(replicas, max_replicas))
        env = fault_env()
        self.options.update(max_restarts=ACTOR_RESTARTS, max_task_retries=0)
        if env:
            self.options["runtime_env"] = {"env_vars": env}
        self.remote_cls = ray.remote(ShardWorker)
        self.args = (spec.to_dict(), threads)
        self.slots = [_Slot(self._new()) for _ in range(self.replicas)]

    def _new(self) -> Any:
        return self.remote_cls.options(**self.options).remote(*self.args)

    def replace(self, slot: _Slot) -> None:
        """Swap a replica that keeps dying (restarts used up) for a fresh actor."""
        import ray

        ray.kill(slot.actor, no_restart=True)
        slot.actor = self._new()

    def shutdown(self) -> None:
        """Kill every replica (frees their CPUs/GPUs for the rest of the cluster)."""
        import ray

        for slot in self.slots:
            ray.kill(slot.actor, no_restart=True)


_WARM: dict[str, ReplicaPool] = {}


def _pool_key(spec: JobSpec) -> str:
    """Replicas can serve another job of this driver when model, resources and fault hooks are the same."""
    import ray

    c = spec.compute
    resources = (c.replicas, c.gpus_per_replica, c.cpus_per_replica, c.device)
    loading = {k: v for k, v in spec.to_dict()["model"].items() if k in LOADING_FIELDS}
    return digest(ray.get_runtime_context().get_job_id(), loading, resources, fault_env())


def _get_pool(spec: JobSpec, max_replicas: int, keep_warm: bool) -> ReplicaPool:
    if keep_warm:
        pool = _WARM.pop(_pool_key(spec), None)
        if pool is not None:
            return pool
    # At most one pool is kept warm: others would hold the CPUs/GPUs the new one needs.
    shutdown_warm()
    return ReplicaPool(spec, max_replicas)


def _release_pool(pool: ReplicaPool, spec: JobSpec, keep_warm: bool) -> None:
    if keep_warm and not getattr(pool, "broken", False):
        _WARM[_pool_key(spec)] = pool
    else:
        pool.shutdown()


def shutdown_warm() -> None:
    """Kill the replicas kept warm by run_job(keep_warm=True)."""
    while _WARM:
        _WARM.popitem()[1].shutdown()


def run_job(
    spec: JobSpec | dict[str, Any] | str,
    *,
    overwrite: bool = False,
    address: str | None = None,
    progress: bool = True,
    log_file: str | None = None,
    keep_warm: bool = False,
) -> dict[str, Any]:
    """Run a job end to end (resuming into an existing output of the same job) and return its summary.

    keep_warm: leave the model replicas running for the next run_job of this process with the same model
    (notebooks, tests); the default frees them when the job ends.
    """
    import ray

    spec = absolutize(as_spec(spec))
    register_secrets_in(spec.to_dict())
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
    plan = plan_job(spec)
    previous = (
        PreviousOutput(spec.previous_uri, spec.output.storage_options, policy) if spec.previous_uri else None
    )
    started_ray = connect_ray(address)
    pool = None
    bar = None
    try:
        committed = set() if overwrite else sink.committed_ids()
        todo = [s for s in plan.shards if s.shard_id not in committed]
        pool = _get_pool(spec, max(1, len(todo)), keep_warm and not started_ray)
        info = _first_info(pool, spec)
        job = job_metadata(spec, plan, info)
        sink.prepare(existing, job, overwrite)
        if overwrite:
            existing, committed, todo = None, set(), list(plan.shards)
        reuse = previous is not None and previous.reusable(job["settings_fingerprint"])
        keys = KeyPassResult()
        done = sink.store.read_json(SUCCESS_FILE) if existing is not None and not todo else None
        if done is not None:
            keys.deleted = done.get("deleted")  # a complete output: its key pass has nothing left to find
        elif spec.input.id_column or previous is not None:
            # Before the first shard: repeated ids fail the job (or are quarantined) before anything is embedded.
            max_chars = spec.policy.max_text_chars or default_max_chars(info["max_seq_length"])
            fp = digest(
                plan.fingerprint, job["settings_fingerprint"], spec.previous_uri, spec.policy.on_bad_row
            )
            keys = run_key_pass(spec, plan, sink.store, previous, reuse, max_chars, fp)
        sink.on_write_start(existing, job, plan)
        bar = Progress(plan.rows, len(plan.shards), bar=progress, log_file=log_file)
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
            bar.resumed(sink.records())
        try:
            _dispatch(pool, todo, spec, bar, sink, reuse and keys.matched > 0, keys)
        except BaseException as e:
            bar.event("job_failed", **sink.on_write_failed(e))
            raise
        _release_pool(pool, spec, keep_warm and not started_ray)
        pool = None
        done_rows = plan.rows - sum(s.rows for s in plan.shards if s.shard_id in committed)
        summary = sink.on_write_complete(plan, {**bar.summary(done_rows), "deleted": keys.deleted or 0})
        bar.event("job_done", **summary)
        return summary
    finally:
        if bar is not None:
            bar.close()
        if pool is not None:
            _release_pool(pool, spec, keep_warm and not started_ray)
        if started_ray:
            ray.shutdown()


def _first_info(pool: ReplicaPool, spec: JobSpec) -> dict[str, Any]:
    """The model info from the first replica; a replica that cannot load the model is a JobError naming why."""
    import ray
    from ray.exceptions import RayActorError

    try:
        return ray.get(pool.slots[0].actor.info.remote(spec.to_dict()))
    except RayActorError as e:
        if not getattr(e, "actor_init_failed", False):
            raise
        # The remote traceback ends with the loader's own message (allow_pickle, trust_remote_code, ...).
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        starts = [k for k, line in enumerate(lines) if re.match(r"^[\w.]+(Error|Exception): ", line)]
        cause = " ".join(lines[starts[-1] :] if starts else lines[-1:])
        pool.broken = True  # never kept warm: its actors are dead
        raise JobError(
            f"model.name: {spec.model.name}: a replica could not load the model: {cause}"
        ) from None


def _dispatch(
    pool: ReplicaPool,
    todo: list[Shard],
    spec: JobSpec,
    bar: Progress,
    sink: Sink,
    reuse: bool,
    keys: KeyPassResult,
) -> None:
    """Keep every healthy replica busy (a bounded number of shards in flight each) until all shards are committed.

    A replica that dies is probed until it answers again (Ray restarts it) or is replaced when its restarts
    are used up; its shards go back to the queue, so every shard is committed exactly once.
    """
    import ray
    from ray.exceptions import (
        ActorDiedError,
        ObjectLostError,
        RayActorError,
        RayTaskError,
        WorkerCrashedError,
    )

    pending = collections.deque(todo)
    attempts: collections.Counter[str] = collections.Counter()
    in_flight: dict[Any, tuple[Shard, _Slot]] = {}
    probes: dict[Any, _Slot] = {}
    depth = spec.compute.in_flight_per_replica
    spec_ref = ray.put(spec.to_dict())  # one copy in the object store, not one per task
    while pending or in_flight:
        now = time.monotonic()
        for slot in pool.slots:
            if slot.recovering and slot.probe is None and now >= slot.probe_at:
                slot.probe = slot.actor.ready.remote()
                probes[slot.probe] = slot
            while not slot.recovering and pending and slot.in_flight < depth:
                shard = pending.popleft()
                attempts[shard.shard_id] += 1
                task = {
                    "shard": shard.to_dict(),
                    "reuse": keys.reuse_for(shard.index) if reuse else None,
                    "bad_rows": keys.bad_rows.get(shard.shard_id, []),
                }
                in_flight[slot.actor.process.remote(task, spec_ref)] = (shard, slot)
                slot.in_flight += 1
        waiting = list(in_flight) + list(probes)
        if not waiting:
            time.sleep(PROBE_INTERVAL_S)
            continue
        ready, _ = ray.wait(waiting, num_returns=1, timeout=PROBE_INTERVAL_S)
        for ref in ready:
            if ref in probes:
                slot = probes.pop(ref)
                slot.probe = None
                try:
                    ray.get(ref)
                    slot.recovering = False
                except ActorDiedError:
                    pool.replace(slot)  # restarts used up: a fresh actor, probed like a restarted one
                    slot.probe_at = time.monotonic()
                except RayActorError:
                    slot.probe_at = time.monotonic() + PROBE_INTERVAL_S  # still restarting
                continue
            shard, slot = in_flight.pop(ref)
            slot.in_flight -= 1
            try:
                record = ray.get(ref)
            except (RayActorError, WorkerCrashedError, ObjectLostError) as e:
                # The replica died (or its node did): the shard was not committed, or committed in full with
                # its record (then the retry sees the record and skips). Either way it runs once more.
                if attempts[shard.shard_id] >= spec.policy.shard_attempts:
                    raise JobError(
                        f"shard {shard.index} ({shard.shard_id}, {shard.source} rows {shard.start}-{shard.stop}): "
                        f"replica died {attempts[shard.shard_id]} times; last error: {type(e).__name__}: {e}"
                    ) from e
                bar.event(
                    "shard_retry",
                    shard_id=shard.shard_id,
                    index=shard.index,
                    attempt=attempts[shard.shard_id],
                    error=f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
                )
                pending.appendleft(shard)
                if not slot.recovering:
                    slot.recovering, slot.probe_at = True, time.monotonic()
                continue
            except RayTaskError as e:
                cause = e.cause if getattr(e, "cause", None) is not None else e
                raise JobError(
                    f"shard {shard.index} ({shard.shard_id}, {shard.source} rows {shard.start}-{shard.stop}): "
                    f"{type(cause).__name__}: {cause}"
                ) from cause
            record = sink.on_shard_written(record)
            bar.committed(record, attempts[shard.shard_id])


def print_summary(summary: dict[str, Any]) -> None:
    """Print the human-readable summary to stdout."""
    print(format_summary(summary), flush=True)


__all__ = ["JobError", "OutputConflict", "SpecError", "connect_ray", "print_summary", "run_job"]
