"""The inference gateway against its raw limits, on one small ONNX model, in one run.

    python bench/inference.py [--seconds 4]

Rows: ONNX Runtime in-process; the node (`cyxwiz node`, its own process) called directly with
its gateway secret; the gateway → node on the lean route (plain-ASGI fast path, default), the
same route served by FastAPI (`Request` in, bytes out) and a FastAPI route with pydantic
request/response models. Latency p50/p99 at concurrency 1 and requests/s at concurrency 16
come from a raw-socket HTTP/1.1 keep-alive load generator in a separate process. Metering is
the real UsageMeter on the paid path (a per-1K-requests offer, a funded buyer), the result
cache is off, the rate limit is out of reach (``BENCH_METER=free`` swaps in a meter that
grants everything, to see metering's own share). Targets: the gateway adds ≤ 1 ms p50 over the
direct node call and keeps ≥ 40% of the node's requests/s.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

PASSWORD = "correct horse battery"


# ---------------------------------------------------------------- load generator (own process)


async def _worker(
    host: str, port: int, request: bytes, until: float, lat: list[float] | None
) -> tuple[int, int]:
    reader, writer = await asyncio.open_connection(host, port)
    done = errors = 0
    try:
        while time.perf_counter() < until:
            t0 = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
            if lat is not None:
                lat.append(time.perf_counter() - t0)
            if status == 200:
                done += 1
            else:
                errors += 1
    finally:
        writer.close()
    return done, errors


async def _load(
    host: str, port: int, request: bytes, concurrency: int, seconds: float
) -> dict[str, Any]:
    # warm-up
    await _worker(host, port, request, time.perf_counter() + 0.3, None)
    lat: list[float] = []
    until = time.perf_counter() + seconds
    t0 = time.perf_counter()
    results = await asyncio.gather(
        *[
            _worker(host, port, request, until, lat if concurrency == 1 else None)
            for _ in range(concurrency)
        ]
    )
    elapsed = time.perf_counter() - t0
    ok = sum(r[0] for r in results)
    errors = sum(r[1] for r in results)
    out: dict[str, Any] = {"rps": ok / elapsed, "errors": errors}
    if lat:
        lat.sort()
        out["p50"] = lat[len(lat) // 2] * 1e6
        out["p99"] = lat[int(len(lat) * 0.99)] * 1e6
    return out


def loadgen_main(argv: list[str]) -> None:
    host, port, concurrency, seconds, request_b64 = argv
    request = base64.b64decode(request_b64)
    print(
        json.dumps(asyncio.run(_load(host, int(port), request, int(concurrency), float(seconds))))
    )


def run_load(
    url: str, path: str, body: bytes, headers: dict[str, str], c: int, s: float
) -> dict[str, Any]:
    host, port = url.removeprefix("http://").split(":")
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}", "Content-Type: application/json"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    lines.append(f"Content-Length: {len(body)}")
    request = ("\r\n".join(lines) + "\r\n\r\n").encode() + body
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "loadgen",
            host,
            port,
            str(c),
            str(s),
            base64.b64encode(request).decode(),
        ],
        capture_output=True,
        check=True,
        text=True,
    )
    result: dict[str, Any] = json.loads(out.stdout)
    return result


# ---------------------------------------------------------------- the marketplace (own process)

SERVER = r"""
import sys, uvicorn
from typing import Any
from fastapi import Request
from pydantic import BaseModel
import orjson
from cyxwiz.config import Settings
from cyxwiz.web.app import create_app

class SimpleIn(BaseModel):
    inputs: Any

class SimpleOut(BaseModel):
    model: str
    version: str
    request_id: str
    predictions: list[dict[str, Any]] | None = None

import os, uuid
from cyxwiz.inference.interfaces import Ticket

class FreeMeter:  # BENCH_METER=free: the gateway without metering's cost
    async def authorize(self, **kw: Any) -> Ticket:
        kw.pop("units", None)
        return Ticket(kind="owner", units=1, unit="request", currency=None, token="t", **kw)
    async def settle(self, ticket: Ticket, **kw: Any) -> None: ...
    async def cancel(self, ticket: Ticket) -> None: ...
    async def flush(self) -> None: ...
    async def close(self) -> None: ...

app = create_app(Settings(), meter=FreeMeter() if os.environ.get("BENCH_METER") == "free" else None)
gw = app.state.ctx.gateway

