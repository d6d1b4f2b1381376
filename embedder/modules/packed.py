"""Which packed (unpadded) forward an AutoModel gets: one per architecture family, or a reason it has none."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from embedder.modules import packed_bert, packed_decoder, packed_modernbert, packed_mpnet

PACKED_ATTENTION = packed_bert.PACKED_ATTENTION
# A packed forward: (input_ids, attention_mask, token_type_ids, position_ids) -> (batch, seq, hidden).
PackedForward = Callable[..., torch.Tensor]
# family: (architectures, support check, forward class)
FAMILIES: dict[str, tuple[tuple[str, ...], Callable[[Any], str | None], Callable[[Any], PackedForward]]] = {
    "bert": (packed_bert.PACKED_ARCHITECTURES, packed_bert.packed_support, packed_bert.PackedEncoder),
    "mpnet": (packed_mpnet.ARCHITECTURES, packed_mpnet.support, packed_mpnet.PackedMPNet),
    "modernbert": (
        packed_modernbert.ARCHITECTURES,
        packed_modernbert.support,
        packed_modernbert.PackedModernBert,
    ),
    "decoder": (packed_decoder.ARCHITECTURES, packed_decoder.support, packed_decoder.PackedDecoder),
}
PACKED_ARCHITECTURES = tuple(name for archs, _, _ in FAMILIES.values() for name in archs)


def _family(model: Any) -> str | None:
    name = type(model).__name__
    return next((f for f, (archs, _, _) in FAMILIES.items() if name in archs), None)


def packed_support(model: Any) -> str | None:
    """None when `model` can run packed with unchanged outputs, else the reason it cannot."""
    family = _family(model)
    if family is None:
        return f"architecture {type(model).__name__!r} is not one of {PACKED_ARCHITECTURES}"
    config = model.config
    checks = {
        "is_decoder": family == "decoder" or not getattr(config, "is_decoder", False),
        "add_cross_attention": not getattr(config, "add_cross_attention", False),
        "_attn_implementation": getattr(config, "_attn_implementation", None) in PACKED_ATTENTION,
    }
    bad = [k for k, ok in checks.items() if not ok]
    if bad:
        return f"config {', '.join(f'{k}={getattr(config, k, None)!r}' for k in bad)} needs the HF forward"
    return FAMILIES[family][1](model)


def packed_forward(model: Any) -> PackedForward:
    """The packed forward of `model`; raises ValueError with the reason when it has none."""
    reason = packed_support(model)
    if reason is not None:
        raise ValueError(f"packed forward unsupported: {reason}")
    return FAMILIES[_family(model)][2](model)
