"""Unpadded ("packed") forward for ModernBERT: RoPE per sequence, global and local (sliding window) layers."""

from __future__ import annotations

from functools import partial
from typing import Any

import torch

from embedder.modules.packed_layout import Layout, band_mask, rotate, runs_attention

ARCHITECTURES = ("ModernBertModel",)
LAYER_TYPES = ("full_attention", "sliding_attention")


def support(model: Any) -> str | None:
    """None when the ModernBERT `model` can run packed, else the reason it cannot."""
    config = model.config
    bad = [t for t in config.layer_types if t not in LAYER_TYPES]
    if bad:
        return f"config layer_types has {bad[0]!r}; the packed forward knows {LAYER_TYPES}"
    if "sliding_attention" in config.layer_types and config.sliding_window is None:
        return "config local_attention is None but a layer is sliding_attention"
    for i, layer in enumerate(getattr(model, "layers", ())):
        parts = ("attn_norm", "attn", "mlp_norm", "mlp", "attention_type")
        if not all(hasattr(layer, p) for p in parts) or not hasattr(layer.attn, "Wqkv"):
            return f"layers[{i}] is not a ModernBERT layer ({type(layer).__name__})"
    return None


class PackedModernBert:
    """Runs a ModernBertModel on the real tokens only; positions restart at 0 in each row."""

    def __init__(self, model: Any) -> None:
        reason = support(model)
        if reason is not None:
            raise ValueError(f"packed forward unsupported: {reason}")
        self.model = model

    def __call__(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Last hidden states (batch, seq, hidden); padding positions hold zeros."""
        model = self.model
        layout = Layout.of(attention_mask)
        if not layout.contiguous or position_ids is not None:
            return model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)[0]
        x = model.embeddings(input_ids=layout.pack(input_ids))
        positions = layout.positions[None, :]
        rope = {t: model.rotary_emb(x, positions, t) for t in set(model.config.layer_types)}
        # HF's bidirectional sliding window: keys at most `sliding_window` tokens away on either side.
        window = model.config.sliding_window

        def local(n: int) -> torch.Tensor:
            return band_mask(n, window, window, x.device)

        heads = model.config.num_attention_heads
        for layer in model.layers:
            att = layer.attn
            d = att.head_dim
            q, k, v = att.Wqkv(layer.attn_norm(x)).view(-1, 3, heads, d).unbind(1)
            cos, sin = rope[layer.attention_type]
            q, k = rotate(q, cos[0], sin[0]), rotate(k, cos[0], sin[0])
            sliding = layer.attention_type == "sliding_attention"
            mask = partial(layout.mask, layer.attention_type, make=local) if sliding else None
            ctx = runs_attention(q, k, v, layout.runs, d**-0.5, mask_for=mask)
            x = x + att.Wo(ctx)
            x = x + layer.mlp(layer.mlp_norm(x))
        return layout.unpack(model.final_norm(x))
