"""Unpadded ("packed") forward for MPNet: BERT-like layers plus a relative position bias per sequence."""

from __future__ import annotations

from functools import partial
from typing import Any

import torch

from embedder.modules.packed_bert import feed_forward
from embedder.modules.packed_layout import Layout, runs_attention
from embedder.modules.packed_linear import FusedLinears

ARCHITECTURES = ("MPNetModel",)
# MPNetEncoder.forward calls compute_position_bias with its default bucket count, whatever the config says.
POSITION_BUCKETS = 32


def support(model: Any) -> str | None:
    """None when the MPNet `model` can run packed, else the reason it cannot."""
    encoder = getattr(model, "encoder", None)
    if not hasattr(encoder, "relative_attention_bias") or not hasattr(encoder, "relative_position_bucket"):
        return f"{type(model).__name__} has no MPNet relative position bias"
    for i, layer in enumerate(encoder.layer):
        att = getattr(getattr(layer, "attention", None), "attn", None)
        parts = (
            att,
            getattr(att, "q", None),
            getattr(layer, "intermediate", None),
            getattr(layer, "output", None),
        )
        if any(p is None for p in parts):
            return f"encoder.layer[{i}] is not an MPNet layer ({type(layer).__name__})"
    return None


class PackedMPNet:
    """Runs an MPNetModel on the real tokens only; each row's position bias comes from its own positions."""

    def __init__(self, model: Any) -> None:
        reason = support(model)
        if reason is not None:
            raise ValueError(f"packed forward unsupported: {reason}")
        self.model = model
        self.linears = FusedLinears()
        self.act = getattr(model.config, "hidden_act", None)

    def position_bias(self, n: int) -> torch.Tensor:
        """(heads, n, n) bias of one length-n sequence: buckets of key position minus query position."""
        encoder = self.model.encoder
        weight = encoder.relative_attention_bias.weight
        i = torch.arange(n, device=weight.device)
        buckets = encoder.relative_position_bucket(i[None, :] - i[:, None], num_buckets=POSITION_BUCKETS)
        return encoder.relative_attention_bias(buckets).permute(2, 0, 1)

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
        if not layout.contiguous:
            return model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)[0]
        # Absolute positions (from padding_idx + 1 in each row) come from the padded ids, exactly as HF does.
        x = layout.pack(model.embeddings(input_ids=input_ids, position_ids=position_ids))
        hidden = x.shape[-1]
        for i, layer in enumerate(model.encoder.layer):
            att = layer.attention.attn
            heads = att.num_attention_heads
            q, k, v = (
                self.linears((i, "qkv"), x, att.q, att.k, att.v).view(-1, 3, heads, hidden // heads).unbind(1)
            )
            bias = partial(layout.mask, "bias", make=self.position_bias)
            ctx = runs_attention(q, k, v, layout.runs, att.attention_head_size**-0.5, mask_for=bias)
            x = layer.attention.LayerNorm(self.linears((i, "o"), ctx, att.o, residual=x))
            x = feed_forward(self.linears, i, layer, x, self.act)
        return layout.unpack(x)
