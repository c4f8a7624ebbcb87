"""A real marketplace with the inference gateway (uvicorn, its own migrated database: SQLite file,
or a PostgreSQL database of its own when CYXWIZ_TEST_DATABASE_URL is set) and real node agents.

The only stand-in is ``LedgerMeter``: a small Meter (the gateway's metering protocol) that
really grants and refuses — a per-user allowance of calls — and records every ticket's fate, so
tests can prove a call is settled exactly once on success and never on failure.
"""

from __future__ import annotations

import base64
import os
import secrets
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select, text
from sqlalchemy.engine import make_url
from tests.factories import Account
from tests.node.conftest import Served, Stack, TinyModels, _account, serve, tiny_models

from cyxwiz.accounts.models import User
from cyxwiz.config import Settings
from cyxwiz.db import Database, make_engine
from cyxwiz.errors import DomainError
from cyxwiz.inference.gateway import Gateway
from cyxwiz.inference.interfaces import Ticket
from cyxwiz.migrate import upgrade
from cyxwiz.web.app import create_app

__all__ = ["tiny_models"]

PG_URL = os.environ.get("CYXWIZ_TEST_DATABASE_URL")


class InsufficientFunds(DomainError):
    code = "insufficient_funds"
    status = 402
    title = "Insufficient funds"


