"""The model replicas: Ray actors sized from the spec and the cluster, kept warm between jobs on request."""

from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import dataclass
from typing import Any

from jobs.dispatch import JobError
from jobs.faults import fault_env
from jobs.fingerprint import digest
from jobs.spec import JobSpec
from jobs.worker import LOADING_FIELDS

ACTOR_RESTARTS = 3


class _DropTokenAuthNotice(logging.Filter):
    """Ray's notice that a local cluster it starts has token auth on (as it should): noise in every run's output.
    Its warning that auth is *off* still shows."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Token authentication is enabled")


def connect_ray(address: str | None) -> bool:
    """Join RAY_ADDRESS / --address, or start a local Ray sized to this machine; True if this call started it."""
    import ray

    auth_log = logging.getLogger("ray._private.authentication.authentication_token_setup")
    if not any(isinstance(f, _DropTokenAuthNotice) for f in auth_log.filters):
        auth_log.addFilter(_DropTokenAuthNotice())

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


def _asked(spec: JobSpec) -> dict[str, float]:
    """The resources one replica asks for, as the user set them."""
    c = spec.compute
    gpus = c.gpus_per_replica if c.gpus_per_replica is not None else (1 if c.device == "cuda" else 0)
    return {"CPU": c.cpus_per_replica, "GPU": gpus if c.device != "cpu" else 0}


def _placeable(asked: dict[str, float]) -> tuple[bool, str]:
    """Whether some alive node can hold one replica, and what the nodes offer (for the message)."""
    import ray

    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    ok = any(all(n.get(k, 0) >= v for k, v in asked.items() if v) for n in nodes)
    offer = "; ".join(
        f"node {k}: {n.get('CPU', 0):g} CPU, {n.get('GPU', 0):g} GPU" for k, n in enumerate(nodes)
    )
    return ok, offer or "no alive nodes"


def wait_until_placeable(spec: JobSpec) -> dict[str, float]:
    """The cluster's resources once one replica fits on some node; a JobError naming what was asked and what
    the nodes offer when none does (after compute.wait_for_resources_s, for an autoscaler to add nodes)."""
    import ray

    asked = _asked(spec)
    deadline = time.monotonic() + (spec.compute.wait_for_resources_s or 0)
    while True:
        ok, offer = _placeable(asked)
        if ok:
            return ray.cluster_resources()
        if time.monotonic() >= deadline:
            want = ", ".join(f"{v:g} {k}" for k, v in asked.items() if v)
            waited = spec.compute.wait_for_resources_s or 0
            raise JobError(
                f"compute: a replica asks for {want} (device {spec.compute.device!r}) and no node has that "
                f"({offer}){f' after waiting {waited:g} s' if waited else ''}; lower compute.cpus_per_replica / "
                "gpus_per_replica, set compute.device: cpu, or set compute.wait_for_resources_s for an autoscaler"
            )
        time.sleep(1.0)


class ReplicaPool:
    """The model replicas (Ray actors), sized from the spec and the cluster's CPUs/GPUs."""

    def __init__(self, spec: JobSpec, max_replicas: int):
        import ray

        from jobs.worker import ShardWorker

        c = spec.compute
        resources = wait_until_placeable(spec)
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
        # `progress` answers on its own thread while a shard is embedded; shards still run one at a time.
        self.remote_cls = ray.remote(concurrency_groups={"progress": 1})(ShardWorker)
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


def get_pool(spec: JobSpec, max_replicas: int, keep_warm: bool) -> ReplicaPool:
    if keep_warm:
        pool = _WARM.pop(_pool_key(spec), None)
        if pool is not None:
            return pool
    # At most one pool is kept warm: others would hold the CPUs/GPUs the new one needs.
    shutdown_warm()
    return ReplicaPool(spec, max_replicas)


def release_pool(pool: ReplicaPool, spec: JobSpec, keep_warm: bool) -> None:
    if keep_warm and not getattr(pool, "broken", False):
        _WARM[_pool_key(spec)] = pool
    else:
        pool.shutdown()


def shutdown_warm() -> None:
    """Kill the replicas kept warm by run_job(keep_warm=True)."""
    while _WARM:
        _WARM.popitem()[1].shutdown()


def first_info(pool: ReplicaPool, spec: JobSpec) -> dict[str, Any]:
    """The model info from the first replica; a replica that cannot load the model is a JobError naming why."""
    import ray
    from ray.exceptions import RayActorError

    try:
        return ray.get(pool.slots[0].actor.info.remote(spec.to_dict()))
    except ray.exceptions.RayTaskError as e:  # the model loaded, but the job asks what it cannot do
        raise JobError(f"{getattr(e, 'cause', None) or e}") from None
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
