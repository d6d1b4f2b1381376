"""WordEmbeddings, WordWeights, BoW, CNN, LSTM, WeightedLayerPooling (+ the whitespace tokenizer) vs sentence-transformers.

Each pipeline is built with sentence-transformers' classes and saved by it, loaded by EmbeddingModel and compared
vector by vector; then saved by us and loaded back by sentence-transformers and compared again. A second set builds
the pipeline with our classes first.
"""

from __future__ import annotations

import json
import os

import pytest
import torch
from parity_rows import assert_parity
from safetensors.torch import load_file
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer import modules as stm
from sentence_transformers.sentence_transformer.modules.tokenizer import (
    WhitespaceTokenizer as STWhitespaceTokenizer,
)
from torch import nn

from embedder import EmbeddingModel
from embedder.modules.bow import BoW
from embedder.modules.cnn import CNN
from embedder.modules.dense import Dense
from embedder.modules.lstm import LSTM
from embedder.modules.normalize import Normalize
from embedder.modules.pooling import Pooling
from embedder.modules.tokenizer import WhitespaceTokenizer
from embedder.modules.weighted_layer_pooling import WeightedLayerPooling
from embedder.modules.word_embeddings import WordEmbeddings
from embedder.modules.word_weights import WordWeights

WORDS = (
    "the a an and or of to in on cat cats dog dogs bird car road house tree river city sky sun moon stars rain wind "
    "run runs walk read write sing play eat drink sleep think see hear red big small fast old cold hello world sat"
).split()
VOCAB = ["PADDING_TOKEN", *WORDS, "Hello", "World"]
STOP_WORDS = ["the", "a", "an", "of"]
TEXTS = [
    "the cat sat on the road",
    "Hello World!",
    "a big red dog runs fast in the city and the small bird flies over the old house",
    "",
    "rain",
    "The sun, the Moon and the stars are in the sky while the wind blows cold over the river.",
    "cats and dogs... dog dog dog",
    "unknown words only: zebra quokka",
    "read write sing play eat drink sleep think see hear",
    "(hello) world? WORLD",
]
WEIGHTS = {w: 1.0 + (i % 7) / 3 for i, w in enumerate(WORDS)}


def st_word_embeddings(dim: int = 16, seed: int = 0, **tokenizer_kwargs) -> stm.WordEmbeddings:
    tokenizer_kwargs = {"stop_words": STOP_WORDS, "do_lower_case": False, **tokenizer_kwargs}
    table = torch.randn(len(VOCAB), dim, generator=torch.Generator().manual_seed(seed))
    table[0] = (
        0  # the padding row is zero, as in every embeddings file WordEmbeddings reads (CNN sees padding)
    )
    table = table.numpy()
    return stm.WordEmbeddings(STWhitespaceTokenizer(VOCAB, **tokenizer_kwargs), table)


def check_both_ways(st_modules: list[nn.Module], tmp_path, texts: list[str] = TEXTS) -> EmbeddingModel:
    """ST builds + saves -> we load and match; we save -> ST loads and matches. Returns our model."""
    st_model = SentenceTransformer(modules=st_modules, device="cpu")
    expected = st_model.encode(texts, batch_size=4)
    st_dir = str(tmp_path / "saved_by_st")
    st_model.save(st_dir)

    ours = EmbeddingModel(st_dir, device="cpu")
    assert_parity(ours.encode(texts, batch_size=3), expected)
    assert ours.get_embedding_dimension() == st_model.get_embedding_dimension()

    our_dir = str(tmp_path / "saved_by_us")
    ours.save_pretrained(our_dir)
    st_again = SentenceTransformer(our_dir, device="cpu")
    assert [type(m).__name__ for m in st_again] == [type(m).__name__ for m in st_model]
    assert_parity(st_again.encode(texts, batch_size=5), expected)
    return ours


def test_word_embeddings_word_weights_lstm(tmp_path):
    torch.manual_seed(0)
    modules = [
        st_word_embeddings(do_lower_case=True),
        stm.WordWeights(VOCAB, WEIGHTS, unknown_word_weight=0.5),
        stm.LSTM(16, 8),
        stm.Pooling(16, "mean"),
    ]
    ours = check_both_ways(modules, tmp_path)
    assert [type(m) for m in ours] == [WordEmbeddings, WordWeights, LSTM, Pooling]


def test_word_embeddings_cnn_max_and_mean(tmp_path):
    torch.manual_seed(1)
    modules = [
        st_word_embeddings(dim=12),
        stm.CNN(12, out_channels=6, kernel_sizes=[1, 3, 5]),
        stm.Pooling(18, ("max", "mean")),
    ]
    ours = check_both_ways(modules, tmp_path)
    assert isinstance(ours[1], CNN) and ours.get_embedding_dimension() == 36


