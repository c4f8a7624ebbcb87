"""Load the demo catalogue (creators + trained ONNX models) into a marketplace database."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

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


@dataclass
class SeedReport:
    creators: int
    models_created: int
    models_existing: int


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
    finally:
        db.engine.dispose()
    echo(
        f"demo catalogue: {report.models_created} models created, {report.models_existing} already there, "
        f"{report.creators} creators (sign in as any of "
        f"{', '.join(c.username for c in DEMO_CREATORS)} with password {DEMO_PASSWORD!r})"
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
