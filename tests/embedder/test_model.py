"""EmbeddingModel vs sentence-transformers: MiniLM parity, tiny random BERTs, folder round trips, inputs, prompts."""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from sentence_transformers import SentenceTransformer

from embedder import EmbeddingModel, quantize_embeddings
from embedder.modules.pooling import Pooling
from embedder.modules.transformer import Transformer

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EDGE_TEXTS = [
    "",
    " ",
    "a",
    "Hello, world!",
    "Ünïcödé and emoji 🙂 and 日本語のテキスト",
]
BS = 8  # small batches keep padding (and run time) down on a 2-core machine


def corpus_texts(n: int) -> list[str]:
    """The first `n` texts of the repo's fixed real-text corpus."""
    return (
        pq.read_table(os.path.join(REPO, "sample", "corpus.parquet"), columns=["text"])
        .column("text")
        .to_pylist()[:n]
    )


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return corpus_texts(30) + EDGE_TEXTS


@pytest.fixture(scope="module")
def ours(minilm_path) -> EmbeddingModel:
    return EmbeddingModel(minilm_path, device="cpu")


@pytest.fixture(scope="module")
def st(minilm_path) -> SentenceTransformer:
    return SentenceTransformer(minilm_path, device="cpu")


# --- MiniLM parity ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def st_float(st, texts) -> np.ndarray:
    """sentence-transformers' plain float32 vectors, computed once (the machine is small)."""
    return st.encode(texts, batch_size=BS)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"prompt": "query: ", "batch_size": BS},
        {"truncate_dim": 64, "normalize_embeddings": True, "batch_size": BS},
        {"prompt": "Represent this: ", "truncate_dim": 200, "normalize_embeddings": True, "batch_size": 5},
    ],
)
def test_minilm_parity(ours, st, texts, parity, kwargs) -> None:
    a = ours.encode(texts, **kwargs)
    b = st.encode(texts, **kwargs)
    assert a.dtype == np.float32
    parity(a, b)


def test_minilm_st_batching_bit_identical_and_quantized_identical(ours, st_float, texts) -> None:
    from sentence_transformers.util import quantize_embeddings as st_quantize

    # Asked for by name, sentence-transformers' batches and the HF forward: its vectors bit for bit.
    floats = ours.encode(texts, batch_size=BS, batching="sentence-transformers")
    np.testing.assert_array_equal(floats, st_float)
    # st.encode(precision=p) is exactly st_quantize(its float vectors, p), and so is ours: check that
    # through encode for two precisions, and on the float vectors for all four (the machine is small).
    for precision in ("int8", "ubinary"):
        np.testing.assert_array_equal(
            ours.encode(texts, batch_size=BS, precision=precision, batching="sentence-transformers"),
            quantize_embeddings(floats, precision),
        )
    for precision in ("int8", "uint8", "binary", "ubinary"):
        a = quantize_embeddings(floats, precision)
        b = st_quantize(st_float, precision)
        assert a.dtype == b.dtype and a.shape == b.shape, precision
        np.testing.assert_array_equal(a, b, err_msg=precision)


def test_default_is_the_packed_token_path_within_parity(ours, st_float, texts, parity) -> None:
    ours.stats.update(texts=0, tokens=0, padded_tokens=0)
    default = ours.encode(texts, batch_size=BS)
    parity(default, st_float)
    # Token batches through the packed forward: no padding computed, the same vectors as asking by name.
    assert ours.stats["padded_tokens"] == ours.stats["tokens"] == sum(ours[0].text_lengths(texts))
    np.testing.assert_array_equal(default, ours.encode(texts, batch_size=BS, batching="tokens"))


def test_token_budget_batches_same_vectors_less_padding(ours, st_float, texts, parity) -> None:
    ours.stats.update(texts=0, tokens=0, padded_tokens=0)
    fixed = ours.encode(texts, batch_size=BS, batching="sentence-transformers")
    by_count = dict(ours.stats)
    ours.stats.update(texts=0, tokens=0, padded_tokens=0)
    budget = ours.encode(texts, max_batch_tokens=1024)
    by_budget = dict(ours.stats)
    parity(budget, fixed)
    parity(budget, st_float)
    assert by_budget["texts"] == by_count["texts"] == len(texts)
    assert by_budget["tokens"] == by_count["tokens"] == sum(ours[0].text_lengths(texts))
    assert by_budget["padded_tokens"] <= by_count["padded_tokens"]


