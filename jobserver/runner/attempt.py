"""Attempt: one run of a job, seen from the executor side.

Owns what an attempt needs while it runs: its claim (the fencing token
`run_seq`), the stop flag and reason (cancel, timeout, stale, shutdown), the
stored step results, and, for a sync task, the thread to interrupt. The
`JobContext` a task sees is a face over it.

Interrupting a sync task uses CPython's `PyThreadState_SetAsyncExc`: the
exception is raised in the task's thread at its next Python instruction. It
cannot interrupt a blocking C call (a long `time.sleep`, a socket read without
timeout); the executor then gives the job up after a grace period and replaces
the stuck worker thread.
"""

from __future__ import annotations

import asyncio
import ctypes
import threading
from collections.abc import Callable
from typing import Any, Literal

import orjson

from jobserver.core.clock import Clock
from jobserver.core.errors import Cancelled, NotJSONSerializableError, StaleAttemptError, Timeout
from jobserver.core.records import Claim
from jobserver.core.tracing import NO_ATTEMPT_TRACE, AttemptTrace
from jobserver.runner.reporter import Reporter
from jobserver.storage.store import JobStore
from jobserver.storage.writer import Tx, Writer

StopReason = Literal["cancel", "timeout", "stale", "shutdown"]


def to_json(value: Any, what: str) -> str:
    """Serialize a task's value, or fail the attempt with a clear error."""
    try:
        return orjson.dumps(value).decode()
    except TypeError as exc:
        raise NotJSONSerializableError(
            f"{what} is not JSON-serializable ({type(value).__name__}): {exc}"
        ) from None


