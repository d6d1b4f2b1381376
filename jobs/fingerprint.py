"""Stable hashes: text hashes per row, shard ids, a model folder's weights, and embedding-affecting settings."""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

# Files that describe a model folder without changing its vectors.
_IGNORED_NAMES = ("README.md", ".gitattributes")
_CHUNK = 1 << 20


def text_hash(text: str) -> str:
    """Hex of blake2b-128 over the UTF-8 text (the `text_hash` output column)."""
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()


def text_hashes(texts: list[str]) -> list[str]:
    """text_hash for each text, in order."""
    return [hashlib.blake2b(t.encode("utf-8"), digest_size=16).hexdigest() for t in texts]


def digest(*parts: Any, size: int = 8) -> str:
    """Hex blake2b of the JSON encoding of `parts` (sorted keys), `size` bytes long."""
    payload = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.blake2b(payload.encode("utf-8"), digest_size=size).hexdigest()


def shard_id(relative_path: str, size: int | None, etag: str | None, start: int, stop: int) -> str:
    """A shard's deterministic id: the hash of its source file (path, size, etag) and row range."""
    return digest(relative_path, size, etag, start, stop)


def weights_fingerprint(folder: str) -> str:
    """Hash of every file in a model folder (relative names and contents), README and hidden files aside."""
    h = hashlib.blake2b(digest_size=16)
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith(".") or name in _IGNORED_NAMES:
                continue
            path = os.path.join(root, name)
            rel = os.path.relpath(path, folder).replace(os.sep, "/")
            h.update(rel.encode("utf-8") + b"\0")
            with open(path, "rb") as f:
                while chunk := f.read(_CHUNK):
                    h.update(chunk)
            h.update(b"\0")
    return h.hexdigest()


def settings_fingerprint(weights: str, model_spec: dict[str, Any], describe: Any) -> str:
    """Hash of everything that changes a vector: weights, pipeline, prompt, normalisation, precision, length."""
    affecting = {
        k: v for k, v in model_spec.items() if k not in ("name", "trust_remote_code", "allow_pickle")
    }
    # Where the folder sits and which device ran it do not change what a vector means.
    pipeline = {k: v for k, v in (describe or {}).items() if k not in ("model_path", "device")}
    return digest(weights, affecting, pipeline, size=16)
