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
    gw.stack.publish("broken", {"model.onnx": b"this is not an onnx file"})
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
    assert gw.meter.counts() == (settled, cancelled + 1)


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
