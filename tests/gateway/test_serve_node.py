"""`cyxwiz serve` starts one local inference node (a `cyxwiz node` subprocess), so hosted
inference works from the first start — here with the real metering engine (a model without a
per-use price runs on the buyer's free demo credits) — and stops it on exit; a restart rotates
the node's token and the node registers again."""

from __future__ import annotations

import base64
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from tests.factories import PASSWORD
from tests.node.conftest import TinyModels

from cyxwiz.demo.models import run_onnx

pytestmark = pytest.mark.slow


def _two_free_ports() -> int:
    for _ in range(50):
        with socket.socket() as a:
            a.bind(("127.0.0.1", 0))
            port = a.getsockname()[1]
        try:
            with socket.socket() as b:
                b.bind(("127.0.0.1", port + 1))
            return int(port)
        except OSError:
            continue
    raise RuntimeError("no two consecutive free ports")


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _start(data_dir: Path, port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "CYXWIZ_INFERENCE_NODES_CACHE_SECONDS": "0.2"}
    for name in ("CYXWIZ_DATABASE_URL", "CYXWIZ_MASTER_KEY"):  # data_dir's own
        env.pop(name, None)
    return subprocess.Popen(
        [sys.executable, "-m", "cyxwiz", "serve", "--data-dir", str(data_dir), "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "cyxwiz serve exited"
        try:
            if httpx.get(url + "/v2/health/ready", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError("the marketplace's local node never became ready")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _login(http: httpx.Client, name: str) -> dict[str, str]:
    r = http.post(
        "/api/v1/auth/register",
        json={"username": name, "email": f"{name}@example.com", "password": PASSWORD},
    )
    assert r.status_code == 201, r.text
    r = http.post("/api/v1/auth/login", json={"username": name, "password": PASSWORD})
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


def test_serve_runs_a_local_node_and_stops_it(tmp_path: Path, tiny_models: TinyModels) -> None:
    port = _two_free_ports()
    url = f"http://127.0.0.1:{port}"
    data = tmp_path / "data"
    data.mkdir()
    # one master key for both runs (the second run must read what the first stored)
    key = base64.b64encode(secrets.token_bytes(32)).decode()
    (data / "master.key").write_text(key + "\n")
    proc = _start(data, port)
    try:
        _wait_ready(url, proc)
        assert _listening(port + 1)
        with httpx.Client(base_url=url, timeout=30) as http:
            creator = _login(http, "maker")
            r = http.post(
                "/api/v1/models",
                json={
                    "name": "iris",
                    "title": "Iris",
                    "category": "tabular-classification",
                    "visibility": "public",
                },
                headers=creator,
            )
            assert r.status_code == 201, r.text
            base = "/api/v1/models/maker/iris/versions"
            assert http.post(base, json={"version": "1.0.0"}, headers=creator).status_code == 201
            r = http.put(
                f"{base}/1.0.0/files/model.onnx", content=tiny_models.iris, headers=creator
            )
            assert r.status_code in (200, 201), r.text
            assert http.post(f"{base}/1.0.0/publish", headers=creator).status_code == 200
            buyer = _login(http, "caller")
            r = http.post(
                "/api/v1/api-keys", json={"name": "k", "scopes": ["inference"]}, headers=buyer
            )
            api_key = {"Authorization": f"Bearer {r.json()['key']}"}
            rows = tiny_models.iris_rows
            r = http.post("/api/v1/models/maker/iris/infer", json={"inputs": rows}, headers=api_key)
            assert r.status_code == 200, r.text
            assert r.json()["predictions"] == run_onnx(tiny_models.iris, rows)["predictions"]
    finally:
        _stop(proc)
    assert proc.returncode is not None
    deadline = time.monotonic() + 10
    while _listening(port + 1) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _listening(port + 1), "the local node outlived cyxwiz serve"

    # a second start rotates the node's token; the node registers again and serves
    proc = _start(data, port)
    try:
        _wait_ready(url, proc)
        with httpx.Client(base_url=url, timeout=30) as http:
            r = http.post("/api/v1/auth/login", json={"username": "caller", "password": PASSWORD})
            token = {"Authorization": f"Bearer {r.json()['access_token']}"}
            r = http.post(
                "/api/v1/models/maker/iris/infer",
                json={"inputs": tiny_models.iris_rows},
                headers=token,
            )
            assert r.status_code == 200, r.text
    finally:
        _stop(proc)
