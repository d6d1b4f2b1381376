"""Build st_exported_bert/: a tiny BERT whose onnx/ and openvino/ files sentence-transformers itself exported.

sentence-transformers exports through Optimum, which does not install beside transformers 5 (optimum-onnx
0.1.0 pins transformers<4.58, optimum-intel 2.2 <5.6), so the folder is made once, outside the test
environment, and committed; test_backends.py loads it. Each step runs with its own package set put in front
of the project's venv (`pip install --no-deps --target DIR ...`, then PYTHONPATH=DIR):

  python make_st_exported.py build OUT                       # the project's venv
  PYTHONPATH=$ONNX python make_st_exported.py export OUT onnx        # sentence-transformers 5.1, transformers
      # 4.57, optimum 2.1 + optimum-onnx 0.1.0, huggingface-hub 0.36, tokenizers 0.22, datasets 4.4
  PYTHONPATH=$OV python make_st_exported.py export OUT openvino      # sentence-transformers 6.3, transformers
      # 5.5, optimum 2.3 + optimum-intel 2.2, huggingface-hub 1.21, tokenizers 0.22, datasets 4.4
  PYTHONPATH=$ONNX python make_st_exported.py check FOLDER onnx      # our export, loaded by sentence-transformers
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # tests/embedder, for conftest's tiny-model builders


def build(out: str) -> None:
    """The tiny random BERT as a sentence-transformers folder (torch weights only)."""
    from conftest import add_st_files, save_tiny_bert

    add_st_files(save_tiny_bert(out, seed=7))


def export(folder: str, backend: str) -> None:
    """sentence-transformers' own export of `folder`, copied into `folder`/<backend>/."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(folder, backend=backend, device="cpu", model_kwargs={"export": True})
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        shutil.rmtree(os.path.join(folder, backend), ignore_errors=True)
        shutil.copytree(os.path.join(tmp, backend), os.path.join(folder, backend))


def check(folder: str, backend: str) -> None:
    """Load `folder`'s existing <backend> file in sentence-transformers; compare with its torch vectors."""
    import numpy as np
    from conftest import SAMPLE_TEXTS
    from sentence_transformers import SentenceTransformer

    # A torch reference from the same folder's safetensors, or the tiny BERT it was made from.
    reference = SentenceTransformer(sys.argv[4] if len(sys.argv) > 4 else folder, device="cpu")
    kwargs: dict = {"export": False}
    if backend == "openvino":
        # Its default on a bf16-capable CPU is bf16 inference, outside the float32 bound: ask for f32.
        kwargs["ov_config"] = {"INFERENCE_PRECISION_HINT": "f32"}
    ours = SentenceTransformer(folder, backend=backend, device="cpu", model_kwargs=kwargs)
    a, b = reference.encode(SAMPLE_TEXTS), ours.encode(SAMPLE_TEXTS)
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    print(
        f"{backend} {type(ours[0].auto_model).__name__}: min cosine {cos.min():.8f}, max abs diff {abs(a - b).max():.2e}"
    )
    assert cos.min() >= 0.99999 and abs(a - b).max() <= 1e-4


if __name__ == "__main__":
    {"build": build, "export": export, "check": check}[sys.argv[1]](*sys.argv[2:4])
