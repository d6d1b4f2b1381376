"""Router (and the old Asym folders) against sentence-transformers: routing, encode_query/document, folders both ways."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from parity_rows import assert_parity
from safetensors.torch import save_file
from tokenizers import Tokenizer, normalizers, pre_tokenizers
from tokenizers.models import WordLevel

from embedder.model import EmbeddingModel
from embedder.modules.dense import Dense
from embedder.modules.pooling import Pooling
from embedder.modules.router import Router
from embedder.modules.static_embedding import StaticEmbedding
from embedder.modules.transformer import Transformer

WORDS = "[UNK] the cat dog sat on mat a big red bird city road hello world query document".split()


def word_tokenizer() -> Tokenizer:
    tok = Tokenizer(WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return tok


def static_weights(seed: int, dim: int = 16) -> torch.Tensor:
    return torch.randn(len(WORDS), dim, generator=torch.Generator().manual_seed(seed))


def st_bert_router_model(tiny_bert_dir):
    """sentence-transformers model: Router(query: BERT + mean pooling, document: another BERT + CLS pooling)."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling as STPooling
    from sentence_transformers.sentence_transformer.modules import Router as STRouter
    from sentence_transformers.sentence_transformer.modules import Transformer as STTransformer

    query = [STTransformer(tiny_bert_dir("q", seed=1), max_seq_length=64), STPooling(32, "mean")]
    document = [STTransformer(tiny_bert_dir("d", seed=2), max_seq_length=48), STPooling(32, "cls")]
    return SentenceTransformer(modules=[STRouter.for_query_document(query, document)], device="cpu")


def check_query_document(ours: EmbeddingModel, ref, texts: list[str]) -> None:
    """encode_query / encode_document / plain encode (default route) agree with sentence-transformers."""
    q, d = ours.encode_query(texts), ours.encode_document(texts)
    assert_parity(q, ref.encode_query(texts))
    assert_parity(d, ref.encode_document(texts))
    assert_parity(ours.encode(texts), ref.encode(texts))
    assert np.abs(q - d).max() > 1e-2  # the routes really differ


def test_st_saves_we_load(tiny_bert_dir, sample_texts, tmp_path) -> None:
    ref = st_bert_router_model(tiny_bert_dir)
    ref.save(str(tmp_path / "st"))
    ours = EmbeddingModel(str(tmp_path / "st"), device="cpu")
    router = ours[0]
    assert isinstance(router, Router)
    assert router.routes == ["query", "document"] and router.default_route == "document"
    assert ours.max_seq_length == ref.max_seq_length == 64
    assert ours.get_embedding_dimension() == 32
    check_query_document(ours, ref, sample_texts)


def test_we_save_st_loads(tiny_bert_dir, sample_texts, tmp_path) -> None:
    from sentence_transformers import SentenceTransformer

    query = [Transformer.load(tiny_bert_dir("q", seed=3)), Pooling(32, "mean")]
    document = [Transformer.load(tiny_bert_dir("d", seed=4)), Pooling(32, "max")]
    ours = EmbeddingModel(modules=[Router.for_query_document(query, document)], device="cpu")
    out = str(tmp_path / "ours")
    ours.save_pretrained(out)
    with open(os.path.join(out, "router_config.json"), encoding="utf-8") as f:
        config = json.load(f)
    assert config["structure"] == {
        "query": ["query_0_Transformer", "query_1_Pooling"],
        "document": ["document_0_Transformer", "document_1_Pooling"],
    }
    assert config["types"]["query_0_Transformer"] == "sentence_transformers.models.Transformer"
    assert config["parameters"] == {
        "default_route": "document",
        "allow_empty_key": True,
        "route_mappings": {},
    }
    ref = SentenceTransformer(out, device="cpu")
    check_query_document(ours, ref, sample_texts)
    again = EmbeddingModel(out, device="cpu")
    assert np.array_equal(again.encode_query(sample_texts), ours.encode_query(sample_texts))


