"""Build one shard's output table and write files atomically (local: staged as a hidden file and renamed; object
stores: one complete upload)."""

from __future__ import annotations

import io
import os
import posixpath
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from jobs.faults import maybe_fail
from jobs.retry import RetryPolicy, call_with_retries


def open_output_fs(uri: str, storage_options: dict[str, Any]) -> tuple[Any, str]:
    """(filesystem, root path) of an output URI."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(uri, **storage_options)
    return fs, root.rstrip("/")


def embedding_type(dtype: np.dtype, dim: int) -> pa.DataType:
    """The fixed-size list type of the embedding column for vectors of `dtype` and width `dim`."""
    return pa.list_(pa.from_numpy_dtype(np.dtype(dtype)), dim)


def embedding_array(vectors: np.ndarray) -> pa.FixedSizeListArray:
    """A (rows, dim) array as a fixed-size list column (zero-copy for contiguous input)."""
    vectors = np.ascontiguousarray(vectors)
    rows, dim = vectors.shape
    values = pa.array(vectors.reshape(-1), type=pa.from_numpy_dtype(vectors.dtype))
    return pa.FixedSizeListArray.from_arrays(values, dim)


def shard_table(
    ids: pa.Array, vectors: np.ndarray, hashes: list[str], passthrough: dict[str, pa.Array]
) -> pa.Table:
    """The output table of a shard: id, embedding, text_hash, then the passthrough columns."""
    if not (len(ids) == len(vectors) == len(hashes)):
        raise ValueError(
            f"shard table: {len(ids)} ids, {len(vectors)} vectors and {len(hashes)} hashes disagree"
        )
    columns: dict[str, Any] = {
        "id": ids,
        "embedding": embedding_array(vectors),
        "text_hash": pa.array(hashes, pa.string()),
    }
    columns.update(passthrough)
    return pa.table(columns)


def parquet_bytes(table: pa.Table, compression: str) -> bytes:
    """Serialise a table as one Parquet file in memory (shards are bounded, so this is too)."""
    sink = io.BytesIO()
    pq.write_table(table, sink, compression=None if compression == "none" else compression)
    return sink.getvalue()


def is_local(fs: Any) -> bool:
    """Whether `fs` is the local filesystem (where rename is atomic and writes are not)."""
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol in ("file", "local")


def write_atomic(fs: Any, root: str, rel: str, data: bytes, policy: RetryPolicy, what: str) -> str:
    """Write `data` in full to root/rel so that a reader sees the old file or the whole new one.

    Local disk: staged as a hidden file beside it, then renamed. Object stores: one upload, which the store makes visible only
    once complete (a PUT, or a multipart upload completed on close), so no staged copy is needed.
    """
    final = posixpath.join(root, rel)
    if not is_local(fs):

        def upload() -> None:
            maybe_fail("storage.write", key=final)
            fs.pipe_file(final, data)

        call_with_retries(upload, what=f"{what}: write {final}", policy=policy)
        return final
    staged = staged_name(final)

    def put() -> None:
        maybe_fail("storage.write", key=staged)
        fs.makedirs(posixpath.dirname(staged), exist_ok=True)
        with fs.open(staged, "wb") as f:
            f.write(data)

    def move() -> None:
        maybe_fail("storage.write", key=final)
        fs.makedirs(posixpath.dirname(final), exist_ok=True)
        fs.mv(staged, final)

    call_with_retries(put, what=f"{what}: write {staged}", policy=policy)
    call_with_retries(move, what=f"{what}: move to {final}", policy=policy)
    return final


def staged_name(final: str) -> str:
    """Where a local write is staged: a hidden file beside its final name, which no reader of the folder lists."""
    return posixpath.join(posixpath.dirname(final), f".{posixpath.basename(final)}.{uuid.uuid4().hex}.tmp")


def create_atomic(fs: Any, root: str, rel: str, data: bytes, policy: RetryPolicy, what: str) -> bool:
    """Write root/rel in full only if it does not exist yet; False when it does (another writer was first).

    Local disk: staged beside it, then hard-linked to the final name (the link fails if the name exists). Object stores:
    a conditional PUT (If-None-Match) where the store offers it; elsewhere written and read back, which
    narrows the race to two writers within the same instant.
    """
    final = posixpath.join(root, rel)
    if is_local(fs):
        staged = staged_name(final)

        def put_and_link() -> bool:
            maybe_fail("storage.write", key=final)
            fs.makedirs(posixpath.dirname(final), exist_ok=True)
            with open(staged, "wb") as f:
                f.write(data)
            try:
                os.link(staged, final)
            except FileExistsError:
                with open(final, "rb") as f:
                    return f.read() == data  # ours when an earlier attempt made it
            finally:
                os.remove(staged)
            return True

        return call_with_retries(put_and_link, what=f"{what}: create {final}", policy=policy)

    def put() -> bool:
        maybe_fail("storage.write", key=final)
        try:
            fs.pipe_file(final, data, mode="create")
        except FileExistsError:
            pass
        except Exception as e:  # a 412 Precondition Failed arrives as another error on some stores
            if not ("PreconditionFailed" in repr(e) or "412" in str(e)):
                raise
        # Ours if it holds our bytes: also when an earlier attempt landed but its answer was lost.
        with fs.open(final, "rb") as f:
            return f.read() == data

    return call_with_retries(put, what=f"{what}: create {final}", policy=policy)


def retried(fn: Callable[[], Any], what: str, policy: RetryPolicy, key: str = "") -> Any:
    """Run a storage read with the fault hook and retries."""

    def attempt() -> Any:
        maybe_fail("storage.read", key=key or what)
        return fn()

    return call_with_retries(attempt, what=what, policy=policy)
