"""Precisions and backends on CPU: speed and quality of each encode against sentence-transformers fp32.

`python -m bench.precision [--limit 2000] [--chunks 4] [--profile]` prints the CPU, the GEMM peaks, the bf16
compute bound and one table: sentence-transformers fp32 and with bf16 weights; ours at each compute precision,
int8 dynamic, and on ONNX Runtime and OpenVINO where installed. Every variant encodes the same chunks back to
back in rotating order (paired, so ratios hold on a shared machine); quality is against sentence-transformers
fp32 on the whole corpus: min and mean cosine, top-10 neighbour overlap.
"""

from __future__ import annotations

import argparse
import json
import statistics
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from bench.corpus import load_corpus, model_path, token_counts
from bench.encode_defaults import paired
from bench.limits import compute_bound, matmul_peak
from bench.metrics import cosine_stats, flops_per_token, top_k_overlap

Encode = Callable[[list[str]], np.ndarray]
REFERENCE = "ST fp32"


def build_variants(names: list[str]) -> dict[str, Encode]:
    """Label -> encode function for each variant named (see VARIANTS), each model loaded once."""
    return {VARIANTS[n][0]: VARIANTS[n][1]() for n in names}


def st_variant(bf16: bool) -> Encode:
    """sentence-transformers encode, batch 32; bf16: the whole model cast (model.to(torch.bfloat16))."""
    import torch
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(model_path(), device="cpu")
    if bf16:
        model.to(torch.bfloat16)
    return lambda texts: np.asarray(model.encode(texts, batch_size=32), dtype=np.float32)


def ours_variant(**kwargs: Any) -> Encode:
    """Our encode with its defaults (token batching, packed forward), the model built with `kwargs`."""
    from embedder import EmbeddingModel

    batching = kwargs.pop("batching", "auto")
    model = EmbeddingModel(model_path(), device="cpu", **kwargs)
    return lambda texts: np.asarray(model.encode(texts, batching=batching), dtype=np.float32)


