"""Fixtures for money tests that need real commits: a fresh, migrated database per test
(never the shared rolled-back one) and the real app served by uvicorn on 127.0.0.1.

PostgreSQL (CYXWIZ_TEST_DATABASE_URL set): a template ``<db>_conctpl_<worker>`` is migrated once
per session, each test gets ``<db>_conc_<worker>`` cloned from it and dropped afterwards.
SQLite: the migrated template file is copied per test into the test's tmp dir.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.engine import URL, make_url

from cyxwiz.chain.interfaces import Chain
from cyxwiz.clock import TestClock
from cyxwiz.config import Settings
from cyxwiz.db import Database, make_engine
from cyxwiz.migrate import upgrade
from cyxwiz.web.app import create_app
from tests.factories import PASSWORD, Account

PG_URL = os.environ.get("CYXWIZ_TEST_DATABASE_URL")


def _worker() -> str:
    return os.environ.get("PYTEST_XDIST_WORKER", "main")


def _admin_exec(base: URL, *statements: str) -> None:
    admin = make_engine(
        base.set(database="postgres").render_as_string(hide_password=False),
        isolation_level="AUTOCOMMIT",
    )
    try:
        with admin.connect() as conn:
            for sql in statements:
                conn.execute(text(sql))
    finally:
        admin.dispose()


def _render(url: URL) -> str:
    return url.render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def committed_template(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A migrated database to clone per test (a URL on PostgreSQL, a file path on SQLite)."""
    if PG_URL:
        base = make_url(PG_URL)
        name = f"{base.database}_conctpl_{_worker()}"
        _admin_exec(
            base, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', f'CREATE DATABASE "{name}"'
        )
        url = _render(base.set(database=name))
        eng = make_engine(url)
        upgrade(eng)
        eng.dispose()
        yield name
        _admin_exec(base, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        return
    path = tmp_path_factory.mktemp("conc-template") / "template.db"
    eng = make_engine(f"sqlite:///{path}")
    upgrade(eng)
    eng.dispose()  # the last connection to close checkpoints the WAL into the main file
    yield str(path)


@pytest.fixture
def committed_url(committed_template: str, tmp_path: Path) -> Iterator[str]:
    """The URL of a fresh, migrated database of this test's own; every commit is real."""
    if PG_URL:
        base = make_url(PG_URL)
        name = f"{base.database}_conc_{_worker()}"
        _admin_exec(
            base,
            f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)',
            f'CREATE DATABASE "{name}" TEMPLATE "{committed_template}"',
        )
        yield _render(base.set(database=name))
        _admin_exec(base, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        return
    path = tmp_path / "committed.db"
    for suffix in ("", "-wal"):
        if Path(committed_template + suffix).exists():
            shutil.copyfile(committed_template + suffix, f"{path}{suffix}")
    yield f"sqlite:///{path}"


@pytest.fixture
def committed_db(committed_url: str) -> Iterator[Database]:
    """A Database on the fresh database: sessions really commit (one engine, a pool)."""
    database = Database.from_url(committed_url)
    yield database
    database.engine.dispose()


@dataclass
class LiveServer:
    """The real app behind uvicorn in a background thread."""

    base_url: str
    db: Database
    clock: TestClock
    settings: Settings
    app: FastAPI

    def client(self, timeout: float = 60.0) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=timeout)

    @property
    def chain(self) -> Chain:
        """The chain the app settles on (its own LocalChain in the settings' data dir)."""
        chain: Chain = self.app.state.ctx.chain
        return chain


def _free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@pytest.fixture
def live(committed_db: Database, settings: Settings, clock: TestClock) -> Iterator[LiveServer]:
    """uvicorn serving create_app(settings, database=<fresh committed db>) on a free port."""
    app = create_app(settings, database=committed_db, clock=clock)
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
        yield LiveServer(f"http://127.0.0.1:{port}", committed_db, clock, settings, app)
    finally:
        server.should_exit = True
        thread.join(20)
        sock.close()


def register(c: httpx.Client, username: str) -> Account:
    """Register and log in ``username`` over HTTP."""
    r = c.post(
        "/api/v1/auth/register",
        json={"username": username, "email": f"{username}@example.com", "password": PASSWORD},
    )
    assert r.status_code == 201, r.text
    r = c.post("/api/v1/auth/login", json={"username": username, "password": PASSWORD})
    assert r.status_code == 200, r.text
    return Account(username, r.json()["access_token"])
