"""The performance harness: every system on one fixed corpus, each in its own subprocess; tables, chart, docs.

.venv/bin/python -m bench.harness --quick          # a few hundred texts, a smoke run (~3 min)
.venv/bin/python -m bench.harness --write-docs     # the full run (~25 min on 2 cores) -> docs/performance.md
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bench import corpus as corpus_mod
from bench import metrics
from bench.limits import compute_bound, gemm_peak
from bench.paired import default_variants
from bench.sampler import TreeSampler, work_processes
from embedder.encode_loop import CPU_BATCH_TOKENS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PARITY_MIN_COS, PARITY_MAX_ABS = 0.99999, 1e-4
REFERENCE = "st_b32"
BACKEND_PACKAGES = {"onnx": "onnxruntime", "openvino": "openvino"}


@dataclass
class Run:
    """One subprocess: a system on one input, and how to find its working processes."""

    key: str
    label: str
    system: str
    input: str
    args: list[str] = field(default_factory=list)
    mode: str = "self"
    workers: int = 1
    table: str = "main"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The harness's command line."""
    p = argparse.ArgumentParser(prog="python -m bench.harness", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a few hundred texts; the smoke run")
    p.add_argument("--limit", type=int, default=None, help="use the first N texts of the corpus")
    p.add_argument(
        "--out", default=os.path.join(REPO, "out", "bench"), help="work folder for inputs and results"
    )
    p.add_argument("--only", default=None, help="comma-separated run keys to run (others are skipped)")
    p.add_argument("--skip", default="", help="comma-separated run keys to skip")
    p.add_argument("--sweep", default="16,32,64,128", help="ST batch sizes tried on the sweep subset")
    p.add_argument("--sweep-texts", type=int, default=500)
    p.add_argument("--paired", default=None, help="paired A/B variants, NAME:N,... (see bench/paired.py)")
    p.add_argument(
        "--max-batch-tokens",
        type=int,
        default=None,
        help=f"our token budget per batch (default: encode's own, {CPU_BATCH_TOKENS} on CPU)",
    )
    p.add_argument("--job-rounds", type=int, default=3, help="rounds of the paired job / plain-process run")
    p.add_argument("--scale-texts", type=int, default=400, help="subset size for the 1x / Nx memory runs")
    p.add_argument("--scale-factor", type=int, default=10)
    p.add_argument("--paired-chunks", type=int, default=4, help="chunks of the paired A/B run")
    p.add_argument(
        "--reuse", default="", help="run keys (or 'all') whose earlier measured.json in --out is reused"
    )
    p.add_argument("--timeout", type=int, default=1200, help="seconds per subprocess")
    p.add_argument(
        "--write-docs", action="store_true", help="update docs/performance.md and docs/performance.png"
    )
    return p.parse_args(argv)


def plan_runs(a: argparse.Namespace, best_bs: int | None) -> list[Run]:
    """Every run of the harness, in order; `best_bs` is filled in once the sweep has run."""
    budget = a.max_batch_tokens or CPU_BATCH_TOKENS
    mbt = ["--max-batch-tokens", str(budget)]
    b32 = ["--batch-sizes", "32"]
    # Rows per encode call (streamed) and per output file (job): the same at every corpus size, so the
    # 1x and Nx runs differ only in how many of them there are.
    stream = ["--chunk-size", "200"]
    job = ["--actors", "1", "--cpus-per-actor", "2", *mbt]
    runs = [
        Run("st_b32", "ST encode b32", "st_encode", "main", ["--batch-sizes", "32"]),
        Run("st_sweep", "ST batch sweep", "st_encode", "sweep", ["--batch-sizes", a.sweep], table="sweep"),
        Run("st_best", f"ST encode b{best_bs}", "st_encode", "main", ["--batch-sizes", str(best_bs)]),
        Run("st_pool2", "ST pool 2 proc", "st_pool", "main", ["--processes", "2"], mode="tree"),
        Run(
            "ray_1x2",
            "Ray Data ST 1×2cpu (as written)",
            "ray_st",
            "main",
            ["--actors", "1", "--cpus-per-actor", "2"],
            mode="ray",
        ),
        Run(
            "ray_1x2_t",
            "Ray Data ST 1×2cpu set_num_threads",
            "ray_st",
            "main",
            ["--actors", "1", "--cpus-per-actor", "2", "--set-threads"],
            mode="ray",
        ),
        Run(
            "ray_2x1",
            "Ray Data ST 2×1cpu",
            "ray_st",
            "main",
            ["--actors", "2", "--cpus-per-actor", "1"],
            mode="ray",
            workers=2,
        ),
        Run("ours_b32", "ours encode b32", "ours_encode", "main", b32),
        Run("ours_budget", f"ours encode {budget} tok/batch", "ours_encode", "main", mbt),
        Run("job", "our job 1×2cpu", "our_job", "main", job, mode="ray"),
        Run(
            "job_overhead",
            "our job vs one plain process",
            "job_overhead",
            "main",
            [*job, "--chunks", str(a.job_rounds)],
            mode="ray",
            table="overhead",
        ),
        Run("stream_1x", "ours encode, streamed ×1", "ours_stream", "scale1", [*mbt, *stream], table="scale"),
        Run(
            f"stream_{a.scale_factor}x",
            f"ours encode, streamed ×{a.scale_factor}",
            "ours_stream",
            "scaleN",
            [*mbt, *stream],
            table="scale",
        ),
        Run("job_1x", "our job ×1", "our_job", "scale1", [*job, *stream], mode="ray", table="scale"),
        Run(
            f"job_{a.scale_factor}x",
            f"our job ×{a.scale_factor}",
            "our_job",
            "scaleN",
            [*job, *stream],
            mode="ray",
            table="scale",
        ),
        Run(
            "paired",
            "paired A/B",
            "paired",
            "main",
            ["--variants", a.paired or default_variants(budget), "--chunks", str(a.paired_chunks)],
            table="paired",
        ),
        Run("profile", "our encode stage profile", "profile", "sweep", mbt, table="profile"),
        Run(
            "ours_onnx", "ours encode b32, backend='onnx'", "ours_encode", "main", [*b32, "--backend", "onnx"]
        ),
        Run(
            "ours_openvino",
            "ours encode b32, backend='openvino'",
            "ours_encode",
            "main",
            [*b32, "--backend", "openvino"],
        ),
    ]
    keep = set(a.only.split(",")) if a.only else None
    skip = set(filter(None, a.skip.split(",")))
    return [r for r in runs if (keep is None or r.key in keep or r.key == REFERENCE) and r.key not in skip]


def prepare_inputs(a: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Write the input Parquet files (main corpus, sweep subset, 1x / Nx subsets) and count their tokens."""
    path = corpus_mod.model_path()
    limit = 300 if a.quick and a.limit is None else a.limit
    ids, texts = corpus_mod.load_corpus(limit=limit)
    counts = corpus_mod.token_counts(texts, path)
    n_sweep = min(len(texts), 200 if a.quick else a.sweep_texts)
    n_scale = min(len(texts), 100 if a.quick else a.scale_texts)
    factor = 3 if a.quick else a.scale_factor
    sets = {
        "main": (ids, texts, counts),
        "sweep": (ids[:n_sweep], texts[:n_sweep], counts[:n_sweep]),
        "scale1": (ids[:n_scale], texts[:n_scale], counts[:n_scale]),
        "scaleN": (
            *corpus_mod.repeat_rows(ids[:n_scale], texts[:n_scale], factor),
            counts[:n_scale] * factor,
        ),
    }
    out = {}
    for name, (i, t, c) in sets.items():
        file = corpus_mod.write_corpus(os.path.join(a.out, "inputs", f"{name}.parquet"), i, t)
        out[name] = {"path": file, "ids": i, "chars": [len(x) for x in t], "tokens": c}
    return out


def run_one(run: Run, inputs: dict[str, dict[str, Any]], a: argparse.Namespace) -> dict[str, Any] | None:
    """Run one system in a fresh subprocess; its result plus peak RSS of its working processes and other load."""
    out = os.path.join(a.out, "runs", run.key)
    os.makedirs(out, exist_ok=True)
    for stale in ("result.json", "emb.npy"):
        if os.path.exists(os.path.join(out, stale)):
            os.remove(os.path.join(out, stale))
    cmd = [
        sys.executable,
        "-m",
        "bench.systems",
        run.system,
        "--input",
        inputs[run.input]["path"],
        "--out",
        out,
        *run.args,
    ]
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    print(
        f"[bench] {run.key}: {run.label} on {len(inputs[run.input]['ids'])} texts ...",
        file=sys.stderr,
        flush=True,
    )
    log = open(os.path.join(out, "log.txt"), "w", encoding="utf-8")
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    sampler = TreeSampler(proc.pid).start()
    try:
        proc.wait(timeout=a.timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    sampler.stop()
    log.close()
    result_file = os.path.join(out, "result.json")
    if proc.returncode != 0 or not os.path.exists(result_file):
        tail = open(os.path.join(out, "log.txt"), encoding="utf-8", errors="replace").read()[-1500:]
        print(
            f"[bench] {run.key} FAILED (exit {proc.returncode}); log tail:\n{tail}",
            file=sys.stderr,
            flush=True,
        )
        return None
    with open(result_file, encoding="utf-8") as f:
        result = json.load(f)
    procs = list(sampler.procs.values())
    workers = work_processes(procs, proc.pid, run.mode, run.workers)
    rss = sum(p.peak_rss for p in workers)
    if run.mode == "self":
        rss = max(rss, result.get("self_peak_rss", 0))  # ru_maxrss misses nothing between samples
    result.setdefault(
        "cpu_s", sum(p.cpu_s for p in workers)
    )  # pool / Ray: the workers' CPU, model load included
    result.update(
        peak_rss=rss,
        workers=[(p.name[:60], p.peak_rss) for p in workers],
        other_load=sampler.other_load(),
        process_s=time.monotonic() - t0,
    )
    print(
        f"[bench] {run.key}: {result['wall_s']:.1f} s measured, peak RSS {rss / 2**20:,.0f} MiB, "
        f"other load {result['other_load']:.2f} cores",
        file=sys.stderr,
        flush=True,
    )
    with open(os.path.join(out, "measured.json"), "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1, default=str)
    return result


def make_row(
    run: Run, res: dict[str, Any], inp: dict[str, Any], ref_emb: np.ndarray | None, bound: float
) -> dict[str, Any]:
    """A table row: rates, padding, RSS, bound fraction and parity against the reference vectors."""
    n, real = len(inp["ids"]), int(sum(inp["tokens"]))
    counted = res.get("counted") or {}
    padded, estimated = counted.get("padded_tokens"), False
    if padded:
        if counted.get("tokens") != real:
            print(
                f"[bench] {run.key}: model counted {counted.get('tokens')} real tokens, the corpus has {real}",
                file=sys.stderr,
            )
    elif run.system in ("st_encode", "st_pool", "ray_st"):
        chunk = res.get("chunk_size") if run.system == "st_pool" else res.get("rows_per_batch")
        padded = metrics.padded_tokens(
            inp["tokens"], metrics.st_batches(inp["chars"], int(res.get("batch_size", 32)), chunk)
        )
        estimated = run.system == "ray_st"
    wall = res["wall_s"]
    row = {
        "key": run.key,
        "label": run.label,
        "texts": n,
        "tokens": real,
        "padded": padded,
        "wall_s": wall,
        "texts_s": n / wall,
        "tokens_s": real / wall,
        "pad_eff": metrics.padding_efficiency(real, padded) if padded else None,
        "pad_estimated": estimated,
        "rss_mib": res["peak_rss"] / 2**20,
        "bound_frac": real / wall / bound,
        "other_load": res.get("other_load"),
        "cpu_s": res.get("cpu_s"),
        "details": {k: v for k, v in res.items() if k not in ("workers",)},
    }
    emb_file = os.path.join(os.path.dirname(inp["path"]), "..", "runs", run.key, "emb.npy")
    if ref_emb is not None and os.path.exists(emb_file):
        emb = np.load(emb_file)
        if emb.shape == ref_emb.shape:
            row.update({f"{k}": v for k, v in metrics.parity(emb, ref_emb).items() if k != "rows"})
            row["min_cos"] = row.pop("min_cosine")
    return row


def main(argv: list[str] | None = None) -> int:
    """Run everything, print the tables, write results.json, the chart and (with --write-docs) the docs."""
    a = parse_args(argv)
    os.makedirs(a.out, exist_ok=True)
    inputs = prepare_inputs(a)
    mpath = corpus_mod.model_path()
    config = json.load(open(os.path.join(mpath, "config.json"), encoding="utf-8"))
    fpt = metrics.flops_per_token(config, inputs["main"]["tokens"])
    peak = gemm_peak(int(config["hidden_size"]), int(config["intermediate_size"]), threads=2)
    bound = compute_bound(peak["peak_gflops"], fpt)
    print(
        f"[bench] GEMM peak {peak['peak_gflops']:.1f} GFLOP/s (2 threads), {fpt / 1e6:.2f} MFLOP per real token, "
        f"bound {bound:,.0f} tokens/s",
        file=sys.stderr,
        flush=True,
    )

    results: dict[str, dict[str, Any]] = {}
    best_bs = 32
    reuse = set(a.reuse.split(",")) if a.reuse else set()
    for run in plan_runs(a, None):
        if run.key == "st_best":
            run = next(r for r in plan_runs(a, best_bs) if r.key == "st_best")
            if best_bs == 32 and "st_b32" in results:
                results["st_best"] = results["st_b32"]
                continue
        backend = run.args[run.args.index("--backend") + 1] if "--backend" in run.args else None
        if backend and importlib.util.find_spec(BACKEND_PACKAGES[backend]) is None:
            print(f"[bench] {run.key}: skipped (pip install 'embedjob[{backend}]')", file=sys.stderr)
            continue
        measured = os.path.join(a.out, "runs", run.key, "measured.json")
        if ("all" in reuse or run.key in reuse) and os.path.exists(measured):
            with open(measured, encoding="utf-8") as f:
                res = json.load(f)
            print(f"[bench] {run.key}: reusing {measured}", file=sys.stderr, flush=True)
        else:
            res = run_one(run, inputs, a)
        if res is None:
            continue
        results[run.key] = res
        if run.key == "st_sweep":
            best_bs = int(res["batch_size"])
    from bench.summary import summarise

    # The peak again at the end; the better of the two is the less disturbed measurement.
    again = gemm_peak(int(config["hidden_size"]), int(config["intermediate_size"]), threads=2)
    if again["peak_gflops"] > peak["peak_gflops"]:
        peak = again
    bound = compute_bound(peak["peak_gflops"], fpt)
    return summarise(a, inputs, results, plan_runs(a, best_bs), fpt, peak, bound)


if __name__ == "__main__":
    sys.exit(main())
