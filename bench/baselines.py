"""The machine's own limits, measured in the same run as jobserver's figures.

Owns three reference points: a canned-response server (the load generator's
own ceiling: it must sit far above any jobserver figure), a bare Starlette app
under the same uvicorn settings as jobserver (GET hello, and a POST /jobs that
parses the JSON body and answers 202 with a job-sized JSON, no database; its
one-connection round trip back to back, and again with the idle pattern of
jobserver's after-idle pickups, since a machine that sat quiet answers slower),
and raw SQLite inserts of job rows (1 and 100 rows per transaction, WAL,
synchronous=NORMAL; 1 row per transaction with synchronous=FULL).
Servers run as `python -m bench.baselines {canned|starlette} PORT`.
Imports `bench.seed` for the row layout; nothing from jobserver otherwise.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import sys
import uuid
from pathlib import Path
from typing import Any

from bench import seed
from bench.loadgen import percentiles_ms
from bench.plan import Plan
from bench.rawclient import RawClient, gapped_series
from bench.servers import HOST, BenchError, ServerProcess, free_port, run_loadgen

# The uvicorn settings jobserver serves with (jobserver/runtime.py, Runtime.serve).
UVICORN_SETTINGS: dict[str, Any] = {
    "loop": "uvloop",
    "http": "httptools",
    "lifespan": "off",
    "access_log": False,
    "log_config": None,
    "timeout_graceful_shutdown": 2,
    "backlog": 2048,
}
HELLO = {"method": "GET", "path": "/hello"}
SUBMIT_BODY = {"task": "jobserver.examples.noop", "args": {}}


def starlette_app() -> Any:
    """The bare app: GET /healthz, GET /hello, POST /jobs (JSON in, 202 JSON out)."""
    import orjson
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse, Response
    from starlette.routing import Route

    async def hello(request: Request) -> Response:
        return PlainTextResponse("hello")

    async def submit(request: Request) -> Response:
        body = orjson.loads(await request.body())
        now = dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z")
        job = {
            "id": str(uuid.uuid4()),
            "task": body["task"],
            "args": body["args"],
            "status": "pending",
            "priority": 0,
            "attempts": 0,
            "max_attempts": 1,
            "progress": None,
            "result": None,
            "error": None,
            "idempotency_key": None,
            "webhook_url": None,
            "created_at": now,
            "run_at": now,
            "started_at": None,
            "finished_at": None,
        }
        return Response(
            orjson.dumps(job),
            status_code=202,
            media_type="application/json",
            headers={"Location": f"/jobs/{job['id']}"},
        )

    return Starlette(
        routes=[Route("/healthz", hello), Route("/hello", hello), Route("/jobs", submit, methods=["POST"])]
    )


class _Canned(asyncio.Protocol):
    """Answers every request (no body expected) with the same 200 bytes."""

    RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.pending = b""

    def data_received(self, data: bytes) -> None:
        data = self.pending + data
        n = data.count(b"\r\n\r\n")
        self.pending = data[data.rfind(b"\r\n\r\n") + 4 :] if n else data
        if n:
            self.transport.write(self.RESPONSE * n)


async def _serve_canned(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(_Canned, HOST, port)
    async with server:
        await server.serve_forever()


def _server(kind: str, workdir: Path) -> ServerProcess:
    port = free_port()
    argv = [sys.executable, "-m", "bench.baselines", kind, str(port)]
    return ServerProcess(f"bare {kind} server", argv, workdir, workdir / f"{kind}.log", port)


async def loadgen_ceiling(plan: Plan, workdir: Path) -> dict[str, Any]:
    """The load generator against the canned responder: its own ceiling."""
    server = _server("canned", workdir)
    await server.start()
    try:
        await server.wait_ready(timeout_s=30)
        run = await run_loadgen(
            {
                "port": server.port,
                "mode": "duration",
                "conns": plan.conns,
                "request": HELLO,
                "warmup_s": plan.warmup_s,
                "duration_s": plan.duration_s,
            }
        )
    finally:
        await server.stop(10)
    return {"loadgen.ceiling_rps": run["rps"], "loadgen.ceiling_client_cpu": run["client_cpu_share"]}


async def _post_rtt_ms(client: RawClient) -> float:
    status, _, _ = await client.request("POST", "/jobs", SUBMIT_BODY)
    if status != 202:
        raise BenchError(f"bare POST /jobs answered {status}")
    return client.last_rtt_s * 1e3


async def idle_round_trips(plan: Plan, port: int) -> dict[str, Any]:
    """One-connection POST round trips with the after-idle pickups' pattern (same idle, count and gaps)."""
    samples = await gapped_series(HOST, port, plan.idle_s, plan.idle_samples, plan.idle_gap_s, _post_rtt_ms)
    p = percentiles_ms([int(x * 1e6) for x in samples], (50, 99))
    return {
        "bare.idle_rtt_p50_ms": p.get("p50"),
        "bare.idle_rtt_p99_ms": p.get("p99"),
        "bare.idle_rtt_first_ms": samples[0],
    }


