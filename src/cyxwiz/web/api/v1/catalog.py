"""/api/v1/categories, /api/v1/models (listings, versions, files)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from sqlalchemy.orm import Session

from cyxwiz.accounts.models import User
from cyxwiz.catalog import service as catalog
from cyxwiz.catalog.models import ModelVersion
from cyxwiz.catalog.schemas import (
    CategoryNodeOut,
    CategoryRef,
    FileOut,
    ModelCreate,
    ModelOut,
    ModelPage,
    ModelUpdate,
    VersionCreate,
    VersionOut,
    file_out,
    model_out,
    model_summary,
    version_out,
)
from cyxwiz.errors import InvalidInput
from cyxwiz.provenance import service as provenance
from cyxwiz.storage import BlobStore
from cyxwiz.web.deps import BlobStoreDep, CtxDep, CurrentUser, SessionDep, SettingsDep, ViewerDep
from cyxwiz.web.files import serve_model_file
from cyxwiz.web.shaping import PageDep

router = APIRouter(tags=["catalog"])
UPLOAD_BUFFER = 1024 * 1024


@router.get("/categories", response_model=list[CategoryNodeOut])
def categories(session: SessionDep) -> list[CategoryNodeOut]:
    """The taxonomy tree with slugs and public model counts."""
    return [
        CategoryNodeOut(
            slug=node.category.slug,
            name=node.category.name,
            description=node.category.description,
            model_count=node.model_count,
            children=[
                CategoryRef(slug=c.slug, name=c.name, parent=node.category.slug)
                for c in node.children
            ],
        )
        for node in catalog.category_tree(session)
    ]


@router.get("/models", response_model=ModelPage)
def list_models(
    session: SessionDep,
    viewer: ViewerDep,
    paging: PageDep,
    q: Annotated[
        str | None, Query(max_length=200, description="words in name, title, summary or tags")
    ] = None,
    category: Annotated[
        str | None, Query(description="category slug (a parent includes its children)")
    ] = None,
    tag: str | None = None,
    owner: str | None = None,
    task: str | None = None,
    sort: Literal["newest", "popular", "updated", "name"] = "newest",
) -> ModelPage:
    """Search public models. With `owner` set to yourself you also see drafts and private ones."""
    result = catalog.search_models(
        session,
        viewer=viewer,
        q=q,
        category=category,
        tag=tag,
        owner=owner,
        task=task,
        sort=sort,
        page=paging.page,
        per_page=paging.per_page,
    )
    return ModelPage(
        items=[model_summary(m) for m in result.items],
        total=result.total,
        page=result.page,
        per_page=result.per_page,
        pages=result.pages,
    )


@router.post("/models", status_code=status.HTTP_201_CREATED, response_model=ModelOut)
def create_model(body: ModelCreate, session: SessionDep, user: CurrentUser) -> ModelOut:
    """Create a listing under your account (visibility defaults to draft)."""
    model = catalog.create_model(session, owner=user, **body.model_dump())
    return model_out(model)


@router.get("/models/{owner}/{name}", response_model=ModelOut)
def get_model(owner: str, name: str, session: SessionDep, viewer: ViewerDep) -> ModelOut:
    """A listing with its card, metrics, contributors and latest version."""
    return model_out(catalog.get_model(session, owner=owner, name=name, viewer=viewer))


@router.patch("/models/{owner}/{name}", response_model=ModelOut)
def update_model(
    owner: str, name: str, body: ModelUpdate, session: SessionDep, user: CurrentUser
) -> ModelOut:
    """Change fields of a listing; only the fields you send change."""
    model = catalog.get_model_for_edit(session, owner=owner, name=name, actor=user)
    changes = body.model_dump(exclude_unset=True)
    for key in [k for k, v in changes.items() if v is None]:
        raise InvalidInput(f"{key} cannot be null", code="validation_error")
    catalog.update_model(session, model=model, actor=user, changes=changes)
    return model_out(model)


@router.delete("/models/{owner}/{name}", status_code=status.HTTP_204_NO_CONTENT)
def delete_model(owner: str, name: str, session: SessionDep, user: CurrentUser) -> None:
    """Delete a listing that has no published version."""
    model = catalog.get_model_for_edit(session, owner=owner, name=name, actor=user)
    catalog.delete_model(session, model=model, actor=user)


# ---------------------------------------------------------------- versions


@router.get("/models/{owner}/{name}/versions", response_model=list[VersionOut])
def list_versions(
    owner: str, name: str, session: SessionDep, viewer: ViewerDep
) -> list[VersionOut]:
    """Versions newest first; drafts only for the owner and admins."""
    model = catalog.get_model(session, owner=owner, name=name, viewer=viewer)
    return [version_out(v) for v in catalog.visible_versions(model, viewer)]


@router.post(
    "/models/{owner}/{name}/versions",
    status_code=status.HTTP_201_CREATED,
    response_model=VersionOut,
)
def create_version(
    owner: str, name: str, body: VersionCreate, session: SessionDep, user: CurrentUser
) -> VersionOut:
    """Start a draft version; upload files to it, then publish."""
    model = catalog.get_model_for_edit(session, owner=owner, name=name, actor=user)
    return version_out(
        catalog.create_version(
            session, model=model, actor=user, version=body.version, notes=body.notes
        )
    )


@router.get("/models/{owner}/{name}/versions/{version}", response_model=VersionOut)
def get_version(
    owner: str, name: str, version: str, session: SessionDep, viewer: ViewerDep
) -> VersionOut:
    """One version ('main' or 'latest' is the newest published one)."""
    model = catalog.get_model(session, owner=owner, name=name, viewer=viewer)
    return version_out(catalog.get_version(session, model=model, version=version, viewer=viewer))


@router.post("/models/{owner}/{name}/versions/{version}/publish", response_model=VersionOut)
def publish_version(
    owner: str, name: str, version: str, session: SessionDep, user: CurrentUser, ctx: CtxDep
) -> VersionOut:
    """Scan every file, then freeze a draft version and write its manifest (paths, sizes,
    sha256) and digest; its on-chain attestation (a Memo with the digest) is signed now and
    sent after commit.

    Refused with 422: an ONNX file that is not a valid self-contained model
    (`invalid_model_file`, `onnx_external_data`, `onnx_forbidden_op`,
    `onnx_unsupported_opset`, `onnx_too_large`) and a file whose scan is dangerous
    (`dangerous_file`, e.g. a pickle importing `os.system`). Each file's verdict is in
    `files[].scan`."""
    ver = _editable_version(session, owner, name, version, user)
    catalog.publish_version(
        session,
        version=ver,
        actor=user,
        blobs=ctx.blobs,
        policy=catalog.ScanPolicy.from_settings(ctx.settings),
    )
    chain = provenance.chain_or_none(lambda: ctx.chain)
    provenance.record_attestation(session, version=ver, chain=chain)
    return version_out(ver)


@router.delete("/models/{owner}/{name}/versions/{version}", status_code=status.HTTP_204_NO_CONTENT)
def delete_version(
    owner: str, name: str, version: str, session: SessionDep, user: CurrentUser
) -> None:
    """Delete a draft version."""
    ver = _editable_version(session, owner, name, version, user)
    catalog.delete_version(session, version=ver, actor=user)


def _editable_version(
    session: Session, owner: str, name: str, version: str, user: User
) -> ModelVersion:
    model = catalog.get_model_for_edit(session, owner=owner, name=name, actor=user)
    return catalog.get_version(session, model=model, version=version, viewer=user)


# ---------------------------------------------------------------- files

FILE_ROUTE = "/models/{owner}/{name}/versions/{version}/files/{path:path}"


@router.get("/models/{owner}/{name}/versions/{version}/files", response_model=list[FileOut])
def list_files(
    owner: str, name: str, version: str, session: SessionDep, viewer: ViewerDep
) -> list[FileOut]:
    """Files of a version with sizes, sha256 and each file's safety scan."""
    model = catalog.get_model(session, owner=owner, name=name, viewer=viewer)
    ver = catalog.get_version(session, model=model, version=version, viewer=viewer)
    return [file_out(f) for f in ver.files]


