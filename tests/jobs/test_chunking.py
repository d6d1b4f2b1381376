"""Chunking: token windows, rows per window or per document, chunk-level reuse, and the truncation counts."""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from embedder.chunking import Chunker, pool_chunks, split_windows, token_spans
from jobs.spec import JobSpec, SpecError

MAX_TOKENS, OVERLAP, PROMPT = 12, 3, "query: "
# Words of the tiny models' vocabulary (tests/embedder/conftest.py).
WORDS = "the cat dog bird road house tree river city sky sun moon star rain snow wind run walk read".split()


def long_text(n: int, seed: int) -> str:
    """n words of the tiny vocabulary, with a few suffixed ones (several tokens each)."""
    rng = np.random.default_rng(seed)
    picked = [str(rng.choice(WORDS)) for _ in range(n)]
    return " ".join(w + "ing" if k % 7 == 3 else w for k, w in enumerate(picked))


@pytest.fixture(scope="module")
def model(tiny_st_model):
    from embedder import EmbeddingModel

    return EmbeddingModel(tiny_st_model, device="cpu")


def test_token_spans_cover_every_token_with_the_overlap():
    offsets = [(2 * k, 2 * k + 1) for k in range(10)]  # one-letter words: every token starts a word
    assert token_spans(10, offsets, 4, 1) == [(0, 4), (3, 7), (6, 10)]
    assert token_spans(3, offsets[:3], 4, 1) == [(0, 3)]
    with pytest.raises(ValueError, match="overlap 4 must be >= 0 and < the 4 text tokens"):
        token_spans(10, offsets, 4, 4)


