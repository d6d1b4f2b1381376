"""CLIP images and texts: our EmbeddingModel vs sentence-transformers on random CLIP models built in code.

    .venv/bin/python bench/bench_images.py [--n 64] [--batch-size 32] [--threads 2] [--repeats 2]

Prints a Markdown table: per model (tiny: 32 px, 2 layers; ViT-B/32 shapes: 224 px, 12 layers, random weights)
and input kind, items/s of each library, their ratio, max abs diff and 1 - min cosine of the vectors. Exits 1
when a vector is outside the parity bound (cosine >= 0.99999, max |diff| <= 1e-4).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile

import numpy as np
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from bench_encode import interleaved_best  # noqa: E402


def tiny_clip():
    """tests/embedder/tiny_clip.py by path (its model writer and random images)."""
    spec = importlib.util.spec_from_file_location(
        "tiny_clip", os.path.join(REPO, "tests", "embedder", "tiny_clip.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def compare(ours: np.ndarray, theirs: np.ndarray) -> tuple[float, float]:
    """(max abs diff, 1 - min cosine) over rows."""
    a, b = ours.astype(np.float64), theirs.astype(np.float64)
    cos = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
    return float(np.abs(a - b).max()), float(1 - cos.min())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from sentence_transformers import SentenceTransformer

    from embedder import EmbeddingModel

    clip = tiny_clip()
    rng = np.random.default_rng(0)
    sizes = [(int(w), int(h)) for w, h in rng.integers(100, 640, (args.n, 2))]
    images = clip.random_images(
        seed=1, shapes=[(s, ("RGB", "RGBA", "L")[k % 3]) for k, s in enumerate(sizes)]
    )
    words = "a photo of the big red dog cat bird in city sky over river road house tree".split()
    texts = [" ".join(rng.choice(words, int(rng.integers(2, 30)))) for _ in range(args.n)]
    print(
        f"{args.n} images ({min(sizes)}..{max(sizes)} px, RGB/RGBA/L) and texts, batch {args.batch_size}, {args.threads} threads\n"
    )
    print(
        "| model | input | ours items/s | sentence-transformers items/s | ours / ST | max abs diff | 1 - min cos |"
    )
    print("| :--- | :--- | ---: | ---: | ---: | ---: | ---: |")
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        for name, base in (
            ("tiny (32 px, 2+2 layers)", False),
            ("ViT-B/32 shapes (224 px, 12+12 layers)", True),
        ):
            folder = clip.save_tiny_clip(os.path.join(tmp, name[:4]), base_size=base)
            ours, theirs = EmbeddingModel(folder, device="cpu"), SentenceTransformer(folder, device="cpu")
            for kind, inputs in (("images", images), ("texts", texts)):
                fns = {
                    "ours": lambda x=inputs, m=ours: m.encode(x, batch_size=args.batch_size),
                    "st": lambda x=inputs, m=theirs: m.encode(x, batch_size=args.batch_size),
                }
                best, out = interleaved_best(fns, args.repeats)
                diff, cos = compare(out["ours"], out["st"])
                ok &= diff <= 1e-4 and cos <= 1e-5
                rate = {k: len(inputs) / v for k, v in best.items()}
                print(
                    f"| {name} | {kind} | {rate['ours']:.1f} | {rate['st']:.1f} | {rate['ours'] / rate['st']:.2f} | {diff:.1e} | {cos:.1e} |"
                )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
