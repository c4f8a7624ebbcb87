"""Security headers, cookies, the server banner and offline API docs (issue 9, item 11).

Before the fix: no Content-Security-Policy or Permissions-Policy anywhere, cookies without
``Secure`` in production unless ``cookie_secure`` was set, ``Server: uvicorn`` on every answer,
and /docs loading Swagger UI from a CDN (blank offline).
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from cyxwiz.clock import TestClock
from cyxwiz.config import Env, Settings
from cyxwiz.db import Database
from cyxwiz.storage import BlobStore
from cyxwiz.web.app import create_app
from tests.factories import PASSWORD, Api

TEMPLATES = Path(__file__).parents[2] / "src" / "cyxwiz" / "web" / "templates"


def _csp(r: httpx.Response) -> dict[str, str]:
    header = r.headers.get("content-security-policy", "")
    out = {}
    for part in header.split(";"):
        name, _, value = part.strip().partition(" ")
        if name:
            out[name] = value
    return out


def test_html_pages_carry_a_self_only_csp(client: TestClient, api: Api) -> None:
    account = api.user()
    for path in ("/", "/models", "/login", "/signup", f"/{account.username}", "/nowhere"):
        r = client.get(path, headers={"Accept": "text/html"})
        assert r.headers["content-type"].startswith("text/html"), path
        csp = _csp(r)
        assert csp["default-src"] == "'self'", path
        assert csp["script-src"] == "'self'", path
        assert csp["style-src"] == "'self'", path
        assert csp["img-src"] == "'self' data:", path  # no model-card image from elsewhere
        assert csp["frame-ancestors"] == "'none'", path
        assert csp["object-src"] == "'none'", path
        assert "unsafe-inline" not in r.headers["content-security-policy"]
        assert "unsafe-eval" not in r.headers["content-security-policy"]
        assert "camera=()" in r.headers["permissions-policy"]
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["referrer-policy"] == "same-origin"
        assert r.headers["x-frame-options"] == "DENY"


def test_api_answers_carry_headers_too(client: TestClient) -> None:
    for r in (client.get("/api/v1/models"), client.get("/api/v1/me"), client.get("/health")):
        assert _csp(r)["default-src"] == "'none'"
        assert r.headers["x-content-type-options"] == "nosniff"
        assert "permissions-policy" in r.headers


def test_templates_have_no_inline_script_style_or_handlers() -> None:
    """What the CSP would block: inline <script>, <style>, style= and on*= attributes."""
    offenders = []
    for path in TEMPLATES.rglob("*.html"):
        text = path.read_text()
        for pattern in (r"<script(?![^>]*\bsrc=)", r"<style\b", r"\sstyle=", r"\son[a-z]+="):
            if re.search(pattern, text):
                offenders.append(f"{path.relative_to(TEMPLATES)}: {pattern}")
    assert offenders == []


def test_a_model_cards_external_image_is_blocked_by_the_page_csp(
    client: TestClient, api: Api
) -> None:
    owner = api.user()
    card = "# Card\n\n![tracker](https://tracker.example/pixel.gif)\n"
    model = api.model(owner, card=card)
    full = f"{owner.username}/{model['name']}"
    client.get("/login")
    r = client.post(
        "/login",
        data={
            "login": owner.username,
            "password": PASSWORD,
            "csrf_token": client.cookies.get("cxw_csrf") or "",
        },
        follow_redirects=False,
    )
    assert r.status_code == 303
    page = client.get(f"/{full}", headers={"Accept": "text/html"})
    assert page.status_code == 200  # the owner sees the draft
    assert "https://tracker.example/pixel.gif" in page.text  # the sanitizer keeps it ...
    csp = _csp(page)  # ... and the page's policy tells the browser not to fetch it
    assert "tracker.example" not in csp.get("img-src", "")
    assert csp["img-src"] == "'self' data:"


@pytest.fixture
def prod_client(settings: Settings, db: Database, blobs: BlobStore, clock: TestClock) -> TestClient:
    prod = settings.model_copy(update={"env": Env.production, "cookie_secure": False})
    return TestClient(
        create_app(prod, database=db, blobs=blobs, clock=clock), base_url="https://testserver"
    )


def test_production_forces_secure_cookies_and_hsts(prod_client: TestClient, api: Api) -> None:
    with prod_client as client:
        account = Api(client).user()
        r = client.get("/login", headers={"Accept": "text/html"})
        cookies = r.headers.get_list("set-cookie")
        assert cookies, "the sign-in form sets a CSRF cookie"
        assert all("secure" in c.lower() for c in cookies), cookies
        r = client.post(
            "/login",
            data={
                "login": account.username,
                "password": PASSWORD,
                "csrf_token": client.cookies.get("cxw_csrf") or "",
            },
            follow_redirects=False,
        )
        assert r.status_code == 303
        session = [c for c in r.headers.get_list("set-cookie") if c.startswith("cxw_session=")]
        assert session
        assert "; secure" in session[0].lower()
        assert r.headers["strict-transport-security"].startswith("max-age=31536000")


def test_dev_keeps_cookie_secure_as_configured(client: TestClient) -> None:
    r = client.get("/login", headers={"Accept": "text/html"})
    assert all("secure" not in c.lower() for c in r.headers.get_list("set-cookie"))
    assert "strict-transport-security" not in r.headers


def test_docs_are_served_from_the_package_without_inline_script(client: TestClient) -> None:
    r = client.get("/docs")
    assert r.status_code == 200
    html = r.text
    assert "cdn" not in html.lower()
    assert "https://" not in html
    assert not re.search(r"<script(?![^>]*\bsrc=)", html)
    assert _csp(r)["script-src"] == "'self'"
    for asset in re.findall(r'(?:src|href)="(/[^"]+)"', html):
        a = client.get(asset)
        assert a.status_code == 200, asset
        assert len(a.content) > 100, asset
    assert (
        client.get("/docs/assets/swagger-ui-bundle.js")
        .headers["content-type"]
        .startswith(("application/javascript", "text/javascript"))
    )
    assert client.get("/redoc").status_code == 404  # no ReDoc, and no link to it


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_serve_sends_no_server_banner(tmp_path: Path) -> None:
    """`cyxwiz serve` starts uvicorn without its ``Server: uvicorn`` header, and without
    uvicorn's own X-Forwarded-For handling (which believes any process on 127.0.0.1): a forged
    header does not give a caller a fresh per-IP throttle budget."""
    port = _free_port()
    env = {
        **os.environ,
        "CYXWIZ_DATA_DIR": str(tmp_path / "data"),
        "CYXWIZ_LOCAL_NODE": "false",
        "CYXWIZ_CHAIN_SERVE_RPC": "false",
        "CYXWIZ_REGISTER_IP_MAX_ACCOUNTS": "2",
    }
    env.pop("CYXWIZ_DATABASE_URL", None)
    subprocess.run(
        [sys.executable, "-m", "cyxwiz", "db", "upgrade"], env=env, check=True, capture_output=True
    )
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "cyxwiz", "serve", "--no-node"),
            *("--host", "127.0.0.1", "--port", str(port)),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.2)
        assert r.status_code == 200
        assert "server" not in r.headers
        codes = [
            httpx.post(
                f"http://127.0.0.1:{port}/api/v1/auth/register",
                json={"username": f"xff{i}", "email": "x@example.com", "password": PASSWORD},
                headers={"X-Forwarded-For": f"198.51.100.{i}"},
                timeout=10,
            ).status_code
            for i in range(3)
        ]
        assert codes == [201, 201, 429]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
