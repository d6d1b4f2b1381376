"""The nightly schedule: template tonight's RayJob with a fresh output folder and --previous the last good run.

`python -m jobs.nightly nightly-rayjob --template rayjob.yaml --prefix s3://vectors/nightly` prints the RayJob
(YAML) the nightly CronJob creates; see deploy/kuberay/nightly.yaml. A prefix ending in `.lance` is one live
Lance table that every night updates in place (`--output` and `--previous` both the table).
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import os
import shlex
import sys
from typing import Any

from jobs.manifest import META_DIR

RUN_STAMP = "%Y%m%dT%H%M%SZ"  # nightly run folder names: lexical order is time order


class NightlyError(ValueError):
    """The RayJob template cannot be used for a nightly run; names the field."""


def latest_successful_run(prefix_uri: str, storage_options: dict | None = None) -> str | None:
    """The newest run under `prefix_uri` (by name: runs are named by UTC time) that has a _SUCCESS marker."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(prefix_uri, **(storage_options or {}))
    fs.invalidate_cache(root)
    try:
        entries = fs.ls(root, detail=True)
    except FileNotFoundError:
        return None
    names = sorted(os.path.basename(e["name"].rstrip("/")) for e in entries if e["type"] == "directory")
    for name in reversed(names):
        run = f"{root.rstrip('/')}/{name}"
        if fs.exists(f"{run}/{META_DIR}/_SUCCESS") or fs.exists(f"{run}/_SUCCESS"):  # or written before 0.2
            return f"{prefix_uri.rstrip('/')}/{name}"
    return None


def is_live_table(prefix_uri: str) -> bool:
    """Whether the nightly output is one Lance table updated in place."""
    return prefix_uri.rstrip("/").endswith(".lance")


def nightly_rayjob(template: dict[str, Any], prefix_uri: str, now: dt.datetime, previous: str | None) -> dict:
    """The RayJob for tonight's run: a fresh output folder under `prefix_uri`, `--previous` the last good run
    (for a `.lance` prefix: the table itself, updated in place; `previous` None rebuilds it with --overwrite)."""
    doc = copy.deepcopy(template)
    stamp = now.astimezone(dt.timezone.utc).strftime(RUN_STAMP)
    try:
        base_name = doc["metadata"]["name"]
        argv = shlex.split(doc["spec"]["entrypoint"])
    except (KeyError, TypeError):
        raise NightlyError("template: needs metadata.name and spec.entrypoint (a RayJob)") from None
    for flag in ("--output", "--previous", "--overwrite"):
        if any(a == flag or a.startswith(f"{flag}=") for a in argv):
            raise NightlyError(
                f"template spec.entrypoint: {flag} is set per run; remove it from the template"
            )
    if is_live_table(prefix_uri):
        argv += ["--output", prefix_uri, *(["--previous", prefix_uri] if previous else ["--overwrite"])]
    else:
        argv += ["--output", f"{prefix_uri.rstrip('/')}/{stamp}"]
        if previous:
            argv += ["--previous", previous]
    doc["spec"]["entrypoint"] = shlex.join(argv)
    # RayJob names become pod/label values: at most 63 lowercase characters.
    doc["metadata"]["name"] = f"{base_name[: 63 - len(stamp) - 1]}-{stamp.lower()}"
    doc["metadata"].setdefault("labels", {})["embedjob/run"] = stamp.lower()
    return doc


def build_nightly_parser() -> argparse.ArgumentParser:
    """The parser of `python -m jobs.nightly` (what the nightly CronJob runs)."""
    parser = argparse.ArgumentParser(prog="python -m jobs.nightly")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("nightly-rayjob", help="template the nightly RayJob with the last successful run")
    p.add_argument(
        "--template", required=True, help="a RayJob YAML whose entrypoint is `embedjob run JOB.yaml`"
    )
    p.add_argument("--prefix", required=True, help="the folder that holds one sub-folder per nightly run")
    p.add_argument("--full", action="store_true", help="ignore earlier runs (no --previous)")
    p.add_argument("--now", default=None, help="the run time, ISO 8601 (default: now, UTC)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """`python -m jobs.nightly nightly-rayjob`: print tonight's RayJob (YAML) for `kubectl create -f`."""
    import yaml

    args = build_nightly_parser().parse_args(argv)
    with open(args.template, encoding="utf-8") as f:
        template = yaml.safe_load(f)
    now = dt.datetime.fromisoformat(args.now) if args.now else dt.datetime.now(dt.timezone.utc)
    if now.tzinfo is None:
        now = now.replace(tzinfo=dt.timezone.utc)
    if is_live_table(args.prefix):
        previous = None if args.full else args.prefix
    else:
        previous = None if args.full else latest_successful_run(args.prefix)
    print(f"previous successful run: {previous or 'none (full run)'}", file=sys.stderr)
    try:
        doc = nightly_rayjob(template, args.prefix, now, previous)
    except NightlyError as e:
        print(f"python -m jobs.nightly: {args.template}: {e}", file=sys.stderr)
        return 2
    yaml.safe_dump(doc, sys.stdout, sort_keys=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
