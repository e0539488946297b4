"""Tasks used by the end-to-end tests (registered via tasks.modules)."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path
from typing import Any

from jobserver import ChildFailed, Concurrency, Fail, JobContext, Rate, Retry, task


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


@task(max_attempts=3, backoff=(0.05, 0.1))
def wraps_every_error(started: str) -> None:
    """Marks each start, then waits; whatever stops it comes out as an error of its own, as
    from task code that wraps all it meets (`except BaseException`): a cancel among them."""
    _mark(started, "started")
    try:
        while True:
            time.sleep(0.01)
    except BaseException as exc:
        raise RuntimeError(f"stopped by {type(exc).__name__}") from exc


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
def block_until_file(ctx: JobContext, started: str, release: str, pad: int = 0) -> str:
    """Mark that it started, then wait (checking cancel) until `release` exists; the result is
    "released", followed by `pad` spaces (a result that needs room to be written)."""
    _mark(started, f"{ctx.job_id} {ctx.attempt}")
    while not Path(release).exists():
        ctx.check_cancelled()
        time.sleep(0.01)
    return "released" + " " * pad


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


def _spin_marked(started: str, job_id: str) -> None:
    """A step of plain Python that never returns: only an interruption of its thread ends it."""
    try:
        _mark(started, job_id)
        while True:
            pass
    finally:
        _mark(started, "step left")


@task(max_attempts=1)
async def async_spinning_step(ctx: JobContext, started: str) -> None:
    """An async task whose sync step spins: cancel and time limit must still end it."""
    await ctx.step("spin", _spin_marked, started, ctx.job_id)


@task
def chatty(ctx: JobContext, updates: int, logs: int, release: str) -> int:
    """Reports progress `updates` times and logs `logs` lines, then waits for `release`."""
    for i in range(updates):
        ctx.progress(i + 1, updates, f"update {i + 1}")
    for i in range(logs):
        ctx.log(f"line {i}")
    while not Path(release).exists():
        ctx.check_cancelled()
        time.sleep(0.01)
    return updates


@task
async def async_forever(ctx: JobContext, started: str) -> None:
    _mark(started, ctx.job_id)
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        _mark(started, "cancelled")
        raise


@task
async def async_swallows_stops(ctx: JobContext, started: str, release: str, then: str = "wait") -> str:
    """Catches its cancellation and goes on: returns at once (`then="return"`), or keeps running
    until `release` exists (`then="wait"`). `started` gets a line when it starts, when each
    cancellation reaches it and when it returns."""
    _mark(started, "started")
    while not Path(release).exists():
        try:
            await asyncio.sleep(0.01)
        except asyncio.CancelledError:
            _mark(started, "cancelled")
            if then == "return":
                break
    _mark(started, "returned")
    return "finished anyway"


def _held_until(started: str, release: str, job_id: str) -> str:
    _mark(started, job_id)
    while not Path(release).exists():
        time.sleep(0.01)
    return "released"


@task(max_attempts=1)
def blocking_step(ctx: JobContext, started: str, release: str) -> str:
    """A step that blocks until `release` exists; one attempt only."""
    result: str = ctx.step("held", _held_until, started, release, ctx.job_id)
    return result


@task(max_attempts=1)
async def async_blocking_step(ctx: JobContext, started: str, release: str) -> str:
    """A sync step (run on a thread) that blocks until `release` exists."""
    result: str = await ctx.step("held", _held_until, started, release, ctx.job_id)
    return result


@task
def catches_its_stop(ctx: JobContext, started: str) -> str:
    """A sync task that catches its interruption and returns a value."""
    _mark(started, "started")
    try:
        while True:
            time.sleep(0.01)
    except BaseException:
        return "finished anyway"


@task
def sleep_in_c(ctx: JobContext, started: str, seconds: float) -> str:
    """A blocking C call that no interruption can cut short."""
    _mark(started, ctx.job_id)
    time.sleep(seconds)
    return "woke"


@task(timeout=0.5, max_attempts=2, backoff=(0.01, 0.01))
def spins_past_timeout(ctx: JobContext, started: str) -> None:
    _mark(started, f"{ctx.job_id} {ctx.attempt}")
    n = 0
    while True:
        n += 1


@task(timeout=0.5)
async def async_past_timeout(ctx: JobContext) -> None:
    await asyncio.sleep(3600)


@task(concurrency=2)
async def capped(ctx: JobContext, started: str, release: str) -> None:
    _mark(started, ctx.job_id)
    while not Path(release).exists():
        await asyncio.sleep(0.01)


@task(max_attempts=3)
async def async_stepped(ctx: JobContext, path: str, hold: str) -> list[int]:
    a = await ctx.step("first", _side_effect, path, 1)
    while Path(hold).exists():
        await asyncio.sleep(0.01)
    b = await ctx.step("second", _async_side_effect, path, 2)
    return [a, b]


async def _async_side_effect(path: str, i: int) -> int:
    _mark(path, f"step {i}")
    return i * 10


def _greet(name: str, fn: str = "hello") -> str:
    return f"{fn} {name}"


@task
def step_with_keywords(ctx: JobContext) -> str:
    """A step's own arguments may be called `name` and `fn`, like the step's."""
    return str(ctx.step("greet", _greet, name="bob", fn="hi"))


@task
async def async_step_with_keywords(ctx: JobContext) -> str:
    return str(await ctx.step("greet", _greet, name="ann", fn="hey"))


@task
def duplicate_step(ctx: JobContext) -> None:
    ctx.step("x", lambda: 1)
    ctx.step("x", lambda: 2)


@task
async def io_wait(seconds: float) -> float:
    await asyncio.sleep(seconds)
    return seconds


@task(on_crash="fail")
def at_most_once_in_c(ctx: JobContext, started: str, seconds: float) -> str:
    """An at-most-once task stuck in a blocking C call."""
    _mark(started, ctx.job_id)
    time.sleep(seconds)
    return "woke"


@task
def read_fifo(ctx: JobContext, started: str, fifo: str) -> str:
    """Blocks in a C call no interruption can cut short (reading a FIFO) until the test writes
    to it. The marker holds the thread's native id, so the test can see it blocked in read(2)."""
    fd = os.open(fifo, os.O_RDWR)  # Linux: never blocks, and read(2) waits for data instead of EOF
    try:
        _mark(started, str(threading.get_native_id()))
        return os.read(fd, 1).decode()
    finally:
        os.close(fd)


