"""Catalog operations: listings, versions, files, categories, search. Flushes, never commits."""

from __future__ import annotations

import hashlib
import io
import json
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session

from cyxwiz.accounts.models import User
from cyxwiz.accounts.service import get_user_by_username
from cyxwiz.catalog.cards import split_card
from cyxwiz.catalog.models import (
    VISIBILITIES,
    Category,
    Model,
    ModelContributor,
    ModelFile,
    ModelTag,
    ModelVersion,
)
from cyxwiz.catalog.taxonomy import TAXONOMY
from cyxwiz.config import Settings
from cyxwiz.db import utcnow
from cyxwiz.errors import Conflict, InvalidInput, NotFound, PermissionDenied
from cyxwiz.scanning import FileRefused, Verdict, scan_file
from cyxwiz.storage import BlobStore

MODEL_NAME_RE = re.compile(r"^[a-z0-9]+(?:[._-][a-z0-9]+)*$")
TAG_RE = re.compile(r"^[a-z0-9][a-z0-9.+-]{0,39}$")
VERSION_RE = re.compile(r"^[0-9A-Za-z][0-9A-Za-z.+_-]{0,63}$")
PATH_SEGMENT_RE = re.compile(r"^[A-Za-z0-9_+=-][A-Za-z0-9._+=-]*$")
LATEST_ALIASES = ("main", "latest")
RESERVED_VERSION_LABELS = (*LATEST_ALIASES, "new")
MAX_TAGS = 20
MAX_FILES_PER_VERSION = 1000
SORTS: dict[str, tuple[Any, ...]] = {
    "newest": (Model.published_at.desc(), Model.created_at.desc()),
    "popular": (Model.downloads.desc(), Model.published_at.desc()),
    "updated": (Model.updated_at.desc(),),
    "name": (Model.name.asc(),),
}


# ---------------------------------------------------------------- validation


def validate_model_name(name: str) -> str:
    if not (2 <= len(name) <= 64) or not MODEL_NAME_RE.match(name):
        raise InvalidInput(
            "model name must be 2-64 characters of a-z, 0-9 and single '.', '_' or '-' "
            "between them",
            code="invalid_model_name",
        )
    return name


def validate_tags(tags: Sequence[str]) -> list[str]:
    out: list[str] = []
    for tag in tags:
        t = tag.strip().lower()
        if not TAG_RE.match(t):
            raise InvalidInput(
                f"tag {tag!r} must be 1-40 characters of a-z, 0-9, '.', '+' and '-'",
                code="invalid_tag",
            )
        if t not in out:
            out.append(t)
    if len(out) > MAX_TAGS:
        raise InvalidInput(f"at most {MAX_TAGS} tags", code="invalid_tag")
    return out


def validate_version_label(label: str) -> str:
    if not VERSION_RE.match(label) or label.lower() in RESERVED_VERSION_LABELS:
        raise InvalidInput(
            "version must be 1-64 characters of letters, digits, '.', '+', '_' and '-', "
            "starting with a letter or digit, and not main, latest or new",
            code="invalid_version",
        )
    return label


def validate_file_path(path: str) -> str:
    """A safe relative POSIX path: no traversal, no absolute paths, no odd characters."""
    if not path or len(path) > 255 or path.startswith("/") or "\\" in path or "\x00" in path:
        raise InvalidInput(f"invalid file path {path!r}", code="invalid_path")
    parts = path.split("/")
    if len(parts) > 8 or any(p in ("", ".", "..") or not PATH_SEGMENT_RE.match(p) for p in parts):
        raise InvalidInput(
            f"invalid file path {path!r}: use up to 8 '/'-separated segments of letters, "
            "digits, '.', '_', '-', '+', '=' (no '..', no leading '/')",
            code="invalid_path",
        )
    return path


def validate_visibility(value: str) -> str:
    if value not in VISIBILITIES:
        raise InvalidInput(
            f"visibility must be one of {list(VISIBILITIES)}", code="invalid_visibility"
        )
    return value


# ---------------------------------------------------------------- categories


def sync_taxonomy(session: Session) -> int:
    """Make the categories table match the taxonomy data; returns how many rows changed."""
    existing = {c.slug: c for c in session.scalars(select(Category))}
    changed = 0
    for pos, top in enumerate(TAXONOMY):
        parent = _upsert_category(session, existing, top.slug, top.name, top.description, None, pos)
        changed += parent[1]
        for cpos, child in enumerate(top.children):
            changed += _upsert_category(
                session, existing, child.slug, child.name, child.description, parent[0], cpos
            )[1]
    session.flush()
    return changed


