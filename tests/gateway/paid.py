"""A paid marketplace for end-to-end billing tests: the real app (``create_app`` with its default
``UsageMeter``, so every call moves real money in the real ledger) behind uvicorn on its own
migrated database (SQLite file, or a PostgreSQL database of its own), a creator's model listed
with a per-1K-requests price and two contributors, funded buyers with inference API keys, and
node agents — in-process (``Stack.start_node``) or as real ``kill -9``-able subprocesses.
"""

from __future__ import annotations

import base64
import os
import secrets
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import select
from tests.factories import Account
from tests.gateway.conftest import _database_url
from tests.node.conftest import Served, Stack, TinyModels, _account, free_socket, serve

from cyxwiz.accounts.models import User
from cyxwiz.billing import flows
from cyxwiz.config import Settings
from cyxwiz.db import Database, make_engine
from cyxwiz.inference.gateway import Gateway
from cyxwiz.inference.metering import UsageMeter
from cyxwiz.inference.models import Node
from cyxwiz.inference.usage_models import UsageEvent
from cyxwiz.ledger import service as ledger
from cyxwiz.migrate import upgrade
from cyxwiz.money import Currency

USDC = Currency.USDC
SPLIT = (6667, 3333)  # the creator's and the co-creator's share_bps

# A node agent in its own process: the real NodeConfig/create_node_app behind uvicorn, on a
# socket the test bound (no port race), heartbeating at a test interval, dying with the test.
_NODE_MAIN = """
import ctypes, os, signal, socket
from pathlib import Path
try:
    ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: die with the test
except OSError:
    pass
import uvicorn
from cyxwiz.node.app import create_node_app
from cyxwiz.node.config import NodeConfig

env = os.environ
sock = socket.socket(fileno=int(env["TEST_NODE_FD"]))
port = sock.getsockname()[1]
config = NodeConfig(
    marketplace_url=env["TEST_NODE_MARKETPLACE"],
    token=env["CYXWIZ_NODE_TOKEN"],
    port=port,
    advertise_url=f"http://127.0.0.1:{port}",
    cache_dir=Path(env["TEST_NODE_CACHE"]),
    capacity=int(env["TEST_NODE_CAPACITY"]),
    heartbeat_seconds=float(env["TEST_NODE_HEARTBEAT"]),
)
server = uvicorn.Server(
    uvicorn.Config(
        create_node_app(config), log_level="critical", access_log=False, lifespan="on",
        timeout_keep_alive=30,
    )
)
server.run(sockets=[sock])
"""


