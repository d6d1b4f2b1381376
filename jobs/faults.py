"""Test hook that injects faults (process deaths, storage errors, stalls) at named points of the runner.

Driven by the environment, so it reaches Ray actors and subprocesses unchanged:
- EMBEDJOB_FAULTS: a JSON list of rules, e.g.
    [{"point": "worker.batch", "shard_index": 3, "batch": 2, "action": "exit", "times": 1},
     {"point": "storage.write", "match": "part-00001", "times": 2, "action": "raise"}]
  A rule fires at `maybe_fail(point, **context)` when its "point" equals `point`, each of its other keys
  (except the reserved ones below) equals the same key of `context`, and "match" (if given) is a substring
  of one of the context's string values. Actions: "exit" (os._exit(1), a hard death: no cleanup, no
  finally), "raise" (OSError, which the storage retries treat as transient), "sleep" ("seconds", default 1).
  "times" caps how often a rule fires in all processes together (default: every time).
- EMBEDJOB_FAULTS_STATE: a directory for the "times" counters. One file is created per firing with
  O_CREAT|O_EXCL, which is atomic across processes, so a restarted actor does not fail forever.
  Without it, "times" is counted per process.
Unset EMBEDJOB_FAULTS: maybe_fail is one dict lookup.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from typing import Any, Literal

log = logging.getLogger(__name__)

ENV_RULES = "EMBEDJOB_FAULTS"
ENV_STATE = "EMBEDJOB_FAULTS_STATE"

FaultAction = Literal["exit", "raise", "sleep"]
FAULT_ACTIONS: tuple[FaultAction, ...] = ("exit", "raise", "sleep")
RESERVED = frozenset({"point", "action", "times", "match", "seconds"})

_cache: tuple[str, list[dict[str, Any]]] | None = None
_local_counts: dict[int, int] = {}
_lock = threading.Lock()


class FaultSpecError(ValueError):
    """EMBEDJOB_FAULTS holds something that is not a valid list of rules."""


def parse_rules(text: str) -> list[dict[str, Any]]:
    """The validated rules of an EMBEDJOB_FAULTS value."""
    try:
        rules = json.loads(text)
    except json.JSONDecodeError as error:
        raise FaultSpecError(f"{ENV_RULES} is not JSON: {error}") from error
    if isinstance(rules, dict):
        rules = [rules]
    if not isinstance(rules, list):
        raise FaultSpecError(f"{ENV_RULES} must be a JSON list of rules, got {type(rules).__name__}")
    for i, rule in enumerate(rules):
        if not isinstance(rule, dict) or not isinstance(rule.get("point"), str):
            raise FaultSpecError(f"{ENV_RULES}[{i}] must be an object with a string 'point', got {rule!r}")
        action = rule.get("action", "raise")
        if action not in FAULT_ACTIONS:
            raise FaultSpecError(f"{ENV_RULES}[{i}].action must be one of {FAULT_ACTIONS}, got {action!r}")
        times = rule.get("times")
        if times is not None and (isinstance(times, bool) or not isinstance(times, int) or times < 0):
            raise FaultSpecError(f"{ENV_RULES}[{i}].times must be an int >= 0, got {times!r}")
    return rules


def _rules() -> list[dict[str, Any]]:
    global _cache
    text = os.environ.get(ENV_RULES)
    if not text:
        return []
    if _cache is None or _cache[0] != text:
        _cache = (text, parse_rules(text))
    return _cache[1]


def fault_env() -> dict[str, str]:
    """The fault-injection variables set in this process, to pass on to actors (runtime_env env_vars)."""
    return {name: os.environ[name] for name in (ENV_RULES, ENV_STATE) if os.environ.get(name)}


def matches(rule: dict[str, Any], point: str, context: dict[str, Any]) -> bool:
    """Whether `rule` applies at `point` with `context`."""
    if rule["point"] != point:
        return False
    for key, want in rule.items():
        if key in RESERVED:
            continue
        if key not in context or context[key] != want:
            return False
    pattern = rule.get("match")
    if pattern is not None:
        return any(isinstance(v, str) and pattern in v for v in context.values())
    return True


def _claim(index: int, rule: dict[str, Any]) -> bool:
    """Take one of the rule's remaining firings; False once "times" are used up (in all processes)."""
    times = rule.get("times")
    state = os.environ.get(ENV_STATE)
    if times is None:
        if state:  # recorded all the same, so a test can count the firings
            os.makedirs(state, exist_ok=True)
            with open(os.path.join(state, f"rule-{index}-u{uuid.uuid4().hex}"), "w") as f:
                f.write(f"{os.getpid()}\n")
        else:
            with _lock:
                _local_counts[index] = _local_counts.get(index, 0) + 1
        return True
    if not state:
        with _lock:
            used = _local_counts.get(index, 0)
            if used >= times:
                return False
            _local_counts[index] = used + 1
            return True
    os.makedirs(state, exist_ok=True)
    for n in range(times):
        try:
            fd = os.open(os.path.join(state, f"rule-{index}-{n}"), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            continue
        os.write(fd, f"{os.getpid()}\n".encode())
        os.close(fd)
        return True
    return False


def fired(index: int) -> int:
    """How many times rule `index` has fired so far (all processes; needs EMBEDJOB_FAULTS_STATE)."""
    state = os.environ.get(ENV_STATE)
    if not state or not os.path.isdir(state):
        return _local_counts.get(index, 0)
    return sum(1 for name in os.listdir(state) if name.startswith(f"rule-{index}-"))


def maybe_fail(point: str, **context: Any) -> None:
    """Inject the fault of the first matching rule at `point` (nothing when EMBEDJOB_FAULTS is unset)."""
    if ENV_RULES not in os.environ:
        return
    for index, rule in enumerate(_rules()):
        if not matches(rule, point, context) or not _claim(index, rule):
            continue
        action = rule.get("action", "raise")
        where = ", ".join(f"{k}={v!r}" for k, v in context.items())
        if action == "exit":
            log.error("injected fault: process exit at %s (%s)", point, where)
            for handler in logging.getLogger().handlers:
                handler.flush()
            os._exit(1)
        if action == "sleep":
            seconds = float(rule.get("seconds", 1.0))
            log.warning("injected fault: sleeping %.1fs at %s (%s)", seconds, point, where)
            time.sleep(seconds)
            return
        raise OSError(f"injected fault at {point} ({where})")