def _upsert_category(
    session: Session,
    existing: dict[str, Category],
    slug: str,
    name: str,
    description: str,
    parent: Category | None,
    position: int,
) -> tuple[Category, int]:
    cat = existing.get(slug)
    if cat is None:
        cat = Category(slug=slug, name=name, description=description, position=position)
        cat.parent = parent
        session.add(cat)
        session.flush()
        existing[slug] = cat
        return cat, 1
    parent_id = parent.id if parent else None
    if (cat.name, cat.description, cat.parent_id, cat.position) != (
        name,
        description,
        parent_id,
        position,
    ):
        cat.name, cat.description, cat.parent_id, cat.position = (
            name,
            description,
            parent_id,
            position,
        )
        return cat, 1
    return cat, 0


def list_categories(session: Session) -> list[Category]:
    return list(session.scalars(select(Category).order_by(Category.position, Category.slug)))


@dataclass
class CategoryTree:
    category: Category
    children: list[Category]
    model_count: int


def category_tree(session: Session) -> list[CategoryTree]:
    """Top-level categories with their children and public model counts (children included)."""
    cats = list_categories(session)
    counts = dict(
        session.execute(
            select(Model.category_id, func.count())
            .where(Model.visibility == "public", Model.published_at.is_not(None))
            .group_by(Model.category_id)
        ).all()
    )
    tree: list[CategoryTree] = []
    for top in (c for c in cats if c.parent_id is None):
        children = [c for c in cats if c.parent_id == top.id]
        total = counts.get(top.id, 0) + sum(counts.get(c.id, 0) for c in children)
        tree.append(CategoryTree(top, children, total))
    return tree


def get_category(session: Session, slug: str) -> Category:
    cat = session.scalar(select(Category).where(Category.slug == slug))
    if cat is None:
        raise InvalidInput(
            f"unknown category {slug!r}; GET /api/v1/categories lists them", code="unknown_category"
        )
    return cat


# ---------------------------------------------------------------- permissions


def can_edit(model: Model, user: User | None) -> bool:
    return user is not None and (user.id == model.owner_id or user.is_admin)


def can_view(model: Model, user: User | None) -> bool:
    return model.visibility in ("public", "unlisted") or can_edit(model, user)


def _require_edit(model: Model, user: User | None) -> None:
    if not can_edit(model, user):
        raise PermissionDenied(
            f"only the owner of {model.full_name} or an admin may change it", code="forbidden"
        )


# ---------------------------------------------------------------- models


def create_model(
    session: Session,
    *,
    owner: User,
    name: str,
    title: str,
    category: str,
    summary: str = "",
    task: str = "",
    framework: str = "onnx",
    license: str = "other",
    visibility: str = "draft",
    tags: Sequence[str] = (),
    card: str = "",
) -> Model:
    """A new listing ``owner/name``; the owner holds the full revenue share until changed."""
    name = validate_model_name(name)
    cat = get_category(session, category)
    split_card(card)
    clean_tags = validate_tags(tags)
    title = title.strip()
    if not title:
        raise InvalidInput("title must not be empty")
    exists = session.scalar(select(Model.id).where(Model.owner_id == owner.id, Model.name == name))
    if exists is not None:
        raise Conflict(f"{owner.username}/{name} already exists", code="model_exists")
    model = Model(
        owner=owner,
        name=name,
        title=title,
        summary=summary.strip(),
        category=cat,
        task=task.strip(),
        framework=framework.strip() or "onnx",
        license=license.strip() or "other",
        visibility=validate_visibility(visibility),
        card=card,
    )
    model.tag_rows = [ModelTag(tag=t) for t in clean_tags]
    model.contributors = [ModelContributor(user_id=owner.id, share_bps=10000, role="creator")]
    session.add(model)
    session.flush()
    return model


def update_model(session: Session, *, model: Model, actor: User, changes: dict[str, Any]) -> Model:
    """Apply the given field changes (only those present); validates like create."""
    _require_edit(model, actor)
    if "category" in changes:
        model.category = get_category(session, changes.pop("category"))
    if "tags" in changes:
        wanted = validate_tags(changes.pop("tags"))
        keep = [t for t in model.tag_rows if t.tag in wanted]
        have = {t.tag for t in keep}
        model.tag_rows = keep + [ModelTag(tag=t) for t in wanted if t not in have]
    if "visibility" in changes:
        model.visibility = validate_visibility(changes.pop("visibility"))
    if "card" in changes:
        split_card(changes["card"])
    if "title" in changes and not str(changes["title"]).strip():
        raise InvalidInput("title must not be empty")
    if "contributors" in changes:
        set_contributors(session, model=model, actor=actor, shares=changes.pop("contributors"))
    for field_name in ("title", "summary", "task", "framework", "license", "card"):
        if field_name in changes:
            value = changes[field_name]
            setattr(model, field_name, value.strip() if field_name != "card" else value)
    model.updated_at = utcnow()
    session.flush()
    return model