@dataclass
class NodeProcess:
    """A ``cyxwiz`` node agent running in a subprocess (so it can be killed with SIGKILL)."""

    name: str
    node_id: str
    url: str
    proc: subprocess.Popen[bytes]

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"node {self.name} exited ({self.proc.returncode})"
            try:
                if httpx.get(self.url + "/v2/health/ready", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"node {self.name} did not become ready")

    def kill9(self) -> None:
        """SIGKILL: no shutdown, no goodbye; in-flight requests die with their connections."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


@dataclass
class PaidStack:
    """The marketplace with the real metering engine, the priced model and its people."""

    stack: Stack
    app: Any
    market: Served
    cocreator: Account
    model: str  # owner/name
    version_id: str
    price: int  # per 1K requests, USDC minor units
    master_key: str
    db_url: str
    ids: dict[str, uuid.UUID] = field(default_factory=dict)  # username -> user id
    processes: list[NodeProcess] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.stack.url

    @property
    def http(self) -> httpx.Client:
        return self.stack.http

    @property
    def db(self) -> Database:
        return self.stack.db

    @property
    def settings(self) -> Settings:
        return self.stack.settings

    @property
    def gateway(self) -> Gateway:
        gw: Gateway = self.app.state.ctx.gateway
        return gw

    @property
    def meter(self) -> UsageMeter:
        meter = self.gateway.meter
        assert isinstance(meter, UsageMeter)  # the real engine, not a stand-in
        return meter

    # ------------------------------------------------------------ people and money

    def account(self, username: str) -> Account:
        acc = _account(self.http, username)
        self.ids[username] = self.uid(acc)
        return acc

    def uid(self, who: Account) -> uuid.UUID:
        found = self.ids.get(who.username)
        if found is None:
            r = self.http.get("/api/v1/me", headers=who.headers)
            assert r.status_code == 200, r.text
            found = self.ids[who.username] = uuid.UUID(r.json()["id"])
        return found

    def fund(self, who: Account, amount: int) -> None:
        """Add ``amount`` USDC minor units to ``who``'s balance the way a user does it on the
        dev chain: a Solana Pay deposit request paid by a wallet holding test tokens, scanned."""
        from tests.chain_support import funded_wallet, pay

        chain = self.app.state.ctx.chain
        wallet = funded_wallet(chain, USDC, amount)
        r = self.http.post(
            "/api/v1/deposits", json={"amount": amount, "currency": "USDC"}, headers=who.headers
        )
        assert r.status_code == 201, r.text
        deposit = r.json()
        pay(chain, wallet, deposit["url"])
        r = self.http.post(f"/api/v1/deposits/{deposit['id']}/scan", headers=who.headers)
        assert r.status_code == 200, r.text
        assert r.json()["credited"]["amount"] == amount, r.text

    def inference_key(self, who: Account) -> dict[str, str]:
        r = self.http.post(
            "/api/v1/api-keys",
            json={"name": "prod", "scopes": ["inference"]},
            headers=who.headers,
        )
        assert r.status_code == 201, r.text
        return {"Authorization": f"Bearer {r.json()['key']}"}

    def balance(self, code: str) -> ledger.Balance:
        with self.db.session() as s:
            return ledger.balance_of_code(s, code, USDC)

    def user_balance(self, who: Account) -> ledger.Balance:
        return self.balance(flows.user_code(self.uid(who), USDC))

    def events(self, who: Account) -> list[UsageEvent]:
        with self.db.session() as s:
            rows = list(s.scalars(select(UsageEvent).where(UsageEvent.user_id == self.uid(who))))
            s.expunge_all()
            return rows

    def settled(self, who: Account, calls: int, charge: int, funded: int) -> bool:
        """Whether ``calls`` usage events are stored and their reservation is settled."""
        bal = self.user_balance(who)
        return (
            len(self.events(who)) == calls
            and bal.pending_debits == 0
            and bal.posted == funded - charge
            and self.balance(flows.platform_code("metering", USDC)).posted == 0
        )

    def ledger_problems(self) -> list[str]:
        with self.db.session() as s:
            report = ledger.check(s)
        return list(report.problems)

    # ------------------------------------------------------------ nodes

    def spawn_node(self, name: str, *, capacity: int = 4, heartbeat: float = 0.3) -> NodeProcess:
        """Create a node (as the operator) and start its agent in a subprocess."""
        node_id, token = self.stack.create_node(name)
        sock = free_socket()
        port = sock.getsockname()[1]
        env = {
            **os.environ,
            "CYXWIZ_NODE_TOKEN": token,
            "TEST_NODE_FD": str(sock.fileno()),
            "TEST_NODE_MARKETPLACE": self.url,
            "TEST_NODE_CACHE": str(self.stack.tmp / f"cache-{name}"),
            "TEST_NODE_CAPACITY": str(capacity),
            "TEST_NODE_HEARTBEAT": str(heartbeat),
        }
        proc = subprocess.Popen(
            [sys.executable, "-c", _NODE_MAIN],
            env=env,
            pass_fds=(sock.fileno(),),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        sock.close()  # the child holds its own copy
        node = NodeProcess(name, node_id, f"http://127.0.0.1:{port}", proc)
        self.processes.append(node)
        return node

    def warm(self, node_id: str) -> None:
        """Assign the priced model's version to the node (admin) and load it there now."""
        r = self.http.put(
            f"/api/v1/nodes/{node_id}/assignments/{self.version_id}",
            headers=self.stack.admin.headers,
        )
        assert r.status_code == 200, r.text
        with self.db.session() as s:
            node = s.get(Node, uuid.UUID(node_id))
            assert node is not None
            assert node.url is not None
            url, secret = node.url, node.gateway_secret
        r = httpx.post(
            f"{url}/v2/repository/models/{self.version_id}/load",
            headers={"Authorization": f"Bearer {secret}"},
            timeout=30,
        )
        assert r.status_code == 200, r.text


