"""List the input (fsspec files / HF datasets) and cut it into shards of bounded rows with stable ids."""

from __future__ import annotations

import posixpath
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pyarrow as pa

from jobs.fingerprint import shard_id
from jobs.formats import (
    FileScan,
    FormatError,
    encode_schema,
    extensions_of,
    merge_types,
    path_format,
    scan_file,
)
from jobs.read import dataset_kind, open_dataset, open_input_fs, open_parquet, read_columns
from jobs.retry import RetryPolicy, call_with_retries
from jobs.shards import Plan, Shard
from jobs.spec import FILE_FORMATS, InputSpec, JobSpec, as_spec

# Input files whose size, etag and footer are read at once: planning 10,000 files on S3 is latency-bound.
FOOTER_READERS = 32
# JSON and CSV files read at once: each holds one piece (<= rows_per_file rows) in memory while planning.
TEXT_READERS = 8

_GLOB_CHARS = "*?["


class PlanError(ValueError):
    """The input cannot be planned: missing files or columns, unreadable files or lines; names the file."""


def plan_job(spec: JobSpec | dict[str, Any] | str) -> Plan:
    """List the job's input, validate every file's schema, and cut it into shards of <= output.rows_per_file rows.

    `spec`: a JobSpec, a mapping, or a YAML path, as run_job takes."""
    spec = as_spec(spec)
    policy = RetryPolicy(attempts=spec.policy.retries)
    bound = spec.output.rows_per_file
    if dataset_kind(spec.input) != "files":
        return _plan_dataset(spec.input, bound)
    fs, base, paths, fmt = list_input_files(spec.input, policy)
    if fmt == "parquet":
        return _plan_parquet(spec.input, bound, policy, fs, base, paths)
    return _plan_text(spec.input, bound, policy, fs, base, paths, fmt)


def list_input_files(inp: InputSpec, policy: RetryPolicy) -> tuple[Any, str, list[str], str]:
    """(fs, base, paths, format) of a file, a glob or a folder (its files whose names say input.format)."""
    fs, root = open_input_fs(inp)
    wanted = inp.format if inp.format in FILE_FORMATS else None
    what = f"input.uri {inp.uri}: list"
    if any(c in root for c in _GLOB_CHARS):
        paths = call_with_retries(lambda: fs.glob(root), what=what, policy=policy)
        cut = min(root.index(c) for c in _GLOB_CHARS if c in root)
        prefix = root[:cut]
        base = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
    elif call_with_retries(lambda: fs.isdir(root), what=what, policy=policy):
        paths = call_with_retries(lambda: fs.find(root), what=what, policy=policy)
        base = root.rstrip("/")
        paths = [p for p in paths if path_format(p) in ((wanted,) if wanted else FILE_FORMATS)]
    else:
        if not call_with_retries(lambda: fs.exists(root), what=what, policy=policy):
            raise PlanError(f"input.uri: {inp.uri} does not exist")
        paths, base = [root], posixpath.dirname(root)
    # Hidden and underscore-prefixed paths are metadata (_SUCCESS, _tmp/, .crc), as pyarrow.dataset treats them.
    paths = sorted(
        p for p in paths if not any(part.startswith(("_", ".")) for part in _rel(p, base).split("/"))
    )
    if not paths:
        kinds = (
            f"{wanted} ({', '.join(extensions_of(wanted))})" if wanted else "Parquet, JSON lines, JSON or CSV"
        )
        raise PlanError(f"input.uri: no {kinds} files found at {inp.uri}")
    return fs, base, paths, wanted or _one_format(inp, paths)


def _one_format(inp: InputSpec, paths: list[str]) -> str:
    """The format the file names say, the same for all; Parquet where a name says none."""
    first: dict[str, str] = {}
    for path in paths:
        first.setdefault(path_format(path) or "parquet", path)
    if len(first) > 1:
        (a, path_a), (b, path_b) = list(first.items())[:2]
        raise PlanError(
            f"input.uri: {inp.uri} holds files of different formats: {path_a} ({a}) and {path_b} ({b}); "
            f"set input.format to the one to read ({', '.join(FILE_FORMATS)})"
        )
    return next(iter(first))


def _rel(path: str, base: str) -> str:
    return posixpath.relpath(path, base) if base else path


def _file_facts(
    fs: Any, path: str, inp: InputSpec, policy: RetryPolicy
) -> tuple[dict, list[int], dict[str, str]]:
    """(info, row counts of the row groups, checked column types) of one input file: a stat and a footer read."""
    info = call_with_retries(lambda: fs.info(path), what=f"input {path}: stat", policy=policy)
    try:
        pf = open_parquet(fs, path, policy)
        file_schema = pf.schema_arrow
        groups = [pf.metadata.row_group(g).num_rows for g in range(pf.metadata.num_row_groups)]
    except (pa.ArrowException, OSError) as e:
        if isinstance(e, FileNotFoundError):
            raise PlanError(f"input {path}: disappeared while planning") from e
        hint = "" if path_format(path) else "; if it is not Parquet, set input.format"
        raise PlanError(f"input {path}: not a readable Parquet file ({type(e).__name__}: {e}){hint}") from e
    return info, groups, _check_columns(inp, file_schema, path)


