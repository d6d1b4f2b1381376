"""The packed forward of MPNet, ModernBERT and the decoders, vs the Hugging Face forward and sentence-transformers."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pytest
import torch
import transformers
from parity_rows import assert_parity
from sentence_transformers import SentenceTransformer
from tiny_archs import SIZES, SPECS, Arch, embedder_conftest, save_tiny_arch

from embedder import EmbeddingModel, encode_loop
from embedder.modules import packed_layout
from embedder.modules.packed import packed_forward, packed_support
from embedder.modules.packed_layout import Layout, attend, length_runs, runs_attention

NEW: tuple[Arch, ...] = ("mpnet", "modernbert", "qwen3", "mistral", "llama")
PAD = {"mpnet": 1}  # MPNet derives positions from its pad id (1); the others pad with 0 here
# Longer than Mistral's window (16) and ModernBERT's local window (8): both band masks cut into the rows.
LENGTHS = [40, 40, 23, 17, 9, 9, 3, 1]
SEQ = max(LENGTHS)


def random_model(arch: Arch) -> Any:
    """A tiny random backbone of `arch` with the test sizes and windows."""
    spec = SPECS[arch]
    model_class = getattr(transformers, spec.model_class)
    config = model_class.config_class(vocab_size=60, **SIZES, pad_token_id=PAD.get(arch, 0), **spec.config)
    torch.manual_seed(0)
    return model_class(config).eval()


def batch(arch: Arch, side: str, *, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Length-sorted random ids (as token batching makes them) and their mask, padded on `side`."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 60, (len(LENGTHS), SEQ), generator=gen)
    mask = (torch.arange(SEQ)[None, :] < torch.tensor(LENGTHS)[:, None]).long()
    if side == "left":
        mask = mask.flip(1)
    return ids.masked_fill(mask == 0, PAD.get(arch, 0)), mask


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("arch", NEW)
def test_packed_rows_equal_each_text_alone(arch: Arch, side: str) -> None:
    model = random_model(arch)
    assert packed_support(model) is None
    ids, mask = batch(arch, side)
    with torch.inference_mode():
        ours = packed_forward(model)(ids, mask)
        padded = model(input_ids=ids, attention_mask=mask)[0]
        for row, n in enumerate(LENGTHS):
            real = mask[row].bool()
            alone = model(
                input_ids=ids[row : row + 1, real], attention_mask=torch.ones(1, n, dtype=torch.long)
            )[0]
            torch.testing.assert_close(ours[row, real], alone[0], atol=2e-6, rtol=1e-5)
            # HF's own padded batch agrees too (RoPE is relative: left padding's shifted positions cancel).
            torch.testing.assert_close(ours[row, real], padded[row, real], atol=2e-6, rtol=1e-5)
            assert not ours[row, ~real].any()  # padding rows hold zeros


@pytest.mark.parametrize("arch", ["mpnet", "qwen3"])
def test_a_mask_with_holes_runs_the_hf_forward(arch: Arch) -> None:
    model = random_model(arch)
    ids, mask = batch(arch, "right")
    mask[0, 5] = 0
    assert not Layout.of(mask).contiguous and Layout.of(batch(arch, "left")[1]).contiguous
    with torch.inference_mode():
        torch.testing.assert_close(
            packed_forward(model)(ids, mask), model(input_ids=ids, attention_mask=mask)[0], atol=0, rtol=0
        )


def test_packed_support_names_what_stops_it() -> None:
    qwen = random_model("qwen3")
    qwen.config._attn_implementation = "flex_attention"
    assert "_attn_implementation='flex_attention'" in packed_support(qwen)
    modern = random_model("modernbert")
    modern.config.layer_types = ["full_attention", "chunked_attention"]
    assert "'chunked_attention'" in packed_support(modern)


@pytest.mark.parametrize("arch", NEW)
def test_default_batching_packs_with_parity(tmp_path, arch: Arch) -> None:
    path = save_tiny_arch(tmp_path / arch, arch)
    ours, theirs = EmbeddingModel(path, device="cpu"), SentenceTransformer(path, device="cpu")
    assert encode_loop.resolve_batching("auto", ours, "sentence_embedding") == "tokens"
    long = " ".join(["the big dog runs in the city"] * 6)  # 42 words: past both sliding windows
    texts = [*embedder_conftest().SAMPLE_TEXTS, long] * 3
    ours.stats.update(texts=0, tokens=0, padded_tokens=0)
    default = ours.encode(texts, batch_size=4)
    assert ours.stats["padded_tokens"] == ours.stats["tokens"]  # the packed forward ran: no padding computed
    assert_parity(default, theirs.encode(texts, batch_size=4))
    off = EmbeddingModel(path, device="cpu", packed=False)
    assert_parity(default, off.encode(texts, batch_size=4, batching="tokens"))


def test_an_architecture_without_a_packed_forward_says_so_once(tmp_path, caplog) -> None:
    from transformers import ElectraConfig, ElectraModel

    helpers = embedder_conftest()
    path = str(tmp_path / "electra")
    helpers.save_tiny_tokenizer(path)
    config = ElectraConfig(
        vocab_size=len(helpers.tiny_vocab()),
        embedding_size=32,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=4,
        intermediate_size=64,
    )
    ElectraModel(config).eval().save_pretrained(path)
    helpers.add_st_files(path)
    with caplog.at_level(logging.INFO, logger="embedder.modules.transformer"):
        model = EmbeddingModel(path, device="cpu")
        texts = helpers.SAMPLE_TEXTS * 2
        vectors = model.encode(texts, batch_size=3, batching="tokens")
    notes = [r.getMessage() for r in caplog.records if "packed" in r.getMessage()]
    info = model.describe()
    assert info["packed"] is False and "ElectraModel" in info["packed_reason"]
    assert len(notes) == 1 and "ElectraModel" in notes[0]
    assert encode_loop.resolve_batching("auto", model, "sentence_embedding") == "sentence-transformers"
    assert_parity(vectors, SentenceTransformer(path, device="cpu").encode(texts, batch_size=3))
    np.testing.assert_array_equal(
        model.encode(texts, batch_size=3), model.encode(texts, batching="sentence-transformers", batch_size=3)
    )


@pytest.mark.parametrize("arch", NEW)
def test_packed_rows_at_bf16_stay_close_to_float32(arch: Arch) -> None:
    # bf16 hidden states take the oneDNN Linears and attend's GEMM path (bf16 GEMMs, fp32 softmax) with each
    # architecture's mask (MPNet's bias, ModernBERT's band, the decoders' causal and sliding windows).
    model = random_model(arch)
    ids, mask = batch(arch, "right")
    with torch.inference_mode():
        want = packed_forward(model)(ids, mask)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = packed_forward(model)(ids, mask)
    real = mask.bool()
    a, b = low[real].float(), want[real]
    cos = torch.nn.functional.cosine_similarity(a, b, dim=-1)
    assert cos.min() > 0.99, arch
    assert not low[~real].any()


@pytest.fixture
def gemm_path(monkeypatch):
    """attend's GEMM path for bf16 on any CPU (emulated bf16 is slow, not wrong), under no_grad as in encode."""
    monkeypatch.setattr(packed_layout, "_onednn_native", lambda dtype: dtype == torch.bfloat16)
    with torch.no_grad():
        yield