def set_contributors(
    session: Session, *, model: Model, actor: User, shares: Sequence[dict[str, Any]]
) -> list[ModelContributor]:
    """Replace the revenue split; shares are basis points that must sum to exactly 10000."""
    _require_edit(model, actor)
    if not shares:
        raise InvalidInput("at least one contributor is required", code="invalid_contributors")
    rows: list[ModelContributor] = []
    current = {c.user_id: c for c in model.contributors}
    seen: set[uuid.UUID] = set()
    total = 0
    for pos, share in enumerate(shares):
        bps = share.get("share_bps")
        if not isinstance(bps, int) or isinstance(bps, bool) or not 1 <= bps <= 10000:
            raise InvalidInput(
                "each share_bps must be an integer 1-10000", code="invalid_contributors"
            )
        try:
            user = get_user_by_username(session, str(share.get("username", "")))
        except NotFound:
            raise InvalidInput(
                f"contributor {share.get('username')!r} is not a user", code="invalid_contributors"
            ) from None
        if user.id in seen:
            raise InvalidInput(f"{user.username} is listed twice", code="invalid_contributors")
        seen.add(user.id)
        total += bps
        # Reuse an existing row for the same user so the (model, user) key is updated, not
        # deleted and re-inserted (the unit of work inserts before it deletes).
        row = current.get(user.id) or ModelContributor(user_id=user.id)
        row.share_bps = bps
        row.role = str(share.get("role") or "contributor")[:40]
        row.position = pos
        rows.append(row)
    if total != 10000:
        raise InvalidInput(
            f"contributor shares must sum to 10000 basis points, got {total}",
            code="invalid_contributors",
        )
    model.contributors = rows
    session.flush()
    return model.contributors


def delete_model(session: Session, *, model: Model, actor: User) -> None:
    """Delete a listing that has never had a published version."""
    _require_edit(model, actor)
    if any(v.status == "published" for v in model.versions):
        raise Conflict(
            "a model with published versions cannot be deleted (buyers rely on it); "
            "set its visibility to private instead",
            code="model_has_published_versions",
        )
    session.delete(model)
    session.flush()


def find_model(session: Session, *, owner: str, name: str) -> Model | None:
    return session.scalar(
        select(Model).join(Model.owner).where(User.username == owner.lower(), Model.name == name)
    )


def get_model(session: Session, *, owner: str, name: str, viewer: User | None) -> Model:
    """The listing if ``viewer`` may see it; NotFound otherwise (hidden models do not leak)."""
    model = find_model(session, owner=owner, name=name)
    if model is None or not can_view(model, viewer):
        raise NotFound(f"model {owner}/{name} not found", code="model_not_found")
    return model


def get_model_for_edit(session: Session, *, owner: str, name: str, actor: User) -> Model:
    model = get_model(session, owner=owner, name=name, viewer=actor)
    _require_edit(model, actor)
    return model


@dataclass
class Page:
    items: list[Model]
    total: int
    page: int
    per_page: int

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.per_page))


def _like(q: str) -> str:
    escaped = q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def search_models(
    session: Session,
    *,
    viewer: User | None,
    q: str | None = None,
    category: str | None = None,
    tag: str | None = None,
    owner: str | None = None,
    task: str | None = None,
    sort: str = "newest",
    page: int = 1,
    per_page: int = 20,
) -> Page:
    """Listed models matching the filters; an owner (or admin) also sees their own unlisted ones."""
    if sort not in SORTS:
        raise InvalidInput(f"sort must be one of {sorted(SORTS)}", code="invalid_sort")
    if page < 1 or not 1 <= per_page <= 100:
        raise InvalidInput("page must be ≥ 1 and per_page 1-100", code="invalid_page")
    stmt = select(Model)
    own_view = False
    if owner:
        owner_user = get_user_by_username(session, owner)
        stmt = stmt.where(Model.owner_id == owner_user.id)
        own_view = viewer is not None and (viewer.id == owner_user.id or viewer.is_admin)
    if not own_view:
        stmt = stmt.where(Model.visibility == "public", Model.published_at.is_not(None))
    if category:
        cat = get_category(session, category)
        child_ids = select(Category.id).where(Category.parent_id == cat.id)
        stmt = stmt.where(or_(Model.category_id == cat.id, Model.category_id.in_(child_ids)))
    if tag:
        stmt = stmt.where(
            Model.id.in_(select(ModelTag.model_id).where(ModelTag.tag == tag.strip().lower()))
        )
    if task:
        stmt = stmt.where(Model.task == task)
    if q and q.strip():
        terms = q.strip().lower().split()[:8]
        for term in terms:
            pattern = _like(term)
            stmt = stmt.where(
                or_(
                    func.lower(Model.name).like(pattern, escape="\\"),
                    func.lower(Model.title).like(pattern, escape="\\"),
                    func.lower(Model.summary).like(pattern, escape="\\"),
                    Model.id.in_(
                        select(ModelTag.model_id).where(ModelTag.tag.like(pattern, escape="\\"))
                    ),
                )
            )
    total = session.scalar(select(func.count()).select_from(stmt.subquery())) or 0
    items = list(
        session.scalars(
            stmt.order_by(*SORTS[sort], Model.id).offset((page - 1) * per_page).limit(per_page)
        )
    )
    return Page(items=items, total=total, page=page, per_page=per_page)


