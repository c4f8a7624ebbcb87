"""Who may call, and bad input: every refusal is a clear problem+json 4xx and bills nothing."""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from tests.factories import Account
from tests.gateway.conftest import GatewayStack
from tests.model_files import unservable_onnx
from tests.node.conftest import TinyModels, _account

SIMPLE = "/api/v1/models/tiny-creator/iris/infer"
V2 = "/v2/models/tiny-creator--iris/infer"


def _problem(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = r.json()
    assert body["code"] == code, body
    assert body["error"] == body["detail"]  # what OIP clients show
    return body


@pytest.fixture
def unbilled(gw: GatewayStack) -> Iterator[None]:
    """The test's calls settle nothing and leave no ticket open."""
    settled, _ = gw.meter.counts()
    yield
    assert gw.meter.counts()[0] == settled
    assert not gw.meter.open
    assert not gw.meter.errors


def test_wrong_shapes_and_datatypes_are_400_and_not_billed(
    gw: GatewayStack, unbilled: None
) -> None:
    body = _problem(
        gw.http.post(SIMPLE, json={"inputs": [[1.0, 2.0, 3.0]]}, headers=gw.auth()),
        400,
        "invalid_input",
    )
    assert "4" in body["detail"]
    _problem(
        gw.http.post(SIMPLE, json={"inputs": [["a", "b", "c", "d"]]}, headers=gw.auth()),
        400,
        "invalid_input",
    )
    _problem(gw.http.post(SIMPLE, json={"rows": []}, headers=gw.auth()), 400, "invalid_input")
    tensor = {"name": "input", "shape": [1, 4], "datatype": "FP64", "data": [1, 2, 3, 4]}
    body = _problem(
        gw.http.post(V2, json={"inputs": [tensor]}, headers=gw.auth()), 400, "invalid_input"
    )
    assert body["reason"] == "wrong_datatype"
    assert "FP32" in body["detail"]
    tensor = {"name": "input", "shape": [1, 5], "datatype": "FP32", "data": [1, 2, 3, 4, 5]}
    body = _problem(
        gw.http.post(V2, json={"inputs": [tensor]}, headers=gw.auth()), 400, "invalid_input"
    )
    assert body["reason"] == "wrong_shape"
    _problem(gw.http.post(V2, json=[1, 2], headers=gw.auth()), 400, "invalid_input")
    for path in (SIMPLE, V2):
        _problem(gw.http.post(path, content=b"{nope", headers=gw.auth()), 400, "malformed_json")


def test_huge_payloads_are_413(gw: GatewayStack, unbilled: None) -> None:
    big = b'{"inputs": [' + b"[1.0, 2.0, 3.0, 4.0]," * 20_000 + b"[1,2,3,4]]}"
    assert len(big) > gw.stack.settings.inference_max_body_bytes
    for path in (SIMPLE, V2):
        _problem(gw.http.post(path, content=big, headers=gw.auth()), 413, "payload_too_large")

    def chunks() -> Iterator[bytes]:  # no Content-Length: caught while streaming
        for i in range(0, len(big), 65536):
            yield big[i : i + 65536]

    _problem(gw.http.post(SIMPLE, content=chunks(), headers=gw.auth()), 413, "payload_too_large")


def test_unknown_models_and_versions_are_404(gw: GatewayStack, unbilled: None) -> None:
    rows = {"inputs": [[1, 2, 3, 4]]}
    _problem(
        gw.http.post("/api/v1/models/tiny-creator/nope/infer", json=rows, headers=gw.auth()),
        404,
        "model_not_found",
    )
    _problem(
        gw.http.post("/api/v1/models/nobody/iris/infer", json=rows, headers=gw.auth()),
        404,
        "model_not_found",
    )
    _problem(
        gw.http.post(
            "/api/v1/models/tiny-creator/iris/versions/9.9.9/infer", json=rows, headers=gw.auth()
        ),
        404,
        "version_not_found",
    )
    _problem(
        gw.http.post("/v2/models/no-dashes/infer", json={"inputs": []}, headers=gw.auth()),
        404,
        "model_not_found",
    )
    _problem(
        gw.http.post("/v2/models/tiny-creator--nope/infer", json={"inputs": []}, headers=gw.auth()),
        404,
        "model_not_found",
    )
    _problem(
        gw.http.get("/v2/models/tiny-creator--nope", headers=gw.auth()), 404, "model_not_found"
    )


def test_a_private_model_is_invisible_to_others(gw: GatewayStack, tiny_models: TinyModels) -> None:
    gw.stack.publish("secret-iris", {"model.onnx": tiny_models.iris})
    r = gw.http.patch(
        "/api/v1/models/tiny-creator/secret-iris",
        json={"visibility": "private"},
        headers=gw.stack.creator.headers,
    )
    assert r.status_code == 200, r.text
    time.sleep(gw.stack.settings.inference_model_cache_seconds + 0.1)
    rows = {"inputs": [[5.1, 3.5, 1.4, 0.2]]}
    _problem(
        gw.http.post("/api/v1/models/tiny-creator/secret-iris/infer", json=rows, headers=gw.auth()),
        404,
        "model_not_found",
    )
    # its owner may call it
    r = gw.http.post(
        "/api/v1/models/tiny-creator/secret-iris/infer", json=rows, headers=gw.stack.creator.headers
    )
    assert r.status_code == 200, r.text


def test_callers_without_a_valid_inference_credential_are_refused(
    gw: GatewayStack, unbilled: None
) -> None:
    rows = {"inputs": [[5.1, 3.5, 1.4, 0.2]]}
    body = _problem(gw.http.post(SIMPLE, json=rows), 401, "not_authenticated")
    assert body["status"] == 401
    _problem(
        gw.http.post(SIMPLE, json=rows, headers={"Authorization": "Basic abc"}),
        401,
        "invalid_token",
    )
    _problem(
        gw.http.post(SIMPLE, json=rows, headers=gw.auth("cxw_sk_forged")), 401, "invalid_token"
    )
    _problem(
        gw.http.post(V2, json={"inputs": []}, headers=gw.auth("cxw_sk_forged")),
        401,
        "invalid_token",
    )
    read_only, _ = gw.api_key(gw.buyer, ["read"], name="read-only")
    _problem(gw.http.post(SIMPLE, json=rows, headers=gw.auth(read_only)), 403, "insufficient_scope")


def test_a_revoked_key_stops_working_within_the_auth_cache_ttl(gw: GatewayStack) -> None:
    key, key_id = gw.api_key(gw.buyer, ["inference"], name="to-revoke")
    rows = {"inputs": [[5.1, 3.5, 1.4, 0.2]]}
    assert gw.http.post(SIMPLE, json=rows, headers=gw.auth(key)).status_code == 200
    r = gw.http.delete(f"/api/v1/api-keys/{key_id}", headers=gw.buyer.headers)
    assert r.status_code == 200, r.text
    time.sleep(gw.stack.settings.inference_auth_cache_seconds + 0.1)
    settled, _ = gw.meter.counts()
    _problem(gw.http.post(SIMPLE, json=rows, headers=gw.auth(key)), 401, "invalid_token")
    assert gw.meter.counts()[0] == settled


def test_a_meter_refusal_is_passed_on_and_nothing_runs(gw: GatewayStack) -> None:
    poor = _account(gw.http, "poor-buyer")
    key, _ = gw.api_key(poor, ["inference"])
    user_id = uuid.UUID(gw.http.get("/api/v1/me", headers=poor.headers).json()["id"])
    gw.meter.allowance[user_id] = 2
    rows = {"inputs": [[5.0, 3.0, 1.0, 0.5]]}
    assert gw.http.post(SIMPLE, json=rows, headers=gw.auth(key)).status_code == 200
    assert gw.http.post(SIMPLE, json=rows, headers=gw.auth(key)).status_code == 200
    _problem(gw.http.post(SIMPLE, json=rows, headers=gw.auth(key)), 402, "insufficient_funds")
    # a failed call gives its capacity back: a bad input does not use up the allowance
    gw.meter.allowance[user_id] = 1
    _problem(
        gw.http.post(SIMPLE, json={"inputs": [[1.0]]}, headers=gw.auth(key)), 400, "invalid_input"
    )
    assert gw.http.post(SIMPLE, json=rows, headers=gw.auth(key)).status_code == 200
    assert len(gw.meter.settled_for(user_id)) == 3


def test_a_model_onnx_runtime_cannot_load_is_503_and_not_billed(gw: GatewayStack) -> None:
    gw.stack.publish("broken", {"model.onnx": unservable_onnx()})  # passes publish checks
    _, cancelled = gw.meter.counts()
    settled, _ = gw.meter.counts()
    body = _problem(
        gw.http.post(
            "/api/v1/models/tiny-creator/broken/infer", json={"inputs": [[1, 2]]}, headers=gw.auth()
        ),
        503,
        "model_unavailable",
    )
    assert body["reason"] == "model_not_servable"
    # the version's metadata (what a call's rows are checked against) fails to load before
    # metering is asked: no ticket at all (issue 9)
    assert gw.meter.counts() == (settled, cancelled)


# ---------------------------------------------------------------- rate limits


def _redis_up() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=0.5):
            return True
    except OSError:
        return False


