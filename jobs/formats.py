"""JSON lines, JSON and CSV inputs: the format a name says, a file cut into bounded pieces, one piece read."""

from __future__ import annotations

import base64
import csv
import json
import posixpath
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.json as pjson

FORMAT_EXTENSIONS = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".parq": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".csv": "csv",
}
# Text files may be compressed with a codec this pyarrow build reads; Parquet compresses inside the file.
COMPRESSIONS = {
    ext: codec for ext, codec in ((".gz", "gzip"), (".zst", "zstd")) if pa.Codec.is_available(codec)
}
_CHUNK = 1 << 20
_ROW = re.compile(r" in row (\d+)$")


class FormatError(ValueError):
    """A JSON or CSV input that does not read as its format; the message names the file and line."""


def path_format(path: str) -> str | None:
    """The format a file name says: parquet, jsonl, json or csv (the text ones also .gz/.zst), else None."""
    stem, ext = posixpath.splitext(posixpath.basename(path).lower())
    if ext in COMPRESSIONS:
        fmt = FORMAT_EXTENSIONS.get(posixpath.splitext(stem)[1])
        return None if fmt == "parquet" else fmt
    return FORMAT_EXTENSIONS.get(ext)


def extensions_of(fmt: str) -> list[str]:
    """The file name endings of a format, for messages."""
    return [ext for ext, f in FORMAT_EXTENSIONS.items() if f == fmt]


@contextmanager
def open_stream(fs: Any, path: str) -> Iterator[Any]:
    """A file's bytes, decompressed when its name ends in .gz or .zst."""
    codec = COMPRESSIONS.get(posixpath.splitext(path.lower())[1])
    with fs.open(path, "rb") as f:
        yield pa.CompressedInputStream(f, codec) if codec else f


@dataclass(frozen=True, slots=True)
class Piece:
    """Rows [start, stop) of a text file, bytes [byte_start, byte_stop) of it decompressed (JSON array: 0, 0)."""

    start: int
    stop: int
    byte_start: int
    byte_stop: int


@dataclass
class FileScan:
    """What planning learns by reading a text file once: its shards' kind, pieces, columns and their types."""

    kind: str  # "jsonl" | "json" (one array) | "csv"
    pieces: list[Piece]
    names: list[str]  # every column of the file
    types: dict[str, tuple[pa.DataType, str]]  # column the job reads -> (type, where its values were read)

    @property
    def schema(self) -> pa.Schema:
        """The file's columns; those the job does not read are left untyped (null)."""
        return pa.schema([(n, self.types[n][0] if n in self.types else pa.null()) for n in self.names])


def scan_file(fs: Any, path: str, fmt: str, columns: list[str], bound: int) -> FileScan:
    """Read a text file once: cut it into pieces of <= bound rows, parse each, and type the columns read."""
    # Every row is parsed here, so a bad line stops the job before any work; a shard later reads its piece's
    # bytes again (a JSON array: the whole file) and parses them to the same rows.
    kind = _sniff(fs, path) if fmt == "json" else fmt
    types: dict[str, tuple[pa.DataType, str]] = {}
    pieces: list[Piece] = []
    names: dict[str, None] = {}
    with open_stream(fs, path) as stream:
        if kind == "json":
            items = _load_array(stream.read(), path)
            for lo in range(0, len(items), bound):
                hi = min(len(items), lo + bound)
                where = f"{path} elements {lo}-{hi - 1}"
                objects = [(f"{path} element {k}", items[k]) for k in range(lo, hi)]
                table, seen = _typed(objects, columns, where)
                names.update(dict.fromkeys(seen))
                merge_types(types, table.schema, columns, where)
                pieces.append(Piece(lo, hi, 0, 0))
            return FileScan(kind, pieces, list(names), types)
        records = _records(stream, kind, path)
        header: list[str] = []
        pos = line = 0
        if kind == "csv":
            data, pos, line = _header(records)
            header = _csv_names(data) if data else []
            if not header or any(c not in header for c in columns):
                return FileScan(kind, [], header, {})  # planning names the missing column without reading on
            names.update(dict.fromkeys(header))
            records = _same_width(records, len(header), path, line + 1)
        row = 0
        for data, rows, byte_start, first in _cut(records, bound, pos, line + 1):
            last = first + data.count(b"\n") - (1 if data.endswith(b"\n") else 0)
            where = f"{path} lines {first}-{last}"
            if kind == "csv":
                table, seen = _parse_csv(data, header, columns, where), header
            else:
                table, seen = _infer_json(
                    data, columns, rows, where, lambda n, k, f=first: f"{path} line {f + n}"
                )
            if table.num_rows != rows:
                raise FormatError(f"input {where}: read {table.num_rows} rows of {rows} records")
            names.update(dict.fromkeys(seen))
            merge_types(types, table.schema, columns, where)
            pieces.append(Piece(row, row + rows, byte_start, byte_start + len(data)))
            row += rows
    return FileScan(kind, pieces, list(names), types)


