"""Billing's background jobs, run by ``cyxwiz serve`` through the registry in ``cyxwiz.jobs``:
escrow release, and on-chain settlement (deposit watching, payouts, weekly payouts).

Each job is an endless loop over an idempotent pass, safe to run in several processes; a
failing pass is logged and retried at the next tick, never ends the loop.
"""

from __future__ import annotations

import asyncio
import logging

import anyio.to_thread

from cyxwiz.jobcontext import JobContext

log = logging.getLogger(__name__)


async def release_loop(ctx: JobContext) -> None:
    """Release escrow whose refund window closed, every ``release_interval_seconds``."""
    from cyxwiz.billing.flows import release_due

    def tick() -> int:
        with ctx.db.session() as session:
            return release_due(session, now=ctx.clock.now())

    while True:
        try:
            released = await anyio.to_thread.run_sync(tick)
            if released:
                log.info("released escrow for %d purchases", released)
        except Exception:  # keep the loop alive; the next tick retries (the job is idempotent)
            log.exception("escrow release failed")
        await asyncio.sleep(ctx.settings.release_interval_seconds)


async def settlement_loop(ctx: JobContext) -> None:
    """Credit deposits, send and confirm payouts, queue weekly payouts — every
    ``chain_watch_interval_seconds`` (docs/chain.md). Each step is idempotent."""
    from cyxwiz.billing.deposits import watch_once
    from cyxwiz.billing.payouts import process_payouts, schedule_weekly

    last_weekly = 0.0

    def tick() -> None:
        nonlocal last_weekly
        s, chain, now = ctx.settings, ctx.chain, ctx.clock.now()
        credited = watch_once(ctx.db, settings=s, chain=chain, now=now)
        if credited:
            log.info("deposits: %d transactions credited", credited)
        counts = process_payouts(ctx.db, settings=s, chain=chain, now=now)
        if any(counts.values()):
            log.info("payouts: %s", counts)
        if now.timestamp() - last_weekly >= 3600:
            last_weekly = now.timestamp()
            schedule_weekly(ctx.db, settings=s, now=now)

    while True:
        try:
            await anyio.to_thread.run_sync(tick)
        except Exception:  # keep the loop alive; the next tick retries
            log.exception("settlement pass failed")
        await asyncio.sleep(ctx.settings.chain_watch_interval_seconds)
