"""Issue 9 items 2 and 12: model files are checked at publish.

ONNX files are loaded without external data and validated (an external-data tensor would make
a node read its own files); every file gets a scan verdict without being unpickled; dangerous
pickles and files that are not valid ONNX models are refused, with no state change."""

from __future__ import annotations

import io
import os
import pickle
import pickletools
import tracemalloc
from typing import Any

import pytest
from fastapi.testclient import TestClient

from cyxwiz.catalog.service import BlobFile
from cyxwiz.scanning import scan_file
from cyxwiz.storage import BlobStore
from tests.factories import Account, Api, tiny_onnx
from tests.model_files import (
    benign_pickle,
    ep_context_onnx,
    evil_pickle,
    leaking_constant_onnx,
    leaking_onnx,
    leaking_sparse_onnx,
    leaking_subgraph_onnx,
    no_input_onnx,
    onnx_with_opset,
    safetensors_file,
    torch_zip,
)
from tests.web.test_api_auth import problem


def _draft(api: Api, owner: Account, files: dict[str, bytes]) -> str:
    full = api.model(owner, visibility="public")["full_name"]
    api.version(owner, full)
    for path, data in files.items():
        api.upload(owner, full, "1.0.0", path, data)
    return str(full)


def _publish(client: TestClient, owner: Account, full: str) -> Any:
    return client.post(f"/api/v1/models/{full}/versions/1.0.0/publish", headers=owner.headers)


def _refused(client: TestClient, api: Api, files: dict[str, bytes], code: str) -> dict[str, Any]:
    """Publishing ``files`` is refused with ``code`` and leaves the version a draft."""
    owner = api.user()
    full = _draft(api, owner, files)
    body = problem(_publish(client, owner, full), 422, code)
    version = client.get(f"/api/v1/models/{full}/versions/1.0.0", headers=owner.headers).json()
    assert version["status"] == "draft"
    assert version["manifest"] is None
    assert client.get(f"/api/v1/models/{full}/versions/main").status_code == 404
    return body


# ---------------------------------------------------------------- item 2: ONNX external data


@pytest.mark.parametrize(
    "location", ["../master.key", "cyxwiz-data/master.key", "master.key", "/etc/passwd"]
)
def test_onnx_with_an_external_data_initializer_is_refused(
    client: TestClient, api: Api, location: str
) -> None:
    body = _refused(client, api, {"model.onnx": leaking_onnx(location)}, "onnx_external_data")
    assert body["path"] == "model.onnx"
    assert body["location"] == location
    assert "external" in body["detail"]


@pytest.mark.parametrize(
    "build", [leaking_constant_onnx, leaking_subgraph_onnx, leaking_sparse_onnx]
)
def test_external_data_anywhere_in_the_model_is_refused(
    client: TestClient, api: Api, build: Any
) -> None:
    _refused(client, api, {"model.onnx": build()}, "onnx_external_data")


def test_every_onnx_file_is_checked_not_only_the_entrypoint(client: TestClient, api: Api) -> None:
    files = {"model.onnx": tiny_onnx(), "extra/encoder.onnx": leaking_onnx()}
    body = _refused(client, api, files, "onnx_external_data")
    assert body["path"] == "extra/encoder.onnx"


def test_random_bytes_named_model_onnx_are_refused(client: TestClient, api: Api) -> None:
    body = _refused(client, api, {"model.onnx": os.urandom(4096)}, "invalid_model_file")
    assert "model.onnx" in body["detail"]
    _refused(client, api, {"model.onnx": b""}, "invalid_model_file")


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (onnx_with_opset(999), "onnx_unsupported_opset"),
        (onnx_with_opset(1, "evil.domain"), "onnx_unsupported_opset"),
        (ep_context_onnx(), "onnx_forbidden_op"),
        (no_input_onnx(), "invalid_model_file"),
    ],
)
def test_onnx_models_the_runtime_should_not_open_are_refused(
    client: TestClient, api: Api, data: bytes, code: str
) -> None:
    _refused(client, api, {"model.onnx": data}, code)


# ---------------------------------------------------------------- item 12: pickles


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_a_pickle_running_os_system_is_refused(client: TestClient, api: Api, protocol: int) -> None:
    files = {"model.onnx": tiny_onnx(), "weights.pkl": evil_pickle(protocol)}
    body = _refused(client, api, files, "dangerous_file")
    assert body["path"] == "weights.pkl"
    assert any(i.endswith(".system") for i in body["imports"]), body
    assert "weights.pkl" in body["detail"]
    assert "system" in body["detail"]


