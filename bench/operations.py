"""Operations figures (`--ops`): GET /stats on a big database, and a bulk retry's cost to submits.

- "stats": `GET /stats` back to back on one connection, first on an empty database,
  then on a file seeded with `plan.stats_finished` completed jobs (the server's
  first start on it builds the counters from the jobs: that start is timed too).
- "bulk": a file seeded with `plan.bulk_jobs` failed jobs; their task is paused
  (so the retried jobs wait instead of running), then `POST /jobs/retry
  {"status": "failed"}` runs while a probe submits one job at a time on another
  connection. The probe's latency during the retry is compared with its latency
  just before, on the same server.
Keys are prefixed `ops.`. Imports only bench modules.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from bench import seed
from bench.jobserver_figures import Bench, Figure, _pcts, _statuses_ok, run_figures
from bench.plan import Plan
from bench.rawclient import RawClient
from bench.servers import HOST, BenchError

PROBE = {"task": "jobserver.examples.add", "args": {"a": 1, "b": 2}}


async def fig_stats(b: Bench) -> dict[str, Any]:
    """GET /stats back to back on one keep-alive connection: p50/p99."""
    request = {"method": "GET", "path": "/stats", "headers": b.headers}
    run = await b.load(
        mode="duration", conns=1, request=request, warmup_s=0.2, duration_s=b.plan.read_duration_s
    )
    if _statuses_ok(run, "200") or not run["completed"]:
        raise BenchError(f"GET /stats: {run['statuses']}, {run['errors']} errors")
    async with httpx.AsyncClient(base_url=b.server.base_url, headers=b.headers, timeout=30) as client:
        counts = (await client.get("/stats")).json()["counts"]
    return {
        "stats_p50_ms": run["latency_ms"].get("p50"),
        "stats_p99_ms": run["latency_ms"].get("p99"),
        "stats_completed": counts["completed"],
    }


async def _probe(client: RawClient, stop: asyncio.Event, samples: list[float]) -> None:
    """Submit one job at a time until `stop`; each round trip in ms."""
    while not stop.is_set():
        status, _, _ = await client.request("POST", "/jobs", PROBE)
        if status != 202:
            raise BenchError(f"probe submit answered {status}")
        samples.append(client.last_rtt_s * 1000)


async def fig_bulk_retry(b: Bench) -> dict[str, Any]:
    """POST /jobs/retry over every seeded failed job, with a submit probe running meanwhile."""
    async with httpx.AsyncClient(base_url=b.server.base_url, headers=b.headers, timeout=600) as client:
        r = await client.post(f"/tasks/{seed.NOOP_TASK}/pause")
        if r.status_code != 200:
            raise BenchError(f"pause: {r.status_code} {r.text}")
        async with RawClient(HOST, b.port, b.headers) as probe_conn:
            before: list[float] = []
            stop = asyncio.Event()
            probe = asyncio.create_task(_probe(probe_conn, stop, before))
            await asyncio.sleep(b.plan.read_duration_s)  # ok: the probe's measuring window
            stop.set()
            await probe
            during: list[float] = []
            stop = asyncio.Event()
            probe = asyncio.create_task(_probe(probe_conn, stop, during))
            t0 = time.perf_counter()
            r = await client.post("/jobs/retry", json={"status": "failed"})
            took_s = time.perf_counter() - t0
            stop.set()
            await probe
        if r.status_code != 200:
            raise BenchError(f"bulk retry: {r.status_code} {r.text}")
        count = r.json()["count"]
    return {
        "bulk_retry_s": took_s,
        "bulk_retry_count": count,
        "bulk_retry_jobs_per_s": count / took_s if took_s else None,
        "probe_samples_during": len(during),
        "probe_max_during_ms": max(during) if during else None,
        **_pcts("probe_before", before),
        **_pcts("probe_during", during),
    }


async def run_operations(
    plan: Plan, root: Path, extra: dict[str, Any], log: Callable[[str], None]
) -> tuple[dict[str, Any], dict[str, str]]:
    """Every operations figure; (values, errors)."""
    values: dict[str, Any] = {}
    errors: dict[str, str] = {}
    scenarios: list[tuple[str, int, str, Figure]] = [
        ("stats_empty", 0, "completed", fig_stats),
        ("stats_big", plan.stats_finished, "completed", fig_stats),
        ("bulk", plan.bulk_jobs, "failed", fig_bulk_retry),
    ]
    for name, count, status, figure in scenarios:
        workdir = root / f"ops-{name}"
        workdir.mkdir()
        if count:
            seed.create_schema(workdir / "jobs.db")
            log(f"ops {name}: seeding {count:,} {status} jobs")
            values[f"ops.{name}.seed_s"] = seed.seed_jobs(workdir / "jobs.db", count, status)

        def log_ops(message: str, n: str = name) -> None:
            log(f"ops {n}: {message}")

        try:
            v, e = await run_figures(plan, workdir, extra, [(name, figure)], log_ops)
        except (BenchError, OSError) as exc:
            errors[f"ops {name}"] = f"{type(exc).__name__}: {exc}"
            continue
        values |= {f"ops.{name}.{k}": x for k, x in v.items()}
        errors |= {f"ops {name}: {k}": x for k, x in e.items()}
    return values, errors
