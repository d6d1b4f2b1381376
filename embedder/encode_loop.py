"""The encode loop: tokenise once, plan length-sorted batches, run them (CPU or CUDA), collect the vectors."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Literal

import torch

from embedder import batching
from embedder.device_io import HostCollector, to_device
from embedder.modules.base import PACKED_KEY
from embedder.prefetch import prefetch as run_ahead

Batching = Literal["auto", "tokens", "sentence-transformers"]
BATCHINGS: tuple[Batching, ...] = ("auto", "tokens", "sentence-transformers")
# Token budget of "tokens" batching on CPU when none is given. Measured on MiniLM (2 cores): 4096 beat
# 32-text batches and 8192; the GEMMs run near peak and per-batch overhead vanishes, and it stays in cache.
CPU_BATCH_TOKENS = 4096
# Texts per batch for an input module without padding (StaticEmbedding): the tokenizer's batch call spreads
# over its threads best on big batches, and the flat ids of 4096 texts take a few MiB at most.
UNPADDED_BATCH_TEXTS = 4096


def resolve_batching(
    batching: Batching,
    model: torch.nn.Module,
    output_value: str | None,
    precision: str = "float32",
    *,
    compute_precision: str = "float32",
) -> Batching:
    """`batching`, with "auto" made "tokens" where that keeps `model`'s vectors exact, else "sentence-transformers".

    Token batching changes which texts share a batch; that is exact only when every module computes each text
    from its own real tokens (`rowwise`: a packed forward of modules/packed.py, StaticEmbedding, Pooling, Dense,
    Normalize), in float32 at full matmul precision (fp16/bf16 or TF32 move vectors by more than the parity
    bound), and for float32 sentence embeddings only: token outputs keep sentence-transformers' batches and the
    padded forward, and a last-bit difference can move an int8 bucket or a binary sign, so quantised ones keep its
    batches too. A reduced `compute_precision` (bf16/fp16 autocast) moves vectors by far more than batching
    does, so there "auto" takes the fast path ("tokens") for every rowwise float32 sentence embedding.
    """
    if batching != "auto":
        return batching
    if compute_precision != "float32":
        fast = (
            output_value == "sentence_embedding"
            and precision == "float32"
            and all(getattr(m, "rowwise", False) for m in model.children())
        )
        return "tokens" if fast else "sentence-transformers"
    exact = (
        output_value == "sentence_embedding"
        and precision == "float32"
        and all(getattr(m, "rowwise", False) for m in model.children())
        and all(p.dtype == torch.float32 for p in model.parameters())
        and full_precision_matmul()
    )
    return "tokens" if exact else "sentence-transformers"


def full_precision_matmul() -> bool:
    """Whether float32 matmuls run in full float32 (no TF32 or bf16 shortcut)."""
    try:
        return torch.get_float32_matmul_precision() == "highest"
    except RuntimeError:  # set per backend through torch's newer API: cannot tell, so not assumed
        return False


def uses_packed(batching_mode: Batching, max_batch_tokens: int | None) -> bool:
    """Token batching runs the packed forward; sentence-transformers batching keeps HF's, bit for bit."""
    return batching_mode == "tokens" or max_batch_tokens is not None


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
    device: torch.device,
) -> tuple[dict[str, list] | None, list[int], list[int], list[list[int]]]:
    """(unpadded token ids or None, lengths, sorted order, batches of indices) for one encode call.

    "sentence-transformers" sorts by characters and cuts `batch_size` texts per batch: sentence-transformers'
    own batches, hence its vectors bit for bit. "tokens" sorts by token count and cuts batches of at most
    `max_batch_tokens` padded tokens; when None, of at most `batch_size` x max_seq_length (the most one
    sentence-transformers batch can hold, so memory stays within its bound), and on CPU at most CPU_BATCH_TOKENS.
    An input module that never pads (`pads` False) gains nothing from sorting or a budget: "tokens" cuts its
    texts in input order, UNPADDED_BATCH_TEXTS per batch, each tokenised once (lengths: characters).
    """
    chars = [len(t) for t in texts]
    by_count = batching_mode == "sentence-transformers" and max_batch_tokens is None
    if not by_count and not getattr(first, "pads", True):
        order = list(range(len(texts)))
        return None, chars, order, batching.batches_by_count(order, UNPADDED_BATCH_TEXTS)
    tokenize = getattr(first, "tokenize_unpadded", None)
    encoded = tokenize(texts, prompt=prompt) if callable(tokenize) else None
    if by_count:
        order = batching.length_order(chars)
        lengths = chars if encoded is None else [len(ids) for ids in encoded["input_ids"]]
        return encoded, lengths, order, batching.batches_by_count(order, batch_size)
    if encoded is not None:
        lengths = [len(ids) for ids in encoded["input_ids"]]
    else:
        # A token budget needs real token counts (the input module's own measure, prompt included).
        lengths = first.text_lengths([prompt + t for t in texts] if prompt else texts)
    order = batching.length_order(lengths)
    budget = max_batch_tokens
    if budget is None:
        budget = batch_size * (getattr(first, "max_seq_length", None) or max(lengths, default=1))
        budget = min(budget, CPU_BATCH_TOKENS) if device.type == "cpu" else budget
    return encoded, lengths, order, batching.batches_by_tokens(order, lengths, budget)