def build_paid_stack(
    tmp: Path, models: TinyModels, label: str, *, price: int, **overrides: Any
) -> Iterator[PaidStack]:
    """The marketplace with the real meter; ``paid-creator/iris`` priced at ``price`` per 1K
    requests and shared ``SPLIT`` with ``paid-cocreator``; no node yet."""
    db_url = _database_url(tmp, label)
    engine = make_engine(db_url)
    upgrade(engine)
    engine.dispose()
    master_key = base64.b64encode(secrets.token_bytes(32)).decode()
    values: dict[str, Any] = {
        "data_dir": tmp / "data",
        "master_key": master_key,
        "blob_chunk_size": 4096,
        "inference_auth_cache_seconds": 0.5,
        "inference_nodes_cache_seconds": 0.2,
        # nodes heartbeat every 0.3 s; 5 s of silence (not 1.5 s) keeps a loaded 2-core CI
        # machine from emptying the routing table mid-test
        "inference_node_stale_seconds": 5.0,
        "inference_rate_per_second": 10_000.0,
        "inference_burst": 10_000,
        "inference_node_timeout_seconds": 10.0,
        "inference_cache_seconds": 0,  # every call reaches a node: exact compute shares
        "metering_flush_seconds": 0.05,
    }
    values.update(overrides)
    settings = Settings(**values)
    db = Database.from_url(db_url)
    app = create_app_with_real_meter(settings, db)
    market = serve(app)
    http = httpx.Client(base_url=market.url, timeout=30)
    admin = _account(http, "paid-admin")
    with db.session() as s:
        s.scalars(select(User).where(User.username == "paid-admin")).one().role = "admin"
    st = Stack(
        url=market.url,
        db=db,
        settings=settings,
        admin=admin,
        creator=_account(http, "paid-creator"),
        operator=_account(http, "paid-operator"),
        tmp=tmp,
        http=http,
    )
    version_id = st.publish("iris", {"model.onnx": models.iris})
    paid = PaidStack(
        stack=st,
        app=app,
        market=market,
        cocreator=_account(http, "paid-cocreator"),
        model="paid-creator/iris",
        version_id=version_id,
        price=price,
        master_key=master_key,
        db_url=db_url,
    )
    h = st.creator.headers
    r = http.patch(
        f"/api/v1/models/{paid.model}",
        json={
            "contributors": [
                {"username": st.creator.username, "share_bps": SPLIT[0]},
                {"username": paid.cocreator.username, "share_bps": SPLIT[1]},
            ]
        },
        headers=h,
    )
    assert r.status_code == 200, r.text
    r = http.put(
        f"/api/v1/models/{paid.model}/offers",
        json={"per_1k_requests": {"amount": price, "currency": "USDC"}},
        headers=h,
    )
    assert r.status_code == 200, r.text
    assert r.json()["per_1k_requests"]["amount"] == price
    try:
        yield paid
    finally:
        for proc in paid.processes:
            proc.stop()
        for node in st.nodes:
            node.stop()
        http.close()
        market.stop()  # the lifespan closes the meter: every open reservation is resolved
        db.engine.dispose()


def create_app_with_real_meter(settings: Settings, db: Database) -> Any:
    """``create_app`` exactly as ``cyxwiz serve`` builds it: no meter passed, so the gateway
    meters with the real ``UsageMeter`` over the real ledger."""
    from cyxwiz.web.app import create_app

    app = create_app(settings, database=db)
    assert isinstance(app.state.ctx.gateway.meter, UsageMeter)
    return app


def wait_until(predicate: Any, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"{what}: not met within {timeout} s")
