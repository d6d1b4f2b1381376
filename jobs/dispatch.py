"""The dispatcher: keep every healthy replica busy with shards until each is committed exactly once."""

from __future__ import annotations

import collections
import time
from typing import TYPE_CHECKING, Any

from jobs.keypass import KeyPassResult
from jobs.progress import Progress
from jobs.shards import Shard
from jobs.sinks import Sink
from jobs.spec import JobSpec

if TYPE_CHECKING:
    from jobs.lease import Lease
    from jobs.pool import ReplicaPool, _Slot

PROBE_INTERVAL_S = 0.5


class JobError(RuntimeError):
    """The job stopped: a shard failed for a reason retrying cannot fix, or ran out of attempts."""


def dispatch(
    pool: ReplicaPool,
    todo: list[Shard],
    spec: JobSpec,
    bar: Progress,
    sink: Sink,
    reuse: bool,
    keys: KeyPassResult,
    lease: Lease | None = None,
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
    asked: dict[Any, _Slot] = {}  # progress questions out, one per replica at most
    partial: dict[str, int] = {}  # shard id -> rows done so far, of shards in flight
    while pending or in_flight:
        if lease is not None:
            lease.check()  # another run took the output over: stop before writing more
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
        _ask_progress(pool, asked, partial, {s.shard_id for s, _ in in_flight.values()}, bar)
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
            partial.pop(shard.shard_id, None)
            bar.partial(sum(partial.values()), draw=False)
            bar.committed(record, attempts[shard.shard_id])


def _ask_progress(
    pool: ReplicaPool, asked: dict[Any, Any], partial: dict[str, int], running: set[str], bar: Progress
) -> None:
    """Collect the replicas' answers of how far their shards are (never waiting), ask again, and show it."""
    import ray

    if asked:
        ready, _ = ray.wait(list(asked), num_returns=len(asked), timeout=0)
        for ref in ready:
            asked.pop(ref)
            try:
                shard_id, rows = ray.get(ref)
            except Exception:  # noqa: BLE001 - a dead replica's answer: its shard goes back to the queue anyway
                continue
            if shard_id in running:
                partial[shard_id] = rows
    for gone in set(partial) - running:
        partial.pop(gone)
    waiting_on = {id(slot) for slot in asked.values()}
    for slot in pool.slots:
        if slot.in_flight and not slot.recovering and id(slot) not in waiting_on:
            asked[slot.actor.progress.remote()] = slot
    bar.partial(sum(partial.values()))
