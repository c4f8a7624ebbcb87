"""Billing by batch size (issue 9, item 4), with the real meter, the real ledger and a real node.

The attack: one v2 call carrying a huge batch was billed as one request, and an empty batch
(``shape [0, 4]``) was billed too. Now a per-request offer counts one unit per row (the first
dimension of the inputs; for the simple form, the number of instances), demo credits count
rows, an empty batch is refused (422 ``empty_batch``, nothing spent), a batch above the
model's maximum is refused (413 ``batch_too_large``, nothing spent), and a balance that
covers k rows lets through exactly k rows, whether in one call or many.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from tests.gateway.paid import PaidStack, build_paid_stack
from tests.node.conftest import TinyModels

from cyxwiz.inference.metering import cost

PRICE = 1_000_000  # per 1K requests: 1000 minor units a row
MAX_ROWS = 5_000  # the stack's inference_max_batch_rows
MODEL_MAX = 5  # the capped model's own cyxwiz.max_batch_rows
ROW = [5.1, 3.5, 1.4, 0.2]


def _capped(iris: bytes, most: int) -> bytes:
    """The iris model with ``cyxwiz.max_batch_rows`` in its ONNX metadata."""
    import onnx

    proto = onnx.load_from_string(iris)
    props = {p.key: p.value for p in proto.metadata_props}
    props["cyxwiz.max_batch_rows"] = str(most)
    onnx.helper.set_model_props(proto, props)
    data: bytes = proto.SerializeToString()
    return data


@pytest.fixture(scope="module")
def paid(tmp_path_factory: pytest.TempPathFactory, tiny_models: TinyModels) -> Iterator[PaidStack]:
    for st in build_paid_stack(
        tmp_path_factory.mktemp("batch-billing"),
        tiny_models,
        "batch",
        price=PRICE,
        inference_max_batch_rows=MAX_ROWS,
        inference_max_body_bytes=4 * 1024 * 1024,
        demo_credits_per_model=10,
        inference_demo_burst=1000,
        inference_demo_rate_per_second=1000.0,
        demo_ip_daily_rows=0,  # this file is about rows, not the daily demo budgets
        register_ip_max_accounts=10_000,  # every account here comes from 127.0.0.1
    ):
        st.stack.publish("free-iris", {"model.onnx": tiny_models.iris})  # no price: demo only
        st.stack.publish("capped-iris", {"model.onnx": _capped(tiny_models.iris, MODEL_MAX)})
        st.stack.start_node("batch-node")
        yield st


def v2(rows: int, *, shape: list[int] | None = None) -> dict[str, Any]:
    return {
        "inputs": [
            {
                "name": "input",
                "shape": shape if shape is not None else [rows, 4],
                "datatype": "FP32",
                "data": ROW * rows,
            }
        ]
    }


def _v2_path(model: str) -> str:
    return "/v2/models/{}/infer".format(model.replace("/", "--"))


def _buyer(paid: PaidStack, name: str, funds: int) -> tuple[Any, dict[str, str]]:
    who = paid.account(name)
    paid.fund(who, funds)
    return who, paid.inference_key(who)


def test_v2_batch_is_billed_per_row(paid: PaidStack) -> None:
    who, key = _buyer(paid, "rows-buyer", 10_000_000)
    r = paid.http.post(_v2_path(paid.model), json=v2(3_000), headers=key)
    assert r.status_code == 200, r.text
    assert r.json()["outputs"][0]["shape"][0] == 3_000
    [event] = paid.events(who)  # durable before the answer left
    assert event.request_id == r.headers["x-request-id"]
    assert (event.kind, event.unit, event.units) == ("paid", "request", 3_000)
    assert event.amount == cost(3_000, PRICE)  # not the price of one request

    r = paid.http.post(
        f"/api/v1/models/{paid.model}/infer", json={"inputs": [ROW] * 7}, headers=key
    )
    assert r.status_code == 200, r.text
    assert len(r.json()["predictions"]) == 7
    units = sorted(e.units for e in paid.events(who))
    assert units == [7, 3_000]
    usage = paid.http.get("/api/v1/usage", headers=who.headers).json()
    [row] = usage["items"]
    assert (row["calls"], row["paid_calls"], row["units"]) == (2, 2, 3_007)
    assert row["spent"] == {"USDC": cost(3_007, PRICE)}


@pytest.mark.parametrize(
    ("body", "path_of"),
    [
        (v2(0), _v2_path),
        (v2(1, shape=[0, 4]), _v2_path),
        (v2(2, shape=[2, 0]), _v2_path),
        ({"inputs": []}, lambda m: f"/api/v1/models/{m}/infer"),
    ],
    ids=["v2-0x4", "v2-shape-0x4-data", "v2-2x0", "simple-empty"],
)
def test_an_empty_batch_is_refused_and_costs_nothing(
    paid: PaidStack, body: dict[str, Any], path_of: Any, request: pytest.FixtureRequest
) -> None:
    who, key = _buyer(paid, f"empty-{request.node.callspec.id}", 1_000_000)
    before = paid.meter.stats.authorized
    r = paid.http.post(path_of(paid.model), json=body, headers=key)
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["code"] == "empty_batch"
    assert paid.meter.stats.authorized == before  # refused before metering
    assert paid.events(who) == []
    bal = paid.user_balance(who)
    assert (bal.posted, bal.pending_debits) == (1_000_000, 0)


def test_a_batch_above_the_maximum_is_refused_and_costs_nothing(paid: PaidStack) -> None:
    who, key = _buyer(paid, "big-batch", 10_000_000)
    before = paid.meter.stats.authorized
    r = paid.http.post(_v2_path(paid.model), json=v2(MAX_ROWS + 1), headers=key)
    assert r.status_code == 413, r.text
    body = r.json()
    assert (body["code"], body["rows"], body["max_rows"]) == (
        "batch_too_large",
        MAX_ROWS + 1,
        MAX_ROWS,
    )
    r = paid.http.post(
        f"/api/v1/models/{paid.model}/infer", json={"inputs": [ROW] * (MAX_ROWS + 1)}, headers=key
    )
    assert (r.status_code, r.json()["code"]) == (413, "batch_too_large")
    assert paid.meter.stats.authorized == before
    assert paid.events(who) == []
    assert paid.user_balance(who).pending_debits == 0


def test_the_model_metadata_sets_its_own_maximum(paid: PaidStack) -> None:
    owner = paid.stack.creator  # the owner calls free: only the row limit is at stake here
    key = paid.inference_key(owner)
    capped = f"{owner.username}/capped-iris"
    ok = paid.http.post(_v2_path(capped), json=v2(MODEL_MAX), headers=key)
    assert ok.status_code == 200, ok.text
    r = paid.http.post(_v2_path(capped), json=v2(MODEL_MAX + 1), headers=key)
    assert (r.status_code, r.json()["code"], r.json()["max_rows"]) == (
        413,
        "batch_too_large",
        MODEL_MAX,
    )


def test_inputs_that_disagree_on_the_batch_size_are_refused(paid: PaidStack) -> None:
    _, key = _buyer(paid, "disagree", 1_000_000)
    body = v2(2)
    body["inputs"].append({"name": "other", "shape": [3, 4], "datatype": "FP32", "data": ROW * 3})
    r = paid.http.post(_v2_path(paid.model), json=body, headers=key)
    assert r.status_code == 400, r.text
    assert (r.json()["code"], r.json()["reason"]) == ("invalid_input", "inconsistent_batch")


def test_a_balance_for_ten_rows_never_gets_more_through_one_call(paid: PaidStack) -> None:
    """The reservation covers every row of the call: a balance for 10 rows cannot pass 10,000
    rows in one call (nor 11), only 10 in total."""
    who, key = _buyer(paid, "ten-rows", cost(10, PRICE))
    path = _v2_path(paid.model)
    for rows in (MAX_ROWS, 11):
        r = paid.http.post(path, json=v2(rows), headers=key)
        assert r.status_code == 402, r.text[:300]
        assert r.json()["code"] == "insufficient_funds"
        assert f"{rows} requests" in r.json()["detail"]
    assert paid.events(who) == []
    r = paid.http.post(path, json=v2(6), headers=key)
    assert r.status_code == 200, r.text
    r = paid.http.post(path, json=v2(5), headers=key)  # 4 rows left
    assert r.status_code == 402, r.text
    r = paid.http.post(path, json=v2(4), headers=key)
    assert r.status_code == 200, r.text
    assert paid.http.post(path, json=v2(1), headers=key).status_code == 402
    assert sorted(e.units for e in paid.events(who)) == [4, 6]


def test_demo_credits_count_rows(paid: PaidStack) -> None:
    """10 demo credits are 10 rows: a 4-row call spends 4, a 7-row call is then refused
    (nothing spent), a 6-row call spends the rest."""
    who = paid.account("demo-rows")
    free = f"{paid.stack.creator.username}/free-iris"
    path = f"/api/v1/models/{free}/infer"
    r = paid.http.post(path, json={"inputs": [ROW] * 4}, headers=who.headers)
    assert r.status_code == 200, r.text
    credits = paid.http.get(f"/api/v1/demo-credits/{free}", headers=who.headers).json()
    assert (credits["used"], credits["remaining"]) == (4, 6)
    r = paid.http.post(_v2_path(free), json=v2(7), headers=who.headers)
    assert r.status_code == 429, r.text
    assert r.json()["code"] == "quota_exhausted"
    assert "7 rows" in r.json()["detail"]
    r = paid.http.post(_v2_path(free), json=v2(6), headers=who.headers)
    assert r.status_code == 200, r.text
    credits = paid.http.get(f"/api/v1/demo-credits/{free}", headers=who.headers).json()
    assert (credits["used"], credits["remaining"]) == (10, 0)
    r = paid.http.post(path, json={"inputs": [ROW]}, headers=who.headers)
    assert (r.status_code, r.json()["code"]) == (429, "quota_exhausted")
    events = paid.events(who)
    assert sorted((e.kind, e.units, e.amount) for e in events) == [("demo", 4, 0), ("demo", 6, 0)]
    usage = paid.http.get("/api/v1/usage", headers=who.headers).json()["total"]
    assert (usage["calls"], usage["demo_calls"], usage["units"]) == (2, 2, 10)
