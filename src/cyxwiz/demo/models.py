"""The demo catalogue's models: trained here, exported to ONNX, evaluated on held-out data.

Pure ML: no database, no web. ``build_demo_models()`` trains every listing from bundled
scikit-learn datasets or seeded synthetic data, converts it with skl2onnx, measures it with
ONNX Runtime on a held-out split, and writes a Hugging Face-format card around the real
numbers. Everything is seeded, so two builds give the same models, metrics and bytes.

Heavy libraries (scikit-learn, skl2onnx, onnxruntime) are imported only when a function
needs them, so importing this module is cheap.
"""

from __future__ import annotations

import json
import re
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from cyxwiz.inference import simple_json as _runtime

if TYPE_CHECKING:
    from cyxwiz.demo._spec import Dataset, Spec

__all__ = [
    "DEMO_CREATORS",
    "DemoCreator",
    "DemoModel",
    "build_demo_models",
    "run_onnx",
]

ONNX_OPSET = {"": 17, "ai.onnx.ml": 3}


@dataclass(frozen=True)
class DemoCreator:
    username: str
    display_name: str
    bio: str


@dataclass(frozen=True)
class DemoModel:
    owner: str
    name: str
    title: str
    summary: str
    category: str
    task: str
    tags: tuple[str, ...]
    license: str
    card: str
    files: dict[str, bytes]
    metrics: dict[str, float]
    sample_input: dict[str, Any]
    sample_output: dict[str, Any]
    contributors: tuple[tuple[str, int], ...] = ()


DEMO_CREATORS: tuple[DemoCreator, ...] = (
    DemoCreator(
        username="amara-okafor",
        display_name="Amara Okafor",
        bio="NLP engineer in Lagos and London. I build compact text models (classifiers, "
        "extractors, embeddings) that run anywhere ONNX does, with honest evaluation notes.",
    ),
    DemoCreator(
        username="pixelfold",
        display_name="Pixelfold Labs",
        bio="A small studio for document AI and embedded vision: OCR, form reading and "
        "pattern recognition models sized for phones, scanners and microcontrollers.",
    ),
    DemoCreator(
        username="sonarwave",
        display_name="Sonarwave",
        bio="Ex-game-studio audio and analytics engineers. Machine listening for industry "
        "and telephony, and player analytics for live games.",
    ),
    DemoCreator(
        username="tabula-labs",
        display_name="Tabula Labs",
        bio="Applied ML for tables and time series: credit, fraud, retail demand and "
        "logistics. Gradient boosting when it wins, linear models when it does not.",
    ),
    DemoCreator(
        username="kenji-watanabe",
        display_name="Dr. Kenji Watanabe",
        bio="Research scientist (astrophysics PhD) working on healthcare and physical-science "
        "models. Every listing ships with its evaluation protocol.",
    ),
)


def run_onnx(model_bytes: bytes, inputs: Any) -> dict[str, Any]:
    """Run a demo model on JSON inputs (list of rows or strings, or {"inputs": ...}).

    Classifiers answer ``{"predictions": [{"label", "score", "probabilities"}]}``,
    regressors ``{"predictions": [{target: value}]}`` and embedders
    ``{"embeddings": [[...]], "dimensions": d}``; numbers are rounded for JSON.
    Raises ValueError when the inputs do not fit the model's input.
    """
    return _runtime.run_onnx(model_bytes, inputs)


def build_demo_models(
    progress: Callable[[int, int, str], None] | None = None,
) -> list[DemoModel]:
    """Train, export, evaluate and document every demo model (deterministic)."""
    from cyxwiz.demo import _audio, _catalog

    _audio.register_converter()
    specs = _catalog.SPECS
    out: list[DemoModel] = []
    for i, spec in enumerate(specs, start=1):
        out.append(_build(spec))
        if progress is not None:
            progress(i, len(specs), spec.name)
    return out


# ---------------------------------------------------------------------------------------------
# one model


def _seed(name: str) -> int:
    return zlib.crc32(name.encode()) % 100_000


