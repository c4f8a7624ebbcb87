"""Test helpers that drive the real API the way a client would."""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass
from typing import Any

from fastapi.testclient import TestClient

_seq = itertools.count(1)
PASSWORD = "correct horse battery staple"


@functools.cache
def tiny_onnx(scale: float = 2.0) -> bytes:
    """A real, valid ONNX model (y = x * scale, float[N, 4]) of a few hundred bytes: what
    publishing accepts as a ``.onnx`` file (random bytes named model.onnx are refused)."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 4])
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, [None, 4])
    w = numpy_helper.from_array(np.full((4,), scale, dtype=np.float32), name="scale")
    graph = helper.make_graph([helper.make_node("Mul", ["input", "scale"], ["output"])],
                              "tiny", [x], [y], initializer=[w])  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return bytes(model.SerializeToString())


def onnx_with_payload(payload: bytes) -> bytes:
    """``tiny_onnx()`` carrying ``payload`` as an extra (unused) uint8 initializer: a valid
    ONNX model about ``len(payload)`` bytes long with content of the caller's choosing."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load_model_from_string(tiny_onnx())
    extra = helper.make_tensor("payload", TensorProto.UINT8, [len(payload)], payload, raw=True)
    model.graph.initializer.append(extra)
    return bytes(model.SerializeToString())


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
        for path, data in (files or {"model.onnx": tiny_onnx()}).items():
            self.upload(owner, full, "1.0.0", path, data)
        self.publish(owner, full)
        return m
