"""StaticEmbedding against sentence-transformers' StaticEmbedding and model2vec: forward, save/load both ways."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from parity_rows import assert_parity
from safetensors.torch import load_file
from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
from tokenizers.models import WordPiece

from embedder import EmbeddingModel
from embedder.modules import module_class
from embedder.modules.static_embedding import StaticEmbedding

VOCAB = list(
    dict.fromkeys(
        ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
        + "the a of and to in is cat dog bird sat on mat road city big small red fast run runs query document".split()
        + list("abcdefghijklmnopqrstuvwxyz.,!?")
        + ["##" + c for c in "abcdefghijklmnopqrstuvwxyz"]
        + ["##s", "##ing", "##ed"]
    )
)
# Every token of these is in VOCAB (no [UNK]), so model2vec (which drops [UNK]) agrees with sentence-transformers.
KNOWN_TEXTS = [
    "the cat sat on the mat",
    "a big red dog runs fast in the city",
    "",
    "birds",
    "the small bird and the cat sat on the road, the dog is running to the city!",
    "query document",
]
# Plus texts with out-of-vocabulary characters ("é", "日") that tokenise to [UNK].
TEXTS = KNOWN_TEXTS + ["café on the road", "日本 city"]


def tiny_tokenizer() -> Tokenizer:
    """A BERT-style WordPiece tokenizer over VOCAB that adds [CLS]/[SEP] (which StaticEmbedding must not use)."""
    vocab = {tok: i for i, tok in enumerate(VOCAB)}
    tok = Tokenizer(WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])]
    )
    return tok


def random_weights(dim: int = 16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(len(VOCAB), dim, generator=g)


def ours_encode(module: StaticEmbedding, texts: list[str], prompt: str | None = None) -> np.ndarray:
    with torch.inference_mode():
        return module(module.preprocess(texts, prompt=prompt))["sentence_embedding"].numpy()


def st_encode(module, texts: list[str], prompt: str | None = None) -> np.ndarray:
    with torch.inference_mode():
        return module(module.preprocess(texts, prompt=prompt))["sentence_embedding"].numpy()


def test_forward_matches_sentence_transformers() -> None:
    from sentence_transformers.sentence_transformer.modules import StaticEmbedding as STStatic

    weights = random_weights()
    ours = StaticEmbedding(tiny_tokenizer(), embedding_weights=weights)
    ref = STStatic(tiny_tokenizer(), embedding_weights=weights)
    ours_features = ours.preprocess(TEXTS)
    ref_features = ref.preprocess(TEXTS)
    assert torch.equal(ours_features["input_ids"], ref_features["input_ids"])
    assert torch.equal(ours_features["offsets"], ref_features["offsets"])
    assert_parity(ours_encode(ours, TEXTS), st_encode(ref, TEXTS))
    assert_parity(ours_encode(ours, TEXTS, prompt="query "), st_encode(ref, TEXTS, prompt="query "))
    # The empty text is an empty bag: a zero vector, not NaN.
    assert not ours_encode(ours, [""]).any()
    assert ours.get_embedding_dimension() == ref.get_embedding_dimension() == 16


def test_st_saves_we_load(tmp_path) -> None:
    from sentence_transformers.sentence_transformer.modules import StaticEmbedding as STStatic

    ref = STStatic(tiny_tokenizer(), embedding_weights=random_weights(seed=1))
    ref.save(str(tmp_path))
    ours = module_class("sentence_transformers.models.StaticEmbedding").load(str(tmp_path))
    assert isinstance(ours, StaticEmbedding)
    assert_parity(ours_encode(ours, TEXTS), st_encode(ref, TEXTS))


def test_we_save_st_loads(tmp_path) -> None:
    from sentence_transformers.sentence_transformer.modules import StaticEmbedding as STStatic

    ours = StaticEmbedding(tiny_tokenizer(), embedding_weights=random_weights(seed=2))
    ours.save(str(tmp_path))
    # Exactly the files sentence-transformers writes, with its weight key.
    assert sorted(os.listdir(tmp_path)) == ["model.safetensors", "tokenizer.json"]
    assert list(load_file(str(tmp_path / "model.safetensors"))) == ["embedding.weight"]
    ref = STStatic.load(str(tmp_path))
    assert_parity(st_encode(ref, TEXTS), ours_encode(ours, TEXTS))
    again = StaticEmbedding.load(str(tmp_path))
    assert np.array_equal(ours_encode(again, TEXTS), ours_encode(ours, TEXTS))


def test_random_init_from_embedding_dim() -> None:
    module = StaticEmbedding(tiny_tokenizer(), embedding_dim=8)
    assert module.embedding.weight.shape == (len(VOCAB), 8)
    assert ours_encode(module, TEXTS).shape == (len(TEXTS), 8)


def test_model2vec_folder(tmp_path) -> None:
    from model2vec import StaticModel
    from sentence_transformers.sentence_transformer.modules import StaticEmbedding as STStatic

    vectors = random_weights(seed=3).numpy()
    m2v = StaticModel(vectors, tiny_tokenizer(), normalize=False)
    m2v.save_pretrained(str(tmp_path))
    assert "embeddings" in load_file(str(tmp_path / "model.safetensors"))
    ours = StaticEmbedding.load(str(tmp_path))
    # model2vec drops [UNK] tokens; sentence-transformers (and we) keep them: compare on in-vocabulary texts.
    assert_parity(ours_encode(ours, KNOWN_TEXTS), m2v.encode(KNOWN_TEXTS, use_multiprocessing=False))
    ref = STStatic.from_model2vec(str(tmp_path))
    assert_parity(ours_encode(ours, TEXTS), st_encode(ref, TEXTS))
    # model2vec saves its max_length (512) as tokenizer truncation, which sentence-transformers honours.
    assert ours.max_seq_length == 512


def test_model2vec_vocabulary_quantised_folder(tmp_path) -> None:
    from model2vec import StaticModel
    from sentence_transformers.sentence_transformer.modules import StaticEmbedding as STStatic

    g = np.random.default_rng(4)
    centroids = g.standard_normal((10, 16)).astype(np.float32)
    mapping = g.integers(0, 10, size=len(VOCAB)).astype(np.int64)
    token_weights = g.uniform(0.5, 2.0, size=len(VOCAB)).astype(np.float32)
    m2v = StaticModel(centroids, tiny_tokenizer(), weights=token_weights, token_mapping=mapping)
    m2v.save_pretrained(str(tmp_path))
    ours = StaticEmbedding.load(str(tmp_path))
    assert ours.embedding.weight.shape == (len(VOCAB), 16)
    assert_parity(ours_encode(ours, KNOWN_TEXTS), m2v.encode(KNOWN_TEXTS, use_multiprocessing=False))
    assert_parity(ours_encode(ours, TEXTS), st_encode(STStatic.load(str(tmp_path)), TEXTS))


def test_truncation_follows_tokenizer_like_sentence_transformers() -> None:
    from sentence_transformers.sentence_transformer.modules import StaticEmbedding as STStatic

    weights = random_weights(seed=5)
    ours = StaticEmbedding(tiny_tokenizer(), embedding_weights=weights)
    assert ours.max_seq_length is None  # no truncation unless the tokenizer has one (ST reports inf)
    ours.max_seq_length = 3
    truncating = tiny_tokenizer()
    truncating.enable_truncation(3)
    ref = STStatic(truncating, embedding_weights=weights)
    assert ours.preprocess(["the cat sat on the mat"])["input_ids"].numel() == 3
    assert_parity(ours_encode(ours, TEXTS), st_encode(ref, TEXTS))
    ours.max_seq_length = None
    assert ours.preprocess(["the cat sat on the mat"])["input_ids"].numel() == 6


def test_load_errors_name_the_folder(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        StaticEmbedding.load(str(tmp_path))
    tiny_tokenizer().save(str(tmp_path / "tokenizer.json"))
    from safetensors.torch import save_file

    save_file({"something": torch.zeros(len(VOCAB), 4)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match=r"embedding\.weight.*'something'"):
        StaticEmbedding.load(str(tmp_path))
    save_file({"embedding.weight": torch.zeros(5, 4)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match="5 embedding rows"):
        StaticEmbedding.load(str(tmp_path))
    with pytest.raises(ValueError, match="fast tokenizer"):
        StaticEmbedding("not a tokenizer", embedding_dim=4)  # type: ignore[arg-type]


def test_model_folders_both_ways(tmp_path) -> None:
    """Whole model folders: sentence-transformers saves -> we load, we save -> sentence-transformers loads."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import StaticEmbedding as STStatic

    from embedder.model import EmbeddingModel

    prompts = {"query": "query ", "document": ""}
    ref = SentenceTransformer(
        modules=[STStatic(tiny_tokenizer(), embedding_weights=random_weights(seed=6))],
        prompts=prompts,
        device="cpu",
    )
    ref.save(str(tmp_path / "st"))
    ours = EmbeddingModel(str(tmp_path / "st"), device="cpu")
    assert isinstance(ours[0], StaticEmbedding) and ours.get_embedding_dimension() == 16
    assert_parity(ours.encode(TEXTS), ref.encode(TEXTS))
    assert_parity(ours.encode_query(TEXTS), ref.encode_query(TEXTS))
    assert ours.stats["tokens"] > 0

    ours.save_pretrained(str(tmp_path / "ours"))
    # Saved in the root like sentence-transformers does (an InputModule at index 0).
    assert {"model.safetensors", "tokenizer.json", "modules.json"} <= set(os.listdir(tmp_path / "ours"))
    back = SentenceTransformer(str(tmp_path / "ours"), device="cpu")
    assert_parity(back.encode_query(TEXTS), ours.encode_query(TEXTS))
    assert_parity(back.encode(TEXTS, batch_size=3), ours.encode(TEXTS, batch_size=3))


