"""Paid hosted inference end to end, with the real metering engine and the real ledger: a buyer
funds a balance through the API, calls a priced model through the gateway in all three forms (simple JSON, KServe
v2 JSON, tritonclient), gets what ONNX Runtime gives on the file, and once metering settles every
party holds exactly its share (docs/metering.md); a balance covering k calls allows exactly k."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator

import numpy as np
import pytest
from tests.gateway.paid import PaidStack, build_paid_stack, wait_until
from tests.node.conftest import TinyModels, ort_session

from cyxwiz.billing import flows
from cyxwiz.config import Settings
from cyxwiz.db import Database
from cyxwiz.demo.models import run_onnx
from cyxwiz.inference.metering import UsageMeter
from cyxwiz.money import Currency, allocate, bps_of

PRICE = 1_234_567  # USDC minor units per 1K requests: 1234.567 per row, rounded up per block
CALLS = 9  # 3 simple + 3 v2 + 3 tritonclient
ROWS = 3  # every call sends the 3 iris rows: billed per row (issue 9)
UNITS = CALLS * ROWS
FUNDED = 1_000_000  # 1 USDC
# ceil(27 × 1234.567) = ceil(33333.309): rounded up once for the whole reservation
CHARGE = 33_334
FEE = 6_666  # floor(33334 × 20%) → platform:revenue
COMPUTE = 10_000  # floor(33334 × 30%) → the operator of the only node that served
CREATOR, COCREATOR = 11_113, 5_555  # the rest (16668) by 6667:3333, largest remainder


@pytest.fixture(scope="module")
def paid(tmp_path_factory: pytest.TempPathFactory, tiny_models: TinyModels) -> Iterator[PaidStack]:
    # One reservation covers exactly CALLS calls: the block is used up by the scenario and
    # settles on the next flush (no waiting for the idle release).
    for st in build_paid_stack(
        tmp_path_factory.mktemp("paid-e2e"),
        tiny_models,
        "paid",
        price=PRICE,
        reservation_requests=CALLS,
    ):
        st.stack.start_node("paid-node")  # the gateway cold-starts it on the first call
        yield st


def test_the_expected_amounts_follow_the_documented_rules() -> None:
    charge = -(-UNITS * PRICE // 1000)
    assert charge == CHARGE
    assert (bps_of(charge, 2000), bps_of(charge, 3000)) == (FEE, COMPUTE)
    assert allocate(charge - FEE - COMPUTE, [6667, 3333]) == [CREATOR, COCREATOR]
    assert FEE + COMPUTE + CREATOR + COCREATOR == CHARGE


def test_paid_calls_in_three_forms_settle_exact_shares(
    paid: PaidStack, tiny_models: TinyModels
) -> None:
    import tritonclient.http as httpclient

    st = paid
    buyer = st.account("paid-buyer")
    st.fund(buyer, FUNDED)
    key = st.inference_key(buyer)
    rows = tiny_models.iris_rows
    x = np.array(rows, dtype=np.float32)
    label, probs = ort_session(tiny_models.iris).run(None, {"input": x})
    expected = run_onnx(tiny_models.iris, rows)
    request_ids: list[str] = []

    # simple JSON
    for _ in range(3):
        r = st.http.post(f"/api/v1/models/{st.model}/infer", json={"inputs": rows}, headers=key)
        assert r.status_code == 200, r.text
        assert r.json()["predictions"] == expected["predictions"]
        request_ids.append(r.headers["x-request-id"])

    # KServe v2 JSON
    v2 = {
        "inputs": [
            {
                "name": "input",
                "shape": list(x.shape),
                "datatype": "FP32",
                "data": x.ravel().tolist(),
            }
        ]
    }
    for i in range(3):
        r = st.http.post(
            "/v2/models/paid-creator--iris/infer", json={**v2, "id": f"c{i}"}, headers=key
        )
        assert r.status_code == 200, r.text
        out = {o["name"]: o for o in r.json()["outputs"]}
        assert r.json()["id"] == f"c{i}"
        assert out["label"]["data"] == label.ravel().tolist()
        np.testing.assert_allclose(
            np.array(out["probabilities"]["data"]).reshape(probs.shape), probs, rtol=1e-6
        )
        request_ids.append(r.headers["x-request-id"])

    # tritonclient's HTTP client, JSON tensors
    client = httpclient.InferenceServerClient(
        url=st.url.removeprefix("http://"), connection_timeout=10, network_timeout=10
    )
    try:
        for _ in range(3):
            inp = httpclient.InferInput("input", list(x.shape), "FP32")
            inp.set_data_from_numpy(x, binary_data=False)
            outs = [
                httpclient.InferRequestedOutput("label", binary_data=False),
                httpclient.InferRequestedOutput("probabilities", binary_data=False),
            ]
            result = client.infer("paid-creator--iris", [inp], outputs=outs, headers=key)
            np.testing.assert_array_equal(result.as_numpy("label"), label)
            np.testing.assert_allclose(result.as_numpy("probabilities"), probs, rtol=1e-6)
    finally:
        client.close()

    # metering flushes the events and settles the used-up reservation
    wait_until(lambda: st.settled(buyer, CALLS, CHARGE, FUNDED), what="settlement")
    events = st.events(buyer)
    assert {e.request_id for e in events} >= set(request_ids)
    assert len({e.request_id for e in events}) == CALLS
    assert {e.kind for e in events} == {"paid"}
    assert sum(e.amount for e in events) == CHARGE  # per-call amounts sum to the charge
    node_id = st.stack.nodes[0].node_id
    assert {str(e.node_id) for e in events} == {node_id}

    # the buyer, through the API: balance and usage
    bal = st.http.get("/api/v1/balance", headers=buyer.headers).json()["USDC"]["balance"]
    assert (bal["posted"], bal["pending"], bal["available"]) == (
        FUNDED - CHARGE,
        0,
        FUNDED - CHARGE,
    )
    usage = st.http.get("/api/v1/usage", headers=buyer.headers).json()
    [row] = usage["items"]
    assert row["model"] == st.model
    assert (row["calls"], row["paid_calls"], row["demo_calls"], row["units"]) == (9, 9, 0, UNITS)
    assert row["spent"] == {"USDC": CHARGE}

    # the platform, the node operator and the two creators
    assert st.balance(flows.platform_code("revenue", Currency.USDC)).posted == FEE
    op = st.http.get("/api/v1/operator/earnings", headers=st.stack.operator.headers).json()
    [node] = op["nodes"]
    assert node["node_id"] == node_id
    assert (node["calls"], node["units"], node["earned"]) == (CALLS, UNITS, {"USDC": COMPUTE})
    assert op["balance"]["USDC"]["available"] == COMPUTE
    for who, share in ((st.stack.creator, CREATOR), (st.cocreator, COCREATOR)):
        earnings = st.http.get("/api/v1/balance", headers=who.headers).json()["USDC"]["earnings"]
        assert earnings["posted"] == share, who.username
        mine = st.http.get("/api/v1/creator/usage", headers=who.headers).json()["items"]
        assert [(m["model"], m["revenue"], m["my_earnings"]) for m in mine] == [
            (st.model, {"USDC": CHARGE}, {"USDC": share})
        ]

    # `cyxwiz ledger check` against the same database: clean
    env = {
        **os.environ,
        "CYXWIZ_DATABASE_URL": st.db_url,
        "CYXWIZ_DATA_DIR": str(st.settings.data_dir),
        "CYXWIZ_MASTER_KEY": st.master_key,
    }
    done = subprocess.run(
        [sys.executable, "-m", "cyxwiz", "ledger", "check"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ledger check: clean" in done.stdout


def test_a_balance_covering_k_calls_allows_k_then_402(
    paid: PaidStack, tiny_models: TinyModels
) -> None:
    st = paid
    k = 3
    exact = -(-k * PRICE // 1000)  # 3704: covers 3 calls (3703.701), not 4 (4938.268)
    buyer = st.account("paid-short")
    st.fund(buyer, exact)
    key = st.inference_key(buyer)
    body = {"inputs": tiny_models.iris_rows[:1]}
    for _ in range(k):
        r = st.http.post(f"/api/v1/models/{st.model}/infer", json=body, headers=key)
        assert r.status_code == 200, r.text
    r = st.http.post(f"/api/v1/models/{st.model}/infer", json=body, headers=key)
    assert r.status_code == 402, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["code"] == "insufficient_funds"
    wait_until(lambda: st.settled(buyer, k, exact, exact), what="settlement")
    bal = st.user_balance(buyer)
    assert (bal.posted, bal.available) == (0, 0)
    # still refused once the reservation settled: the money is gone, not held
    r = st.http.post(f"/api/v1/models/{st.model}/infer", json=body, headers=key)
    assert r.status_code == 402, r.text
    assert len(st.events(buyer)) == k
    assert st.ledger_problems() == []


def test_the_last_close_settles_even_after_the_starting_loop_closed(
    db: Database, settings: Settings
) -> None:
    """Two app lifespans on their own loops (two TestClients on one app, as tests/web do):
    the first to start is the first to stop; the last close must still flush and settle."""
    meter = UsageMeter(db, settings)
    first, second = asyncio.new_event_loop(), asyncio.new_event_loop()
    try:
        first.run_until_complete(meter.start())
        second.run_until_complete(meter.start())
        first.run_until_complete(meter.close())
        first.close()
        second.run_until_complete(meter.close())
    finally:
        second.close()
        for task in asyncio.all_tasks(first):  # the flusher died with its loop: no GC noise
            task._log_destroy_pending = False  # type: ignore[attr-defined]
