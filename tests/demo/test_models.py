"""The demo catalogue's models: breadth, valid listings, working ONNX, honest cards, determinism."""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import yaml

from cyxwiz.catalog.taxonomy import all_slugs
from cyxwiz.demo.models import DEMO_CREATORS, DemoModel, build_demo_models, run_onnx
from tests.demo.conftest import Built

# The marketplace's own rules for names (accounts and catalog services), restated here so
# the demo data is checked without a database.
MODEL_NAME_RE = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
USERNAME_RE = re.compile(r"^[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){1,38}$")
TAG_RE = re.compile(r"^[a-z0-9][a-z0-9.+-]{0,39}$")
LICENSES = {"apache-2.0", "mit", "cc-by-4.0", "bsd-3-clause"}
TASKS = {
    "tabular-classification",
    "tabular-regression",
    "text-classification",
    "token-classification",
    "feature-extraction",
    "image-classification",
    "audio-classification",
    "time-series-forecasting",
}
BUILD_SECONDS_LIMIT = 60  # the target is < 25 s on 2 idle cores; leave room for busy CI


@pytest.fixture(scope="module")
def models(built: Built) -> list[DemoModel]:
    return built[0]


@pytest.fixture(scope="module")
def by_name(models: list[DemoModel]) -> dict[str, DemoModel]:
    return {m.name: m for m in models}


def _config(model: DemoModel) -> dict[str, Any]:
    config: dict[str, Any] = json.loads(model.files["config.json"])
    return config


def _front_matter(card: str) -> tuple[dict[str, Any], str]:
    assert card.startswith("---\n")
    end = card.find("\n---", 3)
    assert end > 0, "front matter never closes"
    meta = yaml.safe_load(card[4:end])
    assert isinstance(meta, dict)
    return meta, card[end + 4 :]


def _json_block_after(body: str, marker: str) -> Any:
    start = body.index(marker)
    block = body[start:].split("```json\n", 1)[1].split("\n```", 1)[0]
    return json.loads(block)


# ------------------------------------------------------------------------------- breadth


def test_catalogue_covers_many_categories(models: list[DemoModel]) -> None:
    slugs = all_slugs()
    assert len(models) >= 26
    for m in models:
        assert m.category in slugs, m.category
    subcategories = {m.category for m in models if slugs[m.category] is not None}
    tops = {slugs[m.category] or m.category for m in models}
    assert len(subcategories) >= 10, subcategories
    assert len(tops) >= 4, tops
    assert {"language", "vision", "audio", "tabular", "domain-specific"} <= tops


def test_algorithms_vary(models: list[DemoModel]) -> None:
    estimators = {
        name
        for m in models
        for name in re.findall(
            r"([A-Z][A-Za-z]+(?:Classifier|Regressor|Regression|NB|CV))\(",
            _config(m)["training"]["estimator"],
        )
    }
    assert len(estimators) >= 8, estimators


def test_progress_reports_every_model_in_order(built: Built) -> None:
    models, calls, _ = built
    total = len(models)
    assert calls == [(i + 1, total, m.name) for i, m in enumerate(models)]


def test_build_is_fast_and_small(built: Built) -> None:
    models, _, seconds = built
    assert seconds < BUILD_SECONDS_LIMIT
    sizes = [len(m.files["model.onnx"]) for m in models]
    assert sum(sizes) < 15 * 1024 * 1024
    assert max(sizes) < 3 * 1024 * 1024


# ------------------------------------------------------------------------------- listings


def test_creators_are_plausible_and_all_publish(models: list[DemoModel]) -> None:
    assert 4 <= len(DEMO_CREATORS) <= 5
    usernames = [c.username for c in DEMO_CREATORS]
    assert len(set(usernames)) == len(usernames)
    for c in DEMO_CREATORS:
        assert USERNAME_RE.match(c.username), c.username
        assert c.display_name.strip()
        assert len(c.bio) > 40
    assert {m.owner for m in models} == set(usernames)


def test_names_are_unique_valid_slugs(models: list[DemoModel]) -> None:
    names = [m.name for m in models]
    assert len(set(names)) == len(names)
    for name in names:
        assert 3 <= len(name) <= 64, name
        assert MODEL_NAME_RE.match(name), name
        assert not re.search(r"model\d|test|demo", name), name


