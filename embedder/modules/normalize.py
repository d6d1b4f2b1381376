"""Normalize: L2-normalise one feature (the sentence embedding by default) to unit length."""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F

from embedder.modules.base import Features, LoadOptions, Module, load_config


class Normalize(Module):
    """features[module_output_name] = features[module_input_name] / its L2 norm (last axis)."""

    config_keys = ("module_input_name", "module_output_name")
    rowwise = True

    def __init__(
        self, module_input_name: str = "sentence_embedding", module_output_name: str | None = None
    ) -> None:
        super().__init__()
        self.module_input_name = module_input_name
        self.module_output_name = module_output_name or module_input_name

    def forward(self, features: Features) -> Features:
        x = features.get(self.module_input_name)
        if x is not None:
            features[self.module_output_name] = F.normalize(x, p=2, dim=-1)
        return features

    def get_config_dict(self) -> dict[str, Any]:
        """Both feature names, as sentence-transformers 6.2 writes them (older versions ignore the file)."""
        return {"module_input_name": self.module_input_name, "module_output_name": self.module_output_name}

    @classmethod
    def load(cls, path: str, options: LoadOptions | None = None) -> Normalize:
        """Read `config.json` if present (older saves have none: the defaults apply)."""
        config = load_config(path, cls.config_file_name) if path else {}
        return cls(**{k: v for k, v in config.items() if k in cls.config_keys})
