"""Where our encode's time goes: stage timers hooked onto EmbeddingModel, and an op breakdown of its forward."""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from bench.corpus import model_path
from bench.systems import read_input

# aten op name fragments -> the part of a BERT forward they belong to (first match wins).
OP_CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Linear GEMMs", ("addmm", "aten::mm", "matmul", "aten::linear")),
    ("attention (SDPA / softmax)", ("attention", "softmax", "bmm", "baddbmm")),
    ("LayerNorm", ("layer_norm",)),
    ("GELU", ("gelu",)),
    ("embeddings lookup", ("embedding", "index_select")),
    (
        "copies / elementwise / masks",
        (
            "copy_",
            "add",
            "mul",
            "where",
            "div",
            "sub",
            "clamp",
            "sum",
            "masked",
            "cat",
            "bitwise",
            "expand",
            "contiguous",
            "to",
            "fill",
            "ne",
            "eq",
        ),
    ),
)


class StageTimer:
    """Accumulate wall seconds per named stage around wrapped calls and module forwards."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self._starts: dict[str, float] = {}

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        """`fn` with its wall time added to stage `name`."""

        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[name] += time.perf_counter() - t0

        return timed

    def hook(self, module: Any, name: str) -> None:
        """Time `module`'s forward passes into stage `name`."""
        module.register_forward_pre_hook(lambda *_: self._starts.__setitem__(name, time.perf_counter()))
        module.register_forward_hook(
            lambda *_: self.seconds.__setitem__(
                name, self.seconds[name] + time.perf_counter() - self._starts[name]
            )
        )


def categorise(op_seconds: dict[str, float]) -> dict[str, float]:
    """Sum self seconds of aten ops into OP_CATEGORIES (the rest under 'other ops')."""
    out: dict[str, float] = defaultdict(float)
    for name, sec in op_seconds.items():
        for cat, frags in OP_CATEGORIES:
            if any(f in name for f in frags):
                out[cat] += sec
                break
        else:
            out["other ops"] += sec
    return dict(out)


def run_profile(args: argparse.Namespace) -> dict[str, Any]:
    """Time our encode's stages on the input, then split its forward time by op category with torch.profiler."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from embedder import EmbeddingModel

    _, texts = read_input(args.input)
    model = EmbeddingModel(model_path(), device="cpu")
    kwargs = {"batch_size": args.batch_sizes[0], "max_batch_tokens": args.max_batch_tokens}
    model.encode(texts[:64], **kwargs)
    timer = StageTimer()
    first = model[0]
    # Wrap whichever tokenising entry points the input module has (they changed as encode evolved).
    for attr, stage in (
        ("tokenize_unpadded", "tokenise all texts once"),
        ("collate", "collate / pad batches"),
        ("text_lengths", "token counts for sorting"),
        ("preprocess", "tokenise + pad batches"),
    ):
        if callable(getattr(first, attr, None)):
            setattr(first, attr, timer.wrap(stage, getattr(first, attr)))
    timer.hook(first, "transformer forward")
    for name, module in list(model.named_children())[1:]:
        timer.hook(module, f"{type(module).__name__} ({name})")
    t0 = time.perf_counter()
    model.encode(texts, **kwargs)
    total = time.perf_counter() - t0
    stages = [{"stage": k, "seconds": v} for k, v in timer.seconds.items()]
    fwd = timer.seconds.get("transformer forward", 0.0)  # before the profiled pass adds to it
    stages.append(
        {
            "stage": "other (batching, device moves, cat, reorder, numpy)",
            "seconds": total - sum(timer.seconds.values()),
        }
    )

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        model.encode(texts, **kwargs)
    ops = {e.key: e.self_cpu_time_total / 1e6 for e in prof.key_averages() if e.key.startswith("aten::")}
    cats = categorise(ops)
    share = sum(cats.values()) or 1.0
    detail = [
        {"stage": k, "seconds": fwd * v / share, "detail": True}
        for k, v in sorted(cats.items(), key=lambda kv: -kv[1])
    ]
    at = next(i for i, s in enumerate(stages) if s["stage"] == "transformer forward") + 1
    stages[at:at] = detail
    return {
        "wall_s": total,
        "stages": stages,
        "max_batch_tokens": args.max_batch_tokens,
        "threads": torch.get_num_threads(),
    }


SYSTEMS = {"profile": run_profile}
