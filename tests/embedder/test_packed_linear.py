"""The packed forwards' Linear layers: stacked GEMMs, and oneDNN's fused bf16 path on CPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from embedder import EmbeddingModel
from embedder.modules import packed_linear
from embedder.modules.packed_linear import FusedLinears, onednn_bf16, uses_onednn

needs_onednn = pytest.mark.skipif(not onednn_bf16(), reason="this CPU/torch has no native oneDNN bf16 GEMM")


def linears(*shapes: tuple[int, int], seed: int = 0) -> list[torch.nn.Linear]:
    torch.manual_seed(seed)
    return [torch.nn.Linear(i, o) for i, o in shapes]


def test_stacked_linears_give_each_linear_side_by_side():
    q, k, v = linears((16, 8), (16, 8), (16, 4))
    x = torch.randn(5, 16)
    with torch.no_grad():
        out = FusedLinears()("qkv", x, q, k, v)
        want = torch.cat([q(x), k(x), v(x)], dim=1)
    assert out.shape == (5, 20)
    torch.testing.assert_close(out, want, rtol=0, atol=1e-6)


def test_float32_single_linear_is_the_hf_module_then_gelu_then_add_bit_for_bit():
    (dense,) = linears((16, 32))
    x, r = torch.randn(7, 16), torch.randn(7, 32)
    cache = FusedLinears()
    with torch.no_grad():
        assert torch.equal(cache("a", x, dense, post="gelu"), F.gelu(dense(x)))
        assert torch.equal(cache("b", x, dense, residual=r), dense(x) + r)
    assert cache._cache == {}  # float32 keeps no weight copies


def test_bad_post_lists_the_choices():
    (dense,) = linears((4, 4))
    with pytest.raises(ValueError, match=r"post 'relu' is not one of \('none', 'gelu'\)"):
        FusedLinears()("a", torch.randn(2, 4), dense, post="relu")


@needs_onednn
def test_bf16_on_cpu_takes_onednn_with_fused_gelu_and_add_at_least_as_close_to_float32():
    up, down = linears((64, 256), (256, 64))
    x = torch.randn(300, 64)
    with torch.no_grad():
        want_h = F.gelu(up(x))
        want = down(want_h) + x
        xb = x.bfloat16()
        assert uses_onednn(xb)
        cache = FusedLinears()
        h = cache("up", xb, up, post="gelu")
        out = cache("down", h, down, residual=xb)
        assert all(w.is_mkldnn for _, w, _ in cache._cache.values())  # prepacked, so it really ran there
        assert h.dtype == out.dtype == torch.bfloat16
        # The same layers through plain bf16 ops (F.linear, then GELU, then the add) for comparison.
        plain_h = F.gelu(F.linear(xb, up.weight.bfloat16(), up.bias.bfloat16()))
        plain = F.linear(plain_h, down.weight.bfloat16(), down.bias.bfloat16()) + xb
    err = (out.float() - want).abs().max().item()
    plain_err = (plain.float() - want).abs().max().item()
    assert err < 0.1 and err <= 1.5 * plain_err
    assert (h.float() - want_h).abs().max().item() < 0.05


@needs_onednn
def test_onednn_cache_follows_weights_written_in_place():
    (dense,) = linears((32, 32))
    x = torch.randn(4, 32).bfloat16()
    cache = FusedLinears()
    with torch.no_grad():
        before = cache("a", x, dense)
        dense.weight.mul_(2)
        after = cache("a", x, dense)
    torch.testing.assert_close(
        after.float(), 2 * before.float() - dense.bias.bfloat16().float(), atol=0.1, rtol=0.02
    )


@pytest.mark.filterwarnings("ignore:TF32 acceleration")
def test_onednn_only_for_bf16_inference_on_cpu(monkeypatch):
    monkeypatch.setattr(packed_linear, "onednn_bf16", lambda: True)
    x = torch.randn(2, 4)
    with torch.no_grad():
        assert uses_onednn(x.bfloat16())
        assert not uses_onednn(x)  # float32: the HF module itself
        assert not uses_onednn(x.half())
    assert not uses_onednn(x.bfloat16())  # autograd on: oneDNN's fused ops have no backward
    with torch.no_grad(), torch.backends.mkldnn.flags(enabled=False):
        assert not uses_onednn(x.bfloat16())


def test_packed_bert_at_bf16_agrees_with_and_without_onednn(tiny_bert_dir, sample_texts, monkeypatch):
    model = EmbeddingModel(tiny_bert_dir("bert", st=True), device="cpu", compute_precision="bfloat16")
    texts = [t for t in sample_texts if t]
    fused = model.encode(texts, batching="tokens", normalize_embeddings=True)
    monkeypatch.setattr(packed_linear, "uses_onednn", lambda x: False)
    plain = model.encode(texts, batching="tokens", normalize_embeddings=True)
    assert np.min((fused * plain).sum(axis=1)) >= 0.999


def test_cache_follows_biases_and_takes_inference_tensors():
    q, k = linears((8, 4), (8, 4))
    x = torch.randn(3, 8)
    cache = FusedLinears()
    with torch.no_grad():
        before = cache("qk", x, q, k)
        k.bias.add_(1)
        torch.testing.assert_close(cache("qk", x, q, k), before + torch.cat([torch.zeros(4), torch.ones(4)]))
    with torch.inference_mode():  # weights made here keep no version counter
        frozen = linears((8, 4), (8, 4), seed=1)
        torch.testing.assert_close(FusedLinears()("qk", x, *frozen), torch.cat([m(x) for m in frozen], dim=1))
