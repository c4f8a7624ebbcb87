"""A real marketplace (uvicorn, its own migrated SQLite file and blob dir: commits never touch
the shared test database) and real node agents (uvicorn threads) registered with it, plus
tiny ONNX models trained here and published through the API."""

from __future__ import annotations

import base64
import json
import secrets
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import uvicorn
from sqlalchemy import select

from cyxwiz.accounts.models import User
from cyxwiz.config import Settings
from cyxwiz.db import Database, make_engine
from cyxwiz.inference.models import Node
from cyxwiz.inference.service import decide_operator
from cyxwiz.migrate import upgrade
from cyxwiz.node.app import NodeAgent, create_node_app
from cyxwiz.node.config import NodeConfig
from cyxwiz.web.app import create_app
from tests.factories import PASSWORD, Account


def free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@dataclass
class Served:
    """An ASGI app behind uvicorn in a daemon thread."""

    url: str
    server: uvicorn.Server
    thread: threading.Thread
    sock: socket.socket

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(20)
        self.sock.close()


def serve(app: Any, sock: socket.socket | None = None, *, wait: bool = True) -> Served:
    sock = sock or free_socket()
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app, log_level="critical", ws="none", lifespan="on", access_log=False, timeout_keep_alive=30
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    served = Served(f"http://127.0.0.1:{port}", server, thread, sock)
    deadline = time.monotonic() + 20
    while wait and not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    return served


# ---------------------------------------------------------------- tiny models


def _label_meta(proto: Any, meta: dict[str, str]) -> bytes:
    import onnx

    onnx.helper.set_model_props(proto, meta)
    data: bytes = proto.SerializeToString()
    return data


@dataclass(frozen=True)
class TinyModels:
    iris: bytes  # LogisticRegression, 4 float features -> label (INT64) + probabilities
    text: bytes  # Tfidf + LogisticRegression on strings -> label (BYTES) + probabilities
    regressor: bytes  # Ridge, 3 float features -> 2 targets
    iris_rows: list[list[float]]
    texts: list[str]
    reg_rows: list[list[float]]


