"""Turn measured rows into the Markdown tables, the PNG chart and the generated part of docs/performance.md."""

from __future__ import annotations

import os
import platform
from collections.abc import Sequence
from typing import Any

START_MARK = "<!-- bench:start -->"
END_MARK = "<!-- bench:end -->"


def fmt(value: Any, spec: str = ",.0f", none: str = "–") -> str:
    """Format a number for a table cell; None becomes a dash."""
    if value is None:
        return none
    return format(value, spec)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub Markdown table (first column left-aligned, the rest right-aligned)."""
    align = [":---"] + ["---:"] * (len(headers) - 1)
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


MAIN_HEADERS = (
    "system",
    "texts/s",
    "tokens/s",
    "padding eff.",
    "peak RSS MiB",
    "× ST b32",
    "% of bound",
    "min cos vs ST",
    "wall s",
    "CPU s",
    "other load",
)


def main_table(rows: Sequence[dict[str, Any]]) -> str:
    """The results table: one row per system, speeds, padding, memory, ratio to ST batch 32, bound fraction, parity."""
    cells = []
    for r in rows:
        pad = fmt(r.get("pad_eff"), ".1%") + (" (est.)" if r.get("pad_estimated") else "")
        cells.append(
            (
                r["label"],
                fmt(r["texts_s"], ",.1f"),
                fmt(r["tokens_s"]),
                pad,
                fmt(r.get("rss_mib")),
                fmt(r.get("ratio"), ".2f") + "×" if r.get("ratio") is not None else "–",
                fmt(r.get("bound_frac"), ".0%"),
                fmt(r.get("min_cos"), ".6f"),
                fmt(r["wall_s"], ".1f"),
                fmt(r.get("cpu_s"), ".1f"),
                fmt(r.get("other_load"), ".2f"),
            )
        )
    return markdown_table(MAIN_HEADERS, cells)


def scaling_table(rows: Sequence[dict[str, Any]]) -> str:
    """Peak RSS at 1x and Nx the corpus subset, per system."""
    cells = [(r["label"], fmt(r["texts"]), fmt(r["texts_s"], ",.1f"), fmt(r.get("rss_mib"))) for r in rows]
    return markdown_table(("system × corpus", "texts", "texts/s", "peak RSS MiB"), cells)


def profile_table(stages: Sequence[dict[str, Any]]) -> str:
    """Where our encode's time goes: seconds and share per stage."""
    total = sum(s["seconds"] for s in stages if not s.get("detail")) or 1.0
    cells = [
        (
            ("  ↳ " if s.get("detail") else "") + s["stage"],
            fmt(s["seconds"], ".2f"),
            fmt(s["seconds"] / total, ".1%"),
        )
        for s in stages
    ]
    return markdown_table(("stage", "seconds", "share"), cells)


def machine_description(extra: dict[str, str] | None = None) -> dict[str, str]:
    """CPU model, cores, memory and library versions of this machine."""
    import torch
    import transformers

    from embedder.cpu import cpu_features

    cpu = cpu_features()
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    isa = "AVX-512" if "avx512f" in cpu.flags else "AVX2" if "avx2" in cpu.flags else "baseline"
    out = {
        "cpu": f"{cpu.name}, {isa}",
        "cores": str(os.cpu_count()),
        "memory": f"{mem:.0f} GiB",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "torch threads": str(torch.get_num_threads()),
    }
    try:
        import sentence_transformers

        out["sentence-transformers"] = sentence_transformers.__version__
    except ImportError:
        pass
    out.update(extra or {})
    return out


def chart(rows: Sequence[dict[str, Any]], scaling: Sequence[dict[str, Any]], bound: float, path: str) -> str:
    """A PNG: tokens/s per system against the compute bound, and peak RSS per system (and over corpus scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        1, 2, figsize=(13, 0.45 * max(len(rows), len(scaling)) + 2.5), gridspec_kw={"width_ratios": [3, 2]}
    )
    labels = [r["label"] for r in rows][::-1]
    speeds = [r["tokens_s"] for r in rows][::-1]
    ax = axes[0]
    ax.barh(
        labels, speeds, color=["#1f77b4" if "ours" in lbl or "our " in lbl else "#999999" for lbl in labels]
    )
    ax.axvline(bound, color="red", linestyle="--", label=f"compute bound {bound:,.0f} tokens/s")
    for y, v in enumerate(speeds):
        ax.text(v, y, f" {v:,.0f}", va="center", fontsize=8)
    ax.set_xlabel("real tokens/s (higher is better)")
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title("Throughput on the fixed corpus")
    ax2 = axes[1]
    mem_rows = [r for r in list(rows) + list(scaling) if r.get("rss_mib")]
    ax2.barh([r["label"] for r in mem_rows][::-1], [r["rss_mib"] for r in mem_rows][::-1], color="#2ca02c")
    ax2.set_xlabel("peak RSS of the working process(es), MiB")
    ax2.set_title("Memory")
    ax2.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def splice_generated(document: str, generated: str) -> str:
    """Replace the text between the bench markers (or append the marked block when there are none)."""
    block = f"{START_MARK}\n{generated.rstrip()}\n{END_MARK}"
    if START_MARK in document and END_MARK in document:
        head, rest = document.split(START_MARK, 1)
        _, tail = rest.split(END_MARK, 1)
        return head + block + tail
    return document.rstrip() + "\n\n" + block + "\n"