def test_model2vec_folder_as_model(tmp_path) -> None:
    """A model2vec folder with normalize=True (modules.json path "." + Normalize) loads as a whole model."""
    from model2vec import StaticModel
    from sentence_transformers import SentenceTransformer

    from embedder.model import EmbeddingModel

    m2v = StaticModel(random_weights(seed=7).numpy(), tiny_tokenizer(), normalize=True)
    m2v.save_pretrained(str(tmp_path))
    ours = EmbeddingModel(str(tmp_path), device="cpu")
    assert_parity(ours.encode(KNOWN_TEXTS), m2v.encode(KNOWN_TEXTS, use_multiprocessing=False))
    assert_parity(ours.encode(TEXTS), SentenceTransformer(str(tmp_path), device="cpu").encode(TEXTS))


def test_token_batching_keeps_input_order_and_tokenises_once(monkeypatch) -> None:
    """Flat ids hold no padding: "tokens" (the default here) cuts texts in input order, each tokenised once."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import StaticEmbedding as STStatic

    from embedder import encode_loop
    from embedder.model import EmbeddingModel

    weights = random_weights(seed=8)
    ours = EmbeddingModel(
        modules=[StaticEmbedding(tiny_tokenizer(), embedding_weights=weights)], device="cpu"
    )
    assert encode_loop.resolve_batching("auto", ours, "sentence_embedding") == "tokens"
    texts = TEXTS * 3
    monkeypatch.setattr(encode_loop, "UNPADDED_BATCH_TEXTS", 5)
    for budget in (None, 8):
        _, _, order, batches = encode_loop.plan(
            ours[0], texts, prompt=None, batch_size=2, max_batch_tokens=budget, batching_mode="tokens",
            device=torch.device("cpu"),
        )  # fmt: skip
        assert order == list(range(len(texts)))
        assert batches == [order[i : i + 5] for i in range(0, len(texts), 5)]

    tokenised: list[str] = []
    token_ids = ours[0]._token_ids

    def counted(batch: list[str]) -> list[list[int]]:
        tokenised.extend(batch)
        return token_ids(batch)

    monkeypatch.setattr(ours[0], "_token_ids", counted)
    default = ours.encode(texts)
    assert tokenised == texts
    # The bag of each text is its own: every batching gives the same vectors, bit for bit.
    np.testing.assert_array_equal(default, ours.encode(texts, batching="tokens"))
    np.testing.assert_array_equal(default, ours.encode(texts, batching="sentence-transformers", batch_size=2))
    theirs = SentenceTransformer(
        modules=[STStatic(tiny_tokenizer(), embedding_weights=weights)], device="cpu"
    )
    assert_parity(default, theirs.encode(texts))


def test_a_static_model_loads_and_encodes_without_importing_transformers(tmp_path) -> None:
    # a job's replica imports what its model needs: transformers costs ~0.5 s of each replica's start
    folder = str(tmp_path / "static")
    EmbeddingModel(
        modules=[StaticEmbedding(tiny_tokenizer(), embedding_weights=random_weights())]
    ).save_pretrained(folder)
    code = (
        "import sys; from embedder import EmbeddingModel; "
        f"EmbeddingModel({folder!r}, device='cpu').encode(['the cat sat']); "
        "print(sorted(m for m in ('transformers', 'sentence_transformers') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stderr
