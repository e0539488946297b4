"""Tasks used by the end-to-end tests (registered via tasks.modules)."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from jobserver import Fail, JobContext, Retry, task


def _mark(path: str, line: str) -> None:
    """Append a line to a file: a side effect the tests can count across processes."""
    with open(path, "a") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())


@task
def record(path: str, value: str) -> str:
    """Append `value` to `path` and return it."""
    _mark(path, value)
    return value


@task(max_attempts=3, backoff=(0.05, 0.1))
def fail_then_succeed(ctx: JobContext, path: str, failures: int) -> int:
    _mark(path, f"attempt {ctx.attempt}")
    if ctx.attempt <= failures:
        raise ValueError(f"boom {ctx.attempt}")
    return ctx.attempt


@task(max_attempts=5, retry_on=(KeyError,), backoff=(0.01, 0.02))
def only_keyerror_retried(ctx: JobContext, exc: str) -> None:
    raise KeyError("k") if exc == "key" else ValueError("v")


@task(max_attempts=5)
def fail_now(ctx: JobContext) -> None:
    raise Fail("nope, not retrying")


@task(max_attempts=3)
def retry_later(ctx: JobContext, delay: float) -> int:
    if ctx.attempt == 1:
        raise Retry(delay=delay)
    return ctx.attempt


@task
def not_json() -> object:
    return {1, 2, 3}


@task(max_attempts=3)
def block_until_file(ctx: JobContext, started: str, release: str) -> str:
    """Mark that it started, then wait (checking cancel) until `release` exists."""
    _mark(started, f"{ctx.job_id} {ctx.attempt}")
    while not Path(release).exists():
        ctx.check_cancelled()
        time.sleep(0.01)
    return "released"


@task(max_attempts=1, on_crash="fail")
def at_most_once(ctx: JobContext, started: str, release: str) -> str:
    _mark(started, f"{ctx.job_id} {ctx.attempt}")
    while not Path(release).exists():
        time.sleep(0.01)
    return "released"


@task(max_attempts=3)
def stepped(ctx: JobContext, path: str, steps: int, hold: str) -> list[int]:
    """Each step appends to `path` once; waits for `hold` to vanish before the last step."""
    out = []
    for i in range(steps):
        if i == steps - 1:
            while Path(hold).exists():
                time.sleep(0.01)
        out.append(ctx.step(f"s{i}", _side_effect, path, i))
    return out


def _side_effect(path: str, i: int) -> int:
    _mark(path, f"step {i}")
    return i * 10


@task
async def async_wait_file(ctx: JobContext, started: str, release: str) -> str:
    _mark(started, ctx.job_id)
    while not Path(release).exists():
        await asyncio.sleep(0.01)
    return "released"


@task
def spin_forever(ctx: JobContext, started: str) -> None:
    """Never checks ctx: only an interruption stops it."""
    _mark(started, ctx.job_id)
    n = 0
    while True:
        n += 1
