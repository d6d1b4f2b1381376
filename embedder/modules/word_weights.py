"""WordWeights: scale each token embedding by a per-word weight (e.g. idf) and record the weight sums."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from embedder.modules.base import Features, LoadOptions, Module, load_config
from embedder.modules.bow import word_weight_table


class WordWeights(Module):
    """token_embeddings *= weight[input_id] (masked); adds `token_weights_sum` for Pooling's mean denominators."""

    config_keys: ClassVar[tuple[str, ...]] = ("vocab", "word_weights", "unknown_word_weight")

    def __init__(
        self, vocab: list[str], word_weights: dict[str, float], unknown_word_weight: float = 1
    ) -> None:
        super().__init__()
        self.vocab = list(vocab)
        self.word_weights = dict(word_weights)
        self.unknown_word_weight = unknown_word_weight
        table = word_weight_table(self.vocab, self.word_weights, unknown_word_weight)
        self.emb_layer = nn.Embedding(len(self.vocab), 1)
        self.emb_layer.load_state_dict({"weight": torch.tensor(table, dtype=torch.float32).unsqueeze(1)})

    def forward(self, features: Features) -> Features:
        token_embeddings = features["token_embeddings"]
        weights = self.emb_layer(features["input_ids"]).squeeze(-1) * features["attention_mask"].float()
        features["token_embeddings"] = token_embeddings * weights.unsqueeze(-1)
        features["token_weights_sum"] = weights.sum(dim=1)
        return features

    @classmethod
    def load(cls, path: str, options: LoadOptions | None = None) -> WordWeights:
        """Rebuild from `config.json` alone.

        sentence-transformers also saves `model.safetensors` but rebuilds the table from the config on load;
        we do the same so that both give the same vectors for the same folder.
        """
        config = load_config(path, cls.config_file_name)
        for key in ("vocab", "word_weights"):
            if key not in config:
                raise ValueError(f"{path}/{cls.config_file_name}: missing {key!r}")
        return cls(**{k: v for k, v in config.items() if k in cls.config_keys})
