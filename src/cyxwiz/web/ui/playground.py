"""The inference playground on the model page ("Try it"), working without JavaScript.

Signed-in users get a form built from the model's input schema (``InputForm``): one labelled
number input per feature for tabular models (names from the sample's ``{feature: value}`` rows,
``config.json``'s ``input.features`` or the card's "Feature order" line; count from the sample
rows or ``input.shape``), a textarea (one text per line) for text models; "Edit as JSON" holds
the simple JSON request (prefilled from the model card's ``json`` sample or the version's
``config.json`` ``sample_input``) for anything else. Both post to ``POST
/{owner}/{name}/playground`` (CSRF checked); the fields become the same simple JSON request, and
the gateway runs it in-process (``Gateway.infer_simple``, the same path as ``POST
/api/v1/models/{owner}/{name}/infer``) as a session caller without an API key, so metering spends
the user's demo credits first. The model page is re-rendered with the result or the error.
Anonymous visitors see the sample input and output with a link to sign in.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

import anyio.to_thread
import orjson
from fastapi import APIRouter, Request, Response
from sqlalchemy.orm import Session

from cyxwiz.accounts.models import User
from cyxwiz.catalog import service as catalog
from cyxwiz.catalog.models import Model, ModelVersion
from cyxwiz.errors import DomainError
from cyxwiz.inference import metering_reports as reports
from cyxwiz.inference.gateway import Caller, Gateway
from cyxwiz.web.clientip import client_ip as caller_ip
from cyxwiz.web.deps import AppContext, CtxDep, SessionDep
from cyxwiz.web.ui.forms import MAX_FORM_FIELDS, CsrfForm, UiActor, login_redirect
from cyxwiz.web.ui.forms import field as form_field

log = logging.getLogger("cyxwiz.web.ui.playground")
router = APIRouter()

INPUT_FIELD = "payload"
MODE_FIELD = "mode"  # "fields" (the per-field form) or "json" (the textarea; the default)
TEXTS_FIELD = "texts"
MAX_INPUT_CHARS = 64 * 1024
MAX_CONFIG_BYTES = 256 * 1024
MAX_FEATURES = 40  # wider tabular models get the JSON editor only
MAX_ROWS = 5
FORM_FIELDS_LEFT = MAX_FORM_FIELDS - 4  # the CSRF token, the mode, and some slack
_JSON_BLOCK = re.compile(r"```json[ \t]*\r?\n(.*?)\r?\n```", re.DOTALL)
_FEATURE_ORDER = re.compile(r"^Feature order: (.+?)\.?\s*$", re.MULTILINE)
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_INTEGER = re.compile(r"[+-]?\d+")
_STATE = "playground_outcome"

# What each failure tells the user (titles; the detail comes from the error itself).
_TITLES = {
    "invalid_json": "That is not valid JSON",
    "invalid_input": "The model did not accept this input",
    "quota_exhausted": "No free runs left",
    "demo_budget_exhausted": "Free runs are used up for today",
    "empty_batch": "There is nothing to run",
    "batch_too_large": "Too many rows at once",
    "insufficient_funds": "Insufficient funds",
    "model_unavailable": "The model is not available right now",
    "rate_limited": "Too many runs",
    "invalid_field": "Check the input",
}


@dataclass
class Outcome:
    """What the last run gave: the submitted text and the result or the error."""

    payload: str
    result: dict[str, Any] | None = None
    error_code: str = ""
    error_title: str = ""
    error_detail: str = ""
    status: int = 200
    rows: list[dict[str, Any]] = field(default_factory=list)
    mode: str = "json"  # which form was submitted
    values: dict[str, str] = field(default_factory=dict)  # the submitted fields, as typed
    bad_field: str = ""  # the field the error is about (fields mode)

    @property
    def result_json(self) -> str:
        return pretty(self.result) if self.result is not None else ""


def pretty(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False)


# ---------------------------------------------------------------- samples


def _card_samples(card: str | None) -> tuple[Any, Any]:
    """The first ``json`` block of the card holding ``{"inputs": ...}`` and the next one."""
    sample_in: Any = None
    for match in _JSON_BLOCK.finditer(card or ""):
        try:
            value = json.loads(match.group(1))
        except ValueError:
            continue
        if sample_in is None:
            if isinstance(value, dict) and "inputs" in value:
                sample_in = value
            continue
        return sample_in, value
    return sample_in, None


def _config(ctx: AppContext, version: ModelVersion | None) -> dict[str, Any]:
    if version is None:
        return {}
    f = next((f for f in version.files if f.path == "config.json"), None)
    if f is None or f.size > MAX_CONFIG_BYTES:
        return {}
    try:
        value = json.loads(ctx.blobs.read_all(f.sha256))
    except Exception:  # a broken config.json only means no sample
        log.debug("unreadable config.json of %s", version.id, exc_info=True)
        return {}
    return value if isinstance(value, dict) else {}


def samples(ctx: AppContext, model: Model, version: ModelVersion | None) -> tuple[Any, Any]:
    """(sample request, sample response): the card's, else config.json's."""
    sample_in, sample_out, _ = model_inputs(ctx, model, version)
    return sample_in, sample_out


def model_inputs(
    ctx: AppContext, model: Model, version: ModelVersion | None
) -> tuple[Any, Any, InputForm | None]:
    """(sample request, sample response, the per-field form or None) of ``version``."""
    sample_in, sample_out = _card_samples(model.card)
    config = _config(ctx, version)
    if sample_in is None and config.get("sample_input") is not None:
        sample_in = config["sample_input"]
        if not (isinstance(sample_in, dict) and "inputs" in sample_in):
            sample_in = {"inputs": sample_in}
    if sample_out is None:
        sample_out = config.get("sample_output")
    return sample_in, sample_out, input_form(config, sample_in, model.card)


# ---------------------------------------------------------------- the per-field form


@dataclass(frozen=True)
class InputForm:
    """How the model's input is asked for: ``tabular`` (one number input per feature and row)
    or ``text`` (one text per line), prefilled from the sample."""

    kind: str  # tabular | text
    features: tuple[str, ...] = ()  # labels of a row's inputs, in the model's order
    keyed: bool = False  # rows are sent as {feature: value} (the names came from the sample)
    rows: tuple[tuple[str, ...], ...] = ()  # prefilled values (tabular)
    text: str = ""  # prefilled texts, one per line (text)
    max_rows: int = 1

    def field_name(self, row: int, col: int) -> str:
        return f"x{row}_{col}"


def _sample_items(sample_in: Any) -> list[Any] | None:
    """The sample's inputs as a list of rows or strings (None when there is no sample)."""
    inputs = sample_in.get("inputs") if isinstance(sample_in, dict) else sample_in
    if inputs is None:
        return None
    if isinstance(inputs, str | dict):
        return [inputs]
    if isinstance(inputs, list) and inputs and all(_is_number(v) for v in inputs):
        return [inputs]  # one row
    return inputs if isinstance(inputs, list) else None


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _text(value: Any) -> str:
    return json.dumps(value) if _is_number(value) else ""


