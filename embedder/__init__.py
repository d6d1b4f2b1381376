"""A sentence-transformers-compatible embedding model: load the folder format, encode texts, save it back."""

from __future__ import annotations

from embedder.model import EmbeddingModel
from embedder.quantize import quantize_embeddings

__all__ = ["EmbeddingModel", "quantize_embeddings"]
