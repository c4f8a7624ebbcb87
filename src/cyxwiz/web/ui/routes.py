"""The server-rendered web UI: browse, search, model pages, sign-up/in, listing and version
management, and the Hugging Face-compatible ``/{owner}/{name}/resolve/{version}/{path}`` route.

Every page works without JavaScript. Handlers parse the form, call a service and render; a
domain error from a service re-renders the form with its message (and status), while "you may
not see this" errors (403/404) become the site's error page.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response
from markupsafe import Markup
from pydantic import ValidationError
from sqlalchemy.orm import Session
from starlette.datastructures import FormData, UploadFile

from cyxwiz.accounts import service as accounts
from cyxwiz.accounts.models import User
from cyxwiz.accounts.schemas import LoginIn, RegisterIn
from cyxwiz.catalog import service as catalog
from cyxwiz.catalog.cards import card_metrics, render_card, split_card
from cyxwiz.catalog.models import Model, ModelVersion
from cyxwiz.catalog.schemas import ModelCreate, ModelUpdate, VersionCreate
from cyxwiz.config import Settings
from cyxwiz.errors import DomainError, InvalidInput, TooManyAttempts
from cyxwiz.licensing import service as licensing
from cyxwiz.provenance import service as provenance
from cyxwiz.storage import BlobStore
from cyxwiz.web.deps import (
    SESSION_COOKIE,
    AppContext,
    BlobStoreDep,
    ClientIpDep,
    CtxDep,
    SessionDep,
    SettingsDep,
    ThrottleDep,
    get_ctx,
)
from cyxwiz.web.files import serve_model_file
from cyxwiz.web.shaping import offers_out
from cyxwiz.web.ui import billing as billing_ui
from cyxwiz.web.ui import nodes as nodes_ui
from cyxwiz.web.ui import playground
from cyxwiz.web.ui import settlement as settlement_ui
from cyxwiz.web.ui.forms import (
    CsrfForm,
    UiActor,
    UiViewer,
    field,
    login_redirect,
    safe_next,
    see_other,
    upload,
)
from cyxwiz.web.ui.render import filesize, page, rotate_csrf, set_flash

router = APIRouter()
# The money pages first: '/library' and '/earnings' must win over the '/{owner}' catch-all.
router.include_router(billing_ui.router)
router.include_router(nodes_ui.router)  # '/nodes' before the '/{owner}' catch-all
router.include_router(settlement_ui.router)  # '/wallet', '/deposit', '/payouts' likewise

PER_PAGE = 24
UPLOAD_CHUNK = 1024 * 1024
SORT_LABELS = {
    "newest": "Newest",
    "popular": "Most downloaded",
    "updated": "Recently updated",
    "name": "Name (A-Z)",
}
VISIBILITY_LABELS = {
    "public": "Public",
    "unlisted": "Unlisted (anyone with the link)",
    "private": "Private (only you)",
    "draft": "Draft (only you)",
}
LICENSES = (
    "apache-2.0",
    "mit",
    "bsd-3-clause",
    "cc-by-4.0",
    "cc-by-sa-4.0",
    "cc-by-nc-4.0",
    "openrail",
    "llama3",
    "gemma",
    "proprietary",
    "other",
)
CARD_TEMPLATE = """\
---
license: apache-2.0
library_name: onnx
tags:
  - onnx
# Uncomment to show evaluation results on the model page:
# model-index:
#   - name: my-model
#     results:
#       - task:
#           type: tabular-classification
#         dataset:
#           name: Iris
#           type: iris
#         metrics:
#           - type: accuracy
#             value: 0.97
---

# Model name

One paragraph on what the model does and who it is for.

## Intended uses & limitations

## How to use

## Training data

## Evaluation results

