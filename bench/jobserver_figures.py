"""jobserver under test: its config, its process, and each of its figures.

Owns starting `python -m jobserver --config <dir>/config.toml` in a temporary
directory (as a user runs it) and the figures measured against it. Each figure
is an async function of a `Bench` that returns a flat dict of values; new
figures slot into `FIGURES`. Talks to the server only over HTTP (load runs in
`bench.loadgen`'s own process). Imports nothing from jobserver.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import sys
import time
import tomllib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.loadgen import percentiles_ms
from bench.plan import Plan
from bench.rawclient import RawClient, gapped_series, hold_stream
from bench.servers import HOST, BenchError, ServerProcess, free_port, run_loadgen

NOOP = {"task": "jobserver.examples.noop", "args": {}}
NOW = {"task": "jobserver.examples.now", "args": {}}
FOLLOW = "/jobs/{id}?wait=60"
TIMES = ["status", "created_at", "started_at", "finished_at"]


def base_config(db_path: Path, port: int) -> dict[str, Any]:
    """The server config of a bench run, before the user's --config is merged in."""
    return {
        "server": {"host": HOST, "port": port, "log_level": "warning"},
        "database": {"url": f"sqlite:///{db_path}"},
        # async_concurrency covers the 1,000 concurrent async jobs of the async I/O figure.
        "workers": {"shutdown_grace_seconds": 5, "async_concurrency": 1000},
        "tasks": {"modules": ["jobserver.examples"]},
    }


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """`extra` over `base`, table by table."""
    out = dict(base)
    for key, value in extra.items():
        out[key] = (
            merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
        )
    return out


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return (
            '"'
            + "".join(c if c.isprintable() and c not in '"\\' else f"\\u{ord(c):04x}" for c in value)
            + '"'
        )
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def to_toml(config: dict[str, Any]) -> str:
    """Tables of scalars and lists as TOML text."""
    lines: list[str] = []
    for table, keys in config.items():
        lines.append(f"[{table}]")
        lines.extend(f"{key} = {_toml_value(value)}" for key, value in keys.items())
        lines.append("")
    return "\n".join(lines)


def parse_time(value: str | None) -> float | None:
    """An RFC 3339 timestamp as epoch seconds."""
    return dt.datetime.fromisoformat(value).timestamp() if value else None


@dataclass
class Bench:
    """One running jobserver and what a figure needs to drive it."""

    plan: Plan
    server: ServerProcess
    headers: dict[str, str]
    results: dict[str, Any] = field(default_factory=dict)

    @property
    def port(self) -> int:
        return self.server.port

    def load(self, **spec: Any) -> Awaitable[dict[str, Any]]:
        """Run a load spec against this server in the load generator's process."""
        return run_loadgen({"port": self.port, "conns": self.plan.conns, **spec})

    def submit_request(self, body: dict[str, Any]) -> dict[str, Any]:
        return {"method": "POST", "path": "/jobs", "body": body, "headers": self.headers}

    async def settle(self, since: float) -> float:
        """Wait until no job submitted after `since` is pending or running; return seconds waited."""
        t0 = time.monotonic()
        async with httpx.AsyncClient(
            base_url=self.server.base_url, headers=self.headers, timeout=30
        ) as client:
            while time.monotonic() - t0 < self.plan.settle_timeout_s:
                running = (await client.get("/jobs", params={"status": "running", "limit": 1})).json()["jobs"]
                pending = (await client.get("/jobs", params={"status": "pending", "limit": 1})).json()["jobs"]
                newest = parse_time(pending[0]["created_at"]) if pending else None
                if not running and (newest is None or newest < since):
                    return time.monotonic() - t0
                await asyncio.sleep(0.2)
        raise BenchError(f"jobs still pending or running after {self.plan.settle_timeout_s:g} s")