def test_listing_fields_fit_the_catalogue(models: list[DemoModel]) -> None:
    for m in models:
        assert 0 < len(m.title) <= 120, m.name
        assert 20 < len(m.summary) <= 300, m.name
        assert m.summary.endswith("."), m.name
        assert len(re.findall(r"[.!?](?:\s|$)", m.summary)) == 1, f"{m.name}: one sentence"
        assert m.task in TASKS, m.task
        assert m.license in LICENSES, m.license
        assert 3 <= len(m.tags) <= 20, m.name
        assert len(set(m.tags)) == len(m.tags), m.name
        for tag in m.tags:
            assert TAG_RE.match(tag), (m.name, tag)
        assert set(m.files) >= {"model.onnx", "config.json"}


def test_contributor_shares_sum_to_whole(models: list[DemoModel]) -> None:
    usernames = {c.username for c in DEMO_CREATORS}
    shared = [m for m in models if m.contributors]
    assert 2 <= len(shared) <= 5
    for m in shared:
        users = [u for u, _ in m.contributors]
        assert len(users) >= 2, m.name
        assert len(set(users)) == len(users), m.name
        assert m.owner in users, m.name
        assert set(users) <= usernames, m.name
        assert all(bps > 0 for _, bps in m.contributors), m.name
        assert sum(bps for _, bps in m.contributors) == 10_000, m.name


# ------------------------------------------------------------------------------- ONNX


def test_every_model_loads_and_reproduces_its_sample(models: list[DemoModel]) -> None:
    for m in models:
        proto = onnx.load_from_string(m.files["model.onnx"])
        onnx.checker.check_model(proto)
        sess = ort.InferenceSession(m.files["model.onnx"], providers=["CPUExecutionProvider"])
        assert len(sess.get_inputs()) == 1, m.name
        for out in sess.get_outputs():
            assert out.type.startswith("tensor("), f"{m.name}: {out.name} is {out.type} (ZipMap?)"
        assert json.loads(json.dumps(m.sample_input)) == m.sample_input
        assert json.loads(json.dumps(m.sample_output)) == m.sample_output
        assert set(m.sample_input) == {"inputs"}
        assert run_onnx(m.files["model.onnx"], m.sample_input["inputs"]) == m.sample_output, m.name
        assert run_onnx(m.files["model.onnx"], m.sample_input) == m.sample_output, m.name


def test_sample_outputs_are_well_formed(models: list[DemoModel]) -> None:
    for m in models:
        config = _config(m)
        n_inputs = len(m.sample_input["inputs"])
        if config["kind"] == "classifier":
            preds = m.sample_output["predictions"]
            assert len(preds) == n_inputs, m.name
            for p in preds:
                assert list(p["probabilities"]) == config["labels"], m.name
                assert p["label"] in config["labels"]
                assert p["score"] == p["probabilities"][p["label"]]
                assert abs(sum(p["probabilities"].values()) - 1) < 2e-3, m.name
                assert p["score"] == max(p["probabilities"].values()), m.name
        elif config["kind"] == "regressor":
            preds = m.sample_output["predictions"]
            assert len(preds) == n_inputs, m.name
            for p in preds:
                assert list(p) == config["targets"], m.name
                assert all(np.isfinite(v) for v in p.values())
        else:
            vectors = m.sample_output["embeddings"]
            assert len(vectors) == n_inputs
            assert all(len(v) == m.sample_output["dimensions"] for v in vectors)


def test_config_describes_the_graph(models: list[DemoModel]) -> None:
    for m in models:
        config = _config(m)
        sess = ort.InferenceSession(m.files["model.onnx"], providers=["CPUExecutionProvider"])
        arg = sess.get_inputs()[0]
        assert config["name"] == m.name
        assert config["task"] == m.task
        assert config["input"]["name"] == arg.name
        assert [o["name"] for o in config["outputs"]] == [o.name for o in sess.get_outputs()]
        assert config["metrics"] == m.metrics
        assert config["sample_input"] == m.sample_input
        meta = sess.get_modelmeta().custom_metadata_map
        assert meta["cyxwiz.kind"] == config["kind"]
        assert meta["cyxwiz.name"] == m.name
        if config["kind"] == "classifier":
            assert json.loads(meta["cyxwiz.labels"]) == config["labels"]
        if arg.type == "tensor(string)":
            assert config["input"]["dtype"] == "string"
        else:
            width = arg.shape[1]
            assert config["input"]["shape"] == [None, width]
            if "features" in config["input"]:
                assert len(config["input"]["features"]) == width
            assert all(len(row) == width for row in m.sample_input["inputs"])
        if config["kind"] == "classifier":
            assert [o["name"] for o in config["outputs"]] == ["label", "probabilities"]
        elif config["kind"] == "regressor":
            (out,) = config["outputs"]
            assert out["name"] == "predictions", m.name
            assert out["shape"] == [None, len(config["targets"])], m.name
        else:
            (out,) = config["outputs"]
            assert out["name"] == "embeddings", m.name


