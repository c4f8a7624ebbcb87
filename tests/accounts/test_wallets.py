"""Linked wallets and Sign-In With Solana through the API: who may link, log in and unlink, and
every way a signed message can be refused (forged, altered, replayed, expired, wrong purpose)."""

from __future__ import annotations

import base64
import os
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from httpx2 import Response
from solders.keypair import Keypair
from sqlalchemy import select, text
from sqlalchemy.engine import make_url

from cyxwiz.accounts import wallets
from cyxwiz.accounts.models import SignInNonce, User
from cyxwiz.clock import TestClock
from cyxwiz.config import Settings
from cyxwiz.db import Database, make_engine
from cyxwiz.errors import DomainError
from cyxwiz.migrate import upgrade
from cyxwiz.web.app import create_app
from tests.factories import Account, Api

PG_URL = os.environ.get("CYXWIZ_TEST_DATABASE_URL")


def problem(r: Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = r.json()
    assert body["code"] == code, body
    assert body["detail"]
    return body


def sign(kp: Keypair, message: str) -> str:
    """What a wallet's signMessage returns, bs58-encoded."""
    return str(kp.sign_message(message.encode()))


def link_challenge(client: TestClient, who: Account, kp: Keypair) -> str:
    r = client.post(
        "/api/v1/wallets/challenge", json={"address": str(kp.pubkey())}, headers=who.headers
    )
    assert r.status_code == 201, r.text
    return str(r.json()["message"])


def login_challenge(client: TestClient, kp: Keypair) -> str:
    r = client.post("/api/v1/auth/siws/challenge", json={"address": str(kp.pubkey())})
    assert r.status_code == 201, r.text
    return str(r.json()["message"])


def submit_link(
    client: TestClient, who: Account, message: str, signature: str, **extra: Any
) -> Response:
    return client.post(
        "/api/v1/wallets",
        json={"message": message, "signature": signature, **extra},
        headers=who.headers,
    )


def link(client: TestClient, who: Account, kp: Keypair) -> Response:
    message = link_challenge(client, who, kp)
    return submit_link(client, who, message, sign(kp, message))


def login(client: TestClient, message: str, signature: str) -> Response:
    return client.post("/api/v1/auth/siws/login", json={"message": message, "signature": signature})


def addresses(client: TestClient, who: Account) -> list[str]:
    r = client.get("/api/v1/wallets", headers=who.headers)
    assert r.status_code == 200, r.text
    return [w["address"] for w in r.json()]


# ---------------------------------------------------------------- the message


def test_challenge_is_a_siws_message(api: Api, client: TestClient, clock: TestClock) -> None:
    ada = api.user()
    kp = Keypair()
    r = client.post(
        "/api/v1/wallets/challenge", json={"address": str(kp.pubkey())}, headers=ada.headers
    )
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["purpose"] == "link"
    assert body["address"] == str(kp.pubkey())
    lines = body["message"].split("\n")
    assert lines[0] == "127.0.0.1:8000 wants you to sign in with your Solana account:"
    assert lines[1] == str(kp.pubkey())
    assert lines[2] == ""
    assert f"@{ada.username}" in lines[3]
    assert lines[4] == ""
    assert lines[5:] == [
        "URI: http://127.0.0.1:8000",
        "Version: 1",
        "Chain ID: localnet",
        f"Nonce: {body['nonce']}",
        "Issued At: 2026-11-24T12:00:00.000Z",
        "Expiration Time: 2026-11-24T12:10:00.000Z",
    ]
    assert len(body["nonce"]) == 32  # 128 random bits, hex
    other = link_challenge(client, ada, kp)
    assert other != body["message"]  # a fresh nonce every time

    r = client.post("/api/v1/auth/siws/challenge", json={"address": str(kp.pubkey())})
    assert r.status_code == 201, r.text
    assert r.json()["purpose"] == "login"
    assert "Log in to CyxWiz" in r.json()["message"]


def test_chain_id_follows_the_cluster(settings: Settings) -> None:
    assert wallets.chain_id(settings) == "localnet"
    for url, expected in [
        ("https://api.devnet.solana.com", "devnet"),
        ("https://api.testnet.solana.com", "testnet"),
        ("http://127.0.0.1:8899", "localnet"),
        ("https://api.mainnet-beta.solana.com", "mainnet"),
    ]:
        s = settings.model_copy(update={"chain_backend": "rpc", "chain_rpc_url": url})
        assert wallets.chain_id(s) == expected


def test_bad_addresses_are_refused(api: Api, client: TestClient) -> None:
    ada = api.user()
    for bad in ["nope", "0" * 44, "", "Hj8v" * 20]:
        r = client.post("/api/v1/wallets/challenge", json={"address": bad}, headers=ada.headers)
        assert r.status_code == 422, r.text
        assert r.json()["code"] in ("invalid_address", "validation_error")
    problem(
        client.post("/api/v1/auth/siws/challenge", json={"address": "not-base58!"}),
        422,
        "invalid_address",
    )


# ---------------------------------------------------------------- link, list, unlink, relink


def test_link_list_unlink_relink(
    api: Api, client: TestClient, db: Database, clock: TestClock
) -> None:
    ada, bob = api.user(), api.user()
    kp = Keypair()
    message = link_challenge(client, ada, kp)
    r = submit_link(client, ada, message, sign(kp, message), label="phantom")
    assert r.status_code == 201, r.text
    assert r.json()["address"] == str(kp.pubkey())
    assert r.json()["label"] == "phantom"
    assert r.json()["unlinked_at"] is None
    assert addresses(client, ada) == [str(kp.pubkey())]
    assert addresses(client, bob) == []

    # linking it again to the same account is idempotent (200, nothing changes)
    r = link(client, ada, kp)
    assert r.status_code == 200, r.text
    assert addresses(client, ada) == [str(kp.pubkey())]

    # a second wallet, linked a second later
    clock.advance(timedelta(seconds=1))
    kp2 = Keypair()
    assert link(client, ada, kp2).status_code == 201
    assert addresses(client, ada) == [str(kp.pubkey()), str(kp2.pubkey())]
    with db.session() as s:
        user_id = s.scalars(select(User.id).where(User.username == ada.username)).one()
        assert wallets.linked_wallet(s, user_id).address == str(kp2.pubkey())  # newest
        assert wallets.linked_wallet(s, user_id, str(kp.pubkey())).address == str(kp.pubkey())

    # unlink (soft): gone from the list, payouts refuse it, a second unlink is a 404
    r = client.delete(f"/api/v1/wallets/{kp.pubkey()}", headers=ada.headers)
    assert r.status_code == 200, r.text
    assert r.json()["unlinked_at"] is not None
    assert addresses(client, ada) == [str(kp2.pubkey())]
    problem(
        client.delete(f"/api/v1/wallets/{kp.pubkey()}", headers=ada.headers),
        404,
        "wallet_not_found",
    )
    with db.session() as s, pytest.raises(DomainError) as err:
        wallets.linked_wallet(s, user_id, str(kp.pubkey()))
    assert (err.value.code, err.value.status) == ("wallet_not_linked", 409)

    # an unlinked wallet may be linked again, by anyone who signs for it
    assert link(client, bob, kp).status_code == 201
    assert addresses(client, bob) == [str(kp.pubkey())]
    problem(link(client, ada, kp), 409, "wallet_taken")
    assert client.delete(f"/api/v1/wallets/{kp.pubkey()}", headers=bob.headers).status_code == 200
    assert link(client, ada, kp).status_code == 201
    assert sorted(addresses(client, ada)) == sorted([str(kp.pubkey()), str(kp2.pubkey())])


def test_wallet_taken_by_another_account(api: Api, client: TestClient) -> None:
    ada, eve = api.user(), api.user()
    kp = Keypair()
    assert link(client, ada, kp).status_code == 201
    # eve holds the key too (say it leaked): the wallet still belongs to ada's account
    problem(link(client, eve, kp), 409, "wallet_taken")
    assert addresses(client, ada) == [str(kp.pubkey())]
    assert addresses(client, eve) == []
    # eve cannot unlink ada's wallet
    problem(
        client.delete(f"/api/v1/wallets/{kp.pubkey()}", headers=eve.headers),
        404,
        "wallet_not_found",
    )
    assert addresses(client, ada) == [str(kp.pubkey())]


def test_who_may_call(api: Api, client: TestClient) -> None:
    ada = api.user()
    kp = Keypair()
    body = {"address": str(kp.pubkey())}
    problem(client.post("/api/v1/wallets/challenge", json=body), 401, "not_authenticated")
    problem(
        client.post("/api/v1/wallets", json={"message": "m", "signature": "s"}),
        401,
        "not_authenticated",
    )
    problem(client.get("/api/v1/wallets"), 401, "not_authenticated")
    problem(client.delete(f"/api/v1/wallets/{kp.pubkey()}"), 401, "not_authenticated")

    # API keys may read the list but never link or unlink (payouts follow linked wallets)
    r = client.post(
        "/api/v1/api-keys", json={"name": "ci", "scopes": ["read", "write"]}, headers=ada.headers
    )
    key = {"Authorization": f"Bearer {r.json()['key']}"}
    problem(client.post("/api/v1/wallets/challenge", json=body, headers=key), 403, "forbidden")
    message = link_challenge(client, ada, kp)
    problem(
        client.post(
            "/api/v1/wallets",
            json={"message": message, "signature": sign(kp, message)},
            headers=key,
        ),
        403,
        "forbidden",
    )
    assert link(client, ada, kp).status_code == 201
    problem(client.delete(f"/api/v1/wallets/{kp.pubkey()}", headers=key), 403, "forbidden")
    r = client.get("/api/v1/wallets", headers=key)
    assert r.status_code == 200
    assert [w["address"] for w in r.json()] == [str(kp.pubkey())]

    # the login challenge is for anyone; extra fields are refused
    assert client.post("/api/v1/auth/siws/challenge", json=body).status_code == 201
    problem(
        client.post("/api/v1/auth/siws/challenge", json={**body, "user": "ada"}),
        422,
        "validation_error",
    )


# ---------------------------------------------------------------- refused signatures


def test_forged_signature_is_refused(api: Api, client: TestClient) -> None:
    ada = api.user()
    kp, mallory = Keypair(), Keypair()
    message = link_challenge(client, ada, kp)
    # signed by another key: not the address's signature
    problem(submit_link(client, ada, message, sign(mallory, message)), 401, "invalid_signature")
    # garbage, truncated and wrongly encoded signatures
    good = kp.sign_message(message.encode())
    for bad in ["x", "1" * 88, str(good)[:-4], base64.b16encode(bytes(good)).decode(), "é" * 10]:
        problem(submit_link(client, ada, message, bad), 401, "invalid_signature")
    assert addresses(client, ada) == []
    # refused attempts do not burn the nonce: the owner's signature still links (base64 too)
    r = submit_link(client, ada, message, base64.b64encode(bytes(good)).decode())
    assert r.status_code == 201, r.text


def test_forged_login_is_refused(api: Api, client: TestClient) -> None:
    ada = api.user()
    kp, mallory = Keypair(), Keypair()
    assert link(client, ada, kp).status_code == 201
    message = login_challenge(client, kp)
    problem(login(client, message, sign(mallory, message)), 401, "invalid_signature")
    # mallory's own challenge, with the victim's address swapped in, is not a message we issued
    theirs = login_challenge(client, mallory)
    swapped = theirs.replace(str(mallory.pubkey()), str(kp.pubkey()))
    problem(login(client, swapped, sign(mallory, swapped)), 401, "siws_message_mismatch")
    problem(login(client, swapped, sign(kp, swapped)), 401, "siws_message_mismatch")


def test_signature_over_a_modified_message_is_refused(api: Api, client: TestClient) -> None:
    ada = api.user()
    kp = Keypair()
    message = link_challenge(client, ada, kp)
    later = message.replace(
        "Expiration Time: 2026-11-24T12:10", "Expiration Time: 2099-11-24T12:10"
    )
    assert later != message
    for altered in [
        later,
        message.replace("127.0.0.1:8000", "evil.example"),
        message + "\n",
        message.replace("\n", "\r\n"),
        "Nonce: " + "a" * 32,
        "no nonce line at all",
        "x" * 3000,
    ]:
        # whether signed as altered or as issued, an altered text is not our challenge
        r = submit_link(client, ada, altered, sign(kp, altered))
        assert r.status_code in (401, 422), r.text
        assert r.json()["code"] in ("siws_message_mismatch", "validation_error")
        problem(
            submit_link(client, ada, altered, sign(kp, message)), r.status_code, r.json()["code"]
        )
    # the signature of the issued text over an altered text is refused as well
    problem(submit_link(client, ada, later, sign(kp, message)), 401, "siws_message_mismatch")
    assert addresses(client, ada) == []


def test_reused_nonce_is_refused(api: Api, client: TestClient) -> None:
    ada = api.user()
    kp = Keypair()
    message = link_challenge(client, ada, kp)
    signature = sign(kp, message)
    assert submit_link(client, ada, message, signature).status_code == 201
    problem(submit_link(client, ada, message, signature), 401, "siws_nonce_used")

    message = login_challenge(client, kp)
    signature = sign(kp, message)
    r = login(client, message, signature)
    assert r.status_code == 200, r.text
    problem(login(client, message, signature), 401, "siws_nonce_used")


def test_expired_nonce_is_refused(
    api: Api, client: TestClient, clock: TestClock, settings: Settings
) -> None:
    ada = api.user()
    kp = Keypair()
    assert link(client, ada, kp).status_code == 201
    message = link_challenge(client, ada, Keypair())
    login_message = login_challenge(client, kp)
    clock.advance(timedelta(seconds=settings.siws_ttl_seconds - 1))
    fresh = login_challenge(client, kp)
    clock.advance(timedelta(seconds=1))
    problem(login(client, login_message, sign(kp, login_message)), 401, "siws_nonce_expired")
    other = Keypair()
    problem(submit_link(client, ada, message, sign(other, message)), 401, "invalid_signature")
    assert login(client, fresh, sign(kp, fresh)).status_code == 200


def test_expired_link_nonce(api: Api, client: TestClient, clock: TestClock) -> None:
    ada = api.user()
    kp = Keypair()
    message = link_challenge(client, ada, kp)
    clock.advance(timedelta(minutes=10))
    problem(submit_link(client, ada, message, sign(kp, message)), 401, "siws_nonce_expired")
    assert addresses(client, ada) == []


def test_nonce_only_serves_its_purpose_and_account(api: Api, client: TestClient) -> None:
    ada, bob = api.user(), api.user()
    kp = Keypair()
    # a login challenge cannot link
    message = login_challenge(client, kp)
    problem(submit_link(client, ada, message, sign(kp, message)), 401, "siws_message_mismatch")
    # a link challenge cannot log in
    message = link_challenge(client, ada, kp)
    problem(login(client, message, sign(kp, message)), 401, "siws_message_mismatch")
    # ada's link challenge cannot link the wallet to bob
    problem(submit_link(client, bob, message, sign(kp, message)), 401, "siws_message_mismatch")
    # none of the refusals used it up: ada can still link with it
    assert submit_link(client, ada, message, sign(kp, message)).status_code == 201
    assert addresses(client, bob) == []


# ---------------------------------------------------------------- login with a wallet


def test_login_with_wallet(api: Api, client: TestClient, db: Database) -> None:
    ada = api.user()
    kp = Keypair()
    assert link(client, ada, kp).status_code == 201
    message = login_challenge(client, kp)
    r = login(client, message, sign(kp, message))
    assert r.status_code == 200, r.text
    assert r.json()["token_type"] == "bearer"
    assert r.json()["expires_at"]
    me = client.get("/api/v1/me", headers={"Authorization": f"Bearer {r.json()['access_token']}"})
    assert me.status_code == 200
    assert me.json()["username"] == ada.username
    assert me.json()["auth"] == "access"

    # never linked
    stranger = Keypair()
    message = login_challenge(client, stranger)
    problem(login(client, message, sign(stranger, message)), 401, "wallet_not_linked")

    # unlinked
    assert client.delete(f"/api/v1/wallets/{kp.pubkey()}", headers=ada.headers).status_code == 200
    message = login_challenge(client, kp)
    problem(login(client, message, sign(kp, message)), 401, "wallet_not_linked")

    # linked to a disabled account
    assert link(client, ada, kp).status_code == 201
    with db.session() as s:
        s.scalars(select(User).where(User.username == ada.username)).one().is_active = False
    message = login_challenge(client, kp)
    problem(login(client, message, sign(kp, message)), 401, "wallet_not_linked")


# ---------------------------------------------------------------- concurrency


@pytest.fixture
def fresh_db(tmp_path: Any) -> Iterator[Database]:
    """A migrated database of this test's own, where commits are real (not the shared
    rolled-back one): concurrent requests must really race."""
    if not PG_URL:
        url = f"sqlite:///{tmp_path / 'siws.db'}"
        eng = make_engine(url)
        upgrade(eng)
        eng.dispose()
        database = Database.from_url(url)
        yield database
        database.engine.dispose()
        return
    base = make_url(PG_URL)
    name = f"{base.database}_siws_{os.environ.get('PYTEST_XDIST_WORKER', 'main')}"
    admin = make_engine(
        base.set(database="postgres").render_as_string(hide_password=False),
        isolation_level="AUTOCOMMIT",
    )

    def admin_exec(*statements: str) -> None:
        with admin.connect() as conn:
            for sql in statements:
                conn.execute(text(sql))

    admin_exec(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', f'CREATE DATABASE "{name}"')
    url = base.set(database=name).render_as_string(hide_password=False)
    eng = make_engine(url)
    upgrade(eng)
    eng.dispose()
    database = Database.from_url(url)
    try:
        yield database
    finally:
        database.engine.dispose()
        admin_exec(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


def run_together(fns: list[Callable[[], Response]]) -> list[Response]:
    barrier = threading.Barrier(len(fns))
    out: list[Any] = [None] * len(fns)

    def runner(i: int) -> None:
        barrier.wait()
        try:
            out[i] = fns[i]()
        except BaseException as exc:  # reported by the assertion below
            out[i] = exc

    threads = [threading.Thread(target=runner, args=(i,)) for i in range(len(fns))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
        assert not t.is_alive(), "a request hung"
    assert not any(isinstance(r, BaseException) for r in out), out
    return out


def test_concurrent_use_of_one_nonce_succeeds_once(
    fresh_db: Database, settings: Settings, clock: TestClock
) -> None:
    app = create_app(settings, database=fresh_db, clock=clock)
    with TestClient(app, raise_server_exceptions=False) as client:
        ada = Api(client).user("ada")
        kp = Keypair()
        message = link_challenge(client, ada, kp)
        signature = sign(kp, message)
        results = run_together([lambda: submit_link(client, ada, message, signature)] * 6)
        codes = Counter(
            (r.status_code, r.json().get("code") if r.status_code >= 400 else "ok") for r in results
        )
        assert codes == {(201, "ok"): 1, (401, "siws_nonce_used"): 5}, codes
        assert addresses(client, ada) == [str(kp.pubkey())]

        message = login_challenge(client, kp)
        signature = sign(kp, message)
        results = run_together([lambda: login(client, message, signature)] * 6)
        codes = Counter(
            (r.status_code, r.json().get("code") if r.status_code >= 400 else "ok") for r in results
        )
        assert codes == {(200, "ok"): 1, (401, "siws_nonce_used"): 5}, codes
    with fresh_db.session() as s:
        rows = s.scalars(select(SignInNonce)).all()
        assert len(rows) == 2
        assert all(r.used_at is not None for r in rows)


def test_concurrent_links_of_one_wallet_to_two_accounts(
    fresh_db: Database, settings: Settings, clock: TestClock
) -> None:
    app = create_app(settings, database=fresh_db, clock=clock)
    with TestClient(app, raise_server_exceptions=False) as client:
        api = Api(client)
        ada, bob = api.user("ada"), api.user("bob")
        kp = Keypair()
        m1, m2 = link_challenge(client, ada, kp), link_challenge(client, bob, kp)
        results = run_together(
            [
                lambda: submit_link(client, ada, m1, sign(kp, m1)),
                lambda: submit_link(client, bob, m2, sign(kp, m2)),
            ]
        )
        codes = sorted(
            (r.status_code, r.json().get("code") if r.status_code >= 400 else "ok") for r in results
        )
        assert codes == [(201, "ok"), (409, "wallet_taken")], codes
        assert len(addresses(client, ada) + addresses(client, bob)) == 1
