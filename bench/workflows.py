"""The agent-workflow figures: parked jobs, signal resume latency, spawn_many and gather.

Measured against the same server as the other figures, over HTTP only:

- `parked.*`: `plan.parked_jobs` jobs (`jobserver.examples.await_signal`, submitted
  with `POST /jobs/batch` in five rounds) parked at once waiting for a signal: the
  server's threads before and after, and its resident memory per 1,000 parked jobs
  in the first round and in the last (the first fills SQLite's page caches).
- `signal.*`: with all of them parked, one at a time: the client's `time.time()` just
  before `POST /jobs/{id}/signals/go` is sent, to the task's `time.time()` once its
  `ctx.wait_for` returned in the resumed run (same machine clock). Then every other
  parked job is signalled at once, and the figure waits until all are completed.
- `spawn.*`: one `jobserver.examples.fan_out` job spawning `plan.fan_out` no-op
  children with `ctx.spawn_many` (one transaction, timed inside the task), and its
  `ctx.gather` of them: the last child's `finished_at` to the parent's resumed run.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx

from bench.jobserver_figures import Bench, parse_time
from bench.loadgen import percentiles_ms
from bench.servers import BenchError

AWAIT = "jobserver.examples.await_signal"
BATCH = 1000
ROUNDS = 5  # the parked jobs are submitted in this many rounds, RSS read after each


def _proc_status(pid: int) -> dict[str, int]:
    """Threads and VmRSS (KiB) of a process, from /proc."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("Threads", "VmRSS"):
            out[key] = int(value.split()[0])
    return out


async def _count(client: httpx.AsyncClient, status: str) -> int:
    text = (await client.get("/metrics")).text
    for line in text.splitlines():
        if line.startswith(f"jobserver_jobs_{status} "):
            return int(float(line.split()[1]))
    raise BenchError(f"/metrics has no jobserver_jobs_{status} gauge")


async def _until(check: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout_s:g} s waiting for {what}")
        await asyncio.sleep(0.05)


async def _park(b: Bench, client: httpx.AsyncClient, total: int) -> list[str]:
    """Submit jobs that park until the gauge says `total` jobs wait; the new jobs' ids."""
    ids: list[str] = []
    n = total - await _count(client, "waiting")
    for start in range(0, n, BATCH):
        body = {"jobs": [{"task": AWAIT, "args": {}}] * min(BATCH, n - start)}
        r = await client.post("/jobs/batch", json=body)
        if r.status_code != 202:
            raise BenchError(f"POST /jobs/batch answered {r.status_code}: {r.text[:300]}")
        ids += [j["id"] for j in r.json()["jobs"]]

    async def all_parked() -> bool:
        return await _count(client, "waiting") >= total

    await _until(all_parked, b.plan.settle_timeout_s, f"{total:,} jobs to park")
    return ids


