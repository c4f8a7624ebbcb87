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
from tests.node.conftest import RunningNode, Stack, TinyModels, _account, free_socket, serve

from cyxwiz.config import Settings
from cyxwiz.db import Database, make_engine
from cyxwiz.demo.models import run_onnx
from cyxwiz.migrate import upgrade
from cyxwiz.node.app import create_node_app
from cyxwiz.node.config import NodeConfig
from cyxwiz.web.app import create_app

CREDITS = 4  # demo credits count rows (issue 9): two 2-row runs per test user
HTML = {"Accept": "text/html"}
FEATURES = ["sl", "sw", "pl", "pw"]


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


def _start_node(st: Stack, name: str) -> RunningNode:
    """A node heartbeating at the marketplace's own interval (Stack.start_node's is 0.3 s).

    Fewer heartbeats on purpose: the site's error page looks up the signed-in viewer in the
    database on the event loop (web/ui/render.py ``_viewer_from_cookie``) while a heartbeat's
    transaction may hold SQLite's write lock and need that loop to commit: a 30 s stall.
    """
    node_id, token = st.create_node(name)
    sock = free_socket()
    port = sock.getsockname()[1]
    cache_dir = st.tmp / f"cache-{name}"
    config = NodeConfig(
        marketplace_url=st.url,
        token=token,
        port=port,
        advertise_url=f"http://127.0.0.1:{port}",
        cache_dir=cache_dir,
        capacity=4,
    )
    agent = create_node_app(config)
    node = RunningNode(agent, serve(agent, sock), node_id, token, cache_dir, st)
    st.nodes.append(node)
    node.wait_ready()
    return node


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
        register_ip_max_accounts=10_000,  # every account here comes from 127.0.0.1
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
    # a model whose config.json describes its input (named features) and whose sample rows
    # are {feature: value}; a text model
    named_config = {
        "input": {"name": "input", "dtype": "float32", "shape": [None, 4], "features": FEATURES},
        "sample_input": {"inputs": [dict(zip(FEATURES, tiny_models.iris_rows[0], strict=True))]},
    }
    st.publish(
        "iris-named",
        {"model.onnx": tiny_models.iris, "config.json": json.dumps(named_config).encode()},
    )
    text_config = {"sample_input": {"inputs": tiny_models.texts}}
    st.publish(
        "sentiment",
        {"model.onnx": tiny_models.text, "config.json": json.dumps(text_config).encode()},
    )
    _start_node(st, "pg-node")  # nothing assigned: the gateway cold-starts it
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
    assert f"{CREDITS} free rows left" in page.text
    prefilled = json.loads(_textarea(page.text))
    assert prefilled == {"inputs": tiny_models.iris_rows[:2]}  # from config.json

    rows = tiny_models.iris_rows[:2]
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
    assert _runs_left(r.text) == CREDITS - len(rows)  # one demo credit per row (issue 9)
    assert _textarea(r.text) == json.dumps({"inputs": rows})  # the input is kept

    for left in range(CREDITS - len(rows) - 1, -1, -1):
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


# ---------------------------------------------------------------- the per-field form


def _fields(page: str) -> dict[str, tuple[str, str]]:
    """The per-field form's number inputs: name -> (label, prefilled value)."""
    labels = dict(re.findall(r'<label for="pg-(x\d+_\d+)">([^<]*)</label>', page))
    found = {}
    for name, value in re.findall(
        r'<input id="pg-x\d+_\d+" name="(x\d+_\d+)" type="number"[^>]*?value="([^"]*)"', page
    ):
        found[name] = (html.unescape(labels[name]), html.unescape(value))
    return found


def _json_editor_open(page: str) -> bool:
    m = re.search(r'<details class="playground-json-editor"( open)?>', page)
    assert m, "no 'Edit as JSON' toggle on the page"
    return m.group(1) is not None


def _predictions(page: str) -> list[dict[str, Any]]:
    preds: list[dict[str, Any]] = _result(page)["predictions"]
    return preds


def test_tabular_fields_run_the_same_predictions_as_the_json_form(
    pg: Stack, browsers: list[Browser], tiny_models: TinyModels
) -> None:
    b = _signed_in(pg, browsers, "pg-fields")
    page = b.get("/pg-creator/iris").text
    fields = _fields(page)
    # one labelled number input per feature, for each sample row (from config.json)
    assert fields == {
        f"x{r}_{c}": (f"Feature {c + 1}", str(v))
        for r, row in enumerate(tiny_models.iris_rows[:2])
        for c, v in enumerate(row)
    }
    assert not _json_editor_open(page)  # the JSON editor is the advanced toggle
    assert json.loads(_textarea(page)) == {"inputs": tiny_models.iris_rows[:2]}

    rows = [tiny_models.iris_rows[2], tiny_models.iris_rows[1]]
    form = {"mode": "fields"}
    form.update({f"x{r}_{c}": str(v) for r, row in enumerate(rows) for c, v in enumerate(row)})
    by_fields = b.post("/pg-creator/iris/playground", form)
    assert by_fields.status_code == 200, by_fields.text
    by_json = b.post("/pg-creator/iris/playground", {"payload": json.dumps({"inputs": rows})})
    assert by_json.status_code == 200, by_json.text
    assert _predictions(by_fields.text) == _predictions(by_json.text)
    assert _predictions(by_fields.text) == run_onnx(tiny_models.iris, rows)["predictions"]
    assert 'class="table table-compact playground-labels"' in by_fields.text
    assert _runs_left(by_json.text) == CREDITS - 2 * len(rows)  # one credit per row, each run

    # after a run of the fields: the values typed stay, the JSON that ran is in the editor
    assert {k: v for k, (_, v) in _fields(by_fields.text).items()} == {
        k: v for k, v in form.items() if k != "mode"
    }
    assert json.loads(_textarea(by_fields.text)) == {"inputs": rows}
    assert not _json_editor_open(by_fields.text)
    # after a run of the JSON editor: it stays open, and the fields show what it ran
    assert _json_editor_open(by_json.text)
    assert _fields(by_json.text)["x0_0"][1] == str(rows[0][0])


