"""Loading the demo catalogue: what a visitor of a fresh `cyxwiz serve --demo` sees."""

from __future__ import annotations

import json

from fastapi.testclient import TestClient

from cyxwiz.clock import TestClock
from cyxwiz.config import Settings
from cyxwiz.db import Database
from cyxwiz.demo.models import run_onnx
from cyxwiz.demo.seed import DEMO_PASSWORD, DEMO_PURCHASES, load_models, load_money
from cyxwiz.ledger import service as ledger
from cyxwiz.storage import BlobStore
from tests.demo.conftest import Built


def test_demo_catalogue_is_browsable_and_runs(
    built: Built,
    db: Database,
    blobs: BlobStore,
    client: TestClient,
    settings: Settings,
    clock: TestClock,
) -> None:
    models = built[0]
    with db.session() as s:
        report = load_models(s, blobs, models)
    assert report.models_created == len(models) >= 24
    with db.session() as s:
        made = load_money(s, settings=settings, models=models, now=clock.now())
    assert made == len(DEMO_PURCHASES)
    with db.session() as s:
        again = load_models(s, blobs, models)  # idempotent: nothing duplicated
        assert load_money(s, settings=settings, models=models, now=clock.now()) == 0
        assert ledger.check(s).ok
    assert again.models_created == 0
    assert again.models_existing == len(models)

    listing = client.get("/api/v1/models?per_page=100").json()
    assert listing["total"] == len(models)
    subcats = {m["category"]["slug"] for m in listing["items"]}
    tops = {m["category"]["parent"] or m["category"]["slug"] for m in listing["items"]}
    assert len(subcats) >= 8
    assert len(tops) >= 4
    tree = {c["slug"]: c["model_count"] for c in client.get("/api/v1/categories").json()}
    assert sum(tree.values()) == len(models)

    # Every listing carries its real held-out metrics and a sample; the published file runs.
    iris = next(m for m in models if m.name == "iris-species-classifier")
    page = client.get(f"/api/v1/models/{iris.owner}/{iris.name}").json()
    shown = {m["type"]: m["value"] for m in page["metrics"]}
    assert shown == iris.metrics
    onnx_bytes = client.get(
        f"/api/v1/models/{iris.owner}/{iris.name}/versions/main/files/model.onnx"
    ).content
    assert onnx_bytes == iris.files["model.onnx"]
    assert run_onnx(onnx_bytes, iris.sample_input) == iris.sample_output
    config = json.loads(
        client.get(
            f"/api/v1/models/{iris.owner}/{iris.name}/versions/main/files/config.json"
        ).content
    )
    assert config
    co = next(m for m in models if m.contributors)
    shares = client.get(f"/api/v1/models/{co.owner}/{co.name}").json()["contributors"]
    assert sorted((c["username"], c["share_bps"]) for c in shares) == sorted(co.contributors)

    home = client.get("/", headers={"accept": "text/html"})
    assert home.status_code == 200
    assert "Newest" in home.text
    found = client.get("/models?q=iris", headers={"accept": "text/html"})
    assert iris.title in found.text

    # a realistic mix of free and priced models, and creators with real earnings
    offers = [
        client.get(f"/api/v1/models/{m.owner}/{m.name}/offers").json()["free"] for m in models
    ]
    assert 0 < offers.count(True) < len(models)
    tok = client.post(
        "/api/v1/auth/login", json={"username": "orbit-analytics", "password": DEMO_PASSWORD}
    ).json()
    licenses = client.get(
        "/api/v1/licenses", headers={"Authorization": f"Bearer {tok['access_token']}"}
    ).json()
    assert {lic["refundable"] for lic in licenses} == {
        True,
        False,
    }  # some still in the window, some past it
    tok = client.post(
        "/api/v1/auth/login", json={"username": "tabula-labs", "password": DEMO_PASSWORD}
    ).json()
    earnings = client.get(
        "/api/v1/creator/earnings", headers={"Authorization": f"Bearer {tok['access_token']}"}
    ).json()
    assert earnings["available"]["USDC"] > 0
