"""Catalog API: categories, listings, versions and files — behaviour and permissions."""

from __future__ import annotations

import hashlib
import json

import pytest
from fastapi.testclient import TestClient

from tests.factories import Api, tiny_onnx
from tests.web.test_api_auth import problem

CARD = """---
license: apache-2.0
tags: [tabular, demo]
model-index:
- name: iris
  results:
  - task: {type: tabular-classification}
    dataset: {name: iris, type: iris}
    metrics:
    - {type: accuracy, value: 0.97, name: Accuracy}
---
# Iris classifier

Predicts the **species**. <script>alert(1)</script>
"""


def test_categories_tree(client: TestClient) -> None:
    r = client.get("/api/v1/categories")
    assert r.status_code == 200
    tree = {c["slug"]: c for c in r.json()}
    assert list(tree) == ["language", "vision", "audio", "multimodal", "tabular", "domain-specific"]
    assert [c["slug"] for c in tree["tabular"]["children"]] == [
        "tabular-classification",
        "tabular-regression",
        "forecasting",
    ]
    assert {c["name"] for c in tree["language"]["children"]} >= {
        "Text generation",
        "NER & extraction",
        "Embeddings",
    }
    assert tree["multimodal"]["children"] == []
    assert len(tree["domain-specific"]["children"]) == 6


def test_create_get_model_with_card(api: Api, client: TestClient) -> None:
    ada = api.user()
    m = api.model(ada, "iris-classifier", card=CARD, tags=["Tabular", "iris"], license="apache-2.0")
    assert m["full_name"] == f"{ada.username}/iris-classifier"
    assert m["visibility"] == "draft"
    assert m["tags"] == ["iris", "tabular"]
    assert m["category"] == {
        "slug": "tabular-classification",
        "name": "Classification",
        "parent": "tabular",
    }
    assert m["card_data"]["license"] == "apache-2.0"
    assert m["metrics"] == [
        {"dataset": "iris", "type": "accuracy", "name": "Accuracy", "value": 0.97}
    ]
    assert m["contributors"] == [{"username": ada.username, "share_bps": 10000, "role": "creator"}]
    assert m["latest_version"] is None
    got = client.get(f"/api/v1/models/{m['full_name']}", headers=ada.headers)
    assert got.status_code == 200
    assert got.json()["card"] == CARD


def test_create_model_bad_input_changes_nothing(api: Api, client: TestClient) -> None:
    ada = api.user()
    api.model(ada, "taken")
    base = {"name": "fresh", "title": "T", "category": "finance"}
    cases = [
        ({**base, "name": "taken"}, 409, "model_exists"),
        ({**base, "category": "astrology"}, 422, "unknown_category"),
        ({**base, "name": "Bad Name"}, 422, "invalid_model_name"),
        ({**base, "name": "a--b"}, 422, "invalid_model_name"),
        ({**base, "name": "../etc"}, 422, "invalid_model_name"),
        ({**base, "tags": ["no spaces allowed"]}, 422, "invalid_tag"),
        ({**base, "card": "---\nlicense: [unclosed\n---\nbody"}, 422, "invalid_model_card"),
        ({**base, "card": "---\n- a list\n---\n"}, 422, "invalid_model_card"),
        ({**base, "visibility": "secret"}, 422, "validation_error"),
        ({**base, "title": 7}, 422, "validation_error"),
        ({**base, "extra": 1}, 422, "validation_error"),
    ]
    for body, status, code in cases:
        problem(client.post("/api/v1/models", json=body, headers=ada.headers), status, code)
    problem(client.post("/api/v1/models", json=base), 401, "not_authenticated")
    listing = client.get(f"/api/v1/models?owner={ada.username}", headers=ada.headers).json()
    assert [m["name"] for m in listing["items"]] == ["taken"]


def test_visibility_rules(api: Api, client: TestClient) -> None:
    ada, bob = api.user(), api.user()
    for vis in ("draft", "private"):
        m = api.model(ada, f"hidden-{vis}", visibility=vis)
        problem(client.get(f"/api/v1/models/{m['full_name']}"), 404, "model_not_found")
        problem(
            client.get(f"/api/v1/models/{m['full_name']}", headers=bob.headers),
            404,
            "model_not_found",
        )
        assert (
            client.get(f"/api/v1/models/{m['full_name']}", headers=ada.headers).status_code == 200
        )
    unlisted = api.published_model(ada, "by-link", visibility="unlisted")
    assert client.get(f"/api/v1/models/{unlisted['full_name']}").status_code == 200
    names = [m["name"] for m in client.get("/api/v1/models").json()["items"]]
    assert "by-link" not in names
    assert "hidden-draft" not in names