def _rate_limited(gw: GatewayStack, urls: list[str], key: str) -> None:
    rows = {"inputs": [[5.1, 3.5, 1.4, 0.2]]}
    answers = []
    for i in range(3):
        with httpx.Client(base_url=urls[i % len(urls)], timeout=30) as http:
            answers.append(http.post(SIMPLE, json=rows, headers=gw.auth(key)))
    assert [a.status_code for a in answers[:2]] == [200, 200], answers[1].text
    body = _problem(answers[2], 429, "rate_limited")
    assert int(answers[2].headers["retry-after"]) >= 1
    assert "retry" in body["detail"]
    # v2 shares the bucket
    with httpx.Client(base_url=urls[0], timeout=30) as http:
        r = http.post(V2, json={"inputs": []}, headers=gw.auth(key))
    _problem(r, 429, "rate_limited")


def test_rate_limit_in_process(gw: GatewayStack) -> None:
    url, _ = gw.second_app(inference_rate_per_second=0.2, inference_burst=2)
    key, _ = gw.api_key(gw.buyer, ["inference"], name="limited")
    settled, _ = gw.meter.counts()
    _rate_limited(gw, [url], key)
    assert gw.meter.counts()[0] == settled + 2  # refused calls never reach the meter


@pytest.mark.skipif(
    not _redis_up() and not os.environ.get("CYXWIZ_CI"),
    reason="no Redis at 127.0.0.1:6379 (CI has one, and there this test must run)",
)
def test_rate_limit_in_redis_is_shared_by_replicas(gw: GatewayStack) -> None:
    overrides = {
        "inference_rate_per_second": 0.2,
        "inference_burst": 2,
        "redis_url": "redis://127.0.0.1:6379/0",
    }
    one, _ = gw.second_app(**overrides)
    two, _ = gw.second_app(**overrides)
    key, _ = gw.api_key(gw.buyer, ["inference"], name="limited-redis")
    _rate_limited(gw, [one, two], key)  # the third call, on the other replica, is refused


