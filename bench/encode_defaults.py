"""encode's defaults against sentence-transformers, paired in one process: MiniLM, and a static model vs its tokenizer.

    .venv/bin/python -m bench.encode_defaults [--texts 10000] [--rounds 7] [--minilm-texts 4000] [--minilm-chunk 1000]

MiniLM: sentence-transformers `encode` (batch 32), our `encode` with default arguments, and ours with
`batching="sentence-transformers"`, on `--minilm-texts` texts in encode calls of `--minilm-chunk`. Static: a
model2vec-style StaticEmbedding (MiniLM's WordPiece tokenizer, truncation 512, random 256-d vectors) through
sentence-transformers and through ours, against the tokenizer alone (`encode_batch` on the same texts: what
bounds a model with no forward to speak of), all `--texts` texts each round. On each chunk or round every variant
runs back to back, in rotating order, so their ratios hold while the machine's load drifts. Prints a table.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from bench.corpus import load_corpus, model_path
from bench.metrics import parity
from bench.report import fmt, machine_description, markdown_table
from bench.sampler import machine_busy_s

STATIC_DIM = 256
STATIC_MAX_LENGTH = 512  # what model2vec saves as the tokenizer's truncation
WARMUP_TEXTS = 64
HEADERS = (
    "model",
    "system",
    "texts/s",
    "× ST (per chunk/round: median, min–max)",
    "% of tokenizer bound",
    "min cos vs ST",
    "max abs diff vs ST",
)


def varied_texts(n: int) -> list[str]:
    """`n` texts: the corpus, then copies of it with each text's words rotated by the copy's number."""
    _, corpus = load_corpus()
    out: list[str] = []
    copy = 0
    while len(out) < n:
        for text in corpus[: n - len(out)]:
            words = text.split()
            k = copy % max(len(words), 1)
            out.append(" ".join(words[k:] + words[:k]) if copy else text)
        copy += 1
    return out


def paired(
    fns: dict[str, Callable[[list[str]], Any]], chunks: list[list[str]]
) -> tuple[dict[str, list[float]], dict[str, list[Any]]]:
    """Seconds and output of every function on every chunk, the functions back to back in rotating order."""
    names = list(fns)
    for fn in fns.values():
        fn(chunks[0][:WARMUP_TEXTS])
    seconds: dict[str, list[float]] = {n: [] for n in names}
    outputs: dict[str, list[Any]] = {n: [] for n in names}
    for c, chunk in enumerate(chunks):
        for j in range(len(names)):
            name = names[(c + j) % len(names)]
            t0 = time.perf_counter()
            outputs[name].append(fns[name](chunk))
            seconds[name].append(time.perf_counter() - t0)
    return seconds, outputs


def table_rows(
    model: str,
    seconds: dict[str, list[float]],
    vectors: dict[str, np.ndarray | None],
    texts_per_round: list[int],
    bound: str | None = None,
) -> list[tuple[str, ...]]:
    """One table row per variant; ratios are to the first variant (sentence-transformers), per chunk or round."""
    ref = next(iter(seconds))
    rows = []
    for name, secs in seconds.items():
        ratios = [a / b for a, b in zip(seconds[ref], secs, strict=True)]
        of_bound = (
            fmt(statistics.median(b / s for b, s in zip(seconds[bound], secs, strict=True)), ".0%")
            if bound
            else "–"
        )
        check = parity(vectors[name], vectors[ref]) if vectors.get(name) is not None else None
        rows.append(
            (
                model,
                name,
                fmt(sum(texts_per_round) / sum(secs), ",.0f"),
                f"{statistics.median(ratios):.2f}× ({min(ratios):.2f}–{max(ratios):.2f})",
                of_bound,
                fmt(check and check["min_cosine"], ".7f"),
                fmt(check and check["max_abs_diff"], ".1e"),
            )
        )
    return rows


def minilm_rows(texts: list[str], chunk: int) -> list[tuple[str, ...]]:
    """sentence-transformers vs our encode by default and with sentence-transformers' batching, on MiniLM."""
    from sentence_transformers import SentenceTransformer

    from embedder import EmbeddingModel

    st = SentenceTransformer(model_path(), device="cpu")
    ours = EmbeddingModel(model_path(), device="cpu")
    fns = {
        "sentence-transformers encode(batch_size=32)": lambda t: st.encode(t, batch_size=32),
        "ours encode() (default)": lambda t: ours.encode(t),
        "ours encode(batching='sentence-transformers')": lambda t: ours.encode(
            t, batching="sentence-transformers"
        ),
    }
    chunks = [texts[i : i + chunk] for i in range(0, len(texts), chunk)]
    seconds, outputs = paired(fns, chunks)
    vectors = {name: np.concatenate(outs) for name, outs in outputs.items()}
    return table_rows("all-MiniLM-L6-v2", seconds, vectors, [len(c) for c in chunks])


