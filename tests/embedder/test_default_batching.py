"""encode's default batching ("auto"): the packed token path where it is exact, sentence-transformers' elsewhere."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sentence_transformers import SentenceTransformer

from embedder import EmbeddingModel, encode_loop
from embedder.modules.cnn import CNN
from embedder.modules.pooling import Pooling
from embedder.modules.transformer import Transformer

BS = 3


def resolved(model: EmbeddingModel, output_value: str | None = "sentence_embedding") -> str:
    """What encode's default batching becomes for `model`."""
    return encode_loop.resolve_batching("auto", model, output_value)


def test_auto_is_tokens_only_where_exact(tiny_bert_dir) -> None:
    path = tiny_bert_dir(st=True, normalize=True)
    model = EmbeddingModel(path, device="cpu")
    assert resolved(model) == "tokens"
    for named in ("tokens", "sentence-transformers"):
        assert encode_loop.resolve_batching(named, model, "sentence_embedding") == named
    # Token outputs and feature dicts keep sentence-transformers' batches and the padded forward.
    assert resolved(model, "token_embeddings") == resolved(model, None) == "sentence-transformers"
    # Quantised vectors keep its batches: a last-bit difference could move a bucket or a sign.
    for precision in ("int8", "ubinary"):
        assert encode_loop.resolve_batching("auto", model, "sentence_embedding", precision) == (
            "sentence-transformers"
        )
    # No packed forward (packed=False stands for every architecture packed_support refuses).
    assert resolved(EmbeddingModel(path, device="cpu", packed=False)) == "sentence-transformers"
    hidden = EmbeddingModel(path, device="cpu", config_kwargs={"output_hidden_states": True})
    assert resolved(hidden) == "sentence-transformers"
    # Half precision, or float32 matmuls allowed to cut precision, move vectors past the parity bound.
    assert resolved(EmbeddingModel(path, device="cpu", dtype="bfloat16")) == "sentence-transformers"
    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("high")
        assert resolved(model) == "sentence-transformers"
    finally:
        torch.set_float32_matmul_precision(before)
    # A module that reads padding positions (a CNN over the token sequence) depends on its batch.
    cnn = EmbeddingModel(
        modules=[Transformer.load(path), CNN(32, out_channels=8, kernel_sizes=[3]), Pooling(8, "mean")],
        device="cpu",
    )
    assert resolved(cnn) == "sentence-transformers"


@pytest.mark.parametrize(
    ("model_kwargs", "encode_kwargs"),
    [
        ({"packed": False}, {}),
        ({"dtype": "bfloat16"}, {}),
        ({"config_kwargs": {"output_hidden_states": True}}, {}),
        ({}, {"precision": "int8"}),
    ],
)
def test_default_falls_back_to_st_batching_bit_for_bit(
    tiny_bert_dir, sample_texts, model_kwargs, encode_kwargs
) -> None:
    path = tiny_bert_dir(st=True, max_seq_length=12)
    ours = EmbeddingModel(path, device="cpu", **model_kwargs)
    texts = sample_texts * 3
    default = ours.encode(texts, batch_size=BS, **encode_kwargs)
    named = ours.encode(texts, batch_size=BS, batching="sentence-transformers", **encode_kwargs)
    np.testing.assert_array_equal(default, named)
    if "dtype" not in model_kwargs:
        theirs = SentenceTransformer(path, device="cpu")
        np.testing.assert_array_equal(default, theirs.encode(texts, batch_size=BS, **encode_kwargs))


def test_default_packs_where_exact(tiny_bert_dir, sample_texts, parity) -> None:
    path = tiny_bert_dir(st=True, max_seq_length=12, normalize=True)
    ours = EmbeddingModel(path, device="cpu")
    texts = sample_texts * 3
    ours.stats.update(texts=0, tokens=0, padded_tokens=0)
    default = ours.encode(texts, batch_size=BS)
    assert ours.stats["padded_tokens"] == ours.stats["tokens"]  # packed: no padding computed
    np.testing.assert_array_equal(default, ours.encode(texts, batch_size=BS, batching="tokens"))
    parity(default, SentenceTransformer(path, device="cpu").encode(texts, batch_size=BS))
