"""Inference's background jobs, run by ``cyxwiz serve`` through the registry in ``cyxwiz.jobs``:
node eviction (missed heartbeats) and the metering reservation sweeper.

Each job is an endless loop over an idempotent pass, safe to run in several processes; a
failing pass is logged and retried at the next tick, never ends the loop.
"""

from __future__ import annotations

import asyncio
import logging

import anyio.to_thread

from cyxwiz.inference.metering import sweep_reservations
from cyxwiz.inference.service import evict_stale
from cyxwiz.jobcontext import JobContext

log = logging.getLogger(__name__)
metering_log = logging.getLogger("cyxwiz.metering")  # the sweeper logs with the meter


async def eviction_loop(ctx: JobContext) -> None:
    """Mark nodes that missed their heartbeats offline, every ``eviction_interval_seconds``."""

    def tick() -> int:
        with ctx.db.session() as session:
            return evict_stale(
                session, now=ctx.clock.now(), timeout=ctx.settings.inference_node_stale_seconds
            )

    while True:
        try:
            evicted = await anyio.to_thread.run_sync(tick)
            if evicted:
                log.info("%d inference nodes missed their heartbeats: offline", evicted)
        except Exception:  # keep the loop alive; the job is idempotent
            log.exception("node eviction failed")
        await asyncio.sleep(ctx.settings.eviction_interval_seconds)


async def sweep_loop(ctx: JobContext) -> None:
    """:func:`~cyxwiz.inference.metering.sweep_reservations` every
    ``metering_sweep_interval_seconds`` (errors are logged; the next tick retries)."""
    db, settings = ctx.db, ctx.settings
    while True:
        try:
            while (await anyio.to_thread.run_sync(sweep_reservations, db, settings)).swept:
                pass  # more than one page of orphans: keep going
        except Exception:
            metering_log.exception("metering reservation sweep failed")
        await asyncio.sleep(settings.metering_sweep_interval_seconds)