@router.put(
    FILE_ROUTE,
    response_model=FileOut,
    responses={201: {"model": FileOut}},
    openapi_extra={
        "requestBody": {
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
            }
        }
    },
)
async def put_file(
    owner: str,
    name: str,
    version: str,
    path: str,
    request: Request,
    response: Response,
    session: SessionDep,
    user: CurrentUser,
    blobs: BlobStoreDep,
    settings: SettingsDep,
) -> FileOut:
    """Upload a file to a draft version as the raw request body (streamed, encrypted at rest).

    Send `X-Checksum-Sha256` to have the server verify the bytes it received.
    """

    def check() -> None:
        ver = _editable_version(session, owner, name, version, user)
        catalog.check_upload(ver, user, path)

    await run_in_threadpool(check)
    sha, size = await stream_body_to_blob(request, blobs, settings.max_upload_bytes)
    expected = request.headers.get("x-checksum-sha256")
    if expected and expected.strip().lower() != sha:
        raise InvalidInput(
            f"received bytes hash to {sha}, not the X-Checksum-Sha256 you sent",
            code="checksum_mismatch",
            status=400,
        )
    content_type = request.headers.get("content-type") or "application/octet-stream"

    def record() -> FileOut:
        ver = _editable_version(session, owner, name, version, user)
        existed = any(f.path == path for f in ver.files)
        row = catalog.record_file(
            session,
            version=ver,
            actor=user,
            path=path,
            sha256=sha,
            size=size,
            content_type=content_type[:100],
        )
        response.status_code = status.HTTP_200_OK if existed else status.HTTP_201_CREATED
        return file_out(row)

    return await run_in_threadpool(record)


