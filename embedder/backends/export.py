"""Export a Hugging Face encoder to ONNX (torch.onnx) or OpenVINO IR, with sentence-transformers' names.

The graphs take the model's input_ids / attention_mask / token_type_ids (int64, dynamic batch_size and
sequence_length axes) and return last_hidden_state, as Optimum's feature-extraction export does, so folders
exported by either tool hold the same interface.
"""

from __future__ import annotations

import inspect
import os
import warnings
from typing import Any

import torch

from embedder.backends import require

GRAPH_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
GRAPH_OUTPUT = "last_hidden_state"
DYNAMIC_AXES = {0: "batch_size", 1: "sequence_length"}
ONNX_OPSET = 17


class _Hidden(torch.nn.Module):
    """The encoder as a function of positional inputs returning its last hidden state (what gets traced)."""

    def __init__(self, model: torch.nn.Module, names: tuple[str, ...]) -> None:
        super().__init__()
        self.model = model
        self.names = names

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.model(**dict(zip(self.names, inputs, strict=True)), return_dict=True)[0]


def graph_inputs(model: torch.nn.Module) -> tuple[str, ...]:
    """The GRAPH_INPUTS `model`'s forward takes (DistilBERT has no token_type_ids)."""
    params = inspect.signature(model.forward).parameters
    return tuple(name for name in GRAPH_INPUTS if name in params)


def export_onnx(model: torch.nn.Module, file: str) -> str:
    """Write `model` (a float32 HF encoder) as an ONNX graph to `file`; returns `file`."""
    require("onnx", "onnx")
    names = graph_inputs(model)
    # Two rows of different lengths, so the trace keeps the padding mask as a real input, not a constant.
    ids = torch.tensor([[2, 5, 6, 7, 3], [2, 5, 3, 0, 0]], dtype=torch.long)
    examples = {
        "input_ids": ids,
        "attention_mask": (ids != 0).long(),
        "token_type_ids": torch.zeros_like(ids),
    }
    wrapper = _Hidden(model, names).eval()
    os.makedirs(os.path.dirname(os.path.abspath(file)), exist_ok=True)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about Python control flow on shapes
        torch.onnx.export(
            wrapper,
            tuple(examples[n] for n in names),
            file,
            dynamo=False,
            input_names=list(names),
            output_names=[GRAPH_OUTPUT],
            dynamic_axes={name: DYNAMIC_AXES for name in (*names, GRAPH_OUTPUT)},
            opset_version=ONNX_OPSET,
        )
    return file


def export_openvino(model: torch.nn.Module, file: str, onnx_file: str) -> str:
    """Write `model` as OpenVINO IR (`file` .xml plus its .bin, float32 weights) through ONNX at `onnx_file`."""
    ov = require("openvino")
    export_onnx(model, onnx_file)
    converted: Any = ov.convert_model(onnx_file)
    os.makedirs(os.path.dirname(os.path.abspath(file)), exist_ok=True)
    ov.save_model(converted, file, compress_to_fp16=False)
    return file
