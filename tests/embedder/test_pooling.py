"""Pooling parity with sentence-transformers: every mode, combinations, prompt exclusion, both config formats."""

from __future__ import annotations

import json
import os
import warnings

import numpy as np
import pytest
import torch
from parity_rows import assert_parity
from sentence_transformers.sentence_transformer.modules import Pooling as STPooling

from embedder.modules.pooling import POOLING_MODES, Pooling, exclude_prompt, modes_from_config

COMBINATIONS = [
    ("mean", "max"),
    ("cls", "mean", "lasttoken"),
    ("mean", "mean_sqrt_len_tokens", "weightedmean"),
    POOLING_MODES,
    ("lasttoken", "cls", "max"),  # a custom order: concatenated as given
]
ALL_MODES = [(m,) for m in POOLING_MODES] + COMBINATIONS


def st_pooling(dim: int, modes: tuple[str, ...], include_prompt: bool = True) -> STPooling:
    return STPooling(dim, pooling_mode=modes if len(modes) > 1 else modes[0], include_prompt=include_prompt)


def make_features(
    batch: int = 6, seq: int = 11, dim: int = 16, *, left_pad: bool = False, seed: int = 0
) -> dict:
    """Random token embeddings with mixed lengths (one row of length 1), right- or left-padded."""
    gen = torch.Generator().manual_seed(seed)
    emb = torch.randn(batch, seq, dim, generator=gen)
    lengths = [seq, 1, 5, seq - 3, 7, 2][:batch]
    mask = torch.zeros(batch, seq, dtype=torch.int64)
    for i, n in enumerate(lengths):
        if left_pad:
            mask[i, seq - n :] = 1
        else:
            mask[i, :n] = 1
    return {"token_embeddings": emb, "attention_mask": mask}


def run_both(ours: Pooling, theirs: STPooling, features: dict) -> tuple[torch.Tensor, torch.Tensor]:
    clone = {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in features.items()}
    a = ours(dict(features))["sentence_embedding"]
    b = theirs(clone)["sentence_embedding"]
    return a, b


@pytest.mark.parametrize("modes", ALL_MODES, ids=lambda m: "+".join(m))
@pytest.mark.parametrize("left_pad", [False, True], ids=["right", "left"])
def test_forward_matches_sentence_transformers(modes, left_pad):
    features = make_features(left_pad=left_pad)
    ours = Pooling(16, modes)
    a, b = run_both(ours, st_pooling(16, modes), features)
    assert a.shape == (6, 16 * len(modes)) and ours.get_sentence_embedding_dimension() == 16 * len(modes)
    assert_parity(a, b)


@pytest.mark.parametrize("modes", ALL_MODES, ids=lambda m: "+".join(m))
@pytest.mark.parametrize("left_pad", [False, True], ids=["right", "left"])
@pytest.mark.parametrize("prompt_length", [3, torch.tensor([3])], ids=["int", "tensor"])
def test_exclude_prompt_matches_sentence_transformers(modes, left_pad, prompt_length):
    features = make_features(left_pad=left_pad)
    # Rows shorter than the prompt are not realistic (the prompt is part of every text); keep them >= 4 tokens.
    keep = features["attention_mask"].sum(1) >= 4
    features = {k: v[keep] for k, v in features.items()}
    features["prompt_length"] = prompt_length
    a, b = run_both(
        Pooling(16, modes, include_prompt=False), st_pooling(16, modes, include_prompt=False), features
    )
    assert_parity(a, b)
    if set(modes) & {"cls", "mean", "mean_sqrt_len_tokens", "weightedmean"}:
        # These modes see the prompt tokens when they are included, so excluding them must change the result.
        with_prompt = Pooling(16, modes)(dict(features))["sentence_embedding"]
        assert not torch.allclose(with_prompt, a)


def test_exclude_prompt_masks_first_real_tokens():
    mask = torch.tensor([[1, 1, 1, 1, 0], [0, 0, 1, 1, 1]])
    assert exclude_prompt(mask, 2).tolist() == [[0, 0, 1, 1, 0], [0, 0, 0, 0, 1]]
    right = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    assert exclude_prompt(right, 1).tolist() == [[0, 1, 1, 0], [0, 1, 1, 1]]
    assert mask.tolist() == [[1, 1, 1, 1, 0], [0, 0, 1, 1, 1]], "the caller's mask must not change"


@pytest.mark.parametrize(
    "modes", [("mean",), ("mean_sqrt_len_tokens",), ("weightedmean",)], ids=lambda m: m[0]
)
def test_token_weights_sum_matches_sentence_transformers(modes):
    features = make_features()
    features["token_weights_sum"] = torch.rand(6) * 5 + 0.5
    a, b = run_both(Pooling(16, modes), st_pooling(16, modes), features)
    assert_parity(a, b)


def test_half_precision_matches_sentence_transformers():
    features = make_features()
    features["token_embeddings"] = features["token_embeddings"].to(torch.bfloat16)
    for modes in ALL_MODES:
        a, b = run_both(Pooling(16, modes), st_pooling(16, modes), features)
        assert a.dtype == b.dtype == torch.bfloat16
        assert torch.equal(a, b), modes


def test_no_attention_mask_uses_every_token():
    features = make_features()
    del features["attention_mask"]
    for modes in ALL_MODES:
        a, b = run_both(Pooling(16, modes), st_pooling(16, modes), features)
        assert_parity(a, b)


