"""Settlement benchmark on the local backend: deposits credited/s and payouts/s, next to raw
LiteSVM token transfers/s in the same run.

Rows, all on this machine in one process:

- raw LiteSVM: signed ``transferChecked`` transactions executed by a bare LiteSVM (no history,
  no persistence) — the runtime's ceiling from Python (signing dominates, see PITFALLS);
- LocalChain send: the same transfers through ``LocalChain.send_raw`` (duplicate check, token
  balance deltas, the durable sqlite history + account write per transaction);
- deposits credited: N deposit requests paid by N wallets, then timed: the watcher pass
  (``watch_once``) that finds each payment by its reference, reads the transaction, and books
  one ledger transfer per signature, committed per deposit;
- payouts: N instant payouts requested (pending ledger debits), then timed: the outbox passes
  (``process_payouts``) that sign, record, send and confirm each on chain and post the ledger.

The figures are ratios against raw LiteSVM transfers/s measured in the same run.

    python bench/chain.py [--n 300] [--database-url postgresql+psycopg://postgres@127.0.0.1:5432/test]
"""

from __future__ import annotations

import argparse
import base64
import secrets
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from solders.keypair import Keypair
from solders.litesvm import LiteSVM
from solders.pubkey import Pubkey

from cyxwiz.accounts.models import User, Wallet
from cyxwiz.billing import deposits, payouts
from cyxwiz.billing.flows import _tid, earnings_account, platform_account
from cyxwiz.chain import solana_pay, tokens
from cyxwiz.chain.local import LocalChain
from cyxwiz.config import Settings
from cyxwiz.db import Database, make_engine
from cyxwiz.ledger import service as ledger
from cyxwiz.ledger.service import TransferSpec
from cyxwiz.money import Currency

sys.path.insert(0, str(Path(__file__).parent))
from ledger import scratch_database


def raw_litesvm(n: int) -> float:
    """Signed token transfers/s on a bare LiteSVM (mint, two ATAs, n transfers)."""
    from solders.system_program import CreateAccountParams, create_account
    from spl.token.constants import MINT_LEN, TOKEN_PROGRAM_ID
    from spl.token.instructions import initialize_mint, mint_to
    from spl.token.models import InitializeMintParams, MintToParams

    svm = LiteSVM()
    payer, mint, dest = Keypair(), Keypair(), Keypair()
    svm.airdrop(payer.pubkey(), 10**12)
    rent = svm.minimum_balance_for_rent_exemption(MINT_LEN)
    bh = str(svm.latest_blockhash())
    ixs = [
        create_account(
            CreateAccountParams(
                from_pubkey=payer.pubkey(),
                to_pubkey=mint.pubkey(),
                lamports=rent,
                space=MINT_LEN,
                owner=TOKEN_PROGRAM_ID,
            )
        ),
        initialize_mint(
            InitializeMintParams(
                decimals=6,
                program_id=TOKEN_PROGRAM_ID,
                mint=mint.pubkey(),
                mint_authority=payer.pubkey(),
                freeze_authority=None,
            )
        ),
        tokens.create_ata_ix(payer.pubkey(), payer.pubkey(), mint.pubkey()),
        tokens.create_ata_ix(payer.pubkey(), dest.pubkey(), mint.pubkey()),
        mint_to(
            MintToParams(
                program_id=TOKEN_PROGRAM_ID,
                mint=mint.pubkey(),
                dest=Pubkey.from_string(tokens.ata(payer.pubkey(), mint.pubkey())),
                mint_authority=payer.pubkey(),
                amount=10**15,
            )
        ),
    ]
    svm.send_transaction(tokens.sign(ixs, [payer, mint], bh))
    t0 = time.perf_counter()
    for i in range(n):
        ix = tokens.transfer_ix(
            source_owner=payer.pubkey(), dest_owner=dest.pubkey(), mint=mint.pubkey(), amount=1 + i
        )
        svm.send_transaction(tokens.sign([ix], [payer], bh))
    return n / (time.perf_counter() - t0)


def local_send(chain: LocalChain, n: int) -> float:
    payer = tokens.new_keypair()
    chain.mint_to(owner=str(payer.pubkey()), currency=Currency.USDC, amount=10**12)
    mint = Pubkey.from_string(chain.mint_of(Currency.USDC))
    dest = Pubkey.from_string(chain.treasury)
    bh, _ = chain.latest_blockhash()
    txs = [
        bytes(
            tokens.sign(
                [
                    tokens.transfer_ix(
                        source_owner=payer.pubkey(), dest_owner=dest, mint=mint, amount=1 + i
                    )
                ],
                [payer],
                bh,
            )
        )
        for i in range(n)
    ]
    t0 = time.perf_counter()
    for raw in txs:
        chain.send_raw(raw)
    return n / (time.perf_counter() - t0)


def users(db: Database, n: int, prefix: str) -> list[uuid.UUID]:
    ids = []
    with db.session() as s:
        for i in range(n):
            u = User(username=f"{prefix}{i}", email=f"{prefix}{i}@bench.example", password_hash="x")
            s.add(u)
            s.flush()
            ids.append(u.id)
    return ids