def test_single_string_empty_string_and_truncation(ours, st, parity) -> None:
    one = ours.encode("Hello, world!")
    assert one.shape == (384,) and st.encode("Hello, world!").shape == (384,)
    parity(one, st.encode("Hello, world!"))
    parity(ours.encode(""), st.encode(""))
    long = "word " * 600
    parity(ours.encode(long), st.encode(long))
    # Everything past max_seq_length tokens is cut, so more words change nothing.
    np.testing.assert_array_equal(ours.encode(long), ours.encode(long + "extra words at the end"))


def test_output_forms(ours) -> None:
    t = ours.encode(["a", "bb"], convert_to_tensor=True)
    assert isinstance(t, torch.Tensor) and t.shape == (2, 384) and t.dtype == torch.float32
    lst = ours.encode(["a", "bb"], convert_to_numpy=False)
    assert isinstance(lst, list) and len(lst) == 2 and lst[0].shape == (384,)
    q = ours.encode(["a", "bb", "ccc"], precision="ubinary", convert_to_tensor=True)
    assert q.dtype == torch.uint8 and q.shape == (3, 48)
    empty = ours.encode([])
    assert empty.shape == (0, 384) and empty.dtype == np.float32
    assert ours.encode([], precision="binary").shape == (0, 48)
    assert ours.encode(np.array(["a", "b"])).shape == (2, 384)
    assert ours.encode(("a", "b")).shape == (2, 384)


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (None, "got NoneType"),
        (5, "got int"),
        (b"bytes", "got bytes"),
        (["ok", None], r"inputs\[1\] is NoneType"),
        (["ok", "fine", 3], r"inputs\[2\] is int"),
        (["ok", ["nested"]], r"inputs\[1\] is list"),
    ],
)
def test_bad_inputs(ours, bad, match) -> None:
    with pytest.raises(ValueError, match=match):
        ours.encode(bad)


def test_bad_arguments(ours) -> None:
    with pytest.raises(ValueError, match=r"'float16'.*'float32', 'int8'"):
        ours.encode(["a"], precision="float16")
    with pytest.raises(ValueError, match="batch_size"):
        ours.encode(["a"], batch_size=0)
    with pytest.raises(ValueError, match="max_batch_tokens"):
        ours.encode(["a"], max_batch_tokens=0)
    with pytest.raises(ValueError, match=r"prompt_name 'nope'.*\['document', 'query'\]"):
        ours.encode(["a"], prompt_name="nope")


def test_surface(ours, st, minilm_path) -> None:
    assert ours.get_embedding_dimension() == st.get_embedding_dimension() == 384
    assert ours.max_seq_length == st.max_seq_length == 256
    assert ours.device == torch.device("cpu")
    assert ours.model_path == os.path.abspath(minilm_path)
    assert ours.similarity_fn_name == "cosine"
    info = ours.describe()
    json.dumps(info)
    assert [m["type"].rsplit(".", 1)[-1] for m in info["modules"]] == ["Transformer", "Pooling", "Normalize"]
    assert info["embedding_dimension"] == 384 and info["dtype"] == "float32" and info["revision"] is None


def test_similarity_matches(ours, st, texts) -> None:
    a = ours.encode(texts[:5], batch_size=BS)
    torch.testing.assert_close(ours.similarity(a, a), st.similarity(a, a), rtol=1e-5, atol=1e-5)


# --- tiny random BERT folders ------------------------------------------------------------------------------


@pytest.mark.parametrize("pooling_mode", ["mean", "cls", "max", "lasttoken"])
@pytest.mark.parametrize("normalize", [False, True])
def test_tiny_bert_parity(tiny_bert_dir, sample_texts, parity, pooling_mode, normalize) -> None:
    path = tiny_bert_dir(pooling_mode=pooling_mode, normalize=normalize, max_seq_length=12)
    ours = EmbeddingModel(path, device="cpu")
    theirs = SentenceTransformer(path, device="cpu")
    assert ours.max_seq_length == theirs.max_seq_length == 12
    parity(ours.encode(sample_texts, batch_size=3), theirs.encode(sample_texts, batch_size=3))