def test_search_filters_sort_and_pagination(api: Api, client: TestClient) -> None:
    ada = api.user()
    api.published_model(
        ada, "credit-risk", title="Credit risk scorer", category="finance", tags=["credit"]
    )
    api.published_model(
        ada, "fraud-guard", title="Fraud detector", category="finance", tags=["fraud"]
    )
    api.published_model(
        ada, "iris-net", title="Iris species", category="tabular-classification", tags=["iris"]
    )
    api.model(ada, "draft-finance", category="finance")  # draft: never listed
    everything = client.get("/api/v1/models?per_page=100").json()
    assert everything["total"] == 3
    fin = client.get("/api/v1/models?category=finance").json()
    assert sorted(m["name"] for m in fin["items"]) == ["credit-risk", "fraud-guard"]
    top = client.get("/api/v1/models?category=domain-specific").json()
    assert top["total"] == 2
    assert [m["name"] for m in client.get("/api/v1/models?q=FRAUD").json()["items"]] == [
        "fraud-guard"
    ]
    assert [m["name"] for m in client.get("/api/v1/models?q=species iris").json()["items"]] == [
        "iris-net"
    ]
    assert [m["name"] for m in client.get("/api/v1/models?tag=credit").json()["items"]] == [
        "credit-risk"
    ]
    assert client.get("/api/v1/models?q=100%").json()["total"] == 0
    by_name = client.get("/api/v1/models?sort=name&per_page=2").json()
    assert [m["name"] for m in by_name["items"]] == ["credit-risk", "fraud-guard"]
    assert by_name["pages"] == 2
    page2 = client.get("/api/v1/models?sort=name&per_page=2&page=2").json()
    assert [m["name"] for m in page2["items"]] == ["iris-net"]
    newest = client.get("/api/v1/models?sort=newest").json()["items"]
    assert newest[0]["name"] == "iris-net"
    assert newest[0]["latest_version"] == "1.0.0"
    problem(client.get("/api/v1/models?category=nope"), 422, "unknown_category")
    problem(client.get("/api/v1/models?sort=cheapest"), 422, "validation_error")
    problem(client.get("/api/v1/models?per_page=1000"), 422, "validation_error")
    problem(client.get("/api/v1/models?page=0"), 422, "validation_error")
    own = client.get(f"/api/v1/models?owner={ada.username}", headers=ada.headers).json()
    assert own["total"] == 4


def test_update_model_permissions_and_contributors(api: Api, client: TestClient) -> None:
    ada, bob, cy = api.user(), api.user(), api.user()
    m = api.model(ada)
    url = f"/api/v1/models/{m['full_name']}"
    problem(
        client.patch(url, json={"title": "hijack"}, headers=bob.headers), 404, "model_not_found"
    )
    problem(client.patch(url, json={"title": "anon"}), 401, "not_authenticated")
    r = client.patch(
        url,
        json={"title": "Better title", "tags": ["x", "y"], "visibility": "public"},
        headers=ada.headers,
    )
    assert r.status_code == 200
    assert r.json()["title"] == "Better title"
    assert r.json()["tags"] == ["x", "y"]
    # public now: bob can see it but still not edit
    problem(client.patch(url, json={"title": "hijack"}, headers=bob.headers), 403, "forbidden")
    shares = [
        {"username": ada.username, "share_bps": 7000},
        {"username": cy.username, "share_bps": 3000},
    ]
    r = client.patch(url, json={"contributors": shares}, headers=ada.headers)
    assert r.status_code == 200
    assert [(c["username"], c["share_bps"]) for c in r.json()["contributors"]] == [
        (ada.username, 7000),
        (cy.username, 3000),
    ]
    for bad in (
        [{"username": ada.username, "share_bps": 7000}],
        [
            {"username": ada.username, "share_bps": 5000},
            {"username": ada.username, "share_bps": 5000},
        ],
        [{"username": "ghost-user", "share_bps": 10000}],
    ):
        problem(
            client.patch(url, json={"contributors": bad}, headers=ada.headers),
            422,
            "invalid_contributors",
        )
    problem(
        client.patch(url, json={"category": "nope", "title": "changed?"}, headers=ada.headers),
        422,
        "unknown_category",
    )
    problem(client.patch(url, json={"title": None}, headers=ada.headers), 422, "validation_error")
    after = client.get(url, headers=ada.headers).json()
    assert after["title"] == "Better title"
    assert len(after["contributors"]) == 2


def test_delete_only_unpublished(api: Api, client: TestClient) -> None:
    ada, bob = api.user(), api.user()
    draft = api.model(ada, visibility="public")
    problem(
        client.delete(f"/api/v1/models/{draft['full_name']}", headers=bob.headers), 403, "forbidden"
    )
    assert (
        client.delete(f"/api/v1/models/{draft['full_name']}", headers=ada.headers).status_code
        == 204
    )
    problem(
        client.get(f"/api/v1/models/{draft['full_name']}", headers=ada.headers),
        404,
        "model_not_found",
    )
    pub = api.published_model(ada)
    problem(
        client.delete(f"/api/v1/models/{pub['full_name']}", headers=ada.headers),
        409,
        "model_has_published_versions",
    )