def test_unidirectional_stacked_lstm_and_word_weight_pooling_modes(tmp_path):
    torch.manual_seed(2)
    modules = [
        st_word_embeddings(seed=3, stop_words=[]),
        stm.WordWeights(VOCAB, WEIGHTS, unknown_word_weight=2.0),
        stm.LSTM(16, 10, num_layers=2, bidirectional=False),
        stm.Pooling(10, ("mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")),
    ]
    check_both_ways(modules, tmp_path)


def test_word_embeddings_max_seq_length_and_prompt(tmp_path):
    we = st_word_embeddings()
    we.max_seq_length = 4
    st_model = SentenceTransformer(modules=[we, stm.Pooling(16, "weightedmean")], device="cpu")
    st_model.save(str(tmp_path))
    ours = EmbeddingModel(str(tmp_path), device="cpu")
    assert ours[0].max_seq_length == 4
    prompt = "query: hello "
    assert_parity(ours.encode(TEXTS, prompt=prompt), st_model.encode(TEXTS, prompt=prompt))


@pytest.mark.parametrize("cumulative", [True, False])
def test_bow_dense_normalize(tmp_path, cumulative):
    torch.manual_seed(3)
    bow = stm.BoW(VOCAB, word_weights=WEIGHTS, unknown_word_weight=0.25, cumulative_term_frequency=cumulative)
    modules = [bow, stm.Dense(len(VOCAB), 8, activation_function=nn.Tanh()), stm.Normalize()]
    ours = check_both_ways(modules, tmp_path)
    assert isinstance(ours[0], BoW) and ours.get_embedding_dimension() == 8


def test_bow_alone_is_the_weighted_counts(tmp_path):
    bow = stm.BoW(VOCAB, word_weights={"dog": 2.5}, unknown_word_weight=1)
    ours = check_both_ways([bow], tmp_path)
    vec = ours.encode(["dog dog cat"])[0]
    assert vec[VOCAB.index("dog")] == 5.0 and vec[VOCAB.index("cat")] == 1.0 and vec.sum() == 6.0


def test_transformer_weighted_layer_pooling(tmp_path, tiny_bert_dir, sample_texts):
    from transformers import AutoConfig

    bert = tiny_bert_dir("bert", num_layers=2)
    config = AutoConfig.from_pretrained(bert)
    config.output_hidden_states = True
    config.save_pretrained(bert)
    torch.manual_seed(4)
    wlp = stm.WeightedLayerPooling(32, num_hidden_layers=2, layer_start=1)
    with torch.no_grad():
        wlp.layer_weights.copy_(
            torch.tensor([0.3, 1.7])
        )  # not the all-ones default, so the weights must load
    modules = [stm.Transformer(bert, max_seq_length=32), wlp, stm.Pooling(32, "mean")]
    ours = check_both_ways(modules, tmp_path, sample_texts)
    assert isinstance(ours[1], WeightedLayerPooling)
    assert ours[1].layer_weights.tolist() == pytest.approx([0.3, 1.7])


def test_pipeline_built_with_our_classes_loads_in_sentence_transformers(tmp_path):
    torch.manual_seed(5)
    tokenizer = WhitespaceTokenizer(VOCAB, stop_words=STOP_WORDS, do_lower_case=True)
    modules = [
        WordEmbeddings(
            tokenizer, torch.cat([torch.zeros(1, 12), torch.randn(len(VOCAB) - 1, 12)]), max_seq_length=12
        ),
        WordWeights(VOCAB, WEIGHTS, unknown_word_weight=0.7),
        CNN(12, out_channels=4, kernel_sizes=[3, 1], stride_sizes=[1, 1]),
        LSTM(8, 6),
        # Not "cls": sentence-transformers' WordEmbeddings sets cls_token_embeddings=None, which its Pooling cannot use.
        Pooling(12, ("lasttoken", "mean", "max")),
        Dense(36, 10, activation_function="torch.nn.GELU"),
        Normalize(),
    ]
    ours = EmbeddingModel(modules=modules, device="cpu")
    ours.save_pretrained(str(tmp_path))
    st_model = SentenceTransformer(str(tmp_path), device="cpu")
    assert [type(m).__name__ for m in st_model] == [type(m).__name__ for m in modules]
    # Max pooling of a text with no known word is -inf, which Dense turns into NaN in both; leave those out.
    texts = [t for t in TEXTS if tokenizer.tokenize(t)]
    assert_parity(ours.encode(texts), st_model.encode(texts))


