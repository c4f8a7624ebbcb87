"""The platform treasury keypair, stored encrypted with the master key (never plaintext on disk)."""

from __future__ import annotations

import base64
import json
import os
import secrets
from collections.abc import Mapping
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from solders.keypair import Keypair

from cyxwiz.config import ConfigError

AAD = b"cyxwiz-treasury-keypair-v1"


def seal(kp: Keypair, keys: Mapping[str, bytes]) -> dict[str, str]:
    key_id, key = next(iter(keys.items()))
    nonce = secrets.token_bytes(12)
    ct = AESGCM(key).encrypt(nonce, bytes(kp), AAD)
    return {
        "version": "1",
        "pubkey": str(kp.pubkey()),
        "key_id": key_id,
        "nonce": base64.b64encode(nonce).decode(),
        "ciphertext": base64.b64encode(ct).decode(),
    }


def unseal(doc: Mapping[str, str], keys: Mapping[str, bytes], where: str) -> Keypair:
    key = keys.get(doc.get("key_id", ""))
    if key is None:
        raise ConfigError(
            f"{where} is sealed with master key {doc.get('key_id')!r}, which is not configured "
            "(set it in CYXWIZ_MASTER_KEY or CYXWIZ_PREVIOUS_MASTER_KEYS)"
        )
    try:
        raw = AESGCM(key).decrypt(
            base64.b64decode(doc["nonce"]), base64.b64decode(doc["ciphertext"]), AAD
        )
    except (InvalidTag, KeyError, ValueError) as exc:
        raise ConfigError(f"{where}: cannot decrypt the treasury keypair ({exc!r})") from None
    kp = Keypair.from_bytes(raw)
    if str(kp.pubkey()) != doc.get("pubkey"):
        raise ConfigError(f"{where}: keypair does not match its recorded public key")
    return kp


def load_or_create(path: Path, keys: Mapping[str, bytes]) -> tuple[Keypair, bool]:
    """The treasury keypair at ``path`` (created on first use); True when it was just created."""
    if path.exists():
        return unseal(json.loads(path.read_text()), keys, str(path)), False
    kp = Keypair.from_seed(secrets.token_bytes(32))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(seal(kp, keys), fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return kp, True
