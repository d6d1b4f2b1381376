"""Pooling: token embeddings -> one sentence embedding (cls / max / mean / ... or several concatenated)."""

from __future__ import annotations

import os
from typing import Any, Literal

import torch

from embedder.modules.base import Features, LoadOptions, Module, load_config, save_config

PoolingMode = Literal["cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken"]
POOLING_MODES: tuple[PoolingMode, ...] = (
    "cls",
    "max",
    "mean",
    "mean_sqrt_len_tokens",
    "weightedmean",
    "lasttoken",
)

# The legacy boolean config flags, in the order sentence-transformers concatenates their outputs.
LEGACY_FLAGS: dict[str, PoolingMode] = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}


def normalize_modes(pooling_mode: str | list[str] | tuple[str, ...]) -> tuple[PoolingMode, ...]:
    """Validate one mode or a sequence of modes and return them as a tuple (order kept)."""
    modes = (pooling_mode,) if isinstance(pooling_mode, str) else tuple(pooling_mode)
    if not modes:
        raise ValueError(f"pooling_mode is empty; valid modes: {POOLING_MODES}")
    for i, mode in enumerate(modes):
        if mode not in POOLING_MODES:
            raise ValueError(
                f"pooling_mode[{i}] = {mode!r} is not a pooling mode; valid modes: {POOLING_MODES}"
            )
    return modes  # type: ignore[return-value]


def modes_from_config(config: dict[str, Any]) -> tuple[PoolingMode, ...]:
    """The pooling modes a saved config asks for: `pooling_mode` (new format) wins over the legacy flags."""
    if config.get("pooling_mode") is not None:
        return normalize_modes(config["pooling_mode"])
    active = tuple(mode for flag, mode in LEGACY_FLAGS.items() if config.get(flag, False))
    # No flag set means the default, as in sentence-transformers.
    return active or ("mean",)


def exclude_prompt(attention_mask: torch.Tensor, prompt_length: int) -> torch.Tensor:
    """A copy of `attention_mask` with the first `prompt_length` real tokens of every row zeroed."""
    mask = attention_mask.clone()
    pad_lengths = mask.to(torch.int32).argmax(dim=1)
    if int(pad_lengths.sum()) == 0:
        mask[:, :prompt_length] = 0
    else:
        # Left padding: the prompt starts after each row's padding.
        positions = torch.arange(mask.size(1), device=mask.device).unsqueeze(0)
        mask[positions < (pad_lengths + prompt_length).unsqueeze(1)] = 0
    return mask


def pool(
    token_embeddings: torch.Tensor,
    attention_mask: torch.Tensor,
    modes: tuple[PoolingMode, ...],
    *,
    prompt_length: int | None = None,
    token_weights_sum: torch.Tensor | None = None,
    cls_token_embeddings: torch.Tensor | None = None,
) -> torch.Tensor:
    """Pool (batch, seq, dim) token embeddings into (batch, len(modes) * dim), one block per mode in order."""
    mask = exclude_prompt(attention_mask, prompt_length) if prompt_length else attention_mask
    outputs: list[torch.Tensor] = []
    for mode in modes:
        if mode == "cls":
            if cls_token_embeddings is not None:
                outputs.append(cls_token_embeddings)
            else:
                outputs.append(_gather_rows(token_embeddings, mask.to(torch.int).argmax(dim=1)))
        elif mode == "max":
            hidden = mask.unsqueeze(-1).to(token_embeddings.dtype) == 0
            outputs.append(token_embeddings.masked_fill(hidden, float("-inf")).max(dim=1).values)
        elif mode in ("mean", "mean_sqrt_len_tokens"):
            outputs.append(
                mean_pool(token_embeddings, mask, token_weights_sum, sqrt=mode == "mean_sqrt_len_tokens")
            )
        elif mode == "weightedmean":
            outputs.append(weighted_mean_pool(token_embeddings, mask, attention_mask, token_weights_sum))
        elif mode == "lasttoken":
            outputs.append(last_token_pool(token_embeddings, mask))
    return torch.cat(outputs, dim=-1)


def _accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    # Half-precision sums lose too much; accumulate in float32 like sentence-transformers.
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def mean_pool(
    token_embeddings: torch.Tensor,
    mask: torch.Tensor,
    token_weights_sum: torch.Tensor | None,
    *,
    sqrt: bool = False,
) -> torch.Tensor:
    """Sum of the unmasked tokens over their count (or over `token_weights_sum`), or over its square root."""
    dtype = token_embeddings.dtype
    acc_dtype = _accumulation_dtype(dtype)
    mask_3d = mask.unsqueeze(-1).to(dtype)
    summed = (token_embeddings * mask_3d).sum(dim=1, dtype=acc_dtype)
    out_dtype = dtype
    if token_weights_sum is not None:
        count = token_weights_sum.unsqueeze(-1)
        out_dtype = torch.promote_types(dtype, count.dtype)
        count = count.to(torch.promote_types(acc_dtype, count.dtype))
    else:
        count = mask_3d.sum(dim=1, dtype=acc_dtype)
    count = torch.clamp(count, min=1e-9)
    pooled = summed / (torch.sqrt(count) if sqrt else count)
    return pooled.to(out_dtype) if out_dtype.is_floating_point else pooled