def _card_features(card: str | None) -> list[str]:
    """Names from a card's "Feature order: `a`, `b`, ..." line (the demo cards have one)."""
    m = _FEATURE_ORDER.search(card or "")
    if m is None:
        return []
    return re.findall(r"`([^`]+)`", m.group(1))


def input_form(config: dict[str, Any], sample_in: Any, card: str | None = None) -> InputForm | None:
    """The per-field form for a model, from its sample and ``config.json``'s ``input``
    (``{"dtype", "shape": [null, n], "features": [...]}``); None when neither tells enough
    or the model is too wide for a form (the JSON editor remains)."""
    declared = config.get("input")
    spec: dict[str, Any] = declared if isinstance(declared, dict) else {}
    items = _sample_items(sample_in)
    if (items and all(isinstance(t, str) for t in items)) or spec.get("dtype") == "string":
        texts = [t for t in items or [] if isinstance(t, str)]
        if any("\n" in t for t in texts):
            return None  # one text per line cannot hold these
        return InputForm(kind="text", text="\n".join(texts))
    named: list[str] = [str(f) for f in spec.get("features") or [] if isinstance(f, str)]
    shape = spec.get("shape")
    width = shape[-1] if isinstance(shape, list) and shape and isinstance(shape[-1], int) else None
    rows: list[tuple[str, ...]] = []
    keyed = False
    if items and all(isinstance(r, dict) for r in items):
        features = [str(k) for k in items[0]]
        if (
            not features
            or any(list(r) != list(items[0]) for r in items)
            or not all(_is_number(v) for r in items for v in r.values())
        ):
            return None  # not a table of numbers
        keyed = True
        rows = [tuple(_text(r[f]) for f in features) for r in items]
    elif items and all(isinstance(r, list) and all(_is_number(v) for v in r) for r in items):
        n = len(items[0])
        if n == 0 or any(len(r) != n for r in items) or (width is not None and width != n):
            return None
        features = named if len(named) == n else _card_features(card)
        if len(features) != n:
            features = [f"Feature {i}" for i in range(1, n + 1)]
        rows = [tuple(_text(v) for v in r) for r in items]
    elif not items and width is not None and width > 0:
        features = named if len(named) == width else [f"Feature {i}" for i in range(1, width + 1)]
        rows = [("",) * width]
    else:
        return None
    if not 1 <= len(features) <= MAX_FEATURES:
        return None
    max_rows = max(1, min(MAX_ROWS, FORM_FIELDS_LEFT // len(features)))
    return InputForm(
        kind="tabular",
        features=tuple(features),
        keyed=keyed,
        rows=tuple(rows[:max_rows]),
        max_rows=max_rows,
    )


class FieldError(ValueError):
    def __init__(self, message: str, field_name: str = "") -> None:
        super().__init__(message)
        self.field_name = field_name


def _number(text: str) -> int | float:
    clean = text.strip()
    if _INTEGER.fullmatch(clean):
        return int(clean)
    if _NUMBER.fullmatch(clean):
        value = float(clean)
        if value not in (float("inf"), float("-inf")):
            return value
    raise ValueError(clean)


def submitted_values(spec: InputForm, form: Any) -> dict[str, str]:
    """The form's values for ``spec``'s fields, as typed."""
    if spec.kind == "text":
        return {TEXTS_FIELD: form_field(form, TEXTS_FIELD)}
    return {
        spec.field_name(r, c): form_field(form, spec.field_name(r, c))
        for r in range(spec.max_rows)
        for c in range(len(spec.features))
    }


def fields_payload(spec: InputForm, values: dict[str, str]) -> dict[str, Any]:
    """The simple JSON request the fields stand for (``{"inputs": ...}``, as the JSON form
    would send it); FieldError names the first field that is not right. Blank rows are left
    out."""
    if spec.kind == "text":
        texts = [line.strip() for line in values.get(TEXTS_FIELD, "").splitlines()]
        texts = [t for t in texts if t]
        if not texts:
            raise FieldError("Enter a text to run the model on.", TEXTS_FIELD)
        return {"inputs": texts}
    rows: list[Any] = []
    for r in range(spec.max_rows):
        cells = [values.get(spec.field_name(r, c), "").strip() for c in range(len(spec.features))]
        if not any(cells):
            continue
        row: list[int | float] = []
        for c, (feature, cell) in enumerate(zip(spec.features, cells, strict=True)):
            try:
                row.append(_number(cell))
            except ValueError:
                what = "a number is missing" if not cell else f"{cell!r} is not a number"
                raise FieldError(
                    f"Row {r + 1}, {feature}: {what}.", spec.field_name(r, c)
                ) from None
        rows.append(dict(zip(spec.features, row, strict=True)) if spec.keyed else row)
    if not rows:
        raise FieldError("Enter the values of at least one row.", spec.field_name(0, 0))
    return {"inputs": rows}


def prefill(spec: InputForm, outcome: Outcome | None) -> dict[str, str]:
    """The fields' values to show: what was typed (after a run of the fields), the JSON that
    ran when it fits the form (after a run of the JSON editor), else the sample."""
    if outcome is not None and outcome.mode == "fields":
        return dict(outcome.values)
    values: dict[str, str] = {}
    if spec.kind == "text":
        values[TEXTS_FIELD] = spec.text
    else:
        for r, row in enumerate(spec.rows):
            for c, value in enumerate(row):
                values[spec.field_name(r, c)] = value
    if outcome is None:
        return values
    try:
        items = _sample_items(json.loads(outcome.payload))
    except ValueError:
        return values
    if not items:
        return values
    if spec.kind == "text":
        if all(isinstance(t, str) and "\n" not in t for t in items):
            return {TEXTS_FIELD: "\n".join(items)}
        return values
    width = len(spec.features)
    fitted: dict[str, str] = {}
    for r, row in enumerate(items[: spec.max_rows]):
        if spec.keyed and isinstance(row, dict) and set(row) == set(spec.features):
            cells = [row[f] for f in spec.features]
        elif not spec.keyed and isinstance(row, list) and len(row) == width:
            cells = row
        else:
            return values
        if not all(_is_number(v) for v in cells):
            return values
        for c, v in enumerate(cells):
            fitted[spec.field_name(r, c)] = _text(v)
    return fitted


def label_rows(result: Any) -> list[dict[str, Any]]:
    """Classifier predictions as table rows: row number, label, score, probabilities."""
    if not isinstance(result, dict):
        return []
    preds = result.get("predictions")
    if not isinstance(preds, list):
        return []
    rows: list[dict[str, Any]] = []
    for i, p in enumerate(preds, start=1):
        if not isinstance(p, dict) or "label" not in p:
            return []
        probs = p.get("probabilities")
        ordered = (
            sorted(probs.items(), key=lambda kv: -float(kv[1])) if isinstance(probs, dict) else []
        )
        rows.append(
            {
                "n": i,
                "label": p["label"],
                "score": p.get("score"),
                "probabilities": [(str(k), float(v)) for k, v in ordered],
            }
        )
    return rows


# ---------------------------------------------------------------- the panel on the model page


def panel_context(
    request: Request,
    ctx: AppContext,
    session: Session,
    *,
    model: Model,
    viewer: User | None,
) -> dict[str, Any]:
    """The ``playground`` value model.html shows (None: no published version to run)."""
    version = model.latest_version
    if version is None or ctx.gateway is None:
        return {"playground": None}
    sample_in, sample_out, spec = model_inputs(ctx, model, version)
    outcome: Outcome | None = getattr(request.state, _STATE, None)
    credits: dict[str, int] | None = None
    if viewer is not None:
        credits = reports.demo_credits_left(
            session, user=viewer, model=model, limit=ctx.settings.demo_credits_per_model
        )
    default = pretty(sample_in) if sample_in is not None else '{"inputs": []}'
    return {
        "playground": {
            "action": f"/{model.owner.username}/{model.name}/playground",
            "version": version.version,
            "sample_input": pretty(sample_in) if sample_in is not None else "",
            "sample_output": pretty(sample_out) if sample_out is not None else "",
            "payload": outcome.payload if outcome is not None and outcome.payload else default,
            "outcome": outcome,
            "credits": credits,
            "owner": viewer is not None and viewer.id == model.owner_id,
            "field": INPUT_FIELD,
            "form": spec,
            "field_values": prefill(spec, outcome) if spec is not None else {},
            "json_open": spec is None or (outcome is not None and outcome.mode == "json"),
            "mode_field": MODE_FIELD,
            "texts_field": TEXTS_FIELD,
        }
    }


# ---------------------------------------------------------------- running it


async def run(
    gw: Gateway,
    *,
    user_id: uuid.UUID,
    is_admin: bool,
    owner: str,
    name: str,
    text: str,
    client_ip: str | None = None,
) -> Outcome:
    """Run ``text`` (the simple JSON request) on the model as the user (demo calls budgeted by
    ``client_ip``); errors → Outcome."""
    outcome = Outcome(payload=text)
    try:
        if len(text) > MAX_INPUT_CHARS:
            raise ValueError(f"the input is larger than {MAX_INPUT_CHARS // 1024} KiB")
        payload = json.loads(text)
    except ValueError as exc:
        return _failed(outcome, "invalid_json", f"{exc}. Send a JSON object like the sample.", 400)
    if not isinstance(payload, dict) or "inputs" not in payload:
        return _failed(outcome, "invalid_json", 'Send a JSON object: {"inputs": ...}.', 400)
    caller = Caller(user_id=user_id, is_admin=is_admin, via="session", api_key_id=None, scopes=None)
    try:
        target = await gw.target(owner=owner, name=name, version=None, caller=caller)
        answer = await gw.infer_simple(
            caller=caller, target=target, body=orjson.dumps(payload), client_ip=client_ip
        )
    except DomainError as exc:
        return _failed(outcome, exc.code, exc.detail, exc.status)
    result = orjson.loads(answer.body)
    outcome.result = result
    outcome.rows = label_rows(result)
    return outcome


def _failed(outcome: Outcome, code: str, detail: str, status: int) -> Outcome:
    outcome.error_code = code
    outcome.error_title = _TITLES.get(code, "The run failed")
    outcome.error_detail = detail
    outcome.status = status
    return outcome


@router.post("/{owner}/{name}/playground")
async def playground(
    request: Request,
    owner: str,
    name: str,
    form: CsrfForm,
    session: SessionDep,
    actor: UiActor,
    ctx: CtxDep,
) -> Response:
    """Run the playground form and show the model page with the result (or the error)."""
    if actor is None:
        return login_redirect(request, f"/{owner}/{name}")
    fields = form_field(form, MODE_FIELD) == "fields"
    text = form_field(form, INPUT_FIELD)

    def who() -> tuple[uuid.UUID, bool, InputForm | None]:
        spec = None
        if fields:  # the form the page showed, from the model's own sample and config
            model = catalog.get_model(session, owner=owner, name=name, viewer=actor)
            _, _, spec = model_inputs(ctx, model, model.latest_version)
        # End the request's transaction first: metering writes demo credits meanwhile
        # (SQLite allows one writer).
        user_id, is_admin = actor.id, actor.is_admin
        session.commit()
        return user_id, is_admin, spec

    user_id, is_admin, spec = await anyio.to_thread.run_sync(who)
    outcome: Outcome | None = None
    values: dict[str, str] = {}
    if fields:  # the fields become the simple JSON request the JSON editor would send
        try:
            if spec is None:
                raise FieldError("This model takes its input as JSON: use Edit as JSON.")
            values = submitted_values(spec, form)
            text = json.dumps(fields_payload(spec, values))
        except FieldError as exc:  # nothing runs, nothing is spent
            outcome = _failed(Outcome(payload=""), "invalid_field", str(exc), 400)
            outcome.bad_field = exc.field_name
    if outcome is None:
        gw = ctx.gateway
        if gw is None:  # pragma: no cover - create_app always builds one
            outcome = _failed(
                Outcome(payload=text), "model_unavailable", "inference is not configured here", 503
            )
        else:
            outcome = await run(
                gw,
                user_id=user_id,
                is_admin=is_admin,
                owner=owner,
                name=name,
                text=text,
                client_ip=caller_ip(
                    request.scope, trusted_proxies=ctx.settings.trusted_proxy_count
                ),
            )
    if fields:
        outcome.mode = "fields"
        outcome.values = values
    setattr(request.state, _STATE, outcome)
    from cyxwiz.web.ui import routes  # the model page (routes imports this module)

    def render() -> Response:
        return routes._model_page(
            request, session, ctx, owner=owner, name=name, viewer=actor, status=outcome.status
        )

    return await anyio.to_thread.run_sync(render)