async def start_server(
    workdir: Path, extra_config: dict[str, Any], timeout_s: float = 120.0
) -> tuple[ServerProcess, dict[str, Any], float]:
    """Write config.toml in `workdir`, start jobserver there, wait for /healthz; (server, config, seconds)."""
    port = free_port()
    config = merge(base_config(workdir / "jobs.db", port), extra_config)
    config["server"]["port"] = port = int(config["server"].get("port", port))
    (workdir / "config.toml").write_text(to_toml(config))
    argv = [sys.executable, "-m", "jobserver", "--config", str(workdir / "config.toml")]
    server = ServerProcess("jobserver", argv, workdir, workdir / "server.log", port)
    await server.start()
    try:
        startup_s = await server.wait_ready("/healthz", timeout_s)
    except BaseException:
        await server.stop(10)
        raise
    return server, config, startup_s


def auth_headers(config: dict[str, Any]) -> dict[str, str]:
    """The Authorization header for the first configured API key, if any."""
    keys = config.get("auth", {}).get("api_keys") or []
    return {"Authorization": f"Bearer {keys[0]}"} if keys else {}


def _statuses_ok(run: dict[str, Any], ok: str) -> int:
    """How many answers were not `ok` (plus connection errors)."""
    errors: int = run["errors"]
    statuses: dict[str, int] = run["statuses"]
    return errors + sum(n for code, n in statuses.items() if code != ok)


async def fig_submit(b: Bench, prefix: str = "submit", settle: bool = True) -> dict[str, Any]:
    """POST /jobs (no-op) at `plan.conns` connections for `plan.duration_s`; then wait for those jobs if `settle`."""
    since, cpu0, t0 = time.time(), b.server.cpu_s(), time.perf_counter()
    run = await b.load(
        mode="duration",
        request=b.submit_request(NOOP),
        warmup_s=b.plan.warmup_s,
        duration_s=b.plan.duration_s,
    )
    cpu1, t1 = b.server.cpu_s(), time.perf_counter()
    if settle:
        await b.settle(since)
    return {
        f"{prefix}.rps": run["rps"],
        f"{prefix}.p50_ms": run["latency_ms"].get("p50"),
        f"{prefix}.p99_ms": run["latency_ms"].get("p99"),
        f"{prefix}.not_202": _statuses_ok(run, "202"),
        f"{prefix}.client_cpu": run["client_cpu_share"],
        f"{prefix}.server_cpu": (cpu1 - cpu0) / (t1 - t0) if cpu0 is not None and cpu1 is not None else None,
    }


async def fig_e2e(b: Bench, prefix: str = "e2e") -> dict[str, Any]:
    """`plan.e2e_jobs` no-op jobs submitted, then each observed done by GET ?wait."""
    run = await b.load(
        mode="submit_follow",
        requests=[b.submit_request(NOOP)] * b.plan.e2e_jobs,
        follow=FOLLOW,
        keep=TIMES,
        timeout_s=b.plan.settle_timeout_s,
    )
    jobs = [j for j in run["jobs"] if j]
    done = [j for j in jobs if j["status"] == "completed"]
    created = [parse_time(j["created_at"]) for j in done]
    finished = [parse_time(j["finished_at"]) for j in done]
    span = (max(finished) - min(created)) if done else 0.0  # type: ignore[type-var, operator]
    return {
        f"{prefix}.jobs_per_s": len(done) / run["elapsed_s"] if len(done) == b.plan.e2e_jobs else None,
        f"{prefix}.server_jobs_per_s": len(done) / span if span else None,
        f"{prefix}.not_completed": b.plan.e2e_jobs - len(done),
        f"{prefix}.elapsed_s": run["elapsed_s"],
    }


async def _pickup_once(client: RawClient) -> tuple[float, float]:
    """Submit one `now` job and wait for it: (task start - send, started_at - created_at) in ms."""
    status, job, sent_at = await client.request("POST", "/jobs", NOW)
    if status != 202:
        raise BenchError(f"POST /jobs answered {status}: {job}")
    status, job, _ = await client.request("GET", f"/jobs/{job['id']}?wait=5")
    if status != 200 or job.get("status") != "completed" or not isinstance(job.get("result"), float):
        raise BenchError(f"job {job.get('id')} ended {job.get('status')} with {job.get('result')!r}")
    server_ms = (parse_time(job["started_at"]) - parse_time(job["created_at"])) * 1e3  # type: ignore[operator]
    return (job["result"] - sent_at) * 1e3, server_ms