@pytest.mark.parametrize("n", [5, 20])  # softmax's bf16-output and fp32-output kernels
def test_a_query_that_sees_no_key_gets_zeros_as_from_sdpa(gemm_path, n: int) -> None:
    q, k, v = (torch.randn(3, 2, n, 4).bfloat16() for _ in range(3))
    mask = torch.ones(n, n, dtype=torch.bool)
    mask[2] = False
    got = attend(q, k, v, 0.5, mask)
    assert not got.isnan().any() and not got[:, :, 2].any() and got[:, :, 3].any()
    bias = torch.zeros(n, n).masked_fill_(~mask, float("-inf"))
    torch.testing.assert_close(attend(q, k, v, 0.5, bias).float(), got.float(), atol=2**-8, rtol=0)


@pytest.mark.parametrize("kind", ["none", "bool", "bias", "causal"])
def test_gemm_attention_attends_as_sdpa_does(gemm_path, kind: str, monkeypatch) -> None:
    # 16 rows a chunk: 5 chunks, the last one short
    monkeypatch.setattr(packed_layout, "SCORE_BUDGET", 16 * 4 * 12 * 12)
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(70, 4, 12, 8, generator=gen) for _ in range(3))
    mask = {
        "bool": torch.rand(12, 12, generator=gen) > 0.3,
        "bias": torch.randn(4, 12, 12, generator=gen),
    }.get(kind)
    mask = None if mask is None else mask.fill_diagonal_(True) if mask.dtype == torch.bool else mask
    causal = kind == "causal"
    want = torch.nn.functional.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, is_causal=causal, scale=0.3
    )
    low = [t.bfloat16() for t in (q, k, v)]
    sdpa = torch.nn.functional.scaled_dot_product_attention(*low, attn_mask=mask, is_causal=causal, scale=0.3)
    got = attend(*low, 0.3, mask, causal)
    assert got.dtype == torch.bfloat16 and got.shape == want.shape and not torch.equal(got, sdpa)
    torch.testing.assert_close(got.float(), want, atol=0.05, rtol=0.02)
    # under compute_precision's autocast too (it must not change the path's dtypes)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(attend(*low, 0.3, mask, causal), got)
    # float32 (the default precision) keeps SDPA itself: bit for bit
    assert torch.equal(attend(q, k, v, 0.3, mask, causal), want)
    # and so do rows of more than ROW_SCORES scores at bf16 (flash: memory linear in length)
    monkeypatch.setattr(packed_layout, "ROW_SCORES", 4 * 12 * 12 - 1)
    assert torch.equal(attend(*low, 0.3, mask, causal), sdpa)


