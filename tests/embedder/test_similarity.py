"""Similarity functions match sentence-transformers' util functions; the model follows similarity_fn_name."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sentence_transformers import util

from embedder import similarity as sim
from embedder.model import EmbeddingModel

ST_FNS = {
    "cosine": (util.cos_sim, util.pairwise_cos_sim),
    "dot": (util.dot_score, util.pairwise_dot_score),
    "euclidean": (util.euclidean_sim, util.pairwise_euclidean_sim),
    "manhattan": (util.manhattan_sim, util.pairwise_manhattan_sim),
}


@pytest.fixture
def ab() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.normal(size=(7, 16)).astype(np.float32), rng.normal(size=(5, 16)).astype(np.float32)


@pytest.mark.parametrize("name", sim.SIMILARITY_NAMES)
def test_matrix_matches_sentence_transformers(name: str, ab) -> None:
    a, b = ab
    ours = sim.similarity_fn(name)(a, b)
    theirs = ST_FNS[name][0](a, b)
    assert ours.shape == (7, 5)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    if name in ("euclidean", "manhattan"):
        assert (ours <= 0).all()  # negative distances, larger is closer


@pytest.mark.parametrize("name", sim.SIMILARITY_NAMES)
def test_pairwise_matches_sentence_transformers(name: str, ab) -> None:
    a, _ = ab
    b = a[::-1].copy()
    torch.testing.assert_close(sim.pairwise(name, a, b), ST_FNS[name][1](a, b), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("convert", [torch.from_numpy, list, lambda x: [torch.from_numpy(r) for r in x]])
def test_input_forms(convert, ab) -> None:
    a, b = ab
    expected = util.cos_sim(a, b)
    torch.testing.assert_close(sim.cosine(convert(a), convert(b)), expected, rtol=1e-5, atol=1e-5)
    # A single vector is a 1-row matrix; half precision and int codes are compared as float32.
    assert sim.cosine(a[0], b).shape == (1, 5)
    assert sim.dot(torch.from_numpy(a).half(), b).dtype == torch.float32
    assert sim.dot(np.array([[1, 2]], dtype=np.int8), np.array([[3, 4]], dtype=np.int8)).item() == 11.0


def test_bad_name() -> None:
    with pytest.raises(ValueError, match=r"'jaccard'.*'cosine', 'dot', 'euclidean', 'manhattan'"):
        sim.similarity_fn("jaccard")


@pytest.mark.parametrize("name", sim.SIMILARITY_NAMES)
def test_model_similarity_follows_config(name: str, tiny_bert_dir, ab) -> None:
    from sentence_transformers import SentenceTransformer

    path = tiny_bert_dir(similarity_fn_name=name)
    model = EmbeddingModel(path, device="cpu")
    assert model.similarity_fn_name == name
    st = SentenceTransformer(path, device="cpu")
    a, b = ab
    torch.testing.assert_close(model.similarity(a, b), st.similarity(a, b), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(
        model.similarity_pairwise(a[:5], b), st.similarity_pairwise(a[:5], b), rtol=1e-5, atol=1e-5
    )


def test_model_similarity_setter(tiny_bert_dir) -> None:
    model = EmbeddingModel(tiny_bert_dir(st=True), device="cpu")
    assert model.similarity_fn_name == "cosine"  # the default when the folder does not say
    model.similarity_fn_name = "dot"
    assert model.similarity_fn_name == "dot"
    with pytest.raises(ValueError, match="'maxsim'"):
        model.similarity_fn_name = "maxsim"
