"""The one registry of background jobs: what ``cyxwiz serve`` runs beside the web app.

Each domain keeps its periodic work beside it, in ``<domain>/scheduled.py``; a job is an
endless coroutine taking a :class:`~cyxwiz.jobcontext.JobContext` (settings, database, clock,
chain), running an idempotent pass every interval, logging a failing pass and retrying at the
next tick — so any number of processes may run every job. The web app's lifespan calls
:func:`start_jobs` (``create_app(..., run_scheduler=True)``, as ``cyxwiz serve`` and the ASGI
entry do) and :func:`stop_jobs` at shutdown. ``cyxwiz billing release`` and ``cyxwiz billing
sweep`` run the same passes once, on demand.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from typing import Any

from cyxwiz.billing import scheduled as billing
from cyxwiz.inference import scheduled as inference
from cyxwiz.jobcontext import JobContext
from cyxwiz.provenance import scheduled as provenance


@dataclass(frozen=True)
class Job:
    """A named background loop and the setting that paces it."""

    name: str
    run: Callable[[JobContext], Coroutine[Any, Any, None]]
    interval: str  # the Settings field giving its period (seconds)


JOBS: tuple[Job, ...] = (
    Job("escrow release", billing.release_loop, "release_interval_seconds"),
    Job("node eviction", inference.eviction_loop, "eviction_interval_seconds"),
    Job("deposits and payouts", billing.settlement_loop, "chain_watch_interval_seconds"),
    Job("attestations", provenance.attestation_loop, "chain_watch_interval_seconds"),
    Job("metering sweeper", inference.sweep_loop, "metering_sweep_interval_seconds"),
)


def start_jobs(ctx: JobContext, jobs: Iterable[Job] = JOBS) -> list[asyncio.Task[None]]:
    """Start every job as a task of the running event loop; returns the tasks."""
    return [asyncio.create_task(job.run(ctx), name=f"cyxwiz job: {job.name}") for job in jobs]


async def stop_jobs(tasks: Iterable[asyncio.Task[None]]) -> None:
    """Cancel the tasks and wait for each to end."""
    for task in tasks:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