async def fig_parked_and_signals(b: Bench) -> dict[str, Any]:
    """Park `plan.parked_jobs` jobs; threads and memory; signal latency; signal the rest."""
    assert b.server.proc is not None
    pid = b.server.proc.pid
    n = b.plan.parked_jobs
    out: dict[str, Any] = {"parked.count": n}
    async with httpx.AsyncClient(base_url=b.server.base_url, headers=b.headers, timeout=60) as client:
        warm = await _park(b, client, 50)  # warm the code paths (not counted)
        before = _proc_status(pid)
        ids: list[str] = []
        rss = [before["VmRSS"]]
        for r in range(ROUNDS):  # in rounds: flat memory shows as rounds that add (almost) nothing
            ids += await _park(b, client, len(warm) + n * (r + 1) // ROUNDS)
            rss.append(_proc_status(pid)["VmRSS"])
        ids += warm
        after = _proc_status(pid)
        per_round = n / ROUNDS / 1000
        out |= {
            "parked.threads_before": before["Threads"],
            "parked.threads_after": after["Threads"],
            "parked.rss_before_mb": before["VmRSS"] / 1024,
            "parked.rss_after_mb": after["VmRSS"] / 1024,
            "parked.rss_first_round_per_1000_mb": (rss[1] - rss[0]) / 1024 / per_round,
            "parked.rss_last_round_per_1000_mb": (rss[-1] - rss[-2]) / 1024 / per_round,
            "parked.running": await _count(client, "running"),
        }
        samples = []
        for job_id in ids[: b.plan.signal_samples]:
            sent = time.time()
            answer = await client.post(f"/jobs/{job_id}/signals/go", json={"n": 1})
            if answer.status_code != 202:
                raise BenchError(f"signal answered {answer.status_code}: {answer.text[:300]}")
            job = (await client.get(f"/jobs/{job_id}", params={"wait": 10})).json()
            if job["status"] != "completed":
                raise BenchError(f"signalled job {job_id} is {job['status']}")
            samples.append((job["result"]["resumed_at"] - sent) * 1e3)
        p = percentiles_ms([int(x * 1e6) for x in samples], (50, 99))
        out |= {"signal.resume_p50_ms": p.get("p50"), "signal.resume_p99_ms": p.get("p99")}
        rest = ids[b.plan.signal_samples :]
        t0 = time.perf_counter()
        await b.load(
            mode="batch",
            requests=[
                {"method": "POST", "path": f"/jobs/{i}/signals/go", "body": {"n": 2}, "headers": b.headers}
                for i in rest
            ],
        )

        async def none_left() -> bool:
            return await _count(client, "waiting") == 0 and await _count(client, "pending") == 0

        await _until(none_left, b.plan.settle_timeout_s, "every signalled job to finish")
        out["signal.all_resumed_per_s"] = len(rest) / (time.perf_counter() - t0)
        out["parked.rss_after_resume_mb"] = _proc_status(pid)["VmRSS"] / 1024
    return out


async def fig_fan_out(b: Bench) -> dict[str, Any]:
    """spawn_many of `plan.fan_out` children, and the gather from the last child's end."""
    n = b.plan.fan_out
    async with httpx.AsyncClient(base_url=b.server.base_url, headers=b.headers, timeout=90) as client:
        r = await client.post("/jobs", json={"task": "jobserver.examples.fan_out", "args": {"n": n}})
        if r.status_code != 202:
            raise BenchError(f"POST /jobs answered {r.status_code}: {r.text[:300]}")
        job_id = r.json()["id"]
        job = (await client.get(f"/jobs/{job_id}", params={"wait": 60})).json()
        if job["status"] != "completed" or job["result"]["children"] != n:
            raise BenchError(f"fan_out ended {job['status']}: {job.get('error') or job.get('result')}")
        last_end, cursor = 0.0, None
        while True:
            params: dict[str, Any] = {
                "parent": job_id,
                "limit": 500,
                **({"cursor": cursor} if cursor else {}),
            }
            page = (await client.get("/jobs", params=params)).json()
            last_end = max([last_end, *(parse_time(c["finished_at"]) or 0.0 for c in page["jobs"])])
            cursor = page["next_cursor"]
            if not cursor:
                break
    spawn_s = float(job["result"]["spawn_s"])
    return {
        "spawn.children": n,
        "spawn.many_ms": spawn_s * 1e3,
        "spawn.children_per_s": n / spawn_s,
        "gather.resume_ms": (job["result"]["resumed_at"] - last_end) * 1e3,
    }


async def main(quick: bool) -> None:
    """Start the server as the bench does and print the workflow figures (with the pickup
    figure beside them for comparison)."""
    import tempfile

    from bench.jobserver_figures import auth_headers, fig_pickup, start_server
    from bench.plan import make_plan

    plan = make_plan(quick, 0.0)
    with tempfile.TemporaryDirectory(prefix="jobserver-workflows-") as tmp:
        server, config, _ = await start_server(Path(tmp), {})
        bench = Bench(plan, server, auth_headers(config))
        values: dict[str, Any] = {}
        try:
            values |= await fig_pickup(bench, idle=False)
            values |= await fig_parked_and_signals(bench)
            values |= await fig_fan_out(bench)
        finally:
            await server.stop()
    for key, value in values.items():
        print(f"{key:32} {value:,.3f}" if isinstance(value, float) else f"{key:32} {value}")


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="The agent-workflow figures alone.")
    parser.add_argument("--quick", action="store_true", help="2,000 parked jobs instead of 10,000")
    asyncio.run(main(parser.parse_args().quick))
