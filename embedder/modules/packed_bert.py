"""Unpadded ("packed") forward for BERT-family encoders: the same token embeddings, no compute on padding."""

from __future__ import annotations

import functools
from typing import Any

import torch
import torch.nn.functional as F

from embedder.modules.packed_layout import length_runs, runs_attention
from embedder.modules.packed_linear import FusedLinears

# Encoders whose layers are BERT's (query/key/value -> SelfOutput -> Intermediate -> Output) with absolute
# position embeddings computed inside `embeddings`; anything else keeps the Hugging Face forward.
PACKED_ARCHITECTURES = ("BertModel", "RobertaModel", "XLMRobertaModel", "CamembertModel")
PACKED_ATTENTION = ("eager", "sdpa", None)


def packed_support(model: Any) -> str | None:
    """None when `model` can run packed with unchanged outputs, else the reason it cannot."""
    name = type(model).__name__
    if name not in PACKED_ARCHITECTURES:
        return f"architecture {name!r} is not one of {PACKED_ARCHITECTURES}"
    config = model.config
    checks = {
        "is_decoder": not getattr(config, "is_decoder", False),
        "add_cross_attention": not getattr(config, "add_cross_attention", False),
        "position_embedding_type": getattr(config, "position_embedding_type", "absolute") == "absolute",
        "chunk_size_feed_forward": not getattr(config, "chunk_size_feed_forward", 0),
        "_attn_implementation": getattr(config, "_attn_implementation", None) in PACKED_ATTENTION,
    }
    bad = [k for k, ok in checks.items() if not ok]
    if bad:
        return f"config {', '.join(f'{k}={getattr(config, k, None)!r}' for k in bad)} needs the HF forward"
    for i, layer in enumerate(model.encoder.layer):
        att = getattr(getattr(layer, "attention", None), "self", None)
        parts = (
            att,
            getattr(att, "query", None),
            getattr(layer, "intermediate", None),
            getattr(layer, "output", None),
        )
        if any(p is None for p in parts) or not hasattr(att, "scaling"):
            return f"encoder.layer[{i}] is not a BERT layer ({type(layer).__name__})"
    return None


def flash_varlen(x: torch.Tensor | None = None) -> Any:
    """flash_attn's packed-QKV varlen kernel if installed and `x`'s projections are CUDA fp16/bf16, else None."""
    if x is not None and not (x.is_cuda and matmul_dtype(x) in (torch.float16, torch.bfloat16)):
        return None
    return _flash_kernel()


def matmul_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype a Linear on `x` outputs: autocast's where it is on for x's device (compute_precision), else x's."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


@functools.lru_cache(maxsize=1)
def _flash_kernel() -> Any:
    try:
        from flash_attn import flash_attn_varlen_qkvpacked_func
    except Exception:  # not installed, or built for another torch/CUDA: the SDPA path is exact too
        return None
    return flash_attn_varlen_qkvpacked_func


