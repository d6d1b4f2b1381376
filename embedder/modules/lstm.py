"""LSTM: a (bi-directional) LSTM over the token embeddings, honouring each text's length."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from embedder.modules.base import Features, LoadOptions, Module, load_config, load_weights


class LSTM(Module):
    """token_embeddings (batch, seq, dim) -> LSTM outputs (batch, longest, hidden_dim * directions)."""

    config_keys: ClassVar[tuple[str, ...]] = (
        "word_embedding_dimension",
        "hidden_dim",
        "num_layers",
        "dropout",
        "bidirectional",
    )
    config_file_name: ClassVar[str] = "lstm_config.json"

    def __init__(
        self,
        word_embedding_dimension: int,
        hidden_dim: int,
        num_layers: int = 1,
        dropout: float = 0,
        bidirectional: bool = True,
    ) -> None:
        super().__init__()
        self.word_embedding_dimension = int(word_embedding_dimension)
        self.hidden_dim = int(hidden_dim)
        self.num_layers = int(num_layers)
        self.dropout = dropout
        self.bidirectional = bool(bidirectional)
        self.encoder = nn.LSTM(
            self.word_embedding_dimension,
            self.hidden_dim,
            num_layers=self.num_layers,
            dropout=dropout,
            bidirectional=self.bidirectional,
            batch_first=True,
        )

    def forward(self, features: Features) -> Features:
        token_embeddings = features["token_embeddings"]
        lengths = features.get("sentence_lengths")
        if lengths is None:
            lengths = features["attention_mask"].sum(dim=1)
        # An empty text still runs one (padding) step, as in sentence-transformers.
        lengths = torch.clamp(lengths, min=1).cpu()
        packed = nn.utils.rnn.pack_padded_sequence(
            token_embeddings, lengths, batch_first=True, enforce_sorted=False
        )
        output, _ = self.encoder(packed)
        features["token_embeddings"] = nn.utils.rnn.pad_packed_sequence(output, batch_first=True)[0]
        return features

    def get_embedding_dimension(self) -> int:
        """Width of each output token embedding: hidden_dim, doubled when bidirectional."""
        return self.hidden_dim * (2 if self.bidirectional else 1)

    get_word_embedding_dimension = get_embedding_dimension

    def get_config_dict(self) -> dict[str, Any]:
        """The legacy key name `word_embedding_dimension`, which every sentence-transformers version reads."""
        return {key: getattr(self, key) for key in self.config_keys}

    @classmethod
    def load(cls, path: str, options: LoadOptions | None = None) -> LSTM:
        """Read `lstm_config.json` (either width key name) and the encoder.* weights."""
        config = load_config(path, cls.config_file_name)
        dim = config.get("word_embedding_dimension", config.get("embedding_dimension"))
        if dim is None or "hidden_dim" not in config:
            raise ValueError(
                f"{path}/{cls.config_file_name}: needs 'word_embedding_dimension' and 'hidden_dim'"
            )
        kwargs = {k: config[k] for k in ("num_layers", "dropout", "bidirectional") if k in config}
        module = cls(dim, config["hidden_dim"], **kwargs)
        load_weights(module, path, options)
        return module
