"""Unpadded ("packed") forward for decoder embedders (Qwen3, Mistral, Llama): causal per sequence, RoPE from 0."""

from __future__ import annotations

from functools import partial
from typing import Any

import torch

from embedder.modules.packed_layout import Layout, band_mask, rotate, runs_attention
from embedder.modules.packed_linear import FusedLinears

ARCHITECTURES = ("Qwen3Model", "MistralModel", "LlamaModel")
LAYER_TYPES = ("full_attention", "sliding_attention")


def support(model: Any) -> str | None:
    """None when the decoder `model` can run packed, else the reason it cannot."""
    config = model.config
    bad = [t for t in getattr(config, "layer_types", None) or () if t not in LAYER_TYPES]
    if bad:
        return f"config layer_types has {bad[0]!r}; the packed forward knows {LAYER_TYPES}"
    for i, layer in enumerate(getattr(model, "layers", ())):
        att = getattr(layer, "self_attn", None)
        parts = ("q_proj", "k_proj", "v_proj", "o_proj", "head_dim", "scaling")
        if att is None or not all(hasattr(att, p) for p in parts):
            return f"layers[{i}] is not a Llama-style decoder layer ({type(layer).__name__})"
    return None


def sliding_windows(model: Any) -> list[int | None]:
    """Each layer's causal window (keys within `window` tokens back, itself included), None for full attention."""
    config = model.config
    window = getattr(config, "sliding_window", None)
    if type(model).__name__ == "MistralModel":
        # Mistral slides every layer when the config sets a window; Qwen3 only its sliding_attention layers.
        return [window] * len(model.layers)
    types = getattr(config, "layer_types", None) or ["full_attention"] * len(model.layers)
    return [window if t == "sliding_attention" else None for t in types]


def causal_window(n: int, window: int, device: torch.device) -> torch.Tensor:
    """Boolean (n, n) mask: query i sees keys i - window + 1 .. i (HF's sliding-window causal mask)."""
    return band_mask(n, window - 1, 0, device)


class PackedDecoder:
    """Runs a Qwen3/Mistral/Llama backbone on the real tokens only: each row attends causally to its own."""

    def __init__(self, model: Any) -> None:
        reason = support(model)
        if reason is not None:
            raise ValueError(f"packed forward unsupported: {reason}")
        self.model = model
        self.windows = sliding_windows(model)
        self.qkv = FusedLinears()

    def __call__(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Last hidden states (batch, seq, hidden); padding positions hold zeros, left or right."""
        model = self.model
        layout = Layout.of(attention_mask)
        if not layout.contiguous or position_ids is not None:
            return model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)[0]
        x = model.embed_tokens(layout.pack(input_ids))
        # Positions restart at 0 in each row, so left and right padding give the same vectors.
        cos, sin = (t[0] for t in model.rotary_emb(x, layout.positions[None, :]))
        heads, kv_heads = model.config.num_attention_heads, model.config.num_key_value_heads
        for i, (layer, window) in enumerate(zip(model.layers, self.windows, strict=True)):
            att = layer.self_attn
            h = layer.input_layernorm(x)
            qkv = self.qkv((i, "qkv"), h, att.q_proj, att.k_proj, att.v_proj).view(
                h.shape[0], -1, att.head_dim
            )
            q, k, v = qkv.split([heads, kv_heads, kv_heads], dim=1)
            if hasattr(att, "q_norm"):  # Qwen3 normalises each head's query and key
                q, k = att.q_norm(q), att.k_norm(k)
            q, k = rotate(q, cos, sin), rotate(k, cos, sin)
            if window is None or window >= layout.seq:
                ctx = runs_attention(q, k, v, layout.runs, att.scaling, causal=True)
            else:
                make = partial(causal_window, window=window, device=x.device)
                mask = partial(layout.mask, f"window{window}", make=make)
                ctx = runs_attention(q, k, v, layout.runs, att.scaling, mask_for=mask)
            x = x + att.o_proj(ctx)
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        return layout.unpack(model.norm(x))