@app.post("/bench/pydantic/{owner}/{name}/infer", response_model=SimpleOut)
async def pydantic_route(owner: str, name: str, body: SimpleIn, request: Request) -> SimpleOut:
    caller = await gw.authenticate(request.headers.get("authorization"))
    target = await gw.target(owner=owner, name=name, version=None, caller=caller)
    answer = await gw.infer_simple(caller=caller, target=target, body=orjson.dumps({"inputs": body.inputs}))
    return SimpleOut(**orjson.loads(answer.body))

uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(url: str, path: str, timeout: float = 60) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + path, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url}{path} never became ready")


def tiny_model() -> tuple[bytes, list[float]]:
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    x, y = load_iris(return_X_y=True)
    clf = LogisticRegression(max_iter=500).fit(x, y)
    proto = convert_sklearn(
        clf,
        initial_types=[("input", FloatTensorType([None, 4]))],
        options={id(clf): {"zipmap": False}},
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    import onnx

    onnx.helper.set_model_props(
        proto, {"cyxwiz.kind": "classifier", "cyxwiz.labels": json.dumps(["0", "1", "2"])}
    )
    return proto.SerializeToString(), [5.1, 3.5, 1.4, 0.2]


def in_process(model: bytes, row: list[float], seconds: float) -> dict[str, Any]:
    import numpy as np
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    feed = {"input": np.array([row], dtype=np.float32)}
    lat = []
    until = time.perf_counter() + seconds
    while time.perf_counter() < until:
        t0 = time.perf_counter()
        sess.run(None, feed)
        lat.append(time.perf_counter() - t0)
    lat.sort()
    return {
        "p50": lat[len(lat) // 2] * 1e6,
        "p99": lat[int(len(lat) * 0.99)] * 1e6,
        "rps": len(lat) / seconds,
    }


def main() -> None:
    import httpx

    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=4.0)
    args = ap.parse_args()
    model, row = tiny_model()
    tmp = Path(tempfile.mkdtemp(prefix="cyxwiz-bench-"))
    env = {
        **os.environ,
        "CYXWIZ_DATA_DIR": str(tmp / "data"),
        "CYXWIZ_MASTER_KEY": base64.b64encode(secrets.token_bytes(32)).decode(),
        "CYXWIZ_INFERENCE_CACHE_SECONDS": "0",
        "CYXWIZ_INFERENCE_RATE_PER_SECOND": "1000000",
        "CYXWIZ_INFERENCE_BURST": "1000000",
    }
    env.pop("CYXWIZ_DATABASE_URL", None)
    subprocess.run(
        [sys.executable, "-m", "cyxwiz", "db", "upgrade"], env=env, check=True, capture_output=True
    )
    procs: list[subprocess.Popen[bytes]] = []
    try:
        ports = {"fast": _free_port(), "framework": _free_port()}
        for label, port in ports.items():
            penv = {**env, "CYXWIZ_INFERENCE_FAST_PATH": "1" if label == "fast" else "0"}
            procs.append(subprocess.Popen([sys.executable, "-c", SERVER, str(port)], env=penv))
        fast = f"http://127.0.0.1:{ports['fast']}"
        framework = f"http://127.0.0.1:{ports['framework']}"
        for url in (fast, framework):
            _wait(url, "/health")
        http = httpx.Client(base_url=fast, timeout=30)

        def account(name: str) -> dict[str, str]:
            http.post(
                "/api/v1/auth/register",
                json={"username": name, "email": f"{name}@example.com", "password": PASSWORD},
            )
            token = http.post(
                "/api/v1/auth/login", json={"username": name, "password": PASSWORD}
            ).json()["access_token"]
            return {"Authorization": f"Bearer {token}"}

        creator, buyer, operator = account("maker"), account("buyer"), account("operator")
        http.post(
            "/api/v1/models",
            json={
                "name": "iris",
                "title": "Iris",
                "category": "tabular-classification",
                "visibility": "public",
            },
            headers=creator,
        ).raise_for_status()
        base = "/api/v1/models/maker/iris/versions"
        http.post(base, json={"version": "1.0.0"}, headers=creator).raise_for_status()
        http.put(
            f"{base}/1.0.0/files/model.onnx", content=model, headers=creator
        ).raise_for_status()
        vid = http.post(f"{base}/1.0.0/publish", headers=creator).json()["id"]
        http.put(
            "/api/v1/models/maker/iris/offers",
            json={"per_1k_requests": {"amount": 1000, "currency": "USDC"}},
            headers=creator,
        ).raise_for_status()
        http.post(
            "/api/v1/dev/faucet", json={"currency": "USDC", "amount": 10_000 * 10**6}, headers=buyer
        ).raise_for_status()
        key = http.post(
            "/api/v1/api-keys", json={"name": "bench", "scopes": ["inference"]}, headers=buyer
        ).json()["key"]
        auth = {"Authorization": f"Bearer {key}"}
        node = http.post("/api/v1/nodes", json={"name": "bench-node"}, headers=operator).json()
        node_port = _free_port()
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "cyxwiz",
                    "node",
                    "--marketplace",
                    fast,
                    "--port",
                    str(node_port),
                    "--cache-dir",
                    str(tmp / "node-cache"),
                    "--capacity",
                    "2",
                ],
                env={**env, "CYXWIZ_NODE_TOKEN": node["token"]},
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        node_url = f"http://127.0.0.1:{node_port}"
        _wait(node_url, "/v2/health/ready")
        simple = json.dumps({"inputs": [row]}).encode()
        oip = json.dumps(
            {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": row}]}
        ).encode()
        # warm the path (assignment, model load, metering block) and read the node's secret
        r = http.post(
            "/api/v1/models/maker/iris/infer",
            content=simple,
            headers={**auth, "Content-Type": "application/json"},
        )
        assert r.status_code == 200, r.text
        from cyxwiz.config import Settings
        from cyxwiz.db import Database
        from cyxwiz.inference.models import Node

        db = Database.from_url(Settings(data_dir=tmp / "data").resolved_database_url)
        with db.session() as s:
            secret = s.get(Node, uuid.UUID(node["node"]["id"])).gateway_secret  # type: ignore[union-attr]
        db.engine.dispose()
        node_auth = {"Authorization": f"Bearer {secret}"}

        rows: list[tuple[str, dict[str, Any], dict[str, Any]]] = []
        ort_row = in_process(model, row, min(args.seconds, 2.0))
        rows.append(("ONNX Runtime in-process", ort_row, {"rps": ort_row["rps"]}))
        cases = [
            ("node direct (OIP)", node_url, f"/v2/models/{vid}/infer", oip, node_auth),
            ("gateway v2 → node (lean ASGI)", fast, "/v2/models/maker--iris/infer", oip, auth),
            (
                "gateway simple → node (lean ASGI)",
                fast,
                "/api/v1/models/maker/iris/infer",
                simple,
                auth,
            ),
            (
                "gateway simple → node (FastAPI, Request)",
                framework,
                "/api/v1/models/maker/iris/infer",
                simple,
                auth,
            ),
            (
                "gateway simple → node (FastAPI+pydantic)",
                framework,
                "/bench/pydantic/maker/iris/infer",
                simple,
                auth,
            ),
        ]
        for label, url, path, body, headers in cases:
            c1 = run_load(url, path, body, headers, 1, args.seconds)
            c16 = run_load(url, path, body, headers, 16, args.seconds)
            rows.append((label, c1, c16))

        direct = rows[1]
        print()
        print(
            f"{'path':44} {'p50 µs':>8} {'p99 µs':>8} {'+p50 µs':>8} {'req/s c=16':>11} {'× node':>7} {'errors':>6}"
        )
        for label, c1, c16 in rows:
            extra = c1["p50"] - direct[1]["p50"] if label.startswith("gateway") else float("nan")
            ratio = c16["rps"] / direct[2]["rps"] if not label.startswith("ONNX") else float("nan")
            errs = c1.get("errors", 0) + c16.get("errors", 0)
            print(
                f"{label:44} {c1['p50']:8.0f} {c1['p99']:8.0f} {extra:8.0f} {c16['rps']:11.0f} {ratio:7.2f} {errs:6}"
            )
        lean = rows[2]
        added = lean[1]["p50"] - direct[1]["p50"]
        kept = lean[2]["rps"] / direct[2]["rps"]
        print()
        print(
            f"lean gateway (v2): +{added:.0f} µs p50 over the node (target ≤ 1000 µs): {'OK' if added <= 1000 else 'MISSED'}"
        )
        print(
            f"lean gateway (v2): {kept:.0%} of the node's req/s (target ≥ 40%): {'OK' if kept >= 0.4 else 'MISSED'}"
        )
        print()
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "loadgen":
        loadgen_main(sys.argv[2:])
    else:
        main()