def pay_url(chain: LocalChain, wallet: Keypair, url: str) -> bytes:
    """What a wallet signs for a Solana Pay transfer request (memo + transferChecked + reference)."""
    req = solana_pay.parse_url(url)
    ixs = [tokens.memo_ix(req.memo or "", wallet.pubkey())] if req.memo else []
    ixs.append(
        tokens.transfer_ix(
            source_owner=wallet.pubkey(),
            dest_owner=Pubkey.from_string(req.recipient),
            mint=Pubkey.from_string(req.spl_token or ""),
            amount=req.amount or 0,
            references=tuple(Pubkey.from_string(r) for r in req.references),
        )
    )
    bh, _ = chain.latest_blockhash()
    return bytes(tokens.sign(ixs, [wallet], bh))


def deposits_per_second(db: Database, settings: Settings, chain: LocalChain, n: int) -> float:
    """N paid requests; timed: the watcher pass that credits them all."""
    ids = users(db, n, "dep")
    now = datetime.now(UTC)
    wallet = tokens.new_keypair()
    chain.mint_to(owner=str(wallet.pubkey()), currency=Currency.USDC, amount=5_000_000 * n)
    with db.session() as s:
        for uid in ids:
            user = s.get(User, uid)
            assert user is not None
            dep, _ = deposits.create_deposit(
                s,
                settings=settings,
                chain=chain,
                user=user,
                currency=Currency.USDC,
                amount=5_000_000,
                idempotency_key="bench",
                now=now,
            )
            chain.send_raw(
                pay_url(chain, wallet, deposits.payment_url(dep, username=user.username))
            )
    t0 = time.perf_counter()
    credited = deposits.watch_once(db, settings=settings, chain=chain, now=now)
    elapsed = time.perf_counter() - t0
    assert credited == n, (credited, n)
    return n / elapsed


def payouts_per_second(db: Database, settings: Settings, chain: LocalChain, n: int) -> float:
    """N requested instant payouts; timed: the outbox passes that sign, send, confirm, post."""
    ids = users(db, n, "pay")
    now = datetime.now(UTC)
    with db.session() as s:
        from cyxwiz.billing.treasury import record_float

        record_float(s, chain=chain, currency=Currency.USDC, mint_amount=2_000_000 * n)
        float_acct = platform_account(s, "treasury", Currency.USDC)
        for uid in ids:
            s.add(Wallet(user_id=uid, address=str(tokens.new_keypair().pubkey())))
            ledger.create_transfer(
                s,
                TransferSpec(
                    id=_tid("bench-earn", uid),
                    code="bench.seed",
                    debit=float_acct.id,
                    credit=earnings_account(s, uid, Currency.USDC).id,
                    amount=2_000_000,
                ),
            )
        s.flush()
        for uid in ids:
            user = s.get(User, uid)
            assert user is not None
            payouts.request_payout(
                s,
                settings=settings,
                user=user,
                amount=2_000_000,
                currency=Currency.USDC,
                source="earnings",
                paid_in=None,
                kind="instant",
                wallet=None,
                idempotency_key="bench",
                now=now,
            )
    t0 = time.perf_counter()
    confirmed = 0
    for _ in range(5):
        got = payouts.process_payouts(db, settings=settings, chain=chain, now=now, limit=n)
        confirmed += got["confirmed"]
        if confirmed == n:
            break
    elapsed = time.perf_counter() - t0
    assert confirmed == n, (confirmed, n)
    return n / elapsed


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument(
        "--pg-url",
        default=None,
        help="also run on PostgreSQL (a scratch database is created and dropped)",
    )
    args = ap.parse_args()
    raw = raw_litesvm(args.n)
    rows = [("raw LiteSVM transferChecked (no persistence)", raw)]
    backends = ["sqlite"] + (["postgresql"] if args.pg_url else [])
    for backend in backends:
        with tempfile.TemporaryDirectory(prefix="cyxwiz-bench-chain-") as d:
            tmp = Path(d)
            settings = Settings(
                data_dir=tmp, master_key=base64.b64encode(secrets.token_bytes(32)).decode()
            )
            chain = LocalChain(directory=tmp / "chain", master_keys=settings.master_keys)
            with scratch_database(backend, args.pg_url or "", tmp) as url:
                db = Database(make_engine(url))
                if backend == "sqlite":
                    rows.append(
                        ("LocalChain.send_raw (sqlite history, fsync)", local_send(chain, args.n))
                    )
                rows.append(
                    (
                        f"deposits credited ({backend} ledger)",
                        deposits_per_second(db, settings, chain, args.n),
                    )
                )
                rows.append(
                    (
                        f"payouts sent+confirmed ({backend} ledger)",
                        payouts_per_second(db, settings, chain, args.n),
                    )
                )
                db.engine.dispose()
            chain.close()
    print(f"\n{'path':52} {'per s':>9} {'× raw':>7}")
    for name, rate in rows:
        print(f"{name:52} {rate:9.0f} {rate / raw:7.2f}")


if __name__ == "__main__":
    main()
