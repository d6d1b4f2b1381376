"""Paired: our job end to end against the same work done by one plain Python process, in alternating rounds.

The plain process is what a user would write without a runner: start Python, import, load the model, read the
Parquet file, `encode`, write (id, embedding) Parquet. The job does the same through `run_job` on a Ray started
beforehand (as on a cluster), with a fresh replica each round. Both are timed from outside, back to back, so
both see the same load; the median of the per-round ratios is the figure.

    python -m bench.job_overhead plain INPUT OUT [--max-batch-tokens N]   # one plain run; prints its timings
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

from bench.corpus import model_path

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def plain_run(input_path: str, out_path: str, max_batch_tokens: int | None) -> dict[str, float]:
    """Import, load, read, encode, write in this process; seconds of each step."""
    t0 = time.perf_counter()
    import pyarrow as pa
    import pyarrow.parquet as pq

    from embedder import EmbeddingModel

    t_import = time.perf_counter()
    model = EmbeddingModel(model_path(), device="cpu")
    t_load = time.perf_counter()
    table = pq.read_table(input_path, columns=["id", "text"])
    texts = table.column("text").to_pylist()
    t_read = time.perf_counter()
    emb = model.encode(texts, batching="tokens", max_batch_tokens=max_batch_tokens)
    t_encode = time.perf_counter()
    vectors = pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)), emb.shape[1])
    pq.write_table(pa.table({"id": table.column("id"), "embedding": vectors}), out_path)
    t_write = time.perf_counter()
    return {
        "import_s": t_import - t0,
        "load_s": t_load - t_import,
        "read_s": t_read - t_load,
        "encode_s": t_encode - t_read,
        "write_s": t_write - t_encode,
    }


def _plain_subprocess(args: argparse.Namespace, out_path: str) -> tuple[float, dict[str, float]]:
    cmd = [sys.executable, "-m", "bench.job_overhead", "plain", args.input, out_path]
    if args.max_batch_tokens:
        cmd += ["--max-batch-tokens", str(args.max_batch_tokens)]
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"plain run failed (exit {done.returncode}): {done.stderr[-1500:]}")
    return wall, json.loads(done.stdout.strip().splitlines()[-1])


def run_job_overhead(args: argparse.Namespace) -> dict[str, Any]:
    """`--chunks` rounds of (plain process, job), order alternating; per-round and median ratios job / plain."""
    from bench.extra_systems import job_spec, start_ray
    from bench.systems import save_parquet_vectors
    from jobs import run_job

    init_s = start_ray(max(2, int(round(args.actors * args.cpus_per_actor))))
    spec = job_spec(args, os.path.join(args.out, "job"))
    rounds: list[dict[str, Any]] = []
    for r in range(max(1, args.chunks)):
        times: dict[str, Any] = {}
        for which in ("plain", "job") if r % 2 == 0 else ("job", "plain"):
            if which == "plain":
                times["plain_s"], times["plain_steps"] = _plain_subprocess(
                    args, os.path.join(args.out, "plain.parquet")
                )
            else:
                t0 = time.perf_counter()
                summary = run_job(spec, overwrite=True, progress=False)
                times["job_s"] = time.perf_counter() - t0
                # From the replica being ready to the last commit: read, check, encode, write, commit.
                times["job_work_s"] = float(summary["seconds"])
        times["ratio"] = times["job_s"] / times["plain_s"]
        times["ratio_to_encode"] = times["job_s"] / times["plain_steps"]["encode_s"]
        times["work_ratio"] = times["job_work_s"] / times["plain_steps"]["encode_s"]
        rounds.append(times)
        print(f"[job_overhead] round {r}: {json.dumps(times)}", file=sys.stderr, flush=True)
    import ray

    ray.shutdown()
    save_parquet_vectors(sorted(glob.glob(os.path.join(args.out, "job", "part-*.parquet"))), args)
    return {
        "wall_s": statistics.median(t["job_s"] for t in rounds),
        "plain_s": statistics.median(t["plain_s"] for t in rounds),
        "encode_s": statistics.median(t["plain_steps"]["encode_s"] for t in rounds),
        "ratio_median": statistics.median(t["ratio"] for t in rounds),
        "ratio_to_encode_median": statistics.median(t["ratio_to_encode"] for t in rounds),
        "work_ratio_median": statistics.median(t["work_ratio"] for t in rounds),
        "ray_init_s": init_s,
        "rounds": rounds,
        "max_batch_tokens": args.max_batch_tokens,
    }


SYSTEMS = {"job_overhead": run_job_overhead}


if __name__ == "__main__":
    p = argparse.ArgumentParser(prog="python -m bench.job_overhead")
    p.add_argument("mode", choices=("plain",))
    p.add_argument("input")
    p.add_argument("out")
    p.add_argument("--max-batch-tokens", type=int, default=None)
    a = p.parse_args()
    print(json.dumps(plain_run(a.input, a.out, a.max_batch_tokens)))