def test_named_features_send_rows_as_feature_value_objects(
    pg: Stack, browsers: list[Browser], tiny_models: TinyModels
) -> None:
    b = _signed_in(pg, browsers, "pg-named")
    page = b.get("/pg-creator/iris-named").text
    fields = _fields(page)
    assert [fields[f"x0_{c}"] for c in range(4)] == [
        (name, str(v)) for name, v in zip(FEATURES, tiny_models.iris_rows[0], strict=True)
    ]
    assert "<code>{feature: value}</code>" in page
    row = tiny_models.iris_rows[1]
    form = {"mode": "fields", **{f"x0_{c}": str(v) for c, v in enumerate(row)}}
    r = b.post("/pg-creator/iris-named/playground", form)
    assert r.status_code == 200, r.text
    sent = json.loads(_textarea(r.text))
    assert sent == {"inputs": [dict(zip(FEATURES, row, strict=True))]}
    by_json = b.post("/pg-creator/iris-named/playground", {"payload": json.dumps(sent)})
    assert _predictions(r.text) == _predictions(by_json.text)
    assert _predictions(r.text) == run_onnx(tiny_models.iris, [row])["predictions"]


def test_text_models_get_a_textarea_one_input_per_line(
    pg: Stack, browsers: list[Browser], tiny_models: TinyModels
) -> None:
    b = _signed_in(pg, browsers, "pg-texts")
    page = b.get("/pg-creator/sentiment").text
    m = re.search(r'<textarea id="pg-texts" name="texts"[^>]*>(.*?)</textarea>', page, re.DOTALL)
    assert m, page
    assert html.unescape(m.group(1)).splitlines() == tiny_models.texts
    assert 'type="number"' not in page
    texts = ["great, love it", "", "terrible, it broke"]  # blank lines are skipped
    r = b.post("/pg-creator/sentiment/playground", {"mode": "fields", "texts": "\n".join(texts)})
    assert r.status_code == 200, r.text
    by_json = b.post(
        "/pg-creator/sentiment/playground",
        {"payload": json.dumps({"inputs": [texts[0], texts[2]]})},
    )
    assert by_json.status_code == 200, by_json.text
    assert _predictions(r.text) == _predictions(by_json.text)
    expected = run_onnx(tiny_models.text, [texts[0], texts[2]])["predictions"]
    assert [p["label"] for p in _predictions(r.text)] == [p["label"] for p in expected]


def test_a_bad_field_is_named_kept_and_costs_nothing(
    pg: Stack, browsers: list[Browser], tiny_models: TinyModels
) -> None:
    b = _signed_in(pg, browsers, "pg-badfield")
    form = {"mode": "fields", "x0_0": "5.1", "x0_1": "abc", "x0_2": "1.4", "x0_3": "0.2"}
    r = b.post("/pg-creator/iris/playground", form)
    assert r.status_code == 400, r.text
    assert 'data-code="invalid_field"' in r.text
    assert "Row 1, Feature 2: &#39;abc&#39; is not a number." in r.text
    assert re.search(r'name="x0_1" type="number"[^>]*value="abc"[^>]*aria-invalid="true"', r.text)
    assert _runs_left(r.text) == CREDITS

    form["x0_1"] = ""
    r = b.post("/pg-creator/iris/playground", form)
    assert r.status_code == 400
    assert "Row 1, Feature 2: a number is missing." in r.text
    r = b.post("/pg-creator/iris/playground", {"mode": "fields"})
    assert r.status_code == 400
    assert "Enter the values of at least one row." in r.text
    assert _runs_left(r.text) == CREDITS

    # a blank second row is skipped: one row runs
    row = tiny_models.iris_rows[0]
    form = {"mode": "fields", **{f"x0_{c}": str(v) for c, v in enumerate(row)}}
    form.update({f"x1_{c}": "" for c in range(4)})
    r = b.post("/pg-creator/iris/playground", form)
    assert r.status_code == 200, r.text
    assert _predictions(r.text) == run_onnx(tiny_models.iris, [row])["predictions"]
    assert _runs_left(r.text) == CREDITS - 1


def test_node_operators_get_the_nodes_link_on_a_real_database(
    pg: Stack, browsers: list[Browser]
) -> None:
    """The nav's 'Nodes' link is decided while the page renders, inside the request's own
    transaction (on a SQLite file: holding the write lock)."""
    op = _browser(pg, browsers)
    op.login("pg-operator")
    page = op.get("/pg-creator/iris")
    assert page.status_code == 200
    assert 'href="/nodes"' in page.text
    nodes = op.get("/nodes")
    assert nodes.status_code == 200
    assert 'data-status="online"' in nodes.text
    assert "pg-node" in nodes.text
    other = _signed_in(pg, browsers, "pg-no-nodes")
    assert 'href="/nodes"' not in other.get("/pg-creator/iris").text