def merge_types(
    types: dict[str, tuple[pa.DataType, str]], schema: pa.Schema, columns: list[str], where: str
) -> None:
    """Fold a piece's (or file's) column types into `types`: null takes any type, int64 widens to double."""
    for col in columns:
        if col not in schema.names:
            continue
        new = _as_read(schema.field(col).type)
        old = types.get(col)
        if old is None or pa.types.is_null(old[0]):
            types[col] = (new, where)
            continue
        try:
            both = [pa.schema([(col, old[0])]), pa.schema([(col, new)])]
            merged = pa.unify_schemas(both, promote_options="permissive").field(col).type
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            raise FormatError(
                f"input {where}: column {col!r} holds {new} values, but {old[0]} in {old[1]}; a column's "
                "values must share one JSON type"
            ) from None
        types[col] = (merged, old[1])


def read_piece(fs: Any, kind: str, path: str, piece: Piece, schema: pa.Schema) -> pa.Table:
    """The rows of one planned piece: just `schema`'s columns, of its types (those planning found)."""
    where = f"{path} rows {piece.start}-{piece.stop - 1}"
    if kind == "csv":
        with open_stream(fs, path) as stream:
            header = _csv_names(_header(_records(stream, kind, path))[0])
    with open_stream(fs, path) as stream:
        if kind == "json":
            data = _json_lines(_load_array(stream.read(), path)[piece.start : piece.stop])
        else:
            data = _read_range(stream, piece.byte_start, piece.byte_stop)
    if kind == "csv":
        table = _parse_csv(data, header, schema.names, where)
    else:
        unit = "element" if kind == "json" else "row"

        def at(n: int, k: int) -> str:
            return f"{path} {unit} {piece.start + k}"

        try:
            table = _read_json(data, schema)
        except pa.ArrowInvalid as e:
            raise _located(e, _objects(data, at), where) from None
    if table.num_rows != piece.stop - piece.start:
        raise FormatError(
            f"input {where}: read {table.num_rows} rows where planning found {piece.stop - piece.start}; "
            "the file changed after planning"
        )
    return table


def encode_schema(schema: pa.Schema) -> str:
    """A schema as text (Arrow IPC, base64), to travel inside a shard."""
    return base64.b64encode(schema.serialize().to_pybytes()).decode("ascii")


def decode_schema(text: str) -> pa.Schema:
    """Inverse of encode_schema."""
    return pa.ipc.read_schema(pa.py_buffer(base64.b64decode(text)))


def _sniff(fs: Any, path: str) -> str:
    """'json' for a file holding one JSON array, else 'jsonl': many .json files hold one object per line."""
    with open_stream(fs, path) as stream:
        while chunk := stream.read(1 << 16):
            head = chunk.lstrip().removeprefix(b"\xef\xbb\xbf").lstrip()
            if head:
                return "json" if head.startswith(b"[") else "jsonl"
    return "jsonl"


def _as_read(t: pa.DataType) -> pa.DataType:
    """`t` with pyarrow's inferred timestamps back to strings: a JSON string that looks like a date stays text."""
    if pa.types.is_timestamp(t):
        return pa.string()
    if pa.types.is_list(t):
        return pa.list_(_as_read(t.value_type))
    if pa.types.is_struct(t):
        return pa.struct([t.field(k).with_type(_as_read(t.field(k).type)) for k in range(t.num_fields)])
    return t


