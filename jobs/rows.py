"""Per-row validation of the text and id columns: which rows can be embedded, and why the others cannot.

Outcomes (docs/data-quality.md has the full table):
- null text, non-string text (numbers, lists...), bytes that are not valid UTF-8: a bad row. Under policy
  "quarantine" it goes to OUT/_errors/ with its id, file, row and reason; under "fail" the job stops.
- empty string: a good row, embedded exactly as sentence-transformers embeds "" (the special tokens only).
- a text longer than `max_chars`: a good row, cut to `max_chars` characters before tokenising (see
  `default_max_chars` for why that never changes an embedding of a model with a token limit).
- null id: a bad row (it cannot be joined back or resumed); duplicate ids are checked per job, not here.
"""

from __future__ import annotations

import itertools
import re
from typing import Any, Literal

BadRowPolicy = Literal["fail", "quarantine"]
BAD_ROW_POLICIES: tuple[BadRowPolicy, ...] = ("fail", "quarantine")

# Characters kept per token of the model's limit. The model sees at most max_seq_length tokens, and each
# token comes from a bounded stretch of text: WordPiece turns any word over 100 characters into one [UNK]
# and BPE/Unigram vocabularies hold pieces of a few dozen characters at most. 256 characters per token
# covers the longest piece plus the whitespace around it, so the first max_seq_length tokens of the cut
# text are those of the full text: the cut only bounds the tokeniser's cost (a 5 MB text would otherwise
# be tokenised in full just to keep its first 256 tokens). For max_seq_length=512 the cut is 128 Ki chars.
CHARS_PER_TOKEN = 256
# Models without a token limit (static embeddings average every token) are never cut.
NO_LIMIT: None = None


def default_max_chars(max_seq_length: int | None, chunking: bool = False) -> int | None:
    """The character cut for a model whose input is truncated to `max_seq_length` tokens (None: no cut;
    under chunking every token of a text is embedded, in some window, so there is none)."""
    if chunking or max_seq_length is None or max_seq_length <= 0:
        return NO_LIMIT
    return CHARS_PER_TOKEN * int(max_seq_length)


def validate_policy(policy: str) -> BadRowPolicy:
    """`policy` itself when it is one of BAD_ROW_POLICIES; a ValueError listing them otherwise."""
    if policy not in BAD_ROW_POLICIES:
        raise ValueError(f"bad_rows policy must be one of {BAD_ROW_POLICIES}, got {policy!r}")
    return policy  # type: ignore[return-value]


def text_problem(value: object) -> tuple[str | None, str | None]:
    """`(text, None)` for a value that can be embedded, `(None, reason)` for one that cannot."""
    if value is None:
        return None, "null text"
    if isinstance(value, str):
        # Only non-ASCII strings can hold lone surrogates (from Python sources); isascii() is O(1).
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as error:
                return None, f"invalid UTF-8 (lone surrogate at character {error.start})"
        return str(value), None
    if isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
        try:
            return raw.decode("utf-8"), None
        except UnicodeDecodeError as error:
            return None, f"invalid UTF-8 at byte {error.start}"
    # Floats include NaN, which pandas uses for a missing value: still not a string, still reported.
    return None, f"non-string text ({type(value).__name__})"


def check_texts(values: list, *, max_chars: int | None) -> tuple[list[str], list[tuple[int, str]]]:
    """Split raw text-column values into the clean texts of good rows (in order) and (position, reason) of bad ones.

    Texts longer than `max_chars` are cut to `max_chars` characters (None: never cut); they are good rows.
    """
    if max_chars is not None and max_chars < 1:
        raise ValueError(f"max_chars must be >= 1 or None, got {max_chars!r}")
    good: list[str] = []
    bad: list[tuple[int, str]] = []
    for position, value in enumerate(values):
        text, reason = text_problem(value)
        if reason is not None:
            bad.append((position, reason))
            continue
        assert text is not None
        if max_chars is not None and len(text) > max_chars:
            text = cut_text(text, max_chars)
        good.append(text)
    return good, bad