def test_plain_transformers_folder_gets_mean_pooling(tiny_bert_dir, sample_texts, parity) -> None:
    path = tiny_bert_dir()
    assert not os.path.exists(os.path.join(path, "modules.json"))
    ours = EmbeddingModel(path, device="cpu")
    assert [type(m).__name__ for m in ours] == ["Transformer", "Pooling"]
    assert ours[1].pooling_mode == "mean"
    parity(ours.encode(sample_texts), SentenceTransformer(path, device="cpu").encode(sample_texts))


def test_we_save_sentence_transformers_loads(tiny_bert_dir, sample_texts, parity, tmp_path) -> None:
    ours = EmbeddingModel(
        tiny_bert_dir(pooling_mode="cls", normalize=True),
        device="cpu",
        prompts={"query": "query: "},
        similarity_fn_name="dot",
        truncate_dim=24,
    )
    out = str(tmp_path / "saved")
    ours.save_pretrained(out)
    with open(os.path.join(out, "modules.json")) as f:
        entries = json.load(f)
    assert [(e["path"], e["type"]) for e in entries] == [
        ("", "sentence_transformers.models.Transformer"),
        ("1_Pooling", "sentence_transformers.models.Pooling"),
        ("2_Normalize", "sentence_transformers.models.Normalize"),
    ]
    theirs = SentenceTransformer(out, device="cpu")
    assert (
        theirs.similarity_fn_name == "dot"
        and theirs.prompts["query"] == "query: "
        and theirs.truncate_dim == 24
    )
    parity(ours.encode(sample_texts), theirs.encode(sample_texts))
    parity(ours.encode_query(sample_texts), theirs.encode_query(sample_texts))
    again = EmbeddingModel(out, device="cpu")
    np.testing.assert_array_equal(again.encode(sample_texts), ours.encode(sample_texts))
    assert again.describe()["modules"] == ours.describe()["modules"]


def test_sentence_transformers_saves_we_load(tiny_bert_dir, sample_texts, parity, tmp_path) -> None:
    theirs = SentenceTransformer(
        tiny_bert_dir(pooling_mode="mean", normalize=True),
        device="cpu",
        prompts={"query": "query: ", "document": "passage: "},
        default_prompt_name="document",
        similarity_fn_name="euclidean",
    )
    out = str(tmp_path / "st_saved")
    theirs.save_pretrained(out)
    ours = EmbeddingModel(out, device="cpu")
    assert ours.similarity_fn_name == "euclidean" and ours.default_prompt_name == "document"
    assert ours.max_seq_length == theirs.max_seq_length
    parity(ours.encode(sample_texts), theirs.encode(sample_texts))
    parity(ours.encode_query(sample_texts), theirs.encode_query(sample_texts))


@pytest.mark.slow
def test_minilm_round_trips(ours, st, texts, parity, tmp_path) -> None:
    ours.save_pretrained(str(tmp_path / "ours"))
    parity(SentenceTransformer(str(tmp_path / "ours"), device="cpu").encode(texts), ours.encode(texts))
    st.save_pretrained(str(tmp_path / "st"))
    parity(EmbeddingModel(str(tmp_path / "st"), device="cpu").encode(texts), st.encode(texts))


def test_pickle_refused_without_allow_pickle(tiny_bert_dir, sample_texts, parity) -> None:
    pickled = tiny_bert_dir("pickled", st=True, seed=5, safetensors=False)
    with pytest.raises(ValueError, match=r"pytorch_model\.bin.*allow_pickle=True"):
        EmbeddingModel(pickled, device="cpu")
    ours = EmbeddingModel(pickled, device="cpu", allow_pickle=True)
    parity(
        ours.encode(sample_texts),
        EmbeddingModel(tiny_bert_dir("safe", st=True, seed=5), device="cpu").encode(sample_texts),
    )


# --- prompts ------------------------------------------------------------------------------------------------

PROMPTS = {"query": "query: ", "document": "passage: ", "classify": "classify this: "}


