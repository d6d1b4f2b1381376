"""Read one shard's rows (text, id, passthrough) in batches: Parquet, JSON, CSV or a Hugging Face dataset."""

from __future__ import annotations

import posixpath
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from jobs.faults import maybe_fail
from jobs.fingerprint import digest
from jobs.formats import Piece, decode_schema, read_piece
from jobs.retry import RetryPolicy, call_with_retries
from jobs.spec import FILE_FORMATS, InputSpec

if TYPE_CHECKING:
    from jobs.shards import Shard

TEXT, ID, ROW = "__text__", "__id__", "__row__"
_HF_FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet", ".txt": "text"}
_datasets: dict[str, Any] = {}


def open_input_fs(inp: InputSpec) -> tuple[Any, str]:
    """(filesystem, path) for input.uri with its storage options."""
    import fsspec

    return fsspec.core.url_to_fs(inp.uri, **inp.storage_options)


def open_parquet(fs: Any, path: str, policy: RetryPolicy) -> pq.ParquetFile:
    """Open a Parquet file (footer read) with storage retries."""

    def attempt() -> pq.ParquetFile:
        maybe_fail("storage.read", key=path)
        return pq.ParquetFile(fs.open(path, "rb"))

    return call_with_retries(attempt, what=f"input {path}: open", policy=policy)


def read_columns(inp: InputSpec) -> list[tuple[str, str]]:
    """(column, spec field) for each input column the job reads: text, id (if given), passthrough."""
    cols = [(inp.text_column, "input.text_column")]
    if inp.id_column:
        cols.append((inp.id_column, "input.id_column"))
    cols += [(c, f"input.passthrough[{k}]") for k, c in enumerate(inp.passthrough)]
    return cols


def dataset_kind(inp: InputSpec) -> str:
    """'files' (Parquet, JSON, CSV), 'hf_disk', 'hf_hub' or 'hf_files': input.format or what the uri holds."""
    if inp.format in FILE_FORMATS:
        return "files"
    if inp.format != "auto":
        return inp.format
    if inp.dataset:
        return "hf_hub"
    if inp.data_files:
        return "hf_files"
    fs, root = open_input_fs(inp)
    if fs.isdir(root) and (
        fs.exists(posixpath.join(root, "state.json")) or fs.exists(posixpath.join(root, "dataset_dict.json"))
    ):
        return "hf_disk"
    return "files"


def open_dataset(inp: InputSpec) -> Any:
    """The (memory-mapped) HF Dataset behind a dataset input; opened once per process."""
    key = digest(inp.uri, inp.format, inp.dataset, inp.config, inp.split, inp.data_files, inp.storage_options)
    if key in _datasets:
        return _datasets[key]
    import datasets

    kind = dataset_kind(inp)
    if kind == "hf_disk":
        ds = datasets.load_from_disk(inp.uri, storage_options=inp.storage_options or None)
    elif kind == "hf_hub":
        ds = datasets.load_dataset(
            inp.dataset, inp.config, split=inp.split, storage_options=inp.storage_options or None
        )
    else:
        files = inp.data_files
        first = (
            files
            if isinstance(files, str)
            else (files[0] if isinstance(files, list) else next(iter(files.values())))
        )
        if isinstance(first, list):
            first = first[0]
        ext = posixpath.splitext(str(first))[1].lower()
        if ext not in _HF_FILE_BUILDERS:
            raise ValueError(
                f"input.data_files: cannot tell the format of {first!r}; use one of {sorted(_HF_FILE_BUILDERS)}"
            )
        ds = datasets.load_dataset(_HF_FILE_BUILDERS[ext], data_files=files, split=inp.split or "train")
    if isinstance(ds, datasets.DatasetDict):
        if not inp.split:
            raise ValueError(f"input.split: required for a dataset with splits {sorted(ds)}")
        if inp.split not in ds:
            raise ValueError(f"input.split: {inp.split!r} is not one of {sorted(ds)}")
        ds = ds[inp.split]
    _datasets[key] = ds
    return ds


