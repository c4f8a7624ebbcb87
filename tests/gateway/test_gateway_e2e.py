"""A buyer calls listed models through the gateway with an API key: the simple form, the
Open Inference Protocol form (raw and with tritonclient's HTTP client); answers equal ONNX
Runtime run directly on the file; every success is settled once with the node that served it."""

from __future__ import annotations

import uuid
from typing import Any

import numpy as np
import pytest
from tests.gateway.conftest import GatewayStack
from tests.node.conftest import TinyModels, ort_session

from cyxwiz.demo.models import run_onnx


def _infer(gw: GatewayStack, path: str, body: Any, key: str | None = None) -> Any:
    return gw.http.post(path, json=body, headers=gw.auth(key))


def test_simple_form_equals_run_onnx_and_is_metered(
    gw: GatewayStack, tiny_models: TinyModels
) -> None:
    settled_before = len(gw.meter.settled_for(gw.buyer_id))
    rows = tiny_models.iris_rows
    r = _infer(gw, "/api/v1/models/tiny-creator/iris/infer", {"inputs": rows})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "tiny-creator/iris"
    assert body["version"] == "1.0.0"
    uuid.UUID(body["request_id"])
    assert r.headers["x-request-id"] == body["request_id"]
    assert r.headers["content-type"] == "application/json"
    expected = run_onnx(tiny_models.iris, rows)
    assert body["predictions"] == expected["predictions"]

    # a regressor and a text model, rows as {feature: value} too
    r = _infer(gw, "/api/v1/models/tiny-creator/ridge/infer", {"inputs": tiny_models.reg_rows})
    assert r.status_code == 200, r.text
    assert (
        r.json()["predictions"]
        == run_onnx(tiny_models.regressor, tiny_models.reg_rows)["predictions"]
    )
    r = _infer(gw, "/api/v1/models/tiny-creator/sentiment/infer", {"inputs": tiny_models.texts})
    assert r.status_code == 200, r.text
    assert r.json()["predictions"] == run_onnx(tiny_models.text, tiny_models.texts)["predictions"]
    named = [dict(zip(["sl", "sw", "pl", "pw"], row, strict=True)) for row in rows]
    r = _infer(gw, "/api/v1/models/tiny-creator/iris/versions/1.0.0/infer", {"inputs": named})
    assert r.status_code == 200, r.text
    assert r.json()["predictions"] == expected["predictions"]

    node_id = uuid.UUID(gw.stack.nodes[0].node_id)
    mine = gw.meter.settled_for(gw.buyer_id)[settled_before:]
    assert len(mine) == 4
    assert all(units == 1 for *_, units in mine[:2])
    assert mine[2][0].units >= 2  # the text model: tokens of its strings
    assert {n for _, _, n, _ in mine} <= {node_id, None}
    assert not gw.meter.errors


def test_v2_form_equals_onnxruntime(gw: GatewayStack, tiny_models: TinyModels) -> None:
    rows = np.array(tiny_models.iris_rows, dtype=np.float32)
    request = {
        "id": "my-call-1",
        "inputs": [
            {
                "name": "input",
                "shape": list(rows.shape),
                "datatype": "FP32",
                "data": rows.ravel().tolist(),
            }
        ],
    }
    r = _infer(gw, "/v2/models/tiny-creator--iris/infer", request)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model_name"] == "tiny-creator--iris"
    assert body["model_version"] == "1.0.0"
    assert body["id"] == "my-call-1"
    outputs = {o["name"]: o for o in body["outputs"]}
    label, probs = ort_session(tiny_models.iris).run(None, {"input": rows})
    assert outputs["label"]["data"] == label.ravel().tolist()
    np.testing.assert_allclose(
        np.array(outputs["probabilities"]["data"]).reshape(outputs["probabilities"]["shape"]),
        probs,
        rtol=1e-6,
    )
    # a pinned version, by path and by query
    for path in (
        "/v2/models/tiny-creator--iris/versions/1.0.0/infer",
        "/v2/models/tiny-creator--iris/infer?version=1.0.0",
    ):
        r = _infer(gw, path, request)
        assert r.status_code == 200, r.text
        assert r.json()["outputs"] == body["outputs"]

    # metadata and health for OIP clients
    r = gw.http.get("/v2/models/tiny-creator--iris", headers=gw.auth())
    assert r.status_code == 200, r.text
    meta = r.json()
    assert meta["name"] == "tiny-creator--iris"
    assert meta["versions"] == ["1.0.0"]
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}]
    assert gw.http.get("/v2/health/ready").json() == {"ready": True}
    assert gw.http.get("/v2/health/live").json() == {"live": True}


def test_tritonclient_http_against_the_gateway(gw: GatewayStack, tiny_models: TinyModels) -> None:
    import tritonclient.http as httpclient  # in the test extras: a missing one is a failure

    client = httpclient.InferenceServerClient(
        url=gw.url.removeprefix("http://"), connection_timeout=10, network_timeout=10
    )
    try:
        assert client.is_server_live()
        assert client.is_server_ready()
        meta = client.get_model_metadata("tiny-creator--iris", headers=gw.auth())
        assert meta["inputs"][0]["name"] == "input"
        rows = np.array(tiny_models.iris_rows, dtype=np.float32)
        inp = httpclient.InferInput("input", list(rows.shape), "FP32")
        inp.set_data_from_numpy(rows, binary_data=False)
        outs = [
            httpclient.InferRequestedOutput("label", binary_data=False),
            httpclient.InferRequestedOutput("probabilities", binary_data=False),
        ]
        result = client.infer("tiny-creator--iris", [inp], outputs=outs, headers=gw.auth())
        label, probs = ort_session(tiny_models.iris).run(None, {"input": rows})
        np.testing.assert_array_equal(result.as_numpy("label"), label)
        np.testing.assert_allclose(result.as_numpy("probabilities"), probs, rtol=1e-6)
        assert result.get_response()["model_name"] == "tiny-creator--iris"

        # the binary tensor extension is refused with a message tritonclient shows
        binary = httpclient.InferInput("input", list(rows.shape), "FP32")
        binary.set_data_from_numpy(rows, binary_data=True)
        with pytest.raises(Exception, match="binary_data=False"):
            client.infer("tiny-creator--iris", [binary], headers=gw.auth())
    finally:
        client.close()


