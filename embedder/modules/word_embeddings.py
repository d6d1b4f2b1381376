"""WordEmbeddings: a whitespace tokenizer plus an embedding table (e.g. GloVe), an input module."""

from __future__ import annotations

import os
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from embedder.modules.base import (
    Features,
    InputModule,
    LoadOptions,
    load_config,
    read_state_dict,
    save_config,
    save_weights,
)
from embedder.modules.tokenizer import CLASS_PATH, WhitespaceTokenizer, check_tokenizer_class

WEIGHT_KEY = "emb_layer.weight"


class WordEmbeddings(InputModule):
    """Texts -> word ids (whitespace tokenizer) -> `token_embeddings` from an embedding table."""

    config_keys: ClassVar[tuple[str, ...]] = ("tokenizer_class", "update_embeddings", "max_seq_length")
    config_file_name: ClassVar[str] = "wordembedding_config.json"
    # As the first module it lives in the model folder's root, like sentence-transformers saves it.
    save_in_root: ClassVar[bool] = True

    def __init__(
        self,
        tokenizer: WhitespaceTokenizer,
        embedding_weights: torch.Tensor | np.ndarray | list[list[float]],
        update_embeddings: bool = False,
        max_seq_length: int = 1000000,
    ) -> None:
        super().__init__()
        if not isinstance(tokenizer, WhitespaceTokenizer):
            raise ValueError(f"tokenizer must be a WhitespaceTokenizer, got {type(tokenizer).__name__}")
        weights = torch.as_tensor(
            np.asarray(embedding_weights) if isinstance(embedding_weights, list) else embedding_weights
        )
        if weights.dim() != 2:
            raise ValueError(f"embedding_weights must be 2-D (vocab, dim), got shape {tuple(weights.shape)}")
        highest = max(tokenizer.word2idx.values(), default=-1)
        if highest >= weights.shape[0]:
            raise ValueError(
                f"the tokenizer maps words to ids up to {highest}, but embedding_weights has only {weights.shape[0]} rows"
            )
        self.tokenizer = tokenizer
        self.emb_layer = nn.Embedding(weights.shape[0], weights.shape[1])
        self.emb_layer.load_state_dict({"weight": weights})
        self.emb_layer.weight.requires_grad = bool(update_embeddings)
        self.update_embeddings = bool(update_embeddings)
        self.max_seq_length = int(max_seq_length)
        self.embeddings_dimension = int(weights.shape[1])

    def _token_ids(self, texts: list[str]) -> list[list[int]]:
        return [self.tokenizer.tokenize(text)[: self.max_seq_length] for text in texts]

    def preprocess(self, texts: list[str], *, prompt: str | None = None, task: str | None = None) -> Features:
        """Word ids right-padded with 0, the attention mask, and each text's length in words."""
        if prompt:
            texts = [prompt + text for text in texts]
        ids = self._token_ids(texts)
        lengths = [len(row) for row in ids]
        width = max([1, *lengths])
        input_ids = torch.zeros(len(ids), width, dtype=torch.long)
        attention_mask = torch.zeros(len(ids), width, dtype=torch.long)
        for i, row in enumerate(ids):
            input_ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
            attention_mask[i, : len(row)] = 1
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "sentence_lengths": torch.tensor(lengths, dtype=torch.long),
        }

    def text_lengths(self, texts: list[str]) -> list[int]:
        """Length in words (after truncation), the unit the padding is counted in."""
        return [len(row) for row in self._token_ids(texts)]

    def forward(self, features: Features) -> Features:
        features["token_embeddings"] = self.emb_layer(features["input_ids"])
        return features

    def get_embedding_dimension(self) -> int:
        """Width of each token embedding."""
        return self.embeddings_dimension

    get_word_embedding_dimension = get_embedding_dimension

    def get_config_dict(self) -> dict[str, Any]:
        """The tokenizer's class path, whether the table was trainable, and the truncation length."""
        return {
            "tokenizer_class": CLASS_PATH,
            "update_embeddings": self.update_embeddings,
            "max_seq_length": self.max_seq_length,
        }

    def save(self, path: str) -> None:
        """Write the config, `model.safetensors` (emb_layer.weight) and the tokenizer's vocabulary file."""
        os.makedirs(path, exist_ok=True)
        save_config(self.get_config_dict(), path, self.config_file_name)

        save_weights(self, path)
        self.tokenizer.save(path)

    @classmethod
    def load(cls, path: str, options: LoadOptions | None = None) -> WordEmbeddings:
        """Rebuild from the config, the tokenizer file and the weights (keyed emb_layer.weight)."""
        config = load_config(path, cls.config_file_name)
        where = os.path.join(path, cls.config_file_name)
        check_tokenizer_class(config.get("tokenizer_class", "WhitespaceTokenizer"), where)
        state = read_state_dict(path, options)
        if WEIGHT_KEY not in state:
            raise ValueError(f"{path}: weights have no {WEIGHT_KEY!r} (found {sorted(state)})")
        return cls(
            WhitespaceTokenizer.load(path),
            state[WEIGHT_KEY],
            update_embeddings=config.get("update_embeddings", False),
            max_seq_length=config.get("max_seq_length", 1000000),
        )
