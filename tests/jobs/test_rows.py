"""Per-row validation of texts and ids."""

from __future__ import annotations

import pytest

from jobs.rows import (
    BAD_ROW_POLICIES,
    CHARS_PER_TOKEN,
    BadRowsError,
    check_ids,
    check_texts,
    default_max_chars,
    merge_bad,
    validate_policy,
)


def test_good_and_bad_texts_are_split_in_order():
    values = ["a", None, b"caf\xc3\xa9", b"ab\xff", 7, "", 2.5, True, ["x"], "z"]
    good, bad = check_texts(values, max_chars=100)
    assert good == ["a", "café", "", "z"]
    assert bad == [
        (1, "null text"),
        (3, "invalid UTF-8 at byte 2"),
        (4, "non-string text (int)"),
        (6, "non-string text (float)"),
        (7, "non-string text (bool)"),
        (8, "non-string text (list)"),
    ]
    assert len(good) + len(bad) == len(values)


def test_lone_surrogates_are_invalid_utf8():
    good, bad = check_texts(["ok", "ab\udc80"], max_chars=None)
    assert good == ["ok"] and bad == [(1, "invalid UTF-8 (lone surrogate at character 2)")]


def test_long_texts_are_cut_not_rejected():
    good, bad = check_texts(["x" * 50, "é" * 10], max_chars=8)
    assert good == ["x" * 8, "é" * 8] and bad == []
    good, _ = check_texts(["x" * 50], max_chars=None)
    assert good == ["x" * 50]
    with pytest.raises(ValueError, match="max_chars"):
        check_texts(["x"], max_chars=0)


def test_default_max_chars_scales_with_the_token_limit():
    assert default_max_chars(256) == 256 * CHARS_PER_TOKEN
    assert default_max_chars(None) is None


def test_cut_never_changes_the_tokens_the_model_keeps(tiny_st_model):
    """The first max_seq_length tokens of the cut text equal those of the full text, even for long words."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_st_model)
    max_seq = 16
    texts = [
        "the cat sat " * 5000,
        ("a" * 99 + " ") * 200,  # one-token words of maximal length
        ("x" * 150 + " ") * 200,  # over-long words become [UNK]
        "hello" + " " * 30 + "world " * 1000,
    ]
    good, _ = check_texts(texts, max_chars=default_max_chars(max_seq))
    for full, cut in zip(texts, good, strict=True):
        a = tok(full, truncation=True, max_length=max_seq)["input_ids"]
        b = tok(cut, truncation=True, max_length=max_seq)["input_ids"]
        assert a == b


def test_null_ids():
    assert check_ids([1, None, "a", float("nan"), 0, ""]) == [(1, "null id"), (3, "null id")]


def test_merge_bad_joins_reasons_per_row():
    assert merge_bad([(3, "null text"), (1, "null text")], [(3, "null id")]) == [
        (1, "null text"),
        (3, "null text; null id"),
    ]


def test_policy_validation_lists_choices():
    assert BAD_ROW_POLICIES == ("fail", "quarantine")
    assert validate_policy("quarantine") == "quarantine"
    with pytest.raises(ValueError, match=r"'skip'.*|.*'fail', 'quarantine'"):
        validate_policy("skip")


def test_bad_rows_error_names_file_rows_and_reasons():
    err = BadRowsError("s3://b/in/a.parquet", [(i, "null text") for i in range(7)], first_row=100)
    message = str(err)
    assert "s3://b/in/a.parquet" in message and "7 bad rows" in message
    assert "row 100: null text" in message and "and 2 more" in message


def test_duplicate_ids_point_at_first_occurrence():
    import pyarrow as pa

    from jobs.rows import duplicate_ids

    assert duplicate_ids(["a", "b", "a", None, None, "c", "b", "a"]) == [(2, 0), (6, 1), (7, 0)]
    assert duplicate_ids(pa.chunked_array([[1, 2], [3, 1, 2, 2]])) == [(3, 0), (4, 1), (5, 1)]
    assert duplicate_ids([]) == [] and duplicate_ids([1, 2, 3]) == []


@pytest.mark.parametrize("lead", [" ", "\n", "\u200b", "\u200b \n\t"])
def test_the_cut_keeps_the_words_after_a_long_run_of_whitespace(oracle, lead):
    """Texts over the cut that start with whitespace or zero-width characters once embedded as empty text
    (cosine 0.01 against the full text): the cut now counts only characters a tokenizer keeps."""
    import numpy as np

    from jobs.rows import check_texts, default_max_chars

    max_chars = default_max_chars(32)  # the tiny model's 32-token limit: 8,192 characters
    words = "the cat sat on the mat with a big red bird " * 400  # 13,600 visible characters
    text = lead * (max_chars // len(lead) + 500) + words
    (cut,), bad = check_texts([text], max_chars=max_chars)
    assert not bad and len(cut) < len(text) and cut.startswith(lead * 100)
    assert len(cut.strip(" \n\t\u200b")) > max_chars // 2  # the words survive the cut
    full, ours = oracle([text])[0], oracle([cut])[0]
    cos = float(full @ ours / (np.linalg.norm(full) * np.linalg.norm(ours)))
    assert cos >= 0.99999
    assert float(np.abs(full - oracle([""])[0]).max()) > 1e-3  # the full text is not embedded as empty