def iter_shard_batches(
    shard: Shard, inp: InputSpec, batch_rows: int, policy: RetryPolicy, *, keys_only: bool = False
) -> Iterator[pa.Table]:
    """Yield the shard's rows in order, as tables of <= batch_rows rows: __text__, __id__, __row__, passthrough.

    keys_only: read just the id column (the duplicate check); the tables then hold __id__ and __row__.
    """
    if keys_only:
        cols = [inp.id_column] if inp.id_column else [inp.text_column]
    else:
        cols = list(dict.fromkeys(c for c, _ in read_columns(inp)))
    if shard.kind == "parquet":
        pieces = _parquet_pieces(shard, inp, cols, policy)
    elif shard.kind == "dataset":
        pieces = _dataset_pieces(shard, inp, cols, batch_rows)
    else:
        pieces = _text_pieces(shard, inp, cols, policy)
    for table, first_row in pieces:
        for lo in range(0, table.num_rows, batch_rows):
            part = table.slice(lo, batch_rows)
            yield _normalise(part, inp, shard.source, first_row + lo, keys_only)


def _parquet_pieces(
    shard: Shard, inp: InputSpec, cols: list[str], policy: RetryPolicy
) -> Iterator[tuple[pa.Table, int]]:
    fs, _ = open_input_fs(inp)
    for group, group_start in zip(shard.row_groups, shard.group_starts, strict=True):

        def attempt(g: int = group) -> pa.Table:
            maybe_fail("storage.read", key=shard.path)
            # A fresh handle per attempt: a failed read can leave a remote file object mid-stream.
            with fs.open(shard.path, "rb") as f:
                return pq.ParquetFile(f).read_row_group(g, columns=cols)

        table = call_with_retries(
            attempt, what=f"shard {shard.shard_id}: read {shard.path} row group {group}", policy=policy
        )
        lo = max(shard.start, group_start)
        hi = min(shard.stop, group_start + table.num_rows)
        if hi > lo:
            yield table.slice(lo - group_start, hi - lo), lo


def _text_pieces(
    shard: Shard, inp: InputSpec, cols: list[str], policy: RetryPolicy
) -> Iterator[tuple[pa.Table, int]]:
    fs, _ = open_input_fs(inp)
    schema = decode_schema(shard.read_schema)
    schema = pa.schema([schema.field(c) for c in cols])
    piece = Piece(shard.start, shard.stop, shard.byte_start, shard.byte_stop)

    def attempt() -> pa.Table:
        maybe_fail("storage.read", key=shard.path)
        return read_piece(fs, shard.kind, shard.path, piece, schema)

    what = f"shard {shard.shard_id}: read {shard.path} rows {shard.start}-{shard.stop - 1}"
    yield call_with_retries(attempt, what=what, policy=policy), shard.start


def _dataset_pieces(
    shard: Shard, inp: InputSpec, cols: list[str], batch_rows: int
) -> Iterator[tuple[pa.Table, int]]:
    ds = open_dataset(inp).select_columns(cols).with_format("arrow")
    for lo in range(shard.start, shard.stop, batch_rows):
        hi = min(shard.stop, lo + batch_rows)
        yield ds[lo:hi], lo


def _normalise(
    table: pa.Table, inp: InputSpec, source: str, first_row: int, keys_only: bool = False
) -> pa.Table:
    """Rename to the runner's internal columns; ids derived from file and row when input.id_column is unset."""
    n = table.num_rows
    rows = pa.array(range(first_row, first_row + n), pa.int64())
    if inp.id_column:
        ids = table.column(inp.id_column)
    else:
        ids = pa.array([f"{source}:{r}" for r in range(first_row, first_row + n)], pa.string())
    if keys_only:
        return pa.table({ID: ids, ROW: rows})
    columns = {TEXT: table.column(inp.text_column), ID: ids, ROW: rows}
    for col in inp.passthrough:
        columns[col] = table.column(col)
    return pa.table(columns)
