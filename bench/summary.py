"""After the runs: rows, the parity verdict, the printed tables, results.json, the chart and docs/performance.md."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import numpy as np

from bench import report

DOC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "performance.md")
PNG = os.path.join(os.path.dirname(DOC), "performance.png")


def summarise(
    a: argparse.Namespace,
    inputs: dict[str, Any],
    results: dict[str, dict[str, Any]],
    runs: list[Any],
    fpt: float,
    peak: dict[str, float],
    bound: float,
) -> int:
    """Build and print every table; returns 1 when our vectors do not match sentence-transformers'."""
    from bench.harness import PARITY_MAX_ABS, PARITY_MIN_COS, REFERENCE, make_row

    ref_file = os.path.join(a.out, "runs", REFERENCE, "emb.npy")
    ref = np.load(ref_file) if REFERENCE in results and os.path.exists(ref_file) else None
    rows: dict[str, list[dict[str, Any]]] = {"main": [], "scale": []}
    for run in runs:
        if run.key in results and run.table in rows:
            rows[run.table].append(
                make_row(
                    run, results[run.key], inputs[run.input], ref if run.input == "main" else None, bound
                )
            )
    ref_speed = next((r["texts_s"] for r in rows["main"] if r["key"] == REFERENCE), None)
    for r in rows["main"]:
        r["ratio"] = r["texts_s"] / ref_speed if ref_speed else None

    verdict, failed = parity_verdict(rows["main"], PARITY_MIN_COS, PARITY_MAX_ABS)
    sweep = results.get("st_sweep", {}).get("sweep_s", {})
    n_sweep = len(inputs["sweep"]["ids"])
    sweep_line = ", ".join(f"b{bs}: {n_sweep / s:,.1f} texts/s" for bs, s in sweep.items())
    profile = results.get("profile", {}).get("stages", [])
    n = len(inputs["main"]["ids"])
    head = (
        f"Corpus: `sample/corpus.parquet`, {n:,} texts, {sum(inputs['main']['tokens']):,} real tokens "
        f"(all-MiniLM-L6-v2 tokenizer, max 256). Compute bound: fp32 GEMM peak {peak['peak_gflops']:.1f} GFLOP/s "
        f"(torch.mm, 2 threads, best of the layer's GEMMs at "
        + ", ".join(f"{k.split('_')[1]} rows {v:.0f}" for k, v in peak.items() if k.startswith("rows_"))
        + f" GFLOP/s) ÷ {fpt / 1e6:.2f} MFLOP per real token = **{bound:,.0f} tokens/s**."
    )
    parts = [head, "", report.main_table(rows["main"]), "", verdict]
    if sweep_line:
        parts += ["", f"ST batch-size sweep on the first {n_sweep:,} texts: {sweep_line}."]
    if "paired" in results:
        parts += ["", paired_text(results["paired"], len(inputs["main"]["ids"]))]
    if "job_overhead" in results:
        parts += ["", overhead_text(results["job_overhead"], n)]
    if rows["scale"]:
        parts += [
            "",
            "Peak RSS as the corpus grows (subset repeated):",
            "",
            report.scaling_table(rows["scale"]),
        ]
    if profile:
        parts += [
            "",
            f"Where our encode's time goes ({len(inputs['sweep']['ids']):,} texts, "
            f"{results['profile'].get('max_batch_tokens')} tokens per batch):",
            "",
            report.profile_table(profile),
        ]
    text = "\n".join(parts)
    print(text)

    with open(os.path.join(a.out, "results.json"), "w", encoding="utf-8") as f:
        json.dump(
            {
                "rows": rows,
                "peak": peak,
                "flops_per_token": fpt,
                "bound": bound,
                "results": results,
                "profile": profile,
            },
            f,
            indent=1,
            default=str,
        )
    png = report.chart(rows["main"], rows["scale"], bound, os.path.join(a.out, "performance.png"))
    if a.write_docs:
        write_docs(text, png)
    return 1 if failed else 0