def check_column(
    column: Any, *, max_chars: int | None, images: Any = None
) -> tuple[list[Any], list[tuple[int, str]]]:
    """`check_texts` of an Arrow text column; with `images` (a jobs.images.ImageReader) each row's image bytes."""
    if images is not None:
        return images.check(column.to_pylist())
    return check_texts(raw_text_values(column), max_chars=max_chars)


def raw_text_values(column: Any) -> list[Any]:
    """Python values of an Arrow text column; strings go through bytes, so invalid UTF-8 is reported, not raised."""
    import pyarrow as pa

    if pa.types.is_dictionary(column.type):
        column = column.cast(column.type.value_type)
    if pa.types.is_string(column.type):
        column = column.cast(pa.binary())
    elif pa.types.is_large_string(column.type):
        column = column.cast(pa.large_binary())
    return column.to_pylist()


# Characters a tokenizer drops or merges: whitespace (any run of it splits words the same way) and the
# zero-width ones. They never make a token of their own, so they do not count towards the cut.
_VISIBLE = re.compile(r"[^\s\u200b\u200c\u200d\u2060\ufeff]")


def cut_text(text: str, max_chars: int) -> str:
    """`text` up to its `max_chars`-th visible character (whitespace and zero-width characters not counted).

    A text that starts with 100,000 newlines keeps the words after them, as the tokenizer would see them.
    """
    match = next(itertools.islice(_VISIBLE.finditer(text), max_chars - 1, None), None)
    return text if match is None else text[: match.end()]


def check_ids(values: list) -> list[tuple[int, str]]:
    """(position, reason) for each id that cannot identify its row: null (None, or a float NaN)."""
    bad: list[tuple[int, str]] = []
    for position, value in enumerate(values):
        if value is None or (isinstance(value, float) and value != value):
            bad.append((position, "null id"))
    return bad


def merge_bad(*groups: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """One (position, reason) per bad row, sorted by position; a row bad for several causes joins them with '; '."""
    reasons: dict[int, list[str]] = {}
    for group in groups:
        for position, reason in group:
            reasons.setdefault(position, []).append(reason)
    return [(position, "; ".join(reasons[position])) for position in sorted(reasons)]


class BadRowsError(ValueError):
    """Raised under policy "fail" when a shard holds rows that cannot be embedded."""

    def __init__(self, file: str, bad: list[tuple[int, str]], *, first_row: int = 0, column: str = "text"):
        self.file = file
        self.bad = bad
        shown = ", ".join(f"row {first_row + pos}: {reason}" for pos, reason in bad[:5])
        more = f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""
        super().__init__(
            f"{file}: {len(bad)} bad row{'s' if len(bad) != 1 else ''} in column {column!r}: {shown}{more}; "
            f"set policy.on_bad_row: quarantine to write them to _errors/ and embed the rest"
        )


def duplicate_ids(ids: Any) -> list[tuple[int, int]]:
    """(position, position of the first occurrence) for every repeat of an id, in order; nulls are ignored.

    `ids` is the id column of the whole input in plan order (a list, or an Arrow array/chunked array).
    Values compare exactly (Arrow's dictionary encoding), so there are no hash collisions; memory is one
    int32 per row on top of the ids themselves.
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(ids, pa.ChunkedArray):
        ids = ids.combine_chunks()
    elif not isinstance(ids, pa.Array):
        ids = pa.array(ids)
    if len(ids) == 0:
        return []
    # Indices of a dictionary encoding are numbered in order of first appearance, so a row is the first of
    # its value exactly when its index exceeds every index before it.
    codes = pc.dictionary_encode(ids).indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
    seen_max = np.maximum.accumulate(np.concatenate(([-1], codes[:-1])))
    first = codes > seen_max
    repeats = np.nonzero(~first & (codes >= 0))[0]
    if len(repeats) == 0:
        return []
    first_positions = np.nonzero(first)[0]
    return list(zip(repeats.tolist(), first_positions[codes[repeats]].tolist(), strict=True))