# ---------------------------------------------------------------- versions and files


def create_version(
    session: Session, *, model: Model, actor: User, version: str, notes: str = ""
) -> ModelVersion:
    """A new draft version of ``model``."""
    _require_edit(model, actor)
    label = validate_version_label(version)
    if any(v.version == label for v in model.versions):
        raise Conflict(f"{model.full_name} already has version {label}", code="version_exists")
    row = ModelVersion(model=model, version=label, notes=notes, status="draft")
    session.add(row)
    session.flush()
    return row


def get_version(
    session: Session, *, model: Model, version: str, viewer: User | None
) -> ModelVersion:
    """A version by label ('main'/'latest' = newest published); drafts only for editors."""
    if version.lower() in LATEST_ALIASES:
        latest = model.latest_version
        if latest is None:
            raise NotFound(f"{model.full_name} has no published version", code="version_not_found")
        return latest
    for v in model.versions:
        if v.version == version and (v.status == "published" or can_edit(model, viewer)):
            return v
    raise NotFound(f"{model.full_name} has no version {version!r}", code="version_not_found")


def visible_versions(model: Model, viewer: User | None) -> list[ModelVersion]:
    editor = can_edit(model, viewer)
    return [v for v in model.versions if editor or v.status == "published"]


def _require_draft(version: ModelVersion) -> None:
    if version.status != "draft":
        raise Conflict(
            f"version {version.version} is published and immutable; create a new version",
            code="version_immutable",
        )


def check_upload(version: ModelVersion, actor: User, path: str) -> str:
    """Validate before any bytes are read: editor, draft version, safe path, file count."""
    _require_edit(version.model, actor)
    _require_draft(version)
    clean = validate_file_path(path)
    if len(version.files) >= MAX_FILES_PER_VERSION and all(f.path != clean for f in version.files):
        raise InvalidInput(
            f"a version holds at most {MAX_FILES_PER_VERSION} files", code="too_many_files"
        )
    return clean


def record_file(
    session: Session,
    *,
    version: ModelVersion,
    actor: User,
    path: str,
    sha256: str,
    size: int,
    content_type: str = "application/octet-stream",
) -> ModelFile:
    """Attach stored bytes to a draft version at ``path`` (replacing what was there)."""
    clean = check_upload(version, actor, path)
    existing = next((f for f in version.files if f.path == clean), None)
    if existing is not None:
        existing.sha256, existing.size, existing.content_type = sha256, size, content_type
        existing.updated_at = utcnow()
        _clear_scan(existing)
        session.flush()
        return existing
    row = ModelFile(
        version=version, path=clean, sha256=sha256, size=size, content_type=content_type
    )
    session.add(row)
    session.flush()
    return row


def delete_file(session: Session, *, version: ModelVersion, actor: User, path: str) -> None:
    _require_edit(version.model, actor)
    _require_draft(version)
    row = get_file(version=version, path=path)
    version.files.remove(row)
    session.flush()


def get_file(*, version: ModelVersion, path: str) -> ModelFile:
    for f in version.files:
        if f.path == path:
            return f
    raise NotFound(f"no file {path!r} in version {version.version}", code="file_not_found")


def build_manifest(version: ModelVersion) -> dict[str, Any]:
    return {
        "model": version.model.full_name,
        "version": version.version,
        "files": [{"path": f.path, "size": f.size, "sha256": f.sha256} for f in version.files],
    }


