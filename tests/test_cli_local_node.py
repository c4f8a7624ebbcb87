"""`cyxwiz serve`'s local node is trusted by configuration: serve approves the operator account
it created itself — also on a data dir from before operator approval existed (migration 0007
filed that account as a pending application) — and never an account it did not create."""

from __future__ import annotations

import base64
import secrets
import subprocess
from pathlib import Path

from sqlalchemy import select

from cyxwiz.accounts import service as accounts
from cyxwiz.cli.main import LOCAL_NODE, LOCAL_OPERATOR, _start_local_node
from cyxwiz.config import Settings
from cyxwiz.db import Database
from cyxwiz.inference import service as nodes
from cyxwiz.inference.models import Node, NodeOperator
from cyxwiz.migrate import upgrade


def _settings(tmp_path: Path) -> tuple[Settings, Database]:
    settings = Settings(
        data_dir=tmp_path / "data",
        master_key=base64.b64encode(secrets.token_bytes(32)).decode(),
    )
    settings.data_dir.mkdir(parents=True)
    db = Database.from_url(settings.resolved_database_url)
    upgrade(db.engine)
    return settings, db


def _legacy_local_operator(db: Database, *, email: str) -> None:
    """The state migration 0007 leaves behind: the operator of an existing node, pending."""
    with db.session() as session:
        user = accounts.register(
            session, username=LOCAL_OPERATOR, email=email, password=secrets.token_urlsafe(32)
        )
        session.add(
            Node(
                operator_id=user.id,
                name=LOCAL_NODE,
                token_hash=secrets.token_hex(32),
                token_prefix="cxw_nt_x",
                status="offline",
                capacity=0,
                load=0,
                warm_version_ids=[],
            )
        )
        session.add(
            NodeOperator(
                user_id=user.id,
                status="applied",
                statement=nodes.MIGRATED_OPERATOR_STATEMENT,
                reason="",
            )
        )
        session.commit()


def _status(db: Database) -> str:
    with db.session() as session:
        return session.scalars(select(NodeOperator.status)).one()


def _stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is not None:
        proc.kill()
        proc.wait(timeout=10)


def test_serve_trusts_its_own_operator_from_before_approval_existed(tmp_path: Path) -> None:
    settings, db = _settings(tmp_path)
    _legacy_local_operator(db, email=f"{LOCAL_OPERATOR}@localhost.invalid")
    proc = _start_local_node(settings, host="127.0.0.1", port=1, node_port=2)
    try:
        assert proc is not None
        assert _status(db) == "approved"
    finally:
        _stop(proc)
        db.engine.dispose()


def test_serve_never_trusts_an_account_of_that_name_it_did_not_create(tmp_path: Path) -> None:
    settings, db = _settings(tmp_path)
    _legacy_local_operator(db, email="someone@example.com")  # registered by a user
    try:
        assert _start_local_node(settings, host="127.0.0.1", port=1, node_port=2) is None
        assert _status(db) == "applied"
    finally:
        db.engine.dispose()