def _plan_parquet(
    inp: InputSpec, bound: int, policy: RetryPolicy, fs: Any, base: str, paths: list[str]
) -> Plan:
    shards: list[Shard] = []
    schema: dict[str, str] = {}
    first_file = ""
    with ThreadPoolExecutor(min(FOOTER_READERS, len(paths))) as pool:
        # map() yields in path order, so shard indexes and the first-file schema are deterministic.
        facts = pool.map(lambda p: _file_facts(fs, p, inp, policy), paths)
        for path, (info, groups, cols) in zip(paths, facts, strict=True):
            etag = _version(info)
            rel = _rel(path, base)
            if not schema:
                schema, first_file = cols, path
            elif cols != schema:
                diff = {
                    k: (schema.get(k), cols.get(k))
                    for k in set(schema) | set(cols)
                    if schema.get(k) != cols.get(k)
                }
                raise PlanError(
                    f"input {path}: column types differ from {first_file}: {diff} (first file, this file)"
                )
            for start, stop, gs, starts in _cut(groups, bound):
                sid = shard_id(rel, info.get("size"), etag, start, stop)
                shards.append(Shard(len(shards), sid, "parquet", rel, path, start, stop, gs, starts))
    return Plan("parquet", shards, schema, files=len(paths))


def _plan_text(
    inp: InputSpec, bound: int, policy: RetryPolicy, fs: Any, base: str, paths: list[str], fmt: str
) -> Plan:
    columns = list(dict.fromkeys(c for c, _ in read_columns(inp)))
    types: dict[str, tuple[pa.DataType, str]] = {}
    files: list[tuple[str, dict, FileScan]] = []
    with ThreadPoolExecutor(min(TEXT_READERS, len(paths))) as pool:
        for path, (info, scan) in zip(
            paths,
            pool.map(lambda p: _text_facts(fs, p, fmt, inp, columns, bound, policy), paths),
            strict=True,
        ):
            try:
                for col, (t, where) in scan.types.items():
                    merge_types(types, pa.schema([(col, t)]), [col], where)
            except FormatError as e:
                raise PlanError(str(e)) from e
            files.append((path, info, scan))
    # Every shard reads its columns as the same types, whatever its own rows would suggest (a piece of only
    # nulls, or only whole numbers in a column of decimals): the output's parts share one schema.
    read_schema = encode_schema(pa.schema([(c, types[c][0]) for c in columns if c in types]))
    shards: list[Shard] = []
    for path, info, scan in files:
        rel = _rel(path, base)
        for p in scan.pieces:
            sid = shard_id(rel, info.get("size"), _version(info), p.start, p.stop)
            extra = {"byte_start": p.byte_start, "byte_stop": p.byte_stop, "read_schema": read_schema}
            shards.append(Shard(len(shards), sid, scan.kind, rel, path, p.start, p.stop, **extra))
    return Plan(fmt, shards, {c: str(t) for c, (t, _) in types.items()}, files=len(paths))


def _text_facts(
    fs: Any, path: str, fmt: str, inp: InputSpec, columns: list[str], bound: int, policy: RetryPolicy
) -> tuple[dict, FileScan]:
    """(info, scan) of one JSON or CSV file: a stat, and every row read once."""
    info = call_with_retries(lambda: fs.info(path), what=f"input {path}: stat", policy=policy)
    try:
        scan = call_with_retries(
            lambda: scan_file(fs, path, fmt, columns, bound), what=f"input {path}: read", policy=policy
        )
    except FormatError as e:
        raise PlanError(str(e)) from e
    except FileNotFoundError as e:
        raise PlanError(f"input {path}: disappeared while planning") from e
    if scan.names:  # an empty file has no columns to check
        _check_columns(inp, scan.schema, path)
    return info, scan


def _version(info: dict[str, Any]) -> str | None:
    """What changes when a file is rewritten: the ETag of object stores, else the modification time."""
    # Either way a file rewritten at the same size gets new shard ids: a resume refuses it, never mixes.
    return info.get("ETag") or info.get("etag") or _mtime(info)


def _mtime(info: dict[str, Any]) -> str | None:
    """A file's modification time from fsspec info (local: float seconds; others: a datetime), as text."""
    for key in ("mtime", "LastModified", "last_modified", "updated", "modified"):
        if info.get(key) is not None:
            return f"mtime:{info[key]}"
    return None


