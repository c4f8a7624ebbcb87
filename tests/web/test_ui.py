"""The server-rendered web UI, driven like a browser without JavaScript: forms, cookies,
redirects and what each page shows to whom."""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from cyxwiz.config import Settings
from cyxwiz.db import Database
from cyxwiz.storage import BlobStore
from cyxwiz.web.app import create_app
from tests.factories import PASSWORD, Api, onnx_with_payload, tiny_onnx

HTML = {"Accept": "text/html,application/xhtml+xml"}
Response = Any  # TestClient's response class (httpx's, or its successor's)


class Browser:
    """A cookie-keeping client that submits forms the way a browser does (CSRF field included)."""

    def __init__(self, client: TestClient) -> None:
        self.client = client

    def get(self, url: str, **kwargs: Any) -> Response:
        headers = {**HTML, **kwargs.pop("headers", {})}
        return self.client.get(url, headers=headers, follow_redirects=False, **kwargs)

    def csrf(self) -> str:
        token = self.client.cookies.get("cxw_csrf")
        if token is None:
            assert self.get("/login").status_code == 200
            token = self.client.cookies.get("cxw_csrf")
        assert token
        return token

    def post(
        self,
        url: str,
        data: dict[str, str] | None = None,
        *,
        csrf: bool = True,
        files: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> Response:
        form = dict(data or {})
        if csrf:
            form["csrf_token"] = self.csrf()
        return self.client.post(
            url, data=form, files=files, headers={**HTML, **(headers or {})}, follow_redirects=False
        )

    def signup(self, username: str) -> Response:
        r = self.post(
            "/signup",
            {"username": username, "email": f"{username}@example.com", "password": PASSWORD},
        )
        assert r.status_code == 303, r.text
        return r

    def login(self, login: str, password: str = PASSWORD, next: str = "") -> Response:
        return self.post("/login", {"login": login, "password": password, "next": next})

    def create_model(self, name: str, **fields: str) -> Response:
        form = {
            "name": name,
            "title": fields.pop("title", f"Model {name}"),
            "summary": "Predicts things.",
            "category": "tabular-classification",
            "task": "tabular-classification",
            "license": "mit",
            "tags": "onnx, demo",
            "visibility": "public",
            "card": "# Card\n\nHello.",
        }
        form.update(fields)
        return self.post("/new", form)

    def upload(self, url: str, filename: str, data: bytes, path: str = "") -> Response:
        files = {"file": (filename, data, "application/octet-stream")}
        return self.post(f"{url}/upload", {"path": path}, files=files)


@pytest.fixture
def browser(client: TestClient) -> Browser:
    return Browser(client)


@pytest.fixture
def new_browser(app: FastAPI) -> Iterator[Callable[[], Browser]]:
    """More browsers over the same app (each with its own cookie jar)."""
    opened: list[TestClient] = []

    def make() -> Browser:
        c = TestClient(app, raise_server_exceptions=False)
        c.__enter__()
        opened.append(c)
        return Browser(c)

    yield make
    for c in opened:
        c.__exit__(None, None, None)


def _name() -> str:
    return f"u{secrets.token_hex(4)}"


def _text(html: str) -> str:
    """The page's visible text, whitespace collapsed (good enough for assertions)."""
    no_tags = re.sub(r"<[^>]+>", " ", html)
    return re.sub(r"\s+", " ", no_tags)


def _model_api(api: Api, full: str) -> dict[str, Any]:
    r = api.client.get(f"/api/v1/models/{full}")
    assert r.status_code == 200, r.text
    return dict(r.json())


# ---------------------------------------------------------------- browsing


def test_home_shows_categories_and_newest_models(browser: Browser, api: Api) -> None:
    owner = api.user()
    api.published_model(owner, "iris-net", title="Iris Net", summary="Tells irises apart.")
    api.model(owner, "secret-draft", title="Hidden Draft")  # a draft: never listed

    r = browser.get("/")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    text = _text(r.text)
    assert "The App Store for AI models" in text
    for category in ("Language", "Vision", "Audio", "Multimodal", "Tabular", "Domain-specific"):
        assert category in text
    assert "Speech-to-text" in text  # subcategories listed under their parent
    assert "Iris Net" in text
    assert f"{owner.username}/iris-net" in text
    assert "Tells irises apart." in text
    assert "v1.0.0" in text
    assert "Hidden Draft" not in text
    assert 'name="q"' in r.text
    assert 'action="/models"' in r.text
    assert "cxw_csrf" in r.cookies


def test_search_filters_by_words_category_and_tag(browser: Browser, api: Api) -> None:
    owner = api.user()
    api.published_model(owner, "iris-net", title="Iris Net", category="tabular-classification")
    api.published_model(
        owner, "cat-detector", title="Cat Detector", category="object-detection", tags=["cats"]
    )
    api.published_model(owner, "sentiment", title="Sentiment", category="text-classification")

    r = browser.get("/models", params={"q": "iris"})
    assert r.status_code == 200
    assert "Iris Net" in r.text
    assert "Cat Detector" not in r.text
    assert "1 model" in _text(r.text)

    r = browser.get("/models", params={"category": "vision"})  # parent includes its children
    assert "Cat Detector" in r.text
    assert "Iris Net" not in r.text
    assert "Sentiment" not in r.text

    r = browser.get("/models", params={"category": "text-classification"})
    assert "Sentiment" in r.text
    assert "Cat Detector" not in r.text

    r = browser.get("/models", params={"tag": "cats"})
    assert "Cat Detector" in r.text
    assert "Iris Net" not in r.text

    r = browser.get("/models", params={"q": "zebra-unicorn"})
    assert r.status_code == 200
    assert "No models found" in r.text

    r = browser.get("/models", params={"category": "no-such-category"})
    assert r.status_code == 422
    assert "unknown category" in r.text

    r = browser.get("/models", params={"sort": "bogus", "page": "x"})  # bad params: defaults
    assert r.status_code == 200
    assert "Iris Net" in r.text


def test_search_sorts_and_paginates(browser: Browser, api: Api) -> None:
    owner = api.user()
    for i in range(25):
        api.published_model(owner, f"bulk-{i:02d}", title=f"Bulk model {i:02d}")

    r = browser.get("/models", params={"q": "bulk", "sort": "name"})
    assert r.status_code == 200
    text = _text(r.text)
    assert "25 models" in text
    assert "Page 1 of 2" in text
    assert "Bulk model 00" in text
    assert "Bulk model 24" not in text
    next_link = re.search(r'href="([^"]+)"\s+rel="next"|rel="next" href="([^"]+)"', r.text)
    assert next_link is not None
    href = (next_link.group(1) or next_link.group(2)).replace("&amp;", "&")
    assert "page=2" in href
    assert "q=bulk" in href
    assert "sort=name" in href

    r = browser.get(href)
    text = _text(r.text)
    assert "Page 2 of 2" in text
    assert "Bulk model 24" in text
    assert "Bulk model 00" not in text


CARD = """---
license: mit
model-index:
  - name: iris-net
    results:
      - task: {type: tabular-classification}
        dataset: {name: Iris test split, type: iris}
        metrics:
          - {type: accuracy, value: 0.973}
---

# Iris Net card

Some **bold** claims and a [link](https://example.com).

<script>alert("card")</script>

<img src=x onerror="alert('img')">

[bad](javascript:alert(1))
"""


def test_model_page_renders_sanitized_card_metrics_and_files(browser: Browser, api: Api) -> None:
    owner = api.user()
    data = onnx_with_payload(b"\x00onnx-model-bytes" * 90)  # a valid model file
    api.published_model(
        owner,
        "iris-net",
        title="Iris <i>Net</i>",
        card=CARD,
        license="mit",
        files={"model.onnx": data},
    )
    r = browser.get(f"/{owner.username}/iris-net")
    assert r.status_code == 200
    html = r.text
    # the card is rendered Markdown ...
    assert "<h1>Iris Net card</h1>" in html
    assert "<strong>bold</strong>" in html
    assert 'href="https://example.com"' in html
    # ... with raw HTML and scripts neutralized
    assert '<script>alert("card")</script>' not in html
    assert "&lt;script&gt;" in html
    assert "onerror" not in html.replace("&lt;img src=x onerror=", "")
    assert 'href="javascript:' not in html
    # fields from the database are escaped, never interpreted
    assert "Iris &lt;i&gt;Net&lt;/i&gt;" in html
    assert "<i>Net</i>" not in html
    # metrics from the card's model-index
    text = _text(html)
    assert "Iris test split" in text
    assert "accuracy" in text
    assert "0.973" in text
    # files of the latest version: size, sha256 (full value on hover), download link
    sha = hashlib.sha256(data).hexdigest()
    assert "model.onnx" in text
    assert "1.7 kB" in text
    assert f'title="sha256: {sha}"' in html
    assert f'href="/{owner.username}/iris-net/resolve/1.0.0/model.onnx"' in html
    assert "License: mit" in text
    assert "Tabular" in text
    assert "Manage" not in text  # strangers get no owner tools


def test_model_page_for_owner_shows_manage_links(browser: Browser) -> None:
    name = _name()
    browser.signup(name)
    assert browser.create_model("my-model", visibility="draft").status_code == 303
    r = browser.get(f"/{name}/my-model")
    assert r.status_code == 200
    text = _text(r.text)
    assert "Draft" in text
    assert "Manage" in text
    assert f'href="/{name}/my-model/versions/new"' in r.text
    assert f'href="/{name}/my-model/edit"' in r.text

    assert browser.post(f"/{name}/my-model/versions/new", {"version": "0.1"}).status_code == 303
    r = browser.get(f"/{name}/my-model")
    assert f'href="/{name}/my-model/versions/0.1#upload"' in r.text


def test_hidden_models_are_404_for_strangers(
    browser: Browser, new_browser: Callable[[], Browser], api: Api
) -> None:
    owner_name = _name()
    browser.signup(owner_name)
    assert browser.create_model("drafty", visibility="draft").status_code == 303
    assert browser.create_model("private-one", visibility="private").status_code == 303
    assert browser.create_model("public-unreleased", visibility="public").status_code == 303

    stranger = new_browser()
    stranger.signup(_name())
    anonymous = new_browser()
    for who in (stranger, anonymous):
        for model in ("drafty", "private-one"):
            r = who.get(f"/{owner_name}/{model}")
            assert r.status_code == 404, model
            assert "Not found" in r.text
            assert "private or not published" in r.text
        # a public listing without a published version can be seen but offers no files
        r = who.get(f"/{owner_name}/public-unreleased")
        assert r.status_code == 200
        assert "No version has been published yet" in r.text

    assert browser.get(f"/{owner_name}/drafty").status_code == 200
    assert browser.get(f"/{owner_name}/private-one").status_code == 200


# ---------------------------------------------------------------- accounts


def test_signup_login_logout_flow(browser: Browser, client: TestClient) -> None:
    r = browser.get("/signup")
    assert r.status_code == 200
    assert 'name="csrf_token"' in r.text
    name = _name()
    r = browser.signup(name)
    assert r.headers["location"] == "/"
    cookie = next(h for h in r.headers.get_list("set-cookie") if h.startswith("cxw_session="))
    assert "HttpOnly" in cookie
    assert "samesite=lax" in cookie.lower()
    assert "Secure" not in cookie
    session_token = client.cookies["cxw_session"]

    home = browser.get("/")
    assert f'href="/{name}"' in home.text
    assert "Sign out" in home.text
    assert "Welcome to CyxWiz" in home.text  # the one-time flash message
    assert "Welcome to CyxWiz" not in browser.get("/").text

    confirm = browser.get("/logout")
    assert confirm.status_code == 200
    assert "Sign out?" in confirm.text
    r = browser.post("/logout")
    assert r.status_code == 303
    assert r.headers["location"] == "/"
    assert "cxw_session" not in client.cookies
    assert "Sign in" in browser.get("/").text
    # the session token is revoked, not only forgotten by the browser
    me = client.get("/api/v1/me", headers={"Authorization": f"Bearer {session_token}"})
    assert me.status_code == 401

    r = browser.login(name, "wrong password")
    assert r.status_code == 401
    assert "username or password is wrong" in r.text
    assert f'value="{name}"' in r.text  # what the user typed is kept
    assert "cxw_session" not in client.cookies

    r = browser.login(f"{name}@example.com")  # login is by username only
    assert r.status_code == 401
    r = browser.login(name.upper())
    assert r.status_code == 303
    assert "cxw_session" in client.cookies
    assert f'href="/{name}"' in browser.get("/").text


def test_login_next_redirects_only_to_local_paths(browser: Browser, api: Api) -> None:
    account = api.user()
    r = browser.login(account.username, next="/models?q=iris")
    assert r.status_code == 303
    assert r.headers["location"] == "/models?q=iris"
    for evil in ("//evil.example/x", "https://evil.example/", "/\\evil.example", "javascript:1"):
        r = browser.login(account.username, next=evil)
        assert r.status_code == 303
        assert r.headers["location"] == "/", evil


def test_protected_pages_send_anonymous_visitors_to_login(browser: Browser, api: Api) -> None:
    r = browser.get("/new")
    assert r.status_code == 303
    assert r.headers["location"] == "/login?next=/new"
    r = browser.get("/login?next=/new")
    assert 'name="next" value="/new"' in r.text
    account = api.user()
    r = browser.login(account.username, next="/new")
    assert r.headers["location"] == "/new"
    assert browser.get("/new").status_code == 200


def test_signup_errors_rerender_the_form(browser: Browser, api: Api) -> None:
    r = browser.post(
        "/signup", {"username": "models", "email": "m@example.com", "password": PASSWORD}
    )
    assert r.status_code == 422
    assert "reserved" in r.text
    assert 'value="m@example.com"' in r.text
    taken = api.user()
    r = browser.post(
        "/signup",
        {"username": taken.username, "email": "new@example.com", "password": PASSWORD},
    )
    assert r.status_code == 409
    assert "is taken" in r.text
    r = browser.post("/signup", {"username": "okname", "email": "o@example.com", "password": "x"})
    assert r.status_code == 422
    assert "at least 8 characters" in r.text


def test_posts_without_a_valid_csrf_token_are_refused(
    browser: Browser, client: TestClient, api: Api
) -> None:
    name = _name()
    browser.signup(name)
    form = {"name": "sneaky", "title": "Sneaky", "category": "vision", "visibility": "public"}

    r = client.post("/new", data=form, follow_redirects=False)  # no token at all
    assert r.status_code == 403
    assert r.json()["code"] == "csrf_failed"
    r = client.post("/new", data={**form, "csrf_token": "x" * 43}, follow_redirects=False)
    assert r.status_code == 403
    assert r.json()["code"] == "csrf_failed"
    r = browser.post("/new", form, csrf=False)  # a browser gets the error page
    assert r.status_code == 403
    assert "security token" in r.text
    assert client.get(f"/api/v1/models/{name}/sneaky").status_code == 404

    r = client.post("/logout", follow_redirects=False)
    assert r.status_code == 403
    assert f'href="/{name}"' in browser.get("/").text  # still signed in

    account = api.user()
    r = client.post(
        "/login", data={"login": account.username, "password": PASSWORD}, follow_redirects=False
    )
    assert r.status_code == 403  # login CSRF is refused too


# ---------------------------------------------------------------- listings


def test_create_listing_form(browser: Browser) -> None:
    name = _name()
    browser.signup(name)
    r = browser.get("/new")
    assert r.status_code == 200
    html = r.text
    assert '<optgroup label="Vision">' in html
    assert '<option value="object-detection"' in html
    assert '<option value="multimodal"' in html  # a category without children is selectable
    assert re.search(r'<option value="public"\s+selected', html)
    assert "model-index" in html
    assert "## Intended uses" in html

    r = browser.create_model("Bad Name!")
    assert r.status_code == 422
    assert "model name must be" in r.text
    assert 'value="Bad Name!"' in r.text  # the form keeps what was typed

    r = browser.create_model("iris-net", title="Iris Net", tags="onnx, iris")
    assert r.status_code == 303
    assert r.headers["location"] == f"/{name}/iris-net"
    page = browser.get(r.headers["location"])
    assert page.status_code == 200
    text = _text(page.text)
    assert "Iris Net" in text
    assert "#iris" in text
    assert "Created" in text

    r = browser.create_model("iris-net")
    assert r.status_code == 409
    assert "already exists" in r.text


def test_edit_listing_changes_visibility(
    browser: Browser, new_browser: Callable[[], Browser]
) -> None:
    name = _name()
    browser.signup(name)
    browser.create_model("editable", title="Before")
    r = browser.get(f"/{name}/editable/edit")
    assert r.status_code == 200
    assert 'value="Before"' in r.text
    form = {
        "title": "After",
        "summary": "New summary",
        "category": "vision",
        "task": "",
        "license": "mit",
        "tags": "one, two",
        "visibility": "private",
        "card": "# New",
    }
    r = browser.post(f"/{name}/editable/edit", form)
    assert r.status_code == 303
    assert "After" in browser.get(f"/{name}/editable").text
    assert new_browser().get(f"/{name}/editable").status_code == 404

    stranger = new_browser()
    stranger.signup(_name())
    assert stranger.get(f"/{name}/editable/edit").status_code == 404
    r = browser.post(f"/{name}/editable/edit", {**form, "title": ""})
    assert r.status_code == 422
    assert "title" in r.text


# ---------------------------------------------------------------- versions, upload, download


def test_upload_through_the_form_then_publish_and_download(
    browser: Browser, new_browser: Callable[[], Browser], client: TestClient
) -> None:
    name = _name()
    browser.signup(name)
    browser.create_model("weights")
    base = f"/{name}/weights"

    r = browser.get(f"{base}/versions/new")
    assert r.status_code == 200
    assert 'value="1.0.0"' in r.text
    r = browser.post(f"{base}/versions/new", {"version": "1.0.0", "notes": "First release"})
    assert r.status_code == 303
    assert r.headers["location"] == f"{base}/versions/1.0.0"

    page = browser.get(f"{base}/versions/1.0.0")
    assert page.status_code == 200
    assert 'enctype="multipart/form-data"' in page.text
    assert 'type="file"' in page.text

    # several upload and cipher chunks, and a valid model (publishing checks .onnx files)
    data = onnx_with_payload(secrets.token_bytes(2 * 1024 * 1024 + 12345))
    r = browser.upload(f"{base}/versions/1.0.0", "C:\\fakepath\\model.onnx", data)
    assert r.status_code == 303, r.text
    page = browser.get(r.headers["location"])
    text = _text(page.text)
    assert "Uploaded model.onnx (2.1 MB)" in text
    sha = hashlib.sha256(data).hexdigest()
    assert sha in page.text
    assert "model.onnx" in text
    r = browser.upload(f"{base}/versions/1.0.0", "readme.txt", b"hello", path="docs/README.md")
    assert r.status_code == 303

    # the owner may fetch draft files; nobody else may
    assert browser.get(f"{base}/resolve/1.0.0/model.onnx").content == data
    assert new_browser().get(f"{base}/resolve/1.0.0/model.onnx").status_code == 404

    r = browser.post(f"{base}/versions/1.0.0/publish")
    assert r.status_code == 303
    assert r.headers["location"] == base
    model_page = browser.get(base)
    assert "Published version 1.0.0" in model_page.text
    version_page = browser.get(f"{base}/versions/1.0.0")
    assert "Manifest sha256" in version_page.text
    assert "Upload a file" not in version_page.text  # published versions are frozen

    anonymous = new_browser()
    r = anonymous.get(f"{base}/resolve/main/model.onnx")
    assert r.status_code == 200
    assert r.content == data
    assert r.headers["x-checksum-sha256"] == sha
    assert r.headers["etag"] == f'"{sha}"'
    assert "model.onnx" in r.headers["content-disposition"]
    assert anonymous.get(f"{base}/resolve/1.0.0/docs/README.md").content == b"hello"

    r = anonymous.get(f"{base}/resolve/main/model.onnx", headers={"Range": "bytes=1000-1999"})
    assert r.status_code == 206
    assert r.content == data[1000:2000]
    assert r.headers["content-range"] == f"bytes 1000-1999/{len(data)}"

    version_page = anonymous.get(f"{base}/versions/1.0.0")
    assert version_page.status_code == 200
    assert "Manifest sha256" in version_page.text
    assert "Delete" not in version_page.text

    r = anonymous.client.head(f"{base}/resolve/main/model.onnx")
    assert r.status_code == 200
    assert r.headers["content-length"] == str(len(data))
    assert r.content == b""

    # two full downloads by others were counted; the owner's, the range and the HEAD were not
    assert client.get(f"/api/v1/models/{name}/weights").json()["downloads"] == 2


def test_upload_form_errors_rerender_the_version_page(browser: Browser) -> None:
    name = _name()
    browser.signup(name)
    browser.create_model("errs")
    base = f"/{name}/errs/versions/1.0"
    assert browser.post(f"/{name}/errs/versions/new", {"version": "1.0"}).status_code == 303

    r = browser.post(f"{base}/upload", {"path": ""})  # no file chosen
    assert r.status_code == 422
    assert "choose a file" in r.text
    r = browser.upload(base, "x.bin", b"data", path="../escape.bin")
    assert r.status_code == 422
    assert "invalid file path" in r.text
    assert 'value="../escape.bin"' in r.text

    r = browser.post(f"{base}/publish")  # nothing uploaded yet
    assert r.status_code == 409
    assert "at least one file" in r.text

    r = browser.upload(base, "my model (1).onnx", tiny_onnx())  # a safe default path
    assert r.status_code == 303
    assert "my-model-1.onnx" in browser.get(base).text
    assert browser.upload(base, "a.bin", b"aaa").status_code == 303
    assert browser.upload(base, "b.bin", b"bbb").status_code == 303
    r = browser.post(f"{base}/delete-file", {"path": "a.bin"})
    assert r.status_code == 303
    page = browser.get(base)
    assert "b.bin" in page.text
    assert "a.bin" not in _text(page.text).replace("Deleted a.bin", "")

    assert browser.post(f"{base}/publish").status_code == 303
    r = browser.upload(base, "c.bin", b"ccc")
    assert r.status_code == 409
    assert "immutable" in r.text


def test_uploads_over_the_size_limit_are_refused(
    settings: Settings, db: Database, blobs: BlobStore
) -> None:
    small = create_app(
        settings.model_copy(update={"max_upload_bytes": 10_000}), database=db, blobs=blobs
    )
    with TestClient(small, raise_server_exceptions=False) as client:
        browser = Browser(client)
        name = _name()
        browser.signup(name)
        browser.create_model("small")
        assert browser.post(f"/{name}/small/versions/new", {"version": "1"}).status_code == 303
        base = f"/{name}/small/versions/1"
        r = browser.upload(base, "big.bin", secrets.token_bytes(20_000))
        assert r.status_code == 413
        assert browser.upload(base, "fits.bin", b"x" * 5_000).status_code == 303
        page = browser.get(base)
        assert "fits.bin" in page.text
        assert "big.bin" not in page.text


def test_session_cookie_is_secure_when_configured(
    settings: Settings, db: Database, blobs: BlobStore
) -> None:
    secure = create_app(
        settings.model_copy(update={"cookie_secure": True}), database=db, blobs=blobs
    )
    with TestClient(secure, base_url="https://testserver", raise_server_exceptions=False) as client:
        r = Browser(client).signup(_name())
        cookies = r.headers.get_list("set-cookie")
        session_cookie = next(h for h in cookies if h.startswith("cxw_session="))
        assert "Secure" in session_cookie
        assert "HttpOnly" in session_cookie


def test_non_owners_cannot_upload_publish_or_delete(
    browser: Browser, new_browser: Callable[[], Browser], client: TestClient
) -> None:
    owner = _name()
    browser.signup(owner)
    browser.create_model("open", visibility="public")
    browser.create_model("closed", visibility="draft")
    for model in ("open", "closed"):
        assert browser.post(f"/{owner}/{model}/versions/new", {"version": "1"}).status_code == 303
        assert browser.upload(f"/{owner}/{model}/versions/1", "m.bin", b"owner").status_code == 303

    stranger = new_browser()
    stranger.signup(_name())
    for model, status in (("open", 403), ("closed", 404)):
        base = f"/{owner}/{model}/versions/1"
        assert stranger.upload(base, "evil.bin", b"evil").status_code == status
        assert stranger.post(f"{base}/publish").status_code == status
        assert stranger.post(f"{base}/delete-file", {"path": "m.bin"}).status_code == status
        assert (
            stranger.post(f"/{owner}/{model}/versions/new", {"version": "2"}).status_code == status
        )
        assert stranger.get(f"/{owner}/{model}/versions/new").status_code == status
        assert stranger.get(base).status_code == 404  # drafts are the owner's

    # nothing changed: still one draft version holding the owner's file
    for model in ("open", "closed"):
        page = browser.get(f"/{owner}/{model}/versions/1")
        assert "m.bin" in page.text
        assert "evil.bin" not in page.text
        assert "Draft" in page.text

    anonymous = new_browser()
    r = anonymous.upload(f"/{owner}/open/versions/1", "anon.bin", b"anon")
    assert r.status_code == 303
    assert r.headers["location"].startswith("/login?next=")


def test_resolve_route_is_hugging_face_compatible(
    browser: Browser, api: Api, client: TestClient
) -> None:
    owner = api.user()
    api.published_model(owner, "hf-style", files={"config.json": b'{"a": 1}'})
    base = f"/{owner.username}/hf-style/resolve"

    r = client.get(f"{base}/main/config.json")  # no cookie, no token: a free public model
    assert r.status_code == 200
    assert r.content == b'{"a": 1}'
    assert re.fullmatch(r"[0-9a-f]{40}", r.headers["x-repo-commit"])
    assert r.headers["accept-ranges"] == "bytes"
    etag = r.headers["etag"]
    assert (
        client.get(f"{base}/main/config.json", headers={"If-None-Match": etag}).status_code == 304
    )
    assert client.get(f"{base}/1.0.0/config.json").content == b'{"a": 1}'
    assert client.get(f"{base}/main/missing.json").status_code == 404
    assert client.get(f"{base}/9.9.9/config.json").status_code == 404
    r = client.get(f"{base}/main/config.json", headers={"Range": "bytes=100-200"})
    assert r.status_code == 416

    draft = api.model(owner, "hf-draft")
    api.version(owner, draft["full_name"])
    api.upload(owner, draft["full_name"], "1.0.0", "w.bin", b"w")
    assert client.get(f"/{draft['full_name']}/resolve/1.0.0/w.bin").status_code == 404
    r = client.get(f"/{draft['full_name']}/resolve/1.0.0/w.bin", headers=owner.headers)
    assert r.status_code == 200
    assert r.content == b"w"


# ---------------------------------------------------------------- profiles and errors


def test_profile_lists_models_and_owner_sees_drafts(
    browser: Browser, new_browser: Callable[[], Browser], api: Api
) -> None:
    name = _name()
    browser.signup(name)
    browser.create_model("wip", title="Work In Progress", visibility="draft")
    mine = browser.get(f"/{name}")
    assert mine.status_code == 200
    assert "Your models" in mine.text
    assert "Work In Progress" in mine.text
    assert "Draft" in mine.text

    other = new_browser().get(f"/{name}")
    assert other.status_code == 200
    assert "Work In Progress" not in other.text
    assert "No public models yet" in other.text

    publisher = api.user()
    api.published_model(publisher, "shown", title="Shown Model")
    assert "Shown Model" in new_browser().get(f"/{publisher.username}").text

    assert browser.get("/nobody-here").status_code == 404


def test_error_pages_are_friendly_html_for_browsers(browser: Browser, client: TestClient) -> None:
    r = browser.get("/no-user/no-model")
    assert r.status_code == 404
    assert r.headers["content-type"].startswith("text/html")
    text = _text(r.text)
    assert "404" in text
    assert "Not found" in text
    assert "Browse models" in text
    assert "CyxWiz" in text  # in the site layout

    r = browser.get("/a/b/c/d/e/f")
    assert r.status_code == 404
    assert "Go home" in r.text

    r = client.get("/no-user/no-model")  # API clients keep problem+json
    assert r.status_code == 404
    assert r.json()["code"] == "model_not_found"


def test_static_assets_are_served(client: TestClient) -> None:
    css = client.get("/static/cyxwiz.css")
    assert css.status_code == 200
    assert ".model-card" in css.text
    assert client.get("/static/favicon.svg").status_code == 200
    r = client.get("/favicon.ico", follow_redirects=False)
    assert r.status_code == 301
    assert r.headers["location"] == "/static/favicon.svg"