def test_bow_built_with_our_class_loads_in_sentence_transformers(tmp_path):
    ours = EmbeddingModel(
        modules=[BoW(VOCAB + ["dog"], {"Dog": 3.0}, 0.5, cumulative_term_frequency=False)], device="cpu"
    )
    ours.save_pretrained(str(tmp_path))
    assert json.loads((tmp_path / "0_BoW" / "config.json").read_text())["vocab"] == VOCAB  # de-duplicated
    st_model = SentenceTransformer(str(tmp_path), device="cpu")
    assert_parity(ours.encode(TEXTS), st_model.encode(TEXTS))


@pytest.mark.parametrize("lower", [False, True])
def test_whitespace_tokenizer_ids_match(lower):
    texts = [*TEXTS, "The THE the. ...  Cat-dog cat- -cat", "'hello' \"world\" (dog),", "World world WORLD!"]
    ours = WhitespaceTokenizer(VOCAB, stop_words=STOP_WORDS, do_lower_case=lower)
    theirs = STWhitespaceTokenizer(VOCAB, stop_words=STOP_WORDS, do_lower_case=lower)
    for text in texts:
        assert ours.tokenize(text) == theirs.tokenize(text), text


def test_whitespace_tokenizer_file_both_ways(tmp_path):
    STWhitespaceTokenizer(VOCAB, stop_words=STOP_WORDS, do_lower_case=True).save(str(tmp_path))
    ours = WhitespaceTokenizer.load(str(tmp_path))
    assert ours.vocab == VOCAB and ours.stop_words == set(STOP_WORDS) and ours.do_lower_case
    ours.save(str(tmp_path / "ours"))
    theirs = STWhitespaceTokenizer.load(str(tmp_path / "ours"))
    assert theirs.vocab == VOCAB and theirs.stop_words == set(STOP_WORDS) and theirs.do_lower_case


def test_weight_files_use_sentence_transformers_keys(tmp_path):
    torch.manual_seed(6)
    pairs = {
        "we": (st_word_embeddings(), None),
        "ww": (stm.WordWeights(VOCAB, WEIGHTS), WordWeights(VOCAB, WEIGHTS)),
        "cnn": (stm.CNN(16, 4, [1, 3]), CNN(16, 4, [1, 3])),
        "lstm": (stm.LSTM(16, 4, num_layers=2), LSTM(16, 4, num_layers=2)),
        "wlp": (stm.WeightedLayerPooling(16, 4, 2), WeightedLayerPooling(16, 4, 2)),
    }
    for name, (theirs, ours) in pairs.items():
        os.makedirs(tmp_path / name / "st")
        theirs.save(str(tmp_path / name / "st"))
        if ours is None:
            ours = WordEmbeddings.load(str(tmp_path / name / "st"))
        ours.save(str(tmp_path / name / "ours"))
        st_files = sorted(os.listdir(tmp_path / name / "st"))
        assert sorted(os.listdir(tmp_path / name / "ours")) == st_files, name
        st_w = load_file(str(tmp_path / name / "st" / "model.safetensors"))
        our_w = load_file(str(tmp_path / name / "ours" / "model.safetensors"))
        assert {k: v.shape for k, v in our_w.items()} == {k: v.shape for k, v in st_w.items()}, name
        # Our config loads in sentence-transformers' class and gives the same config back.
        reloaded = type(theirs).load(str(tmp_path / name / "ours"))
        assert reloaded.get_config_dict() == theirs.get_config_dict(), name


def test_unsupported_tokenizer_class_is_named(tmp_path):
    st_word_embeddings().save(str(tmp_path))
    cfg = json.loads((tmp_path / "wordembedding_config.json").read_text())
    cfg["tokenizer_class"] = "my_package.EvilTokenizer"
    (tmp_path / "wordembedding_config.json").write_text(json.dumps(cfg))
    with pytest.raises(
        ValueError, match=r"'my_package.EvilTokenizer' is not supported; supported: \['WhitespaceTokenizer'\]"
    ):
        WordEmbeddings.load(str(tmp_path))


def test_weighted_layer_pooling_layer_count_mismatch():
    wlp = WeightedLayerPooling(4, num_hidden_layers=3, layer_start=1)
    layers = tuple(torch.randn(2, 5, 4) for _ in range(3))
    with pytest.raises(ValueError, match="2 layers from layer_start=1 on, but 3 weights"):
        wlp({"all_layer_embeddings": layers, "token_embeddings": layers[-1]})