def _build(spec: Spec) -> DemoModel:
    from skl2onnx import __version__ as skl2onnx_version
    from sklearn import __version__ as sklearn_version
    from sklearn.exceptions import ConvergenceWarning

    from cyxwiz.demo import _cards

    seed = _seed(spec.name)
    ds = spec.data(seed)
    estimator = spec.estimator(seed)
    with warnings.catch_warnings():
        # Small MLPs with a fixed iteration budget are part of the recipe.
        warnings.filterwarnings("ignore", category=ConvergenceWarning)
        estimator.fit(ds.x_train, ds.y_train)

    model_bytes = _to_onnx(spec, ds, estimator)
    sess = _runtime.session(model_bytes)
    metrics, parity = _evaluate(sess, ds, estimator)
    sample_input: dict[str, Any] = {"inputs": ds.sample}
    sample_output = _runtime.run_session(sess, ds.sample)

    arg = sess.get_inputs()[0]
    config: dict[str, Any] = {
        "name": spec.name,
        "title": spec.title,
        "task": spec.task,
        "kind": ds.kind,
        "format": "onnx",
        "opset": {(o.domain or "ai.onnx"): o.version for o in _onnx_opsets(model_bytes)},
        "input": {
            "name": arg.name,
            "dtype": "string" if ds.text_input else "float32",
            "shape": [None, 1 if ds.text_input else int(arg.shape[1])],
        },
        "outputs": [
            {"name": o.name, "dtype": _dtype(o.type), "shape": _shape(o.shape)}
            for o in sess.get_outputs()
        ],
    }
    if ds.features:
        config["input"]["features"] = list(ds.features)
    if ds.kind == "classifier":
        config["labels"] = _labels(estimator)
        if ds.positive_label:
            config["positive_label"] = ds.positive_label
    elif ds.kind == "regressor":
        config["targets"] = list(ds.targets)
    else:
        config["embedding_dim"] = int(sample_output["dimensions"])
    config["preprocessing"] = ds.preprocessing
    config["metrics"] = metrics
    config["evaluation"] = {
        "split": ds.split,
        "train_size": len(ds.y_train),
        "test_size": len(ds.y_test),
        "runtime": "onnxruntime",
    }
    config["onnx_parity"] = parity
    config["training"] = {
        "estimator": _estimator_repr(estimator),
        "random_state": seed,
        "scikit-learn": sklearn_version,
        "skl2onnx": skl2onnx_version,
    }
    config["sample_input"] = sample_input

    card = _cards.render(
        spec=spec,
        ds=ds,
        metrics=metrics,
        config=config,
        sample_input=sample_input,
        sample_output=sample_output,
        estimator_repr=_estimator_repr(estimator),
        model_size=len(model_bytes),
        creator_names={c.username: c.display_name for c in DEMO_CREATORS},
    )
    config_bytes = json.dumps(config, indent=2, ensure_ascii=False).encode() + b"\n"
    return DemoModel(
        owner=spec.owner,
        name=spec.name,
        title=spec.title,
        summary=spec.summary,
        category=spec.category,
        task=spec.task,
        tags=spec.tags,
        license=spec.license,
        card=card,
        files={"model.onnx": model_bytes, "config.json": config_bytes},
        metrics=metrics,
        sample_input=sample_input,
        sample_output=sample_output,
        contributors=spec.contributors,
    )


def _estimator_repr(estimator: Any) -> str:
    from sklearn import config_context

    with config_context(print_changed_only=True):
        return repr(estimator)


def _onnx_opsets(model_bytes: bytes) -> list[Any]:
    import onnx

    return list(onnx.load_from_string(model_bytes).opset_import)


def _dtype(ort_type: str) -> str:
    return ort_type.removeprefix("tensor(").removesuffix(")")


def _shape(shape: list[Any]) -> list[int | None]:
    return [d if isinstance(d, int) else None for d in shape]


def _final_step(estimator: Any) -> Any:
    steps = getattr(estimator, "steps", None)
    return steps[-1][1] if steps else estimator


def _labels(estimator: Any) -> list[str]:
    return [str(c) for c in estimator.classes_]


