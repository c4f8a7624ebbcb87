"""/api/v1/models/{owner}/{name}/versions/{version}/attestation: on-chain provenance checks."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel

from cyxwiz.catalog import service as catalog
from cyxwiz.errors import NotFound
from cyxwiz.licensing.service import LicenseRequired, check_download
from cyxwiz.provenance import service as provenance
from cyxwiz.web.deps import CtxDep, SessionDep, ViewerDep

router = APIRouter(tags=["provenance"])


class FileCheckOut(BaseModel):
    path: str
    expected: str | None
    actual: str | None
    ok: bool
    error: str | None = None


class AttestationOut(BaseModel):
    model: str
    version: str
    slug: str
    status: str  # pending | sent | confirmed | failed | missing
    memo: str | None  # the memo the marketplace signs for this version
    signature: str | None
    slot: int | None
    confirmed_at: datetime | None
    attempts: int
    on_chain: bool
    signer: str | None
    onchain_memo: str | None
    onchain_slug: str | None
    onchain_manifest_sha256: str | None
    manifest_sha256: str | None
    manifest_sha256_recomputed: str | None
    deep: bool
    files: list[FileCheckOut]
    verified: bool
    summary: str
    note: str | None = None


@router.get("/models/{owner}/{name}/versions/{version}/attestation", response_model=AttestationOut)
def get_attestation(
    owner: str,
    name: str,
    version: str,
    request: Request,
    session: SessionDep,
    viewer: ViewerDep,
    ctx: CtxDep,
    deep: Annotated[
        bool, Query(description="re-hash every file from storage (needs download rights)")
    ] = False,
) -> AttestationOut:
    """The version's on-chain attestation (a Memo transaction with its manifest sha256) checked
    against what the marketplace stores. With `deep=true`, every file is decrypted and hashed
    again — for paid models only for callers who may download them (token or
    `X-License-Key`); others get the shallow check and a `note`."""
    model = catalog.get_model(session, owner=owner, name=name, viewer=viewer)
    ver = catalog.get_version(session, model=model, version=version, viewer=viewer)
    if ver.status != "published":
        raise NotFound(
            f"version {ver.version} is a draft: only published versions are attested",
            code="attestation_not_found",
        )
    note = None
    if deep:
        try:
            check_download(
                session,
                version=ver,
                viewer=viewer,
                signer=ctx.signer,
                key=request.headers.get("x-license-key"),
                now=ctx.clock.now(),
            )
        except LicenseRequired:
            deep = False
            note = (
                "deep verification re-reads the files and needs a license for this paid model "
                "(your token or X-License-Key); this is the shallow check"
            )
    report = provenance.verify(session, version=ver, chain=ctx.chain, blobs=ctx.blobs, deep=deep)
    row = provenance.get_attestation(session, version=ver)
    return AttestationOut(
        model=model.full_name,
        version=ver.version,
        slug=report.slug,
        status=report.status,
        memo=row.memo if row is not None else None,
        signature=report.signature,
        slot=report.slot,
        confirmed_at=report.confirmed_at,
        attempts=row.attempts if row is not None else 0,
        on_chain=report.on_chain,
        signer=report.signer,
        onchain_memo=report.memo,
        onchain_slug=report.memo_slug,
        onchain_manifest_sha256=report.memo_sha256,
        manifest_sha256=report.manifest_sha256,
        manifest_sha256_recomputed=report.manifest_recomputed,
        deep=report.deep,
        files=[
            FileCheckOut(path=f.path, expected=f.expected, actual=f.actual, ok=f.ok, error=f.error)
            for f in report.files
        ],
        verified=report.verified,
        summary=report.summary,
        note=note,
    )