## License
"""


# ---------------------------------------------------------------- helpers


def _int(value: str | None, default: int, *, lo: int = 1, hi: int = 100_000) -> int:
    try:
        return min(max(int(value or default), lo), hi)
    except ValueError:
        return default


def _invalid(exc: ValidationError) -> str:
    """The first pydantic error as a sentence a person can act on."""
    err = exc.errors()[0]
    where = " ".join(str(p).replace("_", " ") for p in err.get("loc", ()) if p != "body")
    msg = str(err.get("msg", "is invalid"))
    return f"{where}: {msg}" if where else msg


def _tags(raw: str) -> list[str]:
    return [t.strip() for t in raw.split(",") if t.strip()]


def model_url(model: Model) -> str:
    return f"/{model.owner.username}/{model.name}"


def version_url(model: Model, version: str) -> str:
    return f"{model_url(model)}/versions/{version}"


def _next_label(model: Model) -> str:
    """A suggested label for a new version: the newest one with its last number bumped."""
    if not model.versions:
        return "1.0.0"
    labels = {v.version for v in model.versions}
    last = model.versions[0].version
    m = re.match(r"^(.*?)(\d+)(\D*)$", last)
    if m is None:
        return ""
    candidate = f"{m.group(1)}{int(m.group(2)) + 1}{m.group(3)}"
    return candidate if candidate not in labels else ""


def _category_choices(session: Session) -> list[tuple[str, list[tuple[str, str]]]]:
    """(group label, [(slug, name)]) for a <select> with optgroups."""
    out: list[tuple[str, list[tuple[str, str]]]] = []
    for node in catalog.category_tree(session):
        top = node.category
        options = [(c.slug, c.name) for c in node.children] or [(top.slug, top.name)]
        out.append((top.name, options))
    return out


def _ok(url: str, message: str) -> RedirectResponse:
    response = see_other(url)
    set_flash(response, message)
    return response


# ---------------------------------------------------------------- browse


@router.get("/favicon.ico", include_in_schema=False)
def favicon() -> RedirectResponse:
    return RedirectResponse("/static/favicon.svg", status_code=301)


@router.get("/")
def home(request: Request, session: SessionDep, viewer: UiViewer) -> Response:
    """Hero search, the category grid, newest and most downloaded models."""
    tree = catalog.category_tree(session)
    newest = catalog.search_models(session, viewer=viewer, sort="newest", per_page=8)
    popular = catalog.search_models(session, viewer=viewer, sort="popular", per_page=8)
    return page(
        request,
        "home.html",
        {
            "tree": tree,
            "newest": newest.items,
            "popular": [m for m in popular.items if m.downloads > 0],
            "total": newest.total,
        },
    )


@router.get("/models")
def search(
    request: Request,
    session: SessionDep,
    viewer: UiViewer,
    q: str = "",
    category: str = "",
    tag: str = "",
    sort: str = "newest",
) -> Response:
    """Search results with category filter, sort and pagination."""
    q = q.strip()[:200]
    sort = sort if sort in SORT_LABELS else "newest"
    number = _int(request.query_params.get("page"), 1)
    error, status = None, 200
    try:
        result = catalog.search_models(
            session,
            viewer=viewer,
            q=q or None,
            category=category or None,
            tag=tag or None,
            sort=sort,
            page=number,
            per_page=PER_PAGE,
        )
    except DomainError as exc:
        error, status = exc.detail, exc.status
        result = catalog.Page(items=[], total=0, page=number, per_page=PER_PAGE)
    tree = catalog.category_tree(session)
    names = {n.category.slug: n.category.name for n in tree}
    names.update({c.slug: c.name for n in tree for c in n.children})
    params = {"q": q, "category": category, "tag": tag, "sort": sort if sort != "newest" else ""}
    return page(
        request,
        "search.html",
        {
            "result": result,
            "tree": tree,
            "q": q,
            "search_q": q,
            "category": category,
            "category_name": names.get(category, category),
            "tag": tag,
            "sort": sort,
            "sorts": SORT_LABELS,
            "params": params,
            "error": error,
        },
        status=status,
    )


# ---------------------------------------------------------------- accounts


@router.get("/signup")
def signup_form(request: Request, viewer: UiViewer, next: str = "") -> Response:
    if viewer is not None:
        return see_other(safe_next(next))
    values = {"username": "", "email": "", "display_name": ""}
    return page(request, "auth/signup.html", {"next": safe_next(next, ""), "values": values})


@router.post("/signup")
def signup(
    request: Request,
    form: CsrfForm,
    session: SessionDep,
    settings: SettingsDep,
    actor: UiActor,
    throttle: ThrottleDep,
    ip: ClientIpDep,
) -> Response:
    values = {k: field(form, k) for k in ("username", "email", "display_name")}
    nxt = safe_next(field(form, "next"), "")
    key = None
    try:
        data = RegisterIn(**values, password=field(form, "password"))
        key = throttle.register_attempt(ip=ip)  # the API's throttle: one budget per IP
        user = accounts.register(session, **data.model_dump())
    except (DomainError, ValidationError) as exc:
        session.rollback()
        if key is not None:
            throttle.register_failed(key)
        error, status = _failure(exc)
        ctx = {"next": nxt, "values": values, "error": error}
        return page(request, "auth/signup.html", ctx, status=status, headers=_retry(exc))
    return _sign_in(
        request, session, settings, user, nxt or "/", f"Welcome to CyxWiz, {user.username}!"
    )


@router.get("/login")
def login_form(request: Request, viewer: UiViewer, next: str = "") -> Response:
    if viewer is not None:
        return see_other(safe_next(next))
    return page(request, "auth/login.html", {"next": safe_next(next, ""), "login": ""})


@router.post("/login")
def login(
    request: Request,
    form: CsrfForm,
    session: SessionDep,
    settings: SettingsDep,
    actor: UiActor,
    throttle: ThrottleDep,
    ip: ClientIpDep,
) -> Response:
    login_value = field(form, "login")
    nxt = safe_next(field(form, "next"), "")
    try:
        data = LoginIn(username=login_value, password=field(form, "password"))
        attempt = throttle.login_attempt(ip=ip, login=data.username)  # shared with the API
        user = accounts.authenticate(session, login=data.username, password=data.password)
        throttle.login_succeeded(attempt)
    except (DomainError, ValidationError) as exc:
        session.rollback()
        error, status = _failure(exc)
        ctx = {"next": nxt, "login": login_value, "error": error}
        return page(request, "auth/login.html", ctx, status=status, headers=_retry(exc))
    return _sign_in(request, session, settings, user, nxt or "/", f"Signed in as {user.username}.")


def _retry(exc: DomainError | ValidationError) -> dict[str, str]:
    """The Retry-After of a throttled sign-in or sign-up, for the re-rendered form."""
    return dict(exc.headers) if isinstance(exc, TooManyAttempts) else {}


def _failure(exc: DomainError | ValidationError) -> tuple[str, int]:
    if isinstance(exc, ValidationError):
        return _invalid(exc), 422
    return exc.detail, exc.status


def _sign_in(
    request: Request, session: Session, settings: Settings, user: User, to: str, message: str
) -> Response:
    """Start a browser session: an HttpOnly cookie holding a fresh session token."""
    old = request.cookies.get(SESSION_COOKIE)
    if old:
        accounts.revoke_token(session, raw=old)
    raw, _token = accounts.issue_token(
        session, user=user, kind="session", ttl_seconds=settings.session_ttl_seconds
    )
    response = _ok(to, message)
    response.set_cookie(
        SESSION_COOKIE,
        raw,
        max_age=settings.session_ttl_seconds,
        path="/",
        httponly=True,
        samesite="lax",
        secure=settings.cookie_secure,
    )
    rotate_csrf(response, secure=settings.cookie_secure)
    return response


@router.get("/logout")
def logout_confirm(request: Request, viewer: UiViewer) -> Response:
    if viewer is None:
        return see_other("/")
    return page(request, "auth/logout.html")


@router.post("/logout")
def logout(
    request: Request, form: CsrfForm, session: SessionDep, settings: SettingsDep
) -> Response:
    """End the browser session: revoke its token and clear the cookie."""
    raw = request.cookies.get(SESSION_COOKIE)
    if raw:
        accounts.revoke_token(session, raw=raw)
    response = _ok("/", "You are signed out.")
    response.delete_cookie(
        SESSION_COOKIE, path="/", httponly=True, samesite="lax", secure=settings.cookie_secure
    )
    rotate_csrf(response, secure=settings.cookie_secure)
    return response


# ---------------------------------------------------------------- listings


def _listing_form(
    request: Request,
    session: Session,
    *,
    values: Mapping[str, Any],
    model: Model | None = None,
    error: str | None = None,
    status: int = 200,
) -> Response:
    licenses = list(LICENSES)
    if values.get("license") and values["license"] not in licenses:
        licenses.insert(0, str(values["license"]))
    return page(
        request,
        "model_form.html",
        {
            "model": model,
            "values": values,
            "categories": _category_choices(session),
            "licenses": licenses,
            "visibilities": VISIBILITY_LABELS,
            "error": error,
        },
        status=status,
    )


_LISTING_FIELDS = ("title", "summary", "category", "task", "license", "visibility", "card")


def _listing_values(form: FormData) -> dict[str, Any]:
    values: dict[str, Any] = {k: field(form, k) for k in _LISTING_FIELDS}
    values["tags"] = field(form, "tags")
    return values


@router.get("/new")
def new_model_form(request: Request, session: SessionDep, viewer: UiViewer) -> Response:
    """The create-a-listing form."""
    if viewer is None:
        return login_redirect(request)
    values = {
        "name": "",
        "title": "",
        "summary": "",
        "category": "",
        "task": "",
        "tags": "",
        "license": "apache-2.0",
        "visibility": "public",
        "card": CARD_TEMPLATE,
    }
    return _listing_form(request, session, values=values)


@router.post("/new")
def new_model(request: Request, form: CsrfForm, session: SessionDep, actor: UiActor) -> Response:
    if actor is None:
        return login_redirect(request, "/new")
    values = _listing_values(form)
    values["name"] = field(form, "name").strip()
    try:
        data = ModelCreate(**{**values, "tags": _tags(values["tags"])})
        model = catalog.create_model(session, owner=actor, **data.model_dump())
    except (DomainError, ValidationError) as exc:
        session.rollback()
        error, status = _failure(exc)
        return _listing_form(request, session, values=values, error=error, status=status)
    return _ok(
        model_url(model), f"Created {model.full_name}. Next: create a version and upload its files."
    )


@router.get("/{owner}/{name}/edit")
def edit_model_form(
    request: Request, owner: str, name: str, session: SessionDep, viewer: UiViewer
) -> Response:
    if viewer is None:
        return login_redirect(request)
    model = catalog.get_model_for_edit(session, owner=owner, name=name, actor=viewer)
    values = {k: getattr(model, k) for k in _LISTING_FIELDS if k != "category"}
    values.update(name=model.name, category=model.category.slug, tags=", ".join(model.tags))
    return _listing_form(request, session, values=values, model=model)


@router.post("/{owner}/{name}/edit")
def edit_model(
    request: Request, owner: str, name: str, form: CsrfForm, session: SessionDep, actor: UiActor
) -> Response:
    if actor is None:
        return login_redirect(request, f"/{owner}/{name}/edit")
    model = catalog.get_model_for_edit(session, owner=owner, name=name, actor=actor)
    values = _listing_values(form)
    try:
        data = ModelUpdate(**{**values, "tags": _tags(values["tags"])})
        catalog.update_model(
            session, model=model, actor=actor, changes=data.model_dump(exclude_none=True)
        )
    except (DomainError, ValidationError) as exc:
        session.rollback()
        error, status = _failure(exc)
        model = catalog.get_model_for_edit(session, owner=owner, name=name, actor=actor)
        values["name"] = model.name
        return _listing_form(
            request, session, values=values, model=model, error=error, status=status
        )
    return _ok(model_url(model), "Saved your changes.")


@router.get("/{owner}")
def profile(request: Request, owner: str, session: SessionDep, viewer: UiViewer) -> Response:
    """A user's page with their models (their own drafts and private ones for themselves)."""
    user = accounts.get_user_by_username(session, owner)
    number = _int(request.query_params.get("page"), 1)
    result = catalog.search_models(
        session, viewer=viewer, owner=user.username, sort="updated", page=number, per_page=PER_PAGE
    )
    is_self = viewer is not None and viewer.id == user.id
    return page(request, "profile.html", {"user": user, "result": result, "is_self": is_self})


