"""One benchmarked system per call, run in its own subprocess: `python -m bench.systems NAME --input ... --out ...`.

Each writes `result.json` (wall seconds of the measured region, counters, notes) and `emb.npy` (vectors in
input order) into `--out`; the harness measures RSS from outside and does the comparisons.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from bench.corpus import model_path

WARMUP_TEXTS = 64


def read_input(path: str) -> tuple[list[str], list[str]]:
    """(ids, texts) of the input Parquet file."""
    t = pq.read_table(path, columns=["id", "text"])
    return t.column("id").to_pylist(), t.column("text").to_pylist()


def cpu_now() -> float:
    """CPU seconds this process (all its threads) has used so far."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def self_stats() -> dict[str, float]:
    """This process's peak RSS (bytes) and CPU seconds so far."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return {"self_peak_rss": ru.ru_maxrss * 1024, "self_cpu_s": ru.ru_utime + ru.ru_stime}


def run_st_encode(args: argparse.Namespace) -> dict[str, Any]:
    """sentence-transformers `encode` in this process, at each batch size in `--batch-sizes` (best is kept)."""
    import torch
    from sentence_transformers import SentenceTransformer

    ids, texts = read_input(args.input)
    model = SentenceTransformer(model_path(), device="cpu")
    model.encode(texts[:WARMUP_TEXTS], batch_size=32)
    sweep: dict[int, float] = {}
    cpu: dict[int, float] = {}
    emb = None
    # A sweep runs each size twice, forward then backward order, keeping the best: load drifts over a run.
    passes = [args.batch_sizes] if len(args.batch_sizes) == 1 else [args.batch_sizes, args.batch_sizes[::-1]]
    for order in passes:
        for bs in order:
            t0, c0 = time.perf_counter(), cpu_now()
            out = model.encode(texts, batch_size=bs)
            wall = time.perf_counter() - t0
            if wall < sweep.get(bs, float("inf")):
                sweep[bs], cpu[bs] = wall, cpu_now() - c0
            if emb is None or sweep[bs] <= min(sweep.values()):
                emb = out
    best = min(sweep, key=sweep.get)
    np.save(os.path.join(args.out, "emb.npy"), emb)
    return {
        "wall_s": sweep[best],
        "cpu_s": cpu[best],
        "batch_size": best,
        "sweep_s": sweep,
        "threads": torch.get_num_threads(),
    }


def run_st_pool(args: argparse.Namespace) -> dict[str, Any]:
    """sentence-transformers' multi-process pool on CPU (`start_multi_process_pool(['cpu'] * N)`), as documented."""
    from sentence_transformers import SentenceTransformer

    ids, texts = read_input(args.input)
    model = SentenceTransformer(model_path(), device="cpu")
    pool = model.start_multi_process_pool(["cpu"] * args.processes)
    try:
        model.encode(texts[:WARMUP_TEXTS], batch_size=32, pool=pool)  # children load and warm up
        t0 = time.perf_counter()
        emb = model.encode(texts, batch_size=args.batch_sizes[0], pool=pool, chunk_size=args.chunk_size)
        wall = time.perf_counter() - t0
    finally:
        model.stop_multi_process_pool(pool)
    np.save(os.path.join(args.out, "emb.npy"), emb)
    chunk = args.chunk_size or max(1, min(-(-len(texts) // args.processes // 10), 5000))
    return {
        "wall_s": wall,
        "batch_size": args.batch_sizes[0],
        "processes": args.processes,
        "chunk_size": chunk,
    }


def run_ours_encode(args: argparse.Namespace) -> dict[str, Any]:
    """Our `EmbeddingModel.encode` in this process: sentence-transformers' batches of a fixed size, or token
    batches with `--max-batch-tokens`; the transformer on `--backend` (torch, or our onnx/openvino export)."""
    import torch

    from embedder import EmbeddingModel

    ids, texts = read_input(args.input)
    model = EmbeddingModel(model_path(), device="cpu", backend=args.backend)
    kwargs: dict[str, Any] = {
        "batch_size": args.batch_sizes[0],
        "max_batch_tokens": args.max_batch_tokens,
        "batching": "tokens" if args.max_batch_tokens else "sentence-transformers",
    }
    model.encode(texts[:WARMUP_TEXTS], **kwargs)
    before = dict(model.stats)
    t0, c0 = time.perf_counter(), cpu_now()
    emb = model.encode(texts, **kwargs)
    wall, cpu = time.perf_counter() - t0, cpu_now() - c0
    np.save(os.path.join(args.out, "emb.npy"), np.asarray(emb))
    counted = {k: int(model.stats[k] - before.get(k, 0)) for k in ("texts", "tokens", "padded_tokens")}
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        **kwargs,
        "backend": args.backend,
        "counted": counted,
        "threads": torch.get_num_threads(),
    }


def run_ours_stream(args: argparse.Namespace) -> dict[str, Any]:
    """Our encode over the input streamed in row batches, vectors written out as it goes (memory test)."""
    import pyarrow as pa

    from embedder import EmbeddingModel

    model = EmbeddingModel(model_path(), device="cpu")
    model.encode(["warm up"] * 8)
    before = dict(model.stats)
    out_path = os.path.join(args.out, "vectors.parquet")
    writer = None
    t0, c0 = time.perf_counter(), cpu_now()
    for batch in pq.ParquetFile(args.input).iter_batches(
        batch_size=args.chunk_size or 1000, columns=["id", "text"]
    ):
        emb = np.asarray(
            model.encode(
                batch.column("text").to_pylist(),
                max_batch_tokens=args.max_batch_tokens,
                batch_size=args.batch_sizes[0],
            ),
            dtype=np.float32,
        )
        col = pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)), emb.shape[1])
        table = pa.table({"id": batch.column("id"), "embedding": col})
        writer = writer or pq.ParquetWriter(out_path, table.schema)
        writer.write_table(table)
    if writer is not None:
        writer.close()
    wall, cpu = time.perf_counter() - t0, cpu_now() - c0
    counted = {k: int(model.stats[k] - before.get(k, 0)) for k in ("texts", "tokens", "padded_tokens")}
    save_parquet_vectors(out_path, args)
    return {"wall_s": wall, "cpu_s": cpu, "max_batch_tokens": args.max_batch_tokens, "counted": counted}


