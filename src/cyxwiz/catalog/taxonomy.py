"""The category taxonomy, seeded as data (``cyxwiz db upgrade`` keeps the table in sync)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class CategoryNode:
    slug: str
    name: str
    description: str = ""
    children: tuple[CategoryNode, ...] = field(default_factory=tuple)


def _c(slug: str, name: str, description: str = "") -> CategoryNode:
    return CategoryNode(slug=slug, name=name, description=description)


TAXONOMY: tuple[CategoryNode, ...] = (
    CategoryNode(
        "language",
        "Language",
        "Models that read, write and understand text.",
        (
            _c("text-generation", "Text generation"),
            _c("text-classification", "Classification"),
            _c("ner-extraction", "NER & extraction"),
            _c("translation", "Translation"),
            _c("question-answering", "Question answering"),
            _c("embeddings", "Embeddings"),
        ),
    ),
    CategoryNode(
        "vision",
        "Vision",
        "Models that see: images, documents and video.",
        (
            _c("image-classification", "Image classification"),
            _c("object-detection", "Object detection"),
            _c("segmentation", "Segmentation"),
            _c("image-generation", "Image generation"),
            _c("ocr-documents", "OCR & documents"),
            _c("video", "Video"),
        ),
    ),
    CategoryNode(
        "audio",
        "Audio",
        "Speech, music and sound.",
        (
            _c("speech-to-text", "Speech-to-text"),
            _c("text-to-speech", "Text-to-speech"),
            _c("music-generation", "Music generation"),
            _c("audio-classification", "Audio classification"),
        ),
    ),
    CategoryNode("multimodal", "Multimodal", "Models that combine text, images and sound."),
    CategoryNode(
        "tabular",
        "Tabular",
        "Models over rows and columns.",
        (
            _c("tabular-classification", "Classification"),
            _c("tabular-regression", "Regression"),
            _c("forecasting", "Forecasting"),
        ),
    ),
    CategoryNode(
        "domain-specific",
        "Domain-specific",
        "Models built for one industry.",
        (
            _c("healthcare", "Healthcare"),
            _c("finance", "Finance"),
            _c("legal", "Legal"),
            _c("e-commerce", "E-commerce"),
            _c("gaming", "Gaming"),
            _c("scientific", "Scientific"),
        ),
    ),
)


def all_slugs() -> dict[str, str | None]:
    """Every category slug mapped to its parent's slug (None for top-level)."""
    out: dict[str, str | None] = {}
    for top in TAXONOMY:
        out[top.slug] = None
        for child in top.children:
            out[child.slug] = top.slug
    return out