def test_static_routes_mappings_and_shared_module(tmp_path) -> None:
    """StaticEmbedding routes, a task alias in route_mappings and one Dense shared by both routes, both ways."""
    from sentence_transformers import SentenceTransformer

    texts = ["the cat sat on the mat", "hello world", "", "a big red bird", "unknown words here"]
    shared = Dense(16, 8)
    router = Router(
        {
            "query": [StaticEmbedding(word_tokenizer(), static_weights(1)), shared],
            "document": [StaticEmbedding(word_tokenizer(), static_weights(2)), shared],
        },
        default_route="document",
        route_mappings={"search": "query", ("passage", None): "document"},
    )
    ours = EmbeddingModel(modules=[router], device="cpu")
    out = str(tmp_path / "ours")
    ours.save_pretrained(out)
    # The shared Dense is written once and referenced by both routes.
    assert sorted(d for d in os.listdir(out) if os.path.isdir(os.path.join(out, d))) == [
        "document_0_StaticEmbedding",
        "query_0_StaticEmbedding",
        "query_1_Dense",
    ]
    ref = SentenceTransformer(out, device="cpu")
    st_router = ref[0]
    assert st_router.route_mappings == {("search", None): "query", ("passage", None): "document"}
    assert st_router.sub_modules["query"][1] is st_router.sub_modules["document"][1]
    check_query_document(ours, ref, texts)
    for task in ("search", "passage"):
        assert_parity(ours.encode(texts, task=task), ref.encode(texts, task=task))
    # And back: sentence-transformers' save of the same model loads into ours.
    ref.save(str(tmp_path / "st"))
    again = EmbeddingModel(str(tmp_path / "st"), device="cpu")
    assert again[0].route_mappings == router.route_mappings
    assert_parity(again.encode(texts, task="search"), ref.encode(texts, task="search"))
    assert again.stats["tokens"] > 0


def test_unknown_task_is_a_clear_error(tmp_path) -> None:
    router = Router.for_query_document(
        [StaticEmbedding(word_tokenizer(), static_weights(1))],
        [StaticEmbedding(word_tokenizer(), static_weights(2))],
    )
    model = EmbeddingModel(modules=[router], device="cpu")
    with pytest.raises(ValueError, match=r"no route for task 'qa'; valid tasks: \['query', 'document'\]"):
        model.encode(["hello"], task="qa")
    strict = Router({"a": [StaticEmbedding(word_tokenizer(), static_weights(1))]}, allow_empty_key=False)
    with pytest.raises(ValueError, match="needs a task"):
        strict.preprocess(["hello"])
    with pytest.raises(ValueError, match=r"default_route 'x' is not a route; routes: \['a'\]"):
        Router({"a": [StaticEmbedding(word_tokenizer(), static_weights(1))]}, default_route="x")


def _write_json(file: str, obj) -> None:
    os.makedirs(os.path.dirname(file), exist_ok=True)
    with open(file, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2)