def save_parquet_vectors(path: str, args: argparse.Namespace) -> None:
    """Read (id, embedding) rows from Parquet file(s) and save them as emb.npy in the input's order."""
    from bench.metrics import align_rows

    table = pq.read_table(path, columns=["id", "embedding"])
    emb = np.asarray(table.column("embedding").combine_chunks().flatten()).reshape(table.num_rows, -1)
    wanted, _ = read_input(args.input)
    np.save(os.path.join(args.out, "emb.npy"), align_rows(table.column("id").to_pylist(), emb, wanted))


SYSTEMS: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    "st_encode": run_st_encode,
    "st_pool": run_st_pool,
    "ours_encode": run_ours_encode,
    "ours_stream": run_ours_stream,
}


def register_extra() -> None:
    """Add the systems that live in other files (Ray recipe, our job, stage profile)."""
    from bench import extra_systems, job_overhead, paired, profile_stages

    for module in (extra_systems, job_overhead, paired, profile_stages):
        SYSTEMS.update(module.SYSTEMS)


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The child's command line."""
    p = argparse.ArgumentParser(prog="python -m bench.systems")
    p.add_argument("system")
    p.add_argument("--input", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--batch-sizes", type=lambda s: [int(x) for x in s.split(",")], default=[32])
    p.add_argument("--max-batch-tokens", type=int, default=None)
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--chunk-size", type=int, default=None)
    p.add_argument("--actors", type=int, default=1)
    p.add_argument("--cpus-per-actor", type=float, default=2)
    p.add_argument("--set-threads", action="store_true")
    p.add_argument("--rows-per-batch", type=int, default=256)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--backend", default="torch", help="ours_encode: torch, onnx or openvino")
    p.add_argument(
        "--variants", default=None, help="paired: comma-separated variants, the first is the reference"
    )
    p.add_argument("--chunks", type=int, default=8, help="paired: chunks the input is cut into")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Run one system and write its result.json."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    register_extra()
    if args.system not in SYSTEMS:
        raise SystemExit(f"unknown system {args.system!r}; valid: {', '.join(sorted(SYSTEMS))}")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    result = SYSTEMS[args.system](args)
    result.update(self_stats())
    with open(os.path.join(args.out, "result.json"), "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