def weighted_mean_pool(
    token_embeddings: torch.Tensor,
    mask: torch.Tensor,
    attention_mask: torch.Tensor,
    token_weights_sum: torch.Tensor | None,
) -> torch.Tensor:
    """Mean weighted by position 1..n, counted from each row's first real token (before prompt exclusion)."""
    dtype = token_embeddings.dtype
    acc_dtype = _accumulation_dtype(dtype)
    seq_len = token_embeddings.shape[1]
    weights = torch.arange(1, seq_len + 1, device=token_embeddings.device, dtype=acc_dtype).view(1, -1, 1)
    if attention_mask.numel():
        # Left padding shifts the weights so that the first real token weighs 1; excluding a prompt does not.
        weights = weights - attention_mask.to(torch.int32).argmax(dim=1).view(-1, 1, 1)
    weighted_mask = mask.unsqueeze(-1).to(acc_dtype) * weights
    summed = (token_embeddings * weighted_mask).sum(dim=1)
    out_dtype = dtype
    if token_weights_sum is not None:
        total = token_weights_sum.unsqueeze(-1)
        out_dtype = torch.promote_types(dtype, total.dtype)
        total = total.to(torch.promote_types(acc_dtype, total.dtype))
    else:
        total = weighted_mask.sum(dim=1)
    return (summed / torch.clamp(total, min=1e-9)).to(out_dtype)


def last_token_pool(token_embeddings: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The last unmasked token of each row (left or right padding); a zero vector for a row with none."""
    seq_len = token_embeddings.shape[1]
    has_token, from_end = mask.flip(1).max(dim=1)
    last = torch.where(has_token == 0, 0, seq_len - 1 - from_end)
    return _gather_rows(token_embeddings * mask.unsqueeze(-1).to(token_embeddings.dtype), last)


def _gather_rows(token_embeddings: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Pick token `index[b]` of every row b: (batch, seq, dim) -> (batch, dim)."""
    gather_index = index.view(-1, 1, 1).expand(-1, 1, token_embeddings.shape[-1])
    return torch.gather(token_embeddings, 1, gather_index).squeeze(1)


class Pooling(Module):
    """Pools `token_embeddings` into `sentence_embedding` with one or more modes, concatenated in the given order."""

    config_keys = ("word_embedding_dimension", "pooling_mode", "include_prompt")
    rowwise = True

    def __init__(
        self,
        word_embedding_dimension: int,
        pooling_mode: PoolingMode | tuple[PoolingMode, ...] | list[PoolingMode] = "mean",
        include_prompt: bool = True,
    ) -> None:
        super().__init__()
        self.word_embedding_dimension = int(word_embedding_dimension)
        self.pooling_modes = normalize_modes(pooling_mode)
        self.include_prompt = bool(include_prompt)
        self.pooling_output_dimension = len(self.pooling_modes) * self.word_embedding_dimension

    @property
    def pooling_mode(self) -> PoolingMode | tuple[PoolingMode, ...]:
        """One mode as a string, several as a tuple."""
        return self.pooling_modes[0] if len(self.pooling_modes) == 1 else self.pooling_modes

    def forward(self, features: Features) -> Features:
        token_embeddings = features["token_embeddings"]
        attention_mask = features.get("attention_mask")
        if attention_mask is None or attention_mask.size(-1) != token_embeddings.size(1):
            attention_mask = torch.ones(
                token_embeddings.shape[:-1], device=token_embeddings.device, dtype=torch.int64
            )
        prompt_length = None
        if not self.include_prompt and features.get("prompt_length") is not None:
            value = features["prompt_length"]
            prompt_length = (
                int(value.reshape(-1)[0].item()) if isinstance(value, torch.Tensor) else int(value)
            )
        features["sentence_embedding"] = pool(
            token_embeddings,
            attention_mask,
            self.pooling_modes,
            prompt_length=prompt_length,
            token_weights_sum=features.get("token_weights_sum"),
            cls_token_embeddings=features.get("cls_token_embeddings"),
        )
        return features

    def get_embedding_dimension(self) -> int:
        """Width of `sentence_embedding`: the token width times the number of modes."""
        return self.pooling_output_dimension

    def get_sentence_embedding_dimension(self) -> int:
        """Alias of `get_embedding_dimension` (the older sentence-transformers name)."""
        return self.pooling_output_dimension

    def get_config_dict(self) -> dict[str, Any]:
        """The legacy flag format every sentence-transformers version reads; the list format only when needed."""
        canonical = tuple(mode for mode in POOLING_MODES if mode in self.pooling_modes)
        if canonical == self.pooling_modes:
            config: dict[str, Any] = {"word_embedding_dimension": self.word_embedding_dimension}
            for flag, mode in LEGACY_FLAGS.items():
                config[flag] = mode in self.pooling_modes
            config["include_prompt"] = self.include_prompt
            return config
        # A custom concatenation order (or a repeated mode) cannot be written as flags.
        return {
            "embedding_dimension": self.word_embedding_dimension,
            "pooling_mode": list(self.pooling_modes),
            "include_prompt": self.include_prompt,
        }

    def save(self, path: str) -> None:
        """Write `config.json` (Pooling has no weights)."""
        os.makedirs(path, exist_ok=True)
        save_config(self.get_config_dict(), path, self.config_file_name)

    @classmethod
    def load(cls, path: str, options: LoadOptions | None = None) -> Pooling:
        """Read either config format: legacy `pooling_mode_*` flags or the `pooling_mode` list."""
        config = load_config(path, cls.config_file_name)
        dim = config.get("word_embedding_dimension", config.get("embedding_dimension"))
        if dim is None:
            raise ValueError(
                f"{os.path.join(path, cls.config_file_name)}: missing 'word_embedding_dimension'"
            )
        return cls(dim, modes_from_config(config), config.get("include_prompt", True))
