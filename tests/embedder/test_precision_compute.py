"""compute_precision: bf16/fp16 autocast on the packed and padded forwards, float32 untouched, CPU features."""

from __future__ import annotations

import warnings
from typing import get_args

import numpy as np
import pytest
import torch

from embedder import EmbeddingModel
from embedder.compute_precision import (
    COMPUTE_PRECISIONS,
    compute_context,
    unsupported_reason,
    warn_if_emulated,
)
from embedder.cpu import CpuFeatures, parse_cpuinfo
from embedder.encode_loop import resolve_batching

# Abridged /proc/cpuinfo entries: a Sapphire Rapids (AMX), an EPYC with AVX512_BF16 and an old AVX2-only part.
SPR = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse2 avx avx2 avx512f avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8 avx512_fp16

processor\t: 1
model name\t: ignored second entry
flags\t\t: fpu
"""
EPYC = "cpu family\t: 25\nmodel\t\t: 17\nmodel name\t: AMD EPYC 9654\nflags\t\t: fpu avx2 avx512f avx512_vnni avx512_bf16\n"
OLD = "model name\t: Intel(R) Xeon(R) CPU E5-2680 v4\nflags\t\t: fpu avx avx2 fma\n"
ARM = "processor\t: 0\nFeatures\t: fp asimd bf16 i8mm\nCPU part\t: 0xd40\n"


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(axis=1)


@pytest.fixture
def st_dir(tiny_bert_dir) -> str:
    return tiny_bert_dir("bert", st=True, hidden_size=64, num_heads=4, num_layers=2)


@pytest.mark.parametrize("batching", ["tokens", "sentence-transformers"])
@pytest.mark.parametrize("value", ["bfloat16", "float16"])
def test_reduced_precision_runs_close_to_float32_on_both_forwards(st_dir, sample_texts, batching, value):
    texts = [t for t in sample_texts if t] * 3
    fp32 = EmbeddingModel(st_dir, device="cpu").encode(texts, batching=batching)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # fp16 is emulated on most CPUs: slow, still valid
        model = EmbeddingModel(st_dir, device="cpu", compute_precision=value)
    low = model.encode(texts, batching=batching)
    assert low.dtype == np.float32 and low.shape == fp32.shape
    assert cosines(low, fp32).min() >= 0.99
    # It really ran in the lower precision: at float32 the two agree to ~2e-7.
    assert np.abs(low - fp32).max() > 5e-6
    assert all(p.dtype == torch.float32 for p in model.parameters())  # weights are not cast


def test_packed_and_padded_forwards_agree_at_bfloat16(st_dir, sample_texts):
    model = EmbeddingModel(st_dir, device="cpu", compute_precision="bfloat16")
    texts = [t for t in sample_texts if t]
    packed = model.encode(texts, batching="tokens")
    padded = model.encode(texts, batching="sentence-transformers")
    assert cosines(packed, padded).min() >= 0.999


def test_float32_is_bit_for_bit_unchanged(st_dir, sample_texts):
    plain = EmbeddingModel(st_dir, device="cpu")
    named = EmbeddingModel(st_dir, device="cpu", compute_precision="float32")
    for batching in ("auto", "tokens", "sentence-transformers"):
        a = plain.encode(sample_texts, batching=batching)
        b = named.encode(sample_texts, batching=batching)
        assert np.array_equal(a, b), batching
    # Left out at the default, so settings fingerprints of outputs made before the option still match.
    assert "compute_precision" not in plain.describe()


def test_layer_norm_output_stays_float32_under_bfloat16(st_dir, sample_texts):
    model = EmbeddingModel(st_dir, device="cpu", compute_precision="bfloat16")
    seen: list[torch.dtype] = []
    model[0].register_forward_hook(lambda m, i, out: seen.append(out["token_embeddings"].dtype))
    model.encode(sample_texts, batching="tokens")
    model.encode(sample_texts, batching="sentence-transformers")
    assert seen and set(seen) == {torch.float32}


def test_bad_value_lists_the_choices(st_dir):
    with pytest.raises(ValueError, match=r"compute_precision 'bf16' is not supported; valid: \('float32'"):
        EmbeddingModel(st_dir, device="cpu", compute_precision="bf16")
    model = EmbeddingModel(st_dir, device="cpu")
    with pytest.raises(ValueError, match="'int8-dynamic'.*'bfloat16'"):
        model.compute_precision = "int8-dynamic"
    assert model.compute_precision == "float32"


def test_auto_batching_takes_the_packed_path_at_reduced_precision(st_dir):
    model = EmbeddingModel(st_dir, device="cpu")
    assert resolve_batching("auto", model, "sentence_embedding", compute_precision="bfloat16") == "tokens"
    assert resolve_batching("auto", model, "sentence_embedding", "int8", compute_precision="bfloat16") == (
        "sentence-transformers"
    )
    assert resolve_batching("auto", model, "token_embeddings", compute_precision="bfloat16") == (
        "sentence-transformers"
    )


def test_describe_records_the_compute_precision(st_dir):
    model = EmbeddingModel(st_dir, device="cpu", compute_precision="bfloat16")
    assert model.describe()["compute_precision"] == "bfloat16"
    assert model.describe()["dtype"] == "float32"


def test_compute_context_is_autocast_only_below_float32():
    cpu = torch.device("cpu")
    with compute_context("float32", cpu):
        assert not torch.is_autocast_enabled("cpu")
    with compute_context("bfloat16", cpu):
        assert torch.is_autocast_enabled("cpu")
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16
        assert (torch.ones(4, 4) @ torch.ones(4, 4)).dtype == torch.bfloat16


def test_packed_forward_sees_the_autocast_dtype():
    from embedder.modules.packed_bert import matmul_dtype

    x = torch.ones(2, 2)
    assert matmul_dtype(x) == torch.float32
    with compute_context("bfloat16", torch.device("cpu")):
        assert matmul_dtype(x) == torch.bfloat16
        assert torch.nn.functional.linear(x, torch.ones(2, 2)).dtype == matmul_dtype(x)


def test_cpu_features_from_cpuinfo_text():
    spr = parse_cpuinfo(SPR)
    assert spr.model_name == "Intel(R) Xeon(R) Platinum 8480+"
    assert spr.native_bf16 and spr.native_int8 and spr.amx
    assert "amx_int8" in spr.flags and "fpu" in spr.flags
    epyc = parse_cpuinfo(EPYC)
    assert (epyc.native_bf16, epyc.native_int8, epyc.amx) == (True, True, False)
    assert "native bf16: yes" in epyc.summary() and "avx512_bf16" in epyc.summary()
    assert epyc.summary().startswith("AMD EPYC 9654 (family 25, model 17); ")
    power = parse_cpuinfo("cpu\t\t: POWER9\nmodel\t\t: 2.2 (pvr 004e 1202)\n")
    assert power.name == "unknown CPU"  # POWER's "model" is text, not x86's number
    old = parse_cpuinfo(OLD)
    assert (old.native_bf16, old.native_int8) == (False, False)
    assert "native bf16: no" in old.summary()
    arm = parse_cpuinfo(ARM)
    assert arm.model_name == "unknown CPU" and not arm.cpuid and "bf16" in arm.flags and not arm.native_bf16


def test_emulated_bfloat16_warns_and_names_the_missing_flags():
    cpu = torch.device("cpu")
    old = parse_cpuinfo(OLD)
    reason = unsupported_reason("bfloat16", cpu, old)
    assert reason is not None and "E5-2680" in reason and "avx512_bf16" in reason
    with pytest.warns(RuntimeWarning, match="compute_precision 'bfloat16'.*emulated"):
        warn_if_emulated("bfloat16", cpu, old)
    assert unsupported_reason("bfloat16", cpu, parse_cpuinfo(EPYC)) is None
    assert unsupported_reason("float16", cpu, parse_cpuinfo(EPYC)) is not None
    assert unsupported_reason("float16", cpu, parse_cpuinfo(SPR)) is None
    assert unsupported_reason("float32", cpu, CpuFeatures("x", frozenset())) is None


def test_job_spec_offers_the_same_choices():
    from jobs.spec import ComputePrecision

    assert get_args(ComputePrecision) == COMPUTE_PRECISIONS
