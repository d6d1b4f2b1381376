"""Image inputs of multimodal (CLIP-style) models: which encode inputs are images, how each is read, how they run."""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from embedder import batching, encode_loop

IMAGE_MODALITY = "image"
# The suffixes that make a string an image path or URL for sentence-transformers (base/modality.py).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".tiff", ".webp")


def accepts_images(module: Any) -> bool:
    """Whether a pipeline's first module embeds images (it has `preprocess_images`)."""
    return callable(getattr(module, "preprocess_images", None))


def is_image(value: Any, *, strings: bool) -> bool:
    """Whether encode takes `value` as an image: a PIL image, encoded bytes, {"image": ...}, an (H, W, C) array,
    or with `strings` a data:image URI, an http(s) image URL or an existing local image file (sentence-transformers'
    rule for models with an image modality).
    """
    from PIL.Image import Image

    if isinstance(value, (Image, bytes, bytearray, memoryview)):
        return True
    if isinstance(value, dict):
        return set(value) == {IMAGE_MODALITY}
    if isinstance(value, (np.ndarray, torch.Tensor)):
        return value.ndim == 3
    if strings and isinstance(value, str):
        return is_image_string(value)
    return False


def is_image_string(text: str) -> bool:
    """sentence-transformers' test: a data:image URI, an http(s) URL or an existing file ending in an image suffix."""
    if text.startswith("data:image/"):
        return True
    if text.startswith(("http://", "https://")) and " " not in text:
        from urllib.parse import urlparse

        try:
            return urlparse(text).path.lower().endswith(IMAGE_EXTENSIONS)
        except ValueError:
            return False
    return text.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(text)


def decode_image(data: bytes | bytearray | memoryview) -> Any:
    """A PIL image decoded from encoded bytes (PNG, JPEG, ...); its pixels are read now, so errors show here."""
    from PIL import Image

    image = Image.open(io.BytesIO(bytes(data)))
    image.load()
    return image


def processor_input(value: Any) -> Any:
    """What the image processor gets for one image input: bytes and strings decoded, arrays and PIL as they are."""
    if isinstance(value, dict):
        value = value[IMAGE_MODALITY]
    if isinstance(value, (bytes, bytearray, memoryview)):
        return decode_image(value)
    if isinstance(value, str):
        # sentence-transformers hands strings to the processor, which reads them with this same function.
        from transformers.image_utils import load_image

        return load_image(value)
    return value


def encode_images(
    model: Any,
    values: list[Any],
    *,
    batch_size: int,
    postprocess: Callable[[torch.Tensor], torch.Tensor],
    keep_on_device: bool = False,
) -> torch.Tensor:
    """Sentence embeddings of image inputs in input order, `batch_size` per forward pass, each batch read lazily.

    Images need no sorting: the processor makes every one the same size, so batches hold no padding.
    """
    first = model[0]
    batches = batching.batches_by_count(list(range(len(values))), batch_size)
    items = ((b, first.preprocess_images([processor_input(values[i]) for i in b])) for b in batches)

    def count(batch: list[int], features: dict[str, Any]) -> None:
        model.stats["images"] = model.stats.get("images", 0) + len(batch)

    return encode_loop.run(
        model, items, model.device, postprocess=postprocess, on_batch=count, keep_on_device=keep_on_device
    )