async def bare_route(plan: Plan, workdir: Path) -> dict[str, Any]:
    """The bare Starlette app: hello and POST /jobs at `plan.conns`, one-connection round trips
    (back to back, then with the after-idle pattern), RSS."""
    server = _server("starlette", workdir)
    await server.start()
    try:
        startup_s = await server.wait_ready(timeout_s=30)
        common = {"port": server.port, "mode": "duration", "warmup_s": plan.warmup_s}
        hello = await run_loadgen(
            {**common, "conns": plan.conns, "request": HELLO, "duration_s": plan.duration_s}
        )
        post = {"method": "POST", "path": "/jobs", "body": SUBMIT_BODY}
        sub = await run_loadgen(
            {**common, "conns": plan.conns, "request": post, "duration_s": plan.duration_s}
        )
        rtt = await run_loadgen({**common, "conns": 1, "request": post, "duration_s": plan.rtt_duration_s})
        idle = await idle_round_trips(plan, server.port)
        rss = server.peak_rss_mb()
    finally:
        await server.stop(10)
    return {
        "bare.startup_s": startup_s,
        "bare.hello_rps": hello["rps"],
        "bare.submit_rps": sub["rps"],
        "bare.submit_p50_ms": sub["latency_ms"].get("p50"),
        "bare.submit_p99_ms": sub["latency_ms"].get("p99"),
        "bare.rtt_p50_ms": rtt["latency_ms"].get("p50"),
        "bare.rtt_p99_ms": rtt["latency_ms"].get("p99"),
        "bare.peak_rss_mb": rss,
        **idle,
    }


def sqlite_inserts(plan: Plan, workdir: Path) -> dict[str, Any]:
    """Raw inserts of job rows into jobserver's schema: 1 and 100 rows per transaction
    (synchronous=NORMAL), and 1 row per transaction with synchronous=FULL (an fsync per commit)."""
    out: dict[str, Any] = {}
    for per_txn, sync, key in (
        (1, "NORMAL", "sqlite.rows1_per_s"),
        (100, "NORMAL", "sqlite.rows100_per_s"),
        (1, "FULL", "sqlite.rows1_full_per_s"),
    ):
        path = workdir / f"raw-{per_txn}-{sync.lower()}.db"
        seed.create_schema(path)
        rate = seed.insert_rate(path, per_txn, plan.sqlite_duration_s, sync)
        out[key] = rate["rows_per_s"]
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
    return out


def main(argv: list[str]) -> None:
    """`python -m bench.baselines {canned|starlette} PORT`: serve until signalled."""
    import uvloop

    kind, port = argv[0], int(argv[1])
    if kind == "canned":
        uvloop.run(_serve_canned(port))
    elif kind == "starlette":
        import uvicorn

        uvicorn.run(starlette_app(), host=HOST, port=port, **UVICORN_SETTINGS)
    else:
        raise SystemExit(f"unknown server kind {kind!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
