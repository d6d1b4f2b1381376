"""Our encode on torch, ONNX Runtime and OpenVINO against sentence-transformers, paired in one process (MiniLM).

    .venv/bin/python -m bench.backends [--texts 1500] [--chunk 500] [--rounds 2]

Every variant embeds the same chunks back to back in rotating order (bench.encode_defaults.paired), so the
ratios to sentence-transformers hold while the machine's load drifts. The ONNX and OpenVINO graphs are our
exports of all-MiniLM-L6-v2 (float32), made once before timing. OpenVINO runs float32 by default; the bf16 row
uses its bf16 inference hint (what OpenVINO picks by itself on CPUs with bf16), and a second table gives its
quality against float32: min / mean cosine and the share of each text's 10 nearest texts that stay the same.
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
from bench.metrics import cosine_stats, top_k_overlap
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
    "top-10 overlap",
)
BF16 = {"INFERENCE_PRECISION_HINT": "bf16"}
F32 = "ours backend='openvino' encode() (f32)"


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
        cos = cosine_stats(vectors[name], vectors[ref])
        overlap = top_k_overlap(vectors[name], vectors[ref], 10)
        quality.append(
            (
                name,
                ref.split(",")[0],
                f"{cos['min_cosine']:.7f}",
                f"{cos['mean_cosine']:.7f}",
                f"{overlap:.3f}",
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