def test_onnx_agrees_with_scikit_learn(models: list[DemoModel]) -> None:
    for m in models:
        parity = _config(m)["onnx_parity"]
        if "label_agreement" in parity:
            assert parity["label_agreement"] >= 0.999, m.name
            assert parity["max_probability_diff"] < 1e-4, (m.name, parity)
        elif "max_relative_diff" in parity:
            assert parity["max_relative_diff"] < 1e-4, (m.name, parity)
        else:
            assert parity["max_abs_diff"] < 1e-4, (m.name, parity)


def test_audio_models_compute_features_in_the_graph(models: list[DemoModel]) -> None:
    audio = [m for m in models if m.task == "audio-classification"]
    assert len(audio) >= 2
    for m in audio:
        proto = onnx.load_from_string(m.files["model.onnx"])
        ops = {node.op_type for node in proto.graph.node}
        assert {"MatMul", "Log", "Reshape"} <= ops, m.name
        assert proto.graph.input[0].name == "waveform"
        assert len(m.sample_input["inputs"][0]) == 1024


# ------------------------------------------------------------------------------- cards


def test_cards_front_matter_carries_the_real_metrics(models: list[DemoModel]) -> None:
    for m in models:
        meta, body = _front_matter(m.card)
        assert meta["license"] == m.license
        assert meta["library_name"] == "onnx"
        assert meta["pipeline_tag"] == m.task
        assert meta["tags"] == list(m.tags)
        assert meta["datasets"]
        assert meta["metrics"] == list(m.metrics)
        (entry,) = meta["model-index"]
        assert entry["name"] == m.name
        (result,) = entry["results"]
        assert result["task"]["type"] == m.task
        assert result["dataset"]["split"] == "test"
        assert {x["type"]: x["value"] for x in result["metrics"]} == m.metrics, m.name
        for heading in (
            "## Intended use",
            "## Inputs and outputs",
            "## Training data",
            "## Training procedure",
            "## Evaluation",
            "## Limitations",
            "## How to use",
        ):
            assert heading in body, (m.name, heading)
        assert f"# {m.title}" in body
        assert _json_block_after(body, "Request body:") == m.sample_input, m.name
        assert _json_block_after(body, "Response:") == m.sample_output, m.name
        assert len(m.card.encode()) < 256 * 1024


def test_cards_credit_co_creators(models: list[DemoModel]) -> None:
    names = {c.username: c.display_name for c in DEMO_CREATORS}
    for m in models:
        for user, bps in m.contributors:
            assert f"{names[user]} (`@{user}`): {bps / 100:g}%" in m.card


# ------------------------------------------------------------------------------- metrics


def test_metrics_are_sane(models: list[DemoModel], by_name: dict[str, DemoModel]) -> None:
    for m in models:
        kind = _config(m)["kind"]
        assert m.metrics, m.name
        assert all(isinstance(v, float) and np.isfinite(v) for v in m.metrics.values())
        if kind == "classifier":
            assert {"accuracy", "f1"} <= set(m.metrics), m.name
            assert 0.6 < m.metrics["accuracy"] <= 1.0, m.name
            assert 0.4 < m.metrics["f1"] <= 1.0, m.name
            if "roc_auc" in m.metrics:
                assert 0.65 < m.metrics["roc_auc"] <= 1.0, m.name
        elif kind == "regressor":
            assert set(m.metrics) == {"r2", "mae", "rmse"}, m.name
            assert 0.4 < m.metrics["r2"] <= 1.0, m.name
            assert 0 < m.metrics["mae"] <= m.metrics["rmse"], m.name
        else:
            assert m.metrics["precision_at_1"] > 0.8, m.name
    assert by_name["iris-species-classifier"].metrics["accuracy"] > 0.85
    assert by_name["wine-cultivar-classifier"].metrics["accuracy"] > 0.85
    assert by_name["handwritten-digit-ocr"].metrics["accuracy"] > 0.9
    cancer = by_name["breast-cancer-fna-screen"].metrics
    assert cancer["accuracy"] > 0.9
    assert cancer["roc_auc"] > 0.95
    assert by_name["diabetes-progression-1y"].metrics["r2"] > 0.3


