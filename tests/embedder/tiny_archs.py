"""Tiny random models of the architectures people embed with, each saved as a sentence-transformers folder."""

from __future__ import annotations

import importlib.util
import os
import sys
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Literal

import torch
import transformers

from embedder.modules.pooling import PoolingMode


def embedder_conftest() -> ModuleType:
    """tests/embedder/conftest.py, by path: `import conftest` may give another folder's (pytest a/x.py b/y.py)."""
    name = "_embedder_test_helpers"  # the name tests/conftest.py registers it under
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            name, os.path.join(os.path.dirname(__file__), "conftest.py")
        )
        sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[name])
    return sys.modules[name]


Arch = Literal["bert", "xlm-roberta", "mpnet", "modernbert", "qwen3", "mistral", "llama"]
ARCHS: tuple[Arch, ...] = ("bert", "xlm-roberta", "mpnet", "modernbert", "qwen3", "mistral", "llama")
PaddingSide = Literal["left", "right"]
PADDING_SIDES: tuple[PaddingSide, ...] = ("left", "right")
# Instruction prompts as Qwen3-Embedding / e5-mistral save them: the query gets one, documents none.
PROMPTS = {"query": "Instruct: find the passage that answers the question\nQuery: ", "document": ""}
SIZES = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}


@dataclass(frozen=True)
class ArchSpec:
    """How to build one architecture: its model class, special tokens, post-processor and pooling."""

    model_class: str
    specials: tuple[str, ...]  # ids 0..n-1, before the words
    template: str  # the tokenizer's post-processor for one text
    tokens: dict[str, str]  # pad_token, eos_token... as the tokenizer names them
    config_ids: dict[str, str]  # config field -> special token whose id it holds
    padding_side: PaddingSide = "right"
    pooling_mode: PoolingMode = "mean"
    normalize: bool = False
    config: dict[str, Any] = field(default_factory=dict)


_DECODER = {"num_key_value_heads": 2, "head_dim": 8, "max_position_embeddings": 256}


def _roberta_like(model_class: str, *, normalize: bool = False) -> ArchSpec:
    """XLM-RoBERTa's and MPNet's layout: <s> text </s>, <pad> = 1, positions counted from the pad id."""
    return ArchSpec(
        model_class,
        ("<s>", "<pad>", "</s>", "<unk>", "<mask>"),
        "<s> $A </s>",
        {
            "bos_token": "<s>",
            "eos_token": "</s>",
            "pad_token": "<pad>",
            "unk_token": "<unk>",
            "mask_token": "<mask>",
        },
        {"pad_token_id": "<pad>", "bos_token_id": "<s>", "eos_token_id": "</s>"},
        normalize=normalize,
        config={"max_position_embeddings": 130},  # positions start after the pad id
    )


SPECS: dict[Arch, ArchSpec] = {
    "xlm-roberta": _roberta_like("XLMRobertaModel"),
    "mpnet": _roberta_like("MPNetModel", normalize=True),
    "modernbert": ArchSpec(
        "ModernBertModel",
        ("[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"),
        "[CLS] $A [SEP]",
        {
            "cls_token": "[CLS]",
            "sep_token": "[SEP]",
            "pad_token": "[PAD]",
            "unk_token": "[UNK]",
            "mask_token": "[MASK]",
        },
        {
            "pad_token_id": "[PAD]",
            "cls_token_id": "[CLS]",
            "sep_token_id": "[SEP]",
            "bos_token_id": "[CLS]",
            "eos_token_id": "[SEP]",
        },
        # A local window shorter than the long texts, so sliding and global layers both see padding.
        config={"max_position_embeddings": 128, "local_attention": 8, "global_attn_every_n_layers": 2},
    ),
    # Qwen3-Embedding: the tokenizer appends <|endoftext|> and pads on the left; last-token pooling.
    "qwen3": ArchSpec(
        "Qwen3Model",
        ("<|endoftext|>", "<unk>"),
        "$A <|endoftext|>",
        {"eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "unk_token": "<unk>"},
        {"pad_token_id": "<|endoftext|>", "eos_token_id": "<|endoftext|>"},
        padding_side="left",
        pooling_mode="lasttoken",
        normalize=True,
        config=_DECODER,
    ),
    # e5-mistral: <s> text </s>, right padding, a sliding window shorter than the long texts.
    "mistral": ArchSpec(
        "MistralModel",
        ("<unk>", "<s>", "</s>"),
        "<s> $A </s>",
        {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "</s>", "unk_token": "<unk>"},
        {"bos_token_id": "<s>", "eos_token_id": "</s>"},
        pooling_mode="lasttoken",
        normalize=True,
        config={**_DECODER, "sliding_window": 16},
    ),
    # A Llama tokenizer that adds <s> only: the last token is the text's own.
    "llama": ArchSpec(
        "LlamaModel",
        ("<unk>", "<s>", "</s>", "<pad>"),
        "<s> $A",
        {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"},
        {"bos_token_id": "<s>", "eos_token_id": "</s>", "pad_token_id": "<pad>"},
        padding_side="left",
        pooling_mode="lasttoken",
        config=_DECODER,
    ),
}


def check_arch(arch: str) -> None:
    """Raise when `arch` is not one of ARCHS."""
    if arch not in ARCHS:
        raise ValueError(f"arch {arch!r} is not a tiny architecture; valid: {ARCHS}")


def save_tiny_arch(
    path: str | os.PathLike, arch: Arch, *, padding_side: PaddingSide | None = None, seed: int = 0
) -> str:
    """Write a random tiny `arch` model, its tokenizer and the sentence-transformers files to `path`."""
    check_arch(arch)
    path = str(path)
    helpers = embedder_conftest()
    if arch == "bert":
        helpers.save_tiny_bert(path, seed=seed)
        return helpers.add_st_files(path, prompts=PROMPTS)
    spec = SPECS[arch]
    side = padding_side or spec.padding_side
    if side not in PADDING_SIDES:
        raise ValueError(f"padding_side {side!r} is not supported; valid: {PADDING_SIDES}")
    vocab = save_word_tokenizer(path, spec, side)
    model_class = getattr(transformers, spec.model_class)
    ids = {key: vocab[token] for key, token in spec.config_ids.items()}
    config = model_class.config_class(vocab_size=len(vocab), **SIZES, **ids, **spec.config)
    torch.manual_seed(seed)
    model_class(config).eval().save_pretrained(path)
    return helpers.add_st_files(
        path, pooling_mode=spec.pooling_mode, normalize=spec.normalize, prompts=PROMPTS
    )


def save_word_tokenizer(path: str, spec: ArchSpec, padding_side: PaddingSide) -> dict[str, int]:
    """A lowercasing word-level tokenizer over the test words with `spec`'s special tokens; returns its vocab."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab: dict[str, int] = {}
    for token in (*spec.specials, *embedder_conftest().WORDS):
        vocab.setdefault(token, len(vocab))
    tok = Tokenizer(WordLevel(vocab, unk_token=spec.tokens["unk_token"]))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    added = [t for t in spec.template.split() if t != "$A"]
    tok.post_processor = processors.TemplateProcessing(
        single=spec.template, special_tokens=[(t, vocab[t]) for t in added]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, padding_side=padding_side, model_max_length=128, **spec.tokens
    )
    fast.save_pretrained(path)
    return vocab
