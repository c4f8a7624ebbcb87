"""A real local chain (LiteSVM, its own sqlite history) in a temp dir with random master keys,
and the real marketplace app serving it at /chain/rpc over uvicorn on a free port, so solana-py
and the rpc backend talk to it over HTTP exactly as to a cluster."""

from __future__ import annotations

import asyncio
import base64
import secrets
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import uvicorn
from solana.rpc.async_api import AsyncClient
from solana.rpc.commitment import Finalized

from cyxwiz.chain.local import LocalChain
from cyxwiz.config import Settings
from cyxwiz.db import Database, make_engine
from cyxwiz.migrate import upgrade
from cyxwiz.web.app import create_app

T = TypeVar("T")


class FakeTime:
    """The local chain's clock: tests age blockhashes with ``advance``."""

    def __init__(self) -> None:
        self.value = time.time()
        self.lock = threading.Lock()

    def __call__(self) -> float:
        with self.lock:
            return self.value

    def advance(self, seconds: float) -> None:
        with self.lock:
            self.value += seconds


def chain_settings(tmp: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": tmp / "data",
        "master_key": base64.b64encode(secrets.token_bytes(32)).decode(),
        "chain_blockhash_ttl_seconds": 60.0,
    }
    values.update(overrides)
    return Settings(**values)


def open_local(settings: Settings, now: Callable[[], float] | None = None) -> LocalChain:
    return LocalChain(
        directory=settings.resolved_chain_dir,
        master_keys=settings.master_keys,
        blockhash_ttl=settings.chain_blockhash_ttl_seconds,
        now=now or time.time,
    )


@pytest.fixture
def fake_time() -> FakeTime:
    return FakeTime()


@pytest.fixture
def local_settings(tmp_path: Path) -> Settings:
    return chain_settings(tmp_path)


@pytest.fixture
def local_chain(local_settings: Settings, fake_time: FakeTime) -> Iterator[LocalChain]:
    chain = open_local(local_settings, fake_time)
    yield chain
    chain.close()


def free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@dataclass
class Served:
    """The marketplace app behind uvicorn in a daemon thread, serving ``chain`` at /chain/rpc."""

    url: str
    settings: Settings
    chain: LocalChain
    time: FakeTime
    stop: Callable[[], None]
    db: Database

    @property
    def rpc_url(self) -> str:
        return f"{self.url}/chain/rpc"

    def post(self, body: Any = None, *, content: bytes | None = None) -> httpx.Response:
        """One raw HTTP POST to /chain/rpc."""
        if content is not None:
            return httpx.post(
                self.rpc_url,
                content=content,
                headers={"content-type": "application/json"},
                timeout=30,
            )
        return httpx.post(self.rpc_url, json=body, timeout=30)

    def call(self, method: str, *params: Any) -> dict[str, Any]:
        """One JSON-RPC call; the whole response object."""
        r = self.post({"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)})
        assert r.status_code == 200, r.text
        answer: dict[str, Any] = r.json()
        return answer

    def solana(self, fn: Callable[[AsyncClient], Awaitable[T]]) -> T:
        """Run ``fn`` with solana-py's client (0.41 ships only the async one) on this endpoint."""

        async def main() -> T:
            async with AsyncClient(self.rpc_url, commitment=Finalized, timeout=30) as client:
                return await fn(client)

        return asyncio.run(main())


def serve_app(app: Any) -> tuple[str, Callable[[], None]]:
    """Any ASGI app behind uvicorn in a daemon thread: (base URL, stop)."""
    sock = free_socket()
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
        time.sleep(0.01)

    def stop() -> None:
        server.should_exit = True
        thread.join(20)
        sock.close()

    return f"http://127.0.0.1:{sock.getsockname()[1]}", stop


def serve_chain(tmp: Path, settings: Settings, chain: LocalChain, now: FakeTime) -> Served:
    """The real marketplace app (migrated SQLite file of its own) serving ``chain``."""
    db_url = f"sqlite:///{tmp / 'market.db'}"
    engine = make_engine(db_url)
    upgrade(engine)
    engine.dispose()
    db = Database.from_url(db_url)
    url, stop = serve_app(create_app(settings, database=db, chain=chain))
    return Served(url, settings, chain, now, stop, db)


@pytest.fixture(scope="session")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """One served chain per test process; tests use fresh wallets so they never collide."""
    tmp = tmp_path_factory.mktemp("chain-served")
    settings = chain_settings(tmp)
    now = FakeTime()
    chain = open_local(settings, now)
    srv = serve_chain(tmp, settings, chain, now)
    try:
        yield srv
    finally:
        srv.stop()
        srv.db.engine.dispose()
        chain.close()
