"""The module contract every pipeline stage follows, and the helpers for its config and weights."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from safetensors.torch import load_file as load_safetensors
from safetensors.torch import save_file as save_safetensors

Features = dict[str, Any]
# A feature that asks forward for the unpadded (packed) path when the model supports it.
PACKED_KEY = "packed_forward"

SAFETENSORS_NAME = "model.safetensors"
PICKLE_NAME = "pytorch_model.bin"


@dataclass
class LoadOptions:
    """What the caller allowed and asked for when loading a model folder."""

    trust_remote_code: bool = False
    allow_pickle: bool = False
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    tokenizer_kwargs: dict[str, Any] = field(default_factory=dict)
    config_kwargs: dict[str, Any] = field(default_factory=dict)
    # Where the Transformer's forward runs (embedder.backends.BACKENDS).
    backend: str = "torch"


class Module(torch.nn.Module):
    """A pipeline stage: `forward(features) -> features`, saved as a config file plus optional weights."""

    config_keys: ClassVar[tuple[str, ...]] = ()
    config_file_name: ClassVar[str] = "config.json"
    # True when each text's output comes from its own real tokens only, whatever shares its batch or padding
    # (up to float rounding): what lets encode's default batch by tokens (see encode_loop.resolve_batching).
    rowwise: ClassVar[bool] = False

    def forward(self, features: Features) -> Features:
        raise NotImplementedError

    def get_config_dict(self) -> dict[str, Any]:
        """The constructor arguments that rebuild this module."""
        return {key: getattr(self, key) for key in self.config_keys}

    def save(self, path: str) -> None:
        """Write config and (if the module has any) weights into `path`."""
        os.makedirs(path, exist_ok=True)
        save_config(self.get_config_dict(), path, self.config_file_name)
        if any(True for _ in self.state_dict()):
            save_weights(self, path)

    @classmethod
    def load(cls, path: str, options: LoadOptions | None = None) -> Module:
        """Rebuild the module from a folder written by `save` (ours or sentence-transformers')."""
        config = load_config(path, cls.config_file_name)
        module = cls(**{k: v for k, v in config.items() if k in cls.config_keys})
        if any(True for _ in module.state_dict()):
            load_weights(module, path, options)
        return module


class InputModule(Module):
    """A module that turns raw texts into tensors before its forward pass (tokenisers live here)."""

    max_seq_length: int | None = None
    # Input modules save their files in the model's root folder, as sentence-transformers does.
    save_in_root: ClassVar[bool] = True
    # False when features hold no padding (StaticEmbedding's flat ids): token batching then keeps input order.
    pads: ClassVar[bool] = True

    def preprocess(self, texts: list[str], *, prompt: str | None = None, task: str | None = None) -> Features:
        """Tokenise raw `texts` into a features dict of tensors, prepending `prompt` to each text if given."""
        raise NotImplementedError

    def text_lengths(self, texts: list[str]) -> list[int]:
        """A cheap length per text used to sort inputs before batching (characters by default)."""
        return [len(t) for t in texts]


def read_json_file(file: str, missing: Any = None) -> Any:
    """A JSON file's content (`missing` when there is no such file); invalid JSON is a ValueError naming the file."""
    if not os.path.exists(file):
        return missing
    with open(file, encoding="utf-8") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{file}: invalid JSON ({e})") from e


def load_config(path: str, name: str = "config.json") -> dict[str, Any]:
    """Read a module's JSON config; a missing file means an all-defaults config."""
    return read_json_file(os.path.join(path, name), missing={})


def save_config(config: dict[str, Any], path: str, name: str = "config.json") -> None:
    """Write a module's JSON config, indented like sentence-transformers writes it."""
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, name), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=4)


def read_state_dict(path: str, options: LoadOptions | None = None) -> dict[str, torch.Tensor]:
    """Read `model.safetensors` from `path`; `pytorch_model.bin` only when the caller allowed pickle."""
    options = options or LoadOptions()
    st_file = os.path.join(path, SAFETENSORS_NAME)
    if os.path.exists(st_file):
        return load_safetensors(st_file)
    bin_file = os.path.join(path, PICKLE_NAME)
    if os.path.exists(bin_file):
        if not options.allow_pickle:
            raise ValueError(
                f"{bin_file}: weights are stored as a pickle, which can run arbitrary code on load; "
                "convert them to safetensors or pass allow_pickle=True if you trust this folder"
            )
        return torch.load(bin_file, map_location="cpu", weights_only=True)
    raise FileNotFoundError(f"{path}: no {SAFETENSORS_NAME} (or {PICKLE_NAME}) found")


def load_weights(module: torch.nn.Module, path: str, options: LoadOptions | None = None) -> None:
    """Load a module's weights strictly; a missing or unexpected key names itself and the folder."""
    state = read_state_dict(path, options)
    missing, unexpected = module.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{path}: weights do not match {type(module).__name__}: missing {missing}, unexpected {unexpected}"
        )


def save_weights(module: torch.nn.Module, path: str) -> None:
    """Write a module's weights as `model.safetensors` (contiguous, shared tensors de-duplicated)."""
    state = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
    save_safetensors(state, os.path.join(path, SAFETENSORS_NAME))
