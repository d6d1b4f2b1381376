"""Submit a job file to a Ray cluster through the Jobs API, follow it, ask for its status; find the last good run.

Exit codes of `embedjob submit` (when it waits) and `embedjob status --job-id` mean what `embedjob run`'s do
(jobs.flags.EXIT_STATUS): 0 SUCCEEDED, 3 the run finished with quarantined rows, 2 an invalid job spec (here
or on the cluster), 1 any other FAILED, or STOPPED; and 4 still PENDING/RUNNING (status only), 5 cluster
unreachable, refused (auth) or job unknown, 130 interrupted while following (the job keeps running).

The job flags are `embedjob run`'s: the job file with them applied is validated here and uploaded as the
job's job.yaml; the URI flags are also forwarded on the cluster's command line, where the dashboard shows them.

Credentials: the job's storage credentials should come from the cluster itself (IAM role / IRSA / workload
identity, or a Kubernetes Secret in the pods' environment). `--env NAME` forwards a local variable through the
job's runtime_env env_vars, which Ray keeps in the job record: anyone who can reach the dashboard (and so can
run code on the cluster anyway) can read it there. Nothing secret goes into the entrypoint or the metadata.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import importlib.util
import os
import shlex
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from jobs.flags import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_NOT_FINISHED,
    EXIT_OK,
    EXIT_QUARANTINED,
    EXIT_STATUS,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    add_job_flags,
    job_data,
)
from jobs.nightly import RUN_STAMP
from jobs.spec import JobSpec, SpecError

TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
# `embedjob run` exits the cluster's job passes on as its own; any other failure is EXIT_FAILED.
PASSED_ON = {EXIT_USAGE: "invalid job spec", EXIT_QUARANTINED: "finished with quarantined rows"}
JOB_FILE_NAME = "job.yaml"  # the name the job file gets in the uploaded working_dir
PACKAGES = ("embedder", "jobs")
ENTRYPOINT = ("python", "-m", "jobs.cli", "run")
# Job logs are not a terminal: the JSON progress lines say it all, a redrawn bar only adds noise.
ENTRYPOINT_FLAGS = ("--no-progress",)
# `embedjob run` flags that `submit` also puts on the entrypoint when given (a scheduler changes these per run).
RUN_OVERRIDES = ("model", "input", "output", "previous")
POLL_S = 2.0
ADDRESS_VARS = ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS")


class SubmitError(RuntimeError):
    """Submission cannot go ahead (bad flag, missing variable, unreadable token file, unreachable cluster)."""


def auth_token(environ: Mapping[str, str] = os.environ) -> str | None:
    """The Ray auth token as Ray itself finds it: RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, then ~/.ray/auth_token."""
    if environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
        return None
    token = environ.get("RAY_AUTH_TOKEN", "").strip()
    if token:
        return token
    path = environ.get("RAY_AUTH_TOKEN_PATH")
    if path:
        # Like Ray: a named token file that is missing or empty is a misconfiguration, not "no auth".
        try:
            with open(path, encoding="utf-8") as f:
                token = f.read().strip()
        except OSError as e:
            raise SubmitError(
                f"RAY_AUTH_TOKEN_PATH={path!r}: cannot read the token file ({e.strerror})"
            ) from None
        if not token:
            raise SubmitError(f"RAY_AUTH_TOKEN_PATH={path!r}: the token file is empty")
        return token
    default = os.path.join(environ.get("HOME") or os.path.expanduser("~"), ".ray", "auth_token")
    if os.path.isfile(default):
        with open(default, encoding="utf-8") as f:
            return f.read().strip() or None
    return None


def client_errors() -> tuple[type[BaseException], ...]:
    """What the Jobs API client raises for an unreachable cluster, a refused token or an unknown job."""
    import requests
    from ray.exceptions import RayError

    return (SubmitError, ConnectionError, RuntimeError, RayError, requests.RequestException)


def make_client(address: str | None, environ: Mapping[str, str] = os.environ) -> Any:
    """A JobSubmissionClient for `address` (None: RAY_ADDRESS), sending the auth token as a bearer header."""
    from ray.job_submission import JobSubmissionClient

    token = auth_token(environ)
    # The client adds Ray's own header only when this process runs in token mode; ours works either way.
    headers = {"Authorization": f"Bearer {token}"} if token else None
    # Ray lets RAY_API_SERVER_ADDRESS / RAY_ADDRESS override an explicit address; here the flag wins.
    shadowing = {k: os.environ.pop(k) for k in ADDRESS_VARS if address and k in os.environ}
    try:
        return JobSubmissionClient(address, headers=headers)
    except (ConnectionError, ValueError) as e:
        raise SubmitError(f"--address {address!r}: {e}") from None
    finally:
        os.environ.update(shadowing)


def package_dirs() -> list[str]:
    """The local folders of the packages the job runs (embedder/, jobs/), found without importing them."""
    dirs = []
    for name in PACKAGES:
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            raise SubmitError(
                f"package {name!r} is not importable here; install the project (pip install -e .)"
            )
        dirs.append(list(spec.submodule_search_locations)[0])
    return dirs


def forwarded_env(names: list[str], environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The values of the variables named by --env, taken from the local environment."""
    missing = [n for n in names if n not in environ]
    if missing:
        raise SubmitError(f"--env {', '.join(missing)}: not set in the local environment")
    return {n: environ[n] for n in names}