class Attempt:
    """The executor's handle on one running attempt."""

    def __init__(
        self,
        claim: Claim,
        is_async: bool,
        steps: JobStore,
        writer: Writer,
        reporter: Reporter,
        clock: Clock,
        trace: AttemptTrace = NO_ATTEMPT_TRACE,
    ) -> None:
        self.claim = claim
        self.trace = trace
        self._steps_store = steps
        self._writer = writer
        self._reporter = reporter
        self._clock = clock
        self.is_async = is_async
        self.stop_requested = threading.Event()
        self.stop_reason: StopReason | None = None
        self._steps: dict[str, Any] | None = None  # stored step results, read at the first step
        self._used_steps: set[str] = set()
        self._lock = threading.Lock()
        self._thread_id: int | None = None  # set while a sync task may be interrupted
        self._injected = False  # an interruption was sent to the task's thread
        self.async_task: asyncio.Task[Any] | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.deadline: float | None = None  # monotonic
        self.stop_at: float | None = None  # monotonic time the stop was asked
        self.abandoned = False
        self._ended = False

    # ------------------------------------------------------------ stopping
    def request_stop(self, reason: StopReason) -> None:
        """Ask the attempt to stop: set the flag, cancel the coroutine or interrupt the thread."""
        with self._lock:
            if self.stop_requested.is_set():
                return
            self.stop_reason = reason
            self.stop_at = self._clock.monotonic()
            self.stop_requested.set()
            if self._thread_id is not None:
                exc = Timeout if reason == "timeout" else Cancelled
                self._injected = True
                ctypes.pythonapi.PyThreadState_SetAsyncExc(
                    ctypes.c_ulong(self._thread_id), ctypes.py_object(exc)
                )
        if self.async_task is not None and self.loop is not None:
            self.loop.call_soon_threadsafe(self.async_task.cancel)

    def arm(self) -> None:
        """Mark the current thread interruptible (a sync task is about to run)."""
        with self._lock:
            self._thread_id = threading.get_ident()
            pending = self.stop_requested.is_set()
        if pending:
            raise Timeout() if self.stop_reason == "timeout" else Cancelled(self.stop_reason or "")

    def disarm(self) -> None:
        """The sync task returned: no interruption may land after this point.

        An interruption sent but not yet raised is delivered here, inside a loop
        that swallows it. It is never cleared with `PyThreadState_SetAsyncExc(id,
        NULL)`: on CPython 3.11 that leaves the interpreter's "async exception
        pending" flag set, and every thread then takes the slow path at every
        loop and call for the rest of the process."""
        while True:
            try:
                with self._lock:
                    self._thread_id = None
                    injected, self._injected = self._injected, False
                if injected:
                    for _ in range(100):  # a backward jump: a pending interruption fires here
                        pass
                return
            except (Cancelled, Timeout):
                continue

    def take_end(self) -> bool:
        """True for the one caller that records this attempt's end (worker or watchdog)."""
        while True:
            try:
                with self._lock:
                    first, self._ended = not self._ended, True
                return first
            except (Cancelled, Timeout):
                continue

    # ------------------------------------------------------------ reporting
    def _on_stale(self) -> None:
        self.request_stop("stale")

    def report_progress(self, current: float, total: float | None, message: str | None) -> None:
        self._reporter.progress(
            self.claim.job_id,
            self.claim.run_seq,
            self._on_stale,
            {"current": current, "total": total, "message": message},
        )

    def report_log(self, message: str) -> None:
        self._reporter.log(self.claim.job_id, self.claim.run_seq, self._on_stale, message, self._clock.now())

    # ---------------------------------------------------------------- steps
    def _begin_step(self, name: str) -> tuple[bool, Any]:
        if name in self._used_steps:
            raise ValueError(f"step name {name!r} was already used in this attempt")
        self._used_steps.add(name)
        assert self._steps is not None
        if name in self._steps:
            return True, self._steps[name]
        return False, None

    def _save_step_op(self, name: str, result_json: str, started: float) -> Callable[[Tx], None]:
        claim, now = self.claim, self._clock.now()

        def op(tx: Tx) -> None:
            cur = tx.execute(
                "INSERT INTO steps (job_id, name, status, result, attempt, started_at, finished_at) "
                "SELECT ?, ?, 'completed', ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM jobs WHERE id = ? "
                "AND run_seq = ? AND status = 'running')",
                (claim.job_id, name, result_json, claim.attempt, started, now, claim.job_id, claim.run_seq),
            )
            if cur.rowcount != 1:
                raise StaleAttemptError(claim.job_id, claim.run_seq)

        return op

    def step_sync(
        self, name: str, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        if self._steps is None:
            self._steps = self._steps_store.step_results(self.claim.job_id)
        done, value = self._begin_step(name)
        if done:
            return value
        started = self._clock.now()
        with self.trace.step(name):
            raw = fn(*args, **kwargs)
        result_json = to_json(raw, f"the result of step {name!r}")
        self._writer.call(self._save_step_op(name, result_json, started))
        return orjson.loads(result_json)

    async def step_async(
        self, name: str, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        if self._steps is None:  # read off the tasks' event loop
            self._steps = await asyncio.to_thread(self._steps_store.step_results, self.claim.job_id)
        done, value = self._begin_step(name)
        if done:
            return value
        started = self._clock.now()
        if asyncio.iscoroutinefunction(fn):
            with self.trace.step(name):
                raw = await fn(*args, **kwargs)
            return await self._save_async(name, raw, started)
        # A function on a thread cannot be stopped: when the task is cancelled meanwhile,
        # let it finish and store its result, so what it did (and paid for) is not repeated.
        step = asyncio.ensure_future(self._thread_step(name, fn, args, kwargs, started))
        try:
            return await asyncio.shield(step)
        except asyncio.CancelledError:
            if not step.done():
                await asyncio.wait([step])
            raise

    async def _thread_step(
        self, name: str, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], started: float
    ) -> Any:
        with self.trace.step(name):  # current in the thread too: to_thread copies the context
            raw = await asyncio.to_thread(fn, *args, **kwargs)
        return await self._save_async(name, raw, started)

    async def _save_async(self, name: str, raw: Any, started: float) -> Any:
        result_json = to_json(raw, f"the result of step {name!r}")
        await self._writer.acall(self._save_step_op(name, result_json, started))
        return orjson.loads(result_json)
