"""Fixtures for provenance tests: a real LocalChain (LiteSVM) in tmp_path with random master keys,
the app settling on it, and — for tests that need real commits or a real HTTP client — the app
behind uvicorn on a fresh migrated database of the test's own."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from cyxwiz.chain.local import LocalChain
from cyxwiz.clock import TestClock
from cyxwiz.config import Settings
from cyxwiz.db import Database
from cyxwiz.storage import BlobStore
from cyxwiz.web.app import create_app
from tests.billing.conftest import (
    _free_socket,
    committed_db,
    committed_template,
    committed_url,
)

__all__ = ["committed_db", "committed_template", "committed_url"]


class ChainTime:
    """The chain's wall clock (blockhashes expire after ``BLOCKHASH_TTL`` seconds of it)."""

    def __init__(self) -> None:
        self.t = time.time()

    def __call__(self) -> float:
        return self.t

    def expire_blockhash(self, chain: LocalChain) -> None:
        """Move past the blockhash TTL and roll the chain's blockhash."""
        self.t += BLOCKHASH_TTL + 1
        chain.latest_blockhash()


BLOCKHASH_TTL = 60.0


@pytest.fixture
def chain_time() -> ChainTime:
    return ChainTime()


@pytest.fixture
def chain(tmp_path: Path, chain_time: ChainTime) -> Iterator[LocalChain]:
    c = LocalChain(
        directory=tmp_path / "chain",
        master_keys={"k": os.urandom(32)},
        blockhash_ttl=BLOCKHASH_TTL,
        now=chain_time,
    )
    yield c
    c.close()


@pytest.fixture
def app(
    settings: Settings, db: Database, blobs: BlobStore, clock: TestClock, chain: LocalChain
) -> FastAPI:
    return create_app(settings, database=db, blobs=blobs, clock=clock, chain=chain)


@dataclass
class Live:
    """The real app (settling on ``chain``) behind uvicorn, on a committed database."""

    base_url: str
    db: Database
    chain: LocalChain
    clock: TestClock
    blobs: BlobStore

    def client(self, timeout: float = 60.0) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=timeout)


@pytest.fixture
def live(
    committed_db: Database,
    settings: Settings,
    blobs: BlobStore,
    clock: TestClock,
    chain: LocalChain,
) -> Iterator[Live]:
    app = create_app(settings, database=committed_db, blobs=blobs, clock=clock, chain=chain)
    sock = _free_socket()
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app, log_level="critical", ws="none", lifespan="on", access_log=False, timeout_keep_alive=30
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield Live(f"http://127.0.0.1:{port}", committed_db, chain, clock, blobs)
    finally:
        server.should_exit = True
        thread.join(20)
        sock.close()