def manifest_digest(manifest: dict[str, Any]) -> str:
    """sha256 of the manifest's canonical JSON (sorted keys, no whitespace)."""
    canonical = json.dumps(manifest, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class ScanPolicy:
    """What publishing refuses, from the ``scan_*`` settings (docs/scanning.md)."""

    refuse_dangerous: bool = True
    refuse_suspicious: bool = False
    onnx_max_bytes: int = 2**31 - 1

    @classmethod
    def from_settings(cls, settings: Settings) -> ScanPolicy:
        return cls(
            refuse_dangerous=settings.scan_refuse_dangerous,
            refuse_suspicious=settings.scan_refuse_suspicious,
            onnx_max_bytes=settings.scan_onnx_max_bytes,
        )


class BlobFile(io.RawIOBase):
    """A read-only, seekable file over a stored blob: each read decrypts only the chunks it
    touches, so a scanner that seeks over large arguments never holds the whole file."""

    def __init__(self, blobs: BlobStore, address: str, size: int) -> None:
        super().__init__()
        self._blobs, self._address, self._size, self._pos = blobs, address, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._pos = base + offset
        return self._pos

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        end = min(self._size, self._pos + len(view))
        if end <= self._pos:
            return 0
        n = 0
        for piece in self._blobs.read_range(self._address, self._pos, end):
            view[n : n + len(piece)] = piece
            n += len(piece)
        self._pos += n
        return n


def _clear_scan(f: ModelFile) -> None:
    f.scan_status = f.scan_format = f.scan_findings = f.scanner = f.scanned_at = None


def scan_version_files(
    *, version: ModelVersion, blobs: BlobStore, policy: ScanPolicy
) -> dict[str, Verdict]:
    """Scan every file of ``version`` (never unpickling or running anything), store each
    verdict on its row, and refuse what ``policy`` refuses: an ONNX file that is not a valid
    self-contained model (FileRefused, codes in cyxwiz.scanning), a dangerous file
    (``dangerous_file``), a suspicious one if configured (``suspicious_file``)."""
    verdicts: dict[str, Verdict] = {}
    now = utcnow()
    for f in version.files:
        raw = BlobFile(blobs, f.sha256, f.size)
        with io.BufferedReader(raw, buffer_size=1024 * 1024) as stream:
            verdict = scan_file(f.path, stream, f.size, onnx_max_bytes=policy.onnx_max_bytes)
        verdicts[f.path] = verdict
        f.scan_status, f.scan_format = verdict.status, verdict.format
        f.scan_findings, f.scanner, f.scanned_at = verdict.findings, verdict.scanner, now
    for path, verdict in verdicts.items():
        if verdict.status == "dangerous" and policy.refuse_dangerous:
            imports = verdict.dangerous_imports()
            raise FileRefused(
                f"{path} is dangerous: loading it would run "
                + (", ".join(imports[:5]) if imports else "code the scanner found")
                + "; publish model weights in a format that cannot run code (ONNX, "
                "safetensors)",
                code="dangerous_file",
                path=path,
                imports=imports[:20],
            )
        if verdict.status == "suspicious" and policy.refuse_suspicious:
            raise FileRefused(
                f"{path} is suspicious: "
                + "; ".join(str(f.get("import") or f.get("detail")) for f in verdict.findings[:5]),
                code="suspicious_file",
                path=path,
            )
    return verdicts


def publish_version(
    session: Session,
    *,
    version: ModelVersion,
    actor: User,
    blobs: BlobStore,
    policy: ScanPolicy | None = None,
) -> ModelVersion:
    """Freeze a draft version once every file passed its scan (``scan_version_files``):
    write its manifest and digest; it can never change again."""
    _require_edit(version.model, actor)
    _require_draft(version)
    if not version.files:
        raise Conflict(
            "a version needs at least one file before it is published", code="version_empty"
        )
    scan_version_files(version=version, blobs=blobs, policy=policy or ScanPolicy())
    now = utcnow()
    version.manifest = build_manifest(version)
    version.manifest_sha256 = manifest_digest(version.manifest)
    version.status = "published"
    version.published_at = now
    model = version.model
    if model.published_at is None:
        model.published_at = now
    model.updated_at = now
    session.flush()
    return version


def delete_version(session: Session, *, version: ModelVersion, actor: User) -> None:
    _require_edit(version.model, actor)
    _require_draft(version)
    version.model.versions.remove(version)
    session.flush()


def record_download(session: Session, *, model: Model) -> None:
    """Count one download of the model (drives the 'popular' sort)."""
    session.execute(
        update(Model)
        .where(Model.id == model.id)
        .values(downloads=Model.downloads + 1)
        .execution_options(synchronize_session=False)
    )
