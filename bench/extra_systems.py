"""The systems that run on Ray (the users' Ray Data recipe, our job) and the optional ONNX Runtime one."""

from __future__ import annotations

import argparse
import glob
import json
import logging
import os
import time
from typing import Any

import numpy as np

from bench.corpus import model_path
from bench.systems import read_input, save_parquet_vectors


def start_ray(cpus: int) -> float:
    """Start a private local Ray with `cpus` CPUs; returns the seconds it took (not part of any measurement)."""
    import ray

    t0 = time.perf_counter()
    # address="local": never join a cluster someone else started on this machine.
    ray.init(
        address="local",
        num_cpus=cpus,
        include_dashboard=False,
        log_to_driver=False,
        logging_level=logging.WARNING,
    )
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False
    except AttributeError:
        pass
    return time.perf_counter() - t0


class STEmbedder:
    """The map_batches class users write: a SentenceTransformer per actor, encode each batch of rows."""

    def __init__(self, path: str, set_threads: int | None, info_dir: str):
        import torch
        from sentence_transformers import SentenceTransformer

        if set_threads:
            torch.set_num_threads(set_threads)
        self.model = SentenceTransformer(path, device="cpu")
        # A side note for the benchmark report only: what thread count the actor ended up with.
        info = {
            "pid": os.getpid(),
            "torch_threads": torch.get_num_threads(),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        }
        with open(os.path.join(info_dir, f"actor-{os.getpid()}.json"), "w", encoding="utf-8") as f:
            json.dump(info, f)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        emb = self.model.encode(list(batch["text"]), batch_size=32)
        return {"id": batch["id"], "embedding": emb}


def run_ray_st(args: argparse.Namespace) -> dict[str, Any]:
    """ray.data.read_parquet -> map_batches(STEmbedder, concurrency, num_cpus) -> write_parquet, timed end to end."""
    import ray

    # One logical CPU more than the actors take, or the read/write tasks could never be scheduled.
    init_s = start_ray(int(round(args.actors * args.cpus_per_actor)) + 1)
    info_dir = os.path.join(args.out, "actors")
    os.makedirs(info_dir, exist_ok=True)
    out_dir = os.path.join(args.out, "vectors")
    threads = int(args.cpus_per_actor) if args.set_threads else None
    t0 = time.perf_counter()
    ds = ray.data.read_parquet(args.input)
    ds = ds.map_batches(
        STEmbedder,
        fn_constructor_kwargs={"path": model_path(), "set_threads": threads, "info_dir": info_dir},
        compute=ray.data.ActorPoolStrategy(size=args.actors),
        num_cpus=args.cpus_per_actor,
        batch_size=args.rows_per_batch,
    )
    ds.write_parquet(out_dir)
    wall = time.perf_counter() - t0
    rows = ray.data.read_parquet(out_dir).to_pandas()
    ray.shutdown()
    wanted, _ = read_input(args.input)
    from bench.metrics import align_rows

    emb = align_rows(list(rows["id"]), np.stack(rows["embedding"].to_numpy()), wanted)
    np.save(os.path.join(args.out, "emb.npy"), emb)
    actors = [
        json.load(open(p, encoding="utf-8")) for p in sorted(glob.glob(os.path.join(info_dir, "*.json")))
    ]
    return {
        "wall_s": wall,
        "ray_init_s": init_s,
        "actors": args.actors,
        "cpus_per_actor": args.cpus_per_actor,
        "set_threads": threads,
        "rows_per_batch": args.rows_per_batch,
        "actor_info": actors,
    }


def job_spec(args: argparse.Namespace, out_dir: str) -> dict[str, Any]:
    """The job spec of our job runs: the input file, the replicas and budget from the command line."""
    spec: dict[str, Any] = {
        "model": {"name": model_path()},
        "input": {"uri": args.input, "id_column": "id"},
        "output": {"uri": out_dir},
        "compute": {
            "replicas": args.actors,
            "cpus_per_replica": int(args.cpus_per_actor),
            "batch_size": args.batch_sizes[0],
            "max_batch_tokens": args.max_batch_tokens,
            "device": "cpu",
        },
    }
    if args.chunk_size:
        spec["output"]["rows_per_file"] = args.chunk_size
    return spec


def run_our_job(args: argparse.Namespace) -> dict[str, Any]:
    """Our job (`jobs.run_job`) end to end on a Ray started beforehand: plan, actors, encode, write, commit."""
    import ray

    from jobs import run_job

    cpus = max(2, int(round(args.actors * args.cpus_per_actor)))
    init_s = start_ray(cpus)
    out_dir = os.path.join(args.out, "job")
    spec = job_spec(args, out_dir)
    t0 = time.perf_counter()
    summary = run_job(spec, overwrite=True, progress=False)
    wall = time.perf_counter() - t0
    ray.shutdown()
    parts = sorted(glob.glob(os.path.join(out_dir, "part-*.parquet")))
    if not parts:
        raise RuntimeError(f"{out_dir}: the job wrote no part-*.parquet files (summary {summary!r:.300})")
    save_parquet_vectors(parts, args)
    return {
        "wall_s": wall,
        "ray_init_s": init_s,
        "actors": args.actors,
        "cpus_per_actor": args.cpus_per_actor,
        "max_batch_tokens": args.max_batch_tokens,
        "summary": _jsonable(summary),
    }


def _jsonable(obj: Any) -> Any:
    """`obj` with anything JSON cannot hold turned into its repr."""
    try:
        json.dumps(obj)
        return obj
    except TypeError:
        if isinstance(obj, dict):
            return {str(k): _jsonable(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return [_jsonable(v) for v in obj]
        return repr(obj)


SYSTEMS = {"ray_st": run_ray_st, "our_job": run_our_job}
