"""Build sample/corpus.parquet: a few thousand real English texts of mixed length, offline.

The texts are paragraphs of the documentation that ships inside installed Python packages (the long
descriptions in their METADATA files) and of the standard library's docstrings. The committed parquet file
is the fixed corpus; this script records where it came from.
"""

from __future__ import annotations

import hashlib
import importlib
import pkgutil
import re
import sys
from importlib import metadata

import pyarrow as pa
import pyarrow.parquet as pq

N_TEXTS = 4000


def paragraphs(text: str) -> list[str]:
    out = []
    for block in re.split(r"\n\s*\n", text):
        block = " ".join(block.split())
        letters = sum(c.isalpha() for c in block)
        if (
            20 <= len(block) <= 3000
            and letters > 0.6 * len(block)
            and not block.startswith(("..", ">>>", "|", "[", "<", "```", "=", "-", "#"))
        ):
            out.append(block)
    return out


def collect() -> list[str]:
    texts: list[str] = []
    for dist in metadata.distributions():
        texts += paragraphs(dist.metadata.get_payload() or "")
    for info in pkgutil.iter_modules():
        if (
            info.name in sys.stdlib_module_names
            and not info.name.startswith("_")
            and info.name not in ("antigravity", "this")
        ):
            try:
                mod = importlib.import_module(info.name)
            except Exception:
                continue
            for obj in [mod, *vars(mod).values()]:
                doc = getattr(obj, "__doc__", None)
                if isinstance(doc, str):
                    texts += paragraphs(doc)
    return sorted(set(texts))


def main() -> None:
    texts = collect()
    texts.sort(key=lambda t: hashlib.sha1(t.encode()).hexdigest())
    texts = texts[:N_TEXTS]
    ids = [f"doc-{i:05d}" for i in range(len(texts))]
    table = pa.table({"id": ids, "text": texts})
    pq.write_table(table, "sample/corpus.parquet", row_group_size=500, compression="zstd")
    lengths = sorted(len(t) for t in texts)
    print(
        f"{len(texts)} texts; chars p10={lengths[len(texts) // 10]} p50={lengths[len(texts) // 2]} p90={lengths[9 * len(texts) // 10]} max={lengths[-1]}"
    )


if __name__ == "__main__":
    main()
