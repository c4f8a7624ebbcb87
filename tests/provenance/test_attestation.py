"""Provenance attestations on a real LocalChain: publish signs a Memo transaction, the outbox
sender lands and confirms it, verification compares chain, manifest and stored bytes."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from cyxwiz.catalog.models import Model, ModelVersion
from cyxwiz.chain.interfaces import ChainUnavailable
from cyxwiz.chain.local import LocalChain
from cyxwiz.clock import TestClock
from cyxwiz.config import Settings
from cyxwiz.db import Database
from cyxwiz.provenance import service as provenance
from cyxwiz.provenance.models import Attestation
from cyxwiz.provenance.scheduled import attestation_loop
from cyxwiz.storage import BlobStore
from cyxwiz.web.app import create_app
from tests.factories import Account, Api, onnx_with_payload
from tests.provenance.conftest import ChainTime, Live

FILES = {"model.onnx": onnx_with_payload(b"onnx-weights" * 1000), "config.json": b'{"labels": 3}'}


# ---------------------------------------------------------------- helpers


def _version(session: Session, full_name: str, label: str = "1.0.0") -> ModelVersion:
    name = full_name.split("/")[1]
    model = session.scalars(select(Model).where(Model.name == name)).one()
    assert model.full_name == full_name
    return next(v for v in model.versions if v.version == label)


def _row(db: Database, full_name: str, label: str = "1.0.0") -> Attestation:
    with db.session() as s:
        ver = _version(s, full_name, label)
        row = provenance.get_attestation(s, version=ver)
        assert row is not None
        s.expunge(row)
        return row


def _memos_for(chain: LocalChain, slug: str) -> list[str]:
    """Attestation memos for ``slug`` that landed on chain (from the treasury's history)."""
    return [
        info.memo
        for info in chain.signatures_for(chain.treasury)
        if info.memo and f" {slug} " in info.memo
    ]


def _publish(api: Api, owner: Account, **fields: Any) -> str:
    m = api.published_model(owner, files=FILES, **fields)
    return str(m["full_name"])


def _attestation(client: Any, full: str, *, deep: bool = False, **kw: Any) -> Any:
    q = "?deep=true" if deep else ""
    return client.get(f"/api/v1/models/{full}/versions/1.0.0/attestation{q}", **kw)


# ---------------------------------------------------------------- memo format


def test_memo_format_is_versioned_bounded_and_parses_back() -> None:
    sha = hashlib.sha256(b"x").hexdigest()
    slug = f"{'a' * 39}/{'m' * 64}@{'9' * 64}"  # the longest owner, name and version
    memo = provenance.attestation_memo(slug, sha)
    assert memo == f"cyxwiz-attest:v1 {slug} sha256:{sha}"
    assert len(memo.encode()) <= 566
    parsed = provenance.parse_memo(memo)
    assert parsed is not None
    assert (parsed.version, parsed.slug, parsed.sha256) == ("v1", slug, sha)
    assert (parsed.model, parsed.label) == (f"{'a' * 39}/{'m' * 64}", "9" * 64)
    for bad in ("hello", f"cyxwiz-attest:v1 a/b sha256:{sha}", f"cyxwiz-attest:v1 a/b@1 {sha}"):
        assert provenance.parse_memo(bad) is None


# ---------------------------------------------------------------- publish → chain


def test_publish_signs_then_sender_lands_and_confirms(
    api: Api, db: Database, chain: LocalChain, clock: TestClock
) -> None:
    owner = api.user()
    full = _publish(api, owner)
    row = _row(db, full)
    slug = f"{full}@1.0.0"
    assert row.status == "pending"
    assert row.slug == slug
    assert row.raw_tx
    assert row.signature
    assert row.last_valid_block_height
    assert row.attempts == 1
    assert row.memo == f"cyxwiz-attest:v1 {slug} sha256:{row.manifest_sha256}"
    assert chain.transaction(row.signature) is None  # signed at publish, not sent

    report = provenance.send_pending(db, chain, now=clock.now())
    assert (report.sent, report.confirmed, report.errors) == (1, 1, [])
    done = _row(db, full)
    assert done.status == "confirmed"
    assert done.signature == row.signature
    assert done.confirmed_at == clock.now()
    tx = chain.transaction(row.signature)
    assert tx is not None
    assert done.slot == tx.slot
    assert tx.memos == (row.memo,)
    assert tx.signers == (chain.treasury,)

    again = provenance.send_pending(db, chain, now=clock.now())  # idempotent
    assert not again.changed
    assert _memos_for(chain, slug) == [row.memo]


def test_verify_ok_shallow_and_deep(
    api: Api, client: Any, db: Database, chain: LocalChain, clock: TestClock
) -> None:
    owner = api.user()
    full = _publish(api, owner)
    r = _attestation(client, full)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "pending"
    assert body["verified"] is False
    assert "not on chain" in body["summary"]

    provenance.send_pending(db, chain, now=clock.now())
    for deep in (False, True):
        r = _attestation(client, full, deep=deep)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["verified"] is True, body
        assert body["deep"] is deep
        assert body["status"] == "confirmed"
        assert body["on_chain"] is True
        assert body["signer"] == chain.treasury
        assert body["onchain_slug"] == f"{full}@1.0.0"
        assert (
            body["onchain_manifest_sha256"]
            == body["manifest_sha256"]
            == body["manifest_sha256_recomputed"]
        )
        assert {f["path"]: f["actual"] for f in body["files"]} == {
            p: hashlib.sha256(d).hexdigest() for p, d in FILES.items()
        }
        assert all(f["ok"] for f in body["files"])
        assert body["summary"].startswith("verified:")
    # 'latest' resolves like the version route
    r = client.get(f"/api/v1/models/{full}/versions/latest/attestation")
    assert r.status_code == 200
    assert r.json()["version"] == "1.0.0"


def test_a_changed_manifest_entry_is_named(
    api: Api, client: Any, db: Database, chain: LocalChain, clock: TestClock
) -> None:
    owner = api.user()
    full = _publish(api, owner)
    provenance.send_pending(db, chain, now=clock.now())
    with db.session() as s:  # someone edits the stored manifest behind the marketplace's back
        ver = _version(s, full)
        assert ver.manifest is not None
        manifest = {**ver.manifest, "files": [dict(f) for f in ver.manifest["files"]]}
        entry = next(f for f in manifest["files"] if f["path"] == "model.onnx")
        entry["sha256"] = "0" * 64
        ver.manifest = manifest
    for deep in (False, True):
        body = _attestation(client, full, deep=deep).json()
        assert body["verified"] is False
        assert body["summary"].startswith("model.onnx differs"), body["summary"]
        bad = [f for f in body["files"] if not f["ok"]]
        assert [(f["path"], f["expected"]) for f in bad] == [("model.onnx", "0" * 64)]
        assert body["manifest_sha256_recomputed"] != body["onchain_manifest_sha256"]


def test_a_swapped_blob_is_named(
    api: Api,
    client: Any,
    db: Database,
    chain: LocalChain,
    clock: TestClock,
    blobs: BlobStore,
) -> None:
    owner = api.user()
    full = _publish(api, owner)
    provenance.send_pending(db, chain, now=clock.now())
    evil = blobs.put_bytes(b'{"labels": 4}')  # same size, other bytes
    with db.session() as s:  # the file now points at other bytes
        ver = _version(s, full)
        f = next(f for f in ver.files if f.path == "config.json")
        f.sha256 = evil.address
    for deep in (False, True):
        body = _attestation(client, full, deep=deep).json()
        assert body["verified"] is False
        assert body["summary"].startswith("config.json differs"), body["summary"]
        bad = next(f for f in body["files"] if f["path"] == "config.json")
        assert bad["actual"] == evil.address
        assert bad["expected"] == hashlib.sha256(FILES["config.json"]).hexdigest()
        assert all(f["ok"] for f in body["files"] if f["path"] != "config.json")
    # the manifest itself is intact and matches the chain: only the file is wrong
    assert body["manifest_sha256_recomputed"] == body["onchain_manifest_sha256"]


def test_deep_check_reads_the_blob_not_the_recorded_hash(
    api: Api, db: Database, chain: LocalChain, clock: TestClock, blobs: BlobStore
) -> None:
    owner = api.user()
    full = _publish(api, owner)
    provenance.send_pending(db, chain, now=clock.now())
    with db.session() as s:
        ver = _version(s, full)
        f = next(f for f in ver.files if f.path == "model.onnx")
        blobs.delete(f.sha256)  # storage lost the bytes; the database still says all is well
        shallow = provenance.verify(s, version=ver, chain=chain, blobs=blobs, deep=False)
        deep = provenance.verify(s, version=ver, chain=chain, blobs=blobs, deep=True)
    assert shallow.verified is True
    assert deep.verified is False
    bad = deep.first_differing
    assert bad is not None
    assert (bad.path, bad.actual) == ("model.onnx", None)
    assert bad.error
    assert deep.summary.startswith("model.onnx differs")


# ---------------------------------------------------------------- chain trouble


def test_chain_unavailable_at_publish_then_backfilled_by_the_sender(
    settings: Settings, db: Database, blobs: BlobStore, clock: TestClock
) -> None:
    # another process owns the local chain: this app cannot open it
    holder = LocalChain(directory=settings.resolved_chain_dir, master_keys=settings.master_keys)
    try:
        app = create_app(settings, database=db, blobs=blobs, clock=clock)
        from fastapi.testclient import TestClient

        with TestClient(app, raise_server_exceptions=False) as client:
            api = Api(client)
            owner = api.user()
            full = _publish(api, owner)  # publishing still succeeds
            row = _row(db, full)
            assert (row.status, row.signature, row.raw_tx, row.attempts) == (
                "pending",
                None,
                None,
                0,
            )
            r = _attestation(client, full)
            assert r.status_code == 503
            assert r.json()["code"] == "chain_unavailable"

        report = provenance.send_pending(db, holder, now=clock.now())
        assert (report.created, report.signed, report.confirmed) == (0, 1, 1)
        row = _row(db, full)
        assert row.status == "confirmed"
        assert row.attempts == 1
        assert _memos_for(holder, f"{full}@1.0.0") == [row.memo]
    finally:
        holder.close()


def test_publish_when_signing_fails_still_succeeds(
    api: Api, db: Database, chain: LocalChain, clock: TestClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    def down(text: str) -> Any:
        raise ChainUnavailable("RPC timed out")

    monkeypatch.setattr(chain, "sign_memo", down)
    owner = api.user()
    full = _publish(api, owner)
    row = _row(db, full)
    assert (row.status, row.signature, row.error) == ("pending", None, "RPC timed out")
    monkeypatch.undo()
    provenance.send_pending(db, chain, now=clock.now())
    assert _row(db, full).status == "confirmed"


def test_backfill_attests_published_versions_without_one_in_bounded_batches(
    api: Api, db: Database, chain: LocalChain, clock: TestClock
) -> None:
    owner = api.user()
    names = [_publish(api, owner) for _ in range(3)]
    with db.session() as s:  # as if published before attestations existed (or by the seed)
        for full in names:
            row = provenance.get_attestation(s, version=_version(s, full))
            assert row is not None
            s.delete(row)
    first = provenance.send_pending(db, chain, now=clock.now(), batch=2)
    assert (first.created, first.confirmed) == (2, 2)
    second = provenance.send_pending(db, chain, now=clock.now(), batch=2)
    assert (second.created, second.confirmed) == (1, 1)
    for full in names:
        row = _row(db, full)
        assert row.status == "confirmed"
        assert _memos_for(chain, f"{full}@1.0.0") == [row.memo]
    assert not provenance.send_pending(db, chain, now=clock.now()).changed


def test_an_expired_blockhash_is_signed_again(
    api: Api, db: Database, chain: LocalChain, chain_time: ChainTime, clock: TestClock
) -> None:
    full = _publish(api, api.user())
    first = _row(db, full)
    chain_time.expire_blockhash(chain)  # the publish-time blockhash is now too old

    # The chain's height moved past the old transaction's last valid height when its
    # blockhash aged out, so one pass knows it can never land and signs it again.
    report = provenance.send_pending(db, chain, now=clock.now())
    assert (report.expired, report.sent) == (1, 1)
    row = _row(db, full)
    assert row.status == "confirmed"
    assert row.attempts == 2
    assert row.signature != first.signature
    assert chain.transaction(first.signature or "") is None
    assert _memos_for(chain, f"{full}@1.0.0") == [row.memo]


def test_a_sent_transaction_past_its_last_valid_height_is_signed_again(
    api: Api, db: Database, chain: LocalChain, chain_time: ChainTime, clock: TestClock
) -> None:
    full = _publish(api, api.user())
    lost = _row(db, full)
    with db.session() as s:  # sent, but the cluster dropped it; its blockhash is now too old
        row = provenance.get_attestation(s, version=_version(s, full))
        assert row is not None
        row.status = "sent"
        row.last_valid_block_height = chain.block_height() - 1
    chain_time.expire_blockhash(chain)
    report = provenance.send_pending(db, chain, now=clock.now())
    assert (report.expired, report.signed, report.confirmed) == (1, 1, 1)
    row = _row(db, full)
    assert row.status == "confirmed"
    assert row.attempts == 2
    assert row.signature != lost.signature
    assert chain.transaction(lost.signature or "") is None
    assert _memos_for(chain, f"{full}@1.0.0") == [row.memo]


def test_a_resend_after_a_crash_is_harmless(
    api: Api, db: Database, chain: LocalChain, clock: TestClock
) -> None:
    full = _publish(api, api.user())
    row = _row(db, full)
    assert row.raw_tx is not None
    chain.send_raw(row.raw_tx)  # landed, but the sender died before recording it
    report = provenance.send_pending(db, chain, now=clock.now())
    assert report.confirmed == 1
    assert _row(db, full).status == "confirmed"
    assert _memos_for(chain, f"{full}@1.0.0") == [row.memo]


def test_a_landed_duplicate_does_not_change_the_verdict(
    api: Api,
    client: Any,
    db: Database,
    chain: LocalChain,
    chain_time: ChainTime,
    clock: TestClock,
) -> None:
    full = _publish(api, api.user())
    row = _row(db, full)
    provenance.send_pending(db, chain, now=clock.now())
    chain_time.expire_blockhash(chain)  # (same blockhash + same memo = the very same tx)
    chain.send_raw(chain.sign_memo(row.memo).raw)  # e.g. a re-signed copy that also landed
    assert len(_memos_for(chain, f"{full}@1.0.0")) == 2
    body = _attestation(client, full, deep=True).json()
    assert body["verified"] is True
    assert body["signature"] == row.signature


# ---------------------------------------------------------------- concurrency (real commits)


def _run_together(fns: list[Callable[[], Any]]) -> list[Any]:
    barrier = threading.Barrier(len(fns))
    out: list[Any] = [None] * len(fns)

    def runner(i: int, fn: Callable[[], Any]) -> None:
        barrier.wait()
        try:
            out[i] = fn()
        except BaseException as exc:
            out[i] = exc

    threads = [threading.Thread(target=runner, args=(i, fn)) for i, fn in enumerate(fns)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(120)
        assert not th.is_alive()
    return out


def _publish_live(c: httpx.Client, n: int = 1) -> list[str]:
    api = Api(c)  # type: ignore[arg-type]
    owner = api.user(f"prov-{uuid.uuid4().hex[:10]}")
    return [_publish(api, owner) for _ in range(n)]


@pytest.mark.slow
def test_two_senders_at_once_land_one_memo(live: Live) -> None:
    with live.client() as c:
        names = _publish_live(c, 6)
    fresh, unattested = names[:3], names[3:]  # signed at publish / left to the backfill
    with live.db.session() as s:
        for full in unattested:
            row = provenance.get_attestation(s, version=_version(s, full))
            assert row is not None
            s.delete(row)
    now = live.clock.now()
    reports = _run_together(
        [lambda: provenance.send_pending(live.db, live.chain, now=now) for _ in range(2)]
    )
    for r in reports:
        assert isinstance(r, provenance.SendReport), r
        assert r.errors == []
    assert sum(r.created for r in reports) == 3
    provenance.send_pending(live.db, live.chain, now=now)  # finish what a skipped row left
    with live.db.session() as s:
        assert s.scalar(select(func.count()).select_from(Attestation)) == 6
    for full in fresh + unattested:
        row = _row(live.db, full)
        assert row.status == "confirmed", row.error
        assert _memos_for(live.chain, f"{full}@1.0.0") == [row.memo]


@pytest.mark.slow
def test_two_senders_re_signing_one_expired_attestation_land_one_memo(live: Live) -> None:
    with live.client() as c:
        [full] = _publish_live(c)
    with live.db.session() as s:
        row = provenance.get_attestation(s, version=_version(s, full))
        assert row is not None
        row.status = "failed"  # its transaction expired unsent
    for _ in range(3):
        now = live.clock.now()
        reports = _run_together(
            [
                lambda now=now: provenance.send_pending(live.db, live.chain, now=now)
                for _ in range(2)
            ]
        )
        assert all(isinstance(r, provenance.SendReport) and not r.errors for r in reports)
        assert sum(r.signed for r in reports) <= 1
        if _row(live.db, full).status == "confirmed":
            break
    row = _row(live.db, full)
    assert row.status == "confirmed"
    assert row.attempts == 2
    assert _memos_for(live.chain, f"{full}@1.0.0") == [row.memo]


# ---------------------------------------------------------------- the background loop


@pytest.mark.slow
def test_attestation_loop_confirms_and_survives_a_broken_chain(
    live: Live, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    with live.client() as c:
        [full] = _publish_live(c)
    fast = settings.model_copy(update={"chain_watch_interval_seconds": 0.05})
    calls = [0]

    def flaky() -> LocalChain:
        calls[0] += 1
        if calls[0] <= 3:
            raise ChainUnavailable("not yet")
        return live.chain

    class FlakyCtx:
        def __init__(self) -> None:
            self.settings, self.db, self.clock = fast, live.db, live.clock

        @property
        def chain(self) -> LocalChain:
            return flaky()

    async def main() -> None:
        task = asyncio.create_task(attestation_loop(FlakyCtx()))
        try:
            for _ in range(200):
                await asyncio.sleep(0.05)
                if await asyncio.to_thread(lambda: _row(live.db, full).status) == "confirmed":
                    return
            raise AssertionError("the loop never confirmed the attestation")
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    with caplog.at_level(logging.WARNING, logger="cyxwiz.provenance"):
        asyncio.run(main())
    assert calls[0] > 3
    warnings = [r for r in caplog.records if "attestation sender" in r.getMessage()]
    assert len(warnings) == 1  # logged once, not once per failing pass


# ---------------------------------------------------------------- who may see what


def test_attestation_route_visibility(
    api: Api, client: Any, db: Database, chain: LocalChain, clock: TestClock
) -> None:
    owner, stranger = api.user(), api.user()
    full = _publish(api, owner, visibility="private")
    provenance.send_pending(db, chain, now=clock.now())
    assert _attestation(client, full).status_code == 404
    assert _attestation(client, full, headers=stranger.headers).status_code == 404
    r = _attestation(client, full, headers=owner.headers)
    assert r.status_code == 200
    assert r.json()["verified"] is True
    # a draft of a public model: invisible to others, and not attested for its owner
    full = _publish(api, owner)
    api.version(owner, full, "2.0.0")
    r = client.get(f"/api/v1/models/{full}/versions/2.0.0/attestation", headers=owner.headers)
    assert r.status_code == 404
    assert r.json()["code"] == "attestation_not_found"
    r = client.get(f"/api/v1/models/{full}/versions/2.0.0/attestation", headers=stranger.headers)
    assert r.status_code == 404
    assert r.json()["code"] == "version_not_found"
    r = client.get(f"/api/v1/models/{owner.username}/nope/versions/1.0.0/attestation")
    assert r.status_code == 404


def test_deep_check_of_a_paid_model_needs_download_rights(
    api: Api, client: Any, db: Database, chain: LocalChain, clock: TestClock
) -> None:
    owner, stranger = api.user(), api.user()
    full = _publish(api, owner)
    r = client.put(
        f"/api/v1/models/{full}/offers",
        json={"one_time": {"amount": 5_000_000, "currency": "USDC"}},
        headers=owner.headers,
    )
    assert r.status_code == 200, r.text
    provenance.send_pending(db, chain, now=clock.now())
    for who in (None, stranger):
        r = _attestation(client, full, deep=True, headers=who.headers if who else {})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["deep"] is False
        assert "license" in body["note"]
        assert body["verified"] is True  # the shallow check still runs
    body = _attestation(client, full, deep=True, headers=owner.headers).json()
    assert (body["deep"], body["note"], body["verified"]) == (True, None, True)


def test_ui_publish_attests_too(
    app: FastAPI, db: Database, chain: LocalChain, clock: TestClock
) -> None:
    from fastapi.testclient import TestClient

    from tests.web.test_ui import Browser

    with TestClient(app, raise_server_exceptions=False) as client:
        api = Api(client)
        owner = api.user()
        m = api.model(owner, visibility="public")
        full = m["full_name"]
        api.version(owner, full)
        api.upload(owner, full, "1.0.0", "model.onnx", onnx_with_payload(b"ui-bytes"))
        browser = Browser(client)
        r = browser.login(owner.username)
        assert r.status_code == 303, r.text
        r = browser.post(f"/{full}/versions/1.0.0/publish")
        assert r.status_code == 303, r.text
    row = _row(db, full)
    assert row.status == "pending"
    assert row.signature is not None
    provenance.send_pending(db, chain, now=clock.now())
    assert _row(db, full).status == "confirmed"
