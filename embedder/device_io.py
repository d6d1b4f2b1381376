"""Moving batches to the accelerator and vectors back without stalling it (pinned memory, side stream)."""

from __future__ import annotations

from typing import Any

import torch


def to_device(features: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """`features` with every tensor on `device`; to CUDA from pinned memory, asynchronously."""
    if device.type == "cpu":
        return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in features.items()}
    cuda = device.type == "cuda"
    out: dict[str, Any] = {}
    for key, value in features.items():
        if isinstance(value, torch.Tensor) and value.device != device:
            if cuda and value.device.type == "cpu":
                # A pageable source forces a synchronous staging copy; pinned lets the copy overlap compute.
                value = value.pin_memory()
            value = value.to(device, non_blocking=cuda)
        out[key] = value
    return out


class HostCollector:
    """Gathers per-batch float32 vectors; on CUDA copies them to pinned host buffers on a side stream."""

    def __init__(self, device: torch.device, *, keep_on_device: bool = False) -> None:
        self.device = device
        self.keep_on_device = keep_on_device
        self.async_copy = device.type == "cuda" and not keep_on_device
        self.stream = torch.cuda.Stream(device=device) if self.async_copy else None
        self.chunks: list[torch.Tensor] = []

    def add(self, emb: torch.Tensor) -> None:
        """Queue one batch's vectors (batch, dim)."""
        emb = emb.float()
        if self.keep_on_device:
            self.chunks.append(emb)
            return
        if not self.async_copy:
            self.chunks.append(emb.cpu())
            return
        assert self.stream is not None
        host = torch.empty(emb.shape, dtype=emb.dtype, pin_memory=True)
        # The copy waits for this batch's compute only; the next batch's forward is queued without waiting.
        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self.stream):
            host.copy_(emb, non_blocking=True)
        # Keep `emb` alive until the side stream has read it (the caching allocator must not reuse it).
        emb.record_stream(self.stream)
        self.chunks.append(host)

    def result(self) -> torch.Tensor:
        """All vectors in the order added (waits for outstanding copies)."""
        if self.stream is not None:
            self.stream.synchronize()
        if not self.chunks:
            return torch.empty(0)
        return torch.cat(self.chunks)
