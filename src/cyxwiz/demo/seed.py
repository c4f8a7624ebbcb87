"""Load the demo catalogue (creators + trained ONNX models) into a marketplace database."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from cyxwiz.accounts import service as accounts
from cyxwiz.accounts.models import User
from cyxwiz.catalog import service as catalog
from cyxwiz.catalog.models import Model
from cyxwiz.config import Settings
from cyxwiz.db import Database
from cyxwiz.demo.models import DEMO_CREATORS, DemoModel, build_demo_models
from cyxwiz.errors import NotFound
from cyxwiz.storage import BlobStore, blob_store_from_settings

if TYPE_CHECKING:
    from solders.keypair import Keypair

    from cyxwiz.chain.interfaces import Chain
    from cyxwiz.money import Currency

DEMO_PASSWORD = "cyxwiz-demo"  # noqa: S105 (dev-mode demo accounts only; printed by `cyxwiz demo`)
DEMO_VERSION = "1.0.0"


# Demo buyers who hold funds and have bought a few models (some long enough ago that the
# refund window closed and the creators were paid).
DEMO_BUYERS = (
    ("lena-research", "Lena Fischer", "Applied ML researcher evaluating models for a clinic."),
    ("orbit-analytics", "Orbit Analytics", "A small analytics agency shipping dashboards."),
    ("sam-builds", "Sam Okoro", "Indie developer building apps on hosted models."),
)
FREE_MODELS = frozenset(
    {
        "iris-species-classifier",
        "wine-cultivar-classifier",
        "handwritten-digit-ocr",
        "review-sentiment-en",
        "docsim-embed-16",
        "dtmf-keypad-decoder",
        "diabetes-progression-1y",
        "site-traffic-forecaster",
        "geoshape-classifier-16",
        "matchmaking-win-probability",
    }
)
PRICES_USDC = (9, 19, 29, 49, 79, 129, 249)
# (buyer, model, days ago, refunded?)
DEMO_PURCHASES = (
    ("lena-research", "breast-cancer-fna-screen", 21, False),
    ("lena-research", "polyglot-langid-7", 12, False),
    ("lena-research", "entity-span-typer", 2, False),
    ("orbit-analytics", "store-demand-7day", 30, False),
    ("orbit-analytics", "credit-default-risk", 16, False),
    ("orbit-analytics", "subscription-churn-predictor", 9, False),
    ("orbit-analytics", "card-fraud-sentinel", 1, False),
    ("sam-builds", "urban-sound-tagger", 14, False),
    ("sam-builds", "sms-spam-shield", 3, True),
    ("sam-builds", "contract-clause-tagger", 5, False),
)


@dataclass
class SeedReport:
    creators: int
    models_created: int
    models_existing: int
    purchases: int = 0


def demo_price(name: str) -> int | None:
    """A stable price in USDC minor units for a demo model (None = free)."""
    if name in FREE_MODELS:
        return None
    return PRICES_USDC[sum(name.encode()) % len(PRICES_USDC)] * 10**6


DEMO_PER_1K_REQUESTS = 1_000_000  # 1 USDC per 1,000 inferences (0.001 USDC a call)


DEMO_FUNDS = (("USDC", 1_000 * 10**6), ("CYX", 500 * 10**6))  # what each demo buyer deposits
DEMO_CYX_FLOAT = 1_000_000 * 10**6  # the platform's own CYX in the vault, for CYX payouts


def demo_wallet_path(settings: Settings, username: str) -> Path:
    """A demo buyer's dev wallet (solana-keygen format): usable with ``cyxwiz wallet``."""
    return settings.data_dir / "demo-wallets" / f"{username}.json"