def test_autocast_gives_attend_one_dtype_and_the_gemm_path(gemm_path, monkeypatch) -> None:
    # a decoder under compute_precision: q and k leave its fp32-weighted RMSNorm in fp32, v is bf16
    gen = torch.Generator().manual_seed(7)
    q, k, v = (torch.randn(5, 4, 9, 8, generator=gen) for _ in range(3))
    want = attend(q.bfloat16(), k.bfloat16(), v.bfloat16(), 0.3, causal=True)

    def no_sdpa(*args: Any, **kwargs: Any) -> torch.Tensor:
        raise AssertionError("SDPA called")

    monkeypatch.setattr(packed_layout.F, "scaled_dot_product_attention", no_sdpa)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = attend(q, k, v.bfloat16(), 0.3, causal=True)
    assert got.dtype == torch.bfloat16 and torch.equal(got, want)


def test_gemm_attention_on_packed_views_with_grouped_query_heads(gemm_path) -> None:
    # as the decoders call it: q, k, v are views of one packed projection, 4 query heads share 2 kv heads
    lengths = [20, 20, 7, 33, 33, 33]
    gen = torch.Generator().manual_seed(3)
    proj = torch.randn(sum(lengths), 8, 16, generator=gen)
    q, k, v = proj.bfloat16().split([4, 2, 2], dim=1)
    got = runs_attention(q, k, v, length_runs(lengths), 0.25, causal=True).float()
    start = 0
    for n in lengths:
        qs, ks, vs = (t[start : start + n].float().transpose(0, 1) for t in (q, k, v))
        ks, vs = ks.repeat_interleave(2, dim=0), vs.repeat_interleave(2, dim=0)
        want = torch.nn.functional.scaled_dot_product_attention(qs, ks, vs, is_causal=True, scale=0.25)
        torch.testing.assert_close(
            got[start : start + n], want.transpose(0, 1).reshape(n, -1), atol=0.05, rtol=0.02
        )
        start += n


def test_attention_with_autograd_on_keeps_sdpa(monkeypatch) -> None:
    monkeypatch.setattr(packed_layout, "_onednn_native", lambda dtype: dtype == torch.bfloat16)
    q, k, v = (torch.randn(3, 2, 10, 8).bfloat16().requires_grad_() for _ in range(3))
    got = attend(q, k, v, 0.3)
    assert torch.equal(got, torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=0.3))
    got.sum().backward()
    assert q.grad is not None


