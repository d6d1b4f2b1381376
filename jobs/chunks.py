"""A batch of documents as output rows under chunking: a row per window, per document, or both, with the
vectors of unchanged windows taken from a previous output and document vectors pooled from their windows."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from embedder.chunking import Chunker, Window, pool_chunks
from jobs.fingerprint import text_hashes
from jobs.spec import JobSpec
from jobs.write import embedding_array

# Previous rows of one document: (text hash, vector) per row, as the key pass gathered them.
Previous = list[tuple[str, Any]]


@dataclass
class ChunkRows:
    """Output rows of a batch of documents; `doc` is each row's document (its position in the batch)."""

    doc: list[int] = field(default_factory=list)
    chunk: list[int | None] = field(default_factory=list)
    start: list[int] = field(default_factory=list)
    end: list[int] = field(default_factory=list)
    hashes: list[str] = field(default_factory=list)
    vectors: list[Any] = field(default_factory=list)
    embedded: int = 0  # windows the model embedded
    reused: int = 0  # vectors taken from the previous output
    deleted: int = 0  # previous rows of these documents that no row of theirs carries on


def job_chunker(model: Any, spec: JobSpec) -> Chunker | None:
    """The window splitter of a job (JobSpec `spec`): the model's fast tokenizer, limit and prompt; without
    chunking, the same at the model's limit, to count the texts it cuts. None when the model's first module
    has no fast tokenizer (texts cut go uncounted); ValueError when chunking needs one, or asks too much."""
    first = model[0] if hasattr(model, "__getitem__") else None
    tokenizer = getattr(first, "tokenizer", None)
    limit = getattr(model, "max_seq_length", None)
    ch, m = spec.chunking, spec.model
    if tokenizer is None or not getattr(tokenizer, "is_fast", False) or not limit:
        if ch.enabled:
            raise ValueError(
                "chunking: the model's first module has no fast tokenizer and token limit to split texts with "
                f"({type(first).__name__})"
            )
        return None
    max_tokens = (ch.max_tokens or limit) if ch.enabled else limit
    if max_tokens > limit:
        raise ValueError(
            f"chunking.max_tokens: {max_tokens} is more than the model's limit of {limit} tokens "
            "(model.max_seq_length)"
        )
    prompt = model.resolve_prompt(m.prompt, m.prompt_name)
    return Chunker(tokenizer, max_tokens, ch.overlap if ch.enabled else 0, prompt)


def chunk_rows(
    texts: list[str],
    windows: list[list[Window]],
    doc_hashes: list[str],
    emit: str,
    encode: Callable[[list[str]], np.ndarray],
    finish: Callable[[np.ndarray], np.ndarray],
    normalize: bool,
    previous: list[Previous] | None = None,
    pool_reused: bool = True,
) -> ChunkRows:
    """The rows of `texts` split into `windows`, in document order (both: each document's row before its
    windows' rows).

    encode: float32 vectors of window texts; finish: float32 vectors in the job's precision. previous: per
    document, the previous output's rows of its id; a window whose text hash is among them takes that vector
    (a document row under both: when the document and all its windows are unchanged). pool_reused: reused
    window vectors are float32 and may be pooled; else a changed document's windows are all embedded anew.
    """
    prev = previous or [[] for _ in texts]
    # Per document: its windows' hashes, their reused vectors (None: to embed), its reused document vector.
    plans: list[tuple[list[str], list[Any], Any]] = []
    need: list[str] = []
    for d, (text, wins) in enumerate(zip(texts, windows, strict=True)):
        found = dict(reversed(prev[d]))  # the first row of a hash wins
        hashes = text_hashes([text[w.start : w.end] for w in wins])
        reused = [found.get(h) if emit != "documents" else None for h in hashes]
        whole = None
        if emit == "both" and doc_hashes[d] in found and all(v is not None for v in reused):
            whole = found[doc_hashes[d]]
        elif emit == "both" and not pool_reused:
            reused = [None] * len(wins)
        plans.append((hashes, reused, whole))
        need += [text[w.start : w.end] for w, v in zip(wins, reused, strict=True) if v is None]
    fresh = encode(need) if need else np.empty((0, 0), np.float32)
    done = finish(fresh) if need else fresh
    out = ChunkRows()
    k = 0
    for d, (text, wins) in enumerate(zip(texts, windows, strict=True)):
        hashes, reused, whole = plans[d]
        f32: list[Any] = []
        final: list[Any] = []
        for v in reused:
            if v is None:
                f32.append(fresh[k])
                final.append(done[k])
                k += 1
                out.embedded += 1
            else:
                f32.append(v)
                final.append(v)
                out.reused += 1
        if emit != "chunks":
            if whole is None:
                pooled = pool_chunks(np.stack(f32).astype(np.float32), [w.tokens for w in wins], normalize)
                whole = finish(pooled[None, :])[0]
            out.doc.append(d)
            out.chunk.append(None)
            out.start.append(0)
            out.end.append(len(text))
            out.hashes.append(doc_hashes[d])
            out.vectors.append(whole)
        if emit != "documents":
            for i, (w, h, v) in enumerate(zip(wins, hashes, final, strict=True)):
                out.doc.append(d)
                out.chunk.append(i)
                out.start.append(w.start)
                out.end.append(w.end)
                out.hashes.append(h)
                out.vectors.append(v)
        kept = set(hashes) | ({doc_hashes[d]} if emit == "both" else set())
        out.deleted += sum(1 for h, _ in prev[d] if h not in kept)
    return out


def chunk_table(
    ids: pa.Array, rows: ChunkRows, dim: int, dtype: np.dtype, passthrough: dict[str, pa.Array]
) -> pa.Table:
    """A shard's output table under emit chunks or both: id, chunk, char_start, char_end, embedding,
    text_hash, then the passthrough columns (`ids` and `passthrough` already one entry per row)."""
    vectors = np.asarray(rows.vectors, dtype).reshape(len(rows.vectors), dim)
    columns: dict[str, Any] = {
        "id": ids,
        "chunk": pa.array(rows.chunk, pa.int32()),
        "char_start": pa.array(rows.start, pa.int64()),
        "char_end": pa.array(rows.end, pa.int64()),
        "embedding": embedding_array(vectors),
        "text_hash": pa.array(rows.hashes, pa.string()),
    }
    columns.update(passthrough)
    return pa.table(columns)