def test_results_are_cached_but_still_metered(gw: GatewayStack, tiny_models: TinyModels) -> None:
    rows = [[4.9, 3.1, 1.5, 0.1]]
    first = _infer(gw, "/api/v1/models/tiny-creator/iris/infer", {"inputs": rows})
    assert first.status_code == 200, first.text
    before = len(gw.meter.settled_for(gw.buyer_id))
    again = _infer(gw, "/api/v1/models/tiny-creator/iris/infer", {"inputs": rows})
    assert again.status_code == 200
    assert again.headers["x-cache"] == "hit"
    assert again.json()["predictions"] == first.json()["predictions"]
    assert again.json()["request_id"] != first.json()["request_id"]
    settled = gw.meter.settled_for(gw.buyer_id)
    assert len(settled) == before + 1
    assert settled[-1][2] is None  # no node served it: no compute share


def test_openapi_documents_the_infer_routes(gw: GatewayStack) -> None:
    doc = gw.http.get("/openapi.json").json()
    simple = doc["paths"]["/api/v1/models/{owner}/{name}/infer"]["post"]
    assert simple["requestBody"]["content"]["application/json"]["schema"]["required"] == ["inputs"]
    assert "429" in simple["responses"]
    assert "503" in simple["responses"]
    v2 = doc["paths"]["/v2/models/{model}/infer"]["post"]
    assert "inputs" in v2["requestBody"]["content"]["application/json"]["schema"]["properties"]


def _comparable(r: Any) -> tuple[int, str, dict[str, Any], dict[str, str]]:
    """An answer without what differs per call (request ids)."""
    body = dict(r.json())
    if r.status_code == 200:  # (hit or miss: each replica has its own result cache)
        assert r.headers["x-cache"] in ("hit", "miss")
        assert r.headers["x-request-id"] == body.get("request_id", r.headers["x-request-id"])
    if body.get("id") != "mine":
        body.pop("id", None)  # v2 without an id: the request id
    body.pop("request_id", None)
    headers = {k: v for k, v in r.headers.items() if k in ("retry-after", "www-authenticate")}
    return r.status_code, r.headers["content-type"], body, headers


def test_fast_path_and_framework_route_answer_the_same(
    gw: GatewayStack, tiny_models: TinyModels
) -> None:
    """The lean ASGI entry and FastAPI's routes give the same answers and errors."""
    import httpx

    url, other = gw.second_app(inference_fast_path=False)
    assert other.settings.inference_fast_path is False
    rows = tiny_models.iris_rows
    tensor = {"name": "input", "shape": [1, 4], "datatype": "FP32", "data": rows[0]}
    big = b'{"inputs": [' + b"[1.0, 2.0, 3.0, 4.0]," * 20_000 + b"[1,2,3,4]]}"
    simple = "/api/v1/models/tiny-creator/iris/infer"
    v2 = "/v2/models/tiny-creator--iris/infer"
    calls: list[tuple[str, dict[str, Any]]] = [
        (simple, {"json": {"inputs": rows}}),
        ("/api/v1/models/tiny-creator/iris/versions/1.0.0/infer", {"json": {"inputs": rows}}),
        (simple + "?version=1.0.0", {"json": {"inputs": rows[:1]}}),
        (v2, {"json": {"id": "mine", "inputs": [tensor]}}),
        ("/v2/models/tiny-creator--iris/versions/1.0.0/infer", {"json": {"inputs": [tensor]}}),
        (simple, {"content": b"{"}),  # malformed_json
        (simple, {"json": {"inputs": [[1.0, 2.0]]}}),  # invalid_input
        (simple, {"json": {"inputs": rows}, "headers": {}}),  # not_authenticated
        (simple, {"json": {"inputs": rows}, "headers": {"Authorization": "Bearer nope"}}),
        ("/api/v1/models/tiny-creator/nope/infer", {"json": {"inputs": rows}}),  # 404
        ("/v2/models/no-dashes/infer", {"json": {"inputs": []}}),  # 404
        (v2, {"content": big}),  # payload_too_large (Content-Length)
        (simple, {"content": lambda: iter([big[:100_000], big[100_000:]])}),  # (streamed)
        (v2, {"json": {}, "headers": {**gw.auth(), "Inference-Header-Content-Length": "0"}}),
    ]
    with (
        httpx.Client(base_url=gw.url, timeout=30) as fast,
        httpx.Client(base_url=url, timeout=30) as framework,
    ):
        for path, kwargs in calls:
            headers = kwargs.pop("headers", gw.auth())
            fresh = {k: v() if callable(v) else v for k, v in kwargs.items()}
            a = fast.post(path, headers=headers, **fresh)
            fresh = {k: v() if callable(v) else v for k, v in kwargs.items()}
            b = framework.post(path, headers=headers, **fresh)
            assert _comparable(a) == _comparable(b), (path, a.text, b.text)
