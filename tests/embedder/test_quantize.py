"""quantize_embeddings matches sentence-transformers' quantize_embeddings bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sentence_transformers.util import quantize_embeddings as st_quantize

from embedder import quantize_embeddings
from embedder.quantize import PRECISIONS, quantization_ranges


@pytest.fixture
def emb() -> np.ndarray:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 37)).astype(np.float32)
    x[:, 5] = 0.25  # a constant dimension (zero spread)
    x[3, 7] = 0.0  # exactly zero: not > 0, so a 0 bit
    return x


@pytest.mark.parametrize("precision", PRECISIONS)
def test_matches_sentence_transformers(emb: np.ndarray, precision: str) -> None:
    ours = quantize_embeddings(emb, precision)
    theirs = st_quantize(emb, precision)
    assert ours.dtype == theirs.dtype
    np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize("precision", ["int8", "uint8"])
def test_ranges_and_calibration_match(emb: np.ndarray, precision: str) -> None:
    calib = np.random.default_rng(1).normal(size=(200, 37)).astype(np.float32)
    np.testing.assert_array_equal(
        quantize_embeddings(emb, precision, calibration_embeddings=calib),
        st_quantize(emb, precision, calibration_embeddings=calib),
    )
    ranges = quantization_ranges(calib)
    np.testing.assert_array_equal(
        quantize_embeddings(emb, precision, ranges=ranges), st_quantize(emb, precision, ranges=ranges)
    )
    # Values outside the calibration range clip to the end buckets.
    q = quantize_embeddings(emb * 100, precision, ranges=ranges)
    assert q.min() == (0 if precision == "uint8" else -128) and q.max() == (
        255 if precision == "uint8" else 127
    )


def test_torch_and_bfloat16_inputs(emb: np.ndarray) -> None:
    t = torch.from_numpy(emb)
    np.testing.assert_array_equal(quantize_embeddings(t, "int8"), st_quantize(emb, "int8"))
    bf = t.to(torch.bfloat16)
    np.testing.assert_array_equal(
        quantize_embeddings(bf, "ubinary"), st_quantize(bf.float().numpy(), "ubinary")
    )


def test_binary_shapes_and_bits() -> None:
    x = np.array([[1, -1, 0, 2, 3, -3, 0.5, -0.5, 1]], dtype=np.float32)
    ub = quantize_embeddings(np.vstack([x, -x]), "ubinary")
    assert ub.shape == (2, 2) and ub.dtype == np.uint8
    assert ub[0, 0] == 0b10011010 and ub[0, 1] == 0b10000000
    b = quantize_embeddings(np.vstack([x, -x]), "binary")
    np.testing.assert_array_equal(b.astype(np.int16), ub.astype(np.int16) - 128)


def test_errors(emb: np.ndarray) -> None:
    with pytest.raises(ValueError, match=r"'int4'.*float32"):
        quantize_embeddings(emb, "int4")
    with pytest.raises(ValueError, match="1 embedding"):
        quantize_embeddings(emb[:1], "int8")
    with pytest.raises(ValueError, match="must be float"):
        quantize_embeddings(emb.astype(np.int8), "binary")
    with pytest.raises(ValueError, match=r"shape \(2, 37\)"):
        quantize_embeddings(emb, "uint8", ranges=np.zeros((2, 3)))