def _model_page(
    request: Request,
    session: Session,
    ctx: AppContext,
    *,
    owner: str,
    name: str,
    viewer: User | None,
    version: str = "",
    pricing_error: str | None = None,
    price_value: str | None = None,
    status: int = 200,
) -> Response:
    model = catalog.get_model(session, owner=owner, name=name, viewer=viewer)
    versions = catalog.visible_versions(model, viewer)
    selected: ModelVersion | None
    if version:
        selected = catalog.get_version(session, model=model, version=version, viewer=viewer)
    else:
        selected = model.latest_version or (versions[0] if versions else None)
    card_html: Markup | None
    try:
        meta, body = split_card(model.card)
        # render_card returns sanitized HTML (nh3 allow-list): the one value marked safe.
        card_html = Markup(render_card(model.card)) if body.strip() else None  # noqa: S704
    except DomainError:
        meta, card_html = {}, None
    money = billing_ui.offer_context(ctx, session, model=model, viewer=viewer, version=selected)
    if pricing_error is not None:
        money.update(pricing_error=pricing_error, price_value=price_value or "")
    return page(
        request,
        "model.html",
        {
            "model": model,
            "editor": catalog.can_edit(model, viewer),
            "versions": versions,
            "selected": selected,
            "card_html": card_html,
            "metrics": card_metrics(meta),
            "drafts": [v for v in versions if v.status == "draft"],
            **money,
            **playground.panel_context(request, ctx, session, model=model, viewer=viewer),
        },
        status=status,
    )


