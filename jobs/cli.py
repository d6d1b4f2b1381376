"""`embedjob run | plan | status | search | submit`: a YAML job file, with common fields as flags (flags win)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from jobs.flags import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_QUARANTINED,
    EXIT_STATUS,
    EXIT_USAGE,
    add_job_flags,
    load_spec,
)
from jobs.redact import register_secrets_in
from jobs.spec import SpecError

SHOWN_SHARDS = 50


def version_text() -> str:
    """`embedjob --version`: this package's version and the torch, Ray and Python it runs on."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    def installed(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    return (
        f"embedjob {installed('embedjob')} (torch {installed('torch')}, ray {installed('ray')}, "
        f"python {platform.python_version()})"
    )


class _VersionAction(argparse.Action):
    """--version, looked up only when asked: importlib.metadata takes tens of ms, every command would pay."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> None:
        print(version_text())
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `embedjob`."""
    parser = argparse.ArgumentParser(
        prog="embedjob",
        description="Batch-embed Parquet or HF datasets on Ray.",
        epilog=EXIT_STATUS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action=_VersionAction, help="print the versions of embedjob, torch, Ray")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser(
        "run",
        help="run a job (resumes into an existing output of the same job)",
        description="Run a job on a local Ray or a cluster's; resumes into an existing output of the\n"
        "same job. docs/job-spec.md lists every field of the job file.",
        epilog=EXIT_STATUS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_job_flags(run)
    run.add_argument(
        "--overwrite", action="store_true", help="delete whatever the output holds and start again"
    )
    run.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    run.add_argument("--log-file", help="write the JSON log lines here instead of stderr (default: stderr)")
    run.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress bar: one JSON line per event on stderr instead",
    )
    plan = sub.add_parser(
        "plan",
        help="list the input, validate it and print the shards and estimates",
        description="List the input, validate it and print the shards and estimates; writes nothing.\n"
        "docs/job-spec.md lists every field of the job file.",
        epilog=EXIT_STATUS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_job_flags(plan)
    plan.add_argument(
        "--calibrate",
        action="store_true",
        help="time the model, loaded as a replica would, on a sample of the input",
    )
    plan.add_argument(
        "--check",
        action="store_true",
        help="also run the job's repeated-id pass (a local Ray) and load the model (implies --calibrate)",
    )
    plan.add_argument("--json", action="store_true", help="print the whole plan as JSON")
    plan.add_argument(
        "--all", action="store_true", help=f"list every shard (default: the first {SHOWN_SHARDS})"
    )
    status = sub.add_parser(
        "status", help="an output's progress from its manifest (OUTPUT_URI), or a submitted job's (--job-id)"
    )
    status.add_argument("output_uri", nargs="?", help="output URI to report committed shards of")
    status.add_argument("--output", help="same as OUTPUT_URI")
    status.add_argument("--job-id", help="a job id `embedjob submit` printed: report that job's Ray status")
    status.add_argument(
        "--address", help="with --job-id: the dashboard address, e.g. http://HEAD:8265 (default: RAY_ADDRESS)"
    )
    status.add_argument("--json", action="store_true", help="print the progress as JSON")
    status.add_argument(
        "--storage-options",
        help="the output's fsspec storage options as YAML, e.g. '{key: ..., secret: ...}' "
        "(default: credentials from the environment)",
    )
    search = sub.add_parser(
        "search", help="embed a query with the job's model and print the nearest rows of its output"
    )
    search.add_argument("output_uri", help="a job's output (Parquet folder or .lance dataset)")
    search.add_argument("query", help="the query text")
    search.add_argument("-k", type=int, default=10, help="how many rows (default: 10)")
    search.add_argument("--json", action="store_true", help="print the hits as JSON")
    search.add_argument(
        "--storage-options",
        help="the output's fsspec storage options as YAML (default: credentials from the environment)",
    )
    try:
        from jobs import submit
    except ImportError:
        submit = None
    if submit is not None:
        submit.add_commands(sub)
    return parser


def cmd_run(args: argparse.Namespace) -> int:
    from jobs.run import print_summary, run_job

    spec = load_spec(args)
    summary = run_job(
        spec,
        overwrite=args.overwrite,
        address=args.address,
        progress="json" if args.no_progress else True,
        log_file=args.log_file,
    )
    print_summary(summary)
    # Finished, but some rows were quarantined (see OUT/_errors/): scripts can tell that from a clean run.
    return EXIT_QUARANTINED if summary.get("total", summary).get("quarantined") else EXIT_OK


def cmd_plan(args: argparse.Namespace) -> int:
    from jobs.estimate import calibrate, check_ids
    from jobs.plan import describe_plan, plan_job

    spec = load_spec(args)
    plan = plan_job(spec)
    info = describe_plan(spec, plan)
    if args.check:
        info["check"] = check_ids(spec, plan)
    if args.calibrate or args.check:
        info["calibration"] = calibrate(spec, plan)
    if args.json:
        print(json.dumps({**info, "shards": [s.to_dict() for s in plan.shards]}, indent=2))
        return 0
    shown = plan.shards if args.all else plan.shards[:SHOWN_SHARDS]
    for s in shown:
        print(f"{s.index:5d}  {s.shard_id}  {s.source}  rows {s.start}-{s.stop} ({s.rows})")
    if len(shown) < len(plan.shards):
        print(f"  ... {len(plan.shards) - len(shown)} more shards (--all lists them)")
    print(f"{info['shards']} shards, {info['rows']:,} rows in {info['files']} file(s)")
    print("checked: every file opens, its schema has the text (and id, passthrough) columns")
    if "check" in info:
        c = info["check"]
        ids = c["ids"] if isinstance(c["ids"], str) else f"{c['ids']:,} ids, {c['repeated_ids']:,} repeated"
        print(f"checked: ids: {ids}; the model loads")
    else:
        print("not checked: repeated ids, the model (--check runs both, as the job would)")
    cal = info.get("calibration")
    if cal is None:
        print(
            f"~{info['est_tokens']:,} tokens (a guess: {info['avg_chars']} chars/row / 4; --calibrate measures)"
        )
        return 0
    print(
        f"model: {cal['dimension']} dims, {cal['tokens_per_row']} tokens/row on {cal['sample_rows']} sampled rows "
        f"-> ~{cal['est_tokens']:,} tokens"
    )
    print(
        f"one replica ({cal['threads_per_replica']} thread(s)): {cal['replica_rows_per_s']:,.1f} rows/s, "
        f"{cal['replica_tokens_per_s']:,.0f} tokens/s; here {cal['replicas_here']} replica(s): "
        f"~{cal['est_seconds_here']:,.0f} s (a cluster: divide by its replicas)"
    )
    if cal.get("chunking"):
        ch = cal["chunking"]
        print(f"chunking: {ch['per_row']} windows/row on the sample -> ~{ch['est_chunks']:,} chunks")
    elif cal.get("truncated_share"):
        print(
            f"{100 * cal['truncated_share']:.1f}% of the sampled texts are longer than the model's "
            f"{cal['max_seq_length']} tokens: ~{cal['est_truncated_rows']:,} of {info['rows']:,} rows will be "
            f"truncated (their vectors see only the first {cal['max_seq_length']} tokens); --chunk-tokens "
            f"{cal['max_seq_length']} splits them into windows instead"
        )
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    if args.job_id:
        try:
            from jobs import submit
        except ImportError:
            print("embedjob status --job-id: jobs.submit is not available", file=sys.stderr)
            return 2
        return submit.job_status(args.job_id, args.address)
    uri = args.output_uri or args.output
    if not uri:
        print("embedjob status: give OUTPUT_URI, or --job-id ID [--address A]", file=sys.stderr)
        return 2
    from jobs.progress import output_progress
    from jobs.sinks import metadata_store

    progress = output_progress(metadata_store(uri, _storage_options(args)))
    if progress is None:
        print(
            f"embedjob status: {uri}: no _plan.parquet: not an embedjob output, or not started",
            file=sys.stderr,
        )
        return 1
    if args.json:
        print(json.dumps(progress, indent=2))
    else:
        print(format_status(progress))
    return 0


def _storage_options(args: argparse.Namespace) -> dict | None:
    """--storage-options parsed as YAML (a mapping), or None."""
    import yaml

    if not getattr(args, "storage_options", None):
        return None
    options = yaml.safe_load(args.storage_options)
    if not isinstance(options, dict):
        raise SpecError(f"--storage-options: expected a YAML mapping, got {type(options).__name__}")
    register_secrets_in({"storage_options": options})
    return options


def cmd_search(args: argparse.Namespace) -> int:
    from jobs.search import SearchError, search

    if args.k < 1:
        print(f"embedjob search: -k must be >= 1, got {args.k}", file=sys.stderr)
        return 2
    try:
        hits = search(args.output_uri, args.query, args.k, _storage_options(args))
    except SearchError as e:
        print(f"embedjob {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(hits))
    else:
        for h in hits:
            window = (
                f"  chunk {h['chunk']} [{h['char_start']}:{h['char_end']}]"
                if h.get("chunk") is not None
                else ""
            )
            print(f"{h['rank']:>3}  {h['score']:.4f}  {h['id']}{window}")
    return 0


def format_status(p: dict) -> str:
    """One human-readable paragraph of an output's progress."""
    state = (
        "complete"
        if p["complete"]
        else ("running" if p.get("running") else "stopped before the end (rerun to resume)")
    )
    m = p.get("model") or {}
    lines = [
        f"{p['output']}: {state}",
        f"  model {m.get('name')} ({m.get('dimension')} dims, {m.get('precision')}"
        f"{', normalized' if m.get('normalize') else ''})",
        f"  shards {p['shards_committed']:,} of {p['shards_total']:,} committed; "
        f"rows {p['rows_committed']:,} of {p['rows_total']:,} ({p['percent']:.1f}%)",
    ]
    if p["rows_per_s"]:
        eta = f", ETA {p['eta_s']:.0f} s at that rate" if p["eta_s"] else ""
        lines.append(f"  rate {p['rows_per_s']:,.1f} rows/s over the committed shards{eta}")
    if p["quarantined"]:
        lines.append(f"  quarantined rows {p['quarantined']:,} (see .embedjob/_errors/)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `embedjob` console command; returns the exit status (flags.EXIT_STATUS)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version (0) or bad usage (2): returned like every other status
        return e.code if isinstance(e.code, int) else EXIT_OK
    handlers = {"run": cmd_run, "plan": cmd_plan, "status": cmd_status, "search": cmd_search}
    try:
        if args.command in handlers:
            return handlers[args.command](args)
        if hasattr(args, "func"):
            return args.func(args) or EXIT_OK
        parser.error(f"unknown command {args.command!r}")
    except SpecError as e:
        print(f"embedjob: invalid job: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("embedjob: interrupted; rerun the same command to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:
        from jobs.estimate import ModelLoadError
        from jobs.keypass import KeyPassError
        from jobs.manifest import OutputConflict
        from jobs.plan import PlanError
        from jobs.redact import redact_text
        from jobs.retry import StorageError
        from jobs.run import JobError

        if isinstance(e, (PlanError, OutputConflict, JobError, StorageError, KeyPassError, ModelLoadError)):
            print(f"embedjob: {type(e).__name__}: {redact_text(str(e))}", file=sys.stderr)
            return EXIT_FAILED
        raise
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
