"""The encode loop: tokenise once, plan length-sorted batches, run them (CPU or CUDA), collect the vectors."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable, Iterator
from typing import Any, Literal

import torch

from embedder import batching
from embedder.device_io import HostCollector, to_device

Batching = Literal["tokens", "sentence-transformers"]
BATCHINGS: tuple[Batching, ...] = ("tokens", "sentence-transformers")
# Token budget of the default batching: big enough that GEMMs run near peak, small enough to stay in cache.
DEFAULT_BATCH_TOKENS = 4096


def check_batching(value: str) -> None:
    """Raise when `value` is not one of BATCHINGS."""
    if value not in BATCHINGS:
        raise ValueError(f"batching {value!r} is not supported; valid: {BATCHINGS}")


def plan(
    first: Any,
    texts: list[str],
    *,
    prompt: str | None,
    batch_size: int,
    max_batch_tokens: int | None,
    batching_mode: Batching,
) -> tuple[dict[str, list] | None, list[int], list[int], list[list[int]]]:
    """(unpadded token ids or None, lengths, sorted order, batches of indices) for one encode call.

    "sentence-transformers" sorts by characters and cuts `batch_size` texts per batch: sentence-transformers'
    own batches, hence its vectors bit for bit. "tokens" sorts by token count and cuts batches of at most
    `batch_size` texts and `max_batch_tokens` padded tokens (DEFAULT_BATCH_TOKENS when None).
    """
    tokenize = getattr(first, "tokenize_unpadded", None)
    encoded = tokenize(texts, prompt=prompt) if callable(tokenize) else None
    if batching_mode == "sentence-transformers" and max_batch_tokens is None:
        lengths = [len(t) for t in texts]
        order = batching.length_order(lengths)
        if encoded is not None:
            lengths = [len(ids) for ids in encoded["input_ids"]]
        return encoded, lengths, order, batching.batches_by_count(order, batch_size)
    if encoded is not None:
        lengths = [len(ids) for ids in encoded["input_ids"]]
    else:
        # A token budget needs real token counts (the input module's own measure, prompt included).
        lengths = first.text_lengths([prompt + t for t in texts] if prompt else texts)
    order = batching.length_order(lengths)
    budget = max_batch_tokens if max_batch_tokens is not None else DEFAULT_BATCH_TOKENS
    cap = batch_size if max_batch_tokens is None else None
    return encoded, lengths, order, batching.batches_by_tokens(order, lengths, budget, cap)


def batch_features(
    first: Any,
    texts: list[str],
    encoded: dict[str, list] | None,
    batches: list[list[int]],
    *,
    prompt: str | None,
    task: str | None,
    prefetch: bool = False,
) -> Iterator[tuple[list[int], dict[str, Any]]]:
    """(batch, features) per batch, tokenised by `first`; with `prefetch` the next batch is built in a thread."""

    def make(batch: list[int]) -> dict[str, Any]:
        if encoded is not None:
            features = first.collate(encoded, batch, prompt=prompt, task=task)
        else:
            features = first.preprocess([texts[i] for i in batch], prompt=prompt, task=task)
        # A Router later in the pipeline routes by task, whatever the input module did with it.
        features.setdefault("task", task)
        return features

    if not prefetch or len(batches) < 2:
        for batch in batches:
            yield batch, make(batch)
        return
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(make, batches[0])
        for i, batch in enumerate(batches):
            features = pending.result()
            if i + 1 < len(batches):
                pending = pool.submit(make, batches[i + 1])
            yield batch, features


def run(
    model: Callable[[dict[str, Any]], dict[str, Any]],
    items: Iterator[tuple[list[int], dict[str, Any]]],
    device: torch.device,
    *,
    postprocess: Callable[[torch.Tensor], torch.Tensor],
    on_batch: Callable[[list[int], dict[str, Any]], None],
    keep_on_device: bool = False,
) -> torch.Tensor:
    """Sentence embeddings of every batch, concatenated in batch order (float32; on CPU unless keep_on_device)."""
    collector = HostCollector(device, keep_on_device=keep_on_device)
    for batch, features in items:
        on_batch(batch, features)
        features = to_device(features, device)
        emb = postprocess(model(features)["sentence_embedding"])
        collector.add(emb)
    return collector.result()
