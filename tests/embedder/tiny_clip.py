"""A tiny random CLIP (vision + text towers, processor, tokenizer) saved as sentence-transformers saves it."""

from __future__ import annotations

import importlib.util
import io
import os
import sys
from types import ModuleType
from typing import Any

import numpy as np
import torch

# (size, mode) of the test images: smaller, larger and non-square than the 32x32 input, and each PIL mode.
IMAGE_SHAPES = (((32, 32), "RGB"), ((45, 20), "RGBA"), ((17, 60), "L"), ((64, 48), "RGB"), ((8, 8), "RGBA"))


def _embedder_conftest() -> ModuleType:
    """tests/embedder/conftest.py by path (its tiny tokenizer), under the name tests/conftest.py gives it."""
    name = "_embedder_test_helpers"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            name, os.path.join(os.path.dirname(__file__), "conftest.py")
        )
        sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[name])
    return sys.modules[name]


def save_tiny_clip(path: str | os.PathLike, *, seed: int = 0, base_size: bool = False) -> str:
    """Write a random tiny transformers CLIP folder to `path`/hf and its sentence-transformers save to `path`/st.

    `base_size`: CLIP ViT-B/32's shapes instead (224 px images, 12 + 12 layers; random weights, for benchmarks).
    """
    from sentence_transformers import SentenceTransformer
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    helpers = _embedder_conftest()
    hf, st = os.path.join(str(path), "hf"), os.path.join(str(path), "st")
    tokenizer = helpers.save_tiny_tokenizer(hf, model_max_length=32)
    vocab = helpers.tiny_vocab()
    config = CLIPConfig(
        text_config={
            "vocab_size": len(vocab), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 4, "max_position_embeddings": 32, "pad_token_id": vocab.index("[PAD]"),
            "bos_token_id": vocab.index("[CLS]"), "eos_token_id": vocab.index("[SEP]"),
        },
        vision_config={
            "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
            "image_size": 32, "patch_size": 8,
        },
        projection_dim=16,
    )  # fmt: skip
    if base_size:
        text = {k: config.text_config.to_dict()[k] for k in ("pad_token_id", "bos_token_id", "eos_token_id")}
        config = CLIPConfig(text_config={**text, "max_position_embeddings": 77}, projection_dim=512)
    side = config.vision_config.image_size
    torch.manual_seed(seed)
    CLIPModel(config).eval().save_pretrained(hf)
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": side}, crop_size={"height": side, "width": side}
    )
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(hf)
    SentenceTransformer(hf, device="cpu").save(st)
    return st


def random_images(seed: int = 0, shapes: Any = IMAGE_SHAPES) -> list[Any]:
    """PIL images of random pixels, one per (size, mode) in `shapes`."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    for (w, h), mode in shapes:
        channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
        pixels = rng.integers(0, 256, (h, w, channels), dtype=np.uint8)
        image = Image.fromarray(pixels[..., 0] if channels == 1 else pixels)
        assert image.mode == mode, (image.mode, mode)
        out.append(image)
    return out


def png_bytes(image: Any, fmt: str = "PNG") -> bytes:
    """`image` encoded as PNG (or `fmt`) bytes."""
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return buf.getvalue()