@router.get("/{owner}/{name}")
def model_page(
    request: Request,
    owner: str,
    name: str,
    session: SessionDep,
    viewer: UiViewer,
    ctx: CtxDep,
    version: str = "",
) -> Response:
    """The listing: card, price, metrics, versions and the files of the latest (or chosen)
    version, with download buttons for those who may download (Buy for the others)."""
    return _model_page(
        request, session, ctx, owner=owner, name=name, viewer=viewer, version=version
    )


@router.post("/{owner}/{name}/pricing")
def set_price(
    request: Request,
    owner: str,
    name: str,
    form: CsrfForm,
    session: SessionDep,
    actor: UiActor,
    ctx: CtxDep,
) -> Response:
    """Set (or clear) the model's one-time USDC price; errors re-render the model page."""
    if actor is None:
        return login_redirect(request, f"/{owner}/{name}")
    model = catalog.get_model_for_edit(session, owner=owner, name=name, actor=actor)
    price = field(form, "price")
    make_free = field(form, "action") == "free"
    try:
        document = billing_ui.offers_document(price, make_free=make_free)
        licensing.set_offers(session, model=model, actor=actor, document=document)
    except (DomainError, ValidationError) as exc:
        session.rollback()
        error, status = _failure(exc)
        return _model_page(
            request,
            session,
            ctx,
            owner=owner,
            name=name,
            viewer=actor,
            pricing_error=error,
            price_value=price,
            status=status,
        )
    if document.one_time is None:
        return _ok(model_url(model), f"{model.full_name} is now free to download.")
    shown = offers_out(ctx.settings, document)
    usdc = shown.one_time.display if shown.one_time else ""
    cyx = f" (or {shown.one_time_cyx.display} paying in CYX)" if shown.one_time_cyx else ""
    return _ok(model_url(model), f"Price set: {usdc}{cyx}.")


