"""The inference gateway against its raw limits, on one small ONNX model, in one run.

    python bench/inference.py [--seconds 3] [--repeat 3] [--only v2,v2-free,simple] [--profile F]

Rows: ONNX Runtime in-process; the node (`cyxwiz node`, its own process) called directly with
its gateway secret; the gateway → node on the lean route (the app's ASGI entry serves the infer
routes before FastAPI, default) with the real metering, the same with metering off (a meter that
grants everything: metering's own share), the simple form on the lean route, the same route
served by FastAPI (`Request` in, bytes out) and a FastAPI route with pydantic request/response
models. Latency p50/p99 at concurrency 1 and requests/s at concurrency 16 come from a
raw-socket HTTP/1.1 keep-alive load generator in a separate process, which also reads the CPU
time the processes spent during its measured window (``/proc``, Linux): µs of CPU per answered
call at c=16 in the marketplace (all threads / its event loop thread), the node and itself.

Metering is the real UsageMeter on the paid path (a per-1K-requests offer, a funded buyer;
``BENCH_METER=free`` turns it off everywhere), the result cache is off, the rate limits are out
of reach. ``--repeat N`` runs every row N times (interleaved) and prints medians, the ratio
column being the median of the per-round ratios against the node measured in the same round.
``--profile FILE`` runs the lean gateway under cProfile and writes its stats to FILE (read them
with ``python -m pstats FILE``).

Targets: the gateway adds ≤ 1 ms p50 over the direct node call and keeps ≥ 40% of the node's
requests/s at c=16.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

PASSWORD = "correct horse battery"


# ---------------------------------------------------------------- load generator (own process)


def _cpu_seconds(pid: int, *, main_thread: bool = False) -> float:
    """utime + stime of ``pid`` (all its threads, or only its main thread), from /proc; 0.0
    where there is no /proc."""
    stat = f"/proc/{pid}/task/{pid}/stat" if main_thread else f"/proc/{pid}/stat"
    try:
        fields = Path(stat).read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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
    host: str, port: int, request: bytes, concurrency: int, seconds: float, pids: list[int]
) -> dict[str, Any]:
    # warm-up
    await _worker(host, port, request, time.perf_counter() + 0.3, None)
    lat: list[float] = []
    until = time.perf_counter() + seconds
    cpu0 = [_cpu_seconds(p) for p in pids]
    main0 = [_cpu_seconds(p, main_thread=True) for p in pids]
    own0 = time.process_time()
    t0 = time.perf_counter()
    results = await asyncio.gather(
        *[
            _worker(host, port, request, until, lat if concurrency == 1 else None)
            for _ in range(concurrency)
        ]
    )
    elapsed = time.perf_counter() - t0
    own = time.process_time() - own0
    cpu = [_cpu_seconds(p) - c for p, c in zip(pids, cpu0, strict=True)]
    main = [_cpu_seconds(p, main_thread=True) - c for p, c in zip(pids, main0, strict=True)]
    ok = sum(r[0] for r in results)
    errors = sum(r[1] for r in results)
    calls = max(1, ok + errors)
    out: dict[str, Any] = {
        "rps": ok / elapsed,
        "errors": errors,
        "cpu_us": [c / calls * 1e6 for c in cpu],  # per process in ``pids``
        "loop_cpu_us": [c / calls * 1e6 for c in main],  # their main (event loop) threads
        "loadgen_cpu_us": own / calls * 1e6,
    }
    if lat:
        lat.sort()
        out["p50"] = lat[len(lat) // 2] * 1e6
        out["p99"] = lat[int(len(lat) * 0.99)] * 1e6
    return out


def loadgen_main(argv: list[str]) -> None:
    host, port, concurrency, seconds, pids, request_b64 = argv
    request = base64.b64decode(request_b64)
    pid_list = [int(p) for p in pids.split(",") if p]
    result = asyncio.run(
        _load(host, int(port), request, int(concurrency), float(seconds), pid_list)
    )
    print(json.dumps(result))


def run_load(
    url: str,
    path: str,
    body: bytes,
    headers: dict[str, str],
    c: int,
    s: float,
    pids: list[int],
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
            ",".join(str(p) for p in pids),
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
import os, sys, uuid, uvicorn
from typing import Any
from fastapi import Request
from pydantic import BaseModel
import orjson
from cyxwiz.config import Settings
from cyxwiz.inference.interfaces import Ticket
from cyxwiz.web.app import create_app

class SimpleIn(BaseModel):
    inputs: Any

class SimpleOut(BaseModel):
    model: str
    version: str
    request_id: str
    predictions: list[dict[str, Any]] | None = None

class FreeMeter:  # BENCH_METER=free: the gateway without metering's cost
    async def authorize(self, **kw: Any) -> Ticket:
        for k in ("units", "rows", "client_ip"):
            kw.pop(k, None)
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

profile_to = os.environ.get("BENCH_PROFILE")
if profile_to:
    import cProfile
    profiler = cProfile.Profile()

    @app.post("/bench/profile/{action}")
    async def profile(action: str) -> dict[str, str]:  # async: runs on the event loop's thread
        if action == "start":
            profiler.enable()
        else:
            profiler.disable()
            profiler.dump_stats(profile_to)
        return {"ok": action}

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


def _fund(tmp: Path, user_id: uuid.UUID, amount: int) -> None:
    """Credit ``amount`` USDC minor units to the buyer's balance (a deposit straight into the
    ledger: the bench measures calls, not the dev chain's deposit flow)."""
    from cyxwiz.billing.flows import platform_account, user_account
    from cyxwiz.config import Settings
    from cyxwiz.db import Database
    from cyxwiz.ledger import service as ledger
    from cyxwiz.money import Currency

    db = Database.from_url(Settings(data_dir=tmp / "data").resolved_database_url)
    with db.session() as s:
        ledger.create_transfer(
            s,
            ledger.TransferSpec(
                id=uuid.uuid4(),
                code="deposit",
                debit=platform_account(s, "vault", Currency.USDC).id,
                credit=user_account(s, user_id, Currency.USDC).id,
                amount=amount,
                ref="bench",
            ),
        )
    db.engine.dispose()


