"""Schema migrations (Alembic) and reference-data sync, usable from the CLI, serve and tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, Engine

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def alembic_config(*, url: str | None = None, connection: Connection | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url is not None:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def upgrade(bind: Engine | Connection, revision: str = "head") -> None:
    """Apply migrations up to ``revision`` and sync reference data (the taxonomy)."""
    from sqlalchemy.orm import Session

    from cyxwiz.catalog.service import sync_taxonomy

    if isinstance(bind, Engine):
        with bind.begin() as conn:
            command.upgrade(alembic_config(connection=conn), revision)
            with Session(bind=conn, join_transaction_mode="create_savepoint") as session:
                sync_taxonomy(session)
                session.commit()
    else:
        command.upgrade(alembic_config(connection=bind), revision)
        with Session(bind=bind, join_transaction_mode="create_savepoint") as session:
            sync_taxonomy(session)
            session.commit()


def drift(bind: Engine | Connection) -> list[Any]:
    """Differences between the migrated schema and the ORM models (empty = no drift)."""
    from cyxwiz.all_models import Base

    def _diff(conn: Connection) -> list[Any]:
        ctx = MigrationContext.configure(
            conn, opts={"compare_type": True, "render_as_batch": conn.dialect.name == "sqlite"}
        )
        return list(compare_metadata(ctx, Base.metadata))

    if isinstance(bind, Engine):
        with bind.connect() as conn:
            return _diff(conn)
    return _diff(bind)


def current_revision(bind: Engine) -> str | None:
    with bind.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()
