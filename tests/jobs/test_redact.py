"""Secret masking for metadata (by key) and for log text (by known value)."""

from __future__ import annotations

import pytest

from jobs.redact import MASK, is_secret_key, redact, redact_text, register_secret, register_secrets_in


@pytest.mark.parametrize(
    "key",
    [
        "key",
        "secret",
        "token",
        "password",
        "passwd",
        "aws_secret_access_key",
        "aws_session_token",
        "AWS_SECRET_ACCESS_KEY",
        "sessionToken",
        "SecretAccessKey",
        "api_key",
        "apiKey",
        "hf_token",
        "Authorization",
        "credentials",
        "session",
    ],
)
def test_secret_keys(key):
    assert is_secret_key(key)


@pytest.mark.parametrize(
    "key",
    [
        "endpoint_url",
        "region_name",
        "text_column",
        "id_column",
        "max_batch_tokens",
        "tokenizer_kwargs",
        "author",
        "key_column",
        3,
    ],
)
def test_ordinary_keys(key):
    assert not is_secret_key(key)


def test_redact_masks_nested_values_and_copies():
    spec = {
        "input": {
            "path": "s3://b/in",
            "storage_options": {
                "key": "AKIA123456",
                "secret": "s3cr3t-value",
                "client_kwargs": {"endpoint_url": "http://127.0.0.1:9000", "aws_session_token": "tok-123456"},
            },
        },
        "list": [{"password": "hunter2-long"}, "plain"],
        "max_batch_tokens": 4096,
        "opts": {"token": None},
    }
    out = redact(spec)
    assert out["input"]["storage_options"] == {
        "key": MASK,
        "secret": MASK,
        "client_kwargs": {"endpoint_url": "http://127.0.0.1:9000", "aws_session_token": MASK},
    }
    assert out["list"] == [{"password": MASK}, "plain"]
    assert out["max_batch_tokens"] == 4096 and out["opts"] == {"token": None}
    assert spec["input"]["storage_options"]["secret"] == "s3cr3t-value"  # the input is untouched


def test_redact_text_masks_env_and_registered_values(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "env-secret-abcdef")
    monkeypatch.setenv("HF_TOKEN", "hf_abcdefghijkl")
    register_secret("registered-xyz-789")
    register_secret("ab")  # too short to be a credential: never masked in free text
    text = "env-secret-abcdef hf_abcdefghijkl registered-xyz-789 ab"
    assert redact_text(text) == f"{MASK} {MASK} {MASK} ab"
    assert redact({"msg": "using env-secret-abcdef"}) == {"msg": f"using {MASK}"}


def test_register_secrets_in_storage_options():
    register_secrets_in({"client_kwargs": {"aws_secret_access_key": "nested-secret-42"}, "anon": False})
    assert redact_text("boto said nested-secret-42") == f"boto said {MASK}"