# ------------------------------------------------------------ agent workflows
@task
def nap(ctx: JobContext, path: str, seconds: float) -> str:
    """A step, a durable sleep, a step: each step's side effect must happen once."""
    ctx.step("before", _side_effect, path, 1)
    ctx.sleep("nap", seconds)
    ctx.step("after", _side_effect, path, 2)
    return f"awake after attempt {ctx.attempt}"


@task
def approval(ctx: JobContext, path: str, timeout: float | None = None) -> dict[str, Any]:
    """Drafts (a step), waits for the `approve` signal, then publishes (a step)."""
    ctx.step("draft", _side_effect, path, 1)
    answer = ctx.wait_for("approve", timeout=timeout)
    ctx.step("publish", _side_effect, path, 2)
    return {"answer": answer, "attempt": ctx.attempt}


@task
def wait_named(ctx: JobContext, name: str) -> Any:
    """Waits for the signal `name`, whatever it is; its payload."""
    return ctx.wait_for(name)


@task
def approval_or_reminder(ctx: JobContext, timeout: float, then_sleep: float) -> Any:
    """Waits for `approve` up to `timeout`, then sleeps (a reminder's delay) before it ends."""
    answer = ctx.wait_for("approve", timeout=timeout)
    ctx.sleep("remind", then_sleep)
    return answer


async def _paid_async(started: str, release: str, job_id: str) -> str:
    _mark(started, job_id)
    while not Path(release).exists():
        await asyncio.sleep(0.01)
    return "released"


@task(max_attempts=2, backoff=(0.01, 0.01))
async def pays_beside_a_wait(ctx: JobContext, started: str, release: str, on_thread: bool, then: str) -> Any:
    """One branch of an asyncio.gather makes a held call (a step), while the other waits for the
    signal `go` (then="wait") or, on the first attempt, raises (then="raise")."""
    paid = _held_until if on_thread else _paid_async

    async def other() -> Any:
        while not Path(started).exists():  # the paid call has started
            await asyncio.sleep(0.01)
        _mark(started + ".other", then)
        if then == "raise" and ctx.attempt == 1:
            raise RuntimeError("the other branch failed")
        return await ctx.wait_for("go") if then == "wait" else "done"

    return await asyncio.gather(ctx.step("pay", paid, started, release, ctx.job_id), other())


@task
def logs_then_waits(ctx: JobContext, name: str) -> Any:
    """Logs a line, then waits for the signal `name`; its payload."""
    ctx.log(f"waiting for {name}")
    return ctx.wait_for(name)