def paired_text(res: dict[str, Any], n: int) -> str:
    """The paired A/B table: each variant's speed-up over the reference, timed chunk by chunk in one process."""
    ref = res["reference"]
    cells = []
    for name, v in res["variants"].items():
        cells.append(
            (
                name,
                report.fmt(v["texts_s"], ",.1f"),
                f"{v['speedup_total']:.2f}×",
                f"{v['speedup_median_chunk']:.2f}× ({v['speedup_min_chunk']:.2f}–{v['speedup_max_chunk']:.2f})",
                f"{v['parity']['min_cosine']:.7f}",
                f"{v['parity']['max_abs_diff']:.1e}",
            )
        )
    head = (
        f"Paired A/B in one process ({n:,} texts in {res['chunks']} chunks, each chunk encoded by every variant "
        f"back to back, rotating who goes first; robust to the machine's load drifting):"
    )
    table = report.markdown_table(
        (
            "variant",
            "texts/s",
            f"× {ref} (total)",
            "× per chunk: median (min–max)",
            f"min cos vs {ref}",
            "max abs diff",
        ),
        cells,
    )
    return head + "\n\n" + table


def overhead_text(res: dict[str, Any], n: int) -> str:
    """The job against one plain Python process doing the same work, round by round."""
    cells = []
    for k, r in enumerate(res["rounds"]):
        steps = r["plain_steps"]
        cells.append(
            (
                str(k + 1),
                f"{r['job_s']:.1f}",
                f"{r['plain_s']:.1f}",
                f"{steps['import_s'] + steps['load_s']:.1f}",
                f"{steps['encode_s']:.1f}",
                f"{r['job_work_s']:.1f}",
                f"{r['ratio']:.2f}×",
                f"{r['ratio_to_encode']:.2f}×",
                f"{r['work_ratio']:.2f}×",
            )
        )
    head = (
        f"Our job end to end against the same work as one plain Python process ({n:,} texts; the process "
        "imports, loads the model, reads the Parquet file, calls `encode(batching='tokens')` and writes the "
        "vectors; the job runs on a Ray started beforehand, with a fresh replica each round; the two alternate, "
        f"timed from outside). Median job / plain process: **{res['ratio_median']:.2f}×**; "
        f"job / the encode call alone: {res['ratio_to_encode_median']:.2f}×; the job once its replica is up "
        f"(read, check, encode, write, commit) / the encode call: {res['work_ratio_median']:.2f}×."
    )
    table = report.markdown_table(
        (
            "round",
            "job s",
            "plain process s",
            "of which import + load s",
            "of which encode s",
            "job after replica up s",
            "job / process",
            "job / encode call",
            "job after replica up / encode call",
        ),
        cells,
    )
    return head + "\n\n" + table


def parity_verdict(rows: list[dict[str, Any]], min_cos: float, max_abs: float) -> tuple[str, bool]:
    """A sentence on whether our systems' vectors match ST's in this run, and whether any failed."""
    mine = ("ours", "job")
    ours = [r for r in rows if r["key"].startswith(mine) and r.get("min_cos") is not None]
    bad = [r for r in ours if r["min_cos"] < min_cos or r["max_abs_diff"] > max_abs]
    missing = [r["label"] for r in rows if r["key"].startswith(mine) and r.get("min_cos") is None]
    if not ours:
        return "Parity: not checked (no reference or no output from our systems).", bool(missing)
    worst = min(r["min_cos"] for r in ours)
    worst_abs = max(r["max_abs_diff"] for r in ours)
    status = "FAILED for " + ", ".join(r["label"] for r in bad) if bad else "passed"
    line = (
        f"Parity with ST encode b32 in this run ({len(ours)} of our systems, every row): {status}; "
        f"worst min cosine {worst:.7f} (need ≥ {min_cos}), worst max abs diff {worst_abs:.2e} (need ≤ {max_abs:g})."
    )
    if missing:
        line += " No vectors to compare for: " + ", ".join(missing) + "."
    return line, bool(bad)


def write_docs(generated: str, png: str) -> None:
    """Put the generated tables between the markers of docs/performance.md and copy the chart next to it."""
    import shutil

    machine = report.machine_description()
    block = "Machine: " + "; ".join(f"{k} {v}" for k, v in machine.items()) + "\n\n" + generated
    block += "\n\n![throughput and memory](performance.png)"
    doc = open(DOC, encoding="utf-8").read() if os.path.exists(DOC) else "# Performance\n"
    with open(DOC, "w", encoding="utf-8") as f:
        f.write(report.splice_generated(doc, block))
    shutil.copyfile(png, PNG)
    print(f"[bench] wrote {DOC} and {PNG}", file=sys.stderr)
