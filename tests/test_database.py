"""The schema: migrations apply on the configured database and match the models exactly."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import Connection, Engine

from cyxwiz.accounts.models import User
from cyxwiz.catalog.models import Category
from cyxwiz.db import Database
from cyxwiz.migrate import current_revision, drift, upgrade


def test_suite_runs_on_the_configured_database(engine: Engine) -> None:
    """When CI asks for PostgreSQL, the suite really runs on PostgreSQL (never silently on SQLite)."""
    wanted = os.environ.get("CYXWIZ_TEST_DATABASE_URL")
    expected = "postgresql" if wanted else "sqlite"
    assert engine.dialect.name == expected


def test_migrations_have_no_drift(engine: Engine) -> None:
    assert drift(engine) == []
    assert current_revision(engine) is not None


def test_upgrade_is_idempotent_and_seeds_taxonomy(connection: Connection, db: Database) -> None:
    upgrade(connection)  # running again changes nothing and does not fail
    with db.session() as s:
        slugs = {c.slug for c in s.query(Category)}
    assert {
        "language",
        "text-generation",
        "tabular-regression",
        "scientific",
        "multimodal",
    } <= slugs
    assert len(slugs) == 6 + 6 + 6 + 4 + 3 + 6


def test_timestamps_round_trip_as_utc(db: Database) -> None:
    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=2)))
    with db.session() as s:
        u = User(username="tz", email="tz@example.com", password_hash="x", created_at=when)
        s.add(u)
        s.flush()
        uid = u.id
    with db.session() as s:
        got = s.get(User, uid)
        assert got is not None
        s.refresh(got)
        assert got.created_at == when
        assert got.created_at.tzinfo is not None
        assert got.created_at.utcoffset() == timedelta(0)
        assert got.created_at == when.astimezone(UTC)


def test_naive_datetimes_are_refused(db: Database) -> None:
    naive = datetime(2026, 1, 1)
    with db.session() as s:
        s.add(User(username="naive", email="n@example.com", password_hash="x", created_at=naive))
        with pytest.raises(Exception, match="naive datetime"):
            s.flush()
        s.rollback()