@pytest.mark.parametrize("n", [5, 16, 24, 32, 40, 64, 100])
def test_softmax_is_computed_in_fp32_at_every_row_length(n: int) -> None:
    # attend's softmax picks torch's bf16-output or fp32-output kernel by row length (speed); both compute in
    # fp32, so each length gives fp32's softmax rounded once to bf16
    x = torch.randn(3, 2, 7, n, generator=torch.Generator().manual_seed(n)) * 4
    got = packed_layout.softmax(x.bfloat16())
    assert got.dtype == torch.bfloat16
    want = x.bfloat16().float().softmax(-1)
    torch.testing.assert_close(got.float(), want, atol=2**-8, rtol=2**-7)
    assert torch.equal(packed_layout.softmax(x), x.softmax(-1))


def test_attend_keeps_sdpa_where_onednn_does_not_run_the_dtype(monkeypatch) -> None:
    # fp16 on a CPU without AVX512-FP16/AMX-FP16 is emulated: its batched GEMMs ran 5x slower than flash
    gen = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(6, 4, 20, 8, generator=gen).bfloat16() for _ in range(3))
    sdpa = torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=0.3)
    assert packed_layout.onednn_runs(torch.float16) == torch.ops.mkldnn._is_mkldnn_fp16_supported()
    assert not packed_layout.onednn_runs(torch.float32)
    with torch.no_grad():
        monkeypatch.setattr(packed_layout, "_onednn_native", lambda dtype: False)
        assert torch.equal(attend(q, k, v, 0.3), sdpa)
        monkeypatch.setattr(packed_layout, "_onednn_native", lambda dtype: True)
        with torch.backends.mkldnn.flags(enabled=False):
            assert torch.equal(attend(q, k, v, 0.3), sdpa)


def test_bf16_attention_takes_the_gemm_path_up_to_row_scores(gemm_path, monkeypatch) -> None:
    q, k, v = (torch.randn(3, 2, 30, 8).bfloat16() for _ in range(3))

    def no_sdpa(*args: Any, **kwargs: Any) -> torch.Tensor:
        raise AssertionError("SDPA called")

    monkeypatch.setattr(packed_layout.F, "scaled_dot_product_attention", no_sdpa)
    assert attend(q, k, v, 0.3).shape == q.shape
    monkeypatch.setattr(packed_layout, "ROW_SCORES", 2 * 30 * 30 - 1)
    with pytest.raises(AssertionError, match="SDPA called"):
        attend(q, k, v, 0.3)


def test_merge_runs_groups_neighbours_while_the_padding_stays_small(monkeypatch) -> None:
    runs = length_runs([10, 11, 11, 40, 40, 40, 200])
    groups = packed_layout.merge_runs(runs, heads=2)
    assert [r for g in groups for r in g] == runs  # every run once, in order
    # 10 and 11 share a call; so does the run of 40 (2 x (1600 - 100 + 2 x (1600 - 121)) padded scores);
    # padding all six rows to the 200-token one would add ~470,000 scores, past PAD_SCORES
    assert [len(g) for g in groups] == [3, 1]
    monkeypatch.setattr(packed_layout, "PAD_SCORES", -1)
    assert [len(g) for g in packed_layout.merge_runs(runs, heads=2)] == [1, 1, 1, 1]


