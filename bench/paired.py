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

VARIANTS = ("st_b32", "ours_b32", "ours_budget", "varlen")


def build_variants(names: list[str], max_batch_tokens: int) -> dict[str, Callable[[list[str]], np.ndarray]]:
    """name -> encode function, loading each model once."""
    fns: dict[str, Callable[[list[str]], np.ndarray]] = {}
    ours = None
    for name in names:
        if name not in VARIANTS:
            raise ValueError(f"unknown paired variant {name!r}; valid: {', '.join(VARIANTS)}")
        if name == "st_b32":
            from sentence_transformers import SentenceTransformer

            st = SentenceTransformer(model_path(), device="cpu")
            fns[name] = lambda t, st=st: st.encode(t, batch_size=32)
            continue
        if ours is None:
            from embedder import EmbeddingModel

            ours = EmbeddingModel(model_path(), device="cpu")
        if name == "ours_b32":
            fns[name] = lambda t, m=ours: np.asarray(m.encode(t, batch_size=32))
        elif name == "ours_budget":
            fns[name] = lambda t, m=ours: np.asarray(m.encode(t, max_batch_tokens=max_batch_tokens))
        else:
            from bench.varlen import VarlenEncoder

            fns[name] = VarlenEncoder(ours, max_tokens=max_batch_tokens).encode
    return fns


def run_paired(args: argparse.Namespace) -> dict[str, Any]:
    """Time every variant on each of `--chunks` chunks, rotating which goes first; totals, ratios and parity."""
    _, texts = read_input(args.input)
    names = list(args.variants.split(",")) if args.variants else list(VARIANTS)
    fns = build_variants(names, args.max_batch_tokens or 8192)
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
