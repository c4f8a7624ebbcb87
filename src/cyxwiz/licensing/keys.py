"""Offline-verifiable license keys: ed25519-signed tokens.

Format: ``cxwl1.<base64url(payload JSON)>.<base64url(signature)>``; the signature covers
``cxwl1.<payload>``. The payload names the license id, model, buyer, scope, issue time and
expiry (null = perpetual) and the ``kid`` of the signing key. Anyone holding the public key
(``GET /api/v1/licenses/public-key``) can verify a key without calling us; the marketplace also
checks the license's live status (a refunded license's key stops working for downloads).

The signing keys are derived from the master keys with HKDF, so rotating the master key keeps
old license keys verifiable for as long as the old master key is listed as a previous key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from cyxwiz.errors import DomainError

PREFIX = "cxwl1"


class InvalidLicenseKey(DomainError):
    code = "invalid_license_key"
    status = 401
    title = "Invalid license key"


def _b64e(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _b64d(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class LicenseClaims:
    license_id: str
    model: str
    model_id: str
    buyer: str
    scope: str
    issued_at: int
    expires_at: int | None
    kid: str


class LicenseSigner:
    """Signs with the key derived from the active master key; verifies with any known one."""

    def __init__(self, master_keys: dict[str, bytes]) -> None:
        self._private: dict[str, Ed25519PrivateKey] = {}
        for master in master_keys.values():
            seed = HKDF(
                algorithm=hashes.SHA256(), length=32, salt=None, info=b"cyxwiz license signing v1"
            ).derive(master)
            key = Ed25519PrivateKey.from_private_bytes(seed)
            self._private[_kid(key.public_key())] = key
        self.active_kid = next(iter(self._private))

    def public_keys(self) -> dict[str, str]:
        """kid -> base64 raw ed25519 public key (the first is the active one)."""
        return {
            kid: base64.b64encode(
                k.public_key().public_bytes(
                    serialization.Encoding.Raw, serialization.PublicFormat.Raw
                )
            ).decode()
            for kid, k in self._private.items()
        }

    def sign(
        self,
        *,
        license_id: str,
        model: str,
        model_id: str,
        buyer: str,
        scope: str,
        issued_at: datetime,
        expires_at: datetime | None,
    ) -> str:
        payload = {
            "v": 1,
            "kid": self.active_kid,
            "lid": license_id,
            "model": model,
            "mid": model_id,
            "sub": buyer,
            "scope": scope,
            "iat": int(issued_at.timestamp()),
            "exp": int(expires_at.timestamp()) if expires_at else None,
        }
        body = (
            f"{PREFIX}.{_b64e(json.dumps(payload, separators=(',', ':'), sort_keys=True).encode())}"
        )
        sig = self._private[self.active_kid].sign(body.encode())
        return f"{body}.{_b64e(sig)}"

    def verify(self, token: str, *, now: datetime) -> LicenseClaims:
        """The claims of an authentic, unexpired key; InvalidLicenseKey otherwise."""
        parts = token.strip().split(".")
        if len(parts) != 3 or parts[0] != PREFIX:
            raise InvalidLicenseKey("not a CyxWiz license key")
        try:
            payload: dict[str, Any] = json.loads(_b64d(parts[1]))
            sig = _b64d(parts[2])
        except (ValueError, binascii.Error):
            raise InvalidLicenseKey("license key is malformed") from None
        key = self._private.get(str(payload.get("kid")))
        if key is None:
            raise InvalidLicenseKey("license key was signed by an unknown key")
        try:
            key.public_key().verify(sig, f"{parts[0]}.{parts[1]}".encode())
        except InvalidSignature:
            raise InvalidLicenseKey("license key signature is invalid") from None
        exp = payload.get("exp")
        if exp is not None and int(exp) <= now.timestamp():
            raise InvalidLicenseKey("license key has expired", code="license_expired")
        return LicenseClaims(
            license_id=str(payload["lid"]),
            model=str(payload["model"]),
            model_id=str(payload["mid"]),
            buyer=str(payload["sub"]),
            scope=str(payload["scope"]),
            issued_at=int(payload["iat"]),
            expires_at=int(exp) if exp is not None else None,
            kid=str(payload["kid"]),
        )


def _kid(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:8]