async def stream_body_to_blob(request: Request, blobs: BlobStore, max_size: int) -> tuple[str, int]:
    """Encrypt the request body into the blob store in constant memory; (sha256, size)."""
    writer = blobs.writer(max_size=max_size)
    try:
        buf = bytearray()
        async for chunk in request.stream():
            buf += chunk
            if len(buf) >= UPLOAD_BUFFER:
                data = bytes(buf)
                buf.clear()
                await run_in_threadpool(writer.write, data)
        if buf:
            await run_in_threadpool(writer.write, bytes(buf))
        info = await run_in_threadpool(writer.finish)
    except BaseException:
        writer.abort()
        raise
    return info.address, info.size


@router.get(
    FILE_ROUTE,
    response_class=Response,
    responses={
        200: {"content": {"application/octet-stream": {}}},
        206: {"description": "partial content"},
    },
)
def get_file(
    owner: str,
    name: str,
    version: str,
    path: str,
    request: Request,
    session: SessionDep,
    viewer: ViewerDep,
    ctx: CtxDep,
) -> Response:
    """Download a file; supports Range, If-None-Match and HEAD. Paid models need a license
    (the buyer's token, or `X-License-Key`)."""
    return serve_model_file(
        request, session, ctx, owner=owner, name=name, version=version, path=path, viewer=viewer
    )


router.add_api_route(FILE_ROUTE, get_file, methods=["HEAD"], include_in_schema=False)


@router.delete(FILE_ROUTE, status_code=status.HTTP_204_NO_CONTENT)
def delete_file(
    owner: str, name: str, version: str, path: str, session: SessionDep, user: CurrentUser
) -> None:
    """Remove a file from a draft version."""
    ver = _editable_version(session, owner, name, version, user)
    catalog.delete_file(session, version=ver, actor=user, path=path)
