"""Refused credentials on a real S3 endpoint: a clear error naming the URI and the field, never the secret."""

from __future__ import annotations

import pytest

WRONG_SECRET = "wrong-secret-Vb7Qz1Lp9Xk3"


@pytest.fixture(scope="module")
def auth_s3(start_moto):
    """A moto server that checks credentials (all but its first 3 requests, which make the buckets)."""
    with start_moto({"INITIAL_NO_AUTH_ACTION_COUNT": "3"}) as (endpoint, server):
        yield endpoint, server


def test_status_and_run_with_refused_credentials_name_the_uri_and_field(auth_s3, tmp_path, capsys):
    from jobs.cli import main

    endpoint, server = auth_s3
    uri = f"s3://{server.buckets[1]}/out"
    options = (
        f"{{key: AKIAWRONGKEY0000, secret: {WRONG_SECRET}, client_kwargs: {{endpoint_url: '{endpoint}'}}}}"
    )
    code = main(["status", uri, "--storage-options", options])
    err = capsys.readouterr().err
    assert code == 1, err
    assert uri.split("://")[1] in err and "output.storage_options" in err and WRONG_SECRET not in err
    assert "Traceback" not in err