async def _pickup_series(client: RawClient, count: int) -> tuple[list[float], list[float]]:
    own, server = [], []
    for _ in range(count):
        a, s = await _pickup_once(client)
        own.append(a)
        server.append(s)
    return own, server


def _pcts(prefix: str, samples_ms: list[float]) -> dict[str, Any]:
    p = percentiles_ms([int(x * 1e6) for x in samples_ms], (50, 99))
    return {f"{prefix}_p50_ms": p.get("p50"), f"{prefix}_p99_ms": p.get("p99")}


async def fig_pickup(b: Bench, prefix: str = "pickup", idle: bool = True) -> dict[str, Any]:
    """`now` jobs one at a time: right after one another, then after the server sat idle."""
    out: dict[str, Any] = {}
    async with RawClient(HOST, b.port, b.headers) as client:
        await _pickup_series(client, 5)  # warm the connection and the code paths
        own, server = await _pickup_series(client, b.plan.pickup_samples)
        out |= _pcts(f"{prefix}.warm", own) | _pcts(f"{prefix}.warm_server", server)
    if not idle:
        return out
    # No connection open for idle_s (the server is fully idle), then one sample per idle_gap_s:
    # the same pattern as the bare route's after-idle round trips (bench.baselines.idle_round_trips).
    pairs = await gapped_series(
        HOST, b.port, b.plan.idle_s, b.plan.idle_samples, b.plan.idle_gap_s, _pickup_once, b.headers
    )
    own, server = [a for a, _ in pairs], [s for _, s in pairs]
    out |= _pcts(f"{prefix}.idle", own) | _pcts(f"{prefix}.idle_server", server)
    out[f"{prefix}.idle_first_ms"] = own[0]
    return out


# The read paths whose queries must stay index lookups as the table grows (bench.seed has their SQL).
READS = [
    ("status", "/jobs?status=completed&limit=50"),
    ("task", "/jobs?task=jobserver.examples.noop&limit=50"),
    ("pending", "/jobs?status=pending&limit=50"),
    ("by_id", "/jobs/{id}"),
]


async def fig_reads(b: Bench) -> dict[str, Any]:
    """Each read path on one keep-alive connection, back to back, for `plan.read_duration_s`
    (the load generator, as for the bare route's round trip): p50/p99."""
    async with httpx.AsyncClient(base_url=b.server.base_url, headers=b.headers, timeout=30) as client:
        jobs = (await client.get("/jobs", params={"status": "completed", "limit": 1})).json()["jobs"]
    if not jobs:
        raise BenchError("no completed job to read back")
    out: dict[str, Any] = {}
    for name, path in READS:
        request = {"method": "GET", "path": path.format(id=jobs[0]["id"]), "headers": b.headers}
        run = await b.load(
            mode="duration", conns=1, request=request, warmup_s=0.2, duration_s=b.plan.read_duration_s
        )
        if _statuses_ok(run, "200") or not run["completed"]:
            raise BenchError(f"GET {request['path']}: {run['statuses']}, {run['errors']} errors")
        out |= {
            f"reads.{name}_p50_ms": run["latency_ms"].get("p50"),
            f"reads.{name}_p99_ms": run["latency_ms"].get("p99"),
        }
    return out


async def fig_async_io(b: Bench) -> dict[str, Any]:
    """`plan.async_jobs` async jobs that each await `plan.async_sleep_s`: wall time until all are done."""
    body = {"task": "jobserver.examples.async_sleep", "args": {"seconds": b.plan.async_sleep_s}}
    run = await b.load(
        mode="submit_follow",
        requests=[b.submit_request(body)] * b.plan.async_jobs,
        follow=FOLLOW,
        keep=["status"],
        timeout_s=b.plan.settle_timeout_s,
    )
    done = sum(1 for j in run["jobs"] if j and j["status"] == "completed")
    return {
        "async.wall_s": run["elapsed_s"] if done == b.plan.async_jobs else None,
        "async.not_completed": b.plan.async_jobs - done,
    }


