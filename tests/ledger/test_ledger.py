"""Ledger semantics on the real database: idempotency, limits, pending/post/void, linking, check."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session

from cyxwiz.db import Database
from cyxwiz.errors import InvalidInput
from cyxwiz.ledger import service as ledger
from cyxwiz.ledger.models import LedgerAccount
from cyxwiz.ledger.service import InsufficientFunds, PendingResolved, TransferExists, TransferSpec
from cyxwiz.money import Currency

USDC = Currency.USDC


def accounts(s: Session) -> tuple[LedgerAccount, LedgerAccount, LedgerAccount]:
    src = ledger.get_or_create_account(
        s, code="t:vault", currency=USDC, kind="vault", no_overdraft=False
    )
    alice = ledger.get_or_create_account(s, code="t:alice", currency=USDC, kind="user_balance")
    bob = ledger.get_or_create_account(s, code="t:bob", currency=USDC, kind="user_balance")
    return src, alice, bob


def fund(s: Session, src: LedgerAccount, to: LedgerAccount, amount: int) -> None:
    ledger.create_transfer(
        s, TransferSpec(id=uuid.uuid4(), code="fund", debit=src.id, credit=to.id, amount=amount)
    )


def test_posted_transfer_and_idempotent_retry(db: Database) -> None:
    with db.session() as s:
        src, alice, _ = accounts(s)
        tid = uuid.uuid4()
        spec = TransferSpec(id=tid, code="fund", debit=src.id, credit=alice.id, amount=100)
        first = ledger.create_transfer(s, spec)
        again = ledger.create_transfer(s, spec)
        assert again.id == first.id
        assert ledger.balance_of(s, alice.id).available == 100
        with pytest.raises(TransferExists):
            ledger.create_transfer(
                s, TransferSpec(id=tid, code="fund", debit=src.id, credit=alice.id, amount=101)
            )
        assert ledger.balance_of(s, alice.id).posted == 100
        assert ledger.check(s).ok


def test_overdraft_refused_and_nothing_moves(db: Database) -> None:
    with db.session() as s:
        src, alice, bob = accounts(s)
        fund(s, src, alice, 50)
        with pytest.raises(InsufficientFunds):
            ledger.create_transfer(
                s,
                TransferSpec(id=uuid.uuid4(), code="pay", debit=alice.id, credit=bob.id, amount=51),
            )
        assert ledger.balance_of(s, alice.id).available == 50
        assert ledger.balance_of(s, bob.id).available == 0
        assert ledger.check(s).ok


def test_pending_reserves_then_post_partial_and_void(db: Database) -> None:
    with db.session() as s:
        src, alice, bob = accounts(s)
        fund(s, src, alice, 100)
        p1 = ledger.create_transfer(
            s,
            TransferSpec(
                id=uuid.uuid4(),
                code="hold",
                debit=alice.id,
                credit=bob.id,
                amount=70,
                kind="pending",
            ),
        )
        bal = ledger.balance_of(s, alice.id)
        assert (bal.posted, bal.pending_debits, bal.available) == (100, 70, 30)
        with pytest.raises(InsufficientFunds):  # pending debits count against the limit
            ledger.create_transfer(
                s,
                TransferSpec(
                    id=uuid.uuid4(),
                    code="hold",
                    debit=alice.id,
                    credit=bob.id,
                    amount=31,
                    kind="pending",
                ),
            )
        with pytest.raises(InvalidInput):
            ledger.create_transfer(
                s,
                TransferSpec(
                    id=uuid.uuid4(), code="post", kind="post", pending_id=p1.id, amount=71
                ),
            )
        ledger.create_transfer(
            s, TransferSpec(id=uuid.uuid4(), code="post", kind="post", pending_id=p1.id, amount=60)
        )
        bal = ledger.balance_of(s, alice.id)
        assert (bal.posted, bal.pending_debits, bal.available) == (40, 0, 40)
        assert ledger.balance_of(s, bob.id).posted == 60
        with pytest.raises(PendingResolved):
            ledger.create_transfer(
                s, TransferSpec(id=uuid.uuid4(), code="void", kind="void", pending_id=p1.id)
            )
        p2 = ledger.create_transfer(
            s,
            TransferSpec(
                id=uuid.uuid4(),
                code="hold",
                debit=alice.id,
                credit=bob.id,
                amount=40,
                kind="pending",
            ),
        )
        ledger.create_transfer(
            s, TransferSpec(id=uuid.uuid4(), code="void", kind="void", pending_id=p2.id)
        )
        assert ledger.balance_of(s, alice.id).available == 40
        assert ledger.balance_of(s, bob.id).pending_credits == 0
        assert ledger.check(s).ok


def test_linked_batch_is_all_or_nothing(db: Database) -> None:
    with db.session() as s:
        src, alice, bob = accounts(s)
        fund(s, src, alice, 10)
        ok_id = uuid.uuid4()
        with pytest.raises(InsufficientFunds):
            ledger.create_transfers(
                s,
                [
                    TransferSpec(id=ok_id, code="a", debit=alice.id, credit=bob.id, amount=10),
                    TransferSpec(
                        id=uuid.uuid4(), code="b", debit=alice.id, credit=bob.id, amount=1
                    ),
                ],
            )
        assert ledger.balance_of(s, alice.id).available == 10
        assert ledger.balance_of(s, bob.id).available == 0
        assert ledger.check(s).ok


def test_currency_mismatch_and_bad_specs(db: Database) -> None:
    with db.session() as s:
        src, alice, _ = accounts(s)
        cyx = ledger.get_or_create_account(
            s, code="t:alice:cyx", currency=Currency.CYX, kind="user_balance"
        )
        with pytest.raises(InvalidInput):
            ledger.create_transfer(
                s, TransferSpec(id=uuid.uuid4(), code="x", debit=src.id, credit=cyx.id, amount=1)
            )
        with pytest.raises(InvalidInput):
            ledger.create_transfer(
                s, TransferSpec(id=uuid.uuid4(), code="x", debit=src.id, credit=alice.id, amount=-1)
            )
        with pytest.raises(InvalidInput):
            ledger.create_transfer(
                s,
                TransferSpec(id=uuid.uuid4(), code="x", debit=alice.id, credit=alice.id, amount=1),
            )


def test_check_detects_a_tampered_balance(db: Database) -> None:
    with db.session() as s:
        src, alice, _ = accounts(s)
        fund(s, src, alice, 100)
        s.execute(
            update(LedgerAccount).where(LedgerAccount.id == alice.id).values(credits_posted=1000)
        )
        report = ledger.check(s)
        assert not report.ok
        assert any("t:alice" in p and "replay" in p for p in report.problems)
        assert any("Σdebits_posted" in p for p in report.problems)


def test_get_or_create_account_is_stable(db: Database) -> None:
    with db.session() as s:
        a = ledger.get_or_create_account(s, code="t:same", currency=USDC, kind="user_balance")
        b = ledger.get_or_create_account(s, code="t:same", currency=USDC, kind="user_balance")
        assert a.id == b.id
