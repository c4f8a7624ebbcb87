"""Internal description of one demo model before it is trained: its data and its estimator."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

Kind = Literal["classifier", "regressor", "embedding"]


@dataclass(frozen=True)
class Dataset:
    """Train/test data plus what the card and config need to say about it."""

    kind: Kind
    x_train: Any
    y_train: Any
    x_test: Any
    y_test: Any
    dataset_id: str  # Hugging Face-style id for the card's `datasets:` list
    dataset_name: str  # human name for the model-index
    source: str  # Markdown: where the rows come from and how many
    split: str  # how the held-out set was chosen
    input_doc: str  # Markdown: what one input row / string is
    sample: list[Any]  # JSON-able inputs for the sample request
    features: tuple[str, ...] = ()  # column names of a float input
    targets: tuple[str, ...] = ()  # regression outputs
    text_input: bool = False
    positive_label: str | None = None  # binary classifiers: the class F1/AUC are about
    preprocessing: str = "None needed: send raw values; scaling runs inside the ONNX graph"


@dataclass(frozen=True)
class Spec:
    owner: str
    name: str
    title: str
    summary: str
    category: str
    task: str
    tags: tuple[str, ...]
    license: str
    data: Callable[[int], Dataset]
    estimator: Callable[[int], Any]
    description: str
    intended_use: str
    limitations: tuple[str, ...]
    contributors: tuple[tuple[str, int], ...] = ()
    languages: tuple[str, ...] = ()
