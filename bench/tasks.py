"""Tasks the multi-node bench and the soak run (registered with `tasks.modules = ["bench.tasks"]`)."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from jobserver import Concurrency, JobContext, Rate, task


def _mark(path: str, line: str) -> None:
    with open(path, "a") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())


@task
def noop() -> None:
    """Nothing: the claim and the recording are the whole cost."""


@task(limits=[Concurrency("bench", 1_000_000)])
def noop_limited() -> None:
    """Nothing, holding a concurrency key that never fills: what checking a limit costs."""


@task
def stamp(path: str) -> None:
    """The wall clock at its start (pickup latency across processes)."""
    _mark(path, f"{time.time():.6f}")


@task
def block(release: str) -> None:
    """Keeps a worker thread busy until `release` exists."""
    while not Path(release).exists():
        time.sleep(0.01)


@task(limits=[Concurrency("soak:{model}", 3)], max_attempts=5)
async def held(ctx: JobContext, path: str, model: str, hold_s: float) -> None:
    """Holds its model's key for `hold_s`; records its span (start and end)."""
    began = time.time()
    await asyncio.sleep(hold_s)
    _mark(path, f"{ctx.job_id} {model} {began:.6f} {time.time():.6f}")


@task(limits=[Rate("soak-tokens", 40, per="1s", cost=lambda args: args["tokens"])], max_attempts=5)
async def spend(tokens: int) -> int:
    """Charged `tokens` of 40 per second when it starts."""
    return tokens


@task(max_attempts=3)
def write(path: str, value: str) -> str:
    """Appends `value` (at least once: a killed attempt may have written it already)."""
    _mark(path, value)
    return value