def test_a_buyer_is_served_by_a_fresh_account(gw: GatewayStack) -> None:
    """Access tokens (not only API keys) may call; they are limited per user."""
    someone: Account = _account(gw.http, "token-user")
    r = gw.http.post(SIMPLE, json={"inputs": [[5.1, 3.5, 1.4, 0.2]]}, headers=someone.headers)
    assert r.status_code == 200, r.text


class _BrokenMeter:
    """A meter failing in a way nobody planned for (not a DomainError)."""

    async def authorize(self, **_: Any) -> Any:
        raise RuntimeError("kaboom: secret-internal-detail")

    async def settle(self, *_: Any, **__: Any) -> None: ...

    async def cancel(self, *_: Any) -> None: ...

    async def flush(self) -> None: ...

    async def close(self) -> None: ...


@pytest.mark.parametrize("fast_path", [True, False])
def test_an_unexpected_error_is_a_bare_500_problem(gw: GatewayStack, fast_path: bool) -> None:
    from tests.node.conftest import serve

    from cyxwiz.web.app import create_app

    settings = gw.stack.settings.model_copy(update={"inference_fast_path": fast_path})
    served = serve(create_app(settings, database=gw.stack.db, meter=_BrokenMeter()))
    gw.extra.append(served)
    with httpx.Client(base_url=served.url, timeout=30) as http:
        one_row = {"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1, 0]}
        for path, body in (
            (SIMPLE, {"inputs": [[5.1, 3.5, 1.4, 0.2]]}),
            (V2, {"inputs": [one_row]}),
        ):
            r = http.post(path, json=body, headers=gw.auth())
            problem = _problem(r, 500, "internal_error")
            assert "not billed" in problem["detail"]
            for leak in ("kaboom", "secret-internal-detail", "Traceback", "RuntimeError"):
                assert leak not in r.text


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_settle_and_cancel_finish_even_if_the_call_is_cancelled(loop: str) -> None:
    """The gateway awaits the meter's settle/cancel through ``_to_the_end``: without a task
    when they do not suspend, shielded from the caller's cancellation when they do."""
    import asyncio

    from cyxwiz.inference.gateway import _to_the_end

    done: list[str] = []

    async def quick() -> None:
        done.append("quick")

    async def slow() -> None:
        await asyncio.sleep(0.05)
        await asyncio.sleep(0)
        done.append("slow")

    async def failing() -> None:
        await asyncio.sleep(0)
        raise ValueError("the meter failed")

    async def main() -> None:
        tasks = len(asyncio.all_tasks())
        await _to_the_end(quick())
        assert len(asyncio.all_tasks()) == tasks
        call = asyncio.create_task(_to_the_end(slow()))
        await asyncio.sleep(0.01)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        assert done == ["quick"]
        await asyncio.sleep(0.1)
        assert done == ["quick", "slow"]  # finished although its caller was cancelled
        with pytest.raises(ValueError, match="the meter failed"):
            await _to_the_end(failing())

    if loop == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        uvloop.run(main())
    else:
        asyncio.run(main())


# ---------------------------------------------------------------- the client calling nodes


def test_node_connections_read_every_answer_framing_and_fail_cleanly() -> None:
    """``NodeConnections`` (the gateway's HTTP/1.1 client to nodes) against a raw server:
    Content-Length, chunked and close-delimited answers; a node that closed a kept-alive
    connection; a node that hangs (timeout); a node's 4xx (not retryable); garbage."""
    import asyncio

    from cyxwiz.inference.gateway import NodeConnections
    from cyxwiz.inference.interfaces import NodeCallError, RoutableNode

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await serve_one(reader, writer)
        finally:
            writer.close()

    async def serve_one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                break
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            body = await reader.readexactly(length)
            path = head.split(b" ")[1]
            if path == b"/length":
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            elif path == b"/chunked":
                writer.write(
                    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                    b'3\r\n{"a\r\n4\r\n":1}\r\n0\r\n\r\n'
                )
            elif path == b"/eof":
                writer.write(b'HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n{"eof":1}')
                await writer.drain()
                writer.close()
                return
            elif path == b"/close-after":
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
                await writer.drain()
                writer.close()  # keep-alive promised, then closed: the next call must reconnect
                return
            elif path == b"/bad-input":
                problem = b'{"code":"wrong_shape","detail":"4 features expected"}'
                writer.write(
                    b"HTTP/1.1 400 Bad Request\r\nContent-Length: %d\r\n\r\n%s"
                    % (len(problem), problem)
                )
            elif path == b"/garbage":
                writer.write(b"NOT HTTP AT ALL\r\n\r\n")
            elif path == b"/hang":
                await asyncio.sleep(5)
            await writer.drain()

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        node = RoutableNode(
            id=uuid.uuid4(),
            operator_id=uuid.uuid4(),
            name="raw",
            url=f"http://127.0.0.1:{port}",
            gateway_secret="s",
        )
        conns = NodeConnections(timeout=0.3)
        try:
            assert await conns.post(node, "/length", b'{"x":1}') == b'{"x":1}'
            assert await conns.post(node, "/length", b"[2]") == b"[2]"  # the same connection
            assert await conns.post(node, "/chunked", b"{}") == b'{"a":1}'
            assert await conns.post(node, "/eof", b"{}") == b'{"eof":1}'
            assert await conns.post(node, "/close-after", b"{}") == b"{}"
            await asyncio.sleep(0.05)
            assert await conns.post(node, "/length", b"[3]") == b"[3]"  # reconnected
            with pytest.raises(NodeCallError) as bad:
                await conns.post(node, "/bad-input", b"{}")
            assert (bad.value.retryable, bad.value.code) == (False, "wrong_shape")
            assert bad.value.node_status == 400
            with pytest.raises(NodeCallError) as garbage:
                await conns.post(node, "/garbage", b"{}")
            assert (garbage.value.retryable, garbage.value.code) == (True, "node_unreachable")
            started = time.monotonic()
            with pytest.raises(NodeCallError) as hung:
                await conns.post(node, "/hang", b"{}")
            assert (hung.value.retryable, hung.value.code) == (True, "node_timeout")
            assert 0.25 < time.monotonic() - started < 1.5
            assert await conns.post(node, "/length", b"[4]") == b"[4]"  # still usable
        finally:
            await conns.aclose()
            server.close()
            await server.wait_closed()
        with pytest.raises(NodeCallError) as refused:  # the server is gone
            await NodeConnections(timeout=1).post(node, "/length", b"{}")
        assert (refused.value.retryable, refused.value.code) == (True, "node_unreachable")

    asyncio.run(main())
