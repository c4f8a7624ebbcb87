"""Hugging Face-format model cards (YAML front matter + Markdown) for the demo models."""

from __future__ import annotations

import json
from typing import Any

import yaml

from cyxwiz.catalog.taxonomy import TAXONOMY
from cyxwiz.demo._spec import Dataset, Spec

TASK_NAMES = {
    "audio-classification": "Audio Classification",
    "feature-extraction": "Feature Extraction",
    "image-classification": "Image Classification",
    "tabular-classification": "Tabular Classification",
    "tabular-regression": "Tabular Regression",
    "text-classification": "Text Classification",
    "time-series-forecasting": "Time Series Forecasting",
    "token-classification": "Token Classification",
}

METRIC_NAMES = {
    "accuracy": "Accuracy",
    "f1": "F1",
    "roc_auc": "ROC AUC",
    "r2": "R²",
    "mae": "MAE",
    "rmse": "RMSE",
    "precision_at_1": "Precision@1",
    "precision_at_5": "Precision@5",
}

METRIC_NOTES = {
    "accuracy": "share of held-out examples whose top label is right",
    "roc_auc": "ranking quality of the positive-class probability",
    "r2": "variance explained (1.0 is perfect, averaged over outputs)",
    "mae": "mean absolute error, in the target's units",
    "rmse": "root mean squared error, in the target's units",
    "precision_at_1": "the nearest training text has the same topic",
    "precision_at_5": "share of the 5 nearest training texts with the same topic",
}


def category_path(slug: str) -> str:
    for top in TAXONOMY:
        if top.slug == slug:
            return top.name
        for child in top.children:
            if child.slug == slug:
                return f"{top.name} › {child.name}"
    return slug


def compact_json(value: Any, indent: int = 0) -> str:
    """JSON with one line per list of scalars, so rows and vectors stay readable."""
    pad = "  " * indent
    if isinstance(value, dict):
        if not value:
            return "{}"
        if all(not isinstance(v, (dict, list)) for v in value.values()) and len(value) <= 12:
            return json.dumps(value, ensure_ascii=False)
        items = [
            f"{pad}  {json.dumps(k, ensure_ascii=False)}: {compact_json(v, indent + 1)}"
            for k, v in value.items()
        ]
        return "{\n" + ",\n".join(items) + f"\n{pad}}}"
    if isinstance(value, list):
        if all(not isinstance(v, (dict, list)) for v in value):
            return json.dumps(value, ensure_ascii=False)
        items = [f"{pad}  {compact_json(v, indent + 1)}" for v in value]
        return "[\n" + ",\n".join(items) + f"\n{pad}]"
    return json.dumps(value, ensure_ascii=False)


def _shape(shape: list[int | None]) -> str:
    return "[" + ", ".join("batch" if d is None else str(d) for d in shape) + "]"


def _f1_note(ds: Dataset) -> str:
    if ds.positive_label:
        return f"F1 of the `{ds.positive_label}` class"
    return "macro-averaged F1 over all classes"


def front_matter(spec: Spec, ds: Dataset, metrics: dict[str, float]) -> dict[str, Any]:
    front: dict[str, Any] = {
        "license": spec.license,
        "library_name": "onnx",
        "pipeline_tag": spec.task,
        "tags": list(spec.tags),
    }
    if spec.languages:
        front["language"] = list(spec.languages)
    front["datasets"] = [ds.dataset_id]
    front["metrics"] = list(metrics)
    front["model-index"] = [
        {
            "name": spec.name,
            "results": [
                {
                    "task": {"type": spec.task, "name": TASK_NAMES.get(spec.task, spec.task)},
                    "dataset": {"name": ds.dataset_name, "type": ds.dataset_id, "split": "test"},
                    "metrics": [
                        {"type": key, "value": value, "name": METRIC_NAMES.get(key, key)}
                        for key, value in metrics.items()
                    ],
                }
            ],
        }
    ]
    return front


