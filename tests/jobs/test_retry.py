"""Bounded retries with backoff: what is retried, how often, and what the final error says."""

from __future__ import annotations

import errno
import logging

import pytest

from jobs.redact import register_secret
from jobs.retry import RetryPolicy, StorageError, call_with_retries


class Flaky:
    """A callable that raises `errors` in turn, then returns "ok"."""

    def __init__(self, *errors: BaseException):
        self.errors = list(errors)
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


def no_sleep(_: float) -> None:
    pass


def test_transient_errors_are_retried_until_success():
    fn = Flaky(OSError("reset"), TimeoutError("slow"), ConnectionResetError("peer"))
    assert call_with_retries(fn, what="x", policy=RetryPolicy(attempts=4), sleep=no_sleep) == "ok"
    assert fn.calls == 4


def test_final_failure_names_what_and_attempts_and_cause():
    fn = Flaky(*[OSError("503 SlowDown")] * 5)
    what = "shard 00012 (s3://bucket/out/part-00012-abc.parquet): write"
    with pytest.raises(StorageError) as info:
        call_with_retries(fn, what=what, policy=RetryPolicy(attempts=3), sleep=no_sleep)
    message = str(info.value)
    assert message.startswith(what)
    assert "after 3 attempts" in message and "503 SlowDown" in message
    assert isinstance(info.value, RuntimeError) and isinstance(info.value.__cause__, OSError)
    assert fn.calls == 3


@pytest.mark.parametrize("error", [FileNotFoundError("gone"), ValueError("bad"), KeyError("k")])
def test_permanent_errors_are_not_retried(error):
    fn = Flaky(error)
    with pytest.raises(type(error)):
        call_with_retries(fn, what="x", policy=RetryPolicy(attempts=5), sleep=no_sleep)
    assert fn.calls == 1


def test_botocore_network_errors_are_transient():
    from botocore.exceptions import EndpointConnectionError, ReadTimeoutError

    fn = Flaky(EndpointConnectionError(endpoint_url="http://x"), ReadTimeoutError(endpoint_url="http://x"))
    assert call_with_retries(fn, what="x", policy=RetryPolicy(attempts=3), sleep=no_sleep) == "ok"


def test_custom_retry_on_narrows_the_retried_errors():
    fn = Flaky(OSError("nope"))
    with pytest.raises(OSError):
        call_with_retries(fn, what="x", policy=RetryPolicy(), retry_on=(TimeoutError,), sleep=no_sleep)
    assert fn.calls == 1


def test_backoff_grows_exponentially_with_jitter_and_is_capped():
    policy = RetryPolicy(attempts=8, base_delay_s=0.5, max_delay_s=4.0)
    for retry, ceiling in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (7, 4.0)]:
        delays = [policy.delay(retry) for _ in range(200)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(set(delays)) > 1  # jittered
    slept: list[float] = []
    with pytest.raises(StorageError):
        call_with_retries(Flaky(*[OSError()] * 9), what="x", policy=policy, sleep=slept.append)
    assert len(slept) == 7  # 8 attempts -> 7 pauses, none after the last


def test_real_sleep_is_short_with_small_delays():
    fn = Flaky(OSError("once"))
    assert (
        call_with_retries(fn, what="x", policy=RetryPolicy(attempts=2, base_delay_s=0.01, max_delay_s=0.01))
        == "ok"
    )


def test_each_retry_is_logged_without_secrets(caplog):
    secret = "sekrit-VALUE-0987654"
    register_secret(secret)
    fn = Flaky(OSError(f"auth failed for secret={secret}"))
    with caplog.at_level(logging.WARNING, logger="jobs.retry"):
        call_with_retries(fn, what="read s3://b/k", policy=RetryPolicy(attempts=2), sleep=no_sleep)
    assert "attempt 1/2" in caplog.text and "read s3://b/k" in caplog.text
    assert secret not in caplog.text and "***" in caplog.text
    with pytest.raises(StorageError) as info:
        call_with_retries(Flaky(OSError(secret)), what="w", policy=RetryPolicy(attempts=1), sleep=no_sleep)
    assert secret not in str(info.value)


@pytest.mark.parametrize(
    "kwargs",
    [{"attempts": 0}, {"attempts": 1.5}, {"attempts": True}, {"base_delay_s": -1}, {"max_delay_s": 0.1}],
)
def test_policy_is_validated(kwargs):
    with pytest.raises(ValueError, match="RetryPolicy"):
        RetryPolicy(**kwargs)


def test_corrupt_parquet_errors_are_not_retried():
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(pa.table({"t": [f"text {i} " * 5 for i in range(100)]}), buf, compression="zstd")
    data = bytearray(buf.getvalue())
    data[200:240] = b"\0" * 40
    calls = []

    def read():
        calls.append(1)
        return pq.ParquetFile(io.BytesIO(bytes(data))).read()

    with pytest.raises(OSError, match="thrift|decompression"):
        call_with_retries(read, what="x", policy=RetryPolicy(attempts=5), sleep=no_sleep)
    assert len(calls) == 1


@pytest.mark.parametrize(
    "error",
    [
        PermissionError("Forbidden"),
        OSError(errno.EROFS, "Read-only file system"),
        OSError(errno.ENOSPC, "No space left on device"),
        OSError(errno.EACCES, "Permission denied"),
    ],
)
def test_denied_read_only_and_full_are_not_retried_and_name_the_object(error):
    fn = Flaky(error)
    with pytest.raises(StorageError, match=r"^output s3://b/out/part-1\.parquet: write: .*not retried"):
        call_with_retries(
            fn, what="output s3://b/out/part-1.parquet: write", policy=RetryPolicy(attempts=5), sleep=no_sleep
        )
    assert fn.calls == 1


def test_missing_credentials_name_the_object_and_the_field_never_the_secret():
    from botocore.exceptions import NoCredentialsError

    fn = Flaky(NoCredentialsError())
    with pytest.raises(StorageError) as info:
        call_with_retries(fn, what="output s3://b/out/_job.json: read", policy=RetryPolicy(), sleep=no_sleep)
    message = str(info.value)
    assert message.startswith("output s3://b/out/_job.json: read: NoCredentialsError")
    assert "output.storage_options" in message and fn.calls == 1
    fn = Flaky(PermissionError("Forbidden"))
    with pytest.raises(StorageError, match=r"input\.storage_options"):
        call_with_retries(fn, what="input s3://b/in/x.parquet: stat", policy=RetryPolicy(), sleep=no_sleep)
