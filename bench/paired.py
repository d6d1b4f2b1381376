"""Paired A/B timing in one process: each variant encodes the same chunk back to back, in rotating order.

On a shared machine the load drifts between separate runs; variants timed on the same chunk moments apart see
the same load, so their ratio holds even when absolute speeds do not.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from bench.corpus import model_path
from bench.metrics import parity
from bench.systems import WARMUP_TEXTS, read_input
from embedder.encode_loop import CPU_BATCH_TOKENS

VARIANTS = ("st", "ours", "budget", "tokensorted")


def default_variants(budget: int = CPU_BATCH_TOKENS) -> str:
    """ST batch 32 (the reference), our encode with a token budget, our forward on token-sorted batches of 32."""
    return f"st:32,budget:{budget},tokensorted:32"


def token_sorted_encode(model: Any, texts: list[str], batch_size: int) -> np.ndarray:
    """Our model's forward on batches of `batch_size` texts sorted by token count (not characters)."""
    import torch

    from embedder import batching

    first = model[0]
    lengths = first.text_lengths(texts)
    order = batching.length_order(lengths)
    out = torch.empty(len(texts), model.get_embedding_dimension())
    with torch.inference_mode():
        for b in batching.batches_by_count(order, batch_size):
            out[torch.tensor(b)] = model(first.preprocess([texts[i] for i in b]))["sentence_embedding"]
    return out.numpy()


def build_variants(specs: list[str]) -> dict[str, Callable[[list[str]], np.ndarray]]:
    """`name:value` -> encode function (value: batch size, or tokens per batch), loading each model once."""
    fns: dict[str, Callable[[list[str]], np.ndarray]] = {}
    ours = st = None
    for spec in specs:
        name, _, value = spec.partition(":")
        if name not in VARIANTS or not value.isdigit():
            raise ValueError(
                f"bad paired variant {spec!r}; expected NAME:NUMBER with NAME one of {', '.join(VARIANTS)}"
            )
        n = int(value)
        if name == "st":
            if st is None:
                from sentence_transformers import SentenceTransformer

                st = SentenceTransformer(model_path(), device="cpu")
            fns[spec] = lambda t, m=st, n=n: m.encode(t, batch_size=n)
            continue
        if ours is None:
            from embedder import EmbeddingModel

            ours = EmbeddingModel(model_path(), device="cpu")
        if name == "ours":
            fns[spec] = lambda t, m=ours, n=n: np.asarray(
                m.encode(t, batch_size=n, batching="sentence-transformers")
            )
        elif name == "budget":
            fns[spec] = lambda t, m=ours, n=n: np.asarray(m.encode(t, max_batch_tokens=n))
        else:
            fns[spec] = lambda t, m=ours, n=n: token_sorted_encode(m, t, n)
    return fns


def run_paired(args: argparse.Namespace) -> dict[str, Any]:
    """Time every variant on each of `--chunks` chunks, rotating which goes first; totals, ratios and parity."""
    _, texts = read_input(args.input)
    names = (args.variants or default_variants()).split(",")
    fns = build_variants(names)
    for fn in fns.values():
        fn(texts[:WARMUP_TEXTS])
    k = max(1, min(args.chunks, len(texts)))
    bounds = np.linspace(0, len(texts), k + 1).astype(int)
    seconds: dict[str, list[float]] = {n: [] for n in names}
    outs: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for c in range(k):
        chunk = texts[bounds[c] : bounds[c + 1]]
        for j in range(len(names)):
            name = names[(c + j) % len(names)]
            t0 = time.perf_counter()
            outs[name].append(fns[name](chunk))
            seconds[name].append(time.perf_counter() - t0)
    ref = names[0]
    ref_emb = np.concatenate(outs[ref])
    result: dict[str, Any] = {
        "wall_s": sum(sum(v) for v in seconds.values()),
        "reference": ref,
        "chunks": k,
        "variants": {},
    }
    for name in names:
        ratios = [a / b for a, b in zip(seconds[ref], seconds[name], strict=True)]
        result["variants"][name] = {
            "seconds": sum(seconds[name]),
            "texts_s": len(texts) / sum(seconds[name]),
            "speedup_total": sum(seconds[ref]) / sum(seconds[name]),
            "speedup_median_chunk": statistics.median(ratios),
            "speedup_min_chunk": min(ratios),
            "speedup_max_chunk": max(ratios),
            "parity": parity(np.concatenate(outs[name]), ref_emb),
        }
    np.save(os.path.join(args.out, "emb.npy"), ref_emb)
    return result


SYSTEMS = {"paired": run_paired}
