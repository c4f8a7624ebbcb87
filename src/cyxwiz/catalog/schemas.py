"""Request and response shapes for the catalog."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt

from cyxwiz.catalog.cards import card_metrics, split_card
from cyxwiz.catalog.models import Category, Model, ModelFile, ModelVersion

Visibility = Literal["draft", "public", "unlisted", "private"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ContributorIn(Strict):
    username: str = Field(min_length=1, max_length=39)
    share_bps: StrictInt = Field(
        ge=1, le=10000, description="basis points; all shares sum to 10000"
    )
    role: str = Field(default="contributor", max_length=40)


class ModelCreate(Strict):
    name: str = Field(min_length=1, max_length=64, examples=["iris-classifier"])
    title: str = Field(min_length=1, max_length=120, examples=["Iris species classifier"])
    summary: str = Field(default="", max_length=300)
    category: str = Field(examples=["tabular-classification"], description="a category slug")
    task: str = Field(default="", max_length=64, examples=["tabular-classification"])
    framework: str = Field(default="onnx", max_length=32)
    license: str = Field(default="other", max_length=64, examples=["apache-2.0"])
    visibility: Visibility = "draft"
    tags: list[str] = Field(default_factory=list, max_length=20)
    card: str = Field(default="", description="Markdown with YAML front matter (HF model card)")


class ModelUpdate(Strict):
    title: str | None = Field(default=None, min_length=1, max_length=120)
    summary: str | None = Field(default=None, max_length=300)
    category: str | None = None
    task: str | None = Field(default=None, max_length=64)
    framework: str | None = Field(default=None, max_length=32)
    license: str | None = Field(default=None, max_length=64)
    visibility: Visibility | None = None
    tags: list[str] | None = Field(default=None, max_length=20)
    card: str | None = None
    contributors: list[ContributorIn] | None = Field(default=None, max_length=50)


class CategoryRef(BaseModel):
    slug: str
    name: str
    parent: str | None = None


class CategoryNodeOut(BaseModel):
    slug: str
    name: str
    description: str
    model_count: int
    children: list[CategoryRef]


class ContributorOut(BaseModel):
    username: str
    share_bps: int
    role: str


class FileScanOut(BaseModel):
    """The file's safety scan at publish (docs/scanning.md); ``status`` is null until the
    version is published (and for files published before scanning existed)."""

    status: Literal["clean", "suspicious", "dangerous", "not_applicable"] | None = Field(
        description="clean: a known format with nothing executable or only allow-listed "
        "imports; suspicious: imports or content the scanner does not know to be harmless; "
        "dangerous: loading it runs code (refused at publish by default); not_applicable: "
        "a format the scanner does not analyse; null: not scanned"
    )
    format: str | None = Field(description="what the scanner read it as: onnx, pickle, ...")
    findings: list[dict[str, Any]] = Field(
        description="why: imports ('import': 'module.name', 'severity') and problems"
    )
    scanner: str | None
    scanned_at: datetime | None


class FileOut(BaseModel):
    path: str
    size: int
    sha256: str
    content_type: str
    updated_at: datetime
    scan: FileScanOut


class VersionCreate(Strict):
    version: str = Field(min_length=1, max_length=64, examples=["1.0.0"])
    notes: str = Field(default="", max_length=10000)


class VersionOut(BaseModel):
    id: uuid.UUID
    version: str
    status: Literal["draft", "published"]
    notes: str
    created_at: datetime
    published_at: datetime | None
    files: list[FileOut]
    total_size: int
    manifest: dict[str, Any] | None
    manifest_sha256: str | None


class ModelOut(BaseModel):
    id: uuid.UUID
    full_name: str
    owner: str
    name: str
    title: str
    summary: str
    category: CategoryRef
    task: str
    framework: str
    license: str
    visibility: Visibility
    tags: list[str]
    card: str
    card_data: dict[str, Any]
    metrics: list[dict[str, Any]]
    contributors: list[ContributorOut]
    downloads: int
    latest_version: str | None
    created_at: datetime
    updated_at: datetime
    published_at: datetime | None


class ModelSummary(BaseModel):
    full_name: str
    owner: str
    name: str
    title: str
    summary: str
    category: CategoryRef
    task: str
    tags: list[str]
    visibility: Visibility
    downloads: int
    latest_version: str | None
    updated_at: datetime
    published_at: datetime | None


class ModelPage(BaseModel):
    items: list[ModelSummary]
    total: int
    page: int
    per_page: int
    pages: int


def category_ref(cat: Category) -> CategoryRef:
    return CategoryRef(slug=cat.slug, name=cat.name, parent=cat.parent.slug if cat.parent else None)


def file_out(f: ModelFile) -> FileOut:
    return FileOut(
        path=f.path,
        size=f.size,
        sha256=f.sha256,
        content_type=f.content_type,
        updated_at=f.updated_at,
        scan=FileScanOut(
            status=f.scan_status,
            format=f.scan_format,
            findings=list(f.scan_findings or []),
            scanner=f.scanner,
            scanned_at=f.scanned_at,
        ),
    )


def version_out(v: ModelVersion) -> VersionOut:
    return VersionOut(
        id=v.id,
        version=v.version,
        status=v.status,
        notes=v.notes,
        created_at=v.created_at,
        published_at=v.published_at,
        files=[file_out(f) for f in v.files],
        total_size=v.total_size,
        manifest=v.manifest,
        manifest_sha256=v.manifest_sha256,
    )


def model_summary(m: Model) -> ModelSummary:
    latest = m.latest_version
    return ModelSummary(
        full_name=m.full_name,
        owner=m.owner.username,
        name=m.name,
        title=m.title,
        summary=m.summary,
        category=category_ref(m.category),
        task=m.task,
        tags=m.tags,
        visibility=m.visibility,
        downloads=m.downloads,
        latest_version=latest.version if latest else None,
        updated_at=m.updated_at,
        published_at=m.published_at,
    )


def model_out(m: Model) -> ModelOut:
    meta, _body = split_card(m.card)
    latest = m.latest_version
    return ModelOut(
        id=m.id,
        full_name=m.full_name,
        owner=m.owner.username,
        name=m.name,
        title=m.title,
        summary=m.summary,
        category=category_ref(m.category),
        task=m.task,
        framework=m.framework,
        license=m.license,
        visibility=m.visibility,
        tags=m.tags,
        card=m.card,
        card_data=meta,
        metrics=card_metrics(meta),
        contributors=[
            ContributorOut(username=c.user.username, share_bps=c.share_bps, role=c.role)
            for c in m.contributors
        ],
        downloads=m.downloads,
        latest_version=latest.version if latest else None,
        created_at=m.created_at,
        updated_at=m.updated_at,
        published_at=m.published_at,
    )
