"""The fault-injection hook: matching, actions, and "times" counted across processes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from jobs import faults
from jobs.faults import FaultSpecError, fault_env, fired, maybe_fail, parse_rules


@pytest.fixture
def rules(monkeypatch, tmp_path):
    """Set EMBEDJOB_FAULTS (and a fresh state dir) for this test."""

    def set_rules(*items, state: bool = True):
        monkeypatch.setenv(faults.ENV_RULES, json.dumps(list(items)))
        if state:
            monkeypatch.setenv(faults.ENV_STATE, str(tmp_path / "state"))
        else:
            monkeypatch.delenv(faults.ENV_STATE, raising=False)
        faults._local_counts.clear()

    return set_rules


def test_unset_does_nothing(monkeypatch):
    monkeypatch.delenv(faults.ENV_RULES, raising=False)
    maybe_fail("storage.write", path="x")
    assert fault_env() == {} or faults.ENV_RULES not in fault_env()


def test_raise_matches_point_context_and_substring(rules):
    rules({"point": "storage.write", "match": "part-00001", "action": "raise"})
    maybe_fail("storage.read", path="s3://b/part-00001.parquet")  # other point
    maybe_fail("storage.write", path="s3://b/part-00002.parquet")  # no substring
    with pytest.raises(OSError, match="injected fault at storage.write"):
        maybe_fail("storage.write", path="s3://b/part-00001.parquet")


def test_context_keys_must_all_equal(rules):
    rules({"point": "worker.batch", "shard_index": 3, "batch": 2})
    maybe_fail("worker.batch", shard_index=3, batch=1)
    maybe_fail("worker.batch", shard_index=2, batch=2)
    maybe_fail("worker.batch", batch=2)  # a key the rule needs is missing
    with pytest.raises(OSError):
        maybe_fail("worker.batch", shard_index=3, batch=2)


@pytest.mark.parametrize("state", [True, False])
def test_times_caps_firings(rules, state):
    rules({"point": "p", "times": 2}, state=state)
    for _ in range(2):
        with pytest.raises(OSError):
            maybe_fail("p")
    maybe_fail("p")
    assert fired(0) == 2


def test_times_is_shared_across_processes(rules, tmp_path):
    """A restarted process sees the firings of the one that died: an exit rule with times=1 fires once."""
    rules({"point": "worker.batch", "batch": 1, "action": "exit", "times": 1})
    code = "from jobs.faults import maybe_fail\nfor b in range(3): maybe_fail('worker.batch', batch=b)\nprint('done')"
    first = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert first.returncode == 1 and "done" not in first.stdout
    second = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert second.returncode == 0 and "done" in second.stdout
    assert fired(0) == 1


def test_sleep_action(rules):
    rules({"point": "slow", "action": "sleep", "seconds": 0.01})
    maybe_fail("slow")


def test_fault_env_passes_both_variables(rules, tmp_path):
    rules({"point": "p"})
    env = fault_env()
    assert set(env) == {faults.ENV_RULES, faults.ENV_STATE}


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        '"a string"',
        '[{"action": "raise"}]',
        '[{"point": "p", "action": "explode"}]',
        '[{"point": "p", "times": -1}]',
    ],
)
def test_bad_rules_are_rejected(text):
    with pytest.raises(FaultSpecError):
        parse_rules(text)
