"""Provenance attestations: a Memo transaction per published version carrying its manifest sha256.

The life of an attestation (docs/chain.md, "Provenance attestations"):

* ``record_attestation`` runs in the publish transaction: it signs (never sends) the memo
  transaction and stores it on an ``Attestation`` row, ``pending``. If the chain cannot be
  reached, the row is stored unsigned and publishing still succeeds.
* ``send_pending`` is the outbox sender, run after commit by a background loop: it creates
  rows for published versions that have none (backfill), signs unsigned rows, sends, confirms,
  and signs again with a fresh blockhash when a transaction can no longer land. Each row is
  handled in its own transaction with the row locked, so two senders never sign one version
  twice; a duplicate that lands anyway carries the identical memo and changes no verdict.
* ``verify`` checks the on-chain memo against the stored manifest and, with ``deep``, every
  file's bytes (decrypted from the blob store and hashed) against the manifest.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from cyxwiz.catalog.models import ModelVersion
from cyxwiz.catalog.service import manifest_digest
from cyxwiz.chain.interfaces import (
    BlockhashExpired,
    Chain,
    ChainUnavailable,
    TransactionRejected,
    reached,
)
from cyxwiz.db import Database
from cyxwiz.errors import DomainError
from cyxwiz.provenance.models import Attestation
from cyxwiz.storage import BlobStore

log = logging.getLogger(__name__)

MEMO_VERSION = "v1"
MEMO_PREFIX = f"cyxwiz-attest:{MEMO_VERSION}"
MAX_MEMO_BYTES = 566  # what one Memo instruction carries in a legacy transaction
_MEMO_RE = re.compile(
    r"^cyxwiz-attest:(?P<v>v\d+) (?P<slug>[^\s@/]+/[^\s@/]+@[^\s@/]+) sha256:(?P<sha>[0-9a-f]{64})$"
)
OPEN = ("pending", "sent", "failed")  # statuses the sender still works on
# An attestation counts as landed only when final: a "confirmed" one can still be dropped by a
# fork, and a row marked landed is never sent again.
CONFIRMED_AT = "finalized"


# ---------------------------------------------------------------- the memo


def version_slug(version: ModelVersion) -> str:
    """``owner/name@version``, as it appears in the memo."""
    return f"{version.model.full_name}@{version.version}"


def attestation_memo(slug: str, manifest_sha256: str) -> str:
    """The memo text: ``cyxwiz-attest:v1 owner/name@version sha256:<64 hex>`` (≤ 566 bytes)."""
    memo = f"{MEMO_PREFIX} {slug} sha256:{manifest_sha256}"
    if parse_memo(memo) is None or len(memo.encode()) > MAX_MEMO_BYTES:
        raise ValueError(f"cannot build an attestation memo for {slug!r}")
    return memo


@dataclass(frozen=True)
class ParsedMemo:
    version: str  # memo format version, "v1"
    slug: str  # owner/name@version
    sha256: str  # the manifest digest

    @property
    def model(self) -> str:
        return self.slug.rsplit("@", 1)[0]

    @property
    def label(self) -> str:
        return self.slug.rsplit("@", 1)[1]


def parse_memo(text: str) -> ParsedMemo | None:
    """The parts of an attestation memo, or None if ``text`` is not one."""
    m = _MEMO_RE.match(text.strip())
    if m is None:
        return None
    return ParsedMemo(version=m["v"], slug=m["slug"], sha256=m["sha"])


# ---------------------------------------------------------------- at publish


def chain_or_none(open_chain: Callable[[], Chain]) -> Chain | None:
    """The chain if it can be opened now; None (logged) otherwise — publishing never waits on it."""
    try:
        return open_chain()
    except Exception as exc:  # any backend failure: the sender attests later
        log.warning("chain unavailable at publish (%s); the attestation is signed later", exc)
        return None


def get_attestation(session: Session, *, version: ModelVersion) -> Attestation | None:
    return session.scalar(select(Attestation).where(Attestation.version_id == version.id))


def record_attestation(
    session: Session, *, version: ModelVersion, chain: Chain | None
) -> Attestation:
    """Store the version's attestation (idempotent): signed now if the chain answers, else
    unsigned; either way ``pending``, sent after commit by ``send_pending``. Never raises for
    chain trouble."""
    existing = get_attestation(session, version=version)
    if existing is not None:
        return existing
    row = _new_row(version)
    if chain is not None:
        try:
            _sign(row, chain)
        except Exception as exc:  # never fail a publish for the chain
            row.error = _why(exc)
            log.warning(
                "could not sign the attestation of %s (%s); the sender signs it later",
                row.slug,
                row.error,
            )
    session.add(row)
    session.flush()
    return row


def _new_row(version: ModelVersion) -> Attestation:
    if version.status != "published" or not version.manifest_sha256:
        raise ValueError("only published versions are attested")
    slug = version_slug(version)
    return Attestation(
        version_id=version.id,
        slug=slug,
        manifest_sha256=version.manifest_sha256,
        memo=attestation_memo(slug, version.manifest_sha256),
        status="pending",
        attempts=0,
    )


def _sign(row: Attestation, chain: Chain) -> None:
    sent = chain.sign_memo(row.memo)
    row.signature, row.raw_tx = sent.signature, sent.raw
    row.last_valid_block_height = sent.last_valid_block_height
    row.attempts = (row.attempts or 0) + 1
    row.status = "pending"


def _why(exc: BaseException) -> str:
    text = exc.detail if isinstance(exc, DomainError) else f"{type(exc).__name__}: {exc}"
    return str(text)[:500]


# ---------------------------------------------------------------- the outbox sender


@dataclass
class SendReport:
    """What one ``send_pending`` pass did."""

    created: int = 0  # attestations backfilled for published versions that had none
    signed: int = 0  # transactions signed (first time or again with a fresh blockhash)
    sent: int = 0
    confirmed: int = 0
    expired: int = 0  # transactions that can no longer land (signed again next)
    errors: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.created or self.signed or self.sent or self.confirmed or self.expired)


def send_pending(db: Database, chain: Chain, *, now: datetime, batch: int = 50) -> SendReport:
    """One pass of the attestation outbox: backfill, sign, send, confirm, re-sign expired ones.

    Idempotent and safe to run in several processes at once: every row is handled in its own
    transaction with the row locked (PostgreSQL ``FOR UPDATE SKIP LOCKED``; SQLite has one
    writer), its new signature is committed before the transaction is sent, and it is signed
    again only once the old transaction can never land.
    """
    report = SendReport()
    report.created = _backfill(db, limit=batch)
    height = chain.block_height()  # read before any status, so "expired" is never premature
    with db.session() as session:
        ids = list(
            session.scalars(
                select(Attestation.id)
                .where(Attestation.status.in_(OPEN))
                .order_by(Attestation.created_at)
                .limit(batch)
            )
        )
    for aid in ids:
        try:
            with db.session() as session:
                row = session.scalar(
                    select(Attestation)
                    .where(Attestation.id == aid)
                    .with_for_update(skip_locked=True)
                )
                if row is None or row.status not in OPEN:
                    continue
                _step(session, row, chain=chain, height=height, now=now, report=report)
        except ChainUnavailable as exc:
            report.errors.append(_why(exc))
            break  # the next pass retries every row
        except Exception as exc:
            log.exception("attestation %s: step failed; retried next pass", aid)
            report.errors.append(_why(exc))
    return report


def _backfill(db: Database, *, limit: int) -> int:
    """Unsigned attestation rows for published versions without one (a bounded batch)."""
    made = 0
    with db.session() as session:
        versions = list(
            session.scalars(
                select(ModelVersion)
                .outerjoin(Attestation, Attestation.version_id == ModelVersion.id)
                .where(
                    ModelVersion.status == "published",
                    ModelVersion.manifest_sha256.is_not(None),
                    Attestation.id.is_(None),
                )
                .order_by(ModelVersion.published_at)
                .limit(limit)
            )
        )
        for version in versions:
            try:
                with session.begin_nested():
                    session.add(_new_row(version))
            except IntegrityError:
                continue  # another sender created it first
            made += 1
    return made


def _step(
    session: Session,
    row: Attestation,
    *,
    chain: Chain,
    height: int,
    now: datetime,
    report: SendReport,
) -> None:
    resign = row.signature is None
    if row.signature is not None:
        status = chain.statuses([row.signature])[0]
        if reached(status, CONFIRMED_AT):
            _confirm(row, chain, now, report)
            return
        if status == "failed":  # landed with an error: no valid memo; sign a new one
            resign = True
        elif status is not None:
            return  # processed; waiting for the commitment
        elif row.status == "failed" or height > (row.last_valid_block_height or 0):
            resign = True  # it can never land now
    if resign:
        if row.signature is not None and row.status != "failed":
            report.expired += 1
        _sign(row, chain)
        session.commit()  # the new signature is on record before anything is sent
        report.signed += 1
    if row.raw_tx is None or row.signature is None:  # pragma: no cover - both set above
        return
    try:
        chain.send_raw(row.raw_tx)  # (re)sending the same signed transaction is harmless
    except BlockhashExpired as exc:
        row.status, row.error = "failed", _why(exc)  # signed again next pass
        report.expired += 1
        return
    except TransactionRejected as exc:
        # "already processed" after a crash between send and commit, or a real refusal (kept
        # pending and sent again until its blockhash expires, then signed again)
        row.error = _why(exc)
        status = chain.statuses([row.signature])[0]
        if reached(status, CONFIRMED_AT):
            _confirm(row, chain, now, report)
        return
    if row.status != "sent":
        report.sent += 1
    row.status, row.error = "sent", None
    if reached(chain.statuses([row.signature])[0], CONFIRMED_AT):  # local chains land at once
        _confirm(row, chain, now, report)


def _confirm(row: Attestation, chain: Chain, now: datetime, report: SendReport) -> None:
    assert row.signature is not None
    tx = chain.transaction(row.signature)
    row.status, row.error = "confirmed", None
    row.slot = tx.slot if tx is not None else row.slot
    row.confirmed_at = now
    report.confirmed += 1


# ---------------------------------------------------------------- verification


@dataclass(frozen=True)
class FileCheck:
    path: str
    expected: str | None  # sha256 in the stored manifest (None: not in the manifest)
    actual: str | None  # recomputed from the blob (deep) or the file's recorded sha256
    ok: bool
    error: str | None = None


@dataclass
class VerifyReport:
    """Does the stored version match its on-chain attestation?"""

    slug: str
    status: str  # the attestation's status, or "missing"
    signature: str | None
    slot: int | None
    confirmed_at: datetime | None
    on_chain: bool  # the transaction was found on chain, without error
    signer: str | None  # who signed it (the marketplace treasury)
    memo: str | None  # the attestation memo found in the transaction
    memo_slug: str | None
    memo_sha256: str | None
    manifest_sha256: str | None  # stored digest
    manifest_recomputed: str | None  # digest of the stored manifest, recomputed now
    deep: bool
    files: list[FileCheck]
    verified: bool = False
    summary: str = ""
    note: str | None = None

    @property
    def first_differing(self) -> FileCheck | None:
        return next((f for f in self.files if not f.ok), None)


def verify(
    session: Session,
    *,
    version: ModelVersion,
    chain: Chain,
    blobs: BlobStore,
    deep: bool,
) -> VerifyReport:
    """Check a published version against its on-chain memo; ``deep`` also re-hashes every file's
    decrypted bytes. Never trusts the stored digest alone: the manifest is hashed again."""
    slug = version_slug(version)
    row = get_attestation(session, version=version)
    manifest: dict[str, Any] = version.manifest or {}
    report = VerifyReport(
        slug=slug,
        status=row.status if row is not None else "missing",
        signature=row.signature if row is not None else None,
        slot=row.slot if row is not None else None,
        confirmed_at=row.confirmed_at if row is not None else None,
        on_chain=False,
        signer=None,
        memo=None,
        memo_slug=None,
        memo_sha256=None,
        manifest_sha256=version.manifest_sha256,
        manifest_recomputed=manifest_digest(manifest) if version.manifest is not None else None,
        deep=deep,
        files=_check_files(version, manifest, blobs, deep=deep),
    )
    if row is not None and row.signature is not None:
        tx = chain.transaction(row.signature)
        if tx is not None and tx.err is None:
            report.on_chain = True
            report.slot = tx.slot
            report.signer = tx.signers[0] if tx.signers else None
            for text in tx.memos:
                parsed = parse_memo(text)
                if parsed is not None:
                    report.memo, report.memo_slug, report.memo_sha256 = (
                        text,
                        parsed.slug,
                        parsed.sha256,
                    )
                    break
    report.verified, report.summary = _verdict(report)
    return report


def _check_files(
    version: ModelVersion, manifest: dict[str, Any], blobs: BlobStore, *, deep: bool
) -> list[FileCheck]:
    entries = {str(e["path"]): str(e["sha256"]) for e in manifest.get("files", [])}
    rows = {f.path: f for f in version.files}
    out: list[FileCheck] = []
    for path in sorted(entries.keys() | rows.keys()):
        expected = entries.get(path)
        f = rows.get(path)
        if f is None:
            out.append(FileCheck(path, expected, None, False, "the file is missing"))
            continue
        actual: str | None = f.sha256
        error = None
        if deep:
            try:
                actual = _hash_blob(blobs, f.sha256, f.size)
            except Exception as exc:  # missing or corrupt blob: a failed check, not a crash
                actual, error = None, _why(exc)
        if expected is None:
            error = error or "the file is not in the attested manifest"
        out.append(
            FileCheck(path, expected, actual, expected is not None and actual == expected, error)
        )
    return out


def _hash_blob(blobs: BlobStore, address: str, size: int) -> str:
    """sha256 of the bytes the file routes serve (the blob's first ``size`` plaintext bytes),
    decrypted and hashed as they stream (constant memory)."""
    h = hashlib.sha256()
    for piece in blobs.read_range(address, 0, size):
        h.update(piece)
    return h.hexdigest()


def _verdict(r: VerifyReport) -> tuple[bool, str]:
    how = "re-hashed from storage" if r.deep else "by recorded sha256"
    bad = r.first_differing
    if bad is not None:
        if bad.expected is None:
            why = f"{bad.path} is not in the attested manifest"
        elif bad.actual is None:
            why = f"{bad.path} differs: {bad.error or 'unreadable'}"
        else:
            why = (
                f"{bad.path} differs from the attested manifest: expected sha256 "
                f"{bad.expected[:16]}…, found {bad.actual[:16]}…"
            )
        return False, why
    if r.status == "missing" or r.signature is None:
        return False, f"{r.slug} is not attested on chain yet (the sender signs it shortly)"
    if not r.on_chain:
        return False, (
            f"{r.slug}: attestation transaction {r.signature} is not on chain "
            f"(status {r.status}; it may still be in flight)"
        )
    if r.memo is None:
        return False, f"{r.slug}: transaction {r.signature} carries no attestation memo"
    if r.memo_slug != r.slug:
        return False, f"the on-chain memo attests {r.memo_slug}, not {r.slug}"
    if r.manifest_recomputed != r.manifest_sha256:
        return False, "the stored manifest does not hash to its recorded digest (it was altered)"
    if r.memo_sha256 != r.manifest_sha256:
        return False, (
            f"the manifest sha256 {str(r.manifest_sha256)[:16]}… differs from the on-chain "
            f"{str(r.memo_sha256)[:16]}…"
        )
    return True, (
        f"verified: {r.slug} matches attestation {r.signature[:16]}… at slot {r.slot}; "
        f"{len(r.files)} file(s) checked {how}"
    )
