"""A job with a static (model2vec-style) model against sentence-transformers' encode of the same model.

    .venv/bin/python -m bench.static_job [--rows 100000] [--rounds 3] [--configs 1x2,2x1]

The model: a StaticEmbedding over MiniLM's WordPiece tokenizer with random 256-d vectors (as in
bench/encode_defaults.py), saved as a sentence-transformers folder that both libraries load. The input: `--rows`
texts of sample/corpus.parquet, repeated with each copy's words rotated, in one Parquet file. Each round runs
sentence-transformers' `encode(batch_size=32)` in this process, then `embedjob run` on a local Ray (started once,
outside the timings) for every replicas x CPUs config. Rows: texts/s of the embed stage (the replicas reading,
hashing, encoding and committing shards) and of the whole run (wall: plan, actors, model load, finish), each as a
ratio to sentence-transformers' encode in the same round, and the job's vectors against sentence-transformers'.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from bench.corpus import model_path
from bench.encode_defaults import STATIC_DIM, STATIC_MAX_LENGTH, varied_texts
from bench.report import machine_description, markdown_table

HEADERS = ("system", "texts/s (median)", "× ST encode (per round: median, min–max)", "max abs diff vs ST")


def static_folder(root: str) -> str:
    """Save a StaticEmbedding model (MiniLM's tokenizer, random 256-d vectors, seed 0) as a folder; its path."""
    import torch
    from tokenizers import Tokenizer

    from embedder import EmbeddingModel
    from embedder.modules.static_embedding import StaticEmbedding

    tok = Tokenizer.from_file(os.path.join(model_path(), "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(STATIC_MAX_LENGTH)
    weights = torch.randn(tok.get_vocab_size(), STATIC_DIM, generator=torch.Generator().manual_seed(0))
    folder = os.path.join(root, "static-model")
    EmbeddingModel(modules=[StaticEmbedding(tok, embedding_weights=weights)], device="cpu").save_pretrained(
        folder
    )
    return folder


def run_once(model: str, inp: str, out: str, replicas: int, cpus: int, rows_per_file: int) -> dict:
    """One `embedjob run` (Ray already up): seconds of the embed stage and of the whole run."""
    from jobs import run_job

    spec = {
        "model": {"name": model},
        "input": {"uri": inp, "id_column": "id", "text_column": "text"},
        "output": {"uri": out, "rows_per_file": rows_per_file},
        "compute": {"replicas": replicas, "cpus_per_replica": cpus},
    }
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    summary = run_job(spec, overwrite=True, progress=False, log_file=out + ".log")
    return {"embed": summary["timings"]["embed"], "wall": time.perf_counter() - t0}


def job_vectors(out: str, n: int) -> np.ndarray:
    """The job's vectors in input order (ids are the row numbers)."""
    import pyarrow.dataset as pads

    table = pads.dataset(out).to_table(columns=["id", "embedding"])
    col = table.column("embedding").combine_chunks()
    vecs = col.flatten().to_numpy(zero_copy_only=False).reshape(len(col), col.type.list_size)
    order = np.argsort(np.array([int(i) for i in table.column("id").to_pylist()]))
    assert len(order) == n, f"the job wrote {len(order)} rows for {n} inputs"
    return vecs[order]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--configs", default="1x2,2x1", help="replicas x CPUs per replica, comma separated")
    parser.add_argument("--rows-per-file", type=int, default=10_000)
    args = parser.parse_args(argv)

    import ray
    import torch
    from sentence_transformers import SentenceTransformer

    cpus = os.cpu_count() or 1
    torch.set_num_threads(cpus)
    work = tempfile.mkdtemp(prefix="bench_static_job_")
    try:
        folder = static_folder(work)
        texts = varied_texts(args.rows)
        inp = os.path.join(work, "input.parquet")
        ids = pa.array([str(i) for i in range(len(texts))])
        pq.write_table(pa.table({"id": ids, "text": texts}), inp, row_group_size=args.rows_per_file)
        st = SentenceTransformer(folder, device="cpu")
        st.encode(texts[:64], batch_size=32)
        ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
        seconds: dict[str, list[float]] = {}
        ratios: dict[str, list[float]] = {}
        diffs: dict[str, float] = {}
        st_name = "sentence-transformers encode(batch_size=32), in process"
        for _ in range(args.rounds):
            t0 = time.perf_counter()
            reference = st.encode(texts, batch_size=32)
            st_s = time.perf_counter() - t0
            seconds.setdefault(st_name, []).append(st_s)
            ratios.setdefault(st_name, []).append(1.0)
            diffs[st_name] = 0.0
            for config in args.configs.split(","):
                replicas, per = (int(x) for x in config.split("x"))
                out = os.path.join(work, f"out-{config}")
                timing = run_once(folder, inp, out, replicas, per, args.rows_per_file)
                for part in ("embed", "wall"):
                    name = f"embedjob run {replicas} x {per} CPU: {'embed stage' if part == 'embed' else 'whole run'}"
                    seconds.setdefault(name, []).append(timing[part])
                    ratios.setdefault(name, []).append(st_s / timing[part])
                    diffs[name] = float(np.abs(job_vectors(out, len(texts)) - reference).max())
        ray.shutdown()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    rows = []
    for name, secs in seconds.items():
        r = ratios[name]
        rows.append(
            (
                name,
                f"{args.rows / statistics.median(secs):,.0f}",
                f"{statistics.median(r):.2f}× ({min(r):.2f}–{max(r):.2f})",
                f"{diffs[name]:.1e}",
            )
        )
    machine = machine_description()
    print(f"CPU: {machine['cpu']}; cores {machine['cores']}; torch {machine['torch']}; ray {ray.__version__}")
    print(
        f"StaticEmbedding ({STATIC_DIM}-d, WordPiece); {args.rows:,} texts (sample/corpus.parquet, rotated copies), "
        f"{args.rows_per_file:,} rows per shard; {args.rounds} rounds; ray.init outside the timings"
    )
    print()
    print(markdown_table(HEADERS, rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