# ---------------------------------------------------------------- versions


@router.get("/{owner}/{name}/versions/new")
def new_version_form(
    request: Request, owner: str, name: str, session: SessionDep, viewer: UiViewer
) -> Response:
    if viewer is None:
        return login_redirect(request)
    model = catalog.get_model_for_edit(session, owner=owner, name=name, actor=viewer)
    return page(
        request,
        "version_new.html",
        {"model": model, "values": {"version": _next_label(model), "notes": ""}},
    )


@router.post("/{owner}/{name}/versions/new")
def new_version(
    request: Request, owner: str, name: str, form: CsrfForm, session: SessionDep, actor: UiActor
) -> Response:
    if actor is None:
        return login_redirect(request, f"/{owner}/{name}/versions/new")
    model = catalog.get_model_for_edit(session, owner=owner, name=name, actor=actor)
    values = {"version": field(form, "version").strip(), "notes": field(form, "notes")}
    try:
        data = VersionCreate(**values)
        ver = catalog.create_version(session, model=model, actor=actor, **data.model_dump())
    except (DomainError, ValidationError) as exc:
        session.rollback()
        error, status = _failure(exc)
        model = catalog.get_model_for_edit(session, owner=owner, name=name, actor=actor)
        ctx = {"model": model, "values": values, "error": error}
        return page(request, "version_new.html", ctx, status=status)
    return _ok(
        version_url(model, ver.version), f"Created draft version {ver.version}. Upload its files."
    )


