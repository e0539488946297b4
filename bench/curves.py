"""Cost as the work grows: `python -m bench --curves [--quick]`.

Owns four curves, each measured on jobserver at its default config (log level
included, as `bench.side_by_side` runs it) and printed as a table with the
point where it bends:

- connections: submit req/s and p99 and end-to-end jobs/s with each of
  `plan.curve_conns` concurrent connections (the default connection cap is 1,000);
- finished jobs: the same figures and the pickup latency on a database already
  holding each of `plan.curve_finished` completed jobs (rows inserted with
  sqlite3 by `bench.seed`, not through the API; the server is restarted on the
  grown file for each point);
- waiting jobs: the same figures with each of `plan.curve_waiting` jobs parked in
  `ctx.wait_for` (`jobserver.examples.await_signal`, parked through the API);
- idle event streams: the server's resident memory with each of
  `plan.curve_streams` event streams open on delayed jobs, and per stream.

A curve "bends" at its first point whose throughput falls below `BEND` of the
first point's, or whose p99 (or memory per stream) grows past 1 / `BEND` of it.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx

from bench import seed
from bench.jobserver_figures import NOOP, Bench, fig_pickup, start_server
from bench.plan import Plan
from bench.rawclient import hold_stream
from bench.servers import HOST, BenchError, ServerProcess
from bench.side_by_side import DEFAULTS
from bench.workflows import _park, _proc_status

BEND = 0.8
Log = Callable[[str], None]


def _load_avg() -> float:
    return os.getloadavg()[0]


async def _throughput(b: Bench, conns: int) -> dict[str, Any]:
    """End-to-end jobs/s at `conns` connections on a quiet server, then submit req/s and latency
    at as many (that run leaves a backlog, which the caller lets finish before the next figure)."""
    request = b.submit_request(NOOP)
    load = _load_avg()
    e2e = await b.load(
        mode="submit_follow",
        conns=conns,
        requests=[request] * b.plan.curve_jobs,
        follow="/jobs/{id}?wait=60",
        keep=["status"],
        timeout_s=b.plan.settle_timeout_s,
    )
    submit = await b.load(
        mode="duration",
        conns=conns,
        request=request,
        warmup_s=b.plan.warmup_s,
        duration_s=b.plan.curve_duration_s,
    )
    done = sum(1 for j in e2e["jobs"] if j and j["status"] == "completed")
    not_ok = submit["errors"] + sum(n for code, n in submit["statuses"].items() if code != "202")
    return {
        "submit_rps": submit["rps"],
        "submit_p99_ms": submit["latency_ms"].get("p99"),
        "e2e_jobs_per_s": done / e2e["elapsed_s"] if done == b.plan.curve_jobs else None,
        "not_202": not_ok,
        "load": load,
    }


async def _settle(b: Bench) -> None:
    """Let the backlog of a submit run finish, so the next point starts from a quiet server."""
    await b.settle(0.0)


async def _with_server(workdir: Path, plan: Plan, measure: Callable[[Bench], Any]) -> Any:
    workdir.mkdir(exist_ok=True)
    server, _, _ = await start_server(workdir, DEFAULTS)
    try:
        return await measure(Bench(plan, server, {}))
    finally:
        await server.stop(20)


async def curve_connections(plan: Plan, root: Path, log: Log) -> list[dict[str, Any]]:
    """One server; each connection count in turn."""

    async def measure(b: Bench) -> list[dict[str, Any]]:
        points = []
        for conns in plan.curve_conns:
            log(f"curves: {conns} connections")
            point = {"x": conns} | await _throughput(b, conns)
            await _settle(b)
            points.append(point)
        return points

    result: list[dict[str, Any]] = await _with_server(root / "curve-conns", plan, measure)
    return result


async def curve_finished(plan: Plan, root: Path, log: Log) -> list[dict[str, Any]]:
    """One file, grown between points with direct inserts; the server restarted on it each time."""
    workdir = root / "curve-finished"
    workdir.mkdir()
    db = workdir / "jobs.db"
    seed.create_schema(db)
    points = []
    have = 0
    for count in plan.curve_finished:
        if count > have:
            log(f"curves: seeding {count - have:,} finished jobs (to {count:,})")
            seed.seed_jobs(db, count - have, "completed")
            have = count
        log(f"curves: {count:,} finished jobs")

        async def measure(b: Bench) -> dict[str, Any]:
            out = await _throughput(b, plan.conns)
            await _settle(b)
            pickup = await fig_pickup(b, idle=False)
            return out | {"pickup_p99_ms": pickup["pickup.warm_p99_ms"]}

        points.append({"x": count} | await _with_server(workdir, plan, measure))
    return points


async def curve_waiting(plan: Plan, root: Path, log: Log) -> list[dict[str, Any]]:
    """One server; parked jobs added between points (they stay parked)."""

    async def measure(b: Bench) -> list[dict[str, Any]]:
        points = []
        async with httpx.AsyncClient(base_url=b.server.base_url, timeout=60) as client:
            for count in plan.curve_waiting:
                if count:
                    log(f"curves: parking jobs (to {count:,} waiting)")
                    await _park(b, client, count)
                log(f"curves: {count:,} waiting jobs")
                out = await _throughput(b, plan.conns)
                await _settle(b)
                pickup = await fig_pickup(b, idle=False)
                points.append({"x": count} | out | {"pickup_p99_ms": pickup["pickup.warm_p99_ms"]})
        return points

    result: list[dict[str, Any]] = await _with_server(root / "curve-waiting", plan, measure)
    return result


async def _open_streams(b: Bench, count: int) -> tuple[list[asyncio.Future[int]], list[str]]:
    delayed = {**NOOP, "delay": 3600}
    made = await b.load(mode="batch", requests=[b.submit_request(delayed)] * count, keep=["id"])
    ids: list[str] = [d["id"] for d in made["docs"] if d and d.get("id")]
    opened: asyncio.Queue[int] = asyncio.Queue()
    streams: list[asyncio.Future[int]] = [
        asyncio.ensure_future(hold_stream(HOST, b.port, f"/jobs/{i}/events", opened)) for i in ids
    ]
    codes = [await asyncio.wait_for(opened.get(), 60) for _ in ids]
    if any(c != 200 for c in codes):
        raise BenchError(f"event streams answered {sorted(set(codes))}")
    return streams, ids


async def curve_streams(plan: Plan, root: Path, log: Log) -> list[dict[str, Any]]:
    """One server; idle event streams added between points; RSS over the server at rest."""

    async def measure(b: Bench) -> list[dict[str, Any]]:
        server: ServerProcess = b.server
        assert server.proc is not None
        pid = server.proc.pid
        # warm the stream path (and the tables it reads) before the baseline is read
        warm, warm_ids = await _open_streams(b, 10)
        await asyncio.sleep(0.5)
        base_kib = _proc_status(pid)["VmRSS"]
        points = [{"x": 0, "rss_mb": base_kib / 1024, "kib_per_stream": None}]
        streams: list[asyncio.Future[int]] = []
        ids: list[str] = []
        try:
            for count in plan.curve_streams:
                log(f"curves: {count:,} idle event streams")
                more, more_ids = await _open_streams(b, count - len(streams))
                streams += more
                ids += more_ids
                await asyncio.sleep(0.5)  # the streams' first keep-alive round is written
                kib = _proc_status(pid)["VmRSS"]
                per_stream = (kib - base_kib) / count
                points.append(
                    {"x": count, "rss_mb": kib / 1024, "kib_per_stream": per_stream, "load": _load_avg()}
                )
        finally:
            cancels = [{"method": "POST", "path": f"/jobs/{i}/cancel"} for i in ids + warm_ids]
            await b.load(mode="batch", requests=cancels)
            _, still = await asyncio.wait(streams + warm, timeout=30)
            for s in still:
                s.cancel()
        return points

    result: list[dict[str, Any]] = await _with_server(root / "curve-streams", plan, measure)
    return result


CURVES: list[tuple[str, str, Callable[[Plan, Path, Log], Any]]] = [
    ("connections", "connections", curve_connections),
    ("finished", "finished jobs in the table", curve_finished),
    ("waiting", "jobs parked in ctx.wait_for", curve_waiting),
    ("streams", "idle event streams open", curve_streams),
]


async def run_curves(plan: Plan, root: Path, log: Log) -> tuple[dict[str, Any], dict[str, str]]:
    """Every curve; (points by curve, errors by curve)."""
    values: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for key, _, curve in CURVES:
        try:
            values[key] = await curve(plan, root, log)
        except (BenchError, OSError, TimeoutError, KeyError, TypeError, ValueError, httpx.HTTPError) as exc:
            errors[key] = f"{type(exc).__name__}: {exc}"
    return values, errors


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:,.0f}" if value >= 100 else f"{value:.2f}"


def bend(points: Sequence[dict[str, Any]], key: str, higher_better: bool) -> Any:
    """The first x past the first point where `key` worsened beyond BEND (None: no bend)."""
    first = next((p[key] for p in points if p.get(key) is not None), None)
    if not first:
        return None
    for point in points[1:]:
        value = point.get(key)
        if value is None:
            continue
        if (value < first * BEND) if higher_better else (value > first / BEND):
            return point["x"]
    return None


# (curve, [(key, column, higher is better)])
COLUMNS: dict[str, list[tuple[str, str, bool]]] = {
    "connections": [
        ("submit_rps", "submit req/s", True),
        ("submit_p99_ms", "submit p99 ms", False),
        ("e2e_jobs_per_s", "end to end jobs/s", True),
        ("not_202", "not 202", False),
    ],
    "finished": [
        ("submit_rps", "submit req/s", True),
        ("submit_p99_ms", "submit p99 ms", False),
        ("e2e_jobs_per_s", "end to end jobs/s", True),
        ("pickup_p99_ms", "pickup p99 ms", False),
    ],
    "streams": [("rss_mb", "RSS MiB", False), ("kib_per_stream", "KiB per stream", False)],
}
COLUMNS["waiting"] = COLUMNS["finished"]


def table(values: dict[str, Any], errors: dict[str, str]) -> str:
    """Each curve as a table, with where it bends."""
    lines = [
        f"a curve bends where a throughput falls below {BEND:.0%} of its first point's, "
        f"or a latency or size grows past {1 / BEND:.0%} of it"
    ]
    for key, label, _ in CURVES:
        points = values.get(key)
        lines.append(f"\n{label}")
        if not points:
            lines.append(f"  could not measure: {errors.get(key, 'no points')}")
            continue
        columns = COLUMNS[key]
        head = [label, *(c for _, c, _ in columns), "load avg"]
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "---|" * len(head))
        for p in points:
            cells = [_fmt(p["x"]), *(_fmt(p.get(k)) for k, _, _ in columns), _fmt(p.get("load"))]
            lines.append("| " + " | ".join(cells) + " |")
        for k, c, higher in columns:
            if k in ("not_202", "rss_mb"):
                continue
            at = bend(points, k, higher)
            lines.append(f"  {c}: " + ("no bend" if at is None else f"bends at {_fmt(at)} {label}"))
        if key in errors:
            lines.append(f"  could not measure all of it: {errors[key]}")
    return "\n".join(lines)
