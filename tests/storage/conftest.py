"""Fixtures for the blob store tests: every test runs against the local store and against S3
(moto's server mode on 127.0.0.1, one server per session, one bucket per test)."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config

from .support import AWS_ENV, LocalBackend, S3Backend


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture(scope="session")
def s3_client(moto_endpoint: str) -> Any:
    """One client for the session (creating a boto3 client is slow); explicit dummy creds."""
    return boto3.session.Session(
        aws_access_key_id=AWS_ENV["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=AWS_ENV["AWS_SECRET_ACCESS_KEY"],
        region_name=AWS_ENV["AWS_DEFAULT_REGION"],
    ).client("s3", endpoint_url=moto_endpoint, config=Config(retries={"max_attempts": 1}))


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Dummy AWS credentials in the environment; no real config files are read."""
    for name, value in AWS_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.fspath(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.fspath(tmp_path / "no-aws-credentials"))


@pytest.fixture
def s3_bucket(s3_client: Any, aws_env: None) -> Iterator[str]:
    bucket = f"cyxwiz-test-{uuid.uuid4().hex[:16]}"
    s3_client.create_bucket(Bucket=bucket)
    yield bucket
    S3Backend(s3_client, bucket, "").clear()


@pytest.fixture(params=["local", "s3"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    if request.param == "local":
        yield LocalBackend(tmp_path / "blobs")
        return
    client = request.getfixturevalue("s3_client")
    bucket = request.getfixturevalue("s3_bucket")
    yield S3Backend(client, bucket, request.getfixturevalue("moto_endpoint"))


@pytest.fixture
def store(backend: Any) -> Any:
    return backend.make()
