"""The Transformer module: tokenisation, prompt length, truncation, load options and save, vs sentence-transformers."""

from __future__ import annotations

import json
import os

import pytest
import torch
from sentence_transformers.sentence_transformer.modules import Transformer as STTransformer

from embedder.modules import LoadOptions
from embedder.modules import transformer as transformer_mod
from embedder.modules.transformer import Transformer

LONG = " ".join(["the cat and the dog"] * 40)


def st_transformer(path: str, **kwargs) -> STTransformer:
    """sentence-transformers' own Transformer on the same folder (reads sentence_bert_config.json like we do)."""
    return STTransformer.load(path, **kwargs)


def test_preprocess_pads_to_batch_longest_and_truncates(tiny_bert_dir) -> None:
    module = Transformer.load(tiny_bert_dir(max_seq_length=16))
    assert module.max_seq_length == 16
    short = module.preprocess(["hello world", "rain"])
    assert short["input_ids"].shape == (2, 4)  # [CLS] hello world [SEP], padded only that far
    assert short["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]
    assert "prompt_length" not in short
    long = module.preprocess([LONG, "rain"])
    assert long["input_ids"].shape == (2, 16)
    assert long["input_ids"][0, -1].item() == module.tokenizer.sep_token_id  # truncation keeps [SEP]
    assert module.text_lengths(["hello world", LONG, ""]) == [4, 16, 2]


@pytest.mark.parametrize("do_lower_case", [False, True])
def test_tokens_match_sentence_transformers(
    tiny_bert_dir, minilm_path, do_lower_case: bool, tmp_path
) -> None:
    texts = ["Hello World", "THE Cat!", LONG, "", "naïve café"]
    cased_path = tiny_bert_dir("cased", st=True, cased=True)
    for path in (tiny_bert_dir(max_seq_length=20), cased_path, minilm_path):
        cfg = {"max_seq_length": 20, "do_lower_case": do_lower_case}
        if path == minilm_path:
            # Same weights, a config of our own: copy nothing, point both loaders at a temp sentence_bert_config.
            path = str(tmp_path / "minilm")
            os.makedirs(path)
            for name in os.listdir(minilm_path):
                if os.path.isfile(os.path.join(minilm_path, name)):
                    os.symlink(os.path.join(minilm_path, name), os.path.join(path, name))
            os.remove(os.path.join(path, "sentence_bert_config.json"))
        with open(os.path.join(path, "sentence_bert_config.json"), "w") as f:
            json.dump(cfg, f)
        ours = Transformer.load(path).preprocess(texts)
        theirs = st_transformer(path).preprocess(texts)
        for key in ("input_ids", "attention_mask"):
            assert torch.equal(ours[key], theirs[key]), (path, key)
    # The cased tokenizer keeps "Hello" (unknown pieces) unless do_lower_case lowercases it first.
    cased = Transformer.load(cased_path)
    hello = cased.tokenizer.convert_tokens_to_ids("hello")
    assert (hello in cased.preprocess(["Hello"])["input_ids"][0].tolist()) == do_lower_case


@pytest.mark.parametrize("prompt", ["query: ", "Represent this sentence for retrieval:", "a", "hello world "])
def test_prompt_length_matches_sentence_transformers(tiny_bert_dir, minilm_path, prompt: str) -> None:
    for path in (tiny_bert_dir(st=True), minilm_path):
        ours = Transformer.load(path).preprocess(["the cat", "a dog runs"], prompt=prompt)
        theirs = st_transformer(path).preprocess(["the cat", "a dog runs"], prompt=prompt)
        assert ours["prompt_length"] == theirs["prompt_length"], path
        assert torch.equal(ours["input_ids"], theirs["input_ids"])
    # [CLS] + the prompt's own tokens; the trailing [SEP] of the prompt alone is not counted.
    module = Transformer.load(tiny_bert_dir("b2", st=True))
    assert module.prompt_length("hello world ") == 3


@pytest.mark.parametrize(("tok_max", "max_pos", "expected"), [(512, 64, 64), (32, 64, 32)])
def test_max_seq_length_default_matches_sentence_transformers(
    tiny_bert_dir, tok_max, max_pos, expected
) -> None:
    # No max_seq_length in the folder: the tokenizer's limit, capped by the model's positions, as ST does.
    path = tiny_bert_dir(model_max_length=tok_max, max_position_embeddings=max_pos)
    assert Transformer.load(path).max_seq_length == expected == st_transformer(path).max_seq_length


def test_max_seq_length_setter(tiny_bert_dir) -> None:
    module = Transformer.load(tiny_bert_dir(st=True))
    module.max_seq_length = 8
    assert module.preprocess([LONG])["input_ids"].shape == (1, 8)
    with pytest.raises(ValueError, match="positive int"):
        module.max_seq_length = 0


def test_forward_outputs_and_hidden_states(tiny_bert_dir) -> None:
    path = tiny_bert_dir(st=True)
    module = Transformer.load(path)
    features = module.preprocess(["the cat", "rain"], prompt="query: ", task="query")
    with torch.inference_mode():
        out = module(dict(features))
    assert out["token_embeddings"].shape == (*features["input_ids"].shape, 32)
    assert torch.equal(out["attention_mask"], features["attention_mask"])
    assert out["task"] == "query" and "all_layer_embeddings" not in out
    hidden = Transformer.load(path, LoadOptions(config_kwargs={"output_hidden_states": True}))
    with torch.inference_mode():
        out2 = hidden(dict(features))
    assert len(out2["all_layer_embeddings"]) == 3  # embeddings + 2 layers
    torch.testing.assert_close(out2["all_layer_embeddings"][-1], out2["token_embeddings"])
    torch.testing.assert_close(out2["token_embeddings"], out["token_embeddings"])
    assert module.get_word_embedding_dimension() == 32


def test_pickle_refused_without_allow_pickle(tiny_bert_dir) -> None:
    safe = tiny_bert_dir("safe", seed=3)
    pickled = tiny_bert_dir("pickled", seed=3, safetensors=False)
    assert not os.path.exists(os.path.join(pickled, "model.safetensors"))
    with pytest.raises(ValueError, match=r"pytorch_model\.bin.*allow_pickle=True"):
        Transformer.load(pickled)
    module = Transformer.load(pickled, LoadOptions(allow_pickle=True))
    ref = Transformer.load(safe)
    feats = ref.preprocess(["the cat", "rain"])
    with torch.inference_mode():
        torch.testing.assert_close(
            module(dict(feats))["token_embeddings"], ref(dict(feats))["token_embeddings"]
        )


def test_missing_weights(tiny_bert_dir) -> None:
    path = tiny_bert_dir()
    os.remove(os.path.join(path, "model.safetensors"))
    with pytest.raises(FileNotFoundError, match="no model weights"):
        Transformer.load(path)


@pytest.mark.parametrize(
    ("kwargs", "dtype"),
    [
        ({"torch_dtype": "bfloat16"}, torch.bfloat16),
        ({"dtype": torch.float16}, torch.float16),
        ({}, torch.float32),
    ],
)
def test_dtype_kwargs(tiny_bert_dir, kwargs, dtype) -> None:
    module = Transformer.load(tiny_bert_dir(st=True), LoadOptions(model_kwargs=kwargs))
    assert next(module.parameters()).dtype == dtype


def test_bad_dtype(tiny_bert_dir) -> None:
    with pytest.raises(ValueError, match="'float17'"):
        Transformer.load(tiny_bert_dir(st=True), LoadOptions(model_kwargs={"torch_dtype": "float17"}))


def test_attn_implementation_and_config_args(tiny_bert_dir) -> None:
    path = tiny_bert_dir(st=True)
    with open(os.path.join(path, "sentence_bert_config.json"), "w") as f:
        json.dump({"max_seq_length": 32, "model_args": {"attn_implementation": "eager"}}, f)
    module = Transformer.load(path)
    assert module.auto_model.config._attn_implementation == "eager"
    # Caller options win over the folder's config.
    module = Transformer.load(path, LoadOptions(model_kwargs={"attn_implementation": "sdpa"}))
    assert module.auto_model.config._attn_implementation == "sdpa"


def test_config_cannot_turn_on_remote_code(tiny_bert_dir, monkeypatch) -> None:
    path = tiny_bert_dir(st=True)
    with open(os.path.join(path, "sentence_bert_config.json"), "w") as f:
        json.dump(
            {"model_kwargs": {"trust_remote_code": True}, "tokenizer_args": {"trust_remote_code": True}}, f
        )
    seen = []
    real = transformer_mod.AutoModel

    class Spy:
        @staticmethod
        def from_pretrained(*args, **kwargs):
            seen.append(kwargs["trust_remote_code"])
            return real.from_pretrained(*args, **kwargs)

    monkeypatch.setattr(transformer_mod, "AutoModel", Spy)
    Transformer.load(path)
    Transformer.load(path, LoadOptions(trust_remote_code=True))
    assert seen == [False, True]


def test_unsupported_transformer_task(tiny_bert_dir) -> None:
    path = tiny_bert_dir(st=True)
    with open(os.path.join(path, "sentence_bert_config.json"), "w") as f:
        json.dump({"transformer_task": "sequence-classification"}, f)
    with pytest.raises(
        ValueError, match=r"sentence_bert_config\.json: transformer_task 'sequence-classification'"
    ):
        Transformer.load(path)


def test_save_roundtrip_and_sentence_transformers_loads_it(tiny_bert_dir, tmp_path) -> None:
    module = Transformer.load(tiny_bert_dir(max_seq_length=24))
    module.do_lower_case = False
    out = str(tmp_path / "saved")
    module.save(out)
    with open(os.path.join(out, "sentence_bert_config.json")) as f:
        assert json.load(f) == {"max_seq_length": 24, "do_lower_case": False}
    assert os.path.exists(os.path.join(out, "model.safetensors"))
    assert os.path.exists(os.path.join(out, "tokenizer.json"))
    again = Transformer.load(out)
    theirs = st_transformer(out)
    assert again.max_seq_length == theirs.max_seq_length == 24
    feats = module.preprocess(["the cat", LONG])
    with torch.inference_mode():
        a = module(dict(feats))["token_embeddings"]
        b = again(dict(feats))["token_embeddings"]
        c = theirs(dict(feats))["token_embeddings"]
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, c)