def _lines(stream: Any) -> Iterator[bytes]:
    """The stream's lines, each with its newline (the last one may lack it)."""
    parts: list[bytes] = []
    while chunk := stream.read(_CHUNK):
        lines = chunk.split(b"\n")
        parts.append(lines[0])
        if len(lines) == 1:
            continue
        lines[0] = b"".join(parts)
        parts = [lines.pop()]
        for line in lines:
            yield line + b"\n"
    if tail := b"".join(parts):
        yield tail


def _records(stream: Any, kind: str, path: str) -> Iterator[tuple[bytes, int, int]]:
    """(bytes, lines, values; 0: blank) of each record: a JSON line, or a CSV record (newlines may be quoted)."""
    lines = _lines(stream)
    if kind != "csv":
        for line in lines:
            yield line, 1, 1 if line.strip() else 0
        return
    held: list[bytes] = []

    def feed() -> Iterator[str]:
        for line in lines:
            held.append(line)
            # latin-1 maps every byte to one character: the quoting reads the same whatever the encoding.
            yield line.decode("latin-1")

    # The module-wide cap (128 KiB a value) would refuse long texts; there is no per-reader setting.
    csv.field_size_limit(max(csv.field_size_limit(), 1 << 30))
    reader = csv.reader(feed())
    try:
        for values in reader:
            yield b"".join(held), len(held), len(values)
            held.clear()
    except csv.Error as e:
        raise FormatError(f"input {path} line {reader.line_num}: not valid CSV ({e})") from None


def _header(records: Iterator[tuple[bytes, int, int]]) -> tuple[bytes, int, int]:
    """(the CSV header record, bytes and lines up to its end); empty bytes for a file of blank lines."""
    pos = lines = 0
    for data, n, values in records:
        pos, lines = pos + len(data), lines + n
        if values:
            return data, pos, lines
    return b"", pos, lines


def _csv_names(header: bytes) -> list[str]:
    """The column names of a CSV header record."""
    read = pcsv.ReadOptions(block_size=len(header) + 1)
    options = pcsv.ParseOptions(newlines_in_values=True)
    return pcsv.read_csv(pa.BufferReader(header), read_options=read, parse_options=options).column_names


def _same_width(
    records: Iterator[tuple[bytes, int, int]], width: int, path: str, line: int
) -> Iterator[tuple[bytes, int, int]]:
    """The records, checked to hold as many values as the header has columns."""
    for data, n, values in records:
        if values not in (0, width):
            raise FormatError(
                f"input {path} line {line}: {values} values, but the header has {width} columns"
            )
        line += n
        yield data, n, values


def _cut(
    records: Iterator[tuple[bytes, int, int]], bound: int, pos: int, line: int
) -> Iterator[tuple[bytes, int, int, int]]:
    """(bytes, rows, first byte, first line) of consecutive pieces of <= bound non-blank records each."""
    held: list[bytes] = []
    rows = 0
    start, first = pos, line
    for data, n, values in records:
        if values:
            if rows == bound:
                yield b"".join(held), rows, start, first
                held, rows, start, first = [], 0, pos, line
            rows += 1
        held.append(data)
        pos, line = pos + len(data), line + n
    if rows:
        yield b"".join(held), rows, start, first


def _read_range(stream: Any, start: int, stop: int) -> bytes:
    """Bytes [start, stop) of a stream: a seek, or (compressed) reading past the first `start` bytes."""
    if stream.seekable():
        stream.seek(start)
    else:
        skip = start
        while skip and (chunk := stream.read(min(_CHUNK, skip))):
            skip -= len(chunk)
    parts, left = [], stop - start
    while left and (chunk := stream.read(left)):
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)


def _read_json(data: bytes, schema: pa.Schema | None) -> pa.Table:
    """JSON lines as a table: every column, types inferred (schema None), or just schema's columns and types."""
    options = (
        pjson.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")
        if schema is not None
        else pjson.ParseOptions()
    )
    # One block for the whole piece: a row longer than pyarrow's block size (1 MiB) still reads.
    read = pjson.ReadOptions(block_size=len(data) + 1)
    return pjson.read_json(pa.BufferReader(data), read_options=read, parse_options=options)


