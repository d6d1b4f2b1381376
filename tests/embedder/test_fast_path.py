"""The fast encode path: tokenise once, token-sorted batches, the packed (unpadded) BERT forward, vs HF and ST."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from sentence_transformers import SentenceTransformer

from embedder import EmbeddingModel, encode_loop
from embedder.batching import pad_rows
from embedder.modules import LoadOptions
from embedder.modules.base import PACKED_KEY
from embedder.modules.packed_bert import (
    PackedEncoder,
    packed_support,
    padded_attention,
    run_attention,
)
from embedder.modules.packed_layout import length_runs
from embedder.modules.pooling import LEGACY_FLAGS
from embedder.modules.transformer import Transformer

POOLING = ["mean", "cls", "max", "lasttoken", "weightedmean", "mean_sqrt_len_tokens"]
LONG = " ".join(["the big dog runs in the city"] * 12)


def hf_tokens(module: Transformer, features: dict) -> torch.Tensor:
    """The Hugging Face forward's last hidden states for `features` (the reference the packed path must match)."""
    inputs = {k: features[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in features}
    with torch.inference_mode():
        return module.auto_model(**inputs)[0]


def assert_real_tokens_close(ours: torch.Tensor, ref: torch.Tensor, mask: torch.Tensor) -> None:
    real = mask.bool()
    diff = (ours[real] - ref[real]).abs().max().item()
    assert diff <= 1e-5, f"packed vs HF token embeddings: max abs diff {diff:.3g} > 1e-5"


def set_pooling(path: str, mode: str, include_prompt: bool = True) -> None:
    """Set the folder's Pooling config to exactly one mode (legacy flags, which ST reads too)."""
    cfg_file = os.path.join(path, "1_Pooling", "config.json")
    with open(cfg_file) as f:
        cfg = json.load(f)
    for key in list(cfg):
        if key.startswith("pooling_mode_"):
            cfg[key] = False
    cfg[next(flag for flag, m in LEGACY_FLAGS.items() if m == mode)] = True
    cfg["include_prompt"] = include_prompt
    with open(cfg_file, "w") as f:
        json.dump(cfg, f)


# --- tokenise once, pad from ids ---------------------------------------------------------------------------


def test_pad_rows_right_and_left() -> None:
    ids, mask = pad_rows([[5, 6, 7], [8]], 0)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    ids, mask = pad_rows([[5, 6, 7], [8]], 1, left=True)
    assert ids.tolist() == [[5, 6, 7], [1, 1, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert ids.dtype == mask.dtype == torch.int64


def test_collate_equals_preprocess(tiny_bert_dir, minilm_path, sample_texts) -> None:
    texts = [*sample_texts, LONG, "Ünïcödé 🙂"]
    for path in (tiny_bert_dir(st=True, max_seq_length=16), minilm_path):
        module = Transformer.load(path)
        for prompt in (None, "query: "):
            encoded = module.tokenize_unpadded(texts, prompt=prompt)
            rows = [3, 0, 7, 2]
            ours = module.collate(encoded, rows, prompt=prompt, task="query")
            theirs = module.preprocess([texts[i] for i in rows], prompt=prompt, task="query")
            assert set(ours) == set(theirs), path
            for key, value in theirs.items():
                if isinstance(value, torch.Tensor):
                    assert torch.equal(ours[key], value), (path, prompt, key)
                else:
                    assert ours[key] == value, (path, prompt, key)


def test_plan_batches(tiny_bert_dir, sample_texts) -> None:
    module = Transformer.load(tiny_bert_dir(st=True, max_seq_length=16))
    texts = sample_texts * 5
    cpu = torch.device("cpu")
    encoded, lengths, order, batches = encode_loop.plan(
        module, texts, prompt=None, batch_size=4, max_batch_tokens=None, batching_mode="tokens", device=cpu
    )
    assert lengths == module.text_lengths(texts)
    assert [lengths[i] for i in order] == sorted(lengths, reverse=True)
    assert sorted(i for b in batches for i in b) == list(range(len(texts)))
    # The default budget is batch_size x max_seq_length padded tokens: no batch holds more than ST's could.
    assert all(len(b) * max(lengths[i] for i in b) <= 4 * 16 for b in batches)
    _, _, st_order, st_batches = encode_loop.plan(
        module,
        texts,
        prompt=None,
        batch_size=4,
        max_batch_tokens=None,
        batching_mode="sentence-transformers",
        device=cpu,
    )
    assert st_order == list(np.argsort([-len(t) for t in texts]))
    assert st_batches == [st_order[i : i + 4] for i in range(0, len(texts), 4)]
    with pytest.raises(ValueError, match=r"'fastest'.*'tokens', 'sentence-transformers'"):
        encode_loop.check_batching("fastest")


def test_prefetch_gives_the_same_features(tiny_bert_dir, sample_texts) -> None:
    module = Transformer.load(tiny_bert_dir(st=True))
    encoded = module.tokenize_unpadded(sample_texts)
    batches = [[0, 1, 2], [3, 4], [5, 6, 7]]
    plain = list(encode_loop.batch_features(module, sample_texts, encoded, batches, prompt=None, task=None))
    ahead = list(
        encode_loop.batch_features(
            module, sample_texts, encoded, iter(batches), prompt=None, task=None, prefetch=True
        )
    )
    assert [b for b, _ in plain] == [b for b, _ in ahead] == batches
    for (_, a), (_, b) in zip(plain, ahead, strict=True):
        assert torch.equal(a["input_ids"], b["input_ids"]) and a["task"] is None and "task" in b


# --- the packed forward ------------------------------------------------------------------------------------


def test_packed_matches_hf_forward_tiny_and_minilm(tiny_bert_dir, minilm_path, sample_texts) -> None:
    texts = [*sample_texts, LONG]
    for path in (tiny_bert_dir(st=True, max_seq_length=32), minilm_path):
        module = Transformer.load(path)
        assert module.packed and module.auto_model.config._attn_implementation == "sdpa"
        features = module.preprocess(texts)
        assert not features["attention_mask"].bool().all()  # padding present: the case that matters
        with torch.inference_mode():
            ours = module({**features, PACKED_KEY: True})["token_embeddings"]
            plain = module(dict(features))["token_embeddings"]
        ref = hf_tokens(module, features)
        assert ours.shape == ref.shape
        assert_real_tokens_close(ours, ref, features["attention_mask"])
        # Unasked, forward is the HF forward itself, padding rows included.
        assert torch.equal(plain, ref)
        # No padding at all takes the gather-free branch.
        full = module.preprocess(["the cat sat", "the dog ran"])
        with torch.inference_mode():
            assert_real_tokens_close(
                module({**full, PACKED_KEY: True})["token_embeddings"],
                hf_tokens(module, full),
                full["attention_mask"],
            )


@pytest.mark.parametrize("arch", ["bert-eager", "roberta", "left-padded", "holes", "sorted-runs"])
def test_packed_matches_hf_on_random_inputs(arch) -> None:
    from transformers import BertConfig, BertModel, RobertaConfig, RobertaModel

    kwargs = dict(
        vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64
    )
    torch.manual_seed(0)
    if arch == "roberta":
        model = RobertaModel(RobertaConfig(**kwargs, max_position_embeddings=40, pad_token_id=1)).eval()
    else:
        config = BertConfig(**kwargs, max_position_embeddings=40)
        if arch == "bert-eager":
            config._attn_implementation = "eager"
        model = BertModel(config).eval()
    # "sorted-runs": length-sorted rows, as token batching makes them, so attention runs once per run of rows.
    lengths = [9, 9, 9, 7, 7, 3, 1, 1] if arch == "sorted-runs" else [9, 3, 1, 7, 9]
    ids = torch.randint(3, 50, (len(lengths), 9))
    mask = (torch.arange(9)[None, :] < torch.tensor(lengths)[:, None]).long()
    if arch == "left-padded":
        mask = mask.flip(1)
    if arch == "holes":
        mask[0, 4] = 0
    if arch == "roberta":
        ids = ids.masked_fill(mask == 0, 1)  # RoBERTa derives positions from pad ids, as its tokenizer pads
    types = torch.zeros_like(ids)
    with torch.inference_mode():
        ref = model(input_ids=ids, attention_mask=mask, token_type_ids=types)[0]
        ours = PackedEncoder(model)(ids, mask, types)
    assert_real_tokens_close(ours, ref, mask)


def test_length_runs() -> None:
    assert length_runs([3, 3, 2, 0, 2]) == [(0, 2, 3), (6, 1, 2), (8, 1, 2)]
    assert length_runs([]) == []


def test_run_attention_equals_padded_attention() -> None:
    torch.manual_seed(0)
    lengths, heads, width = [5, 5, 4, 2, 2, 2], 2, 3 * 8
    qkv = torch.randn(sum(lengths), width)
    mask = torch.arange(5)[None, :] < torch.tensor(lengths)[:, None]
    index = mask.reshape(-1).nonzero().squeeze(1)
    ref = padded_attention(qkv, index, mask[:, None, None, :], len(lengths), 5, heads, 0.5)
    ours = run_attention(qkv, length_runs(lengths), heads, 0.5)
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=1e-5)


def test_packed_support_and_fallbacks(tiny_bert_dir, sample_texts) -> None:
    from transformers import DistilBertConfig, DistilBertModel

    distil = DistilBertModel(DistilBertConfig(vocab_size=50, dim=32, n_layers=1, n_heads=4, hidden_dim=64))
    assert "DistilBertModel" in packed_support(distil)
    path = tiny_bert_dir(st=True)
    assert not Transformer.load(path, LoadOptions(model_kwargs={"packed": False})).packed
    # Hidden states need every layer's output: the HF forward runs, and still gives the same last layer.
    hidden = Transformer.load(path, LoadOptions(config_kwargs={"output_hidden_states": True}))
    features = hidden.preprocess(sample_texts)
    with torch.inference_mode():
        out = hidden(dict(features))
    assert len(out["all_layer_embeddings"]) == 3
    with torch.inference_mode():
        assert len(hidden({**features, PACKED_KEY: True})["all_layer_embeddings"]) == 3
    module = Transformer.load(path)
    with torch.inference_mode():
        packed = module({**features, PACKED_KEY: True})["token_embeddings"]
    assert_real_tokens_close(packed, out["token_embeddings"], features["attention_mask"])
    module.packed = False
    assert not module.packed


# --- end to end: encode vs sentence-transformers -------------------------------------------------------------


@pytest.mark.parametrize("mode", POOLING)
@pytest.mark.parametrize("include_prompt", [True, False])
def test_every_pooling_mode_matches_st_packed_and_not(
    tiny_bert_dir, sample_texts, parity, mode, include_prompt
) -> None:
    path = tiny_bert_dir(st=True, max_seq_length=24, normalize=mode == "mean")
    set_pooling(path, mode, include_prompt)
    texts = [*sample_texts, LONG] * 3
    theirs = SentenceTransformer(path, device="cpu")
    fast = EmbeddingModel(path, device="cpu")
    slow = EmbeddingModel(path, device="cpu", model_kwargs={"packed": False})
    assert fast[0].packed and not slow[0].packed
    for kwargs in ({"batch_size": 4}, {"batch_size": 4, "prompt": "query: "}):
        ref = theirs.encode(texts, **kwargs)
        parity(fast.encode(texts, **kwargs), ref)
        parity(slow.encode(texts, **kwargs), ref)
        parity(fast.encode(texts, max_batch_tokens=64, **kwargs), ref)
        parity(fast.encode(texts, batching="tokens", **kwargs), ref)
        parity(slow.encode(texts, batching="tokens", **kwargs), ref)


@pytest.mark.slow
def test_minilm_fast_path_matches_st(minilm_path, parity) -> None:
    import pyarrow.parquet as pq

    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    texts = pq.read_table(os.path.join(repo, "sample", "corpus.parquet"), columns=["text"])
    texts = texts.column("text").to_pylist()[:48] + ["", "a", LONG * 8]
    ours = EmbeddingModel(minilm_path, device="cpu")
    st = SentenceTransformer(minilm_path, device="cpu")
    ref = st.encode(texts, batch_size=16)
    ours.stats.update(texts=0, tokens=0, padded_tokens=0)
    fast = ours.encode(texts, batch_size=16, batching="tokens")
    parity(fast, ref)
    assert ours.stats["texts"] == len(texts) and ours.stats["tokens"] == sum(ours[0].text_lengths(texts))
    # The packed forward computes no padding; the HF forward pads each batch to its longest row.
    assert ours.stats["padded_tokens"] == ours.stats["tokens"]
    # The default is that fast path on this float32 BERT pipeline.
    np.testing.assert_array_equal(ours.encode(texts, batch_size=16), fast)
    ours.stats.update(texts=0, tokens=0, padded_tokens=0)
    named = ours.encode(texts, batch_size=16, batching="sentence-transformers")
    assert ours.stats["padded_tokens"] > ours.stats["tokens"]
    # By name: sentence-transformers' batches and the HF forward, so its vectors bit for bit.
    np.testing.assert_array_equal(named, ref)
    for precision in ("int8", "ubinary"):
        np.testing.assert_array_equal(
            ours.encode(texts, batch_size=16, precision=precision, batching="sentence-transformers"),
            st.encode(texts, batch_size=16, precision=precision),
        )


def test_task_reaches_every_module(tiny_bert_dir, sample_texts) -> None:
    model = EmbeddingModel(tiny_bert_dir(st=True), device="cpu")
    seen: list = []
    model[1].register_forward_pre_hook(lambda mod, args: seen.append(args[0].get("task", "missing")))
    model.encode(sample_texts, task="query")
    model.encode(sample_texts)
    assert set(seen) == {"query", None}
