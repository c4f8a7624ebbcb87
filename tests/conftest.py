"""Shared fixtures: a real database (SQLite, or PostgreSQL via CYXWIZ_TEST_DATABASE_URL) migrated
once per session, each test inside a transaction that is rolled back, a real encrypted blob store
in a temp dir, and the real app behind a TestClient."""

from __future__ import annotations

import base64
import os
import secrets
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

# Imported before any test runs a chain transaction: executing SPL Token programs in LiteSVM
# leaves the x87 FPU state dirty, so the next long-double operation in the process (scipy's
# import-time np.ldexp(longdouble) constant) gets a wrong value and an "invalid value" warning,
# an error under this suite's filterwarnings. Known issue, docs/chain.md ("Known issues").
import scipy.stats  # noqa: F401
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Connection, Engine, text
from sqlalchemy.engine import make_url

from cyxwiz.clock import TestClock
from cyxwiz.config import Settings
from cyxwiz.db import Database, make_engine
from cyxwiz.migrate import upgrade
from cyxwiz.storage import BlobStore, blob_store_from_settings
from cyxwiz.web.app import create_app
from tests.factories import Api

PG_URL = os.environ.get("CYXWIZ_TEST_DATABASE_URL")

# Every test client (and every server a test starts, which inherits the environment) registers
# its accounts from one address; the per-IP registration throttle's production default (10 an
# hour) would refuse the 11th. The throttle's own tests set their limits explicitly.
os.environ.setdefault("CYXWIZ_REGISTER_IP_MAX_ACCOUNTS", "100000")


def _worker_suffix() -> str:
    return os.environ.get("PYTEST_XDIST_WORKER", "main")


def _prepare_postgres(url: str) -> str:
    """A fresh database per xdist worker (test_gw0, ...) so workers never share tables."""
    base = make_url(url)
    name = f"{base.database}_{_worker_suffix()}"
    admin = make_engine(
        base.set(database="postgres").render_as_string(hide_password=False),
        isolation_level="AUTOCOMMIT",
    )
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return base.set(database=name).render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    if PG_URL:
        return _prepare_postgres(PG_URL)
    return f"sqlite:///{tmp_path_factory.mktemp('db') / 'test.db'}"


@pytest.fixture(scope="session")
def engine(database_url: str) -> Iterator[Engine]:
    eng = make_engine(database_url)
    upgrade(eng)
    yield eng
    eng.dispose()


@pytest.fixture
def connection(engine: Engine) -> Iterator[Connection]:
    conn = engine.connect()
    trans = conn.begin()
    yield conn
    trans.rollback()
    conn.close()


@pytest.fixture
def db(engine: Engine, connection: Connection) -> Database:
    """A Database whose every session runs inside this test's rolled-back transaction."""
    return Database(engine, bind=connection)


@pytest.fixture
def settings(tmp_path: pytest.TempPathFactory) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",  # type: ignore[operator]
        master_key=base64.b64encode(secrets.token_bytes(32)).decode(),
        blob_chunk_size=64 * 1024,
    )


@pytest.fixture
def blobs(settings: Settings) -> BlobStore:
    return blob_store_from_settings(settings)


@pytest.fixture
def clock() -> TestClock:
    """The app's clock; tests move time with ``clock.advance(...)``."""
    return TestClock(datetime(2026, 11, 24, 12, 0, tzinfo=UTC))


@pytest.fixture
def app(settings: Settings, db: Database, blobs: BlobStore, clock: TestClock) -> FastAPI:
    return create_app(settings, database=db, blobs=blobs, clock=clock)


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


@pytest.fixture
def api(client: TestClient) -> Api:
    return Api(client)