@pytest.mark.parametrize("modes", ALL_MODES, ids=lambda m: "+".join(m))
def test_saved_by_us_loads_in_sentence_transformers(tmp_path, modes):
    ours = Pooling(16, modes, include_prompt=False)
    ours.save(str(tmp_path))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # ST must read our format without deprecation noise
        theirs = STPooling.load(str(tmp_path))
    assert theirs.pooling_mode == ours.pooling_mode and theirs.include_prompt is False
    assert theirs.get_embedding_dimension() == ours.get_embedding_dimension()
    features = make_features(seed=1)
    keep = features["attention_mask"].sum(1) >= 2
    features = {k: v[keep] for k, v in features.items()}
    features["prompt_length"] = 1
    assert_parity(*run_both(ours, theirs, features))


@pytest.mark.parametrize("modes", ALL_MODES, ids=lambda m: "+".join(m))
def test_saved_by_sentence_transformers_loads_in_ours(tmp_path, modes):
    theirs = st_pooling(16, modes)
    theirs.save(str(tmp_path))
    ours = Pooling.load(str(tmp_path))
    assert ours.pooling_modes == modes and ours.include_prompt is True
    assert_parity(*run_both(ours, theirs, make_features(seed=2)))


def test_config_format():
    config = Pooling(384, "mean").get_config_dict()
    assert config == {
        "word_embedding_dimension": 384,
        "pooling_mode_cls_token": False,
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_tokens": True,
        "pooling_mode_mean_sqrt_len_tokens": False,
        "pooling_mode_weightedmean_tokens": False,
        "pooling_mode_lasttoken": False,
        "include_prompt": True,
    }
    custom = Pooling(8, ("max", "cls")).get_config_dict()
    assert custom == {"embedding_dimension": 8, "pooling_mode": ["max", "cls"], "include_prompt": True}


def test_legacy_config_without_newer_keys(tmp_path, minilm_path):
    # MiniLM's file predates weightedmean/lasttoken/include_prompt.
    ours = Pooling.load(os.path.join(minilm_path, "1_Pooling"))
    assert ours.pooling_modes == ("mean",) and ours.include_prompt and ours.get_embedding_dimension() == 384
    (tmp_path / "config.json").write_text(json.dumps({"word_embedding_dimension": 4}))
    assert Pooling.load(str(tmp_path)).pooling_modes == ("mean",)
    assert modes_from_config({"pooling_mode": "cls", "pooling_mode_mean_tokens": True}) == ("cls",)


def test_bad_mode_names_itself_and_the_valid_ones():
    with pytest.raises(ValueError, match=r"pooling_mode\[1\] = 'median'.*'weightedmean'"):
        Pooling(8, ("mean", "median"))


def st_encode_both_ways(st_model, tmp_path, texts: list[str], batch_sizes=(4, 3, 5), **encode_kwargs) -> None:
    """ST saves -> EmbeddingModel loads and matches; EmbeddingModel saves -> ST loads and matches."""
    from sentence_transformers import SentenceTransformer

    from embedder import EmbeddingModel

    expected = st_model.encode(texts, batch_size=batch_sizes[0], **encode_kwargs)
    st_model.save(str(tmp_path / "saved_by_st"))
    ours = EmbeddingModel(str(tmp_path / "saved_by_st"), device="cpu")
    assert_parity(ours.encode(texts, batch_size=batch_sizes[1], **encode_kwargs), expected)
    ours.save_pretrained(str(tmp_path / "saved_by_us"))
    again = SentenceTransformer(str(tmp_path / "saved_by_us"), device="cpu")
    assert_parity(again.encode(texts, batch_size=batch_sizes[2], **encode_kwargs), expected)


@pytest.mark.parametrize("modes", ALL_MODES, ids=lambda m: "+".join(m))
def test_embedding_model_matches_sentence_transformer(tmp_path, tiny_bert_dir, sample_texts, modes):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Transformer as STTransformer

    bert = tiny_bert_dir("bert")
    st_model = SentenceTransformer(
        modules=[STTransformer(bert, max_seq_length=24), st_pooling(32, modes)], device="cpu"
    )
    st_encode_both_ways(st_model, tmp_path, sample_texts)


@pytest.mark.parametrize(
    "modes", [("mean",), ("cls",), ("weightedmean",), ("lasttoken",), POOLING_MODES], ids="+".join
)
@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_embedding_model_excludes_prompt_like_sentence_transformer(
    tmp_path, tiny_bert_dir, sample_texts, modes, padding_side
):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Transformer as STTransformer

    bert = tiny_bert_dir("bert")
    config_file = os.path.join(bert, "tokenizer_config.json")
    with open(config_file) as f:
        tok_config = json.load(f)
    tok_config["padding_side"] = padding_side
    with open(config_file, "w") as f:
        json.dump(tok_config, f)
    transformer = STTransformer(bert, max_seq_length=24)
    assert transformer.tokenizer.padding_side == padding_side
    st_model = SentenceTransformer(
        modules=[transformer, st_pooling(32, modes, include_prompt=False)], device="cpu"
    )
    # BERT's absolute positions make left-padded outputs depend on the batch's longest text (in both libraries),
    # so left padding is compared on a single batch.
    batch_sizes = (4, 3, 5) if padding_side == "right" else (64, 64, 64)
    st_encode_both_ways(st_model, tmp_path, sample_texts, batch_sizes, prompt="search query: ")
    if modes != ("lasttoken",):
        # The prompt really was left out: counting it changes the vectors.
        excluded = st_model.encode(sample_texts, batch_size=64, prompt="search query: ")
        st_model[1].include_prompt = True
        assert not np.allclose(
            st_model.encode(sample_texts, batch_size=64, prompt="search query: "), excluded
        )