@dataclass
class LedgerMeter:
    """Grants ``allowance[user]`` calls (default ``default_allowance``); records outcomes."""

    default_allowance: int = 1_000_000
    allowance: dict[uuid.UUID, int] = field(default_factory=dict)
    open: dict[str, Ticket] = field(default_factory=dict)
    settled: list[tuple[Ticket, str, uuid.UUID | None, int]] = field(default_factory=list)
    cancelled: list[Ticket] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # protocol violations seen
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def authorize(
        self,
        *,
        user_id: uuid.UUID,
        model_id: uuid.UUID,
        version_id: uuid.UUID,
        api_key_id: uuid.UUID | None,
        units: int,
        rows: int = 1,
        client_ip: str | None = None,
    ) -> Ticket:
        with self.lock:
            left = self.allowance.get(user_id, self.default_allowance)
            if left < 1:
                raise InsufficientFunds("your balance does not cover this call")
            self.allowance[user_id] = left - 1
            ticket = Ticket(
                kind="paid",
                user_id=user_id,
                model_id=model_id,
                version_id=version_id,
                api_key_id=api_key_id,
                units=units,
                unit="request",
                currency="USDC",
                token=uuid.uuid4().hex,
            )
            self.open[ticket.token] = ticket
            return ticket

    async def settle(
        self, ticket: Ticket, *, request_id: str, node_id: uuid.UUID | None, units: int
    ) -> None:
        with self.lock:
            if self.open.pop(ticket.token, None) is None:
                self.errors.append(f"settle of a closed ticket {ticket.token}")
            if any(rid == request_id for _, rid, _, _ in self.settled):
                self.errors.append(f"request id {request_id} settled twice")
            if units > ticket.units:
                self.errors.append("settled more units than reserved")
            self.settled.append((ticket, request_id, node_id, units))

    async def cancel(self, ticket: Ticket) -> None:
        with self.lock:
            if self.open.pop(ticket.token, None) is None:
                self.errors.append(f"cancel of a closed ticket {ticket.token}")
            self.allowance[ticket.user_id] = (
                self.allowance.get(ticket.user_id, self.default_allowance) + 1
            )
            self.cancelled.append(ticket)

    async def flush(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def counts(self) -> tuple[int, int]:
        with self.lock:
            return len(self.settled), len(self.cancelled)

    def settled_for(self, user_id: uuid.UUID) -> list[tuple[Ticket, str, uuid.UUID | None, int]]:
        with self.lock:
            return [s for s in self.settled if s[0].user_id == user_id]


def _database_url(tmp: Path, label: str) -> str:
    if not PG_URL:
        return f"sqlite:///{tmp / 'market.db'}"
    base = make_url(PG_URL)
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    name = f"{base.database}_gw_{label}_{worker}"
    admin = make_engine(
        base.set(database="postgres").render_as_string(hide_password=False),
        isolation_level="AUTOCOMMIT",
    )
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return base.set(database=name).render_as_string(hide_password=False)


@dataclass
class GatewayStack:
    """The marketplace (with gateway) + accounts + published tiny models; nodes on demand."""

    stack: Stack
    meter: LedgerMeter
    app: Any
    market: Served
    buyer: Account
    buyer_id: uuid.UUID
    key: str  # the buyer's API key with the 'inference' scope
    extra: list[Served] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.stack.url

    @property
    def http(self) -> httpx.Client:
        return self.stack.http

    @property
    def gateway(self) -> Gateway:
        gw: Gateway = self.app.state.ctx.gateway
        return gw

    def auth(self, key: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key or self.key}"}

    def api_key(self, account: Account, scopes: list[str], name: str = "k") -> tuple[str, str]:
        r = self.http.post(
            "/api/v1/api-keys", json={"name": name, "scopes": scopes}, headers=account.headers
        )
        assert r.status_code == 201, r.text
        body = r.json()
        return body["key"], str(body["id"])

    def second_app(self, **overrides: Any) -> tuple[str, Gateway]:
        """Another API replica on the same database with different settings."""
        settings = self.stack.settings.model_copy(update=overrides)
        app = create_app(settings, database=self.stack.db, meter=self.meter)
        served = serve(app)
        self.extra.append(served)
        return served.url, app.state.ctx.gateway


def build_stack(
    tmp: Path, models: TinyModels, label: str, **overrides: Any
) -> Iterator[GatewayStack]:
    db_url = _database_url(tmp, label)
    engine = make_engine(db_url)
    upgrade(engine)
    engine.dispose()
    values: dict[str, Any] = {
        "data_dir": tmp / "data",
        "master_key": base64.b64encode(secrets.token_bytes(32)).decode(),
        "blob_chunk_size": 4096,
        "inference_auth_cache_seconds": 0.5,
        "inference_nodes_cache_seconds": 0.2,
        "inference_node_stale_seconds": 1.5,
        "inference_max_body_bytes": 256 * 1024,
        "inference_rate_per_second": 10_000.0,
        "inference_burst": 10_000,
        "inference_node_timeout_seconds": 10.0,
    }
    values.update(overrides)
    settings = Settings(**values)
    db = Database.from_url(db_url)
    meter = LedgerMeter()
    app = create_app(settings, database=db, meter=meter)
    market = serve(app)
    http = httpx.Client(base_url=market.url, timeout=30)
    admin = _account(http, "root-admin")
    with db.session() as s:
        s.scalars(select(User).where(User.username == "root-admin")).one().role = "admin"
    st = Stack(
        url=market.url,
        db=db,
        settings=settings,
        admin=admin,
        creator=_account(http, "tiny-creator"),
        operator=_account(http, "node-operator"),
        tmp=tmp,
        http=http,
    )
    buyer = _account(http, "buyer")
    r = http.post(
        "/api/v1/api-keys",
        json={"name": "prod", "scopes": ["inference"]},
        headers=buyer.headers,
    )
    assert r.status_code == 201, r.text
    key = r.json()["key"]
    buyer_id = uuid.UUID(http.get("/api/v1/me", headers=buyer.headers).json()["id"])
    st.publish("iris", {"model.onnx": models.iris, "config.json": b"{}"})
    st.publish("sentiment", {"model.onnx": models.text})
    st.publish("ridge", {"model.onnx": models.regressor})
    gs = GatewayStack(st, meter, app, market, buyer, buyer_id, key)
    try:
        yield gs
    finally:
        for extra in gs.extra:
            extra.stop()
        for node in st.nodes:
            node.stop()
        http.close()
        market.stop()
        db.engine.dispose()


@pytest.fixture(scope="session")
def gw(tmp_path_factory: pytest.TempPathFactory, tiny_models: TinyModels) -> Iterator[GatewayStack]:
    """The main stack: one node, started with nothing assigned (the gateway cold-starts it)."""
    for gs in build_stack(tmp_path_factory.mktemp("gw-main"), tiny_models, "main"):
        gs.stack.start_node("gw-main-node")
        yield gs
