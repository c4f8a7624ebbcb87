"""NodeClient (what the gateway uses) against a real node: the simple JSON form answers exactly
what run_onnx answers in-process, and failures say whether another node may succeed."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import pytest

from cyxwiz.demo.models import run_onnx
from cyxwiz.errors import InvalidInput
from cyxwiz.inference import service as nodes
from cyxwiz.inference.interfaces import NodeCallError, RoutableNode
from cyxwiz.inference.node_client import NodeClient
from tests.node.conftest import RunningNode, Stack, TinyModels, free_socket

T = TypeVar("T")


@dataclass(frozen=True)
class Endpoint:
    url: str
    gateway_secret: str


def run(fn: Callable[[NodeClient], Awaitable[T]]) -> T:
    async def main() -> T:
        async with NodeClient(timeout=10) as client:
            return await fn(client)

    return asyncio.run(main())


def routable(stack: Stack, node: RunningNode) -> RoutableNode:
    """The node as the gateway sees it: from the routing table."""
    with stack.db.session() as s:
        table = nodes.healthy_nodes(s, now=datetime.now(UTC))
    return next(n for n in table if str(n.id) == node.node_id)


def test_simple_json_answers_like_run_onnx(
    stack: Stack, node: RunningNode, tiny_models: TinyModels
) -> None:
    target = routable(stack, node)
    iris, text, ridge = (stack.published[k] for k in ("iris", "sentiment", "ridge"))
    feature_rows = [
        dict(zip(["sl", "sw", "pl", "pw"], r, strict=True)) for r in tiny_models.iris_rows
    ]
    cases: list[tuple[str, bytes, Any]] = [
        (iris, tiny_models.iris, tiny_models.iris_rows),
        (iris, tiny_models.iris, tiny_models.iris_rows[0]),  # one row
        (iris, tiny_models.iris, {"inputs": feature_rows}),  # named features, wrapped
        (text, tiny_models.text, tiny_models.texts),
        (text, tiny_models.text, "just one text, great"),
        (ridge, tiny_models.regressor, tiny_models.reg_rows),
    ]

    async def go(client: NodeClient) -> list[dict[str, Any]]:
        return [await client.infer_simple(target, vid, inputs) for vid, _, inputs in cases]

    answers = run(go)
    for (_, model_bytes, inputs), answer in zip(cases, answers, strict=True):
        assert answer == run_onnx(model_bytes, inputs), inputs
    assert set(answers[0]["predictions"][0]) == {"label", "score", "probabilities"}
    assert set(answers[-1]["predictions"][0]) == {"a", "b"}


def test_metadata_raw_infer_forward_and_load(
    stack: Stack, node: RunningNode, tiny_models: TinyModels
) -> None:
    target = routable(stack, node)
    vid = stack.published["iris"]
    request = {
        "id": "r1",
        "inputs": [
            {"name": "input", "shape": [1, 4], "datatype": "FP32", "data": tiny_models.iris_rows[0]}
        ],
    }

    async def go(client: NodeClient) -> tuple[Any, ...]:
        meta = await client.metadata(target, vid)
        # published versions are immutable: metadata comes from the cache from now on
        again = await client.metadata(Endpoint(target.url, "wrong-secret"), uuid.UUID(vid))
        raw = await client.infer(target, vid, request)
        forwarded = await client.forward(target, vid, json.dumps(request).encode())
        await client.load(target, stack.published["ridge"])
        live = await client.live(target)
        return meta, again, raw, forwarded, live

    meta, again, raw, forwarded, live = run(go)
    assert meta is again
    assert meta.kind == "classifier"
    assert meta.model == "tiny-creator/iris"
    assert meta.version == "1.0.0"
    assert [(s.name, s.datatype, s.shape) for s in meta.inputs] == [("input", "FP32", (-1, 4))]
    assert [s.name for s in meta.outputs] == ["label", "probabilities"]
    assert raw["id"] == "r1"
    assert json.loads(forwarded) == raw
    assert live is True
    assert stack.published["ridge"] in node.agent.models.warm()


def test_failures_say_whether_to_retry_elsewhere(stack: Stack, node: RunningNode) -> None:
    target = routable(stack, node)
    vid = stack.published["iris"]
    bad_shape = {
        "inputs": [{"name": "input", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]
    }
    sock = free_socket()  # bound but not listening: connection refused
    dead = Endpoint(f"http://127.0.0.1:{sock.getsockname()[1]}", "s")

    async def catch(fn: Callable[[], Awaitable[Any]]) -> Exception:
        try:
            await fn()
        except Exception as exc:
            return exc
        raise AssertionError("no error")

    async def go(client: NodeClient) -> list[Exception]:
        return [
            await catch(lambda: client.infer(target, vid, bad_shape)),
            await catch(lambda: client.infer_simple(target, vid, [[1.0, 2.0]])),
            await catch(lambda: client.infer_simple(target, vid, "text for a tabular model")),
            await catch(lambda: client.infer(Endpoint(target.url, "forged"), vid, bad_shape)),
            await catch(lambda: client.infer(target, str(uuid.uuid4()), bad_shape)),
            await catch(lambda: client.infer(dead, vid, bad_shape)),
        ]

    try:
        shape, simple_rows, simple_text, forged, unknown, unreachable = run(go)
    finally:
        sock.close()
    # the caller's fault: pass on, never retry
    assert isinstance(shape, NodeCallError)
    assert (shape.retryable, shape.status, shape.code) == (False, 400, "wrong_shape")
    for exc in (simple_rows, simple_text):
        assert isinstance(exc, InvalidInput)
        assert exc.status == 400
    assert "4 numbers" in str(simple_rows)
    # the node's or the network's fault: another node may succeed
    assert isinstance(forged, NodeCallError)
    assert (forged.retryable, forged.node_status, forged.code) == (
        True,
        401,
        "invalid_gateway_secret",
    )
    assert isinstance(unknown, NodeCallError)
    assert (unknown.retryable, unknown.node_status, unknown.status) == (True, 404, 503)
    assert isinstance(unreachable, NodeCallError)
    assert (unreachable.retryable, unreachable.node_status) == (True, None)
    assert unreachable.code == "node_unreachable"


@pytest.mark.parametrize("inputs", [[], [[]], [["a", "b", "c", "d"]], {"x": 1}])
def test_simple_inputs_that_do_not_fit(stack: Stack, node: RunningNode, inputs: Any) -> None:
    target = routable(stack, node)

    async def go(client: NodeClient) -> None:
        await client.infer_simple(target, stack.published["iris"], inputs)

    with pytest.raises(InvalidInput) as err:
        run(go)
    assert err.value.code == "invalid_input"