# ------------------------------------------------------------------------------- behaviour


def _labels(out: dict[str, Any]) -> list[str]:
    return [p["label"] for p in out["predictions"]]


def test_text_models_read_like_their_listings(by_name: dict[str, DemoModel]) -> None:
    def run(name: str, texts: list[str]) -> list[str]:
        return _labels(run_onnx(by_name[name].files["model.onnx"], texts))

    assert run(
        "review-sentiment-en",
        ["Absolutely love it, works perfectly!", "Broke after a week, total waste of money."],
    ) == ["positive", "negative"]
    assert run(
        "polyglot-langid-7",
        [
            "Thank you very much for your help",
            "Muchas gracias por tu ayuda",
            "Vielen Dank für Ihre Hilfe",
        ],
    ) == ["en", "es", "de"]
    assert run("sms-spam-shield", ["WINNER!! Claim your free cruise now, call 0800 123 4567"]) == [
        "spam"
    ]
    spans = run(
        "entity-span-typer", ["jane.doe@example.com", "https://www.example.com", "2024-03-15"]
    )
    assert spans == ["EMAIL", "URL", "DATE"]


def test_embeddings_are_unit_vectors_that_group_topics(by_name: dict[str, DemoModel]) -> None:
    out = run_onnx(
        by_name["docsim-embed-16"].files["model.onnx"],
        [
            "Chipmaker announces faster processors",
            "Hooli launches AI assistant for developers",
            "Marathon in Berlin won in course-record time",
            "Late goal gives Rovers dramatic win over City",
        ],
    )
    vectors = np.array(out["embeddings"])
    assert vectors.shape == (4, out["dimensions"])
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-3)
    sims = vectors @ vectors.T
    # no shared words, same topic: closer than across topics
    assert min(sims[0, 1], sims[2, 3]) > max(sims[0, 2], sims[0, 3], sims[1, 2], sims[1, 3])


def test_run_onnx_accepts_json_shapes_and_rejects_bad_input(by_name: dict[str, DemoModel]) -> None:
    iris = by_name["iris-species-classifier"]
    rows = iris.sample_input["inputs"]
    features = _config(iris)["input"]["features"]
    one = run_onnx(iris.files["model.onnx"], rows[0])
    assert one["predictions"] == iris.sample_output["predictions"][:1]
    keyed = [dict(zip(features, row, strict=True)) for row in rows]
    assert run_onnx(iris.files["model.onnx"], keyed) == iris.sample_output
    bad: list[tuple[Any, str]] = [
        ([1.0, 2.0], "each row must hold 4 numbers"),
        ([], "non-empty list of rows"),
        (["a", "b", "c", "d"], "numeric rows"),
        ([{"sepal_length_cm": 1.0}], "missing features"),
    ]
    for inputs, message in bad:
        with pytest.raises(ValueError, match=message):
            run_onnx(iris.files["model.onnx"], inputs)
    text = by_name["review-sentiment-en"].files["model.onnx"]
    assert len(run_onnx(text, "Great value for money.")["predictions"]) == 1
    with pytest.raises(ValueError, match="list of strings"):
        run_onnx(text, [1, 2])


def test_multi_output_regressors_return_one_row_per_input(by_name: dict[str, DemoModel]) -> None:
    for name, n_targets in (("building-energy-loads", 2), ("store-demand-7day", 7)):
        m = by_name[name]
        rows = m.sample_input["inputs"] * 3
        out = run_onnx(m.files["model.onnx"], rows)
        assert len(out["predictions"]) == len(rows)
        assert all(len(p) == n_targets for p in out["predictions"])


# ------------------------------------------------------------------------------- determinism


def test_second_build_is_identical(models: list[DemoModel]) -> None:
    seen: list[str] = []

    def progress(done: int, total: int, name: str) -> None:
        seen.append(name)

    again = build_demo_models(progress=progress)
    assert seen == [m.name for m in models]
    for first, second in zip(models, again, strict=True):
        assert first.name == second.name
        assert first.metrics == second.metrics, first.name
        assert first.sample_output == second.sample_output, first.name
        assert first.files == second.files, first.name
        assert first.card == second.card, first.name
