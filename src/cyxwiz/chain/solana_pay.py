"""Solana Pay transfer request URLs (spec: docs.solanapay.com/spec), built and parsed.

``solana:<recipient>?amount=<decimal>&spl-token=<mint>&reference=<key>&label=..&message=..&memo=..``
The amount is in user units (``1.5`` = 1_500_000 base units at 6 decimals); the wallet sends a
``transferChecked`` to the recipient's associated token account with the reference keys as
read-only accounts, and the memo (if any) in a Memo instruction before it.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from urllib.parse import parse_qs, quote, urlsplit

from cyxwiz.chain.tokens import DECIMALS, pubkey
from cyxwiz.errors import InvalidInput


@dataclass(frozen=True)
class TransferRequest:
    recipient: str
    amount: int | None  # base units; None = the wallet asks the user
    spl_token: str | None
    references: tuple[str, ...] = field(default_factory=tuple)
    label: str | None = None
    message: str | None = None
    memo: str | None = None


def format_units(amount: int, decimals: int = DECIMALS) -> str:
    whole, frac = divmod(amount, 10**decimals)
    text = f"{whole}.{frac:0{decimals}d}".rstrip("0").rstrip(".")
    return text


def build_url(req: TransferRequest) -> str:
    parts = []
    if req.amount is not None:
        parts.append(f"amount={format_units(req.amount)}")
    if req.spl_token:
        parts.append(f"spl-token={req.spl_token}")
    parts += [f"reference={r}" for r in req.references]
    for key in ("label", "message", "memo"):
        value = getattr(req, key)
        if value:
            parts.append(f"{key}={quote(value, safe='')}")
    return f"solana:{req.recipient}" + ("?" + "&".join(parts) if parts else "")


def parse_url(url: str) -> TransferRequest:
    """A transfer request URL → its fields (a clear 422 for anything malformed)."""
    split = urlsplit(url.strip())
    if split.scheme != "solana" or not split.path:
        raise InvalidInput(
            "not a Solana Pay transfer request (solana:<recipient>?...)", code="invalid_payment_url"
        )
    recipient = str(pubkey(split.path, what="recipient"))
    q = parse_qs(split.query, keep_blank_values=False, strict_parsing=False)
    for key, values in q.items():
        if key != "reference" and len(values) > 1:
            raise InvalidInput(f"{key} given more than once", code="invalid_payment_url")
    amount = None
    if "amount" in q:
        text = q["amount"][0]
        try:
            value = Decimal(text)
        except InvalidOperation:
            raise InvalidInput(
                f"amount {text!r} is not a number", code="invalid_payment_url"
            ) from None
        if value <= 0 or not value.is_finite() or -value.as_tuple().exponent > DECIMALS:  # type: ignore[operator]
            raise InvalidInput(
                f"amount {text!r} is not a positive amount with at most {DECIMALS} decimals",
                code="invalid_payment_url",
            )
        amount = int(value.scaleb(DECIMALS))
    token = q.get("spl-token", [None])[0]
    if token is not None:
        token = str(pubkey(token, what="spl-token"))
    refs = tuple(str(pubkey(r, what="reference")) for r in q.get("reference", []))
    return TransferRequest(
        recipient=recipient,
        amount=amount,
        spl_token=token,
        references=refs,
        label=q.get("label", [None])[0],
        message=q.get("message", [None])[0],
        memo=q.get("memo", [None])[0],
    )


def qr_png(url: str, *, scale: int = 6) -> bytes:
    """The URL as a QR code PNG (what a phone wallet scans)."""
    import segno

    buf = io.BytesIO()
    segno.make(url, error="m").save(buf, kind="png", scale=scale, border=2)
    return buf.getvalue()
