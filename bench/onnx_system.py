"""Optional: the same model under ONNX Runtime (exported from our EmbeddingModel's BERT), to see if it beats torch.

onnxruntime is not a project dependency: point BENCH_ORT_PATH at a folder it was pip-installed into
(`pip install --target DIR onnxruntime`); without it this system reports itself as unavailable.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

import numpy as np

from bench.corpus import model_path
from bench.systems import WARMUP_TEXTS, read_input


def import_ort() -> Any:
    """onnxruntime from the environment or from $BENCH_ORT_PATH (appended, so the venv's numpy still wins)."""
    extra = os.environ.get("BENCH_ORT_PATH")
    if extra and extra not in sys.path:
        sys.path.append(extra)
    import onnxruntime

    return onnxruntime


def ort_available() -> bool:
    """Whether onnxruntime can be imported here or from $BENCH_ORT_PATH (without importing it)."""
    import importlib.util

    extra = os.environ.get("BENCH_ORT_PATH")
    if importlib.util.find_spec("onnxruntime") is not None:
        return True
    return bool(extra) and os.path.isdir(os.path.join(extra, "onnxruntime"))


def export_bert(bert: Any, path: str) -> str:
    """Export the BertModel's last hidden state to ONNX with dynamic batch and sequence axes."""
    import torch

    class Hidden(torch.nn.Module):
        def __init__(self, m: Any):
            super().__init__()
            self.m = m

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            return self.m(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)[
                0
            ]

    ids = torch.ones(2, 8, dtype=torch.long)
    axes = {0: "batch", 1: "seq"}
    torch.onnx.export(
        Hidden(bert).eval(),
        (ids, ids, torch.zeros_like(ids)),
        path,
        dynamo=False,
        input_names=["input_ids", "attention_mask", "token_type_ids"],
        output_names=["hidden"],
        dynamic_axes={"input_ids": axes, "attention_mask": axes, "token_type_ids": axes, "hidden": axes},
        opset_version=17,
    )
    return path


def run_onnx(args: argparse.Namespace) -> dict[str, Any]:
    """Our batching (token budget over token-sorted texts) with the forward pass in ONNX Runtime, 2 threads."""
    ort = import_ort()
    from embedder import EmbeddingModel, batching

    _, texts = read_input(args.input)
    model = EmbeddingModel(model_path(), device="cpu")
    first = model[0]
    onnx_file = export_bert(first.auto_model, os.path.join(args.out, "bert.onnx"))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = args.threads or 2
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(onnx_file, opts, providers=["CPUExecutionProvider"])
    budget = args.max_batch_tokens or 8192
    stats = {"texts": 0, "tokens": 0, "padded_tokens": 0}

    def encode(batch_texts: list[str]) -> np.ndarray:
        lengths = first.text_lengths(batch_texts)
        order = batching.length_order(lengths)
        out = np.empty((len(batch_texts), first.get_word_embedding_dimension()), dtype=np.float32)
        for b in batching.batches_by_tokens(order, lengths, budget):
            f = first.preprocess([batch_texts[i] for i in b])
            feeds = {k: f[k].numpy() for k in ("input_ids", "attention_mask", "token_type_ids")}
            hidden = sess.run(["hidden"], feeds)[0]
            stats["tokens"] += int(feeds["attention_mask"].sum())
            stats["padded_tokens"] += int(feeds["attention_mask"].size)
            mask = feeds["attention_mask"][..., None].astype(np.float32)
            out[b] = (hidden * mask).sum(1) / np.maximum(mask.sum(1), 1e-9)
        return out / np.linalg.norm(out, axis=1, keepdims=True)

    encode(texts[:WARMUP_TEXTS])
    stats.update(tokens=0, padded_tokens=0)
    t0 = time.perf_counter()
    emb = encode(texts)
    wall = time.perf_counter() - t0
    np.save(os.path.join(args.out, "emb.npy"), emb)
    stats["texts"] = len(texts)
    return {"wall_s": wall, "max_batch_tokens": budget, "onnxruntime": ort.__version__, "counted": stats}


SYSTEMS = {"onnx": run_onnx}