def load_money(
    db: Database, *, settings: Settings, chain: Chain, models: list[DemoModel], now: datetime
) -> int:
    """Prices, demo buyers funded through real deposits on ``chain``, the platform's CYX float
    and purchases (backdated, so some are already released); returns the purchases made.

    Each buyer gets a dev wallet (a keypair file in the data dir, linked to the account) that
    receives test tokens from the dev chain's faucet and pays a Solana Pay deposit request, like
    any user's wallet would. Idempotent: deposits and purchases use fixed Idempotency-Keys, a
    paid deposit is never paid (or minted for) again, and the float is booked once. Each step
    commits before the next touches the chain, so an interrupted run resumes where it stopped.
    Skipped in production, where there is no faucet."""
    from cyxwiz.billing import flows
    from cyxwiz.licensing.schemas import OffersDocument, Price
    from cyxwiz.licensing.service import set_offers
    from cyxwiz.money import Currency

    if settings.is_production:
        return 0
    with db.session() as session:
        for dm in models:
            model = catalog.find_model(session, owner=dm.owner, name=dm.name)
            price = demo_price(dm.name)
            if model is not None:
                set_offers(
                    session,
                    model=model,
                    actor=model.owner,
                    document=OffersDocument(
                        # free-to-download models have no one-time price
                        one_time=Price(amount=price, currency="USDC")
                        if price is not None
                        else None,
                        # every demo model is hosted: 1 USDC per 1,000 calls through the gateway
                        per_1k_requests=Price(amount=DEMO_PER_1K_REQUESTS, currency="USDC"),
                    ),
                )
        for username, display, bio in DEMO_BUYERS:
            _ensure_creator(session, username, display, bio)
    # funded the day before the oldest demo purchase
    funded_at = now - timedelta(days=max(p[2] for p in DEMO_PURCHASES) + 1)
    for username, _, _ in DEMO_BUYERS:
        for currency, amount in DEMO_FUNDS:
            _deposit_demo_funds(
                db,
                settings=settings,
                chain=chain,
                username=username,
                currency=Currency(currency),
                amount=amount,
                at=funded_at,
            )
    _book_cyx_float(db, chain=chain)
    made = 0
    with db.session() as session:
        owners = {d.name: d.owner for d in models}
        for username, name, days_ago, refunded in DEMO_PURCHASES:
            buyer = accounts.get_user_by_username(session, username)
            owner = owners.get(name)
            model = catalog.find_model(session, owner=owner, name=name) if owner else None
            if model is None:
                continue
            row, created = flows.purchase(
                session,
                settings=settings,
                buyer=buyer,
                model=model,
                currency=Currency.USDC,
                idempotency_key=f"demo:{name}",
                now=now - timedelta(days=days_ago),
            )
            made += int(created)
            if refunded and row.status == "escrow":
                flows.refund(
                    session,
                    license=row.license,
                    actor=buyer,
                    now=now - timedelta(days=days_ago - 1),
                )
        flows.release_due(session, now=now, limit=1000)
    return made


def _demo_wallet(db: Database, *, settings: Settings, username: str, at: datetime) -> Keypair:
    """The buyer's dev wallet: created once (a keypair file) and linked to the account by
    Sign-In With Solana, signed here with the wallet's own key."""
    from cyxwiz.accounts import wallets
    from cyxwiz.chain import tokens
    from cyxwiz.clock import TestClock

    path = demo_wallet_path(settings, username)
    if not path.exists():
        tokens.write_keypair(path, tokens.new_keypair())
    kp = tokens.read_keypair(path)
    address = str(kp.pubkey())
    with db.session() as session:
        user = accounts.get_user_by_username(session, username)
        if address not in {w.address for w in wallets.list_wallets(session, user=user)}:
            clock = TestClock(at)
            nonce = wallets.challenge(
                session, settings=settings, clock=clock, address=address, purpose="link", user=user
            )
            wallets.link_wallet(
                session,
                settings=settings,
                clock=clock,
                user=user,
                message=nonce.message,
                signature=str(kp.sign_message(nonce.message.encode())),
                label="demo wallet",
            )
    return kp


