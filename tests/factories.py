"""Test helpers that drive the real API the way a client would."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

from fastapi.testclient import TestClient

_seq = itertools.count(1)
PASSWORD = "correct horse battery staple"


@dataclass
class Account:
    username: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


class Api:
    """Thin helpers over TestClient for common set-up steps (each asserts it worked)."""

    def __init__(self, client: TestClient) -> None:
        self.client = client

    def user(self, username: str | None = None) -> Account:
        name = username or f"user{next(_seq)}"
        r = self.client.post(
            "/api/v1/auth/register",
            json={"username": name, "email": f"{name}@example.com", "password": PASSWORD},
        )
        assert r.status_code == 201, r.text
        r = self.client.post("/api/v1/auth/login", json={"username": name, "password": PASSWORD})
        assert r.status_code == 200, r.text
        return Account(name, r.json()["access_token"])

    def model(self, owner: Account, name: str | None = None, **fields: Any) -> dict[str, Any]:
        body = {
            "name": name or f"model-{next(_seq)}",
            "title": "A test model",
            "summary": "Classifies things for tests.",
            "category": "tabular-classification",
            "tags": ["test"],
        }
        body.update(fields)
        r = self.client.post("/api/v1/models", json=body, headers=owner.headers)
        assert r.status_code == 201, r.text
        return dict(r.json())

    def version(self, owner: Account, model: str, version: str = "1.0.0") -> dict[str, Any]:
        r = self.client.post(
            f"/api/v1/models/{model}/versions", json={"version": version}, headers=owner.headers
        )
        assert r.status_code == 201, r.text
        return dict(r.json())

    def upload(
        self, owner: Account, model: str, version: str, path: str, data: bytes
    ) -> dict[str, Any]:
        r = self.client.put(
            f"/api/v1/models/{model}/versions/{version}/files/{path}",
            content=data,
            headers=owner.headers,
        )
        assert r.status_code in (200, 201), r.text
        return dict(r.json())

    def publish(self, owner: Account, model: str, version: str = "1.0.0") -> dict[str, Any]:
        r = self.client.post(
            f"/api/v1/models/{model}/versions/{version}/publish", headers=owner.headers
        )
        assert r.status_code == 200, r.text
        return dict(r.json())

    def fund(self, who: Account, amount: int, currency: str = "USDC") -> dict[str, Any]:
        """Fund ``who``'s balance the way a user does: test tokens minted to a fresh wallet on
        the dev chain, a Solana Pay deposit request, the wallet pays it, the watcher credits it."""
        from cyxwiz.money import Currency
        from tests.chain_support import chain_of, funded_wallet, pay

        chain = chain_of(self.client)
        wallet = funded_wallet(chain, Currency(currency), amount)
        r = self.client.post(
            "/api/v1/deposits", json={"amount": amount, "currency": currency}, headers=who.headers
        )
        assert r.status_code == 201, r.text
        pay(chain, wallet, r.json()["url"])
        r = self.client.post(f"/api/v1/deposits/{r.json()['id']}/scan", headers=who.headers)
        assert r.status_code == 200, r.text
        assert r.json()["credited"]["amount"] == amount, r.text
        return dict(r.json())

    def link_wallet(self, who: Account, wallet: Any) -> dict[str, Any]:
        """Link a wallet keypair to ``who`` by Sign-In With Solana (challenge, sign, submit)."""
        from tests.chain_support import sign_message

        address = str(wallet.pubkey())
        r = self.client.post(
            "/api/v1/wallets/challenge", json={"address": address}, headers=who.headers
        )
        assert r.status_code in (200, 201), r.text
        message = r.json()["message"]
        r = self.client.post(
            "/api/v1/wallets",
            json={"message": message, "signature": sign_message(wallet, message)},
            headers=who.headers,
        )
        assert r.status_code in (200, 201), r.text
        return dict(r.json())

    def published_model(
        self,
        owner: Account,
        name: str | None = None,
        files: dict[str, bytes] | None = None,
        **fields: Any,
    ) -> dict[str, Any]:
        """A public model with version 1.0.0 published holding ``files``."""
        fields.setdefault("visibility", "public")
        m = self.model(owner, name, **fields)
        full = m["full_name"]
        self.version(owner, full)
        for path, data in (files or {"model.onnx": b"onnx-bytes"}).items():
            self.upload(owner, full, "1.0.0", path, data)
        self.publish(owner, full)
        return m
