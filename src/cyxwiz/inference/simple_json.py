"""The simple JSON convention for ONNX models: JSON inputs in, JSON answers out.

The model carries what is needed to read its outputs in its own metadata
(``cyxwiz.kind``, ``cyxwiz.labels``, ``cyxwiz.targets``, ``cyxwiz.features``), so the bytes
alone are enough: this is what an inference node does with a request body.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

PROB_DECIMALS = 4
VALUE_DECIMALS = 4
EMBED_DECIMALS = 5

META_KIND = "cyxwiz.kind"
META_LABELS = "cyxwiz.labels"
META_TARGETS = "cyxwiz.targets"
META_FEATURES = "cyxwiz.features"


def session(model_bytes: bytes) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # no initializer-cleanup chatter on stderr
    options.intra_op_num_threads = 1
    return ort.InferenceSession(
        model_bytes, sess_options=options, providers=["CPUExecutionProvider"]
    )


def _feature_count(shape: Sequence[Any]) -> int | None:
    last = shape[-1] if len(shape) >= 2 else None
    return last if isinstance(last, int) else None


def to_feed(sess: Any, inputs: Any) -> dict[str, npt.NDArray[Any]]:
    """The ONNX feed for JSON inputs: a list of rows (or one row), or a list of strings."""
    if isinstance(inputs, Mapping) and "inputs" in inputs:
        inputs = inputs["inputs"]
    meta = sess.get_modelmeta().custom_metadata_map
    arg = sess.get_inputs()[0]
    if arg.type == "tensor(string)":
        texts = [inputs] if isinstance(inputs, str) else list(inputs)
        if not texts or not all(isinstance(t, str) for t in texts):
            raise ValueError("inputs must be a non-empty list of strings")
        return {arg.name: np.array(texts, dtype=object).reshape(-1, 1)}
    rows = inputs
    if isinstance(rows, Mapping) or (
        isinstance(rows, Sequence) and rows and not isinstance(rows[0], (Sequence, Mapping))
    ):
        rows = [rows]
    if not isinstance(rows, Sequence) or isinstance(rows, str) or not rows:
        raise ValueError("inputs must be a non-empty list of rows")
    features: list[str] = json.loads(meta.get(META_FEATURES, "[]"))
    table = []
    for row in rows:
        if isinstance(row, Mapping):
            missing = [f for f in features if f not in row]
            if not features or missing:
                raise ValueError(f"row is missing features: {missing or 'all'}")
            row = [row[f] for f in features]
        table.append(row)
    try:
        arr = np.asarray(table, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"inputs must be numeric rows: {exc}") from None
    expected = _feature_count(arg.shape)
    if arr.ndim != 2 or (expected is not None and arr.shape[1] != expected):
        raise ValueError(f"each row must hold {expected} numbers, got shape {list(arr.shape)}")
    return {arg.name: arr}


def format_outputs(sess: Any, outputs: list[Any], n_rows: int) -> dict[str, Any]:
    """JSON for the raw ONNX outputs, according to the model's cyxwiz.kind."""
    meta = sess.get_modelmeta().custom_metadata_map
    kind = meta.get(META_KIND, "regressor")
    if kind == "classifier":
        labels: list[str] = json.loads(meta[META_LABELS])
        predicted, probs = outputs[0], np.asarray(outputs[1], dtype=np.float64)
        preds = []
        for label, row in zip(predicted.tolist(), probs, strict=True):
            name = str(label)
            preds.append(
                {
                    "label": name,
                    "score": round(float(row[labels.index(name)]), PROB_DECIMALS),
                    "probabilities": {
                        lab: round(float(p), PROB_DECIMALS)
                        for lab, p in zip(labels, row, strict=True)
                    },
                }
            )
        return {"predictions": preds}
    values = np.asarray(outputs[0], dtype=np.float64)
    if kind == "embedding":
        vectors = [[round(float(v), EMBED_DECIMALS) for v in row] for row in values]
        return {"embeddings": vectors, "dimensions": int(values.shape[1])}
    targets: list[str] = json.loads(meta.get(META_TARGETS, '["value"]'))
    values = values.reshape(n_rows, -1)
    return {
        "predictions": [
            {t: round(float(v), VALUE_DECIMALS) for t, v in zip(targets, row, strict=True)}
            for row in values
        ]
    }


def run_session(sess: Any, inputs: Any) -> dict[str, Any]:
    feed = to_feed(sess, inputs)
    n_rows = len(next(iter(feed.values())))
    return format_outputs(sess, sess.run(None, feed), n_rows)


def run_onnx(model_bytes: bytes, inputs: Any) -> dict[str, Any]:
    return run_session(session(model_bytes), inputs)
