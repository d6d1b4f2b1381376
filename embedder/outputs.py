"""encode's other outputs: per-text token embeddings or feature dicts, as sentence-transformers returns them."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, Literal, get_args

import torch

from embedder.modules.base import PACKED_KEY
from embedder.modules.router import TEXT_MODALITY
from embedder.quantize import quantize_embeddings

OutputValue = Literal["sentence_embedding", "token_embeddings", None]
OUTPUT_VALUES: tuple[OutputValue, ...] = get_args(OutputValue)
# Keys only our pipeline puts into the features (routing, the packed switch); sentence-transformers' lack them.
OWN_KEYS = ("task", "route", PACKED_KEY)


def check_output_value(value: object, precision: str = "float32") -> None:
    """Raise a ValueError when `value` is not one of OUTPUT_VALUES or cannot take `precision`."""
    if not (value is None or isinstance(value, str)) or value not in OUTPUT_VALUES:
        raise ValueError(f"output_value {value!r} is not supported; valid: {OUTPUT_VALUES}")
    if value is None and precision != "float32":
        # sentence-transformers fails here too: there is nothing to quantise in a dict of features.
        raise ValueError(
            f"precision {precision!r} needs output_value 'sentence_embedding' or 'token_embeddings'"
        )


def collect(
    outputs: Iterator[tuple[list[int], dict[str, Any]]],
    count: int,
    output_value: OutputValue,
    *,
    truncate_dim: int | None,
    precision: str,
    convert_to_numpy: bool,
    convert_to_tensor: bool,
) -> list[Any]:
    """Per text, in input order: its real tokens' float32 embeddings (array or tensor) or its feature dict."""
    rows: list[Any] = [None] * count
    with contextlib.closing(outputs):
        for batch, features in outputs:
            # One copy to the host per batch, not one per text.
            features = features if convert_to_tensor else _to_cpu(features)
            split = (
                _token_rows(features)
                if output_value == "token_embeddings"
                else _feature_rows(features, len(batch), truncate_dim)
            )
            for i, row in zip(batch, split, strict=True):
                rows[i] = row
    if output_value is None:
        return rows
    if precision != "float32":
        # One quantisation over all tokens: the int8 buckets are shared by all texts, as sentence-transformers does.
        lengths = [len(r) for r in rows]
        rows = list(torch.from_numpy(quantize_embeddings(torch.cat(rows), precision)).split(lengths))
    return [r.numpy() for r in rows] if convert_to_numpy and not convert_to_tensor else rows


def _token_rows(features: dict[str, Any]) -> list[torch.Tensor]:
    emb, mask = features.get("token_embeddings"), features.get("attention_mask")
    if not isinstance(emb, torch.Tensor) or not isinstance(mask, torch.Tensor):
        raise ValueError(
            "output_value 'token_embeddings' needs token_embeddings and an attention_mask; "
            f"this model's features hold {sorted(features)}"
        )
    return [row[m.bool()].float() for row, m in zip(emb, mask, strict=True)]


def _feature_rows(features: dict[str, Any], size: int, truncate_dim: int | None) -> list[dict[str, Any]]:
    features = {k: v for k, v in features.items() if k not in OWN_KEYS}
    features.setdefault("modality", TEXT_MODALITY)
    sentence = features.get("sentence_embedding")
    if truncate_dim is not None and isinstance(sentence, torch.Tensor):
        features["sentence_embedding"] = sentence[..., :truncate_dim]
    # As sentence-transformers: a tensor whose first axis is the batch is cut per text, the rest shared as is.
    return [
        {
            k: v[i] if isinstance(v, torch.Tensor) and v.ndim > 0 and v.shape[0] == size else v
            for k, v in features.items()
        }
        for i in range(size)
    ]


def _to_cpu(features: dict[str, Any]) -> dict[str, Any]:
    return {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in features.items()}
