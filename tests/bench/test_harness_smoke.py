"""Smoke tests of the benchmark harness's pure pieces: FLOP counting, padding, parity, tables, run plan."""

from __future__ import annotations

import numpy as np
import pytest

from bench import metrics, report
from bench.corpus import repeat_rows
from bench.harness import parse_args, plan_runs
from bench.limits import compute_bound, layer_gemm_shapes
from bench.sampler import ProcRecord, work_processes

MINILM = {"hidden_size": 384, "intermediate_size": 1536, "num_hidden_layers": 6}


def test_flops_per_token_counts_linear_layers_and_token_weighted_attention():
    # One text of 100 tokens: per layer 2*(4h^2 + 2hi) + 4*100*h.
    per_layer = 2 * (4 * 384 * 384 + 2 * 384 * 1536) + 4 * 100 * 384
    assert metrics.flops_per_token(MINILM, [100]) == pytest.approx(6 * per_layer)
    # Attention is weighted by tokens: (10*10 + 90*90) / 100 = 82 tokens of context on average.
    assert metrics.flops_per_token(MINILM, [10, 90]) == pytest.approx(
        6 * (per_layer - 4 * 100 * 384 + 4 * 82 * 384)
    )
    with pytest.raises(ValueError, match="non-empty"):
        metrics.flops_per_token(MINILM, [])


def test_layer_gemm_shapes_add_up_to_the_linear_flops():
    flops = sum(metrics.gemm_flops(*s) for s in layer_gemm_shapes(7, 384, 1536))
    assert flops == 7 * metrics.layer_flops_per_token(384, 1536)
    assert compute_bound(69.0, 23e6) == pytest.approx(3000, rel=1e-3)


def test_st_batches_sort_by_characters_and_padding_follows_tokens():
    chars = [5, 50, 10, 40]
    tokens = [3, 20, 9, 4]  # text 3 is long in characters but short in tokens
    batches = metrics.st_batches(chars, batch_size=2)
    assert [list(b) for b in batches] == [[1, 3], [2, 0]]
    assert metrics.padded_tokens(tokens, batches) == 2 * 20 + 2 * 9
    assert metrics.padding_efficiency(36, 58) == pytest.approx(36 / 58)
    # Chunked (pool / Ray batches): each chunk sorted on its own.
    assert [list(b) for b in metrics.st_batches(chars, 2, chunk_size=2)] == [[1, 0], [3, 2]]


def test_parity_and_align_rows():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4, 8)).astype(np.float32)
    p = metrics.parity(a + 1e-7, a)
    assert p["min_cosine"] > 0.999999 and p["max_abs_diff"] < 1e-6
    assert metrics.parity(-a, a)["min_cosine"] == pytest.approx(-1.0)
    assert np.array_equal(metrics.align_rows(["b", "a"], a[:2], ["a", "b"]), a[[1, 0]])
    with pytest.raises(ValueError, match="1 ids missing"):
        metrics.align_rows(["a"], a[:1], ["a", "z"])
    with pytest.raises(ValueError, match="shapes differ"):
        metrics.parity(a, a[:2])


def test_repeat_rows_makes_ids_unique():
    ids, texts = repeat_rows(["x", "y"], ["t1", "t2"], 3)
    assert len(set(ids)) == 6 and texts == ["t1", "t2"] * 3


def test_work_processes_picks_ray_actors_not_services():
    procs = [
        ProcRecord(1, "python -m bench.systems", 100),
        ProcRecord(2, "ray::IDLE", 500),
        ProcRecord(3, "ray::MapWorker(MapBatches(STEmbedder))", 400),
        ProcRecord(4, "ray::_StatsActor", 900),
        ProcRecord(5, "ray::ShardWorker.process", 300),
        ProcRecord(6, "/x/raylet --foo", 50),
    ]
    assert [p.pid for p in work_processes(procs, 1, "self")] == [1]
    assert [p.pid for p in work_processes(procs, 1, "ray", 2)] == [3, 5]
    assert [p.pid for p in work_processes(procs, 1, "tree")] == [1]
    with pytest.raises(ValueError, match="'bogus'"):
        work_processes(procs, 1, "bogus")