def test_asym_folder_as_first_module(tmp_path) -> None:
    """An old `Asym` folder (config.json, `<id>_<Class>` subfolders, module-path types) with static routes."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import StaticEmbedding as STStatic

    root = str(tmp_path / "asym")
    ids = {"query": "140245862318672_StaticEmbedding", "doc": "140245862319440_StaticEmbedding"}
    for seed, module_id in enumerate(ids.values()):
        folder = os.path.join(root, "0_Asym", module_id)
        os.makedirs(folder)
        STStatic(word_tokenizer(), embedding_weights=static_weights(10 + seed)).save(folder)
    _write_json(
        os.path.join(root, "0_Asym", "config.json"),
        {
            "types": {mid: "sentence_transformers.models.StaticEmbedding" for mid in ids.values()},
            "structure": {route: [mid] for route, mid in ids.items()},
            "parameters": {"allow_empty_key": True},
        },
    )
    _write_json(
        os.path.join(root, "modules.json"),
        [{"idx": 0, "name": "0", "path": "0_Asym", "type": "sentence_transformers.models.Asym"}],
    )
    texts = ["the cat sat on the mat", "hello world", "a big red bird"]
    ours = EmbeddingModel(root, device="cpu")
    ref = SentenceTransformer(root, device="cpu")
    assert isinstance(ours[0], Router) and ours[0].default_route == "query"
    for task in ("query", "doc", None):
        assert_parity(ours.encode(texts, task=task), ref.encode(texts, task=task))
    assert np.abs(ours.encode(texts, task="query") - ours.encode(texts, task="doc")).max() > 1e-2
    with pytest.raises(ValueError, match="no route for task 'document'"):
        ours.encode_document(texts)


def test_asym_after_pooling_with_dense_routes(tiny_bert_dir, sample_texts) -> None:
    """The documented Asym layout: Transformer -> Pooling -> Asym({query: [Dense], doc: [Dense]})."""
    from sentence_transformers import SentenceTransformer

    root = tiny_bert_dir("bert", seed=5, pooling_mode="mean")
    g = torch.Generator().manual_seed(6)
    ids = {"query": "139912812345678_Dense", "doc": "139912812349999_Dense"}
    for module_id in ids.values():
        folder = os.path.join(root, "2_Asym", module_id)
        _write_json(
            os.path.join(folder, "config.json"),
            {
                "in_features": 32,
                "out_features": 16,
                "bias": True,
                "activation_function": "torch.nn.modules.activation.Tanh",
            },
        )
        weights = {
            "linear.weight": torch.randn(16, 32, generator=g),
            "linear.bias": torch.randn(16, generator=g),
        }
        save_file(weights, os.path.join(folder, "model.safetensors"))
    _write_json(
        os.path.join(root, "2_Asym", "config.json"),
        {
            "types": {mid: "sentence_transformers.models.Dense" for mid in ids.values()},
            "structure": {route: [mid] for route, mid in ids.items()},
            "parameters": {"allow_empty_key": True},
        },
    )
    with open(os.path.join(root, "modules.json"), encoding="utf-8") as f:
        modules = json.load(f)
    modules.append({"idx": 2, "name": "2", "path": "2_Asym", "type": "sentence_transformers.models.Asym"})
    _write_json(os.path.join(root, "modules.json"), modules)

    ours = EmbeddingModel(root, device="cpu")
    ref = SentenceTransformer(root, device="cpu")
    assert isinstance(ours[2], Router) and ours.get_embedding_dimension() == 16
    for task in ("query", "doc", None):
        assert_parity(ours.encode(sample_texts, task=task), ref.encode(sample_texts, task=task))
    assert_parity(ours.encode_query(sample_texts), ref.encode_query(sample_texts))
    assert (
        np.abs(ours.encode(sample_texts, task="query") - ours.encode(sample_texts, task="doc")).max() > 1e-2
    )


def test_router_max_seq_length(tiny_bert_dir) -> None:
    q = Transformer.load(tiny_bert_dir("q", seed=1))
    d = Transformer.load(tiny_bert_dir("d", seed=2))
    q.max_seq_length, d.max_seq_length = 64, 32
    router = Router.for_query_document([q, Pooling(32)], [d, Pooling(32)])
    assert router.max_seq_length == 64
    router.max_seq_length = 16
    assert q.max_seq_length == d.max_seq_length == 16
    features = router.preprocess(["the " * 40], task="document")
    assert features["input_ids"].shape[1] == 16 and features["route"] == "document"


def test_router_folder_cannot_escape_or_import(tmp_path) -> None:
    def write(types: dict[str, str]) -> str:
        folder = str(tmp_path / f"r{len(os.listdir(tmp_path))}")
        _write_json(
            os.path.join(folder, "router_config.json"),
            {"types": types, "structure": {"a": list(types)}, "parameters": {}},
        )
        return folder

    with pytest.raises(ValueError, match="'../outside'.*plain relative folder"):
        Router.load(write({"../outside": "sentence_transformers.models.Pooling"}))
    with pytest.raises(ValueError, match="unsupported module type 'my_package.Evil'"):
        Router.load(write({"a_0_Evil": "my_package.Evil"}))
    with pytest.raises(ValueError, match="no Router config"):
        Router.load(str(tmp_path))