def _deposit_demo_funds(
    db: Database,
    *,
    settings: Settings,
    chain: Chain,
    username: str,
    currency: Currency,
    amount: int,
    at: datetime,
) -> None:
    """Test tokens minted to the buyer's dev wallet, which pays a deposit request; the watcher's
    scan credits the balance. Nothing is minted or paid for a request already paid."""
    from cyxwiz.billing import deposits
    from cyxwiz.billing.models import Deposit
    from cyxwiz.chain import tokens

    with db.session() as session:  # the request is committed before anything moves on chain
        user = accounts.get_user_by_username(session, username)
        row, _ = deposits.create_deposit(
            session,
            settings=settings,
            chain=chain,
            user=user,
            currency=currency,
            amount=amount,
            idempotency_key=f"demo-funds-{currency.value.lower()}",
            now=at,
        )
        # a payment that landed before an earlier run was interrupted is credited, not repeated
        deposits.scan_deposit(session, settings=settings, chain=chain, deposit=row, now=at)
        outstanding = row.amount - row.credited - row.pending
        dep_id, recipient, mint, reference, memo = (
            row.id,
            row.recipient,
            row.mint,
            row.reference,
            row.memo,
        )
    if outstanding <= 0:
        return
    wallet = _demo_wallet(db, settings=settings, username=username, at=at)
    owner = str(wallet.pubkey())
    held = chain.token_balance(chain.token_account_of(owner, currency))
    if held < outstanding:  # tokens minted by an interrupted run are used first
        chain.mint_to(owner=owner, currency=currency, amount=outstanding - held)
    ixs = [
        tokens.memo_ix(memo, wallet.pubkey()),
        tokens.transfer_ix(
            source_owner=wallet.pubkey(),
            dest_owner=tokens.pubkey(recipient),
            mint=tokens.pubkey(mint),
            amount=outstanding,
            references=(tokens.pubkey(reference),),
        ),
    ]
    blockhash, _ = chain.latest_blockhash()
    chain.send_raw(bytes(tokens.sign(ixs, [wallet], blockhash)))
    with db.session() as session:
        locked = session.scalar(select(Deposit).where(Deposit.id == dep_id).with_for_update())
        assert locked is not None
        deposits.scan_deposit(session, settings=settings, chain=chain, deposit=locked, now=at)


def _book_cyx_float(db: Database, *, chain: Chain) -> None:
    """Mint the platform's CYX float into the vault and book it, once."""
    from cyxwiz.billing import flows, treasury
    from cyxwiz.money import Currency

    with db.session() as session:
        if flows.platform_account(session, "treasury", Currency.CYX).credits_posted > 0:
            return
        treasury.record_float(
            session, chain=chain, currency=Currency.CYX, mint_amount=DEMO_CYX_FLOAT
        )


def _ensure_creator(session: Session, username: str, display_name: str, bio: str) -> User:
    try:
        return accounts.get_user_by_username(session, username)
    except NotFound:
        user = accounts.register(
            session,
            username=username,
            email=f"{username}@demo.cyxwiz.dev",
            password=DEMO_PASSWORD,
            display_name=display_name,
        )
        user.bio = bio
        return user


def load_models(session: Session, blobs: BlobStore, models: list[DemoModel]) -> SeedReport:
    """Create each demo listing with one published version; existing listings are left alone."""
    creators = {
        c.username: _ensure_creator(session, c.username, c.display_name, c.bio)
        for c in DEMO_CREATORS
    }
    created = existing = 0
    for dm in models:
        owner = creators[dm.owner]
        if catalog.find_model(session, owner=owner.username, name=dm.name) is not None:
            existing += 1
            continue
        model = catalog.create_model(
            session,
            owner=owner,
            name=dm.name,
            title=dm.title,
            summary=dm.summary,
            category=dm.category,
            task=dm.task,
            framework="onnx",
            license=dm.license,
            visibility="public",
            tags=list(dm.tags),
            card=dm.card,
        )
        if dm.contributors:
            catalog.set_contributors(
                session,
                model=model,
                actor=owner,
                shares=[
                    {
                        "username": u,
                        "share_bps": bps,
                        "role": "creator" if u == owner.username else "contributor",
                    }
                    for u, bps in dm.contributors
                ],
            )
        version = catalog.create_version(
            session, model=model, actor=owner, version=DEMO_VERSION, notes="Initial release."
        )
        for path, data in sorted(dm.files.items()):
            info = blobs.put_bytes(data)
            content_type = (
                "application/json" if path.endswith(".json") else "application/octet-stream"
            )
            catalog.record_file(
                session,
                version=version,
                actor=owner,
                path=path,
                sha256=info.address,
                size=info.size,
                content_type=content_type,
            )
        catalog.publish_version(session, version=version, actor=owner, blobs=blobs)
        created += 1
    return SeedReport(creators=len(creators), models_created=created, models_existing=existing)


