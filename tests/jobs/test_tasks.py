"""Grouping work for Ray tasks."""

from __future__ import annotations

from jobs.tasks import groups_of_rows


def test_groups_of_rows_keeps_order_and_bounds_each_group():
    rows = [40, 30, 50, 200, 10, 10]
    groups = groups_of_rows(range(len(rows)), lambda k: rows[k], 80)
    assert groups == [[0, 1], [2], [3], [4, 5]]  # an item over the limit is a group of its own
    assert groups_of_rows([], lambda k: k, 10) == []
