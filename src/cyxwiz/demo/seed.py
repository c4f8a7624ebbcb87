"""Load the demo catalogue (creators + trained ONNX models) into a marketplace database."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

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


def load_money(
    session: Session, *, settings: Settings, models: list[DemoModel], now: datetime
) -> int:
    """Prices, funded demo buyers and purchases (backdated, so some are already released).

    Idempotent: purchases use fixed Idempotency-Keys and the faucet fixed keys. Skipped in
    production, where the faucet does not exist."""
    from cyxwiz.billing import flows
    from cyxwiz.licensing.schemas import OffersDocument, Price
    from cyxwiz.licensing.service import set_offers
    from cyxwiz.money import Currency

    if settings.is_production:
        return 0
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
                    one_time=Price(amount=price, currency="USDC") if price is not None else None,
                    # every demo model is hosted: 1 USDC per 1,000 calls through the gateway
                    per_1k_requests=Price(amount=DEMO_PER_1K_REQUESTS, currency="USDC"),
                ),
            )
    made = 0
    for username, display, bio in DEMO_BUYERS:
        buyer = _ensure_creator(session, username, display, bio)
        flows.faucet(
            session,
            settings=settings,
            user=buyer,
            currency=Currency.USDC,
            amount=1_000 * 10**6,
            idempotency_key="demo-funds-usdc",
        )
        flows.faucet(
            session,
            settings=settings,
            user=buyer,
            currency=Currency.CYX,
            amount=500 * 10**6,
            idempotency_key="demo-funds-cyx",
        )
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
                session, license=row.license, actor=buyer, now=now - timedelta(days=days_ago - 1)
            )
    flows.release_due(session, now=now, limit=1000)
    return made


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
        catalog.publish_version(session, version=version, actor=owner)
        created += 1
    return SeedReport(creators=len(creators), models_created=created, models_existing=existing)


def seed(settings: Settings, *, echo: Callable[[str], None] = print) -> SeedReport:
    """Train the demo models (with a progress bar) and load them; safe to run twice."""
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

        models = build_demo_models(progress=on_progress)
    db = Database.from_url(settings.resolved_database_url)
    try:
        with db.session() as session:
            report = load_models(session, blob_store_from_settings(settings), models)
            report.purchases = load_money(
                session, settings=settings, models=models, now=datetime.now(UTC)
            )
    finally:
        db.engine.dispose()
    echo(
        f"demo catalogue: {report.models_created} models created, {report.models_existing} already there, "
        f"{report.creators} creators (sign in as any of "
        f"{', '.join(c.username for c in DEMO_CREATORS)}, or the buyers "
        f"{', '.join(b[0] for b in DEMO_BUYERS)}, with password {DEMO_PASSWORD!r}); "
        f"{report.purchases} demo purchases"
    )
    return report


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