def render(
    *,
    spec: Spec,
    ds: Dataset,
    metrics: dict[str, float],
    config: dict[str, Any],
    sample_input: dict[str, Any],
    sample_output: dict[str, Any],
    estimator_repr: str,
    model_size: int,
    creator_names: dict[str, str],
) -> str:
    front = yaml.safe_dump(
        front_matter(spec, ds, metrics), sort_keys=False, allow_unicode=True, width=100
    )
    inp = config["input"]
    outputs = ", ".join(
        f"`{o['name']}` ({o['dtype']} {_shape(o['shape'])})" for o in config["outputs"]
    )
    lines: list[str] = [f"---\n{front}---", "", f"# {spec.title}", "", spec.summary, ""]
    lines += [spec.description.strip(), ""]
    owner = creator_names.get(spec.owner, spec.owner)
    rows = [
        ("Task", f"`{spec.task}`"),
        ("Category", category_path(spec.category)),
        ("Publisher", f"{owner} (`@{spec.owner}`)"),
        (
            "Format",
            f"ONNX, opset {config['opset'].get('ai.onnx', '?')}, {model_size / 1024:.1f} KB",
        ),
        ("Input", f"`{inp['name']}` ({inp['dtype']} {_shape(inp['shape'])})"),
        ("Outputs", outputs),
        ("License", f"`{spec.license}`"),
    ]
    if "labels" in config:
        rows.insert(6, ("Labels", ", ".join(f"`{lab}`" for lab in config["labels"])))
    if "targets" in config:
        rows.insert(6, ("Targets", ", ".join(f"`{t}`" for t in config["targets"])))
    lines += ["## Model details", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in rows]
    if spec.contributors:
        lines += ["", "Revenue from this listing is shared between its co-creators:", ""]
        for user, bps in spec.contributors:
            lines.append(f"- {creator_names.get(user, user)} (`@{user}`): {bps / 100:g}%")
    lines += ["", "## Intended use", "", spec.intended_use.strip(), ""]
    lines += ["## Inputs and outputs", "", ds.input_doc.strip(), ""]
    if ds.features and len(ds.features) <= 40:
        lines.append("Feature order: " + ", ".join(f"`{f}`" for f in ds.features) + ".")
        lines.append("")
    if config["kind"] == "classifier":
        lines.append(
            "`label` is the most likely class and `probabilities` holds one column per class in "
            "the order of the labels above (no ZipMap, so outputs are plain tensors)."
        )
    elif config["kind"] == "embedding":
        lines.append(
            f"`{config['outputs'][0]['name']}` holds one L2-normalised "
            f"{config['embedding_dim']}-dimensional vector per input; use a dot product for "
            "cosine similarity."
        )
    else:
        lines.append(
            f"`{config['outputs'][0]['name']}` holds one row per input with one column per target."
        )
    lines += ["", f"**Preprocessing.** {ds.preprocessing}.", ""]
    ev = config["evaluation"]
    lines += ["## Training data", "", ds.source.strip(), ""]
    lines += [
        "## Training procedure",
        "",
        "Trained with scikit-learn and converted with skl2onnx; "
        "every random seed is fixed, so a rebuild gives the same model.",
        "",
    ]
    lines += ["```python", estimator_repr, "```", ""]
    lines += [
        "## Evaluation",
        "",
        (
            f"Measured by running the exported ONNX graph with ONNX Runtime on {ev['test_size']} "
            f"held-out examples ({ds.split}); the model was trained on {ev['train_size']}."
        ),
        "",
        "| Metric | Value | Meaning |",
        "|---|---|---|",
    ]
    for key, value in metrics.items():
        note = _f1_note(ds) if key == "f1" else METRIC_NOTES.get(key, "")
        lines.append(f"| {METRIC_NAMES.get(key, key)} | {value:g} | {note} |")
    parity = config["onnx_parity"]
    parity_text = ", ".join(f"{k.replace('_', ' ')} {v:g}" for k, v in parity.items())
    lines += ["", f"ONNX vs scikit-learn on the same held-out set: {parity_text}.", ""]
    lines += ["## Limitations", ""]
    lines += [f"- {item}" for item in spec.limitations]
    lines += [
        "",
        "## How to use",
        "",
        "Request body:",
        "",
        "```json",
        compact_json(sample_input),
        "```",
        "",
        "Response:",
        "",
        "```json",
        compact_json(sample_output),
        "```",
        "",
    ]
    lines += [
        "Locally with ONNX Runtime:",
        "",
        "```python",
        "import numpy as np",
        "import onnxruntime as ort",
        "",
        'sess = ort.InferenceSession("model.onnx")',
    ]
    if ds.text_input:
        lines.append(f"x = np.array({ds.sample[:1]!r}, dtype=object).reshape(-1, 1)")
    else:
        lines.append('x = np.array(request["inputs"], dtype=np.float32)')
    names = ", ".join(o["name"] for o in config["outputs"])
    if len(config["outputs"]) == 1:
        names = f"({names},)"
    lines += [f'{names} = sess.run(None, {{"{inp["name"]}": x}})', "```", ""]
    return "\n".join(lines)
