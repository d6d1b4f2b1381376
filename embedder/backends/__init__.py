"""Where a Transformer's forward runs: torch (default), ONNX Runtime or OpenVINO, and what each needs installed."""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Literal

Backend = Literal["torch", "onnx", "openvino"]
BACKENDS: tuple[Backend, ...] = ("torch", "onnx", "openvino")
# The module each non-torch backend imports, and the extra of ours that installs it.
REQUIREMENTS: dict[str, tuple[str, str]] = {
    "onnx": ("onnxruntime", "onnx"),
    "openvino": ("openvino", "openvino"),
}


def check_backend(value: str) -> Backend:
    """`value` if it is one of BACKENDS, else a ValueError listing them."""
    if value not in BACKENDS:
        raise ValueError(f"backend {value!r} is not supported; valid: {BACKENDS}")
    return value  # type: ignore[return-value]


def require(backend: Backend, module: str | None = None) -> ModuleType:
    """Import what `backend` runs on (or `module`, one of its extra's packages), naming the pip extra if missing."""
    name, extra = REQUIREMENTS[backend]
    name = module or name
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise ImportError(f"backend={backend!r} needs {name}: pip install 'embedjob[{extra}]'") from exc