def test_version_publish_flow_and_manifest(api: Api, client: TestClient) -> None:
    ada, bob = api.user(), api.user()
    m = api.model(ada, visibility="public")
    full = m["full_name"]
    api.version(ada, full, "1.0.0")
    problem(
        client.post(
            f"/api/v1/models/{full}/versions", json={"version": "1.0.0"}, headers=ada.headers
        ),
        409,
        "version_exists",
    )
    problem(
        client.post(
            f"/api/v1/models/{full}/versions", json={"version": "main"}, headers=ada.headers
        ),
        422,
        "invalid_version",
    )
    problem(
        client.post(
            f"/api/v1/models/{full}/versions", json={"version": "2.0"}, headers=bob.headers
        ),
        403,
        "forbidden",
    )
    problem(
        client.post(f"/api/v1/models/{full}/versions/1.0.0/publish", headers=ada.headers),
        409,
        "version_empty",
    )
    # drafts are invisible to others
    assert client.get(f"/api/v1/models/{full}/versions").json() == []
    problem(client.get(f"/api/v1/models/{full}/versions/1.0.0"), 404, "version_not_found")
    a = api.upload(ada, full, "1.0.0", "model.onnx", tiny_onnx())
    b = api.upload(ada, full, "1.0.0", "config/labels.json", b'{"0": "cat"}')
    assert a["sha256"] == hashlib.sha256(tiny_onnx()).hexdigest()
    problem(
        client.post(f"/api/v1/models/{full}/versions/1.0.0/publish", headers=bob.headers),
        403,
        "forbidden",
    )
    v = api.publish(ada, full)
    assert v["status"] == "published"
    assert v["manifest"] == {
        "model": full,
        "version": "1.0.0",
        "files": [
            {"path": "config/labels.json", "size": len(b'{"0": "cat"}'), "sha256": b["sha256"]},
            {"path": "model.onnx", "size": len(tiny_onnx()), "sha256": a["sha256"]},
        ],
    }
    canonical = json.dumps(v["manifest"], sort_keys=True, separators=(",", ":")).encode()
    assert v["manifest_sha256"] == hashlib.sha256(canonical).hexdigest()
    # immutable
    problem(
        client.put(
            f"/api/v1/models/{full}/versions/1.0.0/files/model.onnx",
            content=b"new",
            headers=ada.headers,
        ),
        409,
        "version_immutable",
    )
    problem(
        client.delete(
            f"/api/v1/models/{full}/versions/1.0.0/files/model.onnx", headers=ada.headers
        ),
        409,
        "version_immutable",
    )
    problem(
        client.post(f"/api/v1/models/{full}/versions/1.0.0/publish", headers=ada.headers),
        409,
        "version_immutable",
    )
    problem(
        client.delete(f"/api/v1/models/{full}/versions/1.0.0", headers=ada.headers),
        409,
        "version_immutable",
    )
    assert client.get(f"/api/v1/models/{full}/versions/main").json()["version"] == "1.0.0"
    assert [x["version"] for x in client.get(f"/api/v1/models/{full}/versions").json()] == ["1.0.0"]
    assert client.get(f"/api/v1/models/{full}").json()["latest_version"] == "1.0.0"


def test_file_upload_download_range_head(api: Api, client: TestClient) -> None:
    ada = api.user()
    data = bytes(range(256)) * 1000  # 256 KB: several storage chunks
    m = api.published_model(ada, files={"weights/model.bin": data})
    url = f"/api/v1/models/{m['full_name']}/versions/1.0.0/files/weights/model.bin"
    r = client.get(url)
    assert r.status_code == 200
    assert r.content == data
    assert r.headers["x-checksum-sha256"] == hashlib.sha256(data).hexdigest()
    assert r.headers["accept-ranges"] == "bytes"
    assert 'filename="model.bin"' in r.headers["content-disposition"]
    r = client.get(url, headers={"Range": "bytes=65530-65545"})
    assert r.status_code == 206
    assert r.content == data[65530:65546]
    assert r.headers["content-range"] == f"bytes 65530-65545/{len(data)}"
    assert client.get(url, headers={"Range": "bytes=-10"}).content == data[-10:]
    assert client.get(url, headers={"Range": "bytes=250000-"}).content == data[250000:]
    problem(client.get(url, headers={"Range": f"bytes={len(data)}-"}), 416, "range_not_satisfiable")
    problem(client.get(url, headers={"Range": "bytes=abc"}), 416, "range_not_satisfiable")
    h = client.head(url)
    assert h.status_code == 200
    assert h.headers["content-length"] == str(len(data))
    assert h.content == b""
    etag = r.headers["etag"]
    assert client.get(url, headers={"If-None-Match": etag}).status_code == 304
    files = client.get(f"/api/v1/models/{m['full_name']}/versions/1.0.0/files").json()
    assert [(f["path"], f["size"]) for f in files] == [("weights/model.bin", len(data))]
    problem(
        client.get(f"/api/v1/models/{m['full_name']}/versions/1.0.0/files/nope.bin"),
        404,
        "file_not_found",
    )
    # downloads counted for non-owners (one GET above + one range starting at 0 would count)
    assert client.get(f"/api/v1/models/{m['full_name']}").json()["downloads"] >= 1


