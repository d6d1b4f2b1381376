"""`embedjob search OUTPUT "query"`: embed a query with the job's own model and settings and list the nearest rows.

Parquet outputs are searched exactly (every part file, streamed); Lance outputs through Lance's own nearest
search (its vector index when the job built one).
"""

from __future__ import annotations

import heapq
import os
from typing import Any

import numpy as np
import pyarrow as pa

from jobs.manifest import JOB_FILE, OutputStore
from jobs.sinks import metadata_store
from jobs.spec import OutputSpec

SIMILARITIES = ("cosine", "dot")
# What names a row besides its id in a chunked output (jobs.chunks): its window, null on document rows.
WINDOW_COLUMNS = ("chunk", "char_start", "char_end")


class SearchError(ValueError):
    """The output cannot be searched: not a complete embedjob output, or an unsupported setting."""


def embed_query(job: dict[str, Any], query: str) -> np.ndarray:
    """The query's vector, made as the job made its rows' vectors, with the model's query prompt if it has one."""
    from transformers.utils import logging as hf_logging

    from embedder import EmbeddingModel
    from jobs.spec import resolve_model_name

    hf_logging.disable_progress_bar()  # a one-line answer, not a weights-loading bar
    m = job["model"]
    spec_model = job.get("spec", {}).get("model", {})
    name = m["path"] if m.get("path") and os.path.isdir(m["path"]) else resolve_model_name(m["name"])
    model = EmbeddingModel(
        name,
        device="cpu",
        revision=m.get("revision"),
        trust_remote_code=bool(spec_model.get("trust_remote_code")),
        allow_pickle=bool(spec_model.get("allow_pickle")),
    )
    if m.get("max_seq_length"):
        model.max_seq_length = m["max_seq_length"]
    kwargs = {"normalize_embeddings": bool(m.get("normalize")), "truncate_dim": m.get("truncate_dim")}
    if m.get("prompt") is not None or m.get("prompt_name") is not None:
        # The job chose its prompt; a query prompt of the model's own still wins for the query side.
        if "query" not in getattr(model, "prompts", {}):
            kwargs.update(prompt=m.get("prompt"), prompt_name=m.get("prompt_name"))
    return np.asarray(model.encode_query([query], **kwargs), dtype=np.float32)[0]


def _scores(vectors: np.ndarray, q: np.ndarray, similarity: str) -> np.ndarray:
    vectors = vectors.astype(np.float32, copy=False)
    if similarity == "cosine":
        norms = np.linalg.norm(vectors, axis=1) * (np.linalg.norm(q) or 1.0)
        return (vectors @ q) / np.where(norms == 0, 1.0, norms)
    return vectors @ q


def search_parquet(
    store: OutputStore,
    data: OutputStore,
    q: np.ndarray,
    k: int,
    similarity: str,
    windows: tuple[str, ...] = (),
) -> list[tuple[float, Any]]:
    """Exact top-k over every committed part file (records in `store`, files in `data`), one at a time."""
    best: list[tuple[float, int, Any]] = []  # a min-heap of (score, tie-break, row key)
    seen = 0
    records = store.records_table()
    for file in records.column("file").to_pylist():
        table = data.read_table(file, ["id", "embedding", *windows])
        if table is None or table.num_rows == 0:
            continue
        col = table.column("embedding").combine_chunks()
        vectors = col.flatten().to_numpy(zero_copy_only=False).reshape(len(col), col.type.list_size)
        scores = _scores(vectors, q, similarity)
        top = np.argsort(-scores, kind="stable")[:k]
        keys = _row_keys(table.take(pa.array(top, pa.int64())))
        for j, key in zip(top, keys, strict=True):
            item = (float(scores[j]), -(seen + int(j)), key)  # earlier rows win ties
            if len(best) < k:
                heapq.heappush(best, item)
            elif item > best[0]:
                heapq.heapreplace(best, item)
        seen += table.num_rows
    return [(score, i) for score, _, i in sorted(best, reverse=True)]


def search_lance(
    uri: str, q: np.ndarray, k: int, similarity: str, storage_options: dict | None
) -> list[tuple[float, Any]]:
    """Lance's nearest search (its vector index when one was built); scores in the same sense as Parquet's."""
    from jobs.sinks.lance import import_lance, lance_storage_options

    lance = import_lance()
    ds = lance.dataset(uri, storage_options=lance_storage_options(storage_options or {}) or None)
    metric = "cosine" if similarity == "cosine" else "dot"
    table = ds.to_table(
        columns=["id", *[c for c in WINDOW_COLUMNS if c in ds.schema.names], "_distance"],
        nearest={"column": "embedding", "q": q, "k": k, "metric": metric, "nprobes": 64, "refine_factor": 10},
    )
    # Lance's distances: cosine 1 - cos, dot 1 - dot; both back to a similarity.
    scores = 1.0 - table.column("_distance").to_numpy()
    return list(zip(scores.tolist(), _row_keys(table), strict=True))


def _row_keys(table: pa.Table) -> list[dict[str, Any]]:
    """Each row's id, and its window (chunk, char_start, char_end) where the output has them."""
    return table.select(["id", *[c for c in WINDOW_COLUMNS if c in table.column_names]]).to_pylist()


def search(uri: str, query: str, k: int = 10, storage_options: dict | None = None) -> list[dict[str, Any]]:
    """The k rows nearest to `query` in a job's output: [{"rank", "id", "score"}], best first (chunked
    outputs: with the row's "chunk", "char_start" and "char_end")."""
    store = metadata_store(uri, storage_options)
    job = store.read_json(JOB_FILE)
    if job is None:
        raise SearchError(f"search: {uri} holds no {JOB_FILE}; is it the output of an embedjob run?")
    precision = job["model"].get("precision", "float32")
    if precision not in ("float32", "float16"):
        raise SearchError(f"search: {uri} holds {precision} vectors; search compares float vectors only")
    similarity = job["model"].get("similarity_fn_name") or "cosine"
    if similarity not in SIMILARITIES:
        raise SearchError(f"search: similarity {similarity!r} of {uri} is not one of {list(SIMILARITIES)}")
    q = embed_query(job, query)
    if OutputSpec(**{**job["spec"]["output"], "uri": uri}).kind == "lance":
        hits = search_lance(uri, q, k, similarity, storage_options)
    else:
        chunking = job["spec"].get("chunking") or {}
        windows = WINDOW_COLUMNS if chunking.get("enabled") and chunking.get("emit") != "documents" else ()
        hits = search_parquet(store, OutputStore(uri, storage_options), q, k, similarity, windows)
    return [{"rank": n + 1, **key, "score": round(s, 6)} for n, (s, key) in enumerate(hits)]
