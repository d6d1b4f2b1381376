"""Scale benchmark: a synthetic corpus of short texts at growing row counts through `embedjob run` with a
static model. Prints the driver's own peak RSS, rows/s, and the time to plan and to `status`, as a table.

    .venv/bin/python -m bench.scale --rows 1000000 5000000 20000000

The driver is the `embedjob` process alone (Ray's raylet, GCS and the replicas are its children and are
not counted): it is the process whose memory must not grow with rows.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq

ROWS_PER_FILE = 500_000
WORDS = 2000
DIM = 64


def cpu_name() -> str:
    """The CPU model, for the table's heading."""
    from embedder.cpu import cpu_features

    return cpu_features().name


def make_model(path: str) -> str:
    """A 64-dim StaticEmbedding over a word-level vocabulary, saved in the sentence-transformers format."""
    if os.path.exists(os.path.join(path, "modules.json")):
        return path
    import torch
    from tokenizers import Tokenizer, normalizers, pre_tokenizers
    from tokenizers.models import WordLevel

    from embedder import EmbeddingModel
    from embedder.modules.static_embedding import StaticEmbedding

    vocab = {"[UNK]": 0, **{f"w{i}": i + 1 for i in range(WORDS)}}
    tok = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    weights = torch.randn(len(vocab), DIM, generator=torch.Generator().manual_seed(0))
    EmbeddingModel(modules=[StaticEmbedding(tok, weights)], device="cpu").save_pretrained(path)
    return path


def make_files(folder: str, files: int) -> list[str]:
    """`files` Parquet files of ROWS_PER_FILE rows (string ids, texts of 3-12 words); made once, reused."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    pool = np.array(
        [" ".join(f"w{w}" for w in rng.integers(0, WORDS, size=rng.integers(3, 13))) for _ in range(200_000)],
        dtype=object,
    )
    paths = []
    for k in range(files):
        path = os.path.join(folder, f"corpus-{k:04d}.parquet")
        if not os.path.exists(path):
            lo = k * ROWS_PER_FILE
            ids = pa.array([f"doc-{i}" for i in range(lo, lo + ROWS_PER_FILE)], pa.string())
            texts = pa.array(pool[rng.integers(0, len(pool), size=ROWS_PER_FILE)], pa.string())
            pq.write_table(pa.table({"id": ids, "text": texts}), path + ".tmp", row_group_size=10_000)
            os.replace(path + ".tmp", path)
        paths.append(path)
    return paths


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, int, float, str]:
    """(seconds, peak RSS in bytes, CPU seconds, stdout) of the command's own process, run to completion."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    me = psutil.Process(proc.pid)
    peak, cpu = 0, 0.0
    while proc.poll() is None:
        try:
            peak = max(peak, me.memory_info().rss)
            t = me.cpu_times()
            cpu = t.user + t.system
        except psutil.NoSuchProcess:
            break
        time.sleep(0.1)
    out = proc.stdout.read() if proc.stdout else ""
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {proc.returncode}:\n{out}")
    return time.perf_counter() - started, peak, cpu, out


def phase_times(log: str) -> dict[str, float]:
    """Key pass and end-of-job (fold + index) seconds, from the job's JSON log lines."""
    events = [json.loads(line) for line in open(log) if line.startswith("{")]
    started = next(e for e in events if e["event"] == "job_started")
    last_commit = max(e["ts"] for e in events if e["event"] == "shard_committed")
    done = next(e for e in events if e["event"] == "job_done")
    return {"key_pass_s": started.get("id_pass_seconds", 0.0), "index_s": done["ts"] - last_commit}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 5_000_000, 20_000_000])
    p.add_argument("--rows-per-shard", type=int, default=10_000)
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--workdir", default="/tmp/embedjob-scale")
    a = p.parse_args(argv)
    model = make_model(os.path.join(a.workdir, "static-64"))
    files = make_files(os.path.join(a.workdir, "corpus"), -(-max(a.rows) // ROWS_PER_FILE))
    exe = os.path.join(os.path.dirname(sys.executable), "embedjob")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    results = []
    for rows in a.rows:
        inp = os.path.join(a.workdir, f"in-{rows}")
        os.makedirs(inp, exist_ok=True)
        for path in files[: -(-rows // ROWS_PER_FILE)]:
            link = os.path.join(inp, os.path.basename(path))
            if not os.path.exists(link):
                os.link(path, link)
        out = os.path.join(a.workdir, f"out-{rows}")
        common = ["--model", model, "--input", inp, "--text-column", "text", "--id-column", "id"]
        common += ["--rows-per-file", str(a.rows_per_shard)]
        plan_s, plan_rss, _, _ = timed([exe, "plan", *common, "--output", out], env)
        run = [exe, "run", *common, "--output", out, "--overwrite", "--no-progress"]
        run += ["--replicas", str(a.replicas), "--cpus-per-replica", "1"]
        log = os.path.join(a.workdir, f"log-{rows}.jsonl")
        if os.path.exists(log):
            os.remove(log)  # the runner appends
        run += ["--log-file", log]
        run_s, run_rss, run_cpu, _ = timed(run, env)
        status_s, _, _, status = timed([exe, "status", out, "--json"], env)
        phases = phase_times(log)
        success = json.load(open(os.path.join(out, ".embedjob", "_SUCCESS")))
        assert success["rows_written"] == rows, success
        shards = json.loads(status)["shards_total"]
        results.append(
            {
                "rows": rows,
                "shards": shards,
                "driver_cpu_ms_per_shard": 1000 * run_cpu / shards,
                **phases,
                "driver_peak_mib": run_rss / 2**20,
                "wall_s": run_s,
                "rows_per_s": rows / run_s,
                "plan_s": plan_s,
                "plan_peak_mib": plan_rss / 2**20,
                "status_s": status_s,
            }
        )
        print(json.dumps(results[-1]), flush=True)
    print(
        f"\nCPU: {cpu_name()}, {os.cpu_count()} cores; {a.replicas} replicas x 1 CPU, {a.rows_per_shard:,} rows/shard"
    )
    print(
        "| rows | shards | driver peak RSS MiB | wall s | rows/s | id pass s | index s | driver CPU ms/shard "
        "| plan s | plan peak MiB | status s |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in results:
        print(
            f"| {r['rows']:,} | {r['shards']:,} | {r['driver_peak_mib']:,.0f} | {r['wall_s']:,.1f} | "
            f"{r['rows_per_s']:,.0f} | {r['key_pass_s']:.1f} | {r['index_s']:.1f} | "
            f"{r['driver_cpu_ms_per_shard']:.1f} | {r['plan_s']:.1f} | {r['plan_peak_mib']:,.0f} | "
            f"{r['status_s']:.1f} |"
        )
    base = results[0]["driver_peak_mib"]
    for r in results[1:]:
        print(
            f"driver peak at {r['rows']:,} rows: {100 * (r['driver_peak_mib'] / base - 1):+.1f}% vs {results[0]['rows']:,}"
        )


if __name__ == "__main__":
    main()