def batch_features(
    first: Any,
    texts: list[str],
    encoded: dict[str, list] | None,
    batches: Iterable[list[int]],
    *,
    prompt: str | None,
    task: str | None,
    prefetch: bool = False,
    packed: bool = False,
) -> Iterator[tuple[list[int], dict[str, Any]]]:
    """(batch, features) per batch, tokenised by `first`; with `prefetch` the next batch is built in a thread.

    `packed` asks Transformers for the unpadded forward (see Transformer.forward).
    """

    def make(batch: list[int]) -> dict[str, Any]:
        if encoded is not None:
            features = first.collate(encoded, batch, prompt=prompt, task=task)
        else:
            features = first.preprocess([texts[i] for i in batch], prompt=prompt, task=task)
        # A Router later in the pipeline routes by task, whatever the input module did with it.
        features.setdefault("task", task)
        if packed:
            features[PACKED_KEY] = True
        return features

    # `batches` may be a progress bar: iterate it, never index it.
    made = ((batch, make(batch)) for batch in batches)
    yield from run_ahead(made, 1) if prefetch else made


def forward(
    model: Callable[[dict[str, Any]], dict[str, Any]],
    items: Iterator[tuple[list[int], dict[str, Any]]],
    device: torch.device,
    *,
    on_batch: Callable[[list[int], dict[str, Any]], None],
) -> Iterator[tuple[list[int], dict[str, Any]]]:
    """(batch, output features) per batch, the forward pass run on `device`."""
    # Kernels (flash-attn's included) launch on the current device: make it the replica's own ("cuda:N").
    scope = torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()
    with scope:
        for batch, features in items:
            on_batch(batch, features)
            yield batch, model(to_device(features, device))


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
    # closing: the generator's device scope ends here even when a batch fails, not whenever it is collected.
    with contextlib.closing(forward(model, items, device, on_batch=on_batch)) as outputs:
        for _, features in outputs:
            collector.add(postprocess(features["sentence_embedding"]))
    return collector.result()


def finish(emb: torch.Tensor, truncate_dim: int | None, normalize: bool) -> torch.Tensor:
    """Truncate to `truncate_dim` dimensions, then L2-normalise if asked (per batch, before collection)."""
    if truncate_dim is not None:
        emb = emb[..., :truncate_dim]
    return torch.nn.functional.normalize(emb, p=2, dim=-1) if normalize else emb


def unsort(sorted_emb: torch.Tensor, order: list[int]) -> torch.Tensor:
    """Rows of `sorted_emb` (in `order`) put back in input order."""
    inverse = torch.empty(len(order), dtype=torch.long)
    inverse[torch.tensor(order)] = torch.arange(len(order))
    return sorted_emb[inverse.to(sorted_emb.device)]
