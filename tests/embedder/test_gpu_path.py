"""The accelerator path: dtype shorthand, SDPA by default, transfers and collection; CUDA parts run only on a GPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from embedder import EmbeddingModel
from embedder.device_io import HostCollector, to_device
from embedder.modules.packed_bert import PackedEncoder, flash_varlen

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_dtype_shorthand_and_sdpa_default(tiny_bert_dir, sample_texts) -> None:
    path = tiny_bert_dir(st=True)
    half = EmbeddingModel(path, device="cpu", dtype="bfloat16")
    assert half.describe()["dtype"] == "bfloat16"
    assert half[0].auto_model.config._attn_implementation == "sdpa"
    assert half[0].packed
    a = half.encode(sample_texts, normalize_embeddings=True)
    b = EmbeddingModel(path, device="cpu").encode(sample_texts, normalize_embeddings=True)
    assert a.dtype == np.float32 and (a * b).sum(axis=1).min() > 0.99
    assert not EmbeddingModel(path, device="cpu", packed=False)[0].packed
    with pytest.raises(ValueError, match="'float17'"):
        EmbeddingModel(path, device="cpu", dtype="float17")


def test_to_device_and_collector_on_cpu() -> None:
    features = {"input_ids": torch.ones(2, 3, dtype=torch.long), "prompt_length": 2, "task": None}
    moved = to_device(features, torch.device("cpu"))
    assert moved["prompt_length"] == 2 and torch.equal(moved["input_ids"], features["input_ids"])
    collector = HostCollector(torch.device("cpu"))
    collector.add(torch.ones(2, 4, dtype=torch.bfloat16))
    collector.add(torch.zeros(1, 4))
    out = collector.result()
    assert out.dtype == torch.float32 and out.shape == (3, 4) and out.device.type == "cpu"
    assert HostCollector(torch.device("cpu")).result().numel() == 0


def reference_varlen(qkv, cu, longest, softmax_scale):
    """flash_attn_varlen_qkvpacked_func's contract, in plain torch: attention within each cu_seqlens span."""
    out = []
    for start, end in zip(cu[:-1].tolist(), cu[1:].tolist(), strict=True):
        q, k, v = qkv[start:end].permute(1, 2, 0, 3).unbind(0)  # (heads, n, d) each
        assert end - start <= longest
        out.append(
            torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=softmax_scale).transpose(0, 1)
        )
    return torch.cat(out)


def test_varlen_branch_with_a_reference_kernel(tiny_bert_dir, sample_texts, monkeypatch) -> None:
    from embedder.modules import packed_bert

    model = EmbeddingModel(tiny_bert_dir(st=True), device="cpu")
    module = model[0]
    features = module.preprocess(sample_texts)
    inputs = {k: features[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    with torch.inference_mode():
        ref = module.auto_model(**inputs)[0]
        monkeypatch.setattr(packed_bert, "flash_varlen", lambda x: reference_varlen)
        ours = PackedEncoder(module.auto_model)(**inputs)
    real = features["attention_mask"].bool()
    assert (ours[real] - ref[real]).abs().max().item() <= 1e-5
    monkeypatch.undo()
    assert packed_bert.flash_varlen(torch.zeros(1)) is None  # CPU fp32 never takes the flash kernel


@cuda
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_cuda_half_encode_close_to_fp32(tiny_bert_dir, sample_texts, dtype) -> None:
    path = tiny_bert_dir(st=True)
    ref = EmbeddingModel(path, device="cpu").encode(sample_texts * 20, normalize_embeddings=True)
    gpu = EmbeddingModel(path, device="cuda:0", dtype=dtype)
    for batching in ("sentence-transformers", "tokens"):
        out = gpu.encode(sample_texts * 20, normalize_embeddings=True, batch_size=7, batching=batching)
        assert out.dtype == np.float32 and (out * ref).sum(axis=1).min() > 0.995
    tensor = gpu.encode(sample_texts, convert_to_tensor=True)
    assert tensor.device.type == "cuda" and tensor.dtype == torch.float32


@cuda
def test_cuda_fp32_matches_cpu(tiny_bert_dir, sample_texts, parity) -> None:
    path = tiny_bert_dir(st=True)
    ref = EmbeddingModel(path, device="cpu").encode(sample_texts * 10)
    gpu = EmbeddingModel(path, device="cuda")
    torch.backends.cuda.matmul.allow_tf32 = False
    parity(gpu.encode(sample_texts * 10, batch_size=3), ref)
    parity(gpu.encode(sample_texts * 10, batch_size=3, batching="tokens"), ref)


@cuda
def test_cuda_packed_matches_hf(tiny_bert_dir, sample_texts) -> None:
    model = EmbeddingModel(tiny_bert_dir(st=True), device="cuda", dtype="float16")
    module = model[0]
    features = to_device(module.preprocess(sample_texts), torch.device("cuda"))
    inputs = {k: features[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    with torch.inference_mode():
        ref = module.auto_model(**inputs)[0]
        ours = PackedEncoder(module.auto_model)(**inputs)
    real = features["attention_mask"].bool()
    # fp16 rounding differs between the varlen kernel (when flash-attn is installed) and SDPA.
    tol = 1e-2 if flash_varlen() is not None else 1e-3
    assert (ours[real].float() - ref[real].float()).abs().max().item() <= tol


@cuda
def test_cuda_collector_async_copies() -> None:
    device = torch.device("cuda")
    collector = HostCollector(device)
    parts = [torch.full((4, 8), float(i), device=device, dtype=torch.float16) for i in range(5)]
    for part in parts:
        collector.add(part)
    out = collector.result()
    assert out.device.type == "cpu" and out.is_pinned() and out.dtype == torch.float32
    assert out[:, 0].tolist() == [float(i) for i in range(5) for _ in range(4)]


@cuda
def test_encode_device_moves_the_model(tiny_bert_dir, sample_texts, parity) -> None:
    model = EmbeddingModel(tiny_bert_dir(st=True), device="cpu")
    on_cpu = model.encode(sample_texts)
    parity(model.encode(sample_texts, device="cuda"), on_cpu)
    # It stays there for later calls, as in sentence-transformers.
    assert model.device.type == "cuda"
    tokens = model.encode(sample_texts, output_value="token_embeddings", convert_to_tensor=True)
    assert all(t.device.type == "cuda" for t in tokens)
    parity(model.encode(sample_texts, device="cpu"), on_cpu)
    assert model.device.type == "cpu"
