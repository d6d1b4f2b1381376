"""Keep credentials out of logs, metadata and manifests: mask secret-looking keys and known secret values."""

from __future__ import annotations

import os
import re
import threading
from typing import Any

MASK = "***"

# A key is secret-looking when one of its words (split on _ - . space and camelCase) is one of these.
# Plural "tokens" and "tokenizer" are deliberately absent: max_batch_tokens and tokenizer_kwargs are settings.
SECRET_WORDS = frozenset(
    {
        "key",
        "secret",
        "token",
        "password",
        "passwd",
        "pwd",
        "passphrase",
        "credential",
        "credentials",
        "creds",
        "session",
        "auth",
        "authorization",
        "cookie",
        "signature",
        "sas",
        "apikey",
    }
)
# Run-together spellings ("secretkey", "accesstoken", "apiKey" already splits) caught by substring.
SECRET_FRAGMENTS = ("secret", "password", "passwd", "credential", "apikey", "accesskey", "privatekey")
# Keys that contain a secret word but only name or locate something; their values are useful in metadata.
SAFE_KEYS = frozenset({"key_column", "id_key", "sort_key", "partition_key", "cache_key", "session_name"})
# Environment variables whose values are secrets wherever they show up in text.
SECRET_ENV_VARS = (
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
    "HUGGINGFACE_TOKEN",
    "GOOGLE_APPLICATION_CREDENTIALS_JSON",
    "AZURE_STORAGE_KEY",
    "AZURE_STORAGE_ACCOUNT_KEY",
    "AZURE_STORAGE_SAS_TOKEN",
    "AZURE_STORAGE_CONNECTION_STRING",
    "AZURE_CLIENT_SECRET",
)
# Values shorter than this are not masked in free text: "***"-ing every "a" or "1" would wreck the logs,
# and a credential that short is not one.
MIN_SECRET_LEN = 6

_registered: set[str] = set()
_lock = threading.Lock()
_WORD = re.compile(r"[A-Z]?[a-z0-9]+|[A-Z]+(?![a-z])")


def is_secret_key(key: object) -> bool:
    """Whether a mapping key names a credential (aws_secret_access_key, sessionToken, password, ...)."""
    if not isinstance(key, str):
        return False
    lowered = key.lower()
    if lowered in SAFE_KEYS:
        return False
    words = {w.lower() for part in re.split(r"[_\-.\s]+", key) for w in _WORD.findall(part)}
    if words & SECRET_WORDS:
        return True
    return any(fragment in lowered for fragment in SECRET_FRAGMENTS) or lowered.endswith("token")


def redact(obj: Any) -> Any:
    """A deep copy of dicts/lists/tuples with values under secret-looking keys replaced by "***"."""
    if isinstance(obj, dict):
        return {k: (MASK if is_secret_key(k) and v is not None else redact(v)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [redact(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(redact(v) for v in obj)
    if isinstance(obj, str):
        return redact_text(obj)
    return obj


def register_secret(value: object) -> None:
    """Remember `value` (a credential given in a spec or storage options) so redact_text masks it."""
    if isinstance(value, str) and len(value) >= MIN_SECRET_LEN:
        with _lock:
            _registered.add(value)


def register_secrets_in(obj: Any) -> None:
    """Register every value found under a secret-looking key anywhere in `obj` (e.g. storage_options)."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            if is_secret_key(k) and isinstance(v, str):
                register_secret(v)
            else:
                register_secrets_in(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            register_secrets_in(v)


def known_secrets() -> list[str]:
    """Registered secrets plus the secret environment variables now set, longest first."""
    values = {os.environ.get(name, "") for name in SECRET_ENV_VARS}
    with _lock:
        values |= _registered
    return sorted((v for v in values if len(v) >= MIN_SECRET_LEN), key=len, reverse=True)


def redact_text(text: str) -> str:
    """`text` with every known secret value replaced by "***"."""
    if not isinstance(text, str) or not text:
        return text
    for secret in known_secrets():
        if secret in text:
            text = text.replace(secret, MASK)
    return text
