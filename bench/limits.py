"""The compute limit: fp32 GEMM peak at the model's shapes, and the bound it puts on tokens/s."""

from __future__ import annotations

import time

from bench.metrics import gemm_flops

# Rows (tokens in a batch) the Linear layers typically see: batch 32 of short, medium and long texts.
DEFAULT_ROWS = (512, 2048, 8192)


def layer_gemm_shapes(rows: int, hidden: int, intermediate: int) -> list[tuple[int, int, int]]:
    """(m, k, n) of one BERT layer's six Linear products for `rows` tokens: Q, K, V, O, FFN up, FFN down."""
    return [(rows, hidden, hidden)] * 4 + [(rows, hidden, intermediate), (rows, intermediate, hidden)]


def gemm_peak(
    hidden: int,
    intermediate: int,
    threads: int = 2,
    rows: tuple[int, ...] = DEFAULT_ROWS,
    repeats: int = 7,
    min_time: float = 0.2,
) -> dict[str, float]:
    """Best fp32 GFLOP/s of one layer's Linear products (torch.mm, `threads` threads), per row count and overall.

    The best of several timed repeats is kept: on a shared machine the minimum time is the least disturbed one.
    """
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        out: dict[str, float] = {}
        for m in rows:
            shapes = layer_gemm_shapes(m, hidden, intermediate)
            pairs = [
                (torch.randn(a, k), torch.randn(n, k).t()) for a, k, n in shapes
            ]  # weights as Linear stores them
            flops = sum(gemm_flops(*s) for s in shapes)

            best = best_layer_time(pairs, repeats, min_time)
            out[f"rows_{m}"] = flops / best / 1e9
        out["peak_gflops"] = max(out.values())
        return out
    finally:
        torch.set_num_threads(old)


def best_layer_time(pairs: list, repeats: int, min_time: float) -> float:
    """Least seconds one pass over the (x, w) products took, over `repeats` timings of about `min_time` each."""
    import torch

    def layer() -> None:
        for x, w in pairs:
            torch.mm(x, w)

    layer()
    t0 = time.perf_counter()
    reps = 0
    while time.perf_counter() - t0 < min_time / 4 or reps < 2:
        layer()
        reps += 1
    per = max(1, int(min_time / ((time.perf_counter() - t0) / reps)))
    best = float("inf")
    for _ in range(repeats):
        t1 = time.perf_counter()
        for _ in range(per):
            layer()
        best = min(best, (time.perf_counter() - t1) / per)
    return best


def compute_bound(peak_gflops: float, flops_per_token: float) -> float:
    """Tokens/s the machine could reach if every FLOP ran at GEMM peak."""
    return peak_gflops * 1e9 / flops_per_token


def matmul_peak(dtype_name: str, size: int = 1024, threads: int = 2, repeats: int = 7) -> float:
    """Best GFLOP/s of a (size x size) @ (size x size) torch.matmul in `dtype_name` on `threads` threads."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a = torch.randn(size, size).to(getattr(torch, dtype_name))
        b = torch.randn(size, size).to(a.dtype)
        return gemm_flops(size, size, size) / best_layer_time([(a, b)], repeats, 0.2) / 1e9
    finally:
        torch.set_num_threads(old)
