"""`cyxwiz verify OWNER/NAME@VERSION` against a live marketplace (uvicorn) settling on a real
LocalChain: the memo comes from the chain's JSON-RPC (/chain/rpc), the files from the file
routes. Exit codes: 0 verified, 1 mismatch, 2 error."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from cyxwiz.catalog.models import Model, ModelVersion
from cyxwiz.cli.main import app
from cyxwiz.cli.verify import b58decode, parse_transaction
from cyxwiz.provenance import service as provenance
from tests.factories import Account, Api, onnx_with_payload
from tests.provenance.conftest import (
    Live,
    chain,
    chain_time,
    committed_db,
    committed_template,
    committed_url,
    live,
)

__all__ = ["chain", "chain_time", "committed_db", "committed_template", "committed_url", "live"]

pytestmark = pytest.mark.slow
runner = CliRunner()
FILES = {"model.onnx": onnx_with_payload(b"\x08\x07onnx" * 5000), "labels.txt": b"cat\ndog\n"}


def _cli(*args: str) -> Any:
    return runner.invoke(app, ["verify", *args])


def _published(live: Live, *, attest: bool = True, **fields: Any) -> tuple[str, Account]:
    with live.client() as c:
        api = Api(c)  # type: ignore[arg-type]
        owner = api.user()
        m = api.published_model(owner, files=FILES, **fields)
    if attest:
        report = provenance.send_pending(live.db, live.chain, now=live.clock.now())
        assert report.confirmed >= 1, report
    return str(m["full_name"]), owner


def _version(s: Session, full: str) -> ModelVersion:
    model = s.scalars(select(Model).where(Model.name == full.split("/")[1])).one()
    return model.versions[0]


def test_verified_exits_0_and_lists_every_file(live: Live) -> None:
    full, _ = _published(live)
    r = _cli(f"{full}@1.0.0", "--url", live.base_url)
    assert r.exit_code == 0, r.output
    assert "VERIFIED" in r.output
    assert "matches the memo" in r.output
    for path in FILES:
        assert path in r.output
    assert r.output.count("OK") >= len(FILES)
    # without a version: the latest; with the right attester: still verified
    r = _cli(full, "--url", live.base_url, "--attester", live.chain.treasury)
    assert r.exit_code == 0, r.output
    # the real console script, in its own process, with an explicit RPC URL
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "cyxwiz",
            "verify",
            f"{full}@1.0.0",
            "--url",
            live.base_url,
            "--rpc-url",
            f"{live.base_url}/chain/rpc",
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "VERIFIED" in out.stdout


def test_a_swapped_file_exits_1_naming_it(live: Live) -> None:
    full, _ = _published(live)
    evil = live.blobs.put_bytes(b"dog\ncat\n")  # same size, other labels
    with live.db.session() as s:
        ver = _version(s, full)
        next(f for f in ver.files if f.path == "labels.txt").sha256 = evil.address
    r = _cli(f"{full}@1.0.0", "--url", live.base_url)
    assert r.exit_code == 1, r.output
    assert "DIFFERS" in r.output
    assert "NOT VERIFIED" in r.output
    assert "labels.txt differs" in r.output


def test_a_changed_manifest_exits_1(live: Live) -> None:
    full, _ = _published(live)
    with live.db.session() as s:  # the served manifest lists other bytes for model.onnx
        ver = _version(s, full)
        other = live.blobs.put_bytes(b"other weights")
        f = next(f for f in ver.files if f.path == "model.onnx")
        f.sha256, f.size = other.address, 13
        assert ver.manifest is not None
        ver.manifest = {
            **ver.manifest,
            "files": [
                {**e, "sha256": other.address, "size": 13} if e["path"] == "model.onnx" else e
                for e in ver.manifest["files"]
            ],
        }
    r = _cli(f"{full}@1.0.0", "--url", live.base_url)
    assert r.exit_code == 1, r.output
    assert "DIFFERS from the memo" in r.output


def test_wrong_attester_exits_1(live: Live) -> None:
    full, _ = _published(live)
    r = _cli(f"{full}@1.0.0", "--url", live.base_url, "--attester", "1" * 32)
    assert r.exit_code == 1, r.output
    assert "not 11111" in r.output


def test_paid_files_need_the_token(live: Live) -> None:
    full, owner = _published(live)
    with live.client() as c:
        r = c.put(
            f"/api/v1/models/{full}/offers",
            json={"one_time": {"amount": 1_000_000, "currency": "USDC"}},
            headers=owner.headers,
        )
        assert r.status_code == 200, r.text
    r = _cli(f"{full}@1.0.0", "--url", live.base_url)
    assert r.exit_code == 2, r.output
    assert "license" in r.output.lower()
    r = _cli(f"{full}@1.0.0", "--url", live.base_url, "--token", owner.token)
    assert r.exit_code == 0, r.output


def test_errors_exit_2(live: Live) -> None:
    full, _ = _published(live, attest=False)
    r = _cli(f"{full}@1.0.0", "--url", live.base_url)  # signed, not sent yet
    assert r.exit_code == 2, r.output
    assert "not attested on chain yet" in r.output
    assert _cli("no-such-user/nothing@1.0.0", "--url", live.base_url).exit_code == 2
    assert _cli("not-a-target", "--url", live.base_url).exit_code == 2
    provenance.send_pending(live.db, live.chain, now=live.clock.now())
    r = _cli(f"{full}@1.0.0", "--url", live.base_url, "--rpc-url", "http://127.0.0.1:9/")
    assert r.exit_code == 2, r.output
    assert "unreachable" in r.output
    r = _cli(f"{full}@1.0.0", "--url", "http://127.0.0.1:9")
    assert r.exit_code == 2, r.output


def test_parse_transaction_reads_json_and_json_parsed_shapes() -> None:
    memo = "cyxwiz-attest:v1 a/b@1 sha256:" + "ab" * 32
    data = memo.encode()
    alphabet = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
    num, enc = int.from_bytes(data, "big"), ""
    while num:
        num, rem = divmod(num, 58)
        enc = alphabet[rem] + enc
    assert b58decode(enc) == data
    assert b58decode("11" + enc) == b"\0\0" + data
    signer, memo_program = (
        "Signer1111111111111111111111111111111111111",
        ("MemoSq4gqABAXKb96qnH8TysNcWxMyWCqXgDLGmfcHr"),
    )
    as_json = {
        "slot": 7,
        "transaction": {
            "message": {
                "accountKeys": [signer, memo_program],
                "instructions": [{"programIdIndex": 1, "accounts": [0], "data": enc}],
            }
        },
    }
    parsed = parse_transaction(as_json)
    assert (parsed.slot, parsed.signer, parsed.memos) == (7, signer, [memo])
    as_parsed = {
        "slot": 8,
        "transaction": {
            "message": {
                "accountKeys": [{"pubkey": signer, "signer": True}],
                "instructions": [
                    {"programId": memo_program, "program": "spl-memo", "parsed": memo}
                ],
            }
        },
    }
    assert parse_transaction(as_parsed).memos == [memo]
