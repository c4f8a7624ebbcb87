"""The inference playground on the model page, against a real marketplace (real metering, demo
credits) and a real node: what runs is what ONNX Runtime gives on the file."""

from __future__ import annotations

import base64
import html
import json
import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.factories import PASSWORD
from tests.gateway.conftest import _database_url
from tests.node.conftest import Stack, TinyModels, _account, serve

from cyxwiz.config import Settings
from cyxwiz.db import Database, make_engine
from cyxwiz.demo.models import run_onnx
from cyxwiz.migrate import upgrade
from cyxwiz.web.app import create_app

CREDITS = 3
HTML = {"Accept": "text/html"}


class Browser:
    """A cookie-keeping client posting forms the way a browser does."""

    def __init__(self, url: str) -> None:
        self.client = httpx.Client(base_url=url, timeout=30, follow_redirects=False)

    def get(self, url: str) -> httpx.Response:
        return self.client.get(url, headers=HTML)

    def csrf(self) -> str:
        token = self.client.cookies.get("cxw_csrf")
        if token is None:
            assert self.get("/login").status_code == 200
            token = self.client.cookies.get("cxw_csrf")
        assert token
        return token

    def post(self, url: str, data: dict[str, str], *, csrf: bool = True) -> httpx.Response:
        form = dict(data)
        if csrf:
            form["csrf_token"] = self.csrf()
        return self.client.post(url, data=form, headers=HTML)

    def login(self, username: str) -> None:
        r = self.post("/login", {"login": username, "password": PASSWORD, "next": ""})
        assert r.status_code == 303, r.text


@pytest.fixture(scope="module")
def pg(tmp_path_factory: pytest.TempPathFactory, tiny_models: TinyModels) -> Iterator[Stack]:
    """A marketplace with the real metering engine, ``CREDITS`` demo runs per model, one node."""
    tmp: Path = tmp_path_factory.mktemp("playground")
    db_url = _database_url(tmp, "playground")
    engine = make_engine(db_url)
    upgrade(engine)
    engine.dispose()
    settings = Settings(
        data_dir=tmp / "data",
        master_key=base64.b64encode(secrets.token_bytes(32)).decode(),
        demo_credits_per_model=CREDITS,
        inference_rate_per_second=10_000.0,
        inference_burst=10_000,
        inference_nodes_cache_seconds=0.2,
        inference_node_timeout_seconds=10.0,
    )
    db = Database.from_url(db_url)
    app = create_app(settings, database=db)
    market = serve(app)
    http = httpx.Client(base_url=market.url, timeout=30)
    st = Stack(
        url=market.url,
        db=db,
        settings=settings,
        admin=_account(http, "pg-admin"),
        creator=_account(http, "pg-creator"),
        operator=_account(http, "pg-operator"),
        tmp=tmp,
        http=http,
    )
    sample_in = {"inputs": tiny_models.iris_rows[:2]}
    sample_out = run_onnx(tiny_models.iris, tiny_models.iris_rows[:2])
    config = {"sample_input": sample_in, "sample_output": sample_out}
    st.publish("iris", {"model.onnx": tiny_models.iris, "config.json": json.dumps(config).encode()})
    st.publish("ridge", {"model.onnx": tiny_models.regressor})
    card = (
        "# Ridge\n\nRequest body:\n\n```json\n"
        + json.dumps({"inputs": tiny_models.reg_rows[:1]})
        + '\n```\n\nResponse:\n\n```json\n{"predictions": [{"y0": 1.0}]}\n```\n'
    )
    r = http.patch(
        "/api/v1/models/pg-creator/ridge", json={"card": card}, headers=st.creator.headers
    )
    assert r.status_code == 200, r.text
    st.start_node("pg-node")  # nothing assigned: the gateway cold-starts it
    try:
        yield st
    finally:
        for n in st.nodes:
            n.stop()
        http.close()
        market.stop()
        db.engine.dispose()


@pytest.fixture
def browsers(pg: Stack) -> Iterator[list[Browser]]:
    opened: list[Browser] = []
    yield opened
    for b in opened:
        b.client.close()


def _browser(st: Stack, opened: list[Browser]) -> Browser:
    b = Browser(st.url)
    opened.append(b)
    return b


def _signed_in(st: Stack, opened: list[Browser], username: str) -> Browser:
    _account(st.http, username)
    b = _browser(st, opened)
    b.login(username)
    return b


def _textarea(page: str) -> str:
    m = re.search(r'<textarea id="pg-input"[^>]*>(.*?)</textarea>', page, re.DOTALL)
    assert m, page
    return html.unescape(m.group(1))


