"""Resolve a model name to a local folder: a folder on disk as is, a hub id through huggingface_hub's cache."""

from __future__ import annotations

import os

# Weights for other runtimes never load here; skipping them saves the download.
IGNORE_ALWAYS = [
    "*.onnx",
    "onnx/*",
    "openvino/*",
    "*.h5",
    "*.msgpack",
    "*.ot",
    "tf_model*",
    "flax_model*",
    "rust_model*",
]
# Pickled weights run code when loaded; fetch them only when the caller allowed it.
PICKLE_PATTERNS = ["*.bin", "*.pt", "*.pth", "*.pkl"]
# What a non-torch backend loads, fetched in a second pass (the first skips it, and openvino's .bin with it).
BACKEND_PATTERNS = {"onnx": ["*.onnx", "onnx/*"], "openvino": ["openvino/*"]}


def resolve_model_path(
    name_or_path: str | os.PathLike[str],
    *,
    revision: str | None = None,
    cache_folder: str | None = None,
    token: bool | str | None = None,
    local_files_only: bool = False,
    allow_pickle: bool = False,
    backend: str = "torch",
) -> str:
    """Return a local folder holding `name_or_path`: the folder itself, or a hub snapshot (downloaded if needed).

    The hub path honours HF_HUB_OFFLINE / `local_files_only` (cache only), `revision` (branch, tag or
    commit), `cache_folder` (else SENTENCE_TRANSFORMERS_HOME, else the huggingface_hub default) and `token`.
    A non-torch `backend` also fetches the repository's files for it (e.g. onnx/*).
    """
    if isinstance(name_or_path, os.PathLike):
        name_or_path = os.fspath(name_or_path)
    if not isinstance(name_or_path, str) or not name_or_path:
        raise ValueError(f"model_name_or_path must be a non-empty string, got {name_or_path!r}")
    expanded = os.path.expanduser(name_or_path)
    if os.path.isdir(expanded):
        return os.path.abspath(expanded)
    if os.path.isfile(expanded):
        raise NotADirectoryError(
            f"{name_or_path}: is a file; expected a model folder or a hub id like 'org/name'"
        )
    if name_or_path.count("/") > 1 or name_or_path.startswith((".", "/", "~")) or "\\" in name_or_path:
        raise FileNotFoundError(f"{name_or_path}: no such folder (and not a hub id like 'org/name')")

    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    if cache_folder is None:
        cache_folder = os.environ.get("SENTENCE_TRANSFORMERS_HOME")
    ignore = IGNORE_ALWAYS + ([] if allow_pickle else PICKLE_PATTERNS)
    common = {
        "revision": revision,
        "cache_dir": cache_folder,
        "token": token,
        "local_files_only": local_files_only,
        "library_name": "embedder",
    }
    try:
        folder = snapshot_download(name_or_path, ignore_patterns=ignore, **common)
        if backend in BACKEND_PATTERNS:
            folder = snapshot_download(name_or_path, allow_patterns=BACKEND_PATTERNS[backend], **common)
        return folder
    except LocalEntryNotFoundError as e:
        where = cache_folder or "the default Hugging Face cache"
        from huggingface_hub import constants

        offline = bool(constants.HF_HUB_OFFLINE)
        if local_files_only or offline:
            why = (
                "and offline mode is on ("
                + ("local_files_only" if local_files_only else "HF_HUB_OFFLINE")
                + ")"
            )
        else:
            why = "and the hub could not be reached (no network, or a proxy in the way)"
        raise FileNotFoundError(
            f"{name_or_path} (revision {revision or 'main'}): not a local folder, not in {where}, {why}; "
            "give a local model folder, or download it once where the hub is reachable"
        ) from e
