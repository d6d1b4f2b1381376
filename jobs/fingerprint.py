"""Stable hashes: text hashes per row, shard ids, a model folder's weights, and embedding-affecting settings."""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import pyarrow as pa

# Files that describe a model folder without changing its vectors.
_IGNORED_NAMES = ("README.md", ".gitattributes")
_CHUNK = 1 << 20


def text_hash(text: str) -> str:
    """Hex of blake2b-128 over the UTF-8 text (the `text_hash` output column)."""
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()


def text_hashes(texts: list[str] | list[bytes]) -> list[str]:
    """text_hash for each text (or image: the hash of its bytes, wherever they were read from), in order."""
    return [
        hashlib.blake2b(t if isinstance(t, bytes) else t.encode("utf-8"), digest_size=16).hexdigest()
        for t in texts
    ]


def match_hashes(hashes: list[str | None], passthrough: pa.Table | None = None) -> list[str | None]:
    """What a live update compares per row: the text hash, with the row's passthrough values when any."""
    if passthrough is None or not passthrough.num_columns:
        return hashes
    return [
        None if h is None else digest(h, r, size=16)
        for h, r in zip(hashes, passthrough.to_pylist(), strict=True)
    ]


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


# Every field of a job spec, by whether it can change a row's vector. The settings fingerprint covers the
# first group, so a resume or a --previous reuse never mixes vectors made differently; tests/jobs/
# test_fingerprint.py checks that every spec field is in exactly one group.
VECTOR_FIELDS = (
    "model.revision",
    "model.model_kwargs",
    "model.backend",
    "model.prompt_name",
    "model.prompt",
    "model.task",
    "model.normalize",
    "model.truncate_dim",
    "model.precision",
    "model.compute_precision",
    "model.int8_ranges",
    "model.max_seq_length",
    "model.trust_remote_code",
    "policy.max_text_chars",
    "chunking.enabled",
    "chunking.max_tokens",
    "chunking.overlap",
    "chunking.emit",
)
NEUTRAL_FIELDS = {
    "model.name": "the weights fingerprint hashes the folder the name resolves to",
    "model.allow_pickle": "the weights fingerprint hashes the weight files however they load",
    "input.*": "which rows are read, not how a row is embedded",
    "output.*": "where and how the rows are written",
    "compute.replicas": "how many model copies",
    "compute.gpus_per_replica": "resources of a copy",
    "compute.cpus_per_replica": "resources of a copy",
    "compute.batch_size": "batching: vectors agree within float rounding (the parity bound, 1e-6)",
    "compute.max_batch_tokens": "batching: vectors agree within float rounding (the parity bound, 1e-6)",
    "compute.rows_per_call": "batching: vectors agree within float rounding (the parity bound, 1e-6)",
    "compute.device": "CPU and GPU vectors agree within the parity bound at float32",
    "compute.in_flight_per_replica": "scheduling",
    "compute.wait_for_resources_s": "scheduling",
    "policy.on_bad_row": "which rows are embedded, not how (the spec fingerprint covers it)",
    "policy.max_image_bytes": "which images are embedded, not how",
    "policy.max_image_pixels": "which images are embedded, not how",
    "policy.retries": "storage retries",
    "policy.shard_attempts": "replica retries",
    "previous": "where vectors are reused from; reuse itself needs equal settings",
}


# Where the folder sits, which device ran it and whether padding was skipped (packed) do not change what a
# vector means; leaving them out keeps outputs made before describe() named them reusable.
NEUTRAL_DESCRIBE = ("model_path", "device", "packed", "packed_reason")


# Fields added after outputs were made, with their defaults: left out at the default, so those outputs'
# fingerprints still match.
LATER_FIELDS: dict[str, Any] = {"model.backend": "torch", "model.compute_precision": "float32"}


def settings_fingerprint(weights: str, spec: dict[str, Any], describe: Any, max_chars: int | None) -> str:
    """Hash of everything that changes a vector: the weights, the pipeline and every field of VECTOR_FIELDS.

    `max_chars` is the character cut in effect (policy.max_text_chars, or the model's default cut).
    """
    values = {}
    chunking = (spec.get("chunking") or {}).get("enabled")
    for dotted in VECTOR_FIELDS:
        section, name = dotted.split(".")
        # Chunking fields count only when chunking is on, so outputs made without it keep their fingerprint.
        if section == "chunking" and not chunking:
            continue
        value = spec[section].get(name, LATER_FIELDS.get(dotted))
        if dotted in LATER_FIELDS and value == LATER_FIELDS[dotted]:
            continue
        values[dotted] = value
    values["policy.max_text_chars"] = max_chars
    pipeline = {k: v for k, v in (describe or {}).items() if k not in NEUTRAL_DESCRIBE}
    return digest(weights, values, pipeline, size=16)
