"""Load (or export, then load) the ONNX / OpenVINO graph a Transformer module runs on."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from typing import Any

import torch

from embedder.backends import Backend, require
from embedder.backends.export import export_onnx, export_openvino
from embedder.backends.files import DEFAULT_FILES, choose_file
from embedder.backends.runtime import BackendRunner, OnnxRunner, OpenVINORunner

# model_kwargs a non-torch backend reads (sentence-transformers' names); the rest are torch loading options.
BACKEND_KWARGS = ("file_name", "subfolder", "export", "provider", "ov_config")


def split_backend_kwargs(model_kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the BACKEND_KWARGS in `model_kwargs`, the others)."""
    ours = {k: v for k, v in model_kwargs.items() if k in BACKEND_KWARGS}
    rest = {k: v for k, v in model_kwargs.items() if k not in BACKEND_KWARGS}
    return ours, rest


def load_runner(
    folder: str, backend: Backend, kwargs: dict[str, Any], load_torch: Callable[[], torch.nn.Module]
) -> BackendRunner:
    """The runner for `folder`'s chosen file; exports from `load_torch()` (float32) when there is none or asked."""
    require(backend)  # before any export work: a missing package is the first thing to say
    relative, export = choose_file(
        folder,
        backend,
        file_name=kwargs.get("file_name"),
        subfolder=kwargs.get("subfolder"),
        export=kwargs.get("export"),
    )
    tmp = None
    if export:
        tmp = tempfile.TemporaryDirectory(prefix=f"embedder-{backend}-")
        model = load_torch().float().eval()
        file = os.path.join(tmp.name, DEFAULT_FILES[backend])
        if backend == "onnx":
            export_onnx(model, file)
        else:
            export_openvino(model, file, os.path.join(tmp.name, "model.onnx"))
        del model
    else:
        file = os.path.join(folder, str(relative))
    runner: BackendRunner
    if backend == "onnx":
        runner = OnnxRunner(file, provider=kwargs.get("provider"))
    else:
        runner = OpenVINORunner(file, ov_config=kwargs.get("ov_config"))
    # The exported files live as long as the runner, so save_pretrained can still copy them.
    runner.keep_alive = tmp
    return runner