def build_runtime_env(
    staging_dir: str, env_vars: dict[str, str], *, upload_package: bool = True
) -> dict[str, Any]:
    """The job's runtime_env: the staged job file as working_dir, our packages as py_modules, forwarded env."""
    runtime_env: dict[str, Any] = {"working_dir": staging_dir, "excludes": ["__pycache__", "*.pyc"]}
    if upload_package:
        runtime_env["py_modules"] = package_dirs()
    if env_vars:
        runtime_env["env_vars"] = dict(env_vars)
    return runtime_env


def build_entrypoint(overrides: Mapping[str, str | None], *, overwrite: bool = False) -> str:
    """The shell command the cluster runs: `embedjob run job.yaml` plus the forwarded overrides."""
    argv = [*ENTRYPOINT, JOB_FILE_NAME]
    for name in RUN_OVERRIDES:
        value = overrides.get(name)
        if value is None:
            continue
        # The entrypoint is stored in the job record and shown by the dashboard: no secrets in URIs.
        if urlsplit(value).password:
            raise SubmitError(
                f"--{name} {urlsplit(value).scheme}://…: a password in the URI would be stored "
                "in the job record; pass credentials through the cluster or --env"
            )
        argv += [f"--{name}", value]
    if overwrite:
        argv.append("--overwrite")
    return shlex.join([*argv, *ENTRYPOINT_FLAGS])


def check_locations(data: Mapping[str, Any]) -> None:
    """Refuse relative local paths: the job runs in a fresh folder on the cluster, where they mean nothing."""
    sections = {
        name: data.get(name) if isinstance(data.get(name), dict) else {} for name in ("input", "output")
    }
    where = {
        "input.uri": sections["input"].get("uri"),
        "input.previous": sections["input"].get("previous"),
        "output.uri": sections["output"].get("uri"),
        "previous": data.get("previous"),
    }
    for field, value in where.items():
        if isinstance(value, str) and value and "://" not in value and not os.path.isabs(value):
            raise SubmitError(
                f"{field}: {value!r} is a relative path; on the cluster the job runs in a temporary folder, "
                "so give a URI (s3://...) or an absolute path the cluster's nodes share"
            )


def submission_id(job_file: str | None, now: dt.datetime | None = None) -> str:
    """A readable, unique job id: embedjob-<job file stem>-<UTC time>-<random>."""
    stem = os.path.splitext(os.path.basename(job_file or "job"))[0]
    safe = "".join(c if c.isalnum() or c in "-_" else "-" for c in stem)[:40] or "job"
    stamp = (now or dt.datetime.now(dt.timezone.utc)).strftime(RUN_STAMP).lower()
    return f"embedjob-{safe}-{stamp}-{uuid.uuid4().hex[:6]}"


def submit(args: argparse.Namespace, environ: Mapping[str, str] = os.environ) -> int:
    """`embedjob submit`: stage, submit, print the id, then (unless --no-wait) stream logs and return the outcome."""
    import yaml

    try:
        data = job_data(args)
        JobSpec.from_dict(data)
    except SpecError as e:
        print(f"embedjob submit: invalid job: {e}", file=sys.stderr)
        return EXIT_USAGE
    try:
        env_vars = forwarded_env(args.env or [], environ)
        check_locations(data)
        entrypoint = build_entrypoint({n: getattr(args, n) for n in RUN_OVERRIDES}, overwrite=args.overwrite)
    except SubmitError as e:
        print(f"embedjob submit: {e}", file=sys.stderr)
        return EXIT_USAGE
    try:
        client = make_client(args.address, environ)
        job_id = args.job_id or submission_id(args.job)
        staging = tempfile.mkdtemp(prefix="embedjob-submit-")
        try:
            with open(os.path.join(staging, JOB_FILE_NAME), "w", encoding="utf-8") as f:
                yaml.safe_dump(data, f, sort_keys=False)
            runtime_env = build_runtime_env(staging, env_vars, upload_package=not args.no_upload_package)
            if env_vars:
                print(
                    f"embedjob submit: forwarding {', '.join(sorted(env_vars))} through runtime_env env_vars; "
                    "their values are readable in the job record by anyone with dashboard access",
                    file=sys.stderr,
                )
            client.submit_job(
                entrypoint=entrypoint,
                runtime_env=runtime_env,
                submission_id=job_id,
                metadata={"embedjob.job_file": os.path.basename(args.job)} if args.job else None,
                entrypoint_num_cpus=args.entrypoint_num_cpus,
            )
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    except client_errors() as e:
        print(f"embedjob submit: {e}", file=sys.stderr)
        return EXIT_UNREACHABLE
    print(job_id, flush=True)
    if args.no_wait:
        return EXIT_OK
    return follow(client, job_id)