def _version_page(
    request: Request,
    session: Session,
    *,
    owner: str,
    name: str,
    version: str,
    viewer: User | None,
    error: str | None = None,
    status: int = 200,
    path: str = "",
) -> Response:
    model = catalog.get_model(session, owner=owner, name=name, viewer=viewer)
    ver = catalog.get_version(session, model=model, version=version, viewer=viewer)
    editor = catalog.can_edit(model, viewer)
    money = billing_ui.offer_context(
        get_ctx(request), session, model=model, viewer=viewer, version=ver
    )
    return page(
        request,
        "version.html",
        {
            **money,
            "model": model,
            "version": ver,
            "editor": editor,
            "error": error,
            "path": path,
            "max_upload": filesize(_settings(request).max_upload_bytes),
        },
        status=status,
    )


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.ctx.settings
    return settings


@router.get("/{owner}/{name}/versions/{version}")
def version_page(
    request: Request, owner: str, name: str, version: str, session: SessionDep, viewer: UiViewer
) -> Response:
    """A version: its files; for the owner of a draft, upload, delete and publish."""
    return _version_page(request, session, owner=owner, name=name, version=version, viewer=viewer)


def _editable(session: Session, owner: str, name: str, version: str, actor: User) -> ModelVersion:
    """The version if ``actor`` may change the model (403/404 error page otherwise)."""
    model = catalog.get_model_for_edit(session, owner=owner, name=name, actor=actor)
    return catalog.get_version(session, model=model, version=version, viewer=actor)


def _store_upload(file: UploadFile, blobs: BlobStore, max_size: int) -> tuple[str, int]:
    """Encrypt the uploaded file into the blob store chunk by chunk; (sha256, size)."""
    writer = blobs.writer(max_size=max_size)
    try:
        file.file.seek(0)
        while chunk := file.file.read(UPLOAD_CHUNK):
            writer.write(chunk)
        info = writer.finish()
    except BaseException:
        writer.abort()
        raise
    return info.address, info.size


def _file_name(filename: str) -> str:
    """A default repository path from a browser-supplied file name: its last segment (some
    browsers send a local path) with characters paths may not hold replaced by '-'."""
    name = re.split(r"[/\\]", filename)[-1].strip()
    name = re.sub(r"[^A-Za-z0-9._+=-]+", "-", name)
    return re.sub(r"-+(?=\.)", "", name).strip("-.")


