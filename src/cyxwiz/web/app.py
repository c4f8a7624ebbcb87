"""The ASGI app factory: one FastAPI app serving the API, the web UI and file routes.

Its lifespan starts the inference gateway and, with ``run_scheduler`` (``cyxwiz serve``, the
ASGI entry), the background jobs registered in ``cyxwiz.jobs``: escrow release and deposit
watching + payouts (``billing/scheduled.py``), node eviction and the metering reservation
sweeper (``inference/scheduled.py``), attestations (``provenance/scheduled.py``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from cyxwiz import __version__
from cyxwiz.chain.interfaces import Chain
from cyxwiz.clock import Clock, SystemClock
from cyxwiz.config import Settings
from cyxwiz.db import Database
from cyxwiz.inference.gateway import Gateway
from cyxwiz.inference.interfaces import Meter
from cyxwiz.jobs import start_jobs, stop_jobs
from cyxwiz.licensing.keys import LicenseSigner
from cyxwiz.storage import BlobStore, blob_store_from_settings
from cyxwiz.web import openapi, problems
from cyxwiz.web.api import chain_rpc as chain_rpc_api
from cyxwiz.web.api.v1 import auth as auth_api
from cyxwiz.web.api.v1 import billing as billing_api
from cyxwiz.web.api.v1 import catalog as catalog_api
from cyxwiz.web.api.v1 import inference as inference_api
from cyxwiz.web.api.v1 import nodes as nodes_api
from cyxwiz.web.api.v1 import provenance as provenance_api
from cyxwiz.web.api.v1 import settlement as settlement_api
from cyxwiz.web.api.v1 import usage as usage_api
from cyxwiz.web.api.v1 import wallets as wallets_api
from cyxwiz.web.deps import AppContext
from cyxwiz.web.middleware import HTML_CSP, BodyLimitMiddleware, SecurityHeadersMiddleware

STATIC_DIR = Path(__file__).parent / "static"


class CyxwizApp(FastAPI):
    """The FastAPI app whose ASGI entry first offers each request to ``entry`` (the inference
    hot path, ``inference_api.InferenceFastPath``), which serves the infer routes itself and
    hands everything else to FastAPI — so those calls skip FastAPI's and Starlette's layers
    (telemetry check, ServerErrorMiddleware, the middleware stack, routing). The routes stay
    declared on the app (OpenAPI, and served by FastAPI when the fast path is off)."""

    entry: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        entry = self.entry
        if entry is None:
            await super().__call__(scope, receive, send)
        else:
            await entry(scope, receive, send)

    async def framework(self, scope: Scope, receive: Receive, send: Send) -> None:
        """FastAPI's own ASGI entry (what ``entry`` passes everything else to)."""
        await super().__call__(scope, receive, send)


def create_app(
    settings: Settings,
    *,
    database: Database | None = None,
    blobs: BlobStore | None = None,
    clock: Clock | None = None,
    run_scheduler: bool = False,
    meter: Meter | None = None,
    chain: Chain | None = None,
) -> FastAPI:
    """Build the app for ``settings``; tests pass their own database, blob store and clock.

    ``run_scheduler`` starts the background jobs of ``cyxwiz.jobs.JOBS`` — ``cyxwiz serve``
    does. ``meter`` meters inference (default: ``cyxwiz.inference.metering``).
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        ctx: AppContext = app.state.ctx
        tasks: list[asyncio.Task[None]] = start_jobs(ctx) if run_scheduler else []
        if ctx.gateway is not None:
            await ctx.gateway.start()
        try:
            yield
        finally:
            await stop_jobs(tasks)
            if ctx.gateway is not None:
                await ctx.gateway.close()
            ctx.close_chain()

    app = CyxwizApp(
        lifespan=lifespan,
        title="CyxWiz Model Marketplace API",
        version=__version__,
        description=(
            "The App Store for AI models. Amounts are integers in minor units; every error is "
            "RFC 9457 `application/problem+json` with a stable `code`."
        ),
        docs_url=None,  # served below from the package's own Swagger UI copy (no CDN)
        redoc_url=None,
        openapi_url="/openapi.json",
    )
    app.state.ctx = AppContext(
        settings=settings,
        db=database or Database.from_url(settings.resolved_database_url),
        blobs=blobs or blob_store_from_settings(settings),
        clock=clock or SystemClock(),
        signer=LicenseSigner(settings.master_keys),
        chain_factory=(lambda: chain) if chain is not None else None,
    )
    ctx: AppContext = app.state.ctx
    ctx.gateway = Gateway(
        settings=settings,
        db=ctx.db,
        clock=ctx.clock,
        meter=meter if meter is not None else _default_meter(ctx),
    )
    problems.install(app)
    openapi.install(app)

    api = "/api/v1"
    app.include_router(inference_api.router)  # before catalog: /models/{owner}/{name}/infer
    app.include_router(auth_api.router, prefix=api)
    app.include_router(catalog_api.router, prefix=api)
    app.include_router(billing_api.router, prefix=api)
    app.include_router(nodes_api.router, prefix=api)
    app.include_router(usage_api.router, prefix=api)
    app.include_router(provenance_api.router, prefix=api)
    app.include_router(wallets_api.router, prefix=api)
    app.include_router(settlement_api.router, prefix=api)
    app.include_router(chain_rpc_api.router)

    @app.get("/health", include_in_schema=False)
    def health() -> dict[str, str]:
        return {"status": "ok", "version": __version__}

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    _install_docs(app)
    from cyxwiz.web.ui import playground as playground_ui
    from cyxwiz.web.ui import routes as ui_routes

    app.include_router(playground_ui.router, include_in_schema=False)  # before the UI catch-all
    app.include_router(ui_routes.router, include_in_schema=False)

    def limit_for(scope: Scope) -> int:
        path: str = scope.get("path", "")
        if path.endswith("/infer"):
            return settings.inference_max_body_bytes
        if "/files/" in path or path.endswith("/upload"):
            return settings.max_upload_bytes
        return settings.max_json_bytes

    app.add_middleware(BodyLimitMiddleware, limit_for=limit_for)
    app.add_middleware(
        SecurityHeadersMiddleware,
        production=settings.is_production,
        html_csp=settings.content_security_policy or HTML_CSP,
        hsts_seconds=settings.hsts_seconds,
    )
    if settings.inference_fast_path:  # the infer routes' hot path, before the whole framework
        app.entry = inference_api.InferenceFastPath(app.framework, gateway=lambda: ctx.gateway)
    return app


DOCS_PAGE = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>CyxWiz Model Marketplace API</title>
  <link rel="icon" href="/static/favicon.svg" type="image/svg+xml">
  <link rel="stylesheet" href="/docs/assets/swagger-ui.css">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="/docs/assets/swagger-ui-bundle.js"></script>
  <script src="/static/swagger-init.js"></script>
</body>
</html>
"""


def _install_docs(app: FastAPI) -> None:
    """Swagger UI at /docs from the pinned ``swagger-ui-bundle-v2`` package (works offline, no
    inline script: the page passes the site's Content-Security-Policy). No ReDoc."""
    from swagger_ui_bundle import swagger_ui_path  # type: ignore[import-untyped]

    app.mount("/docs/assets", StaticFiles(directory=str(swagger_ui_path)), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return HTMLResponse(DOCS_PAGE, headers={"Cache-Control": "no-cache"})


def _default_meter(ctx: AppContext) -> Meter | None:
    """The metering engine (``cyxwiz.inference.metering.UsageMeter``), one per process."""
    from cyxwiz.inference.metering import UsageMeter

    return UsageMeter(ctx.db, ctx.settings, ctx.clock)