def exit_code(status: str, driver_exit_code: int | None) -> int:
    """The exit code of a job's Ray status: `embedjob run`'s own where it means the same here."""
    if status == "SUCCEEDED":
        return EXIT_OK
    if status == "FAILED" and driver_exit_code in PASSED_ON:
        return driver_exit_code
    return EXIT_FAILED if status in TERMINAL else EXIT_NOT_FINISHED


def outcome(job_id: str, status: str, info: Any) -> tuple[str, int]:
    """A job's final line (status, the first line of Ray's reason, what the exit code means) and exit code."""
    code = exit_code(status, getattr(info, "driver_exit_code", None))
    # Ray's failure message goes on with the last logs; its first line is the reason.
    reason = (info.message or "").strip().splitlines()[:1] if status != "SUCCEEDED" else []
    meaning = [f"exit {code}: {PASSED_ON[code]}"] if status == "FAILED" and code in PASSED_ON else []
    return f"job {job_id}: {status}" + "".join(f" ({r})" for r in [*reason, *meaning]), code


def follow(client: Any, job_id: str, out: Any = None) -> int:
    """Stream the job's logs to `out` until it ends; return the exit code of its final status."""
    out = out or sys.stdout

    async def tail() -> None:
        async for chunk in client.tail_job_logs(job_id):
            out.write(chunk)
            out.flush()

    try:
        try:
            asyncio.run(tail())
        except (RuntimeError, OSError) as e:
            # A dropped log stream does not end the job: keep polling its status.
            print(
                f"embedjob submit: log stream for {job_id} broke ({e}); polling its status", file=sys.stderr
            )
        status = wait_terminal(client, job_id)
        info = client.get_job_info(job_id)
    except client_errors() as e:
        print(f"embedjob submit: lost the cluster while following {job_id}: {e}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except KeyboardInterrupt:
        print(
            f"\nembedjob submit: stopped following; job {job_id} keeps running "
            f"(`embedjob status --job-id {job_id}`, `ray job stop {job_id}`)",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    line, code = outcome(job_id, status, info)
    print(line, file=sys.stderr)
    return code


def wait_terminal(client: Any, job_id: str, poll_s: float = POLL_S) -> str:
    """Poll until the job is SUCCEEDED, FAILED or STOPPED (the log stream can end a moment earlier)."""
    while True:
        status = str(client.get_job_status(job_id))
        if status in TERMINAL:
            return status
        time.sleep(poll_s)


def job_status(job_id: str, address: str | None, environ: Mapping[str, str] = os.environ) -> int:
    """`embedjob status --job-id ID`: print the job's status (and message) and return its exit code."""
    try:
        info = make_client(address, environ).get_job_info(job_id)
    except client_errors() as e:
        print(f"embedjob status: job {job_id!r} at {address!r}: {e}", file=sys.stderr)
        return EXIT_UNREACHABLE
    status = str(info.status)
    code = exit_code(status, getattr(info, "driver_exit_code", None))
    # Ray's failure message goes on with the last logs; its first line is the reason.
    reason = (info.message or "").strip().splitlines()[:1]
    print("\t".join([job_id, status, *reason]))
    return code


def add_commands(subparsers: Any) -> None:
    """Register `embedjob submit` on the CLI's subparsers."""
    p = subparsers.add_parser(
        "submit",
        help="submit a job to a Ray cluster (Ray Jobs API) and follow it",
        description="Validate the job (the job file with `embedjob run`'s flags applied), upload it\n"
        "and the embedder/jobs packages, run `embedjob run` on the cluster, stream its logs\n"
        "and exit with its outcome. docs/job-spec.md lists every field of the job file.",
        epilog=EXIT_STATUS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_job_flags(p)
    p.add_argument(
        "--address",
        default=None,
        help="the dashboard address, e.g. http://HEAD:8265 (default: $RAY_ADDRESS); the auth token "
        "comes from $RAY_AUTH_TOKEN, $RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token",
    )
    p.add_argument(
        "--env",
        action="append",
        metavar="NAME",
        help="forward this local environment variable to the job (repeatable); its value is "
        "visible in the job record, so prefer the cluster's own credentials",
    )
    p.add_argument("--no-wait", action="store_true", help="print the job id and return at once")
    p.add_argument(
        "--job-id", default=None, help="the submission id (default: embedjob-<file>-<time>-<rand>)"
    )
    p.add_argument(
        "--no-upload-package",
        action="store_true",
        help="run the embedder/jobs installed in the cluster image instead of uploading this checkout's",
    )
    p.add_argument(
        "--entrypoint-num-cpus",
        type=float,
        default=None,
        metavar="N",
        help="CPUs to reserve for the driver (default: none, so it may run on a busy head)",
    )
    p.add_argument("--overwrite", action="store_true", help="pass --overwrite to `embedjob run`")
    p.set_defaults(func=submit)