def _result(page: str) -> dict[str, Any]:
    m = re.search(r'<pre class="playground-json"><code>(.*?)</code></pre>', page, re.DOTALL)
    assert m, page
    value: dict[str, Any] = json.loads(html.unescape(m.group(1)))
    return value


def _runs_left(page: str) -> int:
    m = re.search(r'data-remaining="(\d+)"', page)
    assert m, page
    return int(m.group(1))


def test_signed_in_run_matches_onnx_and_spends_credits(
    pg: Stack, browsers: list[Browser], tiny_models: TinyModels
) -> None:
    b = _signed_in(pg, browsers, "pg-user")
    page = b.get("/pg-creator/iris")
    assert page.status_code == 200
    assert "Try it" in page.text
    assert f"{CREDITS} free runs left" in page.text
    prefilled = json.loads(_textarea(page.text))
    assert prefilled == {"inputs": tiny_models.iris_rows[:2]}  # from config.json

    rows = tiny_models.iris_rows
    r = b.post("/pg-creator/iris/playground", {"payload": json.dumps({"inputs": rows})})
    assert r.status_code == 200, r.text
    got = _result(r.text)
    want = run_onnx(tiny_models.iris, rows)
    assert got["model"] == "pg-creator/iris"
    assert len(got["predictions"]) == len(want["predictions"])
    for g, w in zip(got["predictions"], want["predictions"], strict=True):
        assert g["label"] == w["label"]
        for lab, p in w["probabilities"].items():
            assert g["probabilities"][lab] == pytest.approx(p, abs=1e-5)
    assert 'class="table table-compact playground-labels"' in r.text  # the labels table
    assert _runs_left(r.text) == CREDITS - 1
    assert _textarea(r.text) == json.dumps({"inputs": rows})  # the input is kept

    for left in range(CREDITS - 2, -1, -1):
        r = b.post("/pg-creator/iris/playground", {"payload": json.dumps({"inputs": rows[:1]})})
        assert r.status_code == 200, r.text
        assert _runs_left(r.text) == left
    r = b.post("/pg-creator/iris/playground", {"payload": json.dumps({"inputs": rows[:1]})})
    assert r.status_code == 429, r.text
    assert 'data-code="quota_exhausted"' in r.text
    assert "No free runs left" in r.text
    assert _runs_left(r.text) == 0


def test_card_sample_prefills_and_bad_input_costs_nothing(
    pg: Stack, browsers: list[Browser], tiny_models: TinyModels
) -> None:
    b = _signed_in(pg, browsers, "pg-user2")
    page = b.get("/pg-creator/ridge")
    assert json.loads(_textarea(page.text)) == {"inputs": tiny_models.reg_rows[:1]}  # the card's

    r = b.post("/pg-creator/ridge/playground", {"payload": '{"inputs": [[1, 2'})
    assert r.status_code == 400, r.text
    assert 'data-code="invalid_json"' in r.text
    assert _runs_left(r.text) == CREDITS
    assert _textarea(r.text) == '{"inputs": [[1, 2'

    r = b.post("/pg-creator/ridge/playground", {"payload": '{"inputs": [[1, 2, 3, 4, 5]]}'})
    assert r.status_code == 400, r.text
    assert 'data-code="invalid_input"' in r.text
    assert _runs_left(r.text) == CREDITS  # a failed run gives its credit back

    r = b.post("/pg-creator/ridge/playground", {"payload": json.dumps({"inputs": [[1, 2, 3]]})})
    assert r.status_code == 200, r.text
    assert "predictions" in _result(r.text)
    assert _runs_left(r.text) == CREDITS - 1


def test_anonymous_sees_samples_and_no_form(
    pg: Stack, browsers: list[Browser], tiny_models: TinyModels
) -> None:
    b = _browser(pg, browsers)
    page = b.get("/pg-creator/iris")
    assert page.status_code == 200
    assert "Sign in to try it" in page.text
    assert 'id="pg-input"' not in page.text
    assert "/playground" not in page.text
    assert "Sample request" in page.text
    assert "Sample response" in page.text
    assert str(tiny_models.iris_rows[0][0]) in page.text

    r = b.post("/pg-creator/iris/playground", {"payload": "{}"})
    assert r.status_code == 303
    assert r.headers["location"].startswith("/login")


def test_post_without_csrf_is_refused(pg: Stack, browsers: list[Browser]) -> None:
    b = _signed_in(pg, browsers, "pg-user3")
    r = b.post("/pg-creator/iris/playground", {"payload": '{"inputs": [[1, 2, 3, 4]]}'}, csrf=False)
    assert r.status_code == 403
    page = b.get("/pg-creator/iris")
    assert _runs_left(page.text) == CREDITS