def static_rows(texts: list[str], rounds: int) -> list[tuple[str, ...]]:
    """sentence-transformers vs ours on a StaticEmbedding model, and the tokenizer's batch call alone."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import StaticEmbedding as STStatic
    from tokenizers import Tokenizer

    from embedder import EmbeddingModel
    from embedder.modules.static_embedding import StaticEmbedding

    def tokenizer() -> Tokenizer:
        tok = Tokenizer.from_file(os.path.join(model_path(), "tokenizer.json"))
        tok.no_padding()
        tok.enable_truncation(STATIC_MAX_LENGTH)
        return tok

    tok = tokenizer()
    weights = torch.randn(tok.get_vocab_size(), STATIC_DIM, generator=torch.Generator().manual_seed(0))
    st = SentenceTransformer(modules=[STStatic(tokenizer(), embedding_weights=weights)], device="cpu")
    ours = EmbeddingModel(modules=[StaticEmbedding(tokenizer(), embedding_weights=weights)], device="cpu")
    bound = "tokenizer.encode_batch alone (the bound)"
    fns = {
        "sentence-transformers encode(batch_size=32)": lambda t: st.encode(t, batch_size=32),
        "ours encode() (default)": lambda t: ours.encode(t),
        "ours encode(batching='tokens')": lambda t: ours.encode(t, batching="tokens"),
        "ours encode(batching='sentence-transformers')": lambda t: ours.encode(
            t, batching="sentence-transformers"
        ),
        bound: lambda t: tok.encode_batch(t, add_special_tokens=False),
        "tokenizer.encode_batch_fast alone": lambda t: tok.encode_batch_fast(t, add_special_tokens=False),
    }
    seconds, outputs = paired(fns, [texts] * rounds)
    vectors = {name: outs[0] if isinstance(outs[0], np.ndarray) else None for name, outs in outputs.items()}
    label = f"StaticEmbedding ({STATIC_DIM}-d, WordPiece)"
    return table_rows(label, seconds, vectors, [len(texts)] * rounds, bound=bound)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--texts", type=int, default=10_000, help="texts per round for the static model")
    parser.add_argument("--rounds", type=int, default=7, help="paired rounds of the static model")
    parser.add_argument("--minilm-texts", type=int, default=4_000, help="MiniLM texts (the whole corpus)")
    parser.add_argument("--minilm-chunk", type=int, default=1_000, help="MiniLM texts per encode call")
    args = parser.parse_args(argv)

    busy0, own0, t0 = machine_busy_s(), time.process_time(), time.perf_counter()
    texts = varied_texts(max(args.texts, args.minilm_texts))
    rows = minilm_rows(texts[: args.minilm_texts], args.minilm_chunk)
    rows += static_rows(texts[: args.texts], args.rounds)
    wall = time.perf_counter() - t0
    other = (machine_busy_s() - busy0 - (time.process_time() - own0)) / wall
    machine = machine_description()
    print(
        f"CPU: {machine['cpu']}; cores {machine['cores']}; torch {machine['torch']} ({machine['torch threads']} "
        f"threads); sentence-transformers {machine.get('sentence-transformers', '–')}"
    )
    print(
        f"MiniLM: {args.minilm_texts:,} texts, {args.minilm_chunk:,} per encode call; static: {args.texts:,} texts "
        f"× {args.rounds} rounds (sample/corpus.parquet, repeated with each copy's words rotated)"
    )
    print(f"Other load on the machine while this ran: {other:.2f} cores on average; {wall:.0f} s in all")
    print()
    print(markdown_table(HEADERS, rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
