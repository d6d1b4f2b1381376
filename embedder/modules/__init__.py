"""The registry of pipeline modules: a type name from modules.json -> our class, imported lazily."""

from __future__ import annotations

import importlib

from embedder.modules.base import Features, InputModule, LoadOptions, Module

# Class name -> "module:Class". Any modules.json "type" whose last component is a key here resolves to it:
# "sentence_transformers.models.Pooling", "sentence_transformers.sentence_transformer.modules.pooling.Pooling", ...
REGISTRY: dict[str, str] = {
    "Transformer": "embedder.modules.transformer:Transformer",
    "Pooling": "embedder.modules.pooling:Pooling",
    "Dense": "embedder.modules.dense:Dense",
    "Normalize": "embedder.modules.normalize:Normalize",
    "Router": "embedder.modules.router:Router",
    "Asym": "embedder.modules.router:Router",
    "StaticEmbedding": "embedder.modules.static_embedding:StaticEmbedding",
    "WeightedLayerPooling": "embedder.modules.weighted_layer_pooling:WeightedLayerPooling",
    "WordWeights": "embedder.modules.word_weights:WordWeights",
    "BoW": "embedder.modules.bow:BoW",
    "CNN": "embedder.modules.cnn:CNN",
    "LSTM": "embedder.modules.lstm:LSTM",
    "CLIPModel": "embedder.modules.clip:CLIPModel",
    "WordEmbeddings": "embedder.modules.word_embeddings:WordEmbeddings",
}

# What we write into modules.json: the stable public path every sentence-transformers version resolves.
SAVE_PREFIX = "sentence_transformers.models."


def module_class(type_name: str) -> type[Module]:
    """Resolve a modules.json `type` to our class, or say which types are supported."""
    short = type_name.rsplit(".", 1)[-1]
    if short not in REGISTRY:
        raise ValueError(
            f"unsupported module type {type_name!r}; supported: {sorted(REGISTRY)} "
            "(custom module code is never imported)"
        )
    mod_name, cls_name = REGISTRY[short].split(":")
    return getattr(importlib.import_module(mod_name), cls_name)


def type_name_for(module: Module) -> str:
    """The modules.json `type` string to save `module` under."""
    return SAVE_PREFIX + type(module).__name__


__all__ = ["Features", "InputModule", "LoadOptions", "Module", "REGISTRY", "module_class", "type_name_for"]