def int8_variant() -> Encode:
    """Our encode with the transformer's Linear layers int8-quantised (torch.ao quantize_dynamic, per tensor)."""
    import torch

    from embedder import EmbeddingModel

    model = EmbeddingModel(model_path(), device="cpu", packed=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's deprecation notice in favour of torchao
        model[0].auto_model = torch.ao.quantization.quantize_dynamic(
            model[0].auto_model, {torch.nn.Linear}, dtype=torch.qint8
        )
    return lambda texts: np.asarray(model.encode(texts, batching="sentence-transformers"), dtype=np.float32)


def backend_variant(backend: str, ov_config: dict[str, str] | None = None) -> Encode:
    """Our encode with the Transformer exported to ONNX Runtime or OpenVINO (float32 graph; `ov_config` hints)."""
    from embedder import EmbeddingModel

    kwargs = {"ov_config": ov_config} if ov_config else {}
    model = EmbeddingModel(model_path(), device="cpu", backend=backend, model_kwargs=kwargs)
    return lambda texts: np.asarray(model.encode(texts), dtype=np.float32)


VARIANTS: dict[str, tuple[str, Callable[[], Encode]]] = {
    "st": (REFERENCE, lambda: st_variant(False)),
    "st_bf16": ("ST bf16 weights", lambda: st_variant(True)),
    "ours": ("ours fp32 (default)", lambda: ours_variant()),
    "ours_bf16": ("ours bf16 autocast", lambda: ours_variant(compute_precision="bfloat16")),
    "ours_bf16_weights": (
        "ours bf16 weights (dtype=bfloat16)",
        lambda: ours_variant(dtype="bfloat16", batching="tokens"),
    ),
    "ours_int8": ("ours int8-dynamic (HF fwd)", int8_variant),
    "ours_onnx": ("ours backend='onnx' (fp32 graph)", lambda: backend_variant("onnx")),
    "ours_openvino": ("ours backend='openvino' (f32)", lambda: backend_variant("openvino")),
    "ours_openvino_bf16": (
        "ours backend='openvino', bf16 hint (OpenVINO's own default here)",
        lambda: backend_variant("openvino", {"INFERENCE_PRECISION_HINT": "bf16"}),
    ),
}
# Variants that need an optional extra; left out of the default list when it is not installed.
NEEDS = {"ours_onnx": "onnxruntime", "ours_openvino": "openvino", "ours_openvino_bf16": "openvino"}


def installed_variants() -> list[str]:
    """Every variant whose optional package is importable here."""
    import importlib.util

    return [n for n in VARIANTS if n not in NEEDS or importlib.util.find_spec(NEEDS[n]) is not None]


def time_paired(fns: dict[str, Encode], texts: list[str], chunks: int) -> tuple[dict, dict]:
    """(seconds per variant per chunk, vectors per variant) with each chunk run by all, rotating who goes first."""
    bounds = np.linspace(0, len(texts), max(1, chunks) + 1).astype(int)
    seconds, outs = paired(fns, [texts[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)])
    return seconds, {n: np.concatenate(v) for n, v in outs.items()}


def table(seconds: dict, vectors: dict, n_texts: int, bound_texts_s: float) -> list[str]:
    """Markdown rows: texts/s, × ST fp32 (total and median chunk), % of the bf16 bound, quality vs ST fp32."""
    ref_s, ref_v = seconds[REFERENCE], vectors[REFERENCE]
    rows = [
        "| variant | texts/s | × ST fp32 | × per chunk (median) | % of bf16 bound | min cos | mean cos | top-10 overlap |",
        "| :--- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, secs in seconds.items():
        rate = n_texts / sum(secs)
        median = statistics.median(a / b for a, b in zip(ref_s, secs, strict=True))
        q = cosine_stats(vectors[name], ref_v)
        overlap = top_k_overlap(vectors[name], ref_v, 10)
        rows.append(
            f"| {name} | {rate:,.1f} | {sum(ref_s) / sum(secs):.2f}× | {median:.2f}× | "
            f"{100 * rate / bound_texts_s:.0f}% | {q['min_cosine']:.6f} | {q['mean_cosine']:.6f} | {overlap:.4f} |"
        )
    return rows


def profile_top_ops(texts: list[str], rows: int = 8) -> str:
    """torch.profiler's top ops by self CPU time for our bf16 encode of `texts`."""
    from torch.profiler import ProfilerActivity, profile

    fn = ours_variant(compute_precision="bfloat16")
    fn(texts[:64])
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn(texts)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=50)


def main(argv: list[str] | None = None) -> int:
    """Print the CPU, the peaks, the bound and the table."""
    p = argparse.ArgumentParser(prog="python -m bench.precision")
    p.add_argument("--limit", type=int, default=2000, help="texts of sample/corpus.parquet to encode")
    p.add_argument("--chunks", type=int, default=4, help="chunks the texts are cut into for paired timing")
    p.add_argument(
        "--variants",
        default=",".join(installed_variants()),
        help=f"comma-separated, of {', '.join(VARIANTS)} (default: those installed)",
    )
    p.add_argument("--profile", action="store_true", help="also print the top ops of our bf16 encode")
    a = p.parse_args(argv)
    import torch

    from embedder.cpu import cpu_features

    torch.set_num_threads(2)
    names = a.variants.split(",")
    bad = [n for n in names if n not in VARIANTS]
    if bad or names[0] != "st":
        raise SystemExit(
            f"--variants: {bad or names[0]!r}; valid: {', '.join(VARIANTS)}, the first being 'st'"
        )
    _, texts = load_corpus(limit=a.limit)
    counts = token_counts(texts, model_path())
    with open(f"{model_path()}/config.json", encoding="utf-8") as f:
        flops = flops_per_token(json.load(f), counts)
    peaks = {d: matmul_peak(d) for d in ("float32", "bfloat16")}
    tokens_per_text = sum(counts) / len(texts)
    bound = compute_bound(peaks["bfloat16"], flops) / tokens_per_text
    print(f"CPU: {cpu_features().summary()}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(
        f"GEMM peak (1024³ torch.matmul, 2 threads, best of 7): fp32 {peaks['float32']:.1f} GFLOP/s, "
        f"bf16 {peaks['bfloat16']:.1f} GFLOP/s"
    )
    print(
        f"Corpus: {len(texts):,} texts, {sum(counts):,} tokens ({tokens_per_text:.1f}/text), "
        f"{flops / 1e6:.2f} MFLOP/token; bf16 bound {bound:,.0f} texts/s, "
        f"fp32 bound {bound * peaks['float32'] / peaks['bfloat16']:,.0f} texts/s\n"
    )
    seconds, vectors = time_paired(build_variants(names), texts, a.chunks)
    print("\n".join(table(seconds, vectors, len(texts), bound)))
    if a.profile:
        print("\nTop ops, ours bf16 autocast:\n" + profile_top_ops(texts[: min(400, len(texts))]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
