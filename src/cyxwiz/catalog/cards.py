"""Model cards: Markdown with YAML front matter in the Hugging Face model-card format."""

from __future__ import annotations

from typing import Any

import nh3
import yaml
from markdown_it import MarkdownIt

from cyxwiz.errors import InvalidInput

MAX_CARD_BYTES = 256 * 1024
_md = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False}).enable(
    ["table", "strikethrough"]
)
_ALLOWED_TAGS = {
    "a",
    "abbr",
    "b",
    "blockquote",
    "br",
    "code",
    "del",
    "em",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "hr",
    "i",
    "img",
    "li",
    "ol",
    "p",
    "pre",
    "s",
    "strong",
    "sub",
    "sup",
    "table",
    "tbody",
    "td",
    "th",
    "thead",
    "tr",
    "ul",
}
_ALLOWED_ATTRS = {
    "a": {"href", "title"},
    "img": {"src", "alt", "title"},
    "th": {"align"},
    "td": {"align"},
}


def split_card(text: str) -> tuple[dict[str, Any], str]:
    """Front-matter metadata and Markdown body; InvalidInput if the front matter is broken."""
    if len(text.encode()) > MAX_CARD_BYTES:
        raise InvalidInput(
            f"model card is larger than {MAX_CARD_BYTES // 1024} KiB", code="invalid_model_card"
        )
    normalized = text.replace("\r\n", "\n")
    if not normalized.startswith("---\n"):
        return {}, normalized
    end = normalized.find("\n---", 3)
    if end == -1:
        raise InvalidInput(
            "model card front matter starts with '---' but never ends", code="invalid_model_card"
        )
    raw_meta = normalized[4:end]
    rest = normalized[end + 4 :]
    body = rest.split("\n", 1)[1] if "\n" in rest else ""
    try:
        meta = yaml.safe_load(raw_meta) if raw_meta.strip() else {}
    except yaml.YAMLError as exc:
        raise InvalidInput(
            f"model card front matter is not valid YAML: {exc.__class__.__name__}",
            code="invalid_model_card",
        ) from None
    if not isinstance(meta, dict):
        raise InvalidInput(
            "model card front matter must be a YAML mapping", code="invalid_model_card"
        )
    return meta, body


def render_card(text: str) -> str:
    """The card body as sanitized HTML (no raw HTML, no scripts, safe links only)."""
    _meta, body = split_card(text)
    html = _md.render(body)
    return nh3.clean(
        html,
        tags=_ALLOWED_TAGS,
        attributes=_ALLOWED_ATTRS,
        url_schemes={"http", "https", "mailto"},
        link_rel="nofollow noopener noreferrer",
    )


def card_metrics(meta: dict[str, Any]) -> list[dict[str, Any]]:
    """Flattened metrics from the card's ``model-index`` (what the catalog shows as results)."""
    out: list[dict[str, Any]] = []
    index = meta.get("model-index")
    if not isinstance(index, list):
        return out
    for entry in index:
        for result in (entry or {}).get("results", []) or []:
            if not isinstance(result, dict):
                continue
            dataset = (result.get("dataset") or {}).get("name", "")
            for metric in result.get("metrics", []) or []:
                if isinstance(metric, dict) and "value" in metric:
                    out.append(
                        {
                            "dataset": str(dataset),
                            "type": str(metric.get("type", "")),
                            "name": str(metric.get("name") or metric.get("type", "")),
                            "value": metric["value"],
                        }
                    )
    return out
