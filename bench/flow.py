"""Memory while many jobs flow through: `python -m bench.flow --jobs 1000000`.

Starts the real server, submits no-op jobs in rounds on 32 connections (each
round waits until its jobs are done, so the queue stays short and the jobs
really flow), and prints the server's resident memory (VmRSS) and the database
size after each round. Bounded memory shows as a flat RSS column.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import httpx

from bench.jobserver_figures import start_server
from bench.servers import run_loadgen

NOOP = {"task": "jobserver.examples.noop", "args": {}}


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def wait_drained(base_url: str, timeout_s: float = 300) -> None:
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            busy = [
                (await client.get("/jobs", params={"status": s, "limit": 1})).json()["jobs"]
                for s in ("pending", "running")
            ]
            if not any(busy):
                return
            await asyncio.sleep(0.2)
        raise RuntimeError("jobs did not drain")


async def main(jobs: int, round_size: int) -> None:
    with tempfile.TemporaryDirectory(prefix="jobserver-flow-") as tmp:
        server, _, _ = await start_server(Path(tmp), {"server": {"log_level": "warning"}})
        pid = server.proc.pid  # type: ignore[union-attr]
        print(f"{'jobs done':>10} | {'RSS MiB':>8} | {'db MiB':>7} | {'jobs/s':>7}")
        done, t0 = 0, time.monotonic()
        try:
            while done < jobs:
                n = min(round_size, jobs - done)
                requests = [{"method": "POST", "path": "/jobs", "body": NOOP, "headers": {}}] * n
                await run_loadgen({"port": server.port, "conns": 32, "mode": "batch", "requests": requests})
                await wait_drained(server.base_url)
                done += n
                db_mib = sum(p.stat().st_size for p in Path(tmp).glob("jobs.db*")) / 2**20
                rate = done / (time.monotonic() - t0)
                print(f"{done:>10,} | {rss_mib(pid):>8.1f} | {db_mib:>7.1f} | {rate:>7,.0f}", flush=True)
        finally:
            await server.stop(30)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--round", type=int, default=20_000, help="jobs submitted per round")
    args = parser.parse_args()
    asyncio.run(main(args.jobs, args.round))