def _to_onnx(spec: Spec, ds: Dataset, estimator: Any) -> bytes:
    import onnx
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType, StringTensorType
    from sklearn.feature_extraction.text import TfidfVectorizer

    if ds.text_input:
        initial = [("text", StringTensorType([None, 1]))]
    else:
        initial = [("input", FloatTensorType([None, int(np.asarray(ds.x_train).shape[1])]))]
    if spec.task == "audio-classification":
        initial = [("waveform", initial[0][1])]
    options: dict[int, dict[str, Any]] = {}
    for _, step in getattr(estimator, "steps", []):
        if isinstance(step, TfidfVectorizer) and step.lowercase:
            # ONNX Runtime's StringNormalizer fails on en_US.UTF-8 here; "C" is always there.
            options[id(step)] = {"locale": "C"}
    if ds.kind == "classifier":
        options[id(_final_step(estimator))] = {"zipmap": False}
    with warnings.catch_warnings():
        # skl2onnx warns about analyzer="char" on principle; parity is checked in _evaluate.
        warnings.filterwarnings(
            "ignore", message="The conversion of CountVectorizer may not work", category=UserWarning
        )
        proto = convert_sklearn(
            estimator,
            name=spec.name,
            initial_types=initial,
            options=options,
            target_opset=ONNX_OPSET,
        )
    if ds.kind == "regressor" and len(ds.targets) > 1:
        _reshape_output(proto, len(ds.targets))
    if ds.kind != "classifier":
        _rename_output(proto.graph, "embeddings" if ds.kind == "embedding" else "predictions")
    _canonical_names(proto.graph)
    proto.doc_string = spec.summary
    proto.model_version = 1
    proto.domain = "ai.cyxwiz.demo"
    meta = {
        "cyxwiz.name": spec.name,
        "cyxwiz.title": spec.title,
        "cyxwiz.owner": spec.owner,
        "cyxwiz.license": spec.license,
        "cyxwiz.task": spec.task,
        _runtime.META_KIND: ds.kind,
    }
    if ds.kind == "classifier":
        meta[_runtime.META_LABELS] = json.dumps(_labels(estimator), ensure_ascii=False)
    if ds.targets:
        meta[_runtime.META_TARGETS] = json.dumps(list(ds.targets))
    if ds.features and not ds.text_input:
        meta[_runtime.META_FEATURES] = json.dumps(list(ds.features))
    onnx.helper.set_model_props(proto, meta)
    data: bytes = proto.SerializeToString()
    return data


# skl2onnx numbers some names from process-wide counters (KNN's Scan subgraphs), so the same
# model converted later in a process would get different bytes. Renumber them per model.
_VOLATILE = re.compile(r"UU(\d+)UU|(?<=cdistd_)(\d+)|(?<=cdistdf_)(\d+)")


def _canonical_names(graph: Any) -> None:
    from onnx import AttributeProto

    seen: dict[str, dict[str, str]] = {"uu": {}, "cdist": {}}

    def sub(name: str) -> str:
        def one(match: re.Match[str]) -> str:
            if match.group(1) is not None:
                table = seen["uu"]
                key = match.group(0)
                return table.setdefault(key, f"UU{len(table):03d}UU")
            table = seen["cdist"]
            return table.setdefault(match.group(0), str(len(table) + 1))

        return _VOLATILE.sub(one, name)

    def walk(g: Any) -> None:
        g.name = sub(g.name)
        for node in g.node:
            node.name = sub(node.name)
            node.input[:] = [sub(x) for x in node.input]
            node.output[:] = [sub(x) for x in node.output]
            for attr in node.attribute:
                if attr.type == AttributeProto.GRAPH:
                    walk(attr.g)
                for sub_graph in attr.graphs:
                    walk(sub_graph)
        for values in (g.input, g.output, g.value_info):
            for value in values:
                value.name = sub(value.name)
        for init in g.initializer:
            init.name = sub(init.name)

    walk(graph)


def _rename_output(graph: Any, new: str) -> None:
    """Give a regressor's or embedder's single output a telling name (skl2onnx: "variable")."""
    old = graph.output[0].name
    for node in graph.node:
        node.input[:] = [new if x == old else x for x in node.input]
        node.output[:] = [new if x == old else x for x in node.output]
    graph.output[0].name = new