@router.post("/{owner}/{name}/versions/{version}/upload")
def upload_file(
    request: Request,
    owner: str,
    name: str,
    version: str,
    form: CsrfForm,
    session: SessionDep,
    actor: UiActor,
    blobs: BlobStoreDep,
    settings: SettingsDep,
) -> Response:
    """Add (or replace) a file of a draft version from a multipart form, streamed and encrypted."""
    if actor is None:
        return login_redirect(request, f"/{owner}/{name}/versions/{version}")
    ver = _editable(session, owner, name, version, actor)
    chosen = upload(form, "file")
    path = field(form, "path").strip()
    try:
        if chosen is None:
            raise InvalidInput("choose a file to upload", code="no_file")
        path = catalog.check_upload(ver, actor, path or _file_name(chosen.filename or ""))
        sha, size = _store_upload(chosen, blobs, settings.max_upload_bytes)
        content_type = (chosen.content_type or "application/octet-stream")[:100]
        catalog.record_file(
            session,
            version=ver,
            actor=actor,
            path=path,
            sha256=sha,
            size=size,
            content_type=content_type,
        )
    except DomainError as exc:
        session.rollback()
        return _version_page(
            request,
            session,
            owner=owner,
            name=name,
            version=version,
            viewer=actor,
            error=exc.detail,
            status=exc.status,
            path=path,
        )
    return _ok(version_url(ver.model, ver.version), f"Uploaded {path} ({filesize(size)}).")


@router.post("/{owner}/{name}/versions/{version}/delete-file")
def delete_file(
    request: Request,
    owner: str,
    name: str,
    version: str,
    form: CsrfForm,
    session: SessionDep,
    actor: UiActor,
) -> Response:
    """Remove a file from a draft version."""
    if actor is None:
        return login_redirect(request, f"/{owner}/{name}/versions/{version}")
    ver = _editable(session, owner, name, version, actor)
    path = field(form, "path")
    try:
        catalog.delete_file(session, version=ver, actor=actor, path=path)
    except DomainError as exc:
        session.rollback()
        return _version_page(
            request,
            session,
            owner=owner,
            name=name,
            version=version,
            viewer=actor,
            error=exc.detail,
            status=exc.status,
        )
    return _ok(version_url(ver.model, ver.version), f"Deleted {path}.")


@router.post("/{owner}/{name}/versions/{version}/publish")
def publish(
    request: Request,
    owner: str,
    name: str,
    version: str,
    form: CsrfForm,
    session: SessionDep,
    actor: UiActor,
    ctx: CtxDep,
) -> Response:
    """Freeze a draft version; it becomes the model's latest and downloadable."""
    if actor is None:
        return login_redirect(request, f"/{owner}/{name}/versions/{version}")
    ver = _editable(session, owner, name, version, actor)
    try:
        catalog.publish_version(
            session,
            version=ver,
            actor=actor,
            blobs=ctx.blobs,
            policy=catalog.ScanPolicy.from_settings(ctx.settings),
        )
        chain = provenance.chain_or_none(lambda: ctx.chain)
        provenance.record_attestation(session, version=ver, chain=chain)
    except DomainError as exc:
        session.rollback()
        return _version_page(
            request,
            session,
            owner=owner,
            name=name,
            version=version,
            viewer=actor,
            error=exc.detail,
            status=exc.status,
        )
    model = ver.model
    note = "" if model.visibility == "public" else f" The listing is {model.visibility}."
    return _ok(model_url(model), f"Published version {ver.version}.{note}")


# ---------------------------------------------------------------- downloads


@router.api_route("/{owner}/{name}/resolve/{version}/{path:path}", methods=["GET", "HEAD"])
def resolve(
    request: Request,
    owner: str,
    name: str,
    version: str,
    path: str,
    session: SessionDep,
    viewer: UiViewer,
    ctx: CtxDep,
) -> Response:
    """Download a file, Hugging Face style ('main' = latest published); Range and HEAD work."""
    return serve_model_file(
        request, session, ctx, owner=owner, name=name, version=version, path=path, viewer=viewer
    )
