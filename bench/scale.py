"""Scale figures: jobserver started on a database that already holds many jobs.

Owns the `--scale` scenarios. Each seeds a fresh file with sqlite3 (through
`bench.seed`) before the server starts on it:
- "finished": `plan.scale_finished` completed jobs (created over the last day);
- "pending": `plan.scale_pending` pending jobs due in a week (they stay queued
  while the usual figures run, so a claim must skip them cheaply);
- "drain": `plan.drain_jobs` due no-op jobs: how fast a fresh server empties a backlog.
Keys are prefixed `scale.<scenario>.` and compare with the same figure on an
empty database. Each seeded file's query plans (claim, list filters, get by id)
are read before the server starts (`scale.<scenario>.plans`). Imports only
bench modules.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from bench import seed
from bench.jobserver_figures import (
    Bench,
    Figure,
    auth_headers,
    fig_e2e,
    fig_pickup,
    fig_reads,
    fig_submit,
    run_figures,
    start_server,
)
from bench.plan import Plan
from bench.servers import BenchError

WEEK_S = 7 * 86_400.0


async def _scenario(
    plan: Plan,
    root: Path,
    extra: dict[str, Any],
    log: Callable[[str], None],
    name: str,
    status: str,
    count: int,
    run_at: float | None,
) -> tuple[dict[str, Any], dict[str, str]]:
    workdir = root / f"scale-{name}"
    workdir.mkdir()
    db = workdir / "jobs.db"
    seed.create_schema(db)
    log(f"scale {name}: seeding {count:,} {status} jobs")
    seed_s = seed.seed_jobs(db, count, status, run_at)
    plans = seed.query_plans(db)
    figures: list[tuple[str, Figure]] = [
        ("pickup", partial(fig_pickup, idle=False)),
        ("reads", fig_reads),
        ("e2e", fig_e2e),
        ("submit", partial(fig_submit, settle=False)),
    ]
    values, errors = await run_figures(plan, workdir, extra, figures, lambda m: log(f"scale {name}: {m}"))
    values["seed_s"] = seed_s
    values["plans"] = plans
    return {f"scale.{name}.{k}": v for k, v in values.items()}, {
        f"scale {name}: {k}": v for k, v in errors.items()
    }


async def _drain(plan: Plan, root: Path, extra: dict[str, Any], log: Callable[[str], None]) -> dict[str, Any]:
    workdir = root / "scale-drain"
    workdir.mkdir()
    db = workdir / "jobs.db"
    seed.create_schema(db)
    log(f"scale drain: seeding {plan.drain_jobs:,} due jobs")
    seed.seed_jobs(db, plan.drain_jobs, "pending")
    plans = seed.query_plans(db)
    t0 = time.perf_counter()
    server, config, startup_s = await start_server(workdir, extra)
    try:
        bench = Bench(plan, server, auth_headers(config))
        await bench.settle(since=0.0)  # no pending job at all, none running
        elapsed = time.perf_counter() - t0
        rss = server.peak_rss_mb()
    finally:
        await server.stop()
    counts = seed.count_by_status(db)
    if counts.get("completed", 0) != plan.drain_jobs:
        raise BenchError(f"after the drain the jobs are {counts}")
    return {
        "scale.drain.jobs_per_s": plan.drain_jobs / elapsed,
        "scale.drain.startup_s": startup_s,
        "scale.drain.peak_rss_mb": rss,
        "scale.drain.plans": plans,
    }


async def run_scale(
    plan: Plan, root: Path, extra: dict[str, Any], log: Callable[[str], None]
) -> tuple[dict[str, Any], dict[str, str]]:
    """All scale scenarios; (values, errors)."""
    values: dict[str, Any] = {}
    errors: dict[str, str] = {}
    scenarios = [
        ("finished", "completed", plan.scale_finished, None),
        ("pending", "pending", plan.scale_pending, time.time() + WEEK_S),
    ]
    for name, status, count, run_at in scenarios:
        try:
            v, e = await _scenario(plan, root, extra, log, name, status, count, run_at)
            values |= v
            errors |= e
        except (BenchError, OSError) as exc:
            errors[f"scale {name}"] = f"{type(exc).__name__}: {exc}"
    try:
        values |= await _drain(plan, root, extra, log)
    except (BenchError, OSError) as exc:
        errors["scale drain"] = f"{type(exc).__name__}: {exc}"
    return values, errors
