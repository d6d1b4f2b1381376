"""Each architecture people embed with (encoders and decoders) on a tiny random model, vs sentence-transformers."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import pytest
from parity_rows import assert_parity
from sentence_transformers import SentenceTransformer
from tiny_archs import ARCHS, PADDING_SIDES, SPECS, Arch, embedder_conftest, save_tiny_arch

from embedder import EmbeddingModel

LONG = " ".join(["the big dog runs in the city"] * 12)  # 84 words: cut to max_seq_length (64)
TEXTS = [*embedder_conftest().SAMPLE_TEXTS, LONG, "hello world rain"]
DECODERS: tuple[Arch, ...] = ("qwen3", "mistral", "llama")
Models = Callable[[Arch], tuple[str, EmbeddingModel, SentenceTransformer]]


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Models:
    """Factory: (folder, ours, sentence-transformers') for an architecture, each built once per module."""
    cache: dict[str, tuple[str, EmbeddingModel, SentenceTransformer]] = {}

    def get(arch: Arch) -> tuple[str, EmbeddingModel, SentenceTransformer]:
        if arch not in cache:
            path = save_tiny_arch(tmp_path_factory.mktemp(arch) / "model", arch)
            cache[arch] = (path, EmbeddingModel(path, device="cpu"), SentenceTransformer(path, device="cpu"))
        return cache[arch]

    return get


@contextmanager
def padding_side(side: str, *models: EmbeddingModel | SentenceTransformer) -> Iterator[None]:
    """Pad on `side` in every model's tokenizer for the block, then put the saved side back."""
    tokenizers = [m[0].tokenizer for m in models]
    saved = [t.padding_side for t in tokenizers]
    for t in tokenizers:
        t.padding_side = side
    try:
        yield
    finally:
        for t, s in zip(tokenizers, saved, strict=True):
            t.padding_side = s


def last_real_tokens(features: dict) -> list[int]:
    """The id of each row's last unmasked token (left or right padding)."""
    return [
        int(ids[mask.bool()][-1])
        for ids, mask in zip(features["input_ids"], features["attention_mask"], strict=True)
    ]


@pytest.mark.parametrize("arch", ARCHS)
def test_encode_matches_sentence_transformers(models: Models, arch: Arch) -> None:
    _, ours, theirs = models(arch)
    for kwargs in ({"batch_size": 3}, {"batch_size": 64}, {"batch_size": 3, "prompt_name": "query"}):
        ref = theirs.encode(TEXTS, **kwargs)
        assert_parity(ours.encode(TEXTS, **kwargs), ref)
        # Token batching: other batches, and the packed forward where the architecture has one.
        assert_parity(ours.encode(TEXTS, batching="tokens", **kwargs), ref)
    assert_parity(ours.encode_query(TEXTS, batch_size=4), theirs.encode_query(TEXTS, batch_size=4))
    assert_parity(ours.encode_document(TEXTS, batch_size=4), theirs.encode_document(TEXTS, batch_size=4))


@pytest.mark.parametrize("arch", ARCHS)
def test_batched_vectors_equal_one_at_a_time(models: Models, arch: Arch) -> None:
    _, ours, theirs = models(arch)
    single = np.stack([ours.encode(t) for t in TEXTS])
    assert_parity(single, theirs.encode(TEXTS, batch_size=1))
    # Absolute positions (BERT) shift under left padding in every library: encoders keep their own side.
    sides = PADDING_SIDES if arch in DECODERS else (ours[0].tokenizer.padding_side,)
    for side in sides:
        with padding_side(side, ours, theirs):
            assert_parity(ours.encode(TEXTS, batch_size=64), single)
            assert_parity(ours.encode(TEXTS, batch_size=3, prompt_name="query"), theirs.encode_query(TEXTS))
            assert_parity(ours.encode(TEXTS, batching="tokens"), single)
            assert_parity(theirs.encode(TEXTS, batch_size=64), single)


@pytest.mark.parametrize("arch", DECODERS)
def test_decoder_tokens_end_with_eos_where_the_tokenizer_appends_it(models: Models, arch: Arch) -> None:
    _, ours, theirs = models(arch)
    first = ours[0]
    for side in PADDING_SIDES:
        with padding_side(side, ours, theirs):
            features = ours.tokenize(TEXTS)
            reference = theirs.tokenize(TEXTS)
            for key in ("input_ids", "attention_mask"):
                assert features[key].tolist() == reference[key].tolist(), (side, key)
            # The unpadded ids the encode loop collates give the same tensors.
            collated = first.collate(first.tokenize_unpadded(TEXTS), list(range(len(TEXTS))))
            assert collated["input_ids"].tolist() == features["input_ids"].tolist(), side
            last = last_real_tokens(features)
            row_lengths = features["attention_mask"].sum(dim=1).tolist()
    assert row_lengths[TEXTS.index(LONG)] == ours.max_seq_length
    eos = first.tokenizer.eos_token_id
    if SPECS[arch].template.endswith(SPECS[arch].tokens["eos_token"]):
        # Truncation keeps the EOS: the pooled token is the EOS even for a text cut short.
        assert last == [eos] * len(TEXTS)
    else:
        assert eos not in last


def test_task_prompts_and_default_prompt_from_the_saved_config(tmp_path) -> None:
    path = save_tiny_arch(tmp_path / "qwen3", "qwen3")
    # e5-mistral style: one instruction per task, one of them the default.
    prompts = {
        "web_search_query": "Instruct: Given a web search query, retrieve relevant passages\nQuery: ",
        "sts_query": "Instruct: Retrieve semantically similar text.\nQuery: ",
    }
    with open(os.path.join(path, "config_sentence_transformers.json"), "w") as f:
        json.dump({"prompts": prompts, "default_prompt_name": "sts_query"}, f)
    ours, theirs = EmbeddingModel(path, device="cpu"), SentenceTransformer(path, device="cpu")
    assert ours.prompts == theirs.prompts and ours.default_prompt_name == theirs.default_prompt_name
    for kwargs in ({}, {"prompt_name": "web_search_query"}, {"prompt": ""}):
        assert_parity(
            ours.encode(TEXTS, batch_size=4, **kwargs), theirs.encode(TEXTS, batch_size=4, **kwargs)
        )
    # The empty "document" prompt wins over the default, as in sentence-transformers.
    plain = ours.encode(TEXTS, batch_size=4, prompt="")
    assert_parity(ours.encode_document(TEXTS, batch_size=4), plain)
    assert_parity(theirs.encode_document(TEXTS, batch_size=4), plain)
    assert not np.allclose(ours.encode(TEXTS, batch_size=4), plain)


@pytest.mark.parametrize("arch", ARCHS)
def test_describe_says_whether_the_forward_is_packed(models: Models, arch: Arch, caplog) -> None:
    path, _, _ = models(arch)
    name = SPECS[arch].model_class if arch in SPECS else "BertModel"
    with caplog.at_level(logging.INFO, logger="embedder.modules.transformer"):
        model = EmbeddingModel(path, device="cpu")
    info = model.describe()
    notes = [r.getMessage() for r in caplog.records if "packed" in r.getMessage()]
    # Every tiny architecture has a packed forward (tests/embedder/test_packed_archs.py covers one without).
    assert (info["packed"], info["packed_reason"], notes) == (True, None, [])
    assert type(model[0].auto_model).__name__ == name
    off = EmbeddingModel(path, device="cpu", packed=False).describe()
    assert (off["packed"], off["packed_reason"]) == (False, "turned off (packed=False)")
