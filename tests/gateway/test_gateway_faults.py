"""Node failures: a node stopped under load → calls succeed on the other node or fail clean with
model_unavailable, never settled twice or for a failure; a node that stops heartbeating leaves
the routing table (and is marked offline by eviction)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest
from tests.gateway.conftest import GatewayStack, build_stack
from tests.node.conftest import TinyModels, wait_for

from cyxwiz.inference.models import Node

SIMPLE = "/api/v1/models/tiny-creator/iris/infer"


@pytest.fixture(scope="module")
def pair(
    tmp_path_factory: pytest.TempPathFactory, tiny_models: TinyModels
) -> Iterator[GatewayStack]:
    for gs in build_stack(
        tmp_path_factory.mktemp("gw-faults"), tiny_models, "faults", inference_cache_seconds=0
    ):
        gs.stack.start_node("node-a")
        gs.stack.start_node("node-b")
        yield gs


def test_stopping_a_node_under_load_is_never_billed_twice_or_for_a_failure(
    pair: GatewayStack, tiny_models: TinyModels
) -> None:
    gw = pair
    a, b = gw.stack.nodes
    # both nodes warm: every call has two candidates
    rows = {"inputs": tiny_models.iris_rows}
    served: set[uuid.UUID | None] = set()
    for _ in range(20):
        assert gw.http.post(SIMPLE, json=rows, headers=gw.auth()).status_code == 200
    served = {n for _, _, n, _ in gw.meter.settled}
    assert len(served) >= 1
    settled0, cancelled0 = gw.meter.counts()

    statuses: list[int] = []
    codes: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def caller() -> None:
        with httpx.Client(base_url=gw.url, timeout=30) as http:
            while not stop.is_set():
                r = http.post(SIMPLE, json=rows, headers=gw.auth())
                with lock:
                    statuses.append(r.status_code)
                    if r.status_code != 200:
                        codes.append(r.json()["code"])

    threads = [threading.Thread(target=caller) for _ in range(16)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    a.stop()  # mid-traffic: in-flight and pooled connections to it die
    time.sleep(1.0)
    stop.set()
    for t in threads:
        t.join(30)

    ok = statuses.count(200)
    assert ok > 0
    assert set(codes) <= {"model_unavailable"}, codes
    settled, cancelled = gw.meter.counts()
    assert settled - settled0 == ok  # every success settled exactly once...
    assert cancelled - cancelled0 == len(statuses) - ok  # ...every failure cancelled
    assert not gw.meter.open
    assert not gw.meter.errors  # no ticket closed twice, no request id settled twice
    ids = [rid for _, rid, _, _ in gw.meter.settled]
    assert len(ids) == len(set(ids))
    late = [n for _, _, n, _ in gw.meter.settled[settled0 + ok // 2 :]]
    assert set(late) == {uuid.UUID(b.node_id)}  # after the stop, only b serves

    # a stopped node (no more heartbeats) leaves the routing table and is evicted
    stale = gw.stack.settings.inference_node_stale_seconds

    def a_gone() -> bool:
        gw.http.get("/v2/health/ready")  # the table refreshes when the gateway uses it
        return all(n.id != uuid.UUID(a.node_id) for n in gw.gateway._table)

    wait_for(a_gone, timeout=stale + 5)
    assert gw.gateway.evict_stale() >= 1
    with gw.stack.db.session() as s:
        assert s.get(Node, uuid.UUID(a.node_id)).status == "offline"  # type: ignore[union-attr]
        assert s.get(Node, uuid.UUID(b.node_id)).status == "online"  # type: ignore[union-attr]
    failures = gw.gateway.stats["node_failures"]
    for _ in range(10):
        r = gw.http.post(SIMPLE, json=rows, headers=gw.auth())
        assert r.status_code == 200
    assert gw.gateway.stats["node_failures"] == failures  # no call tried the dead node
    assert not gw.meter.errors


def test_no_healthy_node_is_model_unavailable_and_not_billed(pair: GatewayStack) -> None:
    gw = pair
    for node in list(gw.stack.nodes):
        node.stop()
    settled, cancelled = gw.meter.counts()
    r = gw.http.post(SIMPLE, json={"inputs": [[5.1, 3.5, 1.4, 0.2]]}, headers=gw.auth())
    assert r.status_code == 503, r.text
    assert r.json()["code"] == "model_unavailable"
    assert gw.meter.counts() == (settled, cancelled + 1)
    # readiness turns 503 as soon as the gateway's own health checks fail; the table itself
    # empties once the stopped nodes' heartbeats are stale (each poll refreshes it)
    wait_for(
        lambda: gw.http.get("/v2/health/ready").status_code == 503 and not gw.gateway._table,
        timeout=gw.stack.settings.inference_node_stale_seconds + 5,
    )
    assert not gw.gateway._table
    r = gw.http.post(SIMPLE, json={"inputs": [[5.1, 3.5, 1.4, 0.2]]}, headers=gw.auth())
    assert r.status_code == 503
    assert "no healthy node" in r.json()["detail"]
    assert not gw.meter.errors