@pytest.fixture(scope="session")
def tiny_models() -> TinyModels:
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType, StringTensorType
    from sklearn.datasets import load_iris
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.pipeline import make_pipeline

    x, y = load_iris(return_X_y=True)
    iris = LogisticRegression(max_iter=500).fit(x, y)
    iris_proto = convert_sklearn(
        iris,
        initial_types=[("input", FloatTensorType([None, 4]))],
        options={id(iris): {"zipmap": False}},
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    iris_bytes = _label_meta(
        iris_proto,
        {
            "cyxwiz.kind": "classifier",
            "cyxwiz.labels": json.dumps(["0", "1", "2"]),
            "cyxwiz.features": json.dumps(["sl", "sw", "pl", "pw"]),
        },
    )

    texts = ["great product, love it", "terrible, broke in a day", "works well", "awful awful"]
    labels = ["pos", "neg", "pos", "neg"]
    tfidf = TfidfVectorizer()
    text = make_pipeline(tfidf, LogisticRegression()).fit(texts, labels)
    text_proto = convert_sklearn(
        text,
        initial_types=[("text", StringTensorType([None, 1]))],
        options={id(tfidf): {"locale": "C"}, id(text.steps[-1][1]): {"zipmap": False}},
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    text_bytes = _label_meta(
        text_proto, {"cyxwiz.kind": "classifier", "cyxwiz.labels": json.dumps(["neg", "pos"])}
    )

    rng = np.random.default_rng(7)
    xr = rng.normal(size=(50, 3)).astype(np.float32)
    yr = np.stack([xr @ [1.0, 2.0, -1.0], xr @ [0.5, 0.0, 3.0]], axis=1)
    ridge = Ridge().fit(xr, yr)
    reg_proto = convert_sklearn(
        ridge,
        initial_types=[("input", FloatTensorType([None, 3]))],
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    reg_bytes = _label_meta(
        reg_proto, {"cyxwiz.kind": "regressor", "cyxwiz.targets": json.dumps(["a", "b"])}
    )
    return TinyModels(
        iris=iris_bytes,
        text=text_bytes,
        regressor=reg_bytes,
        iris_rows=[[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]],
        texts=["love it, great", "broke, terrible"],
        reg_rows=[[0.1, 0.2, 0.3], [1.5, -2.0, 0.25]],
    )


def ort_session(model_bytes: bytes) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = 1
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


# ---------------------------------------------------------------- the stack


@dataclass
class RunningNode:
    agent: NodeAgent
    served: Served
    node_id: str
    token: str
    cache_dir: Path
    stack: Stack

    @property
    def url(self) -> str:
        return self.served.url

    @property
    def secret(self) -> str:
        with self.stack.db.session() as s:
            secret = s.scalar(select(Node.gateway_secret).where(Node.id == uuid.UUID(self.node_id)))
        assert secret is not None
        return secret

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.secret}"}

    def wait_ready(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/v2/health/ready", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.02)
        raise AssertionError("node did not become ready")

    def stop(self) -> None:
        self.served.stop()


@dataclass
class Stack:
    url: str
    db: Database
    settings: Settings
    admin: Account
    creator: Account
    operator: Account
    tmp: Path
    http: httpx.Client
    published: dict[str, str] = field(default_factory=dict)  # name -> version id
    nodes: list[RunningNode] = field(default_factory=list)

    def publish(self, name: str, files: dict[str, bytes]) -> str:
        """Publish ``files`` as creator/name 1.0.0; returns the version id."""
        h = self.creator.headers
        r = self.http.post(
            "/api/v1/models",
            json={
                "name": name,
                "title": "Tiny",
                "category": "tabular-classification",
                "visibility": "public",
            },
            headers=h,
        )
        assert r.status_code == 201, r.text
        full = r.json()["full_name"]
        assert (
            self.http.post(
                f"/api/v1/models/{full}/versions", json={"version": "1.0.0"}, headers=h
            ).status_code
            == 201
        )
        for path, data in files.items():
            r = self.http.put(
                f"/api/v1/models/{full}/versions/1.0.0/files/{path}", content=data, headers=h
            )
            assert r.status_code in (200, 201), r.text
        r = self.http.post(f"/api/v1/models/{full}/versions/1.0.0/publish", headers=h)
        assert r.status_code == 200, r.text
        vid = str(r.json()["id"])
        self.published[name] = vid
        return vid

    def create_node(self, name: str) -> tuple[str, str]:
        with self.db.session() as s:  # running nodes is a trust tier (the platform approves)
            user = s.scalars(select(User).where(User.username == self.operator.username)).one()
            decide_operator(s, user=user, decision="approve", actor=None, now=datetime.now(UTC))
        r = self.http.post("/api/v1/nodes", json={"name": name}, headers=self.operator.headers)
        assert r.status_code == 201, r.text
        return r.json()["node"]["id"], r.json()["token"]

    def start_node(
        self, name: str, *, wait: bool = True, market_url: str | None = None, **overrides: Any
    ) -> RunningNode:
        node_id, token = self.create_node(name)
        sock = free_socket()
        port = sock.getsockname()[1]
        cache_dir = self.tmp / f"cache-{name}"
        config = NodeConfig(
            marketplace_url=market_url or self.url,
            token=token,
            port=port,
            advertise_url=f"http://127.0.0.1:{port}",
            cache_dir=cache_dir,
            capacity=4,
            heartbeat_seconds=0.3,
            **overrides,
        )
        agent = create_node_app(config)
        node = RunningNode(agent, serve(agent, sock), node_id, token, cache_dir, self)
        self.nodes.append(node)
        if wait:
            node.wait_ready()
        return node

    def assign(self, node: RunningNode, version_id: str) -> None:
        r = self.http.put(
            f"/api/v1/nodes/{node.node_id}/assignments/{version_id}", headers=self.admin.headers
        )
        assert r.status_code == 200, r.text


def _account(c: httpx.Client, username: str) -> Account:
    r = c.post(
        "/api/v1/auth/register",
        json={"username": username, "email": f"{username}@example.com", "password": PASSWORD},
    )
    assert r.status_code == 201, r.text
    r = c.post("/api/v1/auth/login", json={"username": username, "password": PASSWORD})
    assert r.status_code == 200, r.text
    return Account(username, r.json()["access_token"])


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory, tiny_models: TinyModels) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("node-stack")
    db_url = f"sqlite:///{tmp / 'market.db'}"
    engine = make_engine(db_url)
    upgrade(engine)
    engine.dispose()
    settings = Settings(
        data_dir=tmp / "data",
        master_key=base64.b64encode(secrets.token_bytes(32)).decode(),
        blob_chunk_size=4096,  # several chunks per model: the node decrypts a real stream
    )
    db = Database.from_url(db_url)
    market = serve(create_app(settings, database=db))
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
    st.publish("iris", {"model.onnx": tiny_models.iris, "config.json": b"{}"})
    st.publish("sentiment", {"model.onnx": tiny_models.text})
    st.publish("ridge", {"model.onnx": tiny_models.regressor})
    try:
        yield st
    finally:
        for node in st.nodes:
            node.stop()
        http.close()
        market.stop()
        db.engine.dispose()


@pytest.fixture(scope="session")
def node(stack: Stack) -> RunningNode:
    """The main node: every tiny model assigned."""
    n = stack.start_node("main")
    for vid in stack.published.values():
        stack.assign(n, vid)
    return n


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")
