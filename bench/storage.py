"""Storage benchmark: a large file through the HTTP API vs. the in-process limit.

Starts a real `cyxwiz serve` (uvicorn, SQLite, local encrypted blob store) in a subprocess,
uploads a file of SIZE MiB through `PUT .../files/{path}` and downloads it back, and compares with
encrypting/decrypting the same bytes in-process with the same blob store code. Prints a table of
throughputs, their ratios and the server's peak RSS during each phase.

    python bench/storage.py [--size-mib 512]
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from cyxwiz.config import Settings
from cyxwiz.storage import blob_store_from_settings

PIECE = 1024 * 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_peak_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak(pid: int) -> None:
    # Writing 5 to clear_refs resets the peak RSS (VmHWM) to the current RSS.
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def file_pieces(path: Path) -> Iterator[bytes]:
    with path.open("rb") as fh:
        while piece := fh.read(PIECE):
            yield piece


def download(c: httpx.Client, client: str, url: str, token: str) -> int:
    if client == "curl":
        out = subprocess.run(
            [
                "curl",
                "-sf",
                "-o",
                "/dev/null",
                "-w",
                "%{size_download}",
                "-H",
                f"Authorization: Bearer {token}",
                url,
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        return int(out.stdout)
    got = 0
    with c.stream("GET", url, headers={"Authorization": f"Bearer {token}"}) as resp:
        resp.raise_for_status()
        for piece in resp.iter_raw():
            got += len(piece)
    return got


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=512)
    ap.add_argument("--repeat", type=int, default=3, help="downloads per figure (median)")
    ap.add_argument(
        "--client", choices=["curl", "httpx"], default="curl", help="HTTP client for the download"
    )
    args = ap.parse_args()
    size = args.size_mib * 1024 * 1024

    with tempfile.TemporaryDirectory(prefix="cyxwiz-bench-") as tmp:
        root = Path(tmp)
        src = root / "model.bin"
        with src.open("wb") as fh:
            block = os.urandom(16 * PIECE)
            for i in range(size // len(block)):
                fh.write(block[i % 7 :] + block[: i % 7])  # distinct blocks, cheap to make
        sha = hashlib.sha256(src.read_bytes()).hexdigest()

        key = base64.b64encode(secrets.token_bytes(32)).decode()
        env = {**os.environ, "CYXWIZ_DATA_DIR": str(root / "data"), "CYXWIZ_MASTER_KEY": key}
        env.pop("CYXWIZ_DATABASE_URL", None)
        port = free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "cyxwiz", "serve", "--port", str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            with httpx.Client(base_url=base, timeout=120) as c:
                for _ in range(200):
                    try:
                        if c.get("/health").status_code == 200:
                            break
                    except httpx.TransportError:
                        time.sleep(0.1)
                pw = "bench-password-1"
                c.post(
                    "/api/v1/auth/register",
                    json={"username": "bench", "email": "b@example.com", "password": pw},
                ).raise_for_status()
                tok = c.post(
                    "/api/v1/auth/login", json={"username": "bench", "password": pw}
                ).json()["access_token"]
                h = {"Authorization": f"Bearer {tok}"}
                c.post(
                    "/api/v1/models",
                    json={"name": "big", "title": "Big", "category": "scientific"},
                    headers=h,
                ).raise_for_status()
                c.post(
                    "/api/v1/models/bench/big/versions", json={"version": "1"}, headers=h
                ).raise_for_status()
                url = "/api/v1/models/bench/big/versions/1/files/model.bin"
                idle_rss = rss_peak_mib(server.pid)

                reset_peak(server.pid)
                t0 = time.perf_counter()
                r = c.put(url, content=file_pieces(src), headers={**h, "X-Checksum-Sha256": sha})
                up_s = time.perf_counter() - t0
                r.raise_for_status()
                up_rss = rss_peak_mib(server.pid)

                reset_peak(server.pid)
                times = []
                for _ in range(args.repeat):
                    t0 = time.perf_counter()
                    got = download(c, args.client, base + url, tok)
                    times.append(time.perf_counter() - t0)
                    assert got == size, (got, size)
                down_s = statistics.median(times)
                down_rss = rss_peak_mib(server.pid)
        finally:
            server.terminate()
            server.wait(10)

        # The HTTP ceiling: the same uvicorn serving in-memory bytes from a bare ASGI app.
        raw_port = free_port()
        raw = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "raw_asgi:app",
                "--port",
                str(raw_port),
                "--log-level",
                "warning",
            ],
            cwd=Path(__file__).parent,
            env={**os.environ, "RAW_MIB": str(args.size_mib)},
        )
        try:
            with httpx.Client(timeout=60) as rc:
                for _ in range(200):
                    try:
                        rc.get(f"http://127.0.0.1:{raw_port}/", headers={"Range": "bytes=0-0"})
                        break
                    except httpx.TransportError:
                        time.sleep(0.1)
                times = []
                for _ in range(args.repeat):
                    t0 = time.perf_counter()
                    assert download(rc, args.client, f"http://127.0.0.1:{raw_port}/", "-") == size
                    times.append(time.perf_counter() - t0)
            raw_s = statistics.median(times)
        finally:
            raw.terminate()
            raw.wait(10)

        # In-process limit with the same store code, keys and chunk size.
        store = blob_store_from_settings(Settings(data_dir=root / "data", master_key=key))
        t0 = time.perf_counter()
        info = store.put_stream(file_pieces(src))
        enc_s = time.perf_counter() - t0
        assert info.address == sha
        times = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            n = sum(len(p) for p in store.read_range(sha))
            times.append(time.perf_counter() - t0)
            assert n == size
        dec_s = statistics.median(times)

    mib = size / 2**20
    rows = [
        ("upload via HTTP API", mib / up_s, "in-process encrypt+store", mib / enc_s, up_rss),
        ("download via HTTP API", mib / down_s, "in-process read+decrypt", mib / dec_s, down_rss),
    ]
    print(
        f"\nstorage benchmark: {mib:.0f} MiB file, chunk 1 MiB, server idle RSS {idle_rss:.0f} MiB"
    )
    head = f"{'path':<24}{'MiB/s':>9}   {'in-process limit':<26}{'MiB/s':>9}{'ratio':>8}"
    print(f"{head}{'server peak RSS':>18}")
    for name, rate, lname, lrate, rss in rows:
        print(
            f"{name:<24}{rate:>9.0f}   {lname:<26}{lrate:>9.0f}{rate / lrate:>8.2f}{rss:>14.0f} MiB"
        )
    print(
        f"{'raw ASGI, no decrypt':<24}{mib / raw_s:>9.0f}   {'(HTTP ceiling, same uvicorn)':<26}"
        f"{'':>9}{mib / raw_s / (mib / dec_s):>8.2f}"
    )
    print(f"download via API = {(mib / down_s) / (mib / raw_s):.0%} of the HTTP ceiling")
    print("targets: download ratio >= 0.50, server peak RSS < 200 MiB")


if __name__ == "__main__":
    main()
