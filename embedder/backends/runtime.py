"""Run an exported encoder graph under ONNX Runtime or OpenVINO: token features in, token embeddings out."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from embedder.backends import Backend, require
from embedder.backends.export import GRAPH_OUTPUT

# OpenVINO's CPU plugin runs float32 graphs in bf16 on CPUs that have it unless told otherwise; we keep
# float32 so vectors stay within the parity bound (pass ov_config to choose otherwise).
DEFAULT_OV_CONFIG = {"INFERENCE_PRECISION_HINT": "f32"}


class BackendRunner:
    """A loaded ONNX or OpenVINO graph of one model file; `save` copies its files into a model folder."""

    backend: Backend

    def __init__(self, file: str) -> None:
        self.file = file
        self.input_names: tuple[str, ...] = ()
        # A temporary folder an export was written to, kept as long as the runner reads from it.
        self.keep_alive: Any = None

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """The graph's last_hidden_state for int64 `feeds`."""
        raise NotImplementedError

    def __call__(self, inputs: dict[str, Any]) -> torch.Tensor:
        """Token embeddings (batch, seq, hidden) for padded features; token_type_ids default to zeros."""
        ids = inputs["input_ids"]
        feeds = {}
        for name in self.input_names:
            value = inputs.get(name)
            if value is None:
                if name != "token_type_ids":
                    raise ValueError(f"{self.file}: the graph needs input {name!r}, the features have none")
                value = torch.zeros_like(ids)
            feeds[name] = value.detach().cpu().numpy().astype(np.int64, copy=False)
        return torch.from_numpy(np.ascontiguousarray(self.run(feeds))).to(ids.device)

    def companion_files(self) -> list[str]:
        """Files stored beside the model file that it needs (weights); none by default."""
        return []

    def save(self, folder: str) -> str:
        """Copy the model file (and its companions) into `folder`/<backend>/; returns the copy's path."""
        target = os.path.join(folder, self.backend)
        os.makedirs(target, exist_ok=True)
        for source in [self.file, *self.companion_files()]:
            destination = os.path.join(target, os.path.basename(source))
            if os.path.abspath(source) != os.path.abspath(destination):
                shutil.copyfile(source, destination)
        return os.path.join(target, os.path.basename(self.file))


class OnnxRunner(BackendRunner):
    """An onnxruntime InferenceSession on `provider` (default: the first available, as sentence-transformers)."""

    backend: Backend = "onnx"

    def __init__(self, file: str, provider: str | None = None) -> None:
        super().__init__(file)
        ort = require("onnx")
        available = ort.get_available_providers()
        provider = provider or available[0]
        if provider not in available:
            raise ValueError(
                f"provider {provider!r} is not available in onnxruntime; valid: {tuple(available)}"
            )
        self.provider = provider
        self.session = ort.InferenceSession(file, providers=[provider])
        self.input_names = tuple(i.name for i in self.session.get_inputs())
        outputs = [o.name for o in self.session.get_outputs()]
        self._output = GRAPH_OUTPUT if GRAPH_OUTPUT in outputs else outputs[0]

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        return self.session.run([self._output], feeds)[0]

    def companion_files(self) -> list[str]:
        # A graph over 2 GB keeps its weights beside it; both common names for that file travel with it.
        return [f for f in (f"{self.file}_data", f"{self.file}.data") if os.path.exists(f)]


class OpenVINORunner(BackendRunner):
    """An OpenVINO model compiled for CPU with `ov_config` (a dict or a JSON file; default DEFAULT_OV_CONFIG)."""

    backend: Backend = "openvino"

    def __init__(self, file: str, ov_config: dict[str, Any] | str | None = None) -> None:
        super().__init__(file)
        ov = require("openvino")
        if isinstance(ov_config, (str, os.PathLike)):
            with open(ov_config, encoding="utf-8") as f:
                ov_config = json.load(f)
        self.ov_config = dict(DEFAULT_OV_CONFIG if ov_config is None else ov_config)
        core = ov.Core()
        self.compiled = core.compile_model(core.read_model(file), "CPU", self.ov_config)
        self.input_names = tuple(i.get_any_name() for i in self.compiled.inputs)
        outputs = list(self.compiled.outputs)
        named = [o for o in outputs if GRAPH_OUTPUT in o.get_names()]
        self._output = named[0] if named else outputs[0]
        self._request = self.compiled.create_infer_request()

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        return self._request.infer(feeds)[self._output]

    def companion_files(self) -> list[str]:
        weights = str(Path(self.file).with_suffix(".bin"))
        return [weights] if os.path.exists(weights) else []
