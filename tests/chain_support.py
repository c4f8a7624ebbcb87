"""Wallet-side helpers for tests: what a user's Solana wallet does, against a real chain."""

from __future__ import annotations

from typing import Any

from solders.keypair import Keypair
from solders.pubkey import Pubkey

from cyxwiz.chain import solana_pay, tokens
from cyxwiz.chain.interfaces import Chain
from cyxwiz.money import Currency


def funded_wallet(chain: Chain, currency: Currency, amount: int) -> Keypair:
    """A fresh wallet holding ``amount`` test tokens (dev-chain mint) and SOL for fees."""
    kp = tokens.new_keypair()
    chain.mint_to(owner=str(kp.pubkey()), currency=currency, amount=amount)
    return kp


def pay(
    chain: Chain,
    wallet: Keypair,
    url: str,
    *,
    amount: int | None = None,
    mint: str | None = None,
    recipient: str | None = None,
) -> str:
    """Pay a Solana Pay transfer request the way a wallet does (memo + transferChecked with the
    reference keys); ``amount``/``mint``/``recipient`` override the request (hostile payers)."""
    req = solana_pay.parse_url(url)
    ixs = []
    if recipient is not None:  # someone else's account: make sure it exists
        ixs.append(
            tokens.create_ata_ix(
                wallet.pubkey(),
                Pubkey.from_string(recipient),
                Pubkey.from_string(mint or req.spl_token or ""),
            )
        )
    if req.memo:
        ixs.append(tokens.memo_ix(req.memo, wallet.pubkey()))
    ixs.append(
        tokens.transfer_ix(
            source_owner=wallet.pubkey(),
            dest_owner=Pubkey.from_string(recipient or req.recipient),
            mint=Pubkey.from_string(mint or req.spl_token or ""),
            amount=amount if amount is not None else (req.amount or 0),
            references=tuple(Pubkey.from_string(r) for r in req.references),
        )
    )
    blockhash, _ = chain.latest_blockhash()
    return chain.send_raw(bytes(tokens.sign(ixs, [wallet], blockhash)))


def chain_of(client: Any) -> Chain:
    """The chain a TestClient's app settles on."""
    chain: Chain = client.app.state.ctx.chain
    return chain


def sign_message(wallet: Keypair, message: str) -> str:
    return str(wallet.sign_message(message.encode()))