def _reshape_output(proto: Any, n_targets: int) -> None:
    """Give a multi-output regressor a [batch, n_targets] output.

    skl2onnx flattens MLPRegressor's outputs to [batch * n_targets, 1]; a final Reshape
    restores one row per input (a no-op for converters that already get it right).
    """
    from onnx import TensorProto, helper

    out = proto.graph.output[0]
    flat = f"{out.name}_flat"
    for node in proto.graph.node:
        node.output[:] = [flat if o == out.name else o for o in node.output]
    shape_name = f"{out.name}_shape"
    proto.graph.initializer.append(
        helper.make_tensor(shape_name, TensorProto.INT64, [2], [-1, n_targets])
    )
    proto.graph.node.append(
        helper.make_node("Reshape", [flat, shape_name], [out.name], name="CyxwizTargetsReshape")
    )
    dims = out.type.tensor_type.shape.dim
    dims[0].Clear()
    dims[0].dim_param = "N"
    dims[1].Clear()
    dims[1].dim_value = n_targets


def _feed(sess: Any, x: Any) -> dict[str, Any]:
    arg = sess.get_inputs()[0]
    if arg.type == "tensor(string)":
        return {arg.name: np.array(list(x), dtype=object).reshape(-1, 1)}
    return {arg.name: np.asarray(x, dtype=np.float32)}


def _r(value: float) -> float:
    return round(float(value), 4)


def _evaluate(sess: Any, ds: Dataset, estimator: Any) -> tuple[dict[str, float], dict[str, float]]:
    """Held-out metrics of the ONNX graph, and its agreement with scikit-learn."""
    from sklearn.metrics import (
        accuracy_score,
        f1_score,
        mean_absolute_error,
        mean_squared_error,
        r2_score,
        roc_auc_score,
    )

    outputs = sess.run(None, _feed(sess, ds.x_test))
    if ds.kind == "classifier":
        labels = _labels(estimator)
        y_true = [str(v) for v in ds.y_test]
        y_pred = [str(v) for v in outputs[0].tolist()]
        probs = np.asarray(outputs[1], dtype=np.float64)
        metrics = {"accuracy": _r(accuracy_score(y_true, y_pred))}
        if ds.positive_label:
            pos = ds.positive_label
            metrics["f1"] = _r(f1_score(y_true, y_pred, pos_label=pos, average="binary"))
            truth = np.array([v == pos for v in y_true])
            metrics["roc_auc"] = _r(roc_auc_score(truth, probs[:, labels.index(pos)]))
        else:
            metrics["f1"] = _r(f1_score(y_true, y_pred, average="macro"))
        sk_labels = [str(v) for v in estimator.predict(ds.x_test)]
        agreement = float(np.mean([a == b for a, b in zip(y_pred, sk_labels, strict=True)]))
        max_diff = float(np.max(np.abs(probs - estimator.predict_proba(ds.x_test))))
        return metrics, {"label_agreement": _r(agreement), "max_probability_diff": _sig(max_diff)}
    pred = np.asarray(outputs[0], dtype=np.float64)
    if ds.kind == "regressor":
        y = np.asarray(ds.y_test, dtype=np.float64).reshape(pred.shape[0], -1)
        pred = pred.reshape(y.shape)
        metrics = {
            "r2": _r(r2_score(y, pred)),
            "mae": _r(mean_absolute_error(y, pred)),
            "rmse": _r(np.sqrt(mean_squared_error(y, pred))),
        }
        sk_pred = np.asarray(estimator.predict(ds.x_test), dtype=np.float64).reshape(y.shape)
        scale = float(np.std(y)) or 1.0
        return metrics, {"max_relative_diff": _sig(float(np.max(np.abs(pred - sk_pred))) / scale)}
    # embedding: retrieval of same-topic training texts
    index = np.asarray(sess.run(None, _feed(sess, ds.x_train))[0], dtype=np.float64)
    sims = pred @ index.T
    top = np.argsort(-sims, axis=1, kind="stable")[:, :5]
    train_labels = np.array(ds.y_train)
    hits = train_labels[top] == np.array(ds.y_test)[:, None]
    metrics = {
        "precision_at_1": _r(hits[:, 0].mean()),
        "precision_at_5": _r(hits.mean()),
    }
    sk_vectors = np.asarray(estimator.transform(ds.x_test), dtype=np.float64)
    return metrics, {"max_abs_diff": _sig(float(np.max(np.abs(pred - sk_vectors))))}


def _sig(value: float) -> float:
    return float(f"{value:.2g}")
