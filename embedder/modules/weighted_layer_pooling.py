"""WeightedLayerPooling: token embeddings as a learned weighted mean of the transformer's hidden layers."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from embedder.modules.base import Features, LoadOptions, Module, load_config, load_weights


def weighted_layer_mean(
    layers: list[torch.Tensor] | tuple[torch.Tensor, ...], weights: torch.Tensor, start: int
) -> torch.Tensor:
    """sum_i w_i * layers[start + i] / sum_i w_i, over (batch, seq, dim) hidden states."""
    stacked = torch.stack(tuple(layers))[start:]
    if stacked.shape[0] != weights.shape[0]:
        raise ValueError(
            f"WeightedLayerPooling: {stacked.shape[0]} layers from layer_start={start} on, but {weights.shape[0]} weights"
        )
    return (weights.view(-1, 1, 1, 1) * stacked).sum(dim=0) / weights.sum()


class WeightedLayerPooling(Module):
    """Replaces `token_embeddings` with a weighted mean of `all_layer_embeddings[layer_start:]`."""

    config_keys: ClassVar[tuple[str, ...]] = ("word_embedding_dimension", "layer_start", "num_hidden_layers")

    def __init__(
        self, word_embedding_dimension: int, num_hidden_layers: int = 12, layer_start: int = 4
    ) -> None:
        super().__init__()
        self.word_embedding_dimension = int(word_embedding_dimension)
        self.num_hidden_layers = int(num_hidden_layers)
        self.layer_start = int(layer_start)
        count = self.num_hidden_layers + 1 - self.layer_start  # hidden states include the embedding layer
        if count <= 0:
            raise ValueError(
                f"layer_start={layer_start} leaves no layers of num_hidden_layers={num_hidden_layers} (+1)"
            )
        self.layer_weights = nn.Parameter(torch.ones(count, dtype=torch.float32))

    def forward(self, features: Features) -> Features:
        layers = features.get("all_layer_embeddings")
        # Without hidden states there is nothing to weigh; sentence-transformers passes the features through too.
        if layers is not None:
            features["token_embeddings"] = weighted_layer_mean(layers, self.layer_weights, self.layer_start)
        return features

    def get_embedding_dimension(self) -> int:
        """Width of each token embedding (unchanged)."""
        return self.word_embedding_dimension

    get_word_embedding_dimension = get_embedding_dimension

    def get_config_dict(self) -> dict[str, Any]:
        """The legacy key name `word_embedding_dimension`, which every sentence-transformers version reads."""
        return {
            "word_embedding_dimension": self.word_embedding_dimension,
            "layer_start": self.layer_start,
            "num_hidden_layers": self.num_hidden_layers,
        }

    @classmethod
    def load(cls, path: str, options: LoadOptions | None = None) -> WeightedLayerPooling:
        """Read either key name for the width (`word_embedding_dimension` or 6.x's `embedding_dimension`)."""
        config = load_config(path, cls.config_file_name)
        dim = config.get("word_embedding_dimension", config.get("embedding_dimension"))
        if dim is None:
            raise ValueError(f"{path}/{cls.config_file_name}: missing 'word_embedding_dimension'")
        module = cls(dim, config.get("num_hidden_layers", 12), config.get("layer_start", 4))
        load_weights(module, path, options)
        return module
