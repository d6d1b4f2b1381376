"""Bounded retries with exponential backoff and jitter for storage calls (reads, writes, listings, moves)."""

from __future__ import annotations

import errno
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from jobs.redact import redact_text

log = logging.getLogger(__name__)

T = TypeVar("T")


class StorageError(RuntimeError):
    """A storage call that still failed after its retries (or failed in a way retrying cannot fix)."""


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a storage call is retried: `attempts` calls in all, delays capped."""

    attempts: int = 5
    base_delay_s: float = 0.5
    max_delay_s: float = 20.0

    def __post_init__(self) -> None:
        if isinstance(self.attempts, bool) or not isinstance(self.attempts, int) or self.attempts < 1:
            raise ValueError(f"RetryPolicy.attempts must be an int >= 1, got {self.attempts!r}")
        for name in ("base_delay_s", "max_delay_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"RetryPolicy.{name} must be a number >= 0, got {value!r}")
        if self.max_delay_s < self.base_delay_s:
            raise ValueError(
                f"RetryPolicy.max_delay_s ({self.max_delay_s!r}) must be >= base_delay_s ({self.base_delay_s!r})"
            )

    def delay(self, retry: int) -> float:
        """Seconds to sleep before retry number `retry` (1-based): full jitter over a capped exponential."""
        ceiling = min(self.max_delay_s, self.base_delay_s * (2 ** (retry - 1)))
        # Full jitter: workers that failed together (a storage hiccup) do not retry in lockstep.
        return random.uniform(ceiling / 2, ceiling)


# Errors that describe the request, not the moment: retrying them only delays the same failure.
# (s3fs maps NoSuchKey/NoSuchBucket -> FileNotFoundError, AccessDenied -> PermissionError.)
PERMANENT: tuple[type[BaseException], ...] = (
    FileNotFoundError,
    FileExistsError,
    PermissionError,
    IsADirectoryError,
    NotADirectoryError,
    ValueError,
    TypeError,
)


def _transient_errors() -> tuple[type[BaseException], ...]:
    """OSError/TimeoutError plus the network errors of botocore and aiohttp when they are installed."""
    errors: list[type[BaseException]] = [OSError, TimeoutError, ConnectionError]
    try:
        from botocore.exceptions import (
            ConnectionClosedError,
            ConnectTimeoutError,
            EndpointConnectionError,
            IncompleteReadError,
            ReadTimeoutError,
            ResponseStreamingError,
        )

        errors += [
            ConnectionClosedError,
            ConnectTimeoutError,
            EndpointConnectionError,
            IncompleteReadError,
            ReadTimeoutError,
            ResponseStreamingError,
        ]
    except ImportError:  # botocore is optional (only s3fs needs it)
        pass
    try:
        import aiohttp

        errors += [aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, aiohttp.ServerTimeoutError]
    except ImportError:
        pass
    return tuple(errors)


TRANSIENT: tuple[type[BaseException], ...] = _transient_errors()


# pyarrow reports corrupt Parquet (bad page header, failed decompression) as a plain OSError; the bytes
# will be just as corrupt on the next read, so these messages mark an OSError as permanent.
CORRUPT_DATA_MARKERS = (
    "Couldn't deserialize thrift",
    "decompression failed",
    "Corrupt",
    "corrupt",
    "magic bytes not found",
    "Unexpected end of stream",
)


# Storage errors that the next attempt meets again: no access, a read-only filesystem, a full disk or quota.
PERMANENT_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT})


def is_denied_or_full(error: BaseException) -> bool:
    """Whether `error` says the storage refuses the request for good (access, credentials, read-only, space)."""
    if isinstance(error, PermissionError) or (isinstance(error, OSError) and error.errno in PERMANENT_ERRNOS):
        return True
    # botocore's "no credentials found" and its kin are not OSErrors; the next attempt finds none either.
    return type(error).__name__ in ("NoCredentialsError", "PartialCredentialsError", "InvalidAccessKeyId")


def _options_field(what: str) -> str:
    """The spec field holding the storage options of the object `what` names."""
    return "input.storage_options" if what.startswith(("input", "shard")) else "output.storage_options"


def is_transient(error: BaseException, retry_on: tuple[type[BaseException], ...] = TRANSIENT) -> bool:
    """Whether `error` is worth another attempt: one of `retry_on` and not a permanent kind."""
    if not isinstance(error, retry_on) or isinstance(error, PERMANENT) or is_denied_or_full(error):
        return False
    message = str(error)
    return not any(marker in message for marker in CORRUPT_DATA_MARKERS)


def call_with_retries(
    fn: Callable[[], T],
    *,
    what: str,
    policy: RetryPolicy,
    retry_on: tuple[type[BaseException], ...] = TRANSIENT,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Return `fn()`, retrying transient errors with backoff; raise StorageError naming `what` when out of tries."""
    for attempt in range(1, policy.attempts + 1):
        try:
            return fn()
        except BaseException as error:
            if is_denied_or_full(error):
                raise StorageError(
                    f"{what}: {_describe(error)} (not retried: the storage refuses it for good; check the "
                    f"credentials in {_options_field(what)} or the environment, access rights and free space)"
                ) from error
            if not is_transient(error, retry_on):
                # Other permanent errors (missing object, bad argument) and anything unexpected propagate
                # unchanged, so callers can still tell FileNotFoundError from the rest.
                raise
            if attempt == policy.attempts:
                raise StorageError(
                    f"{what}: failed after {policy.attempts} attempt{'s' if policy.attempts != 1 else ''}: "
                    f"{_describe(error)}"
                ) from error
            pause = policy.delay(attempt)
            log.warning(
                "%s: attempt %d/%d failed (%s); retrying in %.2fs",
                what,
                attempt,
                policy.attempts,
                _describe(error),
                pause,
            )
            sleep(pause)
    raise AssertionError("unreachable")  # the loop always returns or raises


def _describe(error: BaseException) -> str:
    """`Type: message` with known secret values masked (errors from botocore can echo request details)."""
    text = str(error) or repr(error)
    return redact_text(f"{type(error).__name__}: {text}")