def _approve_operator(tmp: Path, username: str) -> None:
    """Approve ``username`` as a node operator (the platform's decision, as the CLI does)."""
    from datetime import UTC, datetime

    from cyxwiz.accounts.service import get_user_by_username
    from cyxwiz.config import Settings
    from cyxwiz.db import Database
    from cyxwiz.inference import service as nodes

    db = Database.from_url(Settings(data_dir=tmp / "data").resolved_database_url)
    with db.session() as s:
        user = get_user_by_username(s, username)
        nodes.decide_operator(s, user=user, decision="approve", actor=None, now=datetime.now(UTC))
    db.engine.dispose()


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


ROWS = {
    "node": "node direct (OIP)",
    "v2": "gateway v2 → node (lean ASGI)",
    "v2-free": "gateway v2 → node (lean, metering off)",
    "simple": "gateway simple → node (lean ASGI)",
    "framework": "gateway simple → node (FastAPI, Request)",
    "pydantic": "gateway simple → node (FastAPI+pydantic)",
}


def main() -> None:
    import httpx

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=4.0, help="measured seconds per run")
    ap.add_argument("--repeat", type=int, default=1, help="rounds (medians are printed)")
    ap.add_argument(
        "--only",
        default=",".join(ROWS),
        help=f"comma-separated rows among {','.join(ROWS)} (node is always run)",
    )
    ap.add_argument("--profile", type=Path, help="cProfile the lean gateway's c=16 runs to FILE")
    args = ap.parse_args()
    only = ["node", *[r for r in args.only.split(",") if r in ROWS and r != "node"]]
    model, row = tiny_model()
    tmp = Path(tempfile.mkdtemp(prefix="cyxwiz-bench-"))
    env = {
        **os.environ,
        "CYXWIZ_DATA_DIR": str(tmp / "data"),
        "CYXWIZ_MASTER_KEY": base64.b64encode(secrets.token_bytes(32)).decode(),
        "CYXWIZ_INFERENCE_CACHE_SECONDS": "0",
    }
    for plan in ("", "DEMO_", "OWNER_"):  # every plan's limit out of reach
        env[f"CYXWIZ_INFERENCE_{plan}RATE_PER_SECOND"] = "1000000"
        env[f"CYXWIZ_INFERENCE_{plan}BURST"] = "1000000"
    env.pop("CYXWIZ_DATABASE_URL", None)
    subprocess.run(
        [sys.executable, "-m", "cyxwiz", "db", "upgrade"], env=env, check=True, capture_output=True
    )
    procs: list[subprocess.Popen[bytes]] = []
    try:
        ports = {"fast": _free_port(), "framework": _free_port()}
        if "v2-free" in only:
            ports["free"] = _free_port()
        pids: dict[str, int] = {}
        for label, port in ports.items():
            penv = {**env, "CYXWIZ_INFERENCE_FAST_PATH": "0" if label == "framework" else "1"}
            if label == "free":
                penv["BENCH_METER"] = "free"
            if label == "fast" and args.profile is not None:
                penv["BENCH_PROFILE"] = str(args.profile.resolve())
            proc = subprocess.Popen([sys.executable, "-c", SERVER, str(port)], env=penv)
            procs.append(proc)
            pids[label] = proc.pid
        fast = f"http://127.0.0.1:{ports['fast']}"
        framework = f"http://127.0.0.1:{ports['framework']}"
        for port in ports.values():
            _wait(f"http://127.0.0.1:{port}", "/health")
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
        buyer_id = uuid.UUID(http.get("/api/v1/me", headers=buyer).json()["id"])
        _fund(tmp, buyer_id, 10_000 * 10**6)
        key = http.post(
            "/api/v1/api-keys", json={"name": "bench", "scopes": ["inference"]}, headers=buyer
        ).json()["key"]
        auth = {"Authorization": f"Bearer {key}"}
        _approve_operator(tmp, "operator")  # running nodes is a trust tier (issue 9)
        node = http.post("/api/v1/nodes", json={"name": "bench-node"}, headers=operator).json()
        node_port = _free_port()
        node_proc = subprocess.Popen(
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
        procs.append(node_proc)
        node_url = f"http://127.0.0.1:{node_port}"
        _wait(node_url, "/v2/health/ready")
        simple = json.dumps({"inputs": [row]}).encode()
        oip = json.dumps(
            {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": row}]}
        ).encode()
        # warm every server's path (assignment, model load, metering block)
        for url in [f"http://127.0.0.1:{p}" for p in ports.values()]:
            r = httpx.post(
                url + "/api/v1/models/maker/iris/infer",
                content=simple,
                headers={**auth, "Content-Type": "application/json"},
                timeout=30,
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

        cases = {
            "node": (node_url, f"/v2/models/{vid}/infer", oip, node_auth, None),
            "v2": (fast, "/v2/models/maker--iris/infer", oip, auth, "fast"),
            "v2-free": (
                f"http://127.0.0.1:{ports.get('free', 0)}",
                "/v2/models/maker--iris/infer",
                oip,
                auth,
                "free",
            ),
            "simple": (fast, "/api/v1/models/maker/iris/infer", simple, auth, "fast"),
            "framework": (framework, "/api/v1/models/maker/iris/infer", simple, auth, "framework"),
            "pydantic": (framework, "/bench/pydantic/maker/iris/infer", simple, auth, "framework"),
        }
        ort_row = in_process(model, row, min(args.seconds, 2.0))
        if args.profile is not None:
            http.post("/bench/profile/start").raise_for_status()
        rounds: list[dict[str, tuple[dict[str, Any], dict[str, Any]]]] = []
        for _ in range(max(1, args.repeat)):
            measured: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}
            for name in only:
                url, path, body, headers, server = cases[name]
                watch = [node_proc.pid] + ([pids[server]] if server else [])
                c1 = run_load(url, path, body, headers, 1, args.seconds, watch)
                c16 = run_load(url, path, body, headers, 16, args.seconds, watch)
                measured[name] = (c1, c16)
            rounds.append(measured)
        if args.profile is not None:
            http.post("/bench/profile/stop").raise_for_status()
        _report(ort_row, rounds, only, args)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()


def _report(
    ort_row: dict[str, Any],
    rounds: list[dict[str, tuple[dict[str, Any], dict[str, Any]]]],
    only: list[str],
    args: argparse.Namespace,
) -> None:
    def med(values: list[float]) -> float:
        return statistics.median(values)

    print()
    print(
        f"{args.seconds:g} s per run, {len(rounds)} round(s), medians; "
        f"BENCH_METER={os.environ.get('BENCH_METER', 'real')}"
    )
    print(
        f"{'path':42} {'p50 µs':>7} {'p99 µs':>7} {'+p50 µs':>7} {'req/s c=16':>10}"
        f" {'× node':>6} {'gw CPU':>9} {'node CPU':>8} {'lg CPU':>6} {'errors':>6}"
    )
    print(
        f"{'ONNX Runtime in-process':42} {ort_row['p50']:7.0f} {ort_row['p99']:7.0f}"
        f" {'':>7} {ort_row['rps']:10.0f}"
    )
    summary: dict[str, tuple[float, float]] = {}
    for name in only:
        c1s = [r[name][0] for r in rounds]
        c16s = [r[name][1] for r in rounds]
        p50 = med([c["p50"] for c in c1s])
        p99 = med([c["p99"] for c in c1s])
        rps = med([c["rps"] for c in c16s])
        added = med([r[name][0]["p50"] - r["node"][0]["p50"] for r in rounds])
        ratio = med([r[name][1]["rps"] / r["node"][1]["rps"] for r in rounds])
        node_cpu = med([c["cpu_us"][0] for c in c16s])
        lg_cpu = med([c["loadgen_cpu_us"] for c in c16s])
        gw_cpu = med([c["cpu_us"][1] for c in c16s]) if name != "node" else float("nan")
        gw_loop = med([c["loop_cpu_us"][1] for c in c16s]) if name != "node" else float("nan")
        errors = sum(c["errors"] for c in [*c1s, *c16s])
        summary[name] = (added, ratio)
        extra = f"{added:7.0f}" if name != "node" else f"{'':>7}"
        gw = f"{gw_cpu:4.0f}/{gw_loop:4.0f}" if name != "node" else f"{'':>9}"
        print(
            f"{ROWS[name]:42} {p50:7.0f} {p99:7.0f} {extra} {rps:10.0f} {ratio:6.2f}"
            f" {gw} {node_cpu:8.0f} {lg_cpu:6.0f} {errors:6}"
        )
    if len(rounds) > 1:
        for name in only[1:]:
            ratios = ", ".join(f"{r[name][1]['rps'] / r['node'][1]['rps']:.2f}" for r in rounds)
            print(f"  × node per round, {name}: {ratios}")
    print("(gw / node / lg CPU: µs of CPU per call at c=16 in the marketplace (all threads / its")
    print(" event loop thread), the node and the load generator processes)")
    if "v2" in summary:
        added, kept = summary["v2"]
        print()
        print(
            f"lean gateway (v2): +{added:.0f} µs p50 over the node (target ≤ 1000 µs): "
            f"{'OK' if added <= 1000 else 'MISSED'}"
        )
        print(
            f"lean gateway (v2): {kept:.0%} of the node's req/s (target ≥ 40%): "
            f"{'OK' if kept >= 0.4 else 'MISSED'}"
        )
    if args.profile is not None:
        print(f"\nprofile of the lean gateway: python -m pstats {args.profile}")
    print()


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "loadgen":
        loadgen_main(sys.argv[2:])
    else:
        main()
