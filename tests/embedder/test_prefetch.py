"""The one read-ahead helper the encode loop and the job's replicas share."""

from __future__ import annotations

import threading
import time

import pytest

from embedder.prefetch import prefetch


def test_items_arrive_in_order_and_are_made_ahead():
    made: list[int] = []

    def produce():
        for k in range(5):
            made.append(k)
            yield k

    out = []
    for item in prefetch(produce(), 2):
        time.sleep(0.02)  # the consumer is slower: the producer runs ahead meanwhile
        out.append((item, len(made)))
    assert [i for i, _ in out] == list(range(5))
    assert out[0][1] >= 2  # while the first item was used, later ones were already made


def test_a_producer_error_reaches_the_consumer():
    def produce():
        yield 1
        raise OSError("read failed")

    it = prefetch(produce(), 1)
    assert next(it) == 1
    with pytest.raises(OSError, match="read failed"):
        next(it)


def test_stopping_early_stops_the_thread():
    before = threading.active_count()
    it = prefetch(iter(range(1000)), 1)
    assert next(it) == 0
    it.close()
    deadline = time.monotonic() + 2
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert threading.active_count() == before
