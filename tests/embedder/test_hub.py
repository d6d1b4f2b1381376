"""Loading by hub id, offline, from a fake huggingface_hub cache (models--org--name/{blobs,refs,snapshots})."""

from __future__ import annotations

import hashlib
import os

import huggingface_hub.constants
import numpy as np
import pytest
from sentence_transformers import SentenceTransformer

from embedder import EmbeddingModel
from embedder.hub import resolve_model_path

SHA_MAIN = "1" * 40
SHA_V1 = "2" * 40


def add_to_cache(
    cache: str, repo_id: str, folder: str, commit: str, refs: tuple[str, ...] = ("main",)
) -> str:
    """Store `folder` as snapshot `commit` of model `repo_id` the way huggingface_hub lays out its cache."""
    repo = os.path.join(cache, "models--" + repo_id.replace("/", "--"))
    snapshot = os.path.join(repo, "snapshots", commit)
    os.makedirs(os.path.join(repo, "blobs"), exist_ok=True)
    for root, _, files in os.walk(folder):
        for name in files:
            src = os.path.join(root, name)
            rel = os.path.relpath(src, folder)
            with open(src, "rb") as f:
                data = f.read()
            blob = os.path.join(repo, "blobs", hashlib.sha256(data).hexdigest())
            with open(blob, "wb") as f:
                f.write(data)
            dst = os.path.join(snapshot, rel)
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            # Snapshot files are relative symlinks into blobs/, as huggingface_hub writes them.
            os.symlink(os.path.relpath(blob, os.path.dirname(dst)), dst)
    os.makedirs(os.path.join(repo, "refs"), exist_ok=True)
    for ref in refs:
        with open(os.path.join(repo, "refs", ref), "w") as f:
            f.write(commit)
    return snapshot


@pytest.fixture
def hub_cache(tmp_path, tiny_bert_dir, monkeypatch) -> str:
    """A cache holding org/tiny at main (seed 0) and at tag v1 (seed 1); the hub itself is unreachable."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cache = str(tmp_path / "hf_cache")
    add_to_cache(cache, "org/tiny", tiny_bert_dir("main", st=True, seed=0), SHA_MAIN)
    add_to_cache(
        cache, "org/tiny", tiny_bert_dir("v1", st=True, seed=1, pooling_mode="cls"), SHA_V1, refs=("v1",)
    )
    return cache


def test_load_by_id_from_cache(hub_cache, tiny_bert_dir, sample_texts, parity) -> None:
    model = EmbeddingModel("org/tiny", cache_folder=hub_cache, local_files_only=True, device="cpu")
    assert model.model_path == os.path.join(hub_cache, "models--org--tiny", "snapshots", SHA_MAIN)
    assert model.describe()["revision"] == SHA_MAIN
    direct = EmbeddingModel(tiny_bert_dir("direct", st=True, seed=0), device="cpu")
    np.testing.assert_array_equal(model.encode(sample_texts), direct.encode(sample_texts))
    theirs = SentenceTransformer("org/tiny", cache_folder=hub_cache, local_files_only=True, device="cpu")
    parity(model.encode(sample_texts), theirs.encode(sample_texts))


def test_hf_hub_offline_without_local_files_only(hub_cache, sample_texts) -> None:
    # HF_HUB_OFFLINE alone makes huggingface_hub fall back to the cache.
    model = EmbeddingModel("org/tiny", cache_folder=hub_cache, device="cpu")
    assert model.model_path.endswith(SHA_MAIN)


def test_sentence_transformers_home_is_the_default_cache(hub_cache, monkeypatch) -> None:
    monkeypatch.setenv("SENTENCE_TRANSFORMERS_HOME", hub_cache)
    assert resolve_model_path("org/tiny", local_files_only=True).endswith(SHA_MAIN)


def test_revision_tag_and_commit(hub_cache, sample_texts) -> None:
    main = EmbeddingModel("org/tiny", cache_folder=hub_cache, local_files_only=True, device="cpu")
    v1 = EmbeddingModel(
        "org/tiny", revision="v1", cache_folder=hub_cache, local_files_only=True, device="cpu"
    )
    by_sha = EmbeddingModel(
        "org/tiny", revision=SHA_V1, cache_folder=hub_cache, local_files_only=True, device="cpu"
    )
    assert v1.model_path.endswith(SHA_V1) and by_sha.model_path == v1.model_path
    assert v1[1].pooling_mode == "cls" and main[1].pooling_mode == "mean"
    np.testing.assert_array_equal(v1.encode(sample_texts), by_sha.encode(sample_texts))
    assert not np.allclose(v1.encode(sample_texts), main.encode(sample_texts))


def test_missing_model_or_revision(hub_cache) -> None:
    with pytest.raises(FileNotFoundError, match=r"org/absent \(revision main\): not a local folder"):
        EmbeddingModel("org/absent", cache_folder=hub_cache, local_files_only=True, device="cpu")
    with pytest.raises(FileNotFoundError, match=r"org/tiny \(revision v9\)"):
        EmbeddingModel("org/tiny", revision="v9", cache_folder=hub_cache, local_files_only=True, device="cpu")


def test_a_missing_model_says_why_it_could_not_be_fetched(hub_cache, monkeypatch) -> None:
    """Offline mode is named only when it is on; otherwise the message says the hub was unreachable."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(FileNotFoundError, match=r"offline mode is on \(HF_HUB_OFFLINE\)"):
        resolve_model_path("org/absent", cache_folder=hub_cache)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens: unreachable at once
    with pytest.raises(FileNotFoundError, match="the hub could not be reached") as info:
        resolve_model_path("org/absent", cache_folder=hub_cache)
    assert "offline" not in str(info.value)


def test_not_a_folder_or_id(tmp_path) -> None:
    file = tmp_path / "model.txt"
    file.write_text("x")
    with pytest.raises(NotADirectoryError, match="is a file"):
        resolve_model_path(str(file))
    with pytest.raises(FileNotFoundError, match="no such folder"):
        resolve_model_path("a/b/c")
    with pytest.raises(ValueError, match="non-empty string"):
        resolve_model_path("")
    assert resolve_model_path(str(tmp_path)) == str(tmp_path)
    assert resolve_model_path(tmp_path) == str(tmp_path)  # a pathlib.Path works too
