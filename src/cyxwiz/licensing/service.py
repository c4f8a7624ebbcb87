"""Entitlements: who may download which files.

This issue's policy: editors (owner, admins) may read every file; anyone who can see a model
may download the files of its published versions (all models are free until the money issue
adds offers and licenses, which extend this check rather than the routes).
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from cyxwiz.accounts.models import User
from cyxwiz.catalog.models import ModelVersion
from cyxwiz.catalog.service import can_edit, can_view
from cyxwiz.errors import NotFound


def check_download(session: Session, *, version: ModelVersion, viewer: User | None) -> None:
    """Return if ``viewer`` may download files of ``version``; raise otherwise."""
    model = version.model
    if can_edit(model, viewer):
        return
    if not can_view(model, viewer) or version.status != "published":
        raise NotFound(f"model {model.full_name} not found", code="model_not_found")
