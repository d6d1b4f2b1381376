"""CNN: 1-D convolutions with several kernel sizes over the token embeddings, outputs concatenated."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from embedder.modules.base import Features, LoadOptions, Module, load_config, load_weights


class CNN(Module):
    """token_embeddings (batch, seq, in) -> (batch, seq', out_channels * len(kernel_sizes))."""

    config_keys: ClassVar[tuple[str, ...]] = (
        "in_word_embedding_dimension",
        "out_channels",
        "kernel_sizes",
        "stride_sizes",
    )
    config_file_name: ClassVar[str] = "cnn_config.json"

    def __init__(
        self,
        in_word_embedding_dimension: int,
        out_channels: int = 256,
        kernel_sizes: list[int] | tuple[int, ...] = (1, 3, 5),
        stride_sizes: list[int] | tuple[int, ...] | None = None,
    ) -> None:
        super().__init__()
        self.in_word_embedding_dimension = int(in_word_embedding_dimension)
        self.out_channels = int(out_channels)
        self.kernel_sizes = [int(k) for k in kernel_sizes]
        self.stride_sizes = (
            [int(s) for s in stride_sizes] if stride_sizes is not None else [1] * len(self.kernel_sizes)
        )
        if len(self.stride_sizes) != len(self.kernel_sizes):
            raise ValueError(
                f"CNN: {len(self.kernel_sizes)} kernel_sizes but {len(self.stride_sizes)} stride_sizes"
            )
        # "Same" padding for odd kernels, so a stride of 1 keeps the sequence length.
        self.convs = nn.ModuleList(
            nn.Conv1d(
                self.in_word_embedding_dimension,
                self.out_channels,
                kernel_size=k,
                stride=s,
                padding=(k - 1) // 2,
            )
            for k, s in zip(self.kernel_sizes, self.stride_sizes, strict=True)
        )

    def forward(self, features: Features) -> Features:
        channels_first = features["token_embeddings"].transpose(1, -1)
        out = torch.cat([conv(channels_first) for conv in self.convs], dim=1)
        features["token_embeddings"] = out.transpose(1, -1)
        return features

    def get_embedding_dimension(self) -> int:
        """Width of each output token embedding: out_channels per kernel size."""
        return self.out_channels * len(self.kernel_sizes)

    get_word_embedding_dimension = get_embedding_dimension

    def get_config_dict(self) -> dict[str, Any]:
        """The legacy key name `in_word_embedding_dimension`, which every sentence-transformers version reads."""
        return {key: getattr(self, key) for key in self.config_keys}

    @classmethod
    def load(cls, path: str, options: LoadOptions | None = None) -> CNN:
        """Read `cnn_config.json` (either width key name) and `model.safetensors` (convs.<i>.weight/bias)."""
        config = load_config(path, cls.config_file_name)
        dim = config.get("in_word_embedding_dimension", config.get("in_embedding_dimension"))
        if dim is None:
            raise ValueError(f"{path}/{cls.config_file_name}: missing 'in_word_embedding_dimension'")
        kwargs = {k: config[k] for k in ("out_channels", "kernel_sizes", "stride_sizes") if k in config}
        module = cls(dim, **kwargs)
        load_weights(module, path, options)
        return module