@task
async def async_approval(ctx: JobContext, path: str, timeout: float | None = None) -> dict[str, Any]:
    await ctx.step("draft", _side_effect, path, 1)
    answer = await ctx.wait_for("approve", timeout=timeout)
    await ctx.sleep("settle", 0.05)
    return {"answer": answer, "attempt": ctx.attempt}


@task
def square(path: str, i: int, fail: bool = False, hold: str = "", fail_while: str = "") -> int:
    """A child: marks that it ran, waits while `hold` exists, fails on purpose when asked
    (or while `fail_while` exists)."""
    if path:
        _mark(path, f"child {i}")
    while hold and Path(hold).exists():
        time.sleep(0.01)
    if fail or (fail_while and Path(fail_while).exists()):
        raise Fail(f"child {i} failed on purpose")
    return i * i


@task
def fan_out(
    ctx: JobContext,
    path: str,
    n: int,
    fail: list[int] | None = None,
    return_exceptions: bool = False,
    hold: str = "",
    pause: str = "",
    fail_while: str = "",
) -> dict[str, Any]:
    """Spawns `n` children at once, (waits while `pause` exists,) gathers them, spawns one
    more, and sums up."""
    marks = fail or []
    args = [
        {"path": path, "i": i, "fail": i in marks, "hold": hold, "fail_while": fail_while} for i in range(n)
    ]
    ids = ctx.spawn_many("children", "tests.e2e_tasks.square", args)
    if pause:
        _mark(pause + ".spawned", ",".join(ids))
    while pause and Path(pause).exists():
        time.sleep(0.01)
    results = ctx.gather("all", ids, return_exceptions=return_exceptions)
    last = ctx.spawn("last", "tests.e2e_tasks.square", {"path": "", "i": n})
    (tail,) = ctx.gather("tail", [last])
    shown = [_failure(r) if isinstance(r, ChildFailed) else r for r in results]
    return {"results": shown, "tail": tail, "ids": ids, "attempt": ctx.attempt}


@task(max_attempts=3, backoff=(0.01, 0.01))
def spawn_one(ctx: JobContext, task: str, args: dict[str, Any], options: dict[str, Any] | None = None) -> str:
    """Spawns one child as told, and returns its id; any error is retried, twice, at once."""
    child_id: str = ctx.spawn("child", task, args, **(options or {}))
    return child_id


@task
def squares_of_a_generator(ctx: JobContext, n: int) -> list[int]:
    """Spawns its children from a generator of args, and gathers them."""
    ids = ctx.spawn_many("children", "tests.e2e_tasks.square", ({"path": "", "i": i} for i in range(n)))
    results: list[int] = ctx.gather("all", ids)
    return results


def _failure(failed: ChildFailed) -> dict[str, Any]:
    assert failed.error is not None  # a failed child always carries its error object
    return {"failed": failed.job_id, "error": failed.error["type"]}


@task
async def async_fan_out(ctx: JobContext, n: int) -> list[int]:
    ids = await ctx.spawn_many("children", "tests.e2e_tasks.square", [{"path": "", "i": i} for i in range(n)])
    results: list[int] = await ctx.gather("all", ids)
    return results


@task(max_attempts=2, backoff=(0.01, 0.01))
def two_steps(ctx: JobContext, fail_first: bool = False) -> int:
    """Two durable steps; with `fail_first`, the first attempt fails after them."""
    a = ctx.step("fetch", lambda: 1)
    b = ctx.step("summarize", lambda: a + 1)
    if fail_first and ctx.attempt == 1:
        raise ValueError("the first attempt fails")
    return int(b)


@task
async def async_two_steps(ctx: JobContext) -> int:
    """A step run on a thread, then an async one."""
    a = await ctx.step("fetch", lambda: 1)
    b = await ctx.step("summarize", _async_side_effect_free, a)
    return int(b)


async def _async_side_effect_free(a: int) -> int:
    await asyncio.sleep(0)
    return a + 1


@task
def echo(value: Any = None) -> Any:
    """Returns what it was given: any JSON value as args."""
    return value


# ------------------------------------------------------------------ limits
def _span(path: str, ctx: JobContext, began: float, key: str) -> None:
    """One line per run: job id, key, start and end (wall clock, shared by every process)."""
    _mark(path, f"{ctx.job_id} {key} {began:.6f} {time.time():.6f}")


@task(limits=[Concurrency("llm:{model}", 3)], max_attempts=5)
async def held_key(ctx: JobContext, path: str, model: str, hold_s: float = 0.05, release: str = "") -> None:
    """Holds its model's key for `hold_s` seconds (or until `release` exists)."""
    began = time.time()
    _mark(path + ".start", f"{ctx.job_id} {began:.6f}")
    while release and not Path(release).exists():
        await asyncio.sleep(0.01)
    await asyncio.sleep(hold_s)
    _span(path, ctx, began, model)