def test_merged_runs_attend_each_row_on_its_own_tokens(gemm_path, monkeypatch) -> None:
    lengths = [3, 5, 5, 9, 9, 9, 12]
    gen = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(sum(lengths), 4, 8, generator=gen) for _ in range(3))
    runs = length_runs(lengths)
    monkeypatch.setattr(packed_layout, "PAD_SCORES", 1 << 30)
    assert len(packed_layout.merge_runs(runs, heads=4)) == 1
    merged = runs_attention(*(t.bfloat16() for t in (q, k, v)), runs, 0.3).float()
    monkeypatch.setattr(packed_layout, "PAD_SCORES", -1)
    alone = runs_attention(*(t.bfloat16() for t in (q, k, v)), runs, 0.3).float()
    start = 0
    for n in lengths:
        qs, ks, vs = (t[start : start + n].transpose(0, 1) for t in (q, k, v))
        want = torch.nn.functional.scaled_dot_product_attention(qs, ks, vs, scale=0.3).transpose(0, 1)
        for got in (merged, alone):
            torch.testing.assert_close(got[start : start + n], want.reshape(n, -1), atol=0.05, rtol=0.02)
        start += n
    assert not merged.isnan().any()


def test_attend_takes_a_per_row_key_mask(gemm_path) -> None:
    gen = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(5, 2, 7, 8, generator=gen) for _ in range(3))
    keys = (torch.arange(7)[None, :] < torch.tensor([7, 3, 5, 1, 6])[:, None])[:, None, None, :]
    want = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=keys, scale=0.3)
    got = attend(*(t.bfloat16() for t in (q, k, v)), 0.3, keys)
    torch.testing.assert_close(got.float(), want, atol=0.05, rtol=0.02)


@pytest.mark.parametrize("budget", [1 << 20, 2 * 7 * 7 * 2])  # one chunk; chunks of two rows that cut runs
def test_key_runs_hide_each_rows_padding_keys(gemm_path, monkeypatch, budget: int) -> None:
    monkeypatch.setattr(packed_layout, "SCORE_BUDGET", budget)
    gen = torch.Generator().manual_seed(6)
    q, k, v = (torch.randn(6, 2, 7, 8, generator=gen) for _ in range(3))
    key_runs = [(1, 3), (3, 5), (2, 7)]
    lengths = torch.tensor([3, 5, 5, 5, 7, 7])
    keys = (torch.arange(7)[None, :] < lengths[:, None])[:, None, None, :]
    want = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=keys, scale=0.3)
    low = [t.bfloat16() for t in (q, k, v)]
    got = attend(*low, 0.3, key_runs=key_runs)
    torch.testing.assert_close(got.float(), want, atol=0.05, rtol=0.02)
    assert torch.equal(got, attend(*low, 0.3, keys))  # the same scores hidden as by the boolean mask
    # with another mask, or off the GEMM path, the runs become a per-row mask
    causal = torch.ones(7, 7, dtype=torch.bool).tril()
    want = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=keys & causal, scale=0.3)
    torch.testing.assert_close(
        attend(*low, 0.3, causal, key_runs=key_runs).float(), want, atol=0.05, rtol=0.02
    )
    got_causal = attend(*low, 0.3, causal=True, key_runs=key_runs)
    torch.testing.assert_close(got_causal.float(), want, atol=0.05, rtol=0.02)
    bias = torch.randn(2, 7, 7, generator=gen)  # per head, added
    want = torch.nn.functional.scaled_dot_product_attention(
        q, k, v, attn_mask=bias.masked_fill(~keys, float("-inf")), scale=0.3
    )
    torch.testing.assert_close(attend(*low, 0.3, bias, key_runs=key_runs).float(), want, atol=0.05, rtol=0.02)
    with pytest.raises(ValueError, match="key_runs cover 5 rows; q has 6"):
        attend(*low, 0.3, key_runs=[(1, 3), (4, 5)])
    monkeypatch.setattr(packed_layout, "ROW_SCORES", 0)
    torch.testing.assert_close(attend(*low, 0.3, key_runs=key_runs), got, atol=2**-7, rtol=0.02)
    torch.testing.assert_close(
        attend(*low, 0.3, causal=True, key_runs=key_runs), got_causal, atol=2**-7, rtol=0.02
    )


def test_a_row_with_no_keys_in_key_runs_gets_zeros(gemm_path) -> None:
    q, k, v = (torch.randn(3, 2, 5, 4).bfloat16() for _ in range(3))
    got = attend(q, k, v, 0.5, key_runs=[(1, 5), (1, 0), (1, 2)])
    assert not got.isnan().any() and not got[1].any() and got[2].any()