def _infer_json(
    data: bytes, columns: list[str], rows: int, where: str, at: Callable[[int, int], str]
) -> tuple[pa.Table, list[str]]:
    """(the columns read, types inferred; every column's name) of a piece of JSON lines."""
    try:
        table = _read_json(data, None)
        if table.num_rows == rows:
            return table.select([c for c in columns if c in table.column_names]), table.column_names
    except pa.ArrowInvalid:
        pass
    # A bad line, two objects on one line, or a column the job does not read whose JSON type changes from
    # line to line: parse again in Python, naming the bad line, and type only the columns read.
    return _typed(_objects(data, at), columns, where)


def _objects(data: bytes, at: Callable[[int, int], str]) -> list[tuple[str, dict[str, Any]]]:
    """(place, object) of each non-blank line of JSON lines; at(line, row) names the line n, the k-th row."""
    out: list[tuple[str, dict[str, Any]]] = []
    for n, text in enumerate(data.split(b"\n")):
        if not text.strip():
            continue
        place = at(n, len(out))
        try:
            value = json.loads(text.decode("utf-8", "surrogateescape"))
        except json.JSONDecodeError as e:
            raise FormatError(f"input {place}: not valid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(value, dict):
            hint = " (a file holding one JSON array is input.format json)" if isinstance(value, list) else ""
            raise FormatError(f"input {place}: expected a JSON object, got {type(value).__name__}{hint}")
        out.append((place, value))
    return out


def _typed(
    objects: list[tuple[str, dict[str, Any]]], columns: list[str], where: str
) -> tuple[pa.Table, list[str]]:
    """(the columns read, types inferred as pyarrow reads JSON lines; every column's name) of JSON objects."""
    kept = [{c: o[c] for c in columns if c in o} for _, o in objects]
    try:
        table = _read_json(_json_lines(kept), None)
    except pa.ArrowInvalid as e:
        raise _located(e, objects, where) from None
    return table, list(dict.fromkeys(k for _, o in objects for k in o))


def _located(error: pa.ArrowInvalid, objects: list[tuple[str, Any]], where: str) -> FormatError:
    """pyarrow's error about a piece, at the place of the row it names."""
    m = _ROW.search(str(error))
    if m and int(m.group(1)) < len(objects):
        return FormatError(f"input {objects[int(m.group(1))][0]}: {_ROW.sub('', str(error))}")
    return FormatError(f"input {where}: {error}")


def _load_array(raw: bytes, path: str) -> list[dict[str, Any]]:
    """The objects of a JSON array file, read whole."""
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as e:
        raise FormatError(
            f"input {path} line {e.lineno}: not valid JSON ({e.msg} at column {e.colno})"
        ) from None
    except UnicodeDecodeError as e:
        raise FormatError(f"input {path}: not UTF-8 text ({e})") from None
    if not isinstance(value, list):
        raise FormatError(f"input {path}: expected a JSON array of objects, got {type(value).__name__}")
    for k, item in enumerate(value):
        if not isinstance(item, dict):
            raise FormatError(f"input {path} element {k}: expected a JSON object, got {type(item).__name__}")
    return value


def _json_lines(items: list[dict[str, Any]]) -> bytes:
    """Objects as JSON lines, so an array file's rows parse (and are typed) as a JSON lines file's."""
    return "".join(json.dumps(item) + "\n" for item in items).encode("utf-8")


def _parse_csv(data: bytes, header: list[str], columns: list[str], where: str) -> pa.Table:
    """CSV records (no header) as a table of `columns`, every value text: ids such as 007 keep their zeros."""
    try:
        return pcsv.read_csv(
            pa.BufferReader(data),
            read_options=pcsv.ReadOptions(column_names=header, block_size=len(data) + 1),
            parse_options=pcsv.ParseOptions(newlines_in_values=True),
            # Values stay bytes as read: invalid UTF-8 in a text is a bad row (policy.on_bad_row), not a failure.
            convert_options=pcsv.ConvertOptions(
                column_types={c: pa.string() for c in columns}, include_columns=columns, check_utf8=False
            ),
        )
    except pa.ArrowInvalid as e:
        raise FormatError(f"input {where}: not valid CSV ({e})") from None
