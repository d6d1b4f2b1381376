"""Packed vs padded forward for MPNet and a Qwen3-like decoder: random mid-size models, the corpus texts, paired rounds.

    python -m bench.packed_archs [--texts 500] [--rounds 3] [--threads 2]

Each model is built in code (random weights, all-MiniLM-L6-v2's WordPiece tokenizer) and encodes the same texts
three ways, in rotating order per round: packed (token batching, what encode's default picks now), padded on the
same token batches (packed=False), and padded on sentence-transformers' batches of 32 (the default where an
architecture does not pack). Prints a Markdown table: texts/s (median round), speed-up of packed, and the max abs
diff of each variant's vectors from the packed ones.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from bench.corpus import load_corpus, model_path
from bench.report import machine_description, markdown_table
from embedder import EmbeddingModel
from embedder.modules.pooling import Pooling
from embedder.modules.transformer import Transformer

WARMUP_TEXTS = 32
ST_BATCH = 32


@dataclass(frozen=True)
class Bench:
    """One benchmark model: its HF config, how it pools and pads, and its longest input."""

    name: str
    config: Callable[[int], Any]  # vocab size -> HF config
    pooling: str
    padding_side: str
    max_seq_length: int


def mpnet_config(vocab: int) -> Any:
    """all-mpnet-base-v2's shapes (hidden 768, 12 heads, FFN 3072) with 3 of its 12 layers (a shared 2-core CPU)."""
    from transformers import MPNetConfig

    return MPNetConfig(vocab_size=vocab, num_hidden_layers=3, max_position_embeddings=514, pad_token_id=1)


def qwen3_config(vocab: int) -> Any:
    """A small Qwen3-like decoder: hidden 512, 4 layers, 8 query / 4 key-value heads of 64, FFN 1536."""
    from transformers import Qwen3Config

    return Qwen3Config(
        vocab_size=vocab,
        hidden_size=512,
        intermediate_size=1536,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=4,
        head_dim=64,
        max_position_embeddings=1024,
        pad_token_id=0,
    )


BENCHES = (
    Bench("MPNet (768 wide, 3 layers)", mpnet_config, "mean", "right", 384),
    Bench("Qwen3-like (512 wide, 4 layers, GQA 8/4)", qwen3_config, "lasttoken", "left", 512),
)


def build(bench: Bench, folder: str) -> tuple[EmbeddingModel, EmbeddingModel]:
    """(packed, padded) pipelines over one random model saved in `folder`."""
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path())
    if bench.name.startswith("MPNet"):
        tokenizer.pad_token = (
            "[unused0]"  # id 1: MPNet counts positions from its pad id, as its tokenizer pads
        )
    tokenizer.padding_side = bench.padding_side
    tokenizer.model_max_length = bench.max_seq_length
    torch.manual_seed(0)
    AutoModel.from_config(bench.config(len(tokenizer))).eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)

    def pipeline(packed: bool) -> EmbeddingModel:
        first = Transformer(folder, max_seq_length=bench.max_seq_length, packed=packed)
        pool = Pooling(first.get_word_embedding_dimension(), bench.pooling)
        return EmbeddingModel(modules=[first, pool], device="cpu")

    return pipeline(True), pipeline(False)


def run(bench: Bench, texts: list[str], rounds: int) -> list[list[str]]:
    """Table rows for one model: each variant's texts/s, packed's speed-up over it, its max abs diff."""
    with tempfile.TemporaryDirectory() as folder:
        packed, padded = build(bench, folder)
        assert packed[0].packed and not padded[0].packed
        variants: dict[str, Callable[[list[str]], np.ndarray]] = {
            "packed, token batches": lambda t: packed.encode(t),
            "padded, same token batches": lambda t: padded.encode(t, batching="tokens"),
            f"padded, ST batches of {ST_BATCH}": lambda t: padded.encode(t, batch_size=ST_BATCH),
        }
        names = list(variants)
        for fn in variants.values():
            fn(texts[:WARMUP_TEXTS])
        seconds: dict[str, list[float]] = {n: [] for n in names}
        out: dict[str, np.ndarray] = {}
        for r in range(rounds):
            for j in range(len(names)):
                name = names[(r + j) % len(names)]
                t0 = time.perf_counter()
                out[name] = np.asarray(variants[name](texts))
                seconds[name].append(time.perf_counter() - t0)
    ref = names[0]
    rows = []
    for name in names:
        ratio = statistics.median(a / b for a, b in zip(seconds[name], seconds[ref], strict=True))
        rows.append(
            [
                bench.name,
                name,
                f"{len(texts) / statistics.median(seconds[name]):.1f}",
                f"{ratio:.2f}×",
                f"{np.abs(out[name] - out[ref]).max():.1e}",
            ]
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    """Run every benchmark model and print the table with the machine it ran on."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=500, help="first N texts of sample/corpus.parquet")
    parser.add_argument("--rounds", type=int, default=3, help="paired rounds (rotating order)")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    args = parser.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    torch.set_num_threads(args.threads)
    _, texts = load_corpus(limit=args.texts)
    rows = [row for bench in BENCHES for row in run(bench, texts, args.rounds)]
    headers = ("model", "forward", "texts/s", "packed speed-up (median round)", "max abs diff vs packed")
    print(markdown_table(headers, rows))
    machine = machine_description()
    print(
        f"\n{len(texts)} corpus texts, {args.rounds} rounds; {machine['cpu']}, {machine['torch threads']} threads"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
