"""encode(output_value=...): token embeddings and feature dicts against sentence-transformers' on a tiny BERT."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.util import quantize_embeddings as st_quantize
from tokenizers import Tokenizer, pre_tokenizers
from tokenizers.models import WordLevel

from embedder import EmbeddingModel
from embedder.modules.static_embedding import StaticEmbedding

BS = 3  # several batches, each padded to its longest text


@pytest.fixture
def models(tiny_bert_dir) -> tuple[EmbeddingModel, SentenceTransformer]:
    """Ours and sentence-transformers' on one tiny BERT; max_seq_length 12 truncates the longest texts."""
    path = tiny_bert_dir(max_seq_length=12, prompts={"query": "query: "})
    return EmbeddingModel(path, device="cpu"), SentenceTransformer(path, device="cpu")


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"prompt": "query: "},
        # Token batching cuts other batches; the packed forward must not be used for token outputs.
        {"batching": "tokens"},
        {"max_batch_tokens": 20},
    ],
)
def test_token_embeddings_match(models, sample_texts, parity, kwargs) -> None:
    ours, theirs = models
    assert ours[0].packed

    def packed_forward(**inputs):
        raise AssertionError("the packed forward ran for token embeddings")

    ours[0]._packed = packed_forward
    a = ours.encode(sample_texts, output_value="token_embeddings", batch_size=BS, **kwargs)
    b = theirs.encode(
        sample_texts, output_value="token_embeddings", batch_size=BS, prompt=kwargs.get("prompt")
    )
    assert isinstance(a, list) and len(a) == len(b) == len(sample_texts)
    lengths = ours.tokenize(sample_texts, prompt=kwargs.get("prompt"))["attention_mask"].sum(dim=1)
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        assert isinstance(x, np.ndarray) and x.dtype == np.float32, i
        assert x.shape == tuple(y.shape) == (int(lengths[i]), 32), i
        parity(x, y)
    if kwargs.get("batching") == "tokens":
        with pytest.raises(AssertionError, match="packed forward ran"):  # the trap works
            ours.encode(sample_texts, batching="tokens")


def test_token_embeddings_forms_and_extras(models, sample_texts, parity) -> None:
    ours, theirs = models
    floats = ours.encode(sample_texts, output_value="token_embeddings", batch_size=BS)
    tensors = ours.encode(sample_texts, output_value="token_embeddings", convert_to_tensor=True)
    listed = ours.encode(sample_texts, output_value="token_embeddings", convert_to_numpy=False)
    for t, u, x in zip(tensors, listed, floats, strict=True):
        assert isinstance(t, torch.Tensor) and isinstance(u, torch.Tensor)
        parity(t, x)
        parity(u, x)
    one = ours.encode("hello world", output_value="token_embeddings")
    parity(one, theirs.encode("hello world", output_value="token_embeddings"))
    assert one.shape == (4, 32)
    # Normalising and truncating are for sentence embeddings; they leave token embeddings as they are.
    same = ours.encode(
        sample_texts,
        output_value="token_embeddings",
        normalize_embeddings=True,
        truncate_dim=8,
        batch_size=BS,
    )
    for x, y in zip(same, floats, strict=True):
        np.testing.assert_array_equal(x, y)
    # Quantised as sentence-transformers quantises a list of token matrices: buckets shared by all texts.
    for precision in ("int8", "ubinary"):
        q = ours.encode(sample_texts, output_value="token_embeddings", precision=precision, batch_size=BS)
        for x, y in zip(q, st_quantize(floats, precision), strict=True):
            assert x.dtype == y.dtype
            np.testing.assert_array_equal(x, y)
    assert ours.encode([], output_value="token_embeddings") == []


def test_output_value_none_matches(models, sample_texts, parity) -> None:
    ours, theirs = models
    kwargs = {"batch_size": BS, "truncate_dim": 8, "normalize_embeddings": True, "prompt": "query: "}
    a = ours.encode(sample_texts, output_value=None, **kwargs)
    b = theirs.encode(sample_texts, output_value=None, **kwargs)
    assert isinstance(a, list) and len(a) == len(b) == len(sample_texts)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for key, value in x.items():
            if isinstance(value, torch.Tensor) and value.is_floating_point():
                assert value.shape == y[key].shape, key
                parity(value, y[key])
            elif isinstance(value, torch.Tensor):
                assert torch.equal(value, y[key]), key
            else:
                assert value == y[key], key
        # Truncated as asked, but not normalised: sentence-transformers returns the features as computed.
        assert x["sentence_embedding"].shape == (8,)
    one = ours.encode("hello world", output_value=None)
    assert isinstance(one, dict) and one["token_embeddings"].shape == (4, 32)
    assert ours.encode([], output_value=None) == []


def test_bad_output_value_and_models_without_tokens(models) -> None:
    ours, _ = models
    with pytest.raises(ValueError, match=r"'tokens'.*'sentence_embedding', 'token_embeddings', None"):
        ours.encode(["a"], output_value="tokens")
    with pytest.raises(ValueError, match=r"precision 'int8'"):
        ours.encode(["a", "b"], output_value=None, precision="int8")
    tokenizer = Tokenizer(WordLevel({"[UNK]": 0, "cat": 1, "dog": 2}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    static = EmbeddingModel(modules=[StaticEmbedding(tokenizer, np.ones((3, 4)))], device="cpu")
    with pytest.raises(ValueError, match=r"needs token_embeddings.*\['input_ids', 'offsets'"):
        static.encode(["cat dog"], output_value="token_embeddings")
