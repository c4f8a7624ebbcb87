"""The inference playground on the model page ("Try it"), working without JavaScript.

Signed-in users submit the sample request (prefilled from the model card's ``json`` sample or the
version's ``config.json`` ``sample_input``) with ``POST /{owner}/{name}/playground`` (CSRF
checked); the gateway runs it in-process (``Gateway.infer_simple``, the same path as ``POST
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
from cyxwiz.catalog.models import Model, ModelVersion
from cyxwiz.errors import DomainError
from cyxwiz.inference import metering_reports as reports
from cyxwiz.inference.gateway import Caller, Gateway
from cyxwiz.web.deps import AppContext, CtxDep, SessionDep
from cyxwiz.web.ui.forms import CsrfForm, UiActor, login_redirect
from cyxwiz.web.ui.forms import field as form_field

log = logging.getLogger("cyxwiz.web.ui.playground")
router = APIRouter()

INPUT_FIELD = "payload"
MAX_INPUT_CHARS = 64 * 1024
MAX_CONFIG_BYTES = 256 * 1024
_JSON_BLOCK = re.compile(r"```json[ \t]*\r?\n(.*?)\r?\n```", re.DOTALL)
_STATE = "playground_outcome"

# What each failure tells the user (titles; the detail comes from the error itself).
_TITLES = {
    "invalid_json": "That is not valid JSON",
    "invalid_input": "The model did not accept this input",
    "quota_exhausted": "No free runs left",
    "insufficient_funds": "Insufficient funds",
    "model_unavailable": "The model is not available right now",
    "rate_limited": "Too many runs",
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
    sample_in, sample_out = _card_samples(model.card)
    if sample_in is None or sample_out is None:
        config = _config(ctx, version)
        if sample_in is None and config.get("sample_input") is not None:
            sample_in = config["sample_input"]
            if not (isinstance(sample_in, dict) and "inputs" in sample_in):
                sample_in = {"inputs": sample_in}
        if sample_out is None:
            sample_out = config.get("sample_output")
    return sample_in, sample_out


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
    sample_in, sample_out = samples(ctx, model, version)
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
            "payload": outcome.payload if outcome is not None else default,
            "outcome": outcome,
            "credits": credits,
            "owner": viewer is not None and viewer.id == model.owner_id,
            "field": INPUT_FIELD,
        }
    }


# ---------------------------------------------------------------- running it


async def run(
    gw: Gateway, *, user_id: uuid.UUID, is_admin: bool, owner: str, name: str, text: str
) -> Outcome:
    """Run ``text`` (the simple JSON request) on the model as the user; errors → Outcome."""
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
        answer = await gw.infer_simple(caller=caller, target=target, body=orjson.dumps(payload))
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
    text = form_field(form, INPUT_FIELD)

    def who() -> tuple[uuid.UUID, bool]:
        # End the request's transaction first: metering writes demo credits meanwhile
        # (SQLite allows one writer).
        user_id, is_admin = actor.id, actor.is_admin
        session.commit()
        return user_id, is_admin

    user_id, is_admin = await anyio.to_thread.run_sync(who)
    gw = ctx.gateway
    if gw is None:  # pragma: no cover - create_app always builds one
        outcome = _failed(
            Outcome(payload=text), "model_unavailable", "inference is not configured here", 503
        )
    else:
        outcome = await run(
            gw, user_id=user_id, is_admin=is_admin, owner=owner, name=name, text=text
        )
    setattr(request.state, _STATE, outcome)
    from cyxwiz.web.ui import routes  # the model page (routes imports this module)

    def render() -> Response:
        return routes._model_page(
            request, session, ctx, owner=owner, name=name, viewer=actor, status=outcome.status
        )

    return await anyio.to_thread.run_sync(render)
