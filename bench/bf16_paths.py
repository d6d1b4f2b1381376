"""What each part of the bf16 CPU path gives: oneDNN's fused Linears and the GEMM attention, on and off.

`python -m bench.bf16_paths [--limit 2000] [--rounds 4]` encodes the same texts with one
`compute_precision="bfloat16"` model in four settings, back to back in rotating order (paired, in one process,
so the ratios hold on a noisy machine): both parts on (the default), each one off, both off. Rows: median
seconds, the ratio to "both off" (min and median over rounds), and min/mean cosine against our float32 encode.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from bench.corpus import load_corpus, model_path
from bench.encode_defaults import paired
from bench.metrics import cosine_stats
from bench.report import markdown_table

SETTINGS = {  # label -> (oneDNN Linears, GEMM attention)
    "both on (default)": (True, True),
    "oneDNN Linears off": (False, True),
    "GEMM attention off": (True, False),
    "both off": (False, False),
}


@contextmanager
def setting(onednn: bool, gemm_attention: bool) -> Iterator[None]:
    """Turn the two parts on or off for the duration (module switches, restored after)."""
    from embedder.modules import packed_layout, packed_linear

    saved = packed_linear.uses_onednn, packed_layout.ROW_SCORES
    if not onednn:
        packed_linear.uses_onednn = lambda x: False
    if not gemm_attention:
        packed_layout.ROW_SCORES = 0
    try:
        yield
    finally:
        packed_linear.uses_onednn, packed_layout.ROW_SCORES = saved


def variants(model: Any) -> dict[str, Callable[[list[str]], np.ndarray]]:
    """Label -> encode under that setting."""

    def run(flags: tuple[bool, bool]) -> Callable[[list[str]], np.ndarray]:
        def encode(texts: list[str]) -> np.ndarray:
            with setting(*flags):
                return np.asarray(model.encode(texts), dtype=np.float32)

        return encode

    return {label: run(flags) for label, flags in SETTINGS.items()}


def main(argv: list[str] | None = None) -> int:
    """Print the machine and the table."""
    p = argparse.ArgumentParser(prog="python -m bench.bf16_paths")
    p.add_argument("--limit", type=int, default=2000, help="texts of sample/corpus.parquet to encode")
    p.add_argument("--rounds", type=int, default=4, help="times every setting encodes all the texts")
    a = p.parse_args(argv)
    import torch

    from embedder import EmbeddingModel
    from embedder.cpu import cpu_features

    torch.set_num_threads(2)
    _, texts = load_corpus(limit=a.limit)
    reference = np.asarray(EmbeddingModel(model_path(), device="cpu").encode(texts), dtype=np.float32)
    model = EmbeddingModel(model_path(), device="cpu", compute_precision="bfloat16")
    seconds, outputs = paired(variants(model), [texts] * a.rounds)
    base = seconds["both off"]
    rows = []
    for label, secs in seconds.items():
        ratios = [b / s for b, s in zip(base, secs, strict=True)]
        cos = cosine_stats(outputs[label][-1], reference)
        rows.append(
            (
                label,
                f"{statistics.median(secs):.2f}",
                f"{min(ratios):.2f}× / {statistics.median(ratios):.2f}×",
                f"{cos['min_cosine']:.6f}",
                f"{cos['mean_cosine']:.6f}",
            )
        )
    print(f"CPU: {cpu_features().summary()}; torch {torch.__version__}")
    print(
        f"{len(texts):,} texts, all-MiniLM-L6-v2, compute_precision='bfloat16', {a.rounds} rounds, 2 threads\n"
    )
    headers = ("setting", "s (median)", "× both off (min / median)", "min cos vs fp32", "mean cos vs fp32")
    print(markdown_table(headers, rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
