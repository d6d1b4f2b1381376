"""The Ray actor: one model replica that reads, checks, embeds and commits whole shards."""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np
import pyarrow as pa
import ray

from embedder.chunking import Chunker
from embedder.prefetch import prefetch
from embedder.quantize import quantization_ranges, quantize_embeddings
from jobs.chunks import ChunkRows, chunk_rows, chunk_table, job_chunker
from jobs.faults import maybe_fail
from jobs.fingerprint import digest, match_hashes, settings_fingerprint, text_hashes, weights_fingerprint
from jobs.images import shard_reader
from jobs.keypass import read_reused, read_reused_rows
from jobs.read import ID, ROW, TEXT, iter_shard_batches
from jobs.retry import RetryPolicy
from jobs.rows import BadRowsError, check_column, check_ids, default_max_chars, merge_bad
from jobs.shards import Shard
from jobs.sinks import open_sink
from jobs.spec import ComputeSpec, JobSpec, resolve_model_name
from jobs.write import shard_table

# The model fields that decide what an actor loads; the rest of a spec may change from task to task.
LOADING_FIELDS = (
    "name",
    "revision",
    "model_kwargs",
    "backend",
    "max_seq_length",
    "trust_remote_code",
    "allow_pickle",
)
PREFETCH = 2  # batches read ahead of the forward pass
# One schema for every shard's _errors file, so the folder reads as one table even when a shard's
# quarantined rows all have null ids.
ERRORS_SCHEMA = pa.schema(
    [("id", pa.string()), ("file", pa.string()), ("row", pa.int64()), ("reason", pa.string())]
)
BATCHES_PER_READ = 8  # encode() length-sorts within a call, so bigger calls pad less
# Texts per call at least: 256-text calls ran 6-8% slower than 1,024-text ones (MiniLM, bf16 and fp32, same
# process: more runs of one or two rows in attention, smaller GEMMs); a job's embed stage 1.04-1.06x faster.
MIN_TEXTS_PER_CALL = 1024
# ... for texts cut to at most this many characters (MiniLM's 256 tokens: 64 Ki): a call holds them all.
SHORT_TEXT_CHARS = 1 << 17


class ShardError(RuntimeError):
    """A shard that cannot be committed for a reason a retry will not fix (picklable, for Ray)."""


def rows_per_call(compute: ComputeSpec, max_chars: int | None, long_rows: bool) -> int:
    """Rows read and encoded at a time (a read never crosses a row group): compute.rows_per_call, else 8
    batches, at least MIN_TEXTS_PER_CALL for texts cut to SHORT_TEXT_CHARS; long_rows: images (held decoded)
    or documents to chunk."""
    if compute.rows_per_call:
        return compute.rows_per_call
    short = not long_rows and bool(max_chars) and max_chars <= SHORT_TEXT_CHARS
    return max(compute.batch_size * BATCHES_PER_READ, MIN_TEXTS_PER_CALL if short else 0)


