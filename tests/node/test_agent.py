"""The node agent against a real marketplace: it pulls encrypted models it is assigned, serves
the Open Inference Protocol, and answers exactly what ONNX Runtime gives in-process."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
import time
import uuid
from typing import Any

import httpx
import numpy as np
from sqlalchemy import select

from cyxwiz.inference.models import Node
from cyxwiz.inference.oip import ORT_TO_OIP
from cyxwiz.web.app import create_app
from tests.node.conftest import (
    RunningNode,
    Stack,
    TinyModels,
    free_socket,
    ort_session,
    serve,
    wait_for,
)


def infer(node: RunningNode, name: str, body: Any, **kw: Any) -> httpx.Response:
    headers = kw.pop("headers") if "headers" in kw else node.headers()
    return httpx.post(
        f"{node.url}/v2/models/{name}/infer", json=body, headers=headers, timeout=30, **kw
    )


def rows_tensor(rows: list[list[float]], name: str = "input") -> dict[str, Any]:
    return {
        "name": name,
        "shape": [len(rows), len(rows[0])],
        "datatype": "FP32",
        "data": [v for row in rows for v in row],
    }


def problem(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text[:1000]
    assert r.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = r.json()
    assert body["code"] == code, body
    assert body["error"] == body["detail"]
    return body


def as_array(tensor: dict[str, Any]) -> np.ndarray[Any, Any]:
    if tensor["datatype"] == "BYTES":
        return np.array(tensor["data"], dtype=object).reshape(tensor["shape"])
    dtype = {"FP32": np.float32, "INT64": np.int64, "FP64": np.float64}[tensor["datatype"]]
    return np.asarray(tensor["data"], dtype=dtype).reshape(tensor["shape"])


# ---------------------------------------------------------------- inference


def test_infer_equals_onnxruntime_in_process(
    stack: Stack, node: RunningNode, tiny_models: TinyModels
) -> None:
    vid = stack.published["iris"]
    r = infer(node, vid, {"id": "req-1", "inputs": [rows_tensor(tiny_models.iris_rows)]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model_name"] == vid
    assert body["model_version"] == "1.0.0"
    assert body["id"] == "req-1"
    sess = ort_session(tiny_models.iris)
    expected = sess.run(None, {"input": np.asarray(tiny_models.iris_rows, dtype=np.float32)})
    names = [o.name for o in sess.get_outputs()]
    assert [o["name"] for o in body["outputs"]] == names
    for out, want in zip(body["outputs"], expected, strict=True):
        got = as_array(out)
        assert got.dtype == want.dtype
        assert got.shape == want.shape
        assert np.array_equal(got, want)  # exact, not approximately
    # asking for one output gives that one
    r = infer(
        node,
        vid,
        {"inputs": [rows_tensor(tiny_models.iris_rows)], "outputs": [{"name": "probabilities"}]},
    )
    assert [o["name"] for o in r.json()["outputs"]] == ["probabilities"]
    assert np.array_equal(as_array(r.json()["outputs"][0]), expected[1])
    uuid.UUID(r.json()["id"])  # an id is made up when none is given
    # nested data in the declared shape is accepted too
    nested = {"name": "input", "shape": [3, 4], "datatype": "FP32", "data": tiny_models.iris_rows}
    assert infer(node, vid, {"inputs": [nested]}).json()["outputs"] == body["outputs"]


def test_text_and_regression_models(
    stack: Stack, node: RunningNode, tiny_models: TinyModels
) -> None:
    texts = tiny_models.texts
    r = infer(
        node,
        stack.published["sentiment"],
        {
            "inputs": [
                {"name": "text", "shape": [len(texts), 1], "datatype": "BYTES", "data": texts}
            ]
        },
    )
    assert r.status_code == 200, r.text
    sess = ort_session(tiny_models.text)
    expected = sess.run(None, {"text": np.array(texts, dtype=object).reshape(-1, 1)})
    label, probs = r.json()["outputs"]
    assert label["datatype"] == "BYTES"
    assert label["data"] == list(expected[0])
    assert np.array_equal(as_array(probs), expected[1])

    rows = tiny_models.reg_rows
    r = infer(node, stack.published["ridge"], {"inputs": [rows_tensor(rows)]})
    assert r.status_code == 200, r.text
    want = ort_session(tiny_models.regressor).run(
        None, {"input": np.asarray(rows, dtype=np.float32)}
    )
    assert np.array_equal(as_array(r.json()["outputs"][0]), want[0])


def test_metadata_matches_the_onnx_model(
    stack: Stack, node: RunningNode, tiny_models: TinyModels
) -> None:
    for name, data in (("iris", tiny_models.iris), ("sentiment", tiny_models.text)):
        vid = stack.published[name]
        r = httpx.get(f"{node.url}/v2/models/{vid}", headers=node.headers())
        assert r.status_code == 200, r.text
        meta = r.json()
        sess = ort_session(data)

        def spec(args: Any) -> list[dict[str, Any]]:
            return [
                {
                    "name": a.name,
                    "datatype": ORT_TO_OIP[a.type],
                    "shape": [d if isinstance(d, int) else -1 for d in a.shape],
                }
                for a in args
            ]

        assert meta["name"] == vid
        assert meta["versions"] == ["1.0.0"]
        assert meta["platform"] == "onnxruntime"
        assert meta["inputs"] == spec(sess.get_inputs())
        assert meta["outputs"] == spec(sess.get_outputs())
        assert meta["parameters"]["model"] == f"tiny-creator/{name}"
        assert meta["parameters"]["properties"]["cyxwiz.kind"] == "classifier"
    iris_in = httpx.get(f"{node.url}/v2/models/{stack.published['iris']}", headers=node.headers())
    assert iris_in.json()["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}]
    r = httpx.get(f"{node.url}/v2/models/{stack.published['iris']}/ready", headers=node.headers())
    assert r.status_code == 200
    assert r.json()["ready"] is True


def test_no_plaintext_model_bytes_or_keys_on_disk(
    stack: Stack, node: RunningNode, tiny_models: TinyModels
) -> None:
    for name in ("iris", "sentiment", "ridge"):
        r = httpx.get(f"{node.url}/v2/models/{stack.published[name]}", headers=node.headers())
        assert r.status_code == 200
    files = [p for p in node.cache_dir.rglob("*") if p.is_file()]
    assert len(files) == 3  # one encrypted blob per model, nothing else
    keys = []
    for name in ("iris", "sentiment", "ridge"):
        m = httpx.get(
            f"{stack.url}/api/v1/nodes/assignments/{stack.published[name]}",
            headers={"Authorization": f"Bearer {node.token}"},
        ).json()
        keys += [base64.b64decode(f["data_key"]) for f in m["files"]]
    assert len(keys) == 4
    for path in files:
        assert oct(path.stat().st_mode & 0o777) == "0o600"
        stored = path.read_bytes()
        assert stored.startswith(b"CXWZB1")  # the blob store's encrypted format
        for model in (tiny_models.iris, tiny_models.text, tiny_models.regressor):
            for start in range(0, len(model) - 32, max(1, len(model) // 16)):
                assert model[start : start + 32] not in stored
        for key in keys:
            assert key not in stored


# ---------------------------------------------------------------- refusals


def test_bad_inputs_get_clear_400s(stack: Stack, node: RunningNode) -> None:
    vid = stack.published["iris"]
    good = rows_tensor([[1.0, 2.0, 3.0, 4.0]])
    cases: list[tuple[Any, int, str, str]] = [
        (
            {"inputs": [{**good, "shape": [1, 3], "data": [1.0, 2.0, 3.0]}]},
            400,
            "wrong_shape",
            "[-1, 4]",
        ),
        ({"inputs": [{**good, "shape": [4]}]}, 400, "wrong_shape", "[-1, 4]"),
        ({"inputs": [{**good, "shape": [2, 4]}]}, 400, "wrong_shape", "needs 8 elements"),
        ({"inputs": [{**good, "datatype": "FP64"}]}, 400, "wrong_datatype", "FP32"),
        ({"inputs": [{**good, "datatype": "INT64"}]}, 400, "wrong_datatype", "FP32"),
        ({"inputs": [{**good, "data": ["1", "2", "3", "4"]}]}, 400, "wrong_datatype", "numbers"),
        ({"inputs": [{**good, "data": [1.0, None, 3.0, 4.0]}]}, 400, "wrong_datatype", "numbers"),
        ({"inputs": [{**good, "data": [[1.0], [2.0, 3.0, 4.0]]}]}, 400, "invalid_input", "nested"),
        ({"inputs": [{**good, "shape": [1, -4]}]}, 400, "wrong_shape", "non-negative"),
        ({"inputs": [{**good, "name": "x"}]}, 400, "unknown_input", "'input'"),
        ({"inputs": [good, good]}, 400, "invalid_input", "twice"),
        ({"inputs": []}, 400, "invalid_input", "non-empty"),
        ({"nothing": 1}, 400, "invalid_input", "inputs"),
        ([1, 2], 400, "invalid_input", "object"),
        ({"inputs": [good], "outputs": [{"name": "nope"}]}, 400, "unknown_output", "nope"),
        ({"inputs": [good], "id": 5}, 400, "invalid_input", "'id'"),
        (
            {"inputs": [{**good, "parameters": {"binary_data_size": 16}}]},
            400,
            "binary_tensors_unsupported",
            "JSON",
        ),
    ]
    for body, status, code, words in cases:
        detail = problem(infer(node, vid, body), status, code)["detail"]
        assert words in detail, (body, detail)
    r = httpx.post(
        f"{node.url}/v2/models/{vid}/infer",
        content=b"{not json",
        headers={**node.headers(), "Content-Type": "application/json"},
    )
    problem(r, 400, "malformed_json")
    r = httpx.post(
        f"{node.url}/v2/models/{vid}/infer",
        content=b"\x00" * 64,
        headers={**node.headers(), "Content-Type": "application/octet-stream"},
    )
    problem(r, 415, "unsupported_media_type")
    # a body over the limit is refused before it is parsed (declared or streamed)
    limit = node.agent.config.max_request_bytes
    huge = b'{"inputs": [' + b" " * limit + b"]}"
    r = httpx.post(
        f"{node.url}/v2/models/{vid}/infer",
        content=huge,
        headers={**node.headers(), "Content-Type": "application/json"},
    )
    problem(r, 413, "payload_too_large")

    def chunks() -> Any:
        for _ in range(limit // (1024 * 1024) + 2):
            yield b" " * (1024 * 1024)

    r = httpx.post(
        f"{node.url}/v2/models/{vid}/infer",
        content=chunks(),
        headers={**node.headers(), "Content-Type": "application/json"},
    )
    problem(r, 413, "payload_too_large")
    # the node still works
    assert infer(node, vid, {"inputs": [good]}).status_code == 200


def test_gateway_secret_is_required(stack: Stack, node: RunningNode) -> None:
    vid = stack.published["iris"]
    body = {"inputs": [rows_tensor([[1.0, 2.0, 3.0, 4.0]])]}
    for headers in (
        {},
        {"Authorization": "Bearer cxw_gs_forged"},
        {"Authorization": f"Bearer {node.token}"},  # the node token is not the gateway secret
        {"Authorization": node.secret},
    ):
        r = infer(node, vid, body, headers=headers)
        problem(r, 401, "invalid_gateway_secret")
        assert r.headers["www-authenticate"] == "Bearer"
        problem(
            httpx.get(f"{node.url}/v2/models/{vid}", headers=headers), 401, "invalid_gateway_secret"
        )
        problem(httpx.get(f"{node.url}/v2", headers=headers), 401, "invalid_gateway_secret")
    # health probes are open
    assert httpx.get(f"{node.url}/v2/health/live").json() == {"live": True}
    assert httpx.get(f"{node.url}/v2/health/ready").json() == {"ready": True}
    r = httpx.get(f"{node.url}/v2", headers=node.headers())
    assert r.json()["name"] == "cyxwiz-node"


def test_unknown_or_unassigned_models_are_404(
    stack: Stack, node: RunningNode, tiny_models: TinyModels
) -> None:
    body = {"inputs": [rows_tensor([[1.0, 2.0, 3.0, 4.0]])]}
    problem(infer(node, str(uuid.uuid4()), body), 404, "model_not_found")
    problem(infer(node, "not-a-uuid", body), 404, "model_not_found")
    problem(
        httpx.get(f"{node.url}/v2/models/{uuid.uuid4()}", headers=node.headers()),
        404,
        "model_not_found",
    )
    # published, but not assigned to this node
    vid = stack.publish("iris-unassigned", {"model.onnx": tiny_models.iris})
    problem(infer(node, vid, body), 404, "model_not_found")
    r = httpx.get(f"{node.url}/v2/models/{vid}/ready", headers=node.headers())
    problem(r, 400, "model_not_ready")
    problem(httpx.get(f"{node.url}/v2/nope", headers=node.headers()), 404, "not_found")
    problem(
        httpx.get(f"{node.url}/v2/models/{vid}/infer", headers=node.headers()),
        405,
        "method_not_allowed",
    )


# ---------------------------------------------------------------- loading and the LRU


def test_concurrent_first_requests_load_the_model_once(
    stack: Stack, tiny_models: TinyModels
) -> None:
    n = stack.start_node("concurrent")
    vid = stack.publish("iris-concurrent", {"model.onnx": tiny_models.iris})
    stack.assign(n, vid)
    headers = n.headers()
    body = {"inputs": [rows_tensor(tiny_models.iris_rows)]}

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=30) as c:
            return await asyncio.gather(
                *(
                    c.post(f"{n.url}/v2/models/{vid}/infer", json=body, headers=headers)
                    for _ in range(12)
                )
            )

    responses = asyncio.run(burst())
    assert [r.status_code for r in responses] == [200] * 12
    assert len({json.dumps(r.json()["outputs"]) for r in responses}) == 1
    assert n.agent.models.loads == 1
    wait_for(lambda: n.agent.outstanding == 0)  # decremented just after each answer is sent

    # the heartbeat reports it warm
    def reported_warm() -> bool:
        with stack.db.session() as s:
            node = s.scalar(select(Node).where(Node.id == uuid.UUID(n.node_id)))
            assert node is not None
            return node.warm_version_ids == [vid]

    wait_for(reported_warm)
    n.stop()


def test_lru_evicts_when_models_exceed_the_budget(stack: Stack, tiny_models: TinyModels) -> None:
    budget = max(len(tiny_models.iris), len(tiny_models.regressor)) + 16  # one model at a time
    n = stack.start_node("small", max_model_bytes=budget)
    iris, ridge = stack.published["iris"], stack.published["ridge"]
    stack.assign(n, iris)
    stack.assign(n, ridge)
    h = n.headers()

    def ready(vid: str) -> int:
        return httpx.get(f"{n.url}/v2/models/{vid}/ready", headers=h).status_code

    assert infer(n, iris, {"inputs": [rows_tensor(tiny_models.iris_rows)]}).status_code == 200
    assert ready(iris) == 200
    assert infer(n, ridge, {"inputs": [rows_tensor(tiny_models.reg_rows)]}).status_code == 200
    assert ready(ridge) == 200
    assert ready(iris) == 400  # evicted
    assert n.agent.models.warm() == [ridge]
    assert n.agent.models.total_bytes <= budget
    # it comes back on demand, from the encrypted cache (no second download)
    blobs_before = sorted(p.name for p in (n.cache_dir / "blobs").iterdir())
    assert infer(n, iris, {"inputs": [rows_tensor(tiny_models.iris_rows)]}).status_code == 200
    assert n.agent.models.warm() == [iris]
    assert sorted(p.name for p in (n.cache_dir / "blobs").iterdir()) == blobs_before
    assert n.agent.models.loads == 3
    # a model bigger than the whole budget is refused clearly
    tiny = stack.start_node("tiny-budget", max_model_bytes=64)
    stack.assign(tiny, iris)
    problem(
        infer(tiny, iris, {"inputs": [rows_tensor(tiny_models.iris_rows)]}), 503, "model_too_large"
    )
    tiny.stop()
    n.stop()


def test_a_tampered_cache_blob_is_fetched_again(stack: Stack, tiny_models: TinyModels) -> None:
    n = stack.start_node("tamper")
    vid = stack.published["iris"]
    stack.assign(n, vid)
    body = {"inputs": [rows_tensor(tiny_models.iris_rows)]}
    first = infer(n, vid, body).json()["outputs"]
    [blob] = (n.cache_dir / "blobs").iterdir()
    data = bytearray(blob.read_bytes())
    data[200] ^= 0xFF
    blob.write_bytes(bytes(data))
    n.agent.models.evict_all()
    assert infer(n, vid, body).json()["outputs"] == first
    assert blob.read_bytes() != bytes(data)  # replaced by a good copy
    n.stop()


# ---------------------------------------------------------------- tokens and registration


def test_a_deleted_node_cannot_fetch_models_or_keys(stack: Stack, tiny_models: TinyModels) -> None:
    n = stack.start_node("doomed")
    vid = stack.published["iris"]
    stack.assign(n, vid)
    h = n.headers()
    r = stack.http.delete(f"/api/v1/nodes/{n.node_id}", headers=stack.operator.headers)
    assert r.status_code == 204
    market = {"Authorization": f"Bearer {n.token}"}
    r = stack.http.get(f"/api/v1/nodes/assignments/{vid}", headers=market)
    assert r.status_code == 401
    assert r.json()["code"] == "invalid_node_token"
    # the agent cannot load the model anymore...
    r = infer(n, vid, {"inputs": [rows_tensor(tiny_models.iris_rows)]}, headers=h)
    assert r.status_code in (401, 503)
    assert r.json()["code"] in ("node_unauthorized", "invalid_gateway_secret", "node_not_ready")
    # ...and on its next heartbeat it learns it was retired and stops serving
    wait_for(lambda: httpx.get(f"{n.url}/v2/health/ready").status_code == 503)
    problem(infer(n, vid, {"inputs": []}, headers=h), 503, "node_not_ready")
    n.stop()


def test_registration_retries_until_the_marketplace_is_up(stack: Stack) -> None:
    sock = free_socket()  # bound, not listening: connections are refused
    late_url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    n = stack.start_node("patient", wait=False, market_url=late_url)
    time.sleep(0.6)
    assert httpx.get(f"{n.url}/v2/health/ready").status_code == 503
    problem(httpx.get(f"{n.url}/v2/models/{stack.published['iris']}"), 503, "node_not_ready")
    market = serve(create_app(stack.settings, database=stack.db), sock)
    try:
        n.wait_ready(timeout=15)
    finally:
        n.stop()
        market.stop()


def test_cyxwiz_node_command_serves(stack: Stack, tiny_models: TinyModels, tmp_path: Any) -> None:
    node_id, token = stack.create_node("cli")
    sock = free_socket()
    port = sock.getsockname()[1]
    sock.close()
    env = {
        **os.environ,
        "CYXWIZ_NODE_TOKEN": token,
        "CYXWIZ_NODE_MARKETPLACE": stack.url,
        "CYXWIZ_NODE_CACHE_DIR": str(tmp_path / "cache"),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "cyxwiz", "node", "--port", str(port), "--capacity", "2"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:

        def up() -> bool:
            try:
                return httpx.get(f"{url}/v2/health/ready", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(up, timeout=30)
        vid = stack.published["iris"]
        r = stack.http.put(
            f"/api/v1/nodes/{node_id}/assignments/{vid}", headers=stack.admin.headers
        )
        assert r.status_code == 200
        shown = stack.http.get(f"/api/v1/nodes/{node_id}", headers=stack.operator.headers).json()
        assert shown["url"] == url
        assert shown["capacity"] == 2
        with stack.db.session() as s:
            secret = s.scalar(select(Node.gateway_secret).where(Node.id == uuid.UUID(node_id)))
        r = httpx.post(
            f"{url}/v2/models/{vid}/infer",
            json={"inputs": [rows_tensor(tiny_models.iris_rows)]},
            headers={"Authorization": f"Bearer {secret}"},
        )
        assert r.status_code == 200, r.text
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=20)
    assert token.encode() not in err  # the token is never logged


def test_cli_refuses_a_non_node_token() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "cyxwiz", "node", "--token", "cxw_at_notanode"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert r.returncode == 2
    assert "node token" in r.stderr
