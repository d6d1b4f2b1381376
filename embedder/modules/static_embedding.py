"""StaticEmbedding: a text's vector is the mean of its tokens' trained vectors (sentence-transformers / model2vec)."""

from __future__ import annotations

import os
from itertools import chain
from typing import Any, ClassVar

import numpy as np
import torch
from tokenizers import Tokenizer

from embedder.modules.base import Features, InputModule, LoadOptions, read_state_dict, save_weights

TOKENIZER_NAME = "tokenizer.json"
# sentence-transformers stores the bag as `embedding.weight`; model2vec stores `embeddings` (+ optional
# `mapping` from token id to row and per-token `weights`, for vocabulary-quantised models).
ST_WEIGHT_KEY = "embedding.weight"
M2V_WEIGHT_KEY = "embeddings"


class StaticEmbedding(InputModule):
    """A `tokenizers.Tokenizer` plus an `nn.EmbeddingBag` that averages the token vectors of each text."""

    save_in_root: ClassVar[bool] = True
    rowwise: ClassVar[bool] = True
    pads: ClassVar[bool] = False

    def __init__(
        self,
        tokenizer: Tokenizer,
        embedding_weights: np.ndarray | torch.Tensor | None = None,
        embedding_dim: int | None = None,
    ) -> None:
        super().__init__()
        tokenizer = _as_rust_tokenizer(tokenizer)
        if embedding_weights is not None:
            weights = torch.as_tensor(embedding_weights).float()
            if weights.ndim != 2:
                raise ValueError(
                    f"embedding_weights must be 2-D (vocab, dim), got shape {tuple(weights.shape)}"
                )
            self.embedding = torch.nn.EmbeddingBag.from_pretrained(weights, freeze=False, mode="mean")
        elif embedding_dim is not None:
            self.embedding = torch.nn.EmbeddingBag(tokenizer.get_vocab_size(), embedding_dim, mode="mean")
        else:
            raise ValueError("StaticEmbedding needs embedding_weights or embedding_dim")
        self.tokenizer = tokenizer
        # Texts are bagged, never padded; a truncation set in tokenizer.json stays active, as in
        # sentence-transformers (model2vec saves its max_length there).
        self.tokenizer.no_padding()

    @property
    def embedding_dim(self) -> int:
        """Width of each token vector (and of the output)."""
        return self.embedding.embedding_dim

    @property
    def max_seq_length(self) -> int | None:  # type: ignore[override]
        """The tokenizer's truncation length, or None when texts are never cut (sentence-transformers says inf)."""
        truncation = self.tokenizer.truncation
        return truncation["max_length"] if truncation else None

    @max_seq_length.setter
    def max_seq_length(self, value: int | None) -> None:
        if value is None:
            self.tokenizer.no_truncation()
        else:
            self.tokenizer.enable_truncation(int(value))

    def get_embedding_dimension(self) -> int:
        """The length of the vectors this module outputs."""
        return self.embedding_dim

    def get_config_dict(self) -> dict[str, Any]:
        """No constructor config: the tokenizer and the weights are the whole module."""
        return {}

    def preprocess(self, texts: list[str], *, prompt: str | None = None, task: str | None = None) -> Features:
        """Tokenise `prompt + text` without special tokens into one flat id tensor plus each text's start offset."""
        if prompt:
            texts = [prompt + t for t in texts]
        ids = self._token_ids(texts)
        lengths = [len(x) for x in ids]
        offsets = torch.tensor(np.cumsum([0] + lengths[:-1]), dtype=torch.long)
        input_ids = torch.from_numpy(np.fromiter(chain.from_iterable(ids), np.int64, sum(lengths)))
        features: Features = {"input_ids": input_ids, "offsets": offsets}
        if task is not None:
            features["task"] = task
        return features

    def text_lengths(self, texts: list[str]) -> list[int]:
        """Token counts per text (after any truncation), what batching sorts and budgets by."""
        return [len(x) for x in self._token_ids(texts)]

    def _token_ids(self, texts: list[str]) -> list[list[int]]:
        """Each text's token ids, no special tokens; the batch call without offsets (same ids, less work)."""
        return [enc.ids for enc in self.tokenizer.encode_batch_fast(list(texts), add_special_tokens=False)]

    def forward(self, features: Features) -> Features:
        # An empty bag (a text with no tokens) comes out as a zero vector, as in sentence-transformers and model2vec.
        features["sentence_embedding"] = self.embedding(features["input_ids"], features["offsets"])
        return features

    def save(self, path: str) -> None:
        """Write `model.safetensors` (key `embedding.weight`) and `tokenizer.json`, the files sentence-transformers writes."""
        os.makedirs(path, exist_ok=True)
        save_weights(self, path)
        self.tokenizer.save(os.path.join(path, TOKENIZER_NAME))

    @classmethod
    def load(cls, path: str, options: LoadOptions | None = None) -> StaticEmbedding:
        """Load a sentence-transformers StaticEmbedding folder or a model2vec folder."""
        tok_file = os.path.join(path, TOKENIZER_NAME)
        if not os.path.exists(tok_file):
            raise FileNotFoundError(f"{path}: no {TOKENIZER_NAME} for StaticEmbedding")
        tokenizer = Tokenizer.from_file(tok_file)
        state = read_state_dict(path, options)
        if ST_WEIGHT_KEY in state:
            weights = state[ST_WEIGHT_KEY]
        elif M2V_WEIGHT_KEY in state:
            weights = fold_model2vec_weights(
                state[M2V_WEIGHT_KEY], state.get("mapping"), state.get("weights")
            )
        else:
            raise ValueError(
                f"{path}: StaticEmbedding weights need key {ST_WEIGHT_KEY!r} or {M2V_WEIGHT_KEY!r}; found {sorted(state)}"
            )
        vocab = tokenizer.get_vocab_size()
        if weights.shape[0] < vocab:
            raise ValueError(
                f"{path}: {weights.shape[0]} embedding rows but the tokenizer has {vocab} tokens"
            )
        return cls(tokenizer, embedding_weights=weights)


def fold_model2vec_weights(
    embeddings: torch.Tensor, mapping: torch.Tensor | None = None, token_weights: torch.Tensor | None = None
) -> torch.Tensor:
    """One float32 row per token id: `embeddings[mapping[id]] * token_weights[id]`, what model2vec averages."""
    rows = embeddings.float()
    if mapping is not None:
        rows = rows[mapping.long()]
    if token_weights is not None:
        if token_weights.shape[0] != rows.shape[0]:
            raise ValueError(
                f"model2vec weights: {token_weights.shape[0]} token weights for {rows.shape[0]} tokens"
            )
        rows = rows * token_weights.float()[:, None]
    return rows.contiguous()


def _as_rust_tokenizer(tokenizer: Any) -> Tokenizer:
    """Accept a `tokenizers.Tokenizer` or a transformers fast tokenizer (which wraps one)."""
    if isinstance(tokenizer, Tokenizer):
        return tokenizer
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if isinstance(backend, Tokenizer):
        return backend
    raise ValueError(
        f"StaticEmbedding needs a fast tokenizer (tokenizers.Tokenizer), got {type(tokenizer).__name__}"
    )