@pytest.mark.parametrize(
    "path",
    [
        "../secret",
        "%2E%2E/secret",
        "a/%2E%2E/%2E%2E/b",
        "%2Fetc/passwd",
        "a//b",
        "a/%2E/b",
        "dir/",
        "bad\\name",
        "x" * 300,
        "sp ace",
        "nul%00byte",
    ],
)
def test_upload_rejects_unsafe_paths(api: Api, client: TestClient, path: str) -> None:
    ada = api.user()
    m = api.model(ada)
    api.version(ada, m["full_name"])
    r = client.put(
        f"/api/v1/models/{m['full_name']}/versions/1.0.0/files/{path}",
        content=b"data",
        headers=ada.headers,
    )
    assert r.status_code in (404, 422), r.text  # 404 when the router itself cannot match the path
    assert r.headers["content-type"].startswith("application/problem+json")
    assert (
        client.get(
            f"/api/v1/models/{m['full_name']}/versions/1.0.0/files", headers=ada.headers
        ).json()
        == []
    )


def test_upload_permissions_checksum_and_replace(api: Api, client: TestClient) -> None:
    ada, bob = api.user(), api.user()
    m = api.model(ada, visibility="public")
    full = m["full_name"]
    api.version(ada, full)
    url = f"/api/v1/models/{full}/versions/1.0.0/files/model.onnx"
    problem(client.put(url, content=b"x"), 401, "not_authenticated")
    problem(client.put(url, content=b"x", headers=bob.headers), 403, "forbidden")
    problem(
        client.put(url, content=b"abc", headers={**ada.headers, "X-Checksum-Sha256": "0" * 64}),
        400,
        "checksum_mismatch",
    )
    assert (
        client.get(f"/api/v1/models/{full}/versions/1.0.0/files", headers=ada.headers).json() == []
    )
    good = client.put(
        url,
        content=b"abc",
        headers={**ada.headers, "X-Checksum-Sha256": hashlib.sha256(b"abc").hexdigest()},
    )
    assert good.status_code == 201
    again = client.put(url, content=b"abcd", headers=ada.headers)
    assert again.status_code == 200
    assert again.json()["size"] == 4
    # draft files: owner may download, others may not see them
    assert client.get(url, headers=ada.headers).content == b"abcd"
    problem(client.get(url, headers=bob.headers), 404, "version_not_found")
    problem(client.get(url), 404, "version_not_found")
    assert client.delete(url, headers=ada.headers).status_code == 204
    assert (
        client.get(f"/api/v1/models/{full}/versions/1.0.0/files", headers=ada.headers).json() == []
    )


def test_upload_too_large(api: Api, client: TestClient, settings) -> None:
    ada = api.user()
    m = api.model(ada)
    api.version(ada, m["full_name"])
    settings.max_upload_bytes = 1000
    url = f"/api/v1/models/{m['full_name']}/versions/1.0.0/files/big.bin"
    problem(client.put(url, content=b"x" * 5000, headers=ada.headers), 413, "payload_too_large")

    def chunks():
        for _ in range(5):
            yield b"y" * 1000

    problem(client.put(url, content=chunks(), headers=ada.headers), 413, "payload_too_large")
    assert (
        client.get(
            f"/api/v1/models/{m['full_name']}/versions/1.0.0/files", headers=ada.headers
        ).json()
        == []
    )


def test_private_model_files_hidden(api: Api, client: TestClient) -> None:
    ada, bob = api.user(), api.user()
    m = api.published_model(ada, files={"model.onnx": tiny_onnx()})
    url = f"/api/v1/models/{m['full_name']}"
    client.patch(url, json={"visibility": "private"}, headers=ada.headers)
    problem(
        client.get(f"{url}/versions/1.0.0/files/model.onnx", headers=bob.headers),
        404,
        "model_not_found",
    )
    assert (
        client.get(f"{url}/versions/1.0.0/files/model.onnx", headers=ada.headers).content
        == tiny_onnx()
    )


def test_openapi_docs(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    assert "/api/v1/models/{owner}/{name}/versions/{version}/files/{path}" in spec["paths"]
    assert client.get("/docs").status_code == 200