def test_window_edges_move_to_word_starts():
    # "ab cd ef gh": tokens a|b c|d e|f g|h, where b, d, f, h continue a word
    offsets = [(3 * (k // 2) + k % 2, 3 * (k // 2) + k % 2 + 1) for k in range(8)]
    assert token_spans(8, offsets, 5, 0) == [(0, 4), (4, 8)]
    assert token_spans(8, offsets, 5, 1) == [(0, 4), (4, 8)]  # the overlap would start inside "cd"


def test_windows_fit_the_limit_cover_the_text_and_map_back(model):
    chunker = Chunker(model[0].tokenizer, MAX_TOKENS, OVERLAP, PROMPT)
    assert chunker.overhead == 4  # [CLS] query : [SEP]
    texts = [long_text(n, seed) for seed, n in enumerate((30, 47, 5, 8))]
    texts.append("  hello world  ")
    assert chunker.split([]) == [] and chunker.count([]) == []  # a batch whose rows were all quarantined
    offsets = model[0].tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)[
        "offset_mapping"
    ]
    for text, windows, offs in zip(texts, chunker.split(texts), offsets, strict=True):
        if len(offs) + chunker.overhead <= MAX_TOKENS:
            assert [(w.start, w.end) for w in windows] == [(0, len(text))]  # a text that fits is one window
            continue
        assert len(windows) > 1
        counts = chunker.count([text[w.start : w.end] for w in windows])
        assert max(counts) <= MAX_TOKENS  # prompt and special tokens included: nothing is cut
        for w in windows:
            assert (
                0 <= w.start < w.end <= len(text) and text[w.start : w.end].strip() == text[w.start : w.end]
            )
        for s, e in offs:  # every token of the text lies in a window
            assert any(w.start <= s and e <= w.end for w in windows), (s, e)
        for a, b in zip(windows, windows[1:], strict=False):
            shared = sum(1 for s, e in offs if b.start <= s and e <= a.end)
            assert 0 < shared <= OVERLAP and a.start < b.start


def test_split_windows_shrinks_a_window_whose_text_tokenises_longer():
    text = "abcdef"
    offsets = [(k, k + 1) for k in range(6)]
    # The window's text counts one token more on its own than its tokens did in the whole text.
    windows = split_windows(text, offsets, 5, 2, 0, lambda ts: [len(t) + 2 + (len(t) > 2) for t in ts])
    assert all(len(text[w.start : w.end]) + 2 + (w.end - w.start > 2) <= 5 for w in windows)
    assert "".join(text[w.start : w.end] for w in windows) == text
    with pytest.raises(ValueError, match="chunking.max_tokens: 3 tokens leave no room"):
        split_windows(text, offsets, 3, 3, 0, lambda ts: [9] * len(ts))


def test_pool_chunks_is_the_token_weighted_mean():
    v = np.array([[1.0, 0.0], [0.0, 2.0]], np.float32)
    assert np.allclose(pool_chunks(v, [3, 1], normalize=False), [0.75, 0.5])
    assert np.allclose(pool_chunks(v, [3, 1], normalize=True), np.array([0.75, 0.5]) / np.hypot(0.75, 0.5))


def test_spec_section_flags_and_errors(tmp_path):
    from jobs.cli import build_parser
    from jobs.flags import load_spec
    from jobs.rows import default_max_chars

    base = {"model": "m", "input": {"uri": "in"}, "output": {"uri": "out"}}
    assert JobSpec.from_dict(base).chunking.enabled is False
    assert default_max_chars(32) == 8192 and default_max_chars(32, chunking=True) is None  # no text is cut
    assert JobSpec.from_dict({**base, "chunking": None}).chunking.enabled is True
    args = build_parser().parse_args(
        ["run", "--model", "m", "--input", "in", "--output", "out", "--chunk-tokens", "64", "--chunk-overlap", "8",
         "--chunk-emit", "both"]
    )  # fmt: skip
    ch = load_spec(args).chunking
    assert (ch.enabled, ch.max_tokens, ch.overlap, ch.emit) == (True, 64, 8, "both")
    with pytest.raises(
        SpecError, match=r"chunking.overlap: 8 tokens must be fewer than chunking.max_tokens \(8\)"
    ):
        JobSpec.from_dict({**base, "chunking": {"max_tokens": 8, "overlap": 8}})
    with pytest.raises(
        SpecError, match=r"chunking.emit: 'rows' is not one of \['chunks', 'documents', 'both'\]"
    ):
        JobSpec.from_dict({**base, "chunking": {"emit": "rows"}})
    with pytest.raises(SpecError, match="chunking.max_tokens: must be >= 2, got 1"):
        JobSpec.from_dict({**base, "chunking": {"max_tokens": 1}})
    with pytest.raises(SpecError, match="input.passthrough: 'chunk' clashes with a chunk column"):
        JobSpec.from_dict({**base, "input": {"uri": "in", "passthrough": ["chunk"]}, "chunking": {}})
    live = {**base, "output": {"uri": "t.lance"}, "previous": "t.lance", "chunking": {"emit": "both"}}
    with pytest.raises(SpecError, match="chunking.emit: 'both' rows cannot update a live Lance table"):
        JobSpec.from_dict(live)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--chunk-emit", "rows"])


def write_docs(folder, docs: dict[int, str | None]) -> str:
    """docs {i: text} as ids doc-<i> in one Parquet file of several row groups."""
    os.makedirs(folder, exist_ok=True)
    ids = sorted(docs)
    table = pa.table({"id": [f"doc-{i}" for i in ids], "text": [docs[i] for i in ids]})
    pq.write_table(table, os.path.join(folder, "docs.parquet"), row_group_size=4)
    return str(folder)


def corpus_docs(n: int = 10) -> dict[int, str]:
    """Long and short documents: some fit one window, most need several."""
    return {i: long_text(4 if i % 4 == 0 else 20 + 3 * i, seed=100 + i) for i in range(n)}


def chunk_spec(jobkit, model_path, inp, out, emit, **sections):
    chunking = {"max_tokens": MAX_TOKENS, "overlap": OVERLAP, "emit": emit}
    return jobkit.job_spec(model_path, inp, out, chunking=chunking, **sections)


def read_rows(out: str) -> pa.Table:
    if out.endswith(".lance"):
        import lance

        return lance.dataset(out).to_table()
    return pq.read_table(out)


def expected(model, texts: dict[int, str], normalize: bool = False):
    """{id: [(char_start, char_end, text tokens)]} and the oracle's float32 vectors of every window text."""
    chunker = Chunker(model[0].tokenizer, MAX_TOKENS, OVERLAP, None)
    ids = sorted(texts)
    windows = dict(zip(ids, chunker.split([texts[i] for i in ids]), strict=True))
    return windows


@pytest.mark.parametrize("emit", ["chunks", "documents", "both"])
def test_chunked_job_rows_equal_encode_of_the_windows(
    tmp_path, tiny_st_model, model, jobkit, ray_session, emit
):
    """Every window row is EmbeddingModel.encode of its text; a document row is the token-weighted mean."""
    from jobs import run_job

    docs = corpus_docs()
    inp = write_docs(tmp_path / "in", docs)
    out = str(tmp_path / "out")
    spec = chunk_spec(jobkit, tiny_st_model, inp, out, emit, model={"normalize": True})
    summary = run_job(spec, progress=False, keep_warm=True)
    windows = expected(model, docs)
    n_windows = sum(len(w) for w in windows.values())
    assert n_windows > 2 * len(docs)  # the corpus does split
    table = read_rows(out)
    ids = table.column("id").to_pylist()
    vectors = jobkit.vectors(table)
    if emit == "documents":
        assert table.column_names == ["id", "embedding", "text_hash"] and len(ids) == len(docs)
        chunk = [None] * len(ids)
    else:
        chunk = table.column("chunk").to_pylist()
        starts, ends = table.column("char_start").to_pylist(), table.column("char_end").to_pylist()
    for k, (doc_id, c) in enumerate(zip(ids, chunk, strict=True)):
        i = int(doc_id.split("-")[1])
        wins = windows[i]
        want_vectors = model.encode([docs[i][w.start : w.end] for w in wins], normalize_embeddings=True)
        if c is None:
            want = pool_chunks(want_vectors, [w.tokens for w in wins], normalize=True)
            if len(wins) == 1:  # a text that fits: its vector is the unchunked one
                assert np.allclose(want, model.encode([docs[i]], normalize_embeddings=True)[0], atol=1e-6)
        else:
            assert (starts[k], ends[k]) == (wins[c].start, wins[c].end)
            want = want_vectors[c]
        cos = float(vectors[k] @ want / np.linalg.norm(vectors[k]) / np.linalg.norm(want))
        assert cos >= 0.99999 and np.abs(vectors[k] - want).max() <= 1e-4, (doc_id, c)
    rows = {"chunks": n_windows, "documents": len(docs), "both": n_windows + len(docs)}[emit]
    assert len(ids) == rows == summary["rows_written"]
    assert summary["embedded"] == n_windows and summary["reused"] == 0
    assert summary["documents"] == summary["total"]["documents"] == len(docs)
    assert summary["chunks"] == n_windows
    done = json.load(open(os.path.join(out, ".embedjob", "_SUCCESS")))
    assert (done["documents"], done["chunks"], done["rows_written"]) == (len(docs), n_windows, rows)


def test_chunks_on_lance_and_search_names_the_window(tmp_path, tiny_st_model, model, jobkit, ray_session):
    from jobs import run_job
    from jobs.search import search

    docs = corpus_docs(8)
    inp = write_docs(tmp_path / "in", docs)
    out = str(tmp_path / "out.lance")
    run_job(chunk_spec(jobkit, tiny_st_model, inp, out, "both"), progress=False, keep_warm=True)
    table = read_rows(out)
    windows = expected(model, docs)
    assert table.num_rows == len(docs) + sum(len(w) for w in windows.values())
    # A window's own text finds that window first.
    i, c = 5, 1
    w = windows[i][c]
    hits = search(out, docs[i][w.start : w.end], k=3)
    assert (hits[0]["id"], hits[0]["chunk"]) == (f"doc-{i}", c)
    assert (hits[0]["char_start"], hits[0]["char_end"]) == (w.start, w.end)


def test_search_on_parquet_chunks(tmp_path, tiny_st_model, model, jobkit, ray_session, capsys):
    from jobs import run_job
    from jobs.cli import main

    docs = corpus_docs(8)
    out = str(tmp_path / "out")
    run_job(
        chunk_spec(jobkit, tiny_st_model, write_docs(tmp_path / "in", docs), out, "chunks"), progress=False
    )
    w = expected(model, docs)[6][2]
    assert main(["search", out, docs[6][w.start : w.end], "-k", "2"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.split()[2:] == ["doc-6", "chunk", "2", f"[{w.start}:{w.end}]"]


def test_incremental_run_embeds_only_the_changed_windows(tmp_path, tiny_st_model, model, jobkit, ray_session):
    """Edit the middle of one document and remove another: only windows with new text are embedded."""
    from jobs import run_job
    from jobs.fingerprint import text_hashes

    docs = corpus_docs()
    out1 = str(tmp_path / "out1")
    run_job(
        chunk_spec(jobkit, tiny_st_model, write_docs(tmp_path / "in1", docs), out1, "both"),
        progress=False,
        keep_warm=True,
    )

    after = dict(docs)
    words = docs[9].split()
    middle = len(words) // 2
    after[9] = " ".join(words[:middle] + ["moon", "star", "snow"] + words[middle:])
    del after[5]
    out2 = str(tmp_path / "out2")
    spec = chunk_spec(jobkit, tiny_st_model, write_docs(tmp_path / "in2", after), out2, "both", previous=out1)
    summary = run_job(spec, progress=False, keep_warm=True)

    old, new = expected(model, docs), expected(model, after)
    old_hashes = set(text_hashes([docs[9][w.start : w.end] for w in old[9]]))
    new_hashes = text_hashes([after[9][w.start : w.end] for w in new[9]])
    changed = sum(h not in old_hashes for h in new_hashes)
    assert 0 < changed < len(new_hashes)  # the edit touched some windows, not all
    gone_windows = sum(h not in set(new_hashes) for h in old_hashes)
    n_windows = sum(len(w) for w in new.values())
    assert summary["embedded"] == changed
    # Every other window's vector comes from the previous output (the counts are of windows).
    assert summary["reused"] == n_windows - changed
    # Document 5's rows (its own and its windows'), doc 9's windows that are gone and its old document row.
    assert summary["deleted"] == (1 + len(old[5])) + gone_windows + 1
    assert summary["documents"] == len(after) and summary["chunks"] == n_windows
    done = json.load(open(os.path.join(out2, ".embedjob", "_SUCCESS")))
    assert (done["embedded"], done["deleted"]) == (changed, summary["deleted"])

    full = str(tmp_path / "full")
    run_job(
        chunk_spec(jobkit, tiny_st_model, str(tmp_path / "in2"), full, "both"), progress=False, keep_warm=True
    )
    inc, ref = read_rows(out2), read_rows(full)
    assert inc.select(["id", "chunk", "char_start", "char_end", "text_hash"]).equals(
        ref.select(["id", "chunk", "char_start", "char_end", "text_hash"])
    )
    assert np.abs(jobkit.vectors(inc) - jobkit.vectors(ref)).max() <= 1e-4


def test_truncated_rows_are_counted_without_chunking(tmp_path, tiny_st_model, model, jobkit, ray_session):
    from jobs import run_job
    from jobs.progress import format_summary

    docs = {**corpus_docs(), 10: None}  # a null text, quarantined
    out = str(tmp_path / "out")
    spec = jobkit.job_spec(
        tiny_st_model, write_docs(tmp_path / "in", docs), out, policy={"on_bad_row": "quarantine"}
    )
    summary = run_job(spec, progress=False, keep_warm=True)
    tok = model[0].tokenizer
    over = sum(len(tok(docs[i], truncation=False)["input_ids"]) > 32 for i in range(10))
    assert 0 < over < 10
    assert summary["truncated"] == summary["total"]["truncated"] == over
    assert "chunks" not in summary and summary["rows_written"] == 10 and summary["quarantined"] == 1
    assert json.load(open(os.path.join(out, ".embedjob", "_SUCCESS")))["truncated"] == over
    assert f"truncated: {over} texts longer than the model's limit" in format_summary(summary)

    out2 = str(tmp_path / "chunked")
    spec = chunk_spec(
        jobkit, tiny_st_model, str(tmp_path / "in"), out2, "chunks", policy={"on_bad_row": "quarantine"}
    )
    summary = run_job(spec, progress=False, keep_warm=True)
    # Rows in = documents written + quarantined, however many windows the documents gave.
    assert (summary["rows"], summary["documents"], summary["quarantined"]) == (11, 10, 1)
    assert summary["rows_written"] == summary["chunks"] > 10 and "truncated" not in summary
    assert "10 documents ->" in format_summary(summary)


def test_documents_mode_reuses_unchanged_documents(tmp_path, tiny_st_model, model, jobkit, ray_session):
    """emit documents keeps no window vectors: an unchanged document keeps its vector, an edited one is
    embedded again, window by window."""
    from jobs import run_job

    docs = corpus_docs()
    out1 = str(tmp_path / "out1")
    spec = chunk_spec(jobkit, tiny_st_model, write_docs(tmp_path / "in1", docs), out1, "documents")
    run_job(spec, progress=False, keep_warm=True)
    after = {**docs, 9: docs[9] + " moon"}
    out2 = str(tmp_path / "out2")
    spec = chunk_spec(
        jobkit, tiny_st_model, write_docs(tmp_path / "in2", after), out2, "documents", previous=out1
    )
    summary = run_job(spec, progress=False, keep_warm=True)
    assert summary["embedded"] == len(expected(model, after)[9]) and summary["reused"] == len(docs) - 1
    assert summary["documents"] == len(docs) and summary["deleted"] == 0


def test_windows_longer_than_the_model_reads_fail_before_any_shard(
    tmp_path, tiny_st_model, jobkit, ray_session
):
    from jobs import run_job
    from jobs.dispatch import JobError

    out = str(tmp_path / "out")
    spec = jobkit.job_spec(
        tiny_st_model, write_docs(tmp_path / "in", corpus_docs(4)), out, chunking={"max_tokens": 64}
    )
    with pytest.raises(
        JobError, match=r"chunking.max_tokens: 64 is more than the model's limit of 32 tokens"
    ):
        run_job(spec, progress=False, keep_warm=True)
    assert not os.path.exists(os.path.join(out, ".embedjob", "_manifest"))


def test_each_chunking_setting_has_its_own_fingerprint_on_a_warm_replica(
    tmp_path, tiny_st_model, jobkit, ray_session
):
    """Jobs on the same warm replica that differ only in chunking get different settings fingerprints."""
    from jobs import run_job

    inp = write_docs(tmp_path / "in", corpus_docs(4))
    found = set()
    for k, emit in enumerate(("chunks", "both")):
        out = str(tmp_path / f"out{k}")
        run_job(chunk_spec(jobkit, tiny_st_model, inp, out, emit), progress=False, keep_warm=True)
        found.add(json.load(open(os.path.join(out, ".embedjob", "_job.json")))["settings_fingerprint"])
    assert len(found) == 2


@pytest.mark.slow  # the failing shard's retries take a minute
def test_a_failed_chunked_run_resumes_with_every_window_once(
    tmp_path, tiny_st_model, model, jobkit, ray_session, monkeypatch
):
    from jobs import faults, run_job

    docs = corpus_docs(12)
    inp = write_docs(tmp_path / "in", docs)
    out = str(tmp_path / "out")
    spec = chunk_spec(jobkit, tiny_st_model, inp, out, "both", output={"rows_per_file": 4})
    monkeypatch.setenv(
        faults.ENV_RULES, json.dumps([{"point": "worker.batch", "shard_index": 2, "action": "raise"}])
    )
    monkeypatch.setenv(faults.ENV_STATE, str(tmp_path / "faults"))
    with pytest.raises(Exception, match="injected"):
        run_job(spec, progress=False)
    monkeypatch.delenv(faults.ENV_RULES)
    summary = run_job(spec, progress=False, keep_warm=True)
    windows = expected(model, docs)
    assert summary["skipped_shards"] == 2 and summary["documents"] == 4  # only shard 2 was left to do
    assert summary["total"]["documents"] == 12 and summary["total"]["chunks"] == sum(
        len(w) for w in windows.values()
    )
    table = read_rows(out)
    keys = list(zip(table.column("id").to_pylist(), table.column("chunk").to_pylist(), strict=True))
    assert len(keys) == len(set(keys)) == 12 + sum(len(w) for w in windows.values())


def test_documents_mode_updates_a_live_lance_table(tmp_path, tiny_st_model, model, jobkit, ray_session):
    from jobs import run_job

    docs = corpus_docs(8)
    out = str(tmp_path / "t.lance")
    run_job(
        chunk_spec(jobkit, tiny_st_model, write_docs(tmp_path / "in1", docs), out, "documents"),
        progress=False,
    )
    after = {**docs, 3: docs[3] + " snow"}
    spec = chunk_spec(
        jobkit, tiny_st_model, write_docs(tmp_path / "in2", after), out, "documents", previous=out
    )
    summary = run_job(spec, progress=False, keep_warm=True)
    assert summary["embedded"] == len(expected(model, after)[3]) and summary["reused"] == 7
    assert summary["total"]["documents"] == 8 and read_rows(out).num_rows == 8


def test_quantised_document_rows_pool_the_float_vectors(tmp_path, tiny_st_model, model, jobkit, ray_session):
    """Under ubinary, window rows are encode()'s ubinary vectors and a document row is the quantised
    token-weighted mean of its windows' float32 vectors (not a mean of bits)."""
    from embedder import quantize_embeddings
    from jobs import run_job

    docs = corpus_docs(6)
    out = str(tmp_path / "out")
    spec = chunk_spec(
        jobkit, tiny_st_model, write_docs(tmp_path / "in", docs), out, "both", model={"precision": "ubinary"}
    )
    run_job(spec, progress=False, keep_warm=True)
    table = read_rows(out)
    windows = expected(model, docs)
    vectors = jobkit.vectors(table)
    for k, (doc_id, c) in enumerate(
        zip(table.column("id").to_pylist(), table.column("chunk").to_pylist(), strict=True)
    ):
        i = int(doc_id.split("-")[1])
        texts = [docs[i][w.start : w.end] for w in windows[i]]
        if c is None:
            pooled = pool_chunks(model.encode(texts), [w.tokens for w in windows[i]], normalize=False)
            want = quantize_embeddings(pooled[None, :], "ubinary")[0]
        else:
            want = model.encode([texts[c]], precision="ubinary")[0]
        assert vectors[k].dtype == np.uint8 and np.array_equal(vectors[k], want), (doc_id, c)


def test_chunking_an_image_column_is_refused():
    spec = {
        "model": {"name": "m"},
        "input": {"uri": "in.parquet", "modality": "image"},
        "output": {"uri": "out"},
        "chunking": {"max_tokens": 64},
    }
    with pytest.raises(SpecError, match=r"chunking: .*input.modality is 'image'"):
        JobSpec.from_dict(spec).check()
