"""Dense: a linear layer plus an activation from torch.nn, applied to one feature (the sentence embedding)."""

from __future__ import annotations

import os
from typing import Any

from torch import nn

from embedder.modules.base import (
    Features,
    LoadOptions,
    Module,
    load_config,
    load_weights,
    save_config,
    save_weights,
)

# Activations a config may name: parameter-free-to-construct classes from torch.nn, never arbitrary imports.
ACTIVATIONS: tuple[str, ...] = (
    "Identity",
    "Tanh",
    "ReLU",
    "RReLU",
    "Hardtanh",
    "ReLU6",
    "Sigmoid",
    "Hardsigmoid",
    "SiLU",
    "Mish",
    "Hardswish",
    "ELU",
    "CELU",
    "SELU",
    "GLU",
    "GELU",
    "Hardshrink",
    "LeakyReLU",
    "LogSigmoid",
    "Softplus",
    "Softshrink",
    "PReLU",
    "Softsign",
    "Tanhshrink",
    "Softmin",
    "Softmax",
    "Softmax2d",
    "LogSoftmax",
)
DEFAULT_ACTIVATION = "torch.nn.modules.activation.Tanh"


def resolve_activation(path: str | None) -> nn.Module:
    """Build the activation a config names ("torch.nn.Tanh", "torch.nn.modules.activation.Tanh", ...); None is identity."""
    if path is None:
        return nn.Identity()
    name = path.rsplit(".", 1)[-1]
    if not path.startswith("torch.nn.") or name not in ACTIVATIONS:
        raise ValueError(
            f"activation_function {path!r} is not allowed; use one of torch.nn.{{{', '.join(ACTIVATIONS)}}} "
            "(e.g. 'torch.nn.modules.activation.Tanh'); other code is never imported from a config"
        )
    return getattr(nn, name)()


def activation_path(activation: nn.Module) -> str:
    """The import path sentence-transformers writes for an activation, e.g. 'torch.nn.modules.activation.Tanh'."""
    cls = type(activation)
    return f"{cls.__module__}.{cls.__qualname__}"


class Dense(Module):
    """features[module_output_name] = activation(linear(features[module_input_name])) (+ optional residual)."""

    config_keys = (
        "in_features",
        "out_features",
        "bias",
        "activation_function",
        "module_input_name",
        "module_output_name",
        "use_residual",
    )
    rowwise = True

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        activation_function: nn.Module | str | None = DEFAULT_ACTIVATION,
        module_input_name: str = "sentence_embedding",
        module_output_name: str | None = None,
        use_residual: bool = False,
    ) -> None:
        super().__init__()
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        self.bias = bool(bias)
        if activation_function is None or isinstance(activation_function, str):
            activation_function = resolve_activation(activation_function)
        self.activation_function = activation_function
        self.linear = nn.Linear(self.in_features, self.out_features, bias=self.bias)
        self.module_input_name = module_input_name
        self.module_output_name = module_output_name or module_input_name
        self.use_residual = bool(use_residual)
        if self.use_residual and self.in_features != self.out_features:
            self.residual = nn.Linear(self.in_features, self.out_features, bias=False)

    def forward(self, features: Features) -> Features:
        x = features[self.module_input_name]
        if x.shape[-1] != self.in_features:
            raise ValueError(
                f"Dense: features[{self.module_input_name!r}] has width {x.shape[-1]}, expected in_features={self.in_features}"
            )
        out = self.activation_function(self.linear(x))
        if self.use_residual:
            out = out + (x if self.in_features == self.out_features else self.residual(x))
        features[self.module_output_name] = out
        return features

    def get_embedding_dimension(self) -> int:
        """Width of the output: out_features."""
        return self.out_features

    def get_sentence_embedding_dimension(self) -> int:
        """Alias of `get_embedding_dimension` (the older sentence-transformers name)."""
        return self.out_features

    def get_config_dict(self) -> dict[str, Any]:
        """The config sentence-transformers writes; keys at their default are left out so older versions load it."""
        config: dict[str, Any] = {
            "in_features": self.in_features,
            "out_features": self.out_features,
            "bias": self.bias,
            "activation_function": activation_path(self.activation_function),
        }
        if (
            self.module_input_name != "sentence_embedding"
            or self.module_output_name != self.module_input_name
        ):
            config["module_input_name"] = self.module_input_name
            config["module_output_name"] = self.module_output_name
        if self.use_residual:
            config["use_residual"] = True
        return config

    def save(self, path: str) -> None:
        """Write `config.json` and `model.safetensors` (keys linear.weight, linear.bias[, residual.weight])."""
        os.makedirs(path, exist_ok=True)
        save_config(self.get_config_dict(), path, self.config_file_name)
        save_weights(self, path)

    @classmethod
    def load(cls, path: str, options: LoadOptions | None = None) -> Dense:
        """Rebuild from config (activation resolved from torch.nn only) and load the weights strictly."""
        config = load_config(path, cls.config_file_name)
        for key in ("in_features", "out_features"):
            if key not in config:
                raise ValueError(f"{os.path.join(path, cls.config_file_name)}: missing {key!r}")
        kwargs = {k: v for k, v in config.items() if k in cls.config_keys}
        # A config without the key means sentence-transformers' default (Tanh); an explicit null means identity.
        kwargs.setdefault("activation_function", DEFAULT_ACTIVATION)
        module = cls(**kwargs)
        load_weights(module, path, options)
        return module
