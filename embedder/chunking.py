"""Token windows: split a text into spans of at most N tokens of a model's own tokenizer, and pool their vectors."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Window:
    """One window of a text: its characters text[start:end] and the tokens it takes on its own."""

    start: int
    end: int
    tokens: int  # text tokens, without the prompt and special tokens


def _word_start(offsets: list[tuple[int, int]], k: int) -> bool:
    """Whether token k starts a word (a gap before it), so a window edge there does not split a word."""
    return k == 0 or k >= len(offsets) or offsets[k][0] > offsets[k - 1][1]


def token_spans(
    n: int,
    offsets: list[tuple[int, int]],
    budget: int,
    overlap: int,
    excess: Callable[[int, int], int] | None = None,
) -> list[tuple[int, int]]:
    """Token ranges [a, b) of at most `budget` tokens covering tokens 0..n, each starting `overlap` tokens
    before the previous one ends; edges move back (ends) or forward (starts) to word starts when one is near.

    excess(a, b): tokens by which range [a, b) is over the limit on its own (its edges may tokenise
    differently than inside the whole text); such a range ends earlier, before the next one is placed."""
    if budget < 1:
        raise ValueError(f"token windows: a window holds {budget} text tokens; need at least 1")
    if not 0 <= overlap < budget:
        raise ValueError(
            f"token windows: overlap {overlap} must be >= 0 and < the {budget} text tokens per window"
        )
    spans: list[tuple[int, int]] = []
    a = 0
    while a < n:
        b = min(n, a + budget)
        if b < n:
            # Back to a word start, but never give up more than a quarter of the window.
            for c in range(b, max(a + 1, b - budget // 4) - 1, -1):
                if _word_start(offsets, c):
                    b = c
                    break
        while excess is not None and b - a > 1 and (over := excess(a, b)) > 0:
            b = max(a + 1, b - over)
        spans.append((a, b))
        if b >= n:
            break
        nxt = max(a + 1, b - overlap)
        for c in range(nxt, b + 1):
            if _word_start(offsets, c):
                nxt = c
                break
        a = nxt
    return spans


def split_windows(
    text: str,
    offsets: list[tuple[int, int]],
    max_tokens: int,
    overhead: int,
    overlap: int,
    count: Callable[[list[str]], list[int]],
) -> list[Window]:
    """Windows of `text` (token char `offsets`, special tokens left out) that each fit `max_tokens` with the
    prompt and special tokens (`overhead` of them); `count` gives the full token count of window texts, to
    shrink a window whose edges tokenise differently on their own. A text that fits is one window of all of it."""
    n = len(offsets)
    if n + overhead <= max_tokens:
        return [Window(0, len(text), n)]
    budget = max_tokens - overhead
    if budget < 1:
        raise ValueError(
            f"chunking.max_tokens: {max_tokens} tokens leave no room for text after the prompt and special "
            f"tokens ({overhead})"
        )

    def excess(a: int, b: int) -> int:
        return count([text[offsets[a][0] : offsets[b - 1][1]]])[0] - max_tokens

    spans = token_spans(n, offsets, budget, overlap, excess)
    return [Window(offsets[a][0], offsets[b - 1][1], b - a) for a, b in spans]


def pool_chunks(vectors: np.ndarray, weights: list[int] | np.ndarray, normalize: bool) -> np.ndarray:
    """One document vector from its chunks' float vectors: the mean weighted by `weights`, unit length if asked."""
    w = np.asarray(weights, np.float64)
    if len(w) != len(vectors) or len(w) == 0:
        raise ValueError(f"pool_chunks: {len(vectors)} vectors and {len(w)} weights")
    w = np.where(w > 0, w, 1.0)
    pooled = (np.asarray(vectors, np.float64) * w[:, None]).sum(axis=0) / w.sum()
    if normalize:
        norm = np.linalg.norm(pooled)
        pooled = pooled / (norm if norm > 0 else 1.0)
    return pooled.astype(np.float32)


class Chunker:
    """Splits texts with a model's fast tokenizer into windows that fit `max_tokens` with `prompt` and specials."""

    def __init__(self, tokenizer: Any, max_tokens: int, overlap: int, prompt: str | None = None):
        if not getattr(tokenizer, "is_fast", False):
            raise ValueError("chunking: the model's tokenizer is not a fast tokenizer (no character offsets)")
        self.tokenizer = tokenizer
        # Uncut token counts are the point here; transformers would warn once that they exceed the limit.
        getattr(tokenizer, "deprecation_warnings", {})[
            "sequence-length-is-longer-than-the-specified-maximum"
        ] = True
        self.max_tokens = max_tokens
        self.overlap = overlap
        self.prompt = prompt or ""
        self.overhead = len(self._ids([self.prompt])[0])

    def _ids(self, texts: list[str]) -> list[list[int]]:
        return self.tokenizer(texts, add_special_tokens=True, truncation=False)["input_ids"]

    def count(self, texts: list[str]) -> list[int]:
        """Tokens of `prompt + text` with special tokens, uncut, per text."""
        if not texts:
            return []  # a tokenizer refuses an empty batch
        return [len(ids) for ids in self._ids([self.prompt + t for t in texts])]

    def split(self, texts: list[str]) -> list[list[Window]]:
        """The windows of each text."""
        if not texts:
            return []
        enc = self.tokenizer(texts, add_special_tokens=False, truncation=False, return_offsets_mapping=True)[
            "offset_mapping"
        ]
        return [
            split_windows(
                t, [tuple(o) for o in offs], self.max_tokens, self.overhead, self.overlap, self.count
            )
            for t, offs in zip(texts, enc, strict=True)
        ]
