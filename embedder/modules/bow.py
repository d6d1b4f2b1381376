"""BoW: bag-of-words sentence vectors over a fixed vocabulary (optionally tf-idf weighted), an input module."""

from __future__ import annotations

from typing import ClassVar

import torch

from embedder.modules.base import Features, InputModule, LoadOptions, load_config
from embedder.modules.tokenizer import WhitespaceTokenizer


def word_weight_table(
    vocab: list[str], word_weights: dict[str, float], unknown_word_weight: float
) -> list[float]:
    """One weight per vocab word: its own weight, else its lowercase form's, else `unknown_word_weight`."""
    table = []
    for word in vocab:
        weight = word_weights.get(word)
        if weight is None:
            weight = word_weights.get(word.lower(), unknown_word_weight)
        table.append(float(weight))
    return table


def bag_of_words(token_ids: list[list[int]], weights: torch.Tensor, cumulative: bool) -> torch.Tensor:
    """(texts, vocab) float32: each word's weight, summed over repeats when `cumulative`, else counted once."""
    out = torch.zeros(len(token_ids), weights.shape[0], dtype=torch.float32)
    for i, ids in enumerate(token_ids):
        if not ids:
            continue
        index = torch.tensor(ids, dtype=torch.long)
        if cumulative:
            out[i].index_add_(0, index, weights[index])
        else:
            out[i, index] = weights[index]
    return out


class BoW(InputModule):
    """Texts -> `sentence_embedding` of vocabulary size: term frequency times word weight (no forward work)."""

    config_keys: ClassVar[tuple[str, ...]] = (
        "vocab",
        "word_weights",
        "unknown_word_weight",
        "cumulative_term_frequency",
    )
    save_in_root: ClassVar[bool] = False

    def __init__(
        self,
        vocab: list[str],
        word_weights: dict[str, float] | None = None,
        unknown_word_weight: float = 1,
        cumulative_term_frequency: bool = True,
    ) -> None:
        super().__init__()
        self.vocab = list(dict.fromkeys(vocab))  # repeated words would shift every later index
        self.word_weights = dict(word_weights or {})
        self.unknown_word_weight = unknown_word_weight
        self.cumulative_term_frequency = bool(cumulative_term_frequency)
        self.weights = torch.tensor(
            word_weight_table(self.vocab, self.word_weights, unknown_word_weight), dtype=torch.float32
        )
        # No stop words and case kept: the vocabulary decides what counts.
        self.tokenizer = WhitespaceTokenizer(self.vocab, stop_words=(), do_lower_case=False)

    def preprocess(self, texts: list[str], *, prompt: str | None = None, task: str | None = None) -> Features:
        """The bag-of-words vectors themselves, under `sentence_embedding`."""
        if prompt:
            texts = [prompt + text for text in texts]
        ids = [self.tokenizer.tokenize(text) for text in texts]
        return {"sentence_embedding": bag_of_words(ids, self.weights, self.cumulative_term_frequency)}

    def text_lengths(self, texts: list[str]) -> list[int]:
        """Whitespace word counts (every text becomes one vector of the same size anyway)."""
        return [len(text.split()) for text in texts]

    def forward(self, features: Features) -> Features:
        return features

    def get_embedding_dimension(self) -> int:
        """The vocabulary size."""
        return len(self.vocab)

    get_sentence_embedding_dimension = get_embedding_dimension

    @classmethod
    def load(cls, path: str, options: LoadOptions | None = None) -> BoW:
        """Rebuild from `config.json` (vocab and weights live there; there is no weights file)."""
        config = load_config(path, cls.config_file_name)
        if "vocab" not in config:
            raise ValueError(f"{path}/{cls.config_file_name}: missing 'vocab'")
        return cls(**{k: v for k, v in config.items() if k in cls.config_keys})