@pytest.mark.parametrize(
    ("path", "data"),
    [
        ("model.bin", evil_pickle(2, via="eval")),
        ("model.joblib", evil_pickle(4)),
        ("checkpoint.ckpt", evil_pickle(3, via="eval")),
        ("pytorch_model.pt", torch_zip(evil_pickle(2))),
        ("model.pth", torch_zip(evil_pickle(4, via="eval"))),
        ("notes.dat", evil_pickle(5)),  # sniffed: a pickle whatever its name
    ],
    ids=["bin", "joblib", "ckpt", "pt-zip", "pth-zip", "dat"],
)
def test_executable_formats_with_dangerous_imports_are_refused(
    client: TestClient, api: Api, path: str, data: bytes
) -> None:
    body = _refused(client, api, {path: data}, "dangerous_file")
    assert body["path"] == path


def test_a_benign_pickle_publishes_with_its_verdict_in_the_api_and_page(
    client: TestClient, api: Api
) -> None:
    owner = api.user()
    files = {
        "model.onnx": tiny_onnx(),
        "weights.pkl": benign_pickle(),
        "estimator.pkl": pickle.dumps(__import__("argparse").Namespace(a=1)),
        "model.safetensors": safetensors_file(),
        "config.json": b"{}",
        "blob.bin": os.urandom(256),
        "legacy.pt": torch_zip(benign_pickle(2)),
    }
    full = _draft(api, owner, files)
    drafts = client.get(f"/api/v1/models/{full}/versions/1.0.0/files", headers=owner.headers)
    assert {f["scan"]["status"] for f in drafts.json()} == {None}  # scanned at publish
    r = _publish(client, owner, full)
    assert r.status_code == 200, r.text
    scans = {f["path"]: f["scan"] for f in r.json()["files"]}
    assert {p: (s["status"], s["format"]) for p, s in scans.items()} == {
        "model.onnx": ("clean", "onnx"),
        "weights.pkl": ("clean", "pickle"),
        "estimator.pkl": ("suspicious", "pickle"),
        "model.safetensors": ("clean", "safetensors"),
        "config.json": ("clean", "text"),
        "blob.bin": ("not_applicable", "binary"),
        "legacy.pt": ("clean", "pytorch-zip"),
    }
    assert scans["estimator.pkl"]["findings"][0]["import"] == "argparse.Namespace"
    assert scans["weights.pkl"]["scanner"].startswith("cyxwiz-scan/")
    assert scans["weights.pkl"]["scanned_at"]
    listed = client.get(f"/api/v1/models/{full}/versions/main/files").json()
    assert {f["path"]: f["scan"] for f in listed} == scans
    page = client.get(f"/{full}").text
    assert "badge-scan-clean" in page
    assert "badge-scan-suspicious" in page
    assert "argparse.Namespace" in page


def test_a_stack_global_whose_names_cannot_be_resolved_is_dangerous() -> None:
    # protocol 4: push "os", push "junk", POP, push "system" -> STACK_GLOBAL really imports
    # os.system; a scanner that only looks at the two previous strings would see junk.system
    ops = b"\x80\x04\x8c\x02os\x94\x8c\x04junk0\x8c\x06system\x94\x93\x8c\x04true\x85R."
    pickletools.dis(io.BytesIO(ops), out=io.StringIO())  # a valid pickle stream
    verdict = scan_file("w.pkl", io.BytesIO(ops), len(ops), onnx_max_bytes=1 << 20)
    assert verdict.status == "dangerous"


def test_scanning_a_large_pickle_is_bounded_in_memory(blobs: BlobStore) -> None:
    """64 MiB of weights in one pickle: the scanner seeks over them in the encrypted store."""
    data = pickle.dumps({"w": os.urandom(64 * 1024 * 1024)}, protocol=4)
    info = blobs.put_bytes(data)
    del data
    tracemalloc.start()
    try:
        raw = BlobFile(blobs, info.address, info.size)
        with io.BufferedReader(raw, buffer_size=1024 * 1024) as f:
            verdict = scan_file("big.pkl", f, info.size, onnx_max_bytes=1 << 20)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert verdict.status == "clean"
    assert peak < 8 * 1024 * 1024, peak