def _cut(groups: list[int], bound: int) -> list[tuple[int, int, tuple[int, ...], tuple[int, ...]]]:
    """Cut a file's row groups into row ranges of <= bound rows, whole row groups where they fit."""
    out: list[tuple[int, int, tuple[int, ...], tuple[int, ...]]] = []
    cur: list[int] = []
    cur_start = cur_rows = 0
    offset = 0

    def flush() -> None:
        nonlocal cur, cur_rows
        if cur:
            starts = tuple(cur_start + sum(groups[g] for g in cur[:k]) for k in range(len(cur)))
            out.append((cur_start, cur_start + cur_rows, tuple(cur), starts))
        cur, cur_rows = [], 0

    for g, n in enumerate(groups):
        if n == 0:
            continue
        if n > bound:
            flush()
            pieces = -(-n // bound)
            step = -(-n // pieces)
            for lo in range(0, n, step):
                out.append((offset + lo, offset + min(n, lo + step), (g,), (offset,)))
        else:
            if cur_rows + n > bound:
                flush()
            if not cur:
                cur_start = offset
            cur.append(g)
            cur_rows += n
        offset += n
    flush()
    return out


def _check_columns(inp: InputSpec, schema: pa.Schema, where: str) -> dict[str, str]:
    """The Arrow types of the columns the job reads; a missing one is an error naming the file and column."""
    names = schema.names
    out: dict[str, str] = {}
    for col, field_name in read_columns(inp):
        if col not in names:
            raise PlanError(f"{field_name}: column {col!r} not found in {where}; its columns are {names}")
        out[col] = str(schema.field(col).type)
    if inp.id_column:
        id_type = schema.field(inp.id_column).type
        if pa.types.is_nested(id_type):
            raise PlanError(
                f"input.id_column: column {inp.id_column!r} in {where} has type {id_type}; "
                "ids must be strings, numbers or bytes"
            )
    text_type = schema.field(inp.text_column).type
    if pa.types.is_dictionary(text_type):
        text_type = text_type.value_type  # Parquet writers dictionary-encode repetitive strings
    if not (
        pa.types.is_string(text_type)
        or pa.types.is_large_string(text_type)
        or pa.types.is_binary(text_type)
        or pa.types.is_large_binary(text_type)
        or pa.types.is_string_view(text_type)
        or pa.types.is_null(text_type)
    ):
        raise PlanError(
            f"input.text_column: column {inp.text_column!r} in {where} has type {text_type}, expected string"
        )
    return out


def _plan_dataset(inp: InputSpec, bound: int) -> Plan:
    try:
        ds = open_dataset(inp)
    except PlanError:
        raise
    except Exception as e:
        where = inp.uri or inp.dataset or inp.data_files
        raise PlanError(f"input: cannot open dataset {where!r} ({type(e).__name__}: {e})") from e
    schema = ds.data.schema
    cols = _check_columns(inp, schema, f"dataset {inp.uri or inp.dataset}")
    source = inp.split or "data"
    fp = getattr(ds, "_fingerprint", None)
    shards = []
    for start in range(0, len(ds), bound):
        stop = min(len(ds), start + bound)
        shards.append(
            Shard(len(shards), shard_id(source, len(ds), fp, start, stop), "dataset", source, "", start, stop)
        )
    return Plan("dataset", shards, cols, files=1)


def sample_texts(spec: JobSpec, plan: Plan, limit: int = 1000) -> list[str]:
    """Up to `limit` texts spread over the first shards, for estimates and calibration."""
    from jobs.read import iter_shard_batches

    texts: list[str] = []
    policy = RetryPolicy(attempts=spec.policy.retries)
    step = max(1, len(plan.shards) // 8)
    for shard in plan.shards[::step]:
        for batch in iter_shard_batches(shard, spec.input, min(limit, 256), policy):
            texts += [t for t in batch.column("__text__").to_pylist() if isinstance(t, str)]
            break
        if len(texts) >= limit:
            break
    return texts[:limit]


def describe_plan(spec: JobSpec, plan: Plan, tokens_per_s: float | None = None) -> dict[str, Any]:
    """A summary of the plan: shards, rows, a rough guess of tokens (sample chars / 4) and, given a rate, time.
    `embedjob plan --calibrate` measures tokens with the model's tokenizer instead (jobs.estimate)."""
    texts = sample_texts(spec, plan)
    avg_chars = sum(len(t) for t in texts) / max(1, len(texts))
    max_len = spec.model.max_seq_length
    per_text = avg_chars / 4 + 2
    if max_len:
        per_text = min(per_text, max_len)
    tokens = int(per_text * plan.rows)
    out: dict[str, Any] = {
        "kind": plan.kind,
        "files": plan.files,
        "shards": len(plan.shards),
        "rows": plan.rows,
        "avg_chars": round(avg_chars, 1),
        "est_tokens": tokens,
        "fingerprint": plan.fingerprint,
    }
    if tokens_per_s:
        out["tokens_per_s"] = round(tokens_per_s, 1)
        out["est_seconds"] = round(tokens / tokens_per_s, 1)
    return out