@pytest.mark.parametrize("include_prompt", [True, False])
def test_prompts_match_sentence_transformers(tiny_bert_dir, sample_texts, parity, include_prompt) -> None:
    path = tiny_bert_dir(prompts=PROMPTS, default_prompt_name="classify")
    cfg_file = os.path.join(path, "1_Pooling", "config.json")
    with open(cfg_file) as f:
        cfg = json.load(f)
    cfg["include_prompt"] = include_prompt
    with open(cfg_file, "w") as f:
        json.dump(cfg, f)
    ours = EmbeddingModel(path, device="cpu")
    theirs = SentenceTransformer(path, device="cpu")
    assert ours.prompts == theirs.prompts and ours.default_prompt_name == "classify"
    texts = [t for t in sample_texts if t]
    for kwargs in (
        {},
        {"prompt_name": "document"},
        {"prompt": "custom: "},
        {"prompt": "custom: ", "prompt_name": "query"},
        {"prompt": ""},
    ):
        parity(ours.encode(texts, **kwargs), theirs.encode(texts, **kwargs))
    parity(ours.encode_query(texts), theirs.encode_query(texts))
    parity(ours.encode_document(texts), theirs.encode_document(texts))
    # The default prompt applies when nothing is given; an explicit prompt wins over prompt_name.
    np.testing.assert_array_equal(ours.encode(texts), ours.encode(texts, prompt_name="classify"))
    np.testing.assert_array_equal(
        ours.encode(texts, prompt="x: ", prompt_name="query"), ours.encode(texts, prompt="x: ")
    )
    assert not np.allclose(ours.encode(texts), ours.encode(texts, prompt=""))


def test_encode_query_without_query_prompt_skips_default(tiny_bert_dir, sample_texts, parity) -> None:
    path = tiny_bert_dir(prompts={"classify": "classify: "}, default_prompt_name="classify")
    ours = EmbeddingModel(path, device="cpu")
    theirs = SentenceTransformer(path, device="cpu")
    parity(ours.encode_query(sample_texts), theirs.encode_query(sample_texts))
    np.testing.assert_array_equal(ours.encode_query(sample_texts), ours.encode(sample_texts, prompt=""))


def test_constructor_prompts_override_saved(tiny_bert_dir) -> None:
    path = tiny_bert_dir(prompts=PROMPTS)
    ours = EmbeddingModel(path, device="cpu", prompts={"query": "q: "}, default_prompt_name="document")
    assert ours.prompts["query"] == "q: " and ours.prompts["document"] == "passage: "
    assert ours.resolve_prompt(None, None) == "passage: "
    with pytest.raises(ValueError, match="default_prompt_name 'missing'"):
        EmbeddingModel(path, device="cpu", default_prompt_name="missing")


# --- construction, options ----------------------------------------------------------------------------------


def test_from_modules_and_max_seq_length(tiny_bert_dir, sample_texts, parity) -> None:
    path = tiny_bert_dir(st=True)
    ours = EmbeddingModel(modules=[Transformer.load(path), Pooling(32, "mean")], device="cpu")
    assert ours.model_path is None and ours.get_embedding_dimension() == 32
    theirs = SentenceTransformer(path, device="cpu")
    ours.max_seq_length = theirs.max_seq_length = 5
    parity(ours.encode(sample_texts), theirs.encode(sample_texts))
    with pytest.raises(ValueError, match="model_name_or_path or modules"):
        EmbeddingModel()
    with pytest.raises(ValueError, match="first module must tokenise.*got Pooling"):
        EmbeddingModel(modules=[Pooling(32, "mean")], device="cpu")


def test_truncate_dim_in_constructor(tiny_bert_dir, sample_texts, parity) -> None:
    path = tiny_bert_dir(st=True)
    ours = EmbeddingModel(path, device="cpu", truncate_dim=8)
    assert ours.get_embedding_dimension() == 8
    parity(
        ours.encode(sample_texts),
        SentenceTransformer(path, device="cpu", truncate_dim=8).encode(sample_texts),
    )
    assert ours.encode(sample_texts, truncate_dim=4).shape == (len(sample_texts), 4)


