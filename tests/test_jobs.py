"""The background-job registry (``cyxwiz.jobs``): what it lists, how it starts and stops, and
that no domain reaches into the web layer for it."""

from __future__ import annotations

import ast
import asyncio
from pathlib import Path

from cyxwiz import jobs
from cyxwiz.billing import scheduled as billing
from cyxwiz.config import Settings
from cyxwiz.inference import scheduled as inference
from cyxwiz.jobcontext import JobContext
from cyxwiz.provenance import scheduled as provenance

SRC = Path(jobs.__file__).parent


def test_the_registry_lists_every_loop_once_with_a_real_interval() -> None:
    assert [job.run for job in jobs.JOBS] == [
        billing.release_loop,
        inference.eviction_loop,
        billing.settlement_loop,
        provenance.attestation_loop,
        inference.sweep_loop,
    ]
    assert len({job.name for job in jobs.JOBS}) == len(jobs.JOBS)
    assert all(job.interval in Settings.model_fields for job in jobs.JOBS)


def test_start_jobs_runs_each_with_the_context_and_stop_jobs_cancels_them() -> None:
    seen: list[tuple[str, object]] = []
    ctx = object()

    def job(name: str) -> jobs.Job:
        async def run(c: JobContext) -> None:
            seen.append((name, c))
            await asyncio.Event().wait()

        return jobs.Job(name, run, "release_interval_seconds")

    async def main() -> list[asyncio.Task[None]]:
        tasks = jobs.start_jobs(ctx, [job("a"), job("b")])  # type: ignore[arg-type]
        await asyncio.sleep(0)
        assert not any(t.done() for t in tasks)
        await jobs.stop_jobs(tasks)
        return tasks

    tasks = asyncio.run(main())
    assert seen == [("a", ctx), ("b", ctx)]
    assert all(t.cancelled() for t in tasks)
    assert [t.get_name() for t in tasks] == ["cyxwiz job: a", "cyxwiz job: b"]


def test_only_web_and_cli_import_the_web_layer() -> None:
    offenders = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        if rel.startswith(("web/", "cli/")):
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):  # also `from cyxwiz import web`
                names = [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            offenders += [
                f"{rel}: {n}" for n in names if n == "cyxwiz.web" or n.startswith("cyxwiz.web.")
            ]
    assert offenders == []