def seed(
    settings: Settings,
    *,
    echo: Callable[[str], None] = print,
    models: list[DemoModel] | None = None,
) -> SeedReport:
    """Train the demo models (with a progress bar; or take ``models`` already built) and load
    them, with funded buyers and purchases on the configured chain; safe to run twice."""
    if models is None:
        models = _train_with_progress()
    db = Database.from_url(settings.resolved_database_url)
    try:
        with db.session() as session:
            report = load_models(session, blob_store_from_settings(settings), models)
        report.purchases = _load_money_on_chain(db, settings=settings, models=models, echo=echo)
    finally:
        db.engine.dispose()
    echo(
        f"demo catalogue: {report.models_created} models created, {report.models_existing} already there, "
        f"{report.creators} creators (sign in as any of "
        f"{', '.join(c.username for c in DEMO_CREATORS)}, or the buyers "
        f"{', '.join(b[0] for b in DEMO_BUYERS)}, with password {DEMO_PASSWORD!r}); "
        f"{report.purchases} demo purchases"
        + (
            f"; the buyers' dev wallets are in {settings.data_dir / 'demo-wallets'}"
            if demo_wallet_path(settings, DEMO_BUYERS[0][0]).exists()
            else ""
        )
    )
    return report


def _train_with_progress() -> list[DemoModel]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("[bold]training demo models"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
    ) as progress:
        task = progress.add_task("", total=None)

        def on_progress(done: int, total: int, name: str) -> None:
            progress.update(task, completed=done, total=total, description=name)

        return build_demo_models(progress=on_progress)


def _load_money_on_chain(
    db: Database, *, settings: Settings, models: list[DemoModel], echo: Callable[[str], None]
) -> int:
    """Open the chain the server will settle on, fund and buy, and close it again: the local
    chain belongs to one process at a time, and ``serve`` opens it right after seeding."""
    from cyxwiz.chain.factory import open_chain
    from cyxwiz.chain.interfaces import ChainUnavailable, FaucetUnavailable
    from cyxwiz.config import ConfigError

    if settings.is_production:
        return 0
    try:
        chain = open_chain(settings)
    except ChainUnavailable as exc:  # e.g. a running `cyxwiz serve` owns the local chain
        echo(f"demo funds and purchases skipped: {exc.detail}")
        return 0
    except ConfigError as exc:
        echo(f"demo funds and purchases skipped: the chain is not configured ({exc})")
        return 0
    try:
        return load_money(db, settings=settings, chain=chain, models=models, now=datetime.now(UTC))
    except FaucetUnavailable as exc:  # a cluster without a test-token faucet
        echo(f"demo funds and purchases skipped: {exc.detail}")
        return 0
    finally:
        chain.close()


def seed_if_empty(settings: Settings, *, echo: Callable[[str], None] = print) -> SeedReport | None:
    """Seed only when the database has no models yet (what `serve --demo` does)."""
    db = Database.from_url(settings.resolved_database_url)
    try:
        with db.session() as session:
            count = session.scalar(select(func.count()).select_from(Model)) or 0
    finally:
        db.engine.dispose()
    if count:
        echo(f"catalogue already has {count} models; not seeding the demo")
        return None
    return seed(settings, echo=echo)