def test_report_tables_and_doc_splice():
    table = report.markdown_table(("a", "b"), [("x", "1")])
    assert table.splitlines()[1] == "| :--- | ---: |"
    doc = report.splice_generated("# Perf\n\nhand text\n", "T1")
    assert "hand text" in doc and "T1" in doc
    again = report.splice_generated(doc, "T2")
    assert "T2" in again and "T1" not in again and again.count(report.START_MARK) == 1
    row = {
        "label": "s",
        "texts_s": 10.0,
        "tokens_s": 100.0,
        "pad_eff": 0.5,
        "rss_mib": 10.0,
        "ratio": 1.0,
        "bound_frac": 0.1,
        "min_cos": 1.0,
        "wall_s": 1.0,
        "other_load": 0.0,
        "pad_estimated": True,
    }
    assert "50.0% (est.)" in report.main_table([row])


def test_plan_runs_filters_and_keeps_the_reference():
    a = parse_args(["--only", "ours_b32"])
    keys = [r.key for r in plan_runs(a, 64)]
    assert keys == ["st_b32", "ours_b32"]
    assert "ST encode b64" in [r.label for r in plan_runs(parse_args([]), 64)]


def test_paired_variant_specs_are_checked_before_loading_models():
    from bench.paired import build_variants

    with pytest.raises(ValueError, match="'bogus:1'"):
        build_variants(["bogus:1"])
    with pytest.raises(ValueError, match="'st'"):
        build_variants(["st"])


def test_overhead_text_reports_each_round_and_the_medians():
    from bench.summary import overhead_text

    steps = {"import_s": 1.0, "load_s": 1.0, "read_s": 0.1, "encode_s": 8.0, "write_s": 0.1}
    rounds = [
        {"job_s": 11.0, "plain_s": 10.0, "plain_steps": steps, "job_work_s": 8.8},
        {"job_s": 12.0, "plain_s": 10.0, "plain_steps": steps, "job_work_s": 9.6},
    ]
    for r in rounds:
        r.update(
            ratio=r["job_s"] / r["plain_s"],
            ratio_to_encode=r["job_s"] / 8.0,
            work_ratio=r["job_work_s"] / 8.0,
        )
    res = {"rounds": rounds, "ratio_median": 1.15, "ratio_to_encode_median": 1.44, "work_ratio_median": 1.15}
    text = overhead_text(res, 4000)
    assert "4,000 texts" in text and "**1.15×**" in text
    assert "| 2 | 12.0 | 10.0 | 2.0 | 8.0 | 9.6 | 1.20× | 1.50× | 1.20× |" in text


def test_cosine_stats_and_top_k_overlap():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(40, 8))
    same = metrics.cosine_stats(ref * 3.0, ref)
    assert same["min_cosine"] == pytest.approx(1.0) and same["mean_cosine"] == pytest.approx(1.0)
    assert metrics.top_k_overlap(ref * 3.0, ref, k=5) == 1.0
    flipped = metrics.cosine_stats(-ref, ref)
    assert flipped["min_cosine"] == pytest.approx(-1.0)
    noisy = ref + rng.normal(scale=0.5, size=ref.shape)
    overlap = metrics.top_k_overlap(noisy, ref, k=5)
    assert 0.0 < overlap < 1.0
    neighbours = metrics.top_k_neighbours(ref, 3)
    assert neighbours.shape == (40, 3) and not (neighbours == np.arange(40)[:, None]).any()
    with pytest.raises(ValueError, match="k must be between 1 and 39"):
        metrics.top_k_neighbours(ref, 40)


def test_bf16_paths_settings_switch_each_part_and_restore_it():
    from bench.bf16_paths import setting
    from embedder.modules import packed_layout, packed_linear

    before = packed_linear.uses_onednn, packed_layout.ROW_SCORES
    with setting(False, False):
        assert packed_linear.uses_onednn is not before[0] and packed_layout.ROW_SCORES == 0
    with setting(True, False):
        assert packed_linear.uses_onednn is before[0] and packed_layout.ROW_SCORES == 0
    assert (packed_linear.uses_onednn, packed_layout.ROW_SCORES) == before