def test_tokenize_matches_sentence_transformers(tiny_bert_dir, sample_texts) -> None:
    path = tiny_bert_dir(max_seq_length=12)
    ours, theirs = EmbeddingModel(path, device="cpu"), SentenceTransformer(path, device="cpu")
    for prompt in (None, "query: "):
        a, b = ours.tokenize(sample_texts, prompt=prompt), theirs.tokenize(sample_texts, prompt=prompt)
        assert a.keys() == b.keys() and {"input_ids", "attention_mask", "token_type_ids"} <= a.keys()
        for key, value in a.items():
            if isinstance(value, torch.Tensor):
                assert value.dtype == b[key].dtype and torch.equal(value, b[key]), key
            else:
                assert value == b[key], key
    assert ours.tokenize([]) == theirs.tokenize([]) == {}
    # One string is one text (sentence-transformers' tokenize would take each character for a text).
    assert ours.tokenize("hello world")["input_ids"].shape == (1, 4)


def test_encode_on_a_given_device(tiny_bert_dir, sample_texts) -> None:
    ours = EmbeddingModel(tiny_bert_dir(st=True), device="cpu")
    expected = ours.encode(sample_texts)
    for device in ("cpu", torch.device("cpu"), "cpu:0"):
        np.testing.assert_array_equal(ours.encode(sample_texts, device=device), expected)
        assert ours.device == torch.device("cpu")
    tokens = ours.encode(sample_texts, device="cpu", output_value="token_embeddings", convert_to_tensor=True)
    assert all(t.device.type == "cpu" for t in tokens)
    with pytest.raises(ValueError, match=r"one device, got \['cpu', 'cpu'\]"):
        ours.encode(sample_texts, device=["cpu", "cpu"])


def test_bfloat16_model_kwargs(tiny_bert_dir, sample_texts) -> None:
    path = tiny_bert_dir(st=True)
    half = EmbeddingModel(path, device="cpu", model_kwargs={"torch_dtype": "bfloat16"})
    assert half.describe()["dtype"] == "bfloat16"
    a = half.encode(sample_texts, normalize_embeddings=True)
    b = EmbeddingModel(path, device="cpu").encode(sample_texts, normalize_embeddings=True)
    assert a.dtype == np.float32
    assert (a * b).sum(axis=1).min() > 0.99


def test_bad_folders(tiny_bert_dir, tmp_path) -> None:
    path = tiny_bert_dir(st=True)
    with open(os.path.join(path, "modules.json")) as f:
        entries = json.load(f)
    entries[1]["path"] = "../elsewhere"
    with open(os.path.join(path, "modules.json"), "w") as f:
        json.dump(entries, f)
    with pytest.raises(ValueError, match=r"modules\.json\[1\]: path '\.\./elsewhere'"):
        EmbeddingModel(path, device="cpu")
    entries[1] = {"idx": 1, "name": "1", "path": "1_X", "type": "my_package.CustomThing"}
    with open(os.path.join(path, "modules.json"), "w") as f:
        json.dump(entries, f)
    with pytest.raises(ValueError, match="unsupported module type 'my_package.CustomThing'"):
        EmbeddingModel(path, device="cpu")
    with pytest.raises(FileNotFoundError, match="no such folder"):
        EmbeddingModel(str(tmp_path / "does" / "not" / "exist"), device="cpu")


# --- batching (pure functions behind encode) -------------------------------------------------------------------


def test_batching_functions() -> None:
    from embedder import batching

    lengths = [3, 10, 1, 7, 7, 2, 30]
    order = batching.length_order(lengths)
    assert order == list(np.argsort([-n for n in lengths]))  # sentence-transformers' order
    assert [lengths[i] for i in order] == sorted(lengths, reverse=True)
    assert batching.batches_by_count(order, 3) == [order[0:3], order[3:6], order[6:]]
    budget = batching.batches_by_tokens(order, lengths, 20)
    assert sorted(i for b in budget for i in b) == list(range(len(lengths)))
    # The 30-token text exceeds the budget alone and still gets its own batch; the rest fit rows x longest.
    assert budget[0] == [6]
    assert all(len(b) * max(lengths[i] for i in b) <= 20 for b in budget[1:])
    assert batching.padded_tokens(budget, lengths) <= batching.padded_tokens(
        batching.batches_by_count(order, 3), lengths
    )
    assert all(len(b) <= 2 for b in batching.batches_by_tokens(order, lengths, 1000, max_batch_size=2))
    with pytest.raises(ValueError, match="max_batch_tokens"):
        batching.batches_by_tokens(order, lengths, 0)
    with pytest.raises(ValueError, match="batch_size"):
        batching.batches_by_count(order, 0)