class PackedEncoder:
    """Runs a BERT-family AutoModel on the real tokens only, attention included.

    Attention runs per run of equal-length rows (CPU: no mask, no padding), through flash-attention's varlen
    kernel (CUDA, when installed), or padded with a key mask (CUDA without it: one kernel launch per layer).
    """

    def __init__(self, model: Any) -> None:
        reason = packed_support(model)
        if reason is not None:
            raise ValueError(f"packed forward unsupported: {reason}")
        self.model = model
        self.linears = FusedLinears()
        self.act = getattr(model.config, "hidden_act", None)

    def __call__(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Last hidden states (batch, seq, hidden); padding positions hold zeros (every pooling masks them)."""
        model = self.model
        batch, seq = input_ids.shape
        mask = attention_mask.bool()
        # The embeddings module computes positions and token types from the padded layout, exactly as HF does.
        emb = model.embeddings(input_ids=input_ids, token_type_ids=token_type_ids, position_ids=position_ids)
        hidden = emb.shape[-1]
        dense = bool(mask.all())
        index = None if dense else mask.reshape(-1).nonzero().squeeze(1)
        x = emb.reshape(batch * seq, hidden)
        if index is not None:
            x = x.index_select(0, index)
        # Under bf16/fp16 autocast (compute_precision) the hidden states between layers are kept in that dtype:
        # casting fp32 activations before every Linear cost more than the bf16 GEMMs saved. LayerNorm keeps its
        # fp32 parameters and statistics; the last hidden state goes back to fp32 for pooling.
        low = matmul_dtype(x)
        x = x.to(low)
        # Row-major order keeps each row's real tokens together: runs of rows and flash's varlen layout.
        flash = flash_varlen(x)
        if flash is not None:
            lengths = mask.sum(dim=1, dtype=torch.int32)
            cu = F.pad(lengths.cumsum(0, dtype=torch.int32), (1, 0))
            longest = int(lengths.max())
        runs = None if x.is_cuda else length_runs(mask.sum(dim=1).tolist())
        key_mask = None if dense else mask[:, None, None, :]
        for i, layer in enumerate(model.encoder.layer):
            att = layer.attention.self
            heads = att.num_attention_heads
            qkv = self.linears((i, "qkv"), x, att.query, att.key, att.value)
            if flash is not None:
                packed_qkv = qkv.view(-1, 3, heads, hidden // heads)
                ctx = flash(packed_qkv, cu, longest, softmax_scale=att.scaling).reshape(-1, hidden)
            elif runs is not None:
                ctx = run_attention(qkv, runs, heads, att.scaling)
            else:
                ctx = padded_attention(qkv, index, key_mask, batch, seq, heads, att.scaling)
            out = layer.attention.output
            x = out.LayerNorm(self.linears((i, "attention.output"), ctx, out.dense, residual=x))
            x = feed_forward(self.linears, i, layer, x, self.act)
        x = x.to(emb.dtype)
        if index is None:
            return x.view(batch, seq, hidden)
        out = x.new_zeros(batch * seq, hidden)
        out.index_copy_(0, index, x)
        return out.view(batch, seq, hidden)


def feed_forward(linears: FusedLinears, i: int, layer: Any, x: torch.Tensor, act: str | None) -> torch.Tensor:
    """Layer `i`'s BERT-style feed-forward: LayerNorm(output(act(intermediate(x))) + x), as the HF modules do."""
    inner = layer.intermediate
    if act == "gelu":  # exact (erf) GELU: oneDNN fuses it into the GEMM at bf16
        h = linears((i, "intermediate"), x, inner.dense, post="gelu")
    else:
        h = inner(x)
    out = layer.output
    return out.LayerNorm(linears((i, "output"), h, out.dense, residual=x))


def run_attention(
    qkv: torch.Tensor, runs: list[tuple[int, int, int]], heads: int, scale: float
) -> torch.Tensor:
    """Self-attention of packed (tokens, 3*hidden) projections, one unmasked call per run of equal-length rows
    (on CPU it beats one padded, masked call)."""
    q, k, v = qkv.view(qkv.shape[0], 3, heads, -1).unbind(1)
    return runs_attention(q, k, v, runs, scale)


def padded_attention(
    qkv: torch.Tensor,
    index: torch.Tensor | None,
    key_mask: torch.Tensor | None,
    batch: int,
    seq: int,
    heads: int,
    scale: float,
) -> torch.Tensor:
    """Self-attention of packed (tokens, 3*hidden) projections, laid out padded so each row sees its own keys."""
    width = qkv.shape[-1]
    if index is not None:
        full = qkv.new_zeros(batch * seq, width)
        full.index_copy_(0, index, qkv)
    else:
        full = qkv
    d = width // (3 * heads)
    q, k, v = full.view(batch, seq, 3, heads, d).permute(2, 0, 3, 1, 4).unbind(0)
    ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask, scale=scale)
    ctx = ctx.transpose(1, 2).reshape(batch * seq, heads * d)
    return ctx if index is None else ctx.index_select(0, index)
