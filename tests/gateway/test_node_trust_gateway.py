"""Issue 9, items 1 and 3, against the real gateway: routing believes only its own
measurements, a node's answer is capped in size and time, a node failing the platform's
health check gets no traffic, a revoked operator's node leaves routing at once, and the
gateway connects only to addresses it has just checked (DNS rebinding).

The hostile nodes are tiny asyncio HTTP servers (``FakeNode``) registered through the real
node API with real node tokens; for normal answers they proxy to a real node agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from tests.gateway.conftest import GatewayStack, build_stack
from tests.node.conftest import RunningNode, TinyModels, _account, wait_for

from cyxwiz.netguard import AddressGuard

SIMPLE = "/api/v1/models/tiny-creator/iris/infer"
V2 = "/v2/models/tiny-creator--iris/infer"
CAP = 256 * 1024  # inference_node_max_response_bytes in this stack
TIMEOUT = 2.0  # inference_node_timeout_seconds in this stack


@dataclass
class FakeNode:
    """An HTTP/1.1 server in its own thread. ``mode`` says how it answers inference calls
    (and ``meta_mode`` metadata calls): ``proxy`` (to a real node: a correct answer),
    ``huge`` (Content-Length 200 MB, then bytes as fast as the socket takes them),
    ``endless`` (chunked, never ending), ``eof`` (no length, never closing), ``drip``
    (one byte a second). ``ready`` is its readiness answer."""

    real: RunningNode
    mode: str = "proxy"
    meta_mode: str = "proxy"
    ready: bool = True
    calls: Counter[str] = field(default_factory=Counter)
    hosts: list[str] = field(default_factory=list)
    auth: list[str] = field(default_factory=list)
    sent: int = 0  # body bytes written by the hostile modes
    connections: int = 0
    port: int = 0

    def start(self) -> None:
        self.loop = asyncio.new_event_loop()
        started = threading.Event()

        async def main() -> None:
            server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
            self.port = server.sockets[0].getsockname()[1]
            self.server = server
            started.set()
            async with server:
                await server.serve_forever()

        self.thread = threading.Thread(
            target=lambda: self.loop.run_until_complete(self._guarded(main())), daemon=True
        )
        self.thread.start()
        assert started.wait(10)

    async def _guarded(self, coro: Coroutine[Any, Any, None]) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            await coro

    def stop(self) -> None:
        def cancel() -> None:
            for task in asyncio.all_tasks(self.loop):
                task.cancel()

        self.loop.call_soon_threadsafe(cancel)
        self.thread.join(10)
        self.loop.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        k, v = line.split(":", 1)
                        headers[k.strip().lower()] = v.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                self.hosts.append(headers.get("host", ""))
                self.auth.append(headers.get("authorization", ""))
                if not await self._answer(method, path, body, writer):
                    break
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def _answer(
        self, method: str, path: str, body: bytes, writer: asyncio.StreamWriter
    ) -> bool:
        if path == "/v2/health/ready":
            self.calls["ready"] += 1
            status = 200 if self.ready else 503
            payload = b'{"ready":true}' if self.ready else b'{"ready":false}'
            writer.write(_response(status, payload))
            await writer.drain()
            return True
        kind = "infer" if path.endswith("/infer") else "meta"
        self.calls[kind] += 1
        mode = self.mode if kind == "infer" else self.meta_mode
        if mode == "proxy":
            async with httpx.AsyncClient(timeout=10) as http:
                r = await http.request(
                    method,
                    self.real.url + path,
                    content=body,
                    headers={**self.real.headers(), "Content-Type": "application/json"},
                )
            writer.write(_response(r.status_code, r.content))
            await writer.drain()
            return True
        if mode == "huge":
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                b"Content-Length: 209715200\r\n\r\n"
            )
            await self._flood(writer)
        elif mode == "endless":
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n"
            )
            await self._flood(writer, chunked=True)
        elif mode == "eof":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n")
            await self._flood(writer)
        elif mode == "drip":
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
            )
            for _ in range(1000):
                writer.write(b" ")
                self.sent += 1
                await writer.drain()
                await asyncio.sleep(1.0)
        return False

    async def _flood(self, writer: asyncio.StreamWriter, *, chunked: bool = False) -> None:
        block = b"[" + b"0," * 32_000 + b"0]"
        piece = b"%x\r\n%s\r\n" % (len(block), block) if chunked else block
        for _ in range(100_000):  # at most ~6 GB: the gateway must hang up long before
            writer.write(piece)
            self.sent += len(block)
            await writer.drain()


def _response(status: int, body: bytes) -> bytes:
    reason = {200: "OK", 503: "Service Unavailable"}.get(status, "Status")
    return (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


@dataclass
class Trust:
    gs: GatewayStack
    honest: RunningNode
    iris: str  # version id
    fakes: list[tuple[FakeNode, str]] = field(default_factory=list)  # (fake, node id)

    def fake(
        self,
        name: str,
        *,
        url: str | None = None,
        capacity: int = 4,
        heartbeat: dict[str, object] | None = None,
        **modes: object,
    ) -> tuple[FakeNode, str, str]:
        """A fake node registered (and heartbeating once) through the real API; ``url`` may
        hold ``{port}`` (the fake's port)."""
        fake = FakeNode(self.honest, **modes)  # type: ignore[arg-type]
        fake.start()
        node_id, token = self.gs.stack.create_node(name)
        auth = {"Authorization": f"Bearer {token}"}
        r = self.gs.http.post(
            "/api/v1/nodes/register",
            json={"url": (url or fake.url).format(port=fake.port), "capacity": capacity},
            headers=auth,
        )
        assert r.status_code == 200, r.text
        if heartbeat is not None:
            r = self.gs.http.post("/api/v1/nodes/heartbeat", json=heartbeat, headers=auth)
            assert r.status_code == 200, r.text
        self.fakes.append((fake, node_id))
        return fake, node_id, token

    def drain(self, node_id: str) -> None:
        r = self.gs.http.post(f"/api/v1/nodes/{node_id}/drain", headers=self.gs.stack.admin.headers)
        assert r.status_code == 200, r.text
        gateway = self.gs.gateway  # out of this replica's table now (it reloads in 0.2 s)
        for _ in range(2):  # again after any refresh that started before the drain
            gateway._table = [n for n in gateway._table if str(n.id) != node_id]
            time.sleep(0.25)

    def resume(self, node_id: str) -> None:
        r = self.gs.http.post(
            f"/api/v1/nodes/{node_id}/resume", headers=self.gs.stack.admin.headers
        )
        assert r.status_code == 200, r.text

    def cleanup(self) -> None:
        for fake, node_id in self.fakes:
            self.gs.http.delete(f"/api/v1/nodes/{node_id}", headers=self.gs.stack.admin.headers)
            fake.stop()
        self.fakes.clear()
        self.resume(self.honest.node_id)
        time.sleep(0.3)  # > inference_nodes_cache_seconds: the table forgets them


@pytest.fixture(scope="module")
def trust_stack(
    tmp_path_factory: pytest.TempPathFactory, tiny_models: TinyModels
) -> Iterator[Trust]:
    for gs in build_stack(
        tmp_path_factory.mktemp("gw-trust"),
        tiny_models,
        "trust",
        inference_cache_seconds=0,
        inference_node_stale_seconds=120.0,  # fake nodes heartbeat once
        inference_node_timeout_seconds=TIMEOUT,
        inference_node_max_response_bytes=CAP,
        inference_node_health_interval_seconds=0.3,
        inference_node_health_timeout_seconds=1.0,
    ):
        honest = gs.stack.start_node("honest")
        trust = Trust(gs, honest, gs.stack.published["iris"])
        # warm: the gateway has seen the honest node answer iris
        rows = {"inputs": tiny_models.iris_rows}
        assert gs.http.post(SIMPLE, json=rows, headers=gs.auth()).status_code == 200
        yield trust


@pytest.fixture
def trust(trust_stack: Trust) -> Iterator[Trust]:
    gateway = trust_stack.gs.gateway
    guard = gateway.guard
    try:
        yield trust_stack
    finally:
        gateway.set_guard(guard)
        trust_stack.cleanup()


def call(trust: Trust, tiny_models: TinyModels, path: str = SIMPLE) -> httpx.Response:
    if path == V2:
        body = {
            "inputs": [
                {
                    "name": "input",
                    "shape": [1, 4],
                    "datatype": "FP32",
                    "data": tiny_models.iris_rows[0],
                }
            ]
        }
        return trust.gs.http.post(path, json=body, headers=trust.gs.auth())
    return trust.gs.http.post(path, json={"inputs": tiny_models.iris_rows}, headers=trust.gs.auth())


# ---------------------------------------------------------------- claims do not route


def test_a_node_lying_about_capacity_load_and_warm_models_attracts_no_traffic(
    trust: Trust, tiny_models: TinyModels
) -> None:
    """Before: routing preferred the node claiming the version warm, load 0 and capacity
    10,000 — every call (its inputs, and the model's keys) went to the liar."""
    every_version = [str(v) for v in trust.gs.stack.published.values()]
    liar, liar_id, _ = trust.fake(
        "liar", capacity=10_000, heartbeat={"load": 0, "warm": every_version}
    )
    gateway = trust.gs.gateway

    def liar_routable() -> bool:  # in the routing table and past its health check
        assert call(trust, tiny_models).status_code == 200
        return any(str(n.id) == liar_id for n in gateway._table) and liar.calls["ready"] > 0

    wait_for(liar_routable, timeout=5)
    time.sleep(0.2)
    liar.calls.clear()
    settled0 = len(trust.gs.meter.settled)
    for _ in range(20):
        assert call(trust, tiny_models).status_code == 200
    assert liar.calls["infer"] == 0
    served = {n for _, _, n, _ in trust.gs.meter.settled[settled0:]}
    assert served == {uuid.UUID(trust.honest.node_id)}
    # it was a candidate all along: with the honest node drained it serves (correctly)
    trust.drain(trust.honest.node_id)
    assert call(trust, tiny_models).status_code == 200
    assert liar.calls["infer"] == 1


def test_a_node_failing_the_platforms_health_check_gets_no_traffic(
    trust: Trust, tiny_models: TinyModels
) -> None:
    sick, sick_id, _ = trust.fake("sick", ready=False)
    trust.drain(trust.honest.node_id)  # the sick node is the only candidate
    wait_for(lambda: call(trust, tiny_models).status_code == 503, timeout=5)
    r = call(trust, tiny_models)
    assert r.status_code == 503, r.text
    assert r.json()["code"] == "model_unavailable"
    assert sick.calls["infer"] == 0
    assert sick.calls["meta"] == 0
    assert sick.calls["ready"] >= 1
    assert all(a.startswith("Bearer cxw_gs_") for a in sick.auth)  # checked with the secret
    # readiness agrees with routing: a node failing the platform's check makes nothing ready
    ready = trust.gs.http.get("/v2/models/tiny-creator--iris/ready", headers=trust.gs.auth())
    assert (ready.status_code, ready.json()["ready"]) == (503, False)
    assert trust.gs.http.get("/v2/health/ready").status_code == 503
    # it passes again: back in routing at the next periodic check
    sick.ready = True
    wait_for(lambda: call(trust, tiny_models).status_code == 200, timeout=5)
    assert sick.calls["infer"] >= 1
    ready = trust.gs.http.get("/v2/models/tiny-creator--iris/ready", headers=trust.gs.auth())
    assert (ready.status_code, ready.json()["ready"]) == (200, True)
    assert uuid.UUID(sick_id) in trust.gs.gateway.health


def test_a_revoked_operators_node_leaves_routing_at_once(
    trust: Trust, tiny_models: TinyModels
) -> None:
    gs = trust.gs
    other = gs.stack.operator  # the fake belongs to a second operator, revoked below
    rogue = _account(gs.http, f"rogue-{uuid.uuid4().hex[:6]}")
    gs.stack.operator = rogue
    try:
        fake, _, token = trust.fake("rogue-node")
    finally:
        gs.stack.operator = other
    trust.drain(trust.honest.node_id)
    wait_for(lambda: call(trust, tiny_models).status_code == 200 and fake.calls["infer"] > 0)
    r = gs.http.post(
        f"/api/v1/nodes/operators/{rogue.username}/revoke", headers=gs.stack.admin.headers
    )
    assert r.status_code == 200, r.text
    served = fake.calls["infer"]
    r = call(trust, tiny_models)  # the very next call
    assert r.status_code == 503, r.text
    assert fake.calls["infer"] == served
    r = gs.http.get(
        f"/api/v1/nodes/assignments/{trust.iris}", headers={"Authorization": f"Bearer {token}"}
    )
    assert r.status_code == 403
    assert r.json()["code"] == "operator_not_approved"


# ---------------------------------------------------------------- answers are capped


@pytest.mark.parametrize("mode", ["huge", "endless", "eof"])
@pytest.mark.parametrize("path", [SIMPLE, V2])
def test_a_node_cannot_make_the_gateway_buffer_a_huge_answer(
    trust: Trust, tiny_models: TinyModels, mode: str, path: str
) -> None:
    """Before: the gateway read a 200 MB answer whole into memory (and billed the call)."""
    bomb, _, _ = trust.fake(f"bomb-{mode}-{len(path)}", mode=mode)
    trust.drain(trust.honest.node_id)
    settled0, cancelled0 = trust.gs.meter.counts()
    started = time.monotonic()
    r = call(trust, tiny_models, path)
    elapsed = time.monotonic() - started
    assert r.status_code == 502, r.text
    body = r.json()
    assert (body["code"], body["reason"]) == ("bad_node_answer", "node_answer_too_large")
    assert elapsed < TIMEOUT + 3
    assert bomb.calls["infer"] >= 1
    # the gateway hung up near the cap: what the node pushed is the cap plus socket buffers
    assert bomb.sent < 40 * 1024 * 1024
    settled, cancelled = trust.gs.meter.counts()
    assert settled == settled0  # never billed
    assert cancelled > cancelled0


def test_a_huge_metadata_answer_is_refused_too(trust: Trust, tiny_models: TinyModels) -> None:
    gw = trust.gs.gateway
    gw._meta.pop(uuid.UUID(trust.iris), None)  # make the gateway ask for the metadata again
    gw.nodes._meta.clear()
    bomb, _, _ = trust.fake("meta-bomb", meta_mode="huge")
    trust.drain(trust.honest.node_id)
    started = time.monotonic()
    r = call(trust, tiny_models)
    assert r.status_code == 502, r.text
    assert r.json()["reason"] == "node_answer_too_large"
    assert time.monotonic() - started < TIMEOUT + 3
    assert bomb.sent < 40 * 1024 * 1024


@pytest.mark.parametrize("where", ["infer", "meta"])
def test_a_node_dripping_its_answer_cannot_hold_a_call_past_the_deadline(
    trust: Trust, tiny_models: TinyModels, where: str
) -> None:
    """A byte a second keeps a per-read timeout happy forever; the deadline is per call."""
    gw = trust.gs.gateway
    if where == "meta":
        gw._meta.pop(uuid.UUID(trust.iris), None)
        gw.nodes._meta.clear()
        drip, _, _ = trust.fake("drip-meta", meta_mode="drip")
    else:
        drip, _, _ = trust.fake("drip", mode="drip")
    trust.drain(trust.honest.node_id)
    settled0, _ = trust.gs.meter.counts()
    started = time.monotonic()
    r = call(trust, tiny_models)
    elapsed = time.monotonic() - started
    assert r.status_code == 503, r.text
    assert r.json()["reason"] == "node_timeout"
    assert elapsed < TIMEOUT + 2.5  # the health check (fast) + one call's deadline + slack
    assert drip.sent >= 1
    assert trust.gs.meter.counts()[0] == settled0


# ---------------------------------------------------------------- connect-time checks


def test_dns_rebinding_is_refused_at_connect_time(trust: Trust, tiny_models: TinyModels) -> None:
    """rebind.example resolves to a public address when the node registers, then to
    127.0.0.1: the gateway resolves again before connecting, refuses, never connects."""
    answers = [["93.184.216.34"]]

    def dns(host: str, port: int) -> list[str]:
        if host != "rebind.example":
            raise socket.gaierror(socket.EAI_NONAME, "unknown")
        return answers.pop(0) if answers else ["127.0.0.1"]

    trust.gs.gateway.set_guard(AddressGuard(allow_private=False, resolver=dns))
    trust.drain(trust.honest.node_id)
    target, _, _ = trust.fake("rebinder", url="http://rebind.example:{port}")
    assert answers == []  # registration saw the public answer
    settled0, _ = trust.gs.meter.counts()
    r = call(trust, tiny_models)
    assert r.status_code == 503, r.text
    assert target.connections == 0
    assert trust.gs.meter.counts()[0] == settled0


def test_the_gateway_connects_to_the_checked_address_and_keeps_the_host_name(
    trust: Trust, tiny_models: TinyModels
) -> None:
    """Nodes inside an allowed private network: the gateway connects to the address it
    checked (127.0.0.1 here), with Host: node.internal:PORT."""
    asked: list[str] = []

    def dns(host: str, port: int) -> list[str]:
        asked.append(host)
        if host != "node.internal":
            raise socket.gaierror(socket.EAI_NONAME, "unknown")
        return ["127.0.0.1"]

    trust.gs.gateway.set_guard(
        AddressGuard(
            allow_private=False,
            allowed_networks=(ipaddress.ip_network("127.0.0.1/32"),),
            resolver=dns,
        )
    )
    trust.drain(trust.honest.node_id)
    fake = FakeNode(trust.honest)
    fake.start()
    node_id, token = trust.gs.stack.create_node("internal")
    trust.fakes.append((fake, node_id))
    r = trust.gs.http.post(
        "/api/v1/nodes/register",
        json={"url": f"http://node.internal:{fake.port}", "capacity": 1},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert r.status_code == 200, r.text
    r = call(trust, tiny_models)
    assert r.status_code == 200, r.text
    assert fake.calls["infer"] == 1
    assert set(fake.hosts) == {f"node.internal:{fake.port}"}
    assert asked.count("node.internal") >= 2  # at registration and again at connect time