class ShardWorker:
    """Holds one EmbeddingModel; `process(task)` embeds and commits one shard and returns its manifest record."""

    def __init__(self, spec: dict[str, Any], num_threads: int | None = None):
        import torch

        if num_threads:
            # Ray sets OMP_NUM_THREADS=1 in workers; give torch the CPUs this actor reserved.
            torch.set_num_threads(num_threads)
        from embedder import EmbeddingModel

        self.spec = JobSpec.from_dict(spec)
        m = self.spec.model
        device = None if self.spec.compute.device == "auto" else self.spec.compute.device
        self.model = EmbeddingModel(
            resolve_model_name(m.name),
            device=device,
            revision=m.revision,
            model_kwargs=m.model_kwargs or None,
            backend=m.backend,
            trust_remote_code=m.trust_remote_code,
            allow_pickle=m.allow_pickle,
        )
        if m.max_seq_length:
            self.model.max_seq_length = m.max_seq_length
        self._info: dict[str, dict[str, Any]] = {}
        self._current: tuple[str, int] = ("", 0)  # (shard id, rows done so far) of the shard being embedded
        self._job_key = ""
        self._weights = ""
        self._use(spec)

    def _use(self, spec: dict[str, Any]) -> None:
        """Switch to a job's input/output/policy; the model (same model section, by the pool's key) stays."""
        key = digest(spec, size=16)
        if key == self._job_key:
            return
        self.spec = JobSpec.from_dict(spec)
        # Not a loading field: a warm replica switches precision per job without reloading the weights.
        self.model.compute_precision = self.spec.model.compute_precision
        self.policy = RetryPolicy(attempts=self.spec.policy.retries)
        self.sink = open_sink(self.spec, self.policy)
        self.max_chars = self.spec.policy.max_text_chars or default_max_chars(
            getattr(self.model, "max_seq_length", None), self.spec.chunking.enabled
        )
        if self.spec.input.modality == "image" and not callable(
            getattr(self.model[0], "preprocess_images", None)
        ):
            raise ShardError(
                f"input.modality: image, but model {self.spec.model.name!r} embeds texts only "
                f"(its first module is {type(self.model[0]).__name__}; use a CLIP-style model)"
            )
        self._job_key = key
        self._chunker = None

    def chunker(self) -> Chunker | None:
        """The job's window splitter (see jobs.chunks.job_chunker), made once per job."""
        if self._chunker is None:
            try:
                self._chunker = job_chunker(self.model, self.spec)
            except ValueError as e:
                raise ShardError(str(e)) from None
        return self._chunker

    def info(self, spec: dict[str, Any] | None = None) -> dict[str, Any]:
        """What _job.json records about the model under `spec`: fingerprints, dimension, dtype, pooling, limits."""
        if spec is not None:
            self._use(spec)
        spec_dict = self.spec.to_dict()
        model_spec = spec_dict["model"]
        # What the settings fingerprint covers beyond the model section: the character cut and chunking.
        key = digest(model_spec, self.max_chars, spec_dict["chunking"])
        self.chunker()  # a chunking the model cannot do fails the job here, before any shard
        if key not in self._info:
            probe = self._encode(["probe"], probe=True)
            describe = self.model.describe() if hasattr(self.model, "describe") else {}
            weights = self._weights or weights_fingerprint(str(self.model.model_path))
            self._weights = weights
            self._info[key] = {
                "model_path": str(self.model.model_path),
                "weights_fingerprint": weights,
                "settings_fingerprint": settings_fingerprint(weights, spec_dict, describe, self.max_chars),
                "dimension": int(probe.shape[1]),
                "dtype": str(probe.dtype),
                "model_dimension": int(self.model.get_embedding_dimension() or probe.shape[1]),
                "max_seq_length": getattr(self.model, "max_seq_length", None),
                "similarity_fn_name": getattr(self.model, "similarity_fn_name", None),
                "describe": describe,
            }
        return self._info[key]

    @ray.method(concurrency_group="progress")
    def progress(self) -> tuple[str, int]:
        """(shard id, rows done) of the shard in work; answered on its own thread while `process` runs."""
        return self._current

    def ready(self) -> bool:
        """A cheap call the driver uses to learn that a (re)started replica is up."""
        return True

    def stats(self) -> dict[str, int]:
        """The model's running counters (texts, tokens, padded tokens)."""
        return dict(getattr(self.model, "stats", {}) or {})

    def _encode(self, texts: list[str], probe: bool = False) -> np.ndarray:
        """The job's vectors for `texts`; int8/uint8 with the job's ranges (the probe needs only their shape)."""
        m = self.spec.model
        if m.precision not in ("int8", "uint8"):
            return self._vectors(texts, m.precision)
        return self._finish(self._vectors(texts, "float32"), probe)

    def _finish(self, vectors: np.ndarray, probe: bool = False) -> np.ndarray:
        """float32 vectors in the job's precision (int8/uint8 with the job's ranges)."""
        m = self.spec.model
        if m.precision == "float32":
            return vectors
        if m.precision == "float16":
            return vectors.astype(np.float16)
        ranges = m.int8_ranges
        if m.precision in ("int8", "uint8") and ranges is None:
            if not probe:
                raise ShardError("model.int8_ranges: not set; the driver calibrates them before any shard")
            ranges = [[-1.0] * vectors.shape[1], [1.0] * vectors.shape[1]]
        found = None if ranges is None else np.asarray(ranges, np.float32)
        return quantize_embeddings(vectors, m.precision, ranges=found)

    def _chunked(self, texts: list[str], hashes: list[str], emit: str, previous: Any = None) -> Any:
        """`texts` as chunking's rows (see jobs.chunks.chunk_rows): split, embedded, pooled as `emit` asks."""
        windows = self.chunker().split(texts)
        return chunk_rows(
            texts,
            windows,
            hashes,
            emit,
            lambda chunk_texts: self._vectors(chunk_texts, "float32"),
            self._finish,
            self.spec.model.normalize,
            previous,
            pool_reused=self.spec.model.precision == "float32",
        )

    def calibrate(
        self, shards: list[dict[str, Any]], rows_per_shard: int, spec: dict[str, Any]
    ) -> dict[str, Any]:
        """int8/uint8 ranges from the float32 vectors of the first valid rows of some shards."""
        self._use(spec)
        texts: list[str] = []
        for shard in map(Shard.from_dict, shards):
            batch = next(iter_shard_batches(shard, self.spec.input, rows_per_shard, self.policy), None)
            if batch is not None:
                images = shard_reader(self.spec, shard, self.policy)
                clean, _ = check_column(batch.column(TEXT), max_chars=self.max_chars, images=images)
                texts += clean
        if len(texts) < 2:
            raise ShardError(
                f"model.int8_ranges: the input has {len(texts)} valid row(s) to calibrate int8 ranges from; "
                "give model.int8_ranges"
            )
        ranges = quantization_ranges(self._vectors(texts, "float32"), self.spec.model.precision)
        return {"ranges": ranges.tolist(), "rows": len(texts), "shards": len(shards)}

    def _vectors(self, texts: list[str], precision: str) -> np.ndarray:
        """`texts` embedded with the job's settings at `precision` (float16: at float32, then cast)."""
        m, c = self.spec.model, self.spec.compute
        vectors = self.model.encode(
            texts,
            batch_size=c.batch_size,
            prompt_name=m.prompt_name,
            prompt=m.prompt,
            task=m.task,
            normalize_embeddings=m.normalize,
            truncate_dim=m.truncate_dim,
            precision="float32" if precision == "float16" else precision,
            max_batch_tokens=c.max_batch_tokens,
            batching="tokens",
            # A text is never read as an image file or URL; an image job hands over the bytes it read.
            image_strings=False,
        )
        vectors = np.asarray(vectors)
        return vectors.astype(np.float16) if precision == "float16" else vectors

    def process(self, task: dict[str, Any], spec: dict[str, Any] | None = None) -> dict[str, Any]:
        """Embed one shard and commit it (data file, then manifest record); an already committed shard is skipped.

        task: {"shard": Shard dict, "reuse": [(file, row group)] of the shard's reusable vectors the key pass
        left (or None), "bad_rows": [(row, why)] of repeated ids}.
        """
        if spec is not None:
            self._use(spec)
        shard = Shard.from_dict(task["shard"])
        existing = self.sink.committed_record(shard)
        if existing is not None:
            return {**existing, "skipped": True}
        info = self.info()
        started = time.perf_counter()
        tokens_before = self.stats().get("tokens", 0)
        ch = self.spec.chunking
        by_rows = ch.enabled and ch.emit != "documents"  # a row per window: reuse goes window by window
        # {input row: (text_hash, vector)} found in the previous output by the key pass; by_rows: {input row:
        # [(text_hash, vector)]} of every previous row of the row's id.
        reader = read_reused_rows if by_rows else read_reused
        reusable = reader(self.sink.store, task["reuse"], shard.index) if task.get("reuse") else {}
        # Rows found bad at plan time (repeated ids), by row number within the source.
        known = {int(row): reason for row, reason in task.get("bad_rows") or []}

        dim, dtype = info["dimension"], np.dtype(info["dtype"])
        vectors = np.empty((shard.rows, dim), dtype)
        ids: list[pa.Array] = []
        hashes: list[str] = []
        passthrough: dict[str, list[pa.Array]] = {c: [] for c in self.spec.input.passthrough}
        errors: list[dict[str, Any]] = []
        reused = 0  # vectors copied from a previous output
        kept = 0  # a live table's unchanged rows, left where they are
        embedded = 0  # chunking: windows the model embedded
        chunks = deleted = truncated = 0
        pieces: list[pa.Table] = []  # by_rows: each batch's rows
        filled = 0
        images = shard_reader(self.spec, shard, self.policy)  # None unless input.modality is image
        batches = iter_shard_batches(
            shard,
            self.spec.input,
            rows_per_call(
                self.spec.compute, self.max_chars, long_rows=images is not None or self.spec.chunking.enabled
            ),
            self.policy,
        )
        id_type: pa.DataType | None = None
        chunker = self.chunker() if images is None else None  # windows and truncation are for texts
        self._current = (shard.shard_id, 0)
        for batch_no, batch in enumerate(prefetch(batches, PREFETCH)):
            id_type = batch.schema.field(ID).type
            raw_ids = batch.column(ID).to_pylist()
            clean, text_bad = check_column(batch.column(TEXT), max_chars=self.max_chars, images=images)
            bad_text_pos = {p for p, _ in text_bad}
            text_at = dict(
                zip((p for p in range(batch.num_rows) if p not in bad_text_pos), clean, strict=True)
            )
            rows = batch.column(ROW).to_pylist()
            listed = [(p, known[r]) for p, r in enumerate(rows) if r in known] if known else []
            bad = merge_bad(text_bad, check_ids(raw_ids), listed)
            if bad:
                if self.spec.policy.on_bad_row == "fail":
                    where = f"shard {shard.index} ({shard.shard_id}) of {shard.path or shard.source}"
                    message = str(
                        BadRowsError(where, bad, first_row=rows[0], column=self.spec.input.text_column)
                    )
                    raise ShardError(
                        message.replace("set bad_rows: quarantine", "set policy.on_bad_row: quarantine")
                    )
                errors += [
                    {"id": _str(raw_ids[p]), "file": shard.source, "row": rows[p], "reason": r}
                    for p, r in bad
                ]
            bad_pos = {p for p, _ in bad}
            keep = [p for p in range(batch.num_rows) if p not in bad_pos]
            texts = [text_at[p] for p in keep]
            batch_hashes = text_hashes(texts)
            if not ch.enabled and chunker is not None:
                truncated += sum(n > chunker.max_tokens for n in chunker.count(texts))
            if by_rows:
                maybe_fail("worker.batch", shard=shard.shard_id, shard_index=shard.index, batch=batch_no)
                found = self._chunked(texts, batch_hashes, ch.emit, [reusable.get(rows[p], []) for p in keep])
                pieces.append(self._window_table(batch, [keep[d] for d in found.doc], found, dim, dtype))
                embedded, reused, deleted = (
                    embedded + found.embedded,
                    reused + found.reused,
                    deleted + found.deleted,
                )
                chunks += sum(c is not None for c in found.chunk)
                hashes += batch_hashes
                filled += len(keep)
                self._current = (shard.shard_id, self._current[1] + batch.num_rows)
                continue
            if reusable and self.sink.keeps_unchanged:
                stay = self._unchanged(shard, batch, rows, keep, batch_hashes, reusable)
                if stay:
                    keep = [p for k, p in enumerate(keep) if k not in stay]
                    texts = [t for k, t in enumerate(texts) if k not in stay]
                    batch_hashes = [h for k, h in enumerate(batch_hashes) if k not in stay]
                    kept += len(stay)
            to_embed = list(range(len(keep)))
            if reusable and not self.sink.keeps_unchanged:
                to_embed = []
                for k, p in enumerate(keep):
                    hit = reusable.get(rows[p])
                    # The hash is checked again: the input may have changed since the key pass read it.
                    if hit is not None and hit[0] == batch_hashes[k] and len(hit[1]) == dim:
                        vectors[filled + k] = hit[1]
                        reused += 1
                    else:
                        to_embed.append(k)
            if to_embed:
                maybe_fail("worker.batch", shard=shard.shard_id, shard_index=shard.index, batch=batch_no)
                if ch.enabled:  # documents: each text's windows pooled into its vector
                    found = self._chunked(
                        [texts[k] for k in to_embed], [batch_hashes[k] for k in to_embed], "documents"
                    )
                    vectors[[filled + k for k in to_embed]] = np.asarray(found.vectors, dtype).reshape(
                        -1, dim
                    )
                    embedded += found.embedded
                else:
                    vectors[[filled + k for k in to_embed]] = self._encode([texts[k] for k in to_embed])
                    embedded += len(to_embed)
            take = pa.array(keep, pa.int64())
            ids.append(batch.column(ID).take(take).combine_chunks())
            for col in passthrough:
                passthrough[col].append(batch.column(col).take(take).combine_chunks())
            hashes += batch_hashes
            filled += len(keep)
            self._current = (shard.shard_id, self._current[1] + batch.num_rows)
        if by_rows:
            empty = [chunk_table(pa.array([], id_type or pa.string()), ChunkRows(), dim, dtype, {})]
            table = pa.concat_tables(pieces or empty)
        else:
            table = shard_table(
                pa.concat_arrays(ids) if ids else pa.array([], id_type or pa.string()),
                vectors[:filled],
                hashes,
                {c: pa.concat_arrays(parts) for c, parts in passthrough.items()},
            )
        table = table.replace_schema_metadata({b"embedjob": json.dumps(self._provenance(info)).encode()})
        err = None
        if errors:
            err = pa.Table.from_pylist(errors, schema=ERRORS_SCHEMA)
        counts = {
            "embedded": embedded,
            "reused": reused + kept,
            # Chunking: documents written (rows_in = documents + quarantined), window rows, windows gone;
            # without it: texts cut at the model's limit (None when the model has no tokenizer to count with).
            "documents": filled + kept if ch.enabled else None,
            "chunks": (chunks if by_rows else embedded) if ch.enabled else None,
            "deleted": deleted if by_rows else None,
            "truncated": None if ch.enabled or chunker is None else truncated,
            "text_hash_digest": digest(hashes, size=16),
            "tokens": self.stats().get("tokens", 0) - tokens_before,
            "seconds": round(time.perf_counter() - started, 3),
        }
        return self.sink.write_shard(shard, table, err, counts)

    def _window_table(
        self, batch: pa.Table, positions: list[int], rows: ChunkRows, dim: int, dtype: np.dtype
    ) -> pa.Table:
        """chunk_table of a batch's rows: id and passthrough values repeated for each row of a document."""
        take = pa.array(positions, pa.int64())
        columns = {c: batch.column(c).take(take).combine_chunks() for c in self.spec.input.passthrough}
        return chunk_table(batch.column(ID).take(take).combine_chunks(), rows, dim, dtype, columns)

    def _provenance(self, info: dict[str, Any]) -> dict[str, Any]:
        """What a part file says about its vectors, so that a copy of it keeps its provenance."""
        m = self.spec.model
        return {
            "model": m.name,
            "revision": m.revision,
            "weights_fingerprint": info["weights_fingerprint"],
            "settings_fingerprint": info["settings_fingerprint"],
            "dimension": info["dimension"],
            "precision": m.precision,
            "normalize": m.normalize,
            "prompt_name": m.prompt_name,
            "prompt": m.prompt,
            "truncate_dim": m.truncate_dim,
            "similarity_fn_name": info["similarity_fn_name"],
        }

    def _unchanged(
        self,
        shard: Shard,
        batch: pa.Table,
        rows: list[int],
        keep: list[int],
        hashes: list[str],
        reusable: dict[int, tuple[str, Any]],
    ) -> set[int]:
        """Positions in `keep` of the rows a live table holds unchanged (same id, text and passthrough values)."""
        columns = list(self.spec.input.passthrough)
        compare = match_hashes(hashes, batch.select(columns).take(pa.array(keep, pa.int64())))
        stay = set()
        for k, p in enumerate(keep):
            hit = reusable.get(rows[p])
            if hit is None:
                continue
            if hit[0] != compare[k]:
                # Skipping it would leave a stale row, embedding it a second copy: the input moved under the run.
                raise ShardError(
                    f"shard {shard.index} ({shard.shard_id}): row {rows[p]} of {shard.source} changed after the "
                    "key pass read it; rerun the job once the input is stable"
                )
            stay.add(k)
        return stay


def _str(value: Any) -> str | None:
    return None if value is None else str(value)
