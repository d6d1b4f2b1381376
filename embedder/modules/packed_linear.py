"""The Linear layers of the packed forwards: stacked weights for one GEMM, and on CPU at bf16 oneDNN's
prepacked weights with the GELU or the residual add done inside the GEMM."""

from __future__ import annotations

import functools
from collections.abc import Hashable
from typing import Any, Literal

import torch
import torch.nn.functional as F

Post = Literal["none", "gelu"]
POSTS: tuple[Post, ...] = ("none", "gelu")


@functools.lru_cache(maxsize=1)
def onednn_bf16() -> bool:
    """Whether this torch build has oneDNN's fused Linear ops and the CPU runs bf16 in them natively."""
    try:
        ops = torch.ops.mkldnn
        return bool(
            torch.backends.mkldnn.is_available()
            and hasattr(ops, "_linear_pointwise")
            and hasattr(ops, "_reorder_linear_weight")
            and ops._is_mkldnn_bf16_supported()
        )
    except (AttributeError, RuntimeError):  # an older or stripped torch: the plain path is exact too
        return False


def uses_onednn(x: torch.Tensor) -> bool:
    """Whether Linears on `x` take the oneDNN path: bf16 hidden states on a CPU with native bf16."""
    return (
        x.dtype == torch.bfloat16
        and x.device.type == "cpu"
        and torch.backends.mkldnn.enabled
        and not torch.is_grad_enabled()
        and onednn_bf16()
    )


class FusedLinears:
    """Linear layers run as one GEMM per call site, weights cached in the input's dtype.

    Several Linears given together (query, key, value) are stacked into one weight. For bf16 hidden states on
    CPU (compute_precision="bfloat16", or bf16 weights) the weight is prepacked once for oneDNN and `post`
    ("gelu": exact erf GELU) or `residual` (added to the output) run inside the GEMM: the GEMM runs ~25% faster
    and bf16 GELU, otherwise a separate pass, costs nearly nothing. Elsewhere it is F.linear, then GELU, then
    the add, as the Hugging Face modules do. The cache is rebuilt when weights move, change dtype or are
    written in place.
    """

    def __init__(self) -> None:
        self._cache: dict[Hashable, tuple[Any, torch.Tensor, torch.Tensor | None]] = {}

    def __call__(
        self,
        key: Hashable,
        x: torch.Tensor,
        *linears: torch.nn.Linear,
        post: Post = "none",
        residual: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x through every one of `linears` (the call site `key`'s), their outputs side by side, then `post`
        and + `residual`."""
        if post not in POSTS:
            raise ValueError(f"post {post!r} is not one of {POSTS}")
        onednn = uses_onednn(x)
        if not onednn and len(linears) == 1:
            y = linears[0](x)  # the module itself: autocast and its weight exactly as the HF forward
        else:
            weight, bias = self._weights(key, x, linears, onednn)
            if onednn:
                ops = torch.ops.mkldnn
                if residual is not None and post == "none" and residual.dtype == x.dtype:
                    return ops._linear_pointwise.binary(x, residual.contiguous(), weight, bias, "add")
                y = ops._linear_pointwise.default(x, weight, bias, post, [], "none" if post == "gelu" else "")
                post = "none"
            else:
                y = F.linear(x, weight, bias)
        if post == "gelu":
            y = F.gelu(y)
        return y if residual is None else y + residual

    def _weights(
        self, key: Hashable, x: torch.Tensor, linears: tuple[torch.nn.Linear, ...], onednn: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The stacked (and for oneDNN prepacked) weight and bias of `linears` in x's dtype, cached per `key`."""
        w0 = linears[0].weight
        params = [p for m in linears for p in (m.weight, m.bias) if p is not None]
        stamp = (tuple(written(p) for p in params), w0.dtype, w0.device, x.dtype, onednn)
        cached = self._cache.get(key)
        if cached is None or cached[0] != stamp:
            weight = torch.cat([m.weight for m in linears]).to(x.dtype).contiguous()
            bias = None
            if any(m.bias is not None for m in linears):
                parts = [m.bias if m.bias is not None else w0.new_zeros(m.out_features) for m in linears]
                bias = torch.cat(parts).to(x.dtype)
            if onednn:
                weight = torch.ops.mkldnn._reorder_linear_weight(weight, None)
            cached = (stamp, weight, bias)
            self._cache[key] = cached
        return cached[1], cached[2]


def written(p: torch.Tensor) -> tuple[int, int]:
    """Where `p` lives and how often it was written in place (inference tensors keep no count: 0)."""
    return p.data_ptr(), 0 if p.is_inference() else p._version
