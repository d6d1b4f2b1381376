"""Our encode on torch, ONNX Runtime and OpenVINO against sentence-transformers, paired in one process (MiniLM).

    .venv/bin/python -m bench.backends [--texts 1500] [--chunk 500] [--rounds 2] [--queries 200]

Every variant embeds the same chunks back to back in rotating order (bench.encode_defaults.paired), so the
ratios to sentence-transformers hold while the machine's load drifts. The ONNX and OpenVINO graphs are our
exports of all-MiniLM-L6-v2 (float32), made once before timing. OpenVINO runs float32 by default; the bf16 row
uses its bf16 inference hint (what OpenVINO picks by itself on CPUs with bf16), and a second table gives its
quality against float32: min / mean cosine and how many of each query's 10 nearest texts stay the same.
Prints two tables.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from bench.corpus import model_path
from bench.encode_defaults import paired, table_rows, varied_texts
from bench.report import machine_description, markdown_table
from bench.sampler import machine_busy_s

HEADERS = (
    "model",
    "system",
    "texts/s",
    "× ST (per chunk: median, min–max)",
    "min cos vs ST",
    "max abs diff vs ST",
)
QUALITY_HEADERS = (
    "variant",
    "vs",
    "min cosine",
    "mean cosine",
    "top-10 overlap (mean)",
    "top-10 overlap (min)",
)
BF16 = {"INFERENCE_PRECISION_HINT": "bf16"}
F32 = "ours backend='openvino' encode() (f32)"


def top_k_overlap(a: np.ndarray, b: np.ndarray, queries: int, k: int = 10) -> tuple[float, float]:
    """(mean, min) share of each of the first `queries` rows' k nearest rows (cosine) that a and b agree on."""
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    near_a = np.argsort(-(a[:queries] @ a.T), axis=1)[:, :k]
    near_b = np.argsort(-(b[:queries] @ b.T), axis=1)[:, :k]
    shares = [len(set(x) & set(y)) / k for x, y in zip(near_a, near_b, strict=True)]
    return float(np.mean(shares)), float(np.min(shares))


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine of two embedding matrices."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def bf16_available() -> bool:
    """Whether OpenVINO's CPU plugin can run bf16 here."""
    import openvino as ov

    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def variants() -> dict[str, Callable[[list[str]], Any]]:
    """The systems compared, sentence-transformers first (the reference)."""
    from sentence_transformers import SentenceTransformer

    from embedder import EmbeddingModel

    path = model_path()
    st = SentenceTransformer(path, device="cpu")
    torch_model = EmbeddingModel(path, device="cpu")
    onnx = EmbeddingModel(path, device="cpu", backend="onnx")
    openvino = EmbeddingModel(path, device="cpu", backend="openvino")
    fns: dict[str, Callable[[list[str]], Any]] = {
        "sentence-transformers encode(batch_size=32), torch": lambda t: st.encode(t, batch_size=32),
        "ours encode(), torch (default)": lambda t: torch_model.encode(t),
        "ours backend='onnx' encode()": lambda t: onnx.encode(t),
        "ours backend='onnx' encode(max_batch_tokens=4096)": lambda t: onnx.encode(t, max_batch_tokens=4096),
        F32: lambda t: openvino.encode(t),
    }
    if bf16_available():
        bf16 = EmbeddingModel(path, device="cpu", backend="openvino", model_kwargs={"ov_config": BF16})
        fns["ours backend='openvino' encode(), bf16 hint"] = lambda t: bf16.encode(t)
    return fns


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--texts", type=int, default=1_500, help="texts (sample/corpus.parquet, first N)")
    parser.add_argument("--chunk", type=int, default=500, help="texts per encode call")
    parser.add_argument("--rounds", type=int, default=2, help="passes over the texts")
    parser.add_argument("--queries", type=int, default=200, help="rows whose 10 nearest texts are compared")
    args = parser.parse_args(argv)

    texts = varied_texts(args.texts)
    fns = variants()
    busy0, own0, t0 = machine_busy_s(), time.process_time(), time.perf_counter()
    chunks = [texts[i : i + args.chunk] for i in range(0, len(texts), args.chunk)]
    seconds, outputs = paired(fns, chunks * args.rounds)
    wall = time.perf_counter() - t0
    other = (machine_busy_s() - busy0 - (time.process_time() - own0)) / wall
    vectors = {name: np.concatenate(outs[: len(chunks)]) for name, outs in outputs.items()}
    rows = table_rows("all-MiniLM-L6-v2", seconds, vectors, [len(c) for c in chunks] * args.rounds)
    rows = [row[:4] + row[5:] for row in rows]  # no tokenizer-bound column here

    names = list(fns)
    pairs = [(name, names[0]) for name in names[2:]]
    pairs += [(name, F32) for name in names if name != F32 and name.startswith("ours backend='openvino'")]
    quality = []
    for name, ref in pairs:
        cos = cosines(vectors[name], vectors[ref])
        mean, low = top_k_overlap(vectors[name], vectors[ref], args.queries)
        quality.append(
            (
                name,
                ref.split(",")[0],
                f"{cos.min():.7f}",
                f"{cos.mean():.7f}",
                f"{mean:.3f}",
                f"{low:.1f}",
            )
        )

    import onnxruntime
    import openvino

    machine = machine_description()
    print(
        f"CPU: {machine['cpu']}; cores {machine['cores']}; torch {machine['torch']} ({machine['torch threads']} "
        f"threads); onnxruntime {onnxruntime.__version__}; openvino {openvino.__version__}; "
        f"sentence-transformers {machine.get('sentence-transformers', '–')}"
    )
    print(
        f"{len(texts):,} texts (sample/corpus.parquet), {args.chunk:,} per encode call, {args.rounds} rounds; "
        f"other load on the machine: {other:.2f} cores on average; {wall:.0f} s in all"
    )
    print()
    print(markdown_table(HEADERS, rows))
    print()
    print(markdown_table(QUALITY_HEADERS, quality))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
