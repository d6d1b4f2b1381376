"""The sample job with chunking on vs the truncating run, paired in one process and one Ray session.

.venv/bin/python bench/chunking.py                      # examples/sample-job.yaml: truncating, chunks, 64-token chunks
.venv/bin/python bench/chunking.py --tokens 64 128 --replicas 1

Prints a Markdown table per run: documents, chunk rows, texts truncated, tokens embedded, embed seconds, documents/s
and the job's wall seconds. The truncating run goes first and last, so drift on a shared machine shows.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def cpu_name() -> str:
    """The CPU model, for the table's heading."""
    from embedder.cpu import cpu_features

    return cpu_features().name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--job", default="examples/sample-job.yaml")
    parser.add_argument("--tokens", type=int, nargs="*", default=[64], help="smaller windows to run as well")
    parser.add_argument("--replicas", type=int, default=None)
    args = parser.parse_args()

    from jobs import run_job
    from jobs.spec import JobSpec, read_yaml

    base = read_yaml(args.job)
    if args.replicas:
        base.setdefault("compute", {})["replicas"] = args.replicas
    runs: list[tuple[str, dict | None]] = [("truncating", None), ("chunks (model limit)", {"emit": "chunks"})]
    runs += [(f"chunks of {n} tokens", {"emit": "chunks", "max_tokens": n}) for n in args.tokens]
    runs += [("both, 64 tokens", {"emit": "both", "max_tokens": 64}), ("truncating again", None)]
    tmp = tempfile.mkdtemp(prefix="bench-chunking-")
    rows = []
    try:
        for k, (name, chunking) in enumerate(runs):
            d = {**base, "output": {**base["output"], "uri": os.path.join(tmp, f"out{k}")}}
            if chunking is not None:
                d["chunking"] = chunking
            s = run_job(JobSpec.from_dict(d), progress=False, keep_warm=True)
            rows.append(
                (
                    name,
                    s["rows"] - s["quarantined"],
                    s.get("chunks", "-") if chunking is None or chunking["emit"] != "documents" else "-",
                    s.get("truncated", "-"),
                    s["tokens"],
                    s["timings"]["embed"],
                    s["rows_per_s"],
                    s["timings"]["wall"],
                )
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{args.job} on {cpu_name()}, {os.cpu_count()} CPUs\n")
    print("| run | documents | chunk rows | truncated | tokens embedded | embed s | documents/s | wall s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print("| " + " | ".join(f"{v:,}" if isinstance(v, int) else str(v) for v in r) + " |")


if __name__ == "__main__":
    main()
