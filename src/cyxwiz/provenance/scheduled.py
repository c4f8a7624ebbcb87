"""Provenance's background job, run by ``cyxwiz serve`` through the registry in ``cyxwiz.jobs``:
it drives the attestation outbox (``send_pending``)."""

from __future__ import annotations

import asyncio
import logging

import anyio.to_thread

from cyxwiz.jobcontext import JobContext
from cyxwiz.provenance.service import SendReport, send_pending

log = logging.getLogger("cyxwiz.provenance")


async def attestation_loop(ctx: JobContext) -> None:
    """Send, confirm and backfill attestations every ``chain_watch_interval_seconds``; a failing
    pass is logged (once per distinct error) and retried, never ends the loop."""
    last_error: str | None = None

    def tick() -> SendReport:
        return send_pending(ctx.db, ctx.chain, now=ctx.clock.now())

    while True:
        try:
            report = await anyio.to_thread.run_sync(tick)
            if report.changed:
                log.info(
                    "attestations: %d backfilled, %d signed, %d sent, %d confirmed, %d expired",
                    report.created,
                    report.signed,
                    report.sent,
                    report.confirmed,
                    report.expired,
                )
            error = "; ".join(report.errors) or None
        except Exception as exc:  # e.g. the chain cannot be opened in this process
            error = f"{type(exc).__name__}: {exc}"
        if error != last_error and error is not None:
            log.warning("attestation sender: %s (retrying)", error)
        last_error = error
        await asyncio.sleep(ctx.settings.chain_watch_interval_seconds)
