"""Loading the demo catalogue: what a visitor of a fresh `cyxwiz serve --demo` sees."""

from __future__ import annotations

import json

from fastapi.testclient import TestClient

from cyxwiz.db import Database
from cyxwiz.demo.models import run_onnx
from cyxwiz.demo.seed import load_models
from cyxwiz.storage import BlobStore
from tests.demo.conftest import Built


def test_demo_catalogue_is_browsable_and_runs(
    built: Built, db: Database, blobs: BlobStore, client: TestClient
) -> None:
    models = built[0]
    with db.session() as s:
        report = load_models(s, blobs, models)
    assert report.models_created == len(models) >= 24
    with db.session() as s:
        again = load_models(s, blobs, models)  # idempotent: nothing duplicated
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