@task(limits=[Rate("tokens", 10, per="500ms", cost=lambda args: args["tokens"])], max_attempts=5)
async def spends_tokens(ctx: JobContext, path: str, tokens: int) -> None:
    """Starts are recorded with their cost: the test adds them up over every window."""
    _mark(path, f"{ctx.job_id} {tokens} {time.time():.6f}")


@task(limits=[Rate("budget:{team}", 10, per="60s", cost=6)])
def settles_usage(ctx: JobContext, team: str, used: float) -> float:
    """Charged an estimate of 6 at its start; reports what it really used."""
    ctx.report_usage("budget:{team}", used)
    return used


@task(limits=[Rate("budget:{team}", 10, per="60s", cost=6)])
def reports_endless_usage(ctx: JobContext, team: str) -> str:
    """Reports an infinite usage (an overflow in the caller's own sums): what report_usage says."""
    try:
        ctx.report_usage("budget:{team}", 1e308 * 10)
    except ValueError as exc:
        return str(exc)
    return "accepted"


@task(limits=[Concurrency("gate:{team}", 1)])
def gated_approval(ctx: JobContext, team: str) -> Any:
    """Holds its team's only slot, and waits for the `go` signal (a parked run holds none)."""
    return ctx.wait_for("go")


@task
def spawns_held(ctx: JobContext, path: str, model: str, release: str, n: int) -> int:
    """Spawns `n` children that share one Concurrency key of 3, and gathers them."""
    args = [{"path": path, "model": model, "hold_s": 0, "release": release} for _ in range(n)]
    ids = ctx.spawn_many("held", "tests.e2e_tasks.held_key", args)
    return len(ctx.gather("all", ids))


@task
def stamps_start(path: str) -> None:
    """Writes the wall clock at its start (pickup latency across processes)."""
    _mark(path, f"{time.time():.6f}")


@task
async def notices_cancel(ctx: JobContext, started: str, seen: str) -> None:
    """Waits until it is cancelled, and writes the wall clock it was cancelled at."""
    _mark(started, ctx.job_id)
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        _mark(seen, f"{time.time():.6f}")
        raise


@task(limits=[Concurrency("one-slot", 1)], priority=5)
def first_on_slot(ctx: JobContext) -> str:
    """Shares one slot with `second_on_slot`, and goes before it."""
    return "first"


@task(limits=[Concurrency("one-slot", 1)])
def second_on_slot(ctx: JobContext, release: str = "") -> str:
    """Shares one slot with `first_on_slot`; holds it until `release` exists, if given."""
    while release and not Path(release).exists():
        time.sleep(0.01)
    return "second"


@task
def gathers_itself(ctx: JobContext) -> Any:
    """A mistake: it would wait for its own end."""
    return ctx.gather("me", [ctx.job_id])


@task(name="tests/slashed")
def slashed() -> str:
    """A task whose name holds a "/", as `reports/daily` would."""
    return "ran"


@task
def parks_inside_a_step(ctx: JobContext, path: str) -> Any:
    """A paid call, then a wait for a signal, both inside one step's function."""

    def pay_then_wait() -> Any:
        _mark(path, "paid")
        return ctx.wait_for("go")

    return ctx.step("pay", pay_then_wait)


@task
async def async_parks_inside_a_step(ctx: JobContext, path: str) -> Any:
    """The same in an async task: a paid call, then a durable sleep, inside one step's function."""

    async def pay_then_sleep() -> Any:
        _mark(path, "paid")
        return await ctx.sleep("nap", 3600)

    return await ctx.step("pay", pay_then_sleep)


@task
def names_a_step(ctx: JobContext, path: str, name: Any) -> Any:
    """A step under the name given (any JSON), then a durable sleep that parks the job."""
    ctx.step(name, _mark, path, "paid")
    ctx.sleep("nap", 0.01)
    return "done"


@task
def gathers_as_given(ctx: JobContext, how: str) -> Any:
    """Spawns two children and gathers them as `how` says: a generator, one id, or numbers."""
    ids = ctx.spawn_many("kids", "jobserver.examples.add", [{"a": 1, "b": 1}, {"a": 2, "b": 2}])
    given: Any = {"generator": (i for i in ids), "one id": ids[0], "numbers": [1, 2]}[how]
    return ctx.gather("kids-done", given)
