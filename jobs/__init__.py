"""The batch-embedding job runner: `from jobs import JobSpec, run_job, plan_job`."""

from __future__ import annotations

from typing import Any

from jobs.spec import JobSpec, SpecError

__all__ = ["JobSpec", "SpecError", "plan_job", "run_job"]


def __getattr__(name: str) -> Any:
    # Lazy: importing jobs (or jobs.retry) must not pull in Ray, pyarrow planning or torch.
    if name == "run_job":
        from jobs.run import run_job

        return run_job
    if name == "plan_job":
        from jobs.plan import plan_job

        return plan_job
    raise AttributeError(f"module 'jobs' has no attribute {name!r}")