async def fig_sse(b: Bench) -> dict[str, Any]:
    """Submit throughput while `plan.sse_streams` event streams are open (each on its own delayed job)."""
    delayed = {**NOOP, "delay": 3600}
    made = await b.load(mode="batch", requests=[b.submit_request(delayed)] * b.plan.sse_streams, keep=["id"])
    ids = [d["id"] for d in made["docs"] if d and d.get("id")]
    opened: asyncio.Queue[int] = asyncio.Queue()
    streams = [
        asyncio.ensure_future(hold_stream(HOST, b.port, f"/jobs/{i}/events", opened, b.headers)) for i in ids
    ]
    try:
        codes = [await asyncio.wait_for(opened.get(), 30) for _ in ids]
        out = await fig_submit(b, "sse.submit", settle=False)  # the last figure: the server stops next
        out["sse.streams_open"] = sum(1 for c in codes if c == 200) - sum(1 for s in streams if s.done())
    finally:
        await b.load(
            mode="batch",
            requests=[{"method": "POST", "path": f"/jobs/{i}/cancel", "headers": b.headers} for i in ids],
        )
        _, still = await asyncio.wait(streams, timeout=10)
        for s in still:
            s.cancel()
    out["sse.streams_left_open_after_cancel"] = len(still)
    return out


Figure = Callable[[Bench], Awaitable[dict[str, Any]]]


def _workflow(name: str) -> Figure:
    """A figure of bench.workflows (imported late: that module builds on this one)."""

    async def figure(b: Bench) -> dict[str, Any]:
        from bench import workflows

        result: dict[str, Any] = await getattr(workflows, name)(b)
        return result

    figure.__name__ = name
    return figure


# Quiet figures first; the submit runs leave a backlog, so only the one before another figure waits for it.
FIGURES: list[tuple[str, Figure]] = [
    ("pickup latency", fig_pickup),
    ("end-to-end no-op jobs", fig_e2e),
    ("async I/O concurrency", fig_async_io),
    ("reads (list filters, get by id)", fig_reads),
    ("parked jobs and signal resume latency", _workflow("fig_parked_and_signals")),
    ("spawn_many and gather", _workflow("fig_fan_out")),
    ("submit throughput and latency", fig_submit),
    ("submit with event streams open", fig_sse),
]


async def run_figures(
    plan: Plan,
    workdir: Path,
    extra_config: dict[str, Any],
    figures: list[tuple[str, Figure]],
    log: Callable[[str], None],
) -> tuple[dict[str, Any], dict[str, str]]:
    """Start jobserver in `workdir`, measure `figures` in order, stop it; (values, errors by figure)."""
    values: dict[str, Any] = {}
    errors: dict[str, str] = {}
    server, config, values["startup_s"] = await start_server(workdir, extra_config)
    bench = Bench(plan, server, auth_headers(config))
    try:
        for name, figure in figures:
            log(f"jobserver: {name}")
            if server.returncode() is not None:
                errors[name] = f"server exited with {server.returncode()}"
                continue
            try:
                values |= await figure(bench)
            except (
                TimeoutError,
                BenchError,
                OSError,
                httpx.HTTPError,
                KeyError,
                TypeError,
                ValueError,
            ) as exc:
                errors[name] = f"{type(exc).__name__}: {exc}"
        values["peak_rss_mb"] = server.peak_rss_mb()
    finally:
        code = await server.stop()
    values["exit_code"] = code
    if code not in (0, None):
        errors["shutdown"] = f"SIGTERM exit code {code}:\n{server.log_tail()}"
    return values, errors


def load_extra_config(path: Path | None) -> dict[str, Any]:
    """The user's --config file (TOML), or nothing."""
    return tomllib.loads(path.read_text()) if path else {}
