"""`embedjob plan --check / --calibrate`: what a run would meet, found before it starts.

`calibrate` loads the model as a replica does (jobs.worker.ShardWorker, in this process) and times it on a
sample of the input with the job's own encode settings, so the token counts are the tokenizer's, not a
characters/4 guess. `check_ids` runs the job's duplicate-id pass (jobs.keypass) on a local Ray.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from typing import Any

from jobs.plan import sample_texts
from jobs.rows import check_texts
from jobs.shards import Plan
from jobs.spec import JobSpec

SAMPLE_ROWS = 256


class ModelLoadError(RuntimeError):
    """The job's model does not load; names the model and the loader's reason."""


def calibrate(spec: JobSpec, plan: Plan, sample: int = SAMPLE_ROWS) -> dict[str, Any]:
    """One replica of the job timed in this process on a sample of its input, and the run it predicts."""
    from jobs.worker import ShardWorker

    threads = spec.compute.cpus_per_replica
    try:
        worker = ShardWorker(spec.to_dict(), num_threads=threads)
        info = worker.info()
    except Exception as e:  # the loader's own message (missing folder, pickle refused, no network...)
        raise ModelLoadError(f"model.name: {spec.model.name}: the model does not load: {e}") from e
    texts, _ = check_texts(sample_texts(spec, plan, limit=sample), max_chars=worker.max_chars)
    if not texts:
        raise ModelLoadError("input: the sample holds no valid text to time the model on")
    worker._vectors(texts[:8], "float32")  # warm-up: first-call allocations are not the steady rate
    before = worker.stats().get("tokens", 0)
    started = time.perf_counter()
    worker._vectors(texts, "float32")
    seconds = max(1e-9, time.perf_counter() - started)
    tokens = worker.stats().get("tokens", 0) - before
    replicas = spec.compute.replicas or max(1, (os.cpu_count() or 1) // threads)
    limit = info["max_seq_length"]
    chunker = worker.chunker() if limit else None
    # Tokens of prompt + text with special tokens, uncut: what is over the limit is cut, or split when chunking.
    over = None if chunker is None else sum(n > limit for n in chunker.count(texts))
    share = None if over is None else over / len(texts)
    rows_per_s = len(texts) / seconds
    chunks = None
    if spec.chunking.enabled and chunker is not None:
        windows = sum(len(w) for w in chunker.split(texts))
        chunks = {
            "per_row": round(windows / len(texts), 2),
            "est_chunks": int(windows / len(texts) * plan.rows),
        }
    return {
        "dimension": info["dimension"],
        "max_seq_length": info["max_seq_length"],
        "sample_rows": len(texts),
        "tokens_per_row": round(tokens / len(texts), 1),
        "est_tokens": int(tokens / len(texts) * plan.rows),
        "replica_rows_per_s": round(rows_per_s, 1),
        "replica_tokens_per_s": round(tokens / seconds, 1),
        "threads_per_replica": threads,
        "truncated_share": None if share is None else round(share, 4),
        "est_truncated_rows": None if share is None or spec.chunking.enabled else round(share * plan.rows),
        "chunking": chunks,
        "replicas_here": replicas,
        "est_seconds_here": round(plan.rows / (rows_per_s * replicas), 1),
    }


def check_ids(spec: JobSpec, plan: Plan) -> dict[str, Any]:
    """The job's duplicate-id pass over the whole input, on a local Ray: repeats (policy fail raises)."""
    import ray

    from jobs.keypass import run_key_pass
    from jobs.manifest import OutputStore
    from jobs.pool import connect_ray

    if not spec.input.id_column:
        return {"ids": "derived from file and row (input.id_column unset): unique by construction"}
    folder = tempfile.mkdtemp(prefix="embedjob-plan-check-")
    started = connect_ray(None)
    try:
        keys = run_key_pass(spec, plan, OutputStore(folder), None, False, None, "plan-check")
    finally:
        if started:
            ray.shutdown()
        shutil.rmtree(folder, ignore_errors=True)
    return {"ids": keys.keys, "repeated_ids": keys.repeats, "seconds": keys.seconds}
