"""Run many small Ray tasks with a bounded window in flight, so the driver holds refs for a window, not a job."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")

# The key pass and the index build read and write storage; they need no reserved CPU and must not wait
# for one while the replicas hold every CPU of the cluster. SPREAD puts them on every node, not the head's.
TASK_OPTIONS = {"num_cpus": 0, "scheduling_strategy": "SPREAD", "max_retries": 3}


def groups_of_rows(items: Iterable[T], rows: Callable[[T], int], limit: int) -> list[list[T]]:
    """Consecutive items in groups of about `limit` rows each (an item larger than `limit` is a group alone)."""
    groups: list[list[T]] = []
    current: list[T] = []
    n = 0
    for item in items:
        count = rows(item)
        if current and n + count > limit:
            groups.append(current)
            current, n = [], 0
        current.append(item)
        n += count
    if current:
        groups.append(current)
    return groups


def default_window() -> int:
    """Tasks in flight at once: one per CPU of the cluster (at least 2)."""
    import ray

    return max(2, int(ray.cluster_resources().get("CPU", 2)))


def run_tasks(fn: Callable[..., Any], calls: Iterable[tuple], window: int | None = None) -> Iterator[Any]:
    """Run `fn(*args)` remotely for each args tuple, at most `window` at a time; yields results as they finish.

    A task that raises stops the iteration with its error (the caller names the job step).
    """
    import ray

    from jobs.faults import fault_env

    options = dict(TASK_OPTIONS)
    if env := fault_env():  # the fault hooks of the tests reach tasks as they reach replicas
        options["runtime_env"] = {"env_vars": env}
    remote = ray.remote(fn).options(**options)
    window = window or default_window()
    pending = iter(calls)
    in_flight: list[Any] = []
    exhausted = False
    while True:
        while not exhausted and len(in_flight) < window:
            args = next(pending, None)
            if args is None:
                exhausted = True
                break
            in_flight.append(remote.remote(*args))
        if not in_flight:
            return
        ready, in_flight = ray.wait(in_flight, num_returns=1)
        for ref in ready:
            yield ray.get(ref)
