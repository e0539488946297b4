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
import logging
import math
import threading
import time
from collections.abc import Callable, Generator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import orjson

from jobserver.core.bounds import duration_s, signal_name, step_name
from jobserver.core.clock import Clock
from jobserver.core.errors import (
    Cancelled,
    ChildFailed,
    Fail,
    InvalidRequestError,
    NotJSONSerializableError,
    StorageError,
    Timeout,
)
from jobserver.core.lifecycle import Park, Suspend, WaitKind
from jobserver.core.limits import load_held, usable_units
from jobserver.core.records import Claim, JobRecord
from jobserver.core.tracing import NO_ATTEMPT_TRACE, AttemptTrace, kept_context
from jobserver.runner.reporter import Reporter
from jobserver.runner.submission import JobFactory
from jobserver.storage.store import JobStore
from jobserver.storage.writer import Tx, Writer

log = logging.getLogger(__name__)
T = TypeVar("T")
StopReason = Literal["cancel", "timeout", "stale", "shutdown"]
# how long a stopped async task waits for a sync step's thread to take the interruption; a
# blocking C call does not take it, and its thread then finishes on its own, unrecorded
STEP_THREAD_GRACE_S = 1.0
# A write the database refuses (disk full, locked past the busy timeout) is tried again, for an
# attempt's outcome and for its own writes (a step's result, a durable call's): doubling waits
# from the least to the most, for up to RECORD_RETRY_S before it is given up.
RECORD_RETRY_S = 300
RECORD_RETRY_MIN_DELAY_S = 0.1
RECORD_RETRY_MAX_DELAY_S = 5.0
# the step whose function runs in this thread or task: a call that parks the job inside it is
# refused, since the resume would run that function, and the calls it made, again
_IN_STEP: ContextVar[str | None] = ContextVar("jobserver_in_step", default=None)


def _not_in_step(call: str, name: str) -> None:
    step = _IN_STEP.get()
    if step is not None:
        raise ValueError(
            f"ctx.{call}({name!r}) was called inside the function of step {step!r}: a call that may "
            "park the job cannot run in a step (the resume would run the step's function again); "
            "call it from the task itself"
        )


@dataclass(frozen=True, slots=True)
class Read:
    """A read a durable call needs, run on the worker's own connection (off the event loop)."""

    fn: Callable[[], Any]


@dataclass(frozen=True, slots=True)
class Later:
    """A write whose commit the call does not wait for: it keeps its place in the writer's
    queue, so it commits before anything the attempt writes after it."""

    op: Callable[[Tx], Any]


# A durable call: a generator that yields writer ops (run, committed, their result sent
# back), `Read`s and `Later`s, and returns the call's value (or raises `Suspend`).
Calls = Generator[Callable[[Tx], Any] | Read | Later, Any, Any]


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
        factory: JobFactory | None = None,
        on_spawned: Callable[[list[JobRecord]], None] | None = None,
        trace: AttemptTrace = NO_ATTEMPT_TRACE,
    ) -> None:
        self.claim = claim
        self.trace = trace
        self._steps_store = steps
        self._factory = factory
        self._on_spawned = on_spawned or (lambda recs: None)
        self._writer = writer
        self._reporter = reporter
        self._clock = clock
        self.is_async = is_async
        self.stop_requested = threading.Event()
        self.stop_reason: StopReason | None = None
        # name -> (status, JSON) of the job's stored calls, read at the first call
        self._steps: dict[str, tuple[str, Any]] | None = None
        self._used_steps: set[str] = set()
        self._lock = threading.Lock()
        # the threads running the task's own code: a sync task's, or an async task's sync steps
        self._threads: set[int] = set()
        self._injected: set[int] = set()  # those an interruption was sent to
        self.async_task: asyncio.Task[Any] | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.deadline: float | None = None  # monotonic
        self.stop_at: float | None = None  # monotonic time the stop was asked
        self.abandoned = False
        self._ended = False
        # an async task's steps whose call has started and whose result is not stored yet (a
        # branch of an `asyncio.gather` may still run one when another branch parks the job)
        self._in_flight: set[asyncio.Future[None]] = set()
        self._settling = False

    # ------------------------------------------------------------ stopping
    def request_stop(self, reason: StopReason) -> None:
        """Ask the attempt to stop: set the flag, cancel the coroutine or interrupt the thread."""
        with self._lock:
            if self.stop_requested.is_set():
                return
            self.stop_reason = reason
            self.stop_at = self._clock.monotonic()
            self.stop_requested.set()
            exc = Timeout if reason == "timeout" else Cancelled
            for thread_id in self._threads:
                self._injected.add(thread_id)
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), ctypes.py_object(exc))
        if self.async_task is not None and self.loop is not None:
            self.loop.call_soon_threadsafe(self.async_task.cancel)

    def arm(self) -> None:
        """Mark the current thread interruptible (a sync task or step is about to run)."""
        with self._lock:
            pending = self.stop_requested.is_set()
            if not pending:
                self._threads.add(threading.get_ident())
        if pending:
            raise Timeout() if self.stop_reason == "timeout" else Cancelled(self.stop_reason or "")

    def disarm(self) -> None:
        """The sync task or step returned: no interruption may land after this point.

        An interruption sent but not yet raised is delivered here, inside a loop
        that swallows it. It is never cleared with `PyThreadState_SetAsyncExc(id,
        NULL)`: on CPython 3.11 that leaves the interpreter's "async exception
        pending" flag set, and every thread then takes the slow path at every
        loop and call for the rest of the process."""
        while True:
            try:
                with self._lock:
                    me = threading.get_ident()
                    self._threads.discard(me)
                    injected = me in self._injected
                    self._injected.discard(me)
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

    def report_usage(self, key: str, units: float) -> None:
        """Settle this attempt's charge of a rate key (its name or its template) with the real
        usage; written without waiting, like progress."""
        if not usable_units(units):
            raise ValueError(f"usage must be a finite number of at least 0, got {units!r}")
        rates = [h for h in load_held(self.claim.limits) if h.kind == "rate"]
        match = next((h for h in rates if key in (h.key, h.template)), None)
        if match is None:
            raise ValueError(f"{key!r} is not a rate limit of this job: {[h.key for h in rates]}")
        self._steps_store.limits.report_usage(self.claim.job_id, self.claim.run_seq, match.key, float(units))

    # ---------------------------------------------------------------- steps
    def _begin_step(self, name: str) -> tuple[bool, Any]:
        """(True, result) for a finished call, else (False, parked facts or None); names are
        unique per job, whatever kind of call uses them."""
        step_name(name)
        if name in self._used_steps:
            raise ValueError(f"step name {name!r} was already used in this attempt")
        self._used_steps.add(name)
        assert self._steps is not None
        status, value = self._steps.get(name, ("", None))
        return status == "completed", value

    def _save_step_op(self, name: str, result_json: str, started: float) -> Callable[[Tx], None]:
        claim = self.claim
        step = (name, result_json, claim.attempt, started, self._clock.now())
        return self._steps_store.save_step_op(claim.job_id, claim.run_seq, step)

    def step_sync(
        self, name: str, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        if self._steps is None:
            self._steps = self._steps_store.step_rows(self.claim.job_id)
        done, value = self._begin_step(name)
        if done:
            return value
        started = self._clock.now()
        with self.trace.step(name):
            token = _IN_STEP.set(name)
            try:
                raw = fn(*args, **kwargs)
            finally:
                _IN_STEP.reset(token)
        result_json = to_json(raw, f"the result of step {name!r}")
        self._write(self._save_step_op(name, result_json, started))
        return orjson.loads(result_json)

    async def step_async(
        self, name: str, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        if self._steps is None:  # read off the tasks' event loop
            self._steps = await asyncio.to_thread(self._steps_store.step_rows, self.claim.job_id)
        done, value = self._begin_step(name)
        if done:
            return value
        if self._settling:  # the run is ending: a call made now would be made again by its rerun
            raise asyncio.CancelledError()
        in_flight: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._in_flight.add(in_flight)
        try:
            return await self._run_step_async(name, fn, args, kwargs)
        finally:
            self._in_flight.discard(in_flight)
            in_flight.set_result(None)

    async def settle(self) -> None:
        """Before a run that parks or raised ends: wait until the steps other branches of an
        async task still run are stored (their calls were made; a rerun must not make them
        again), and start no other step."""
        self._settling = True
        while self._in_flight:
            await asyncio.wait(list(self._in_flight))

    async def _run_step_async(
        self, name: str, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        started = self._clock.now()
        if asyncio.iscoroutinefunction(fn):
            with self.trace.step(name):
                token = _IN_STEP.set(name)
                try:
                    raw = await fn(*args, **kwargs)
                finally:
                    _IN_STEP.reset(token)
            return await self._save_async(name, raw, started)
        # A function on a thread is interrupted as a sync task is (the stop is raised in its
        # thread); the task's cancellation waits a moment for that thread to leave it, so the
        # step's thread is not still running the call when the attempt's end is recorded.
        step = asyncio.ensure_future(self._thread_step(name, fn, args, kwargs, started))
        try:
            return await asyncio.shield(step)
        except asyncio.CancelledError:
            if not step.done():
                await asyncio.wait([step], timeout=STEP_THREAD_GRACE_S)
            raise

    async def _thread_step(
        self, name: str, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], started: float
    ) -> Any:
        with self.trace.step(name):  # current in the thread too: to_thread copies the context
            raw = await asyncio.to_thread(self._interruptible, name, fn, args, kwargs)
        return await self._save_async(name, raw, started)

    def _interruptible(
        self, name: str, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        self.arm()
        token = _IN_STEP.set(name)
        try:
            return fn(*args, **kwargs)
        finally:
            _IN_STEP.reset(token)
            self.disarm()

    async def _save_async(self, name: str, raw: Any, started: float) -> Any:
        result_json = to_json(raw, f"the result of step {name!r}")
        await self._awrite(self._save_step_op(name, result_json, started))
        return orjson.loads(result_json)

    # ---------------------------------------------------------- own writes
    def _write(self, op: Callable[[Tx], T]) -> T:
        """Commit one of the attempt's own writes from its thread, waiting out a database that
        refuses it: a step whose call returned must be stored before the task goes on, or a
        retry would make the call again. A stop asked meanwhile ends the wait (its outcome wins)."""
        delay, give_up_at = RECORD_RETRY_MIN_DELAY_S, None
        while True:
            try:
                return self._writer.call(op)
            except StorageError as exc:
                give_up_at = self._refused(exc, give_up_at)
                if self.stop_requested.wait(delay):
                    raise
                delay = min(RECORD_RETRY_MAX_DELAY_S, delay * 2)

    async def _awrite(self, op: Callable[[Tx], T]) -> T:
        """`_write` for an async task: the waits are the task's own, so a cancel ends them."""
        delay, give_up_at = RECORD_RETRY_MIN_DELAY_S, None
        while True:
            try:
                return await self._writer.acall(op)
            except StorageError as exc:
                give_up_at = self._refused(exc, give_up_at)
                await asyncio.sleep(delay)
                delay = min(RECORD_RETRY_MAX_DELAY_S, delay * 2)

    def _refused(self, exc: StorageError, give_up_at: float | None) -> float:
        """The time to give up waiting for the database (the first refusal logs it); raises
        `exc` once that time has passed."""
        now = time.monotonic()
        if give_up_at is None:
            log.warning(
                "a write of %s failed (%s); retrying for up to %ds",
                self.claim.job_id,
                exc,
                RECORD_RETRY_S,
                extra={"job_id": self.claim.job_id, "action": "write_retry"},
            )
            return now + RECORD_RETRY_S
        if now >= give_up_at:
            raise exc
        return give_up_at

    # -------------------------------------------------------- durable calls
    def drive_sync(self, calls: Calls) -> Any:
        """Run a durable call on this (worker) thread, waiting for each of its writes."""
        if self._steps is None:
            self._steps = self._steps_store.step_rows(self.claim.job_id)
        try:
            item = next(calls)
            while True:
                if isinstance(item, Read):
                    item = calls.send(item.fn())
                elif isinstance(item, Later):
                    self._writer.submit(item.op)
                    item = calls.send(None)
                else:
                    item = calls.send(self._write(item))
        except StopIteration as stop:
            return stop.value

    async def drive_async(self, calls: Calls) -> Any:
        """Run a durable call in an async task, awaiting each of its writes."""
        if self._steps is None:  # read off the tasks' event loop
            self._steps = await asyncio.to_thread(self._steps_store.step_rows, self.claim.job_id)
        try:
            item = next(calls)
            while True:
                if isinstance(item, Read):
                    item = calls.send(await asyncio.to_thread(item.fn))
                elif isinstance(item, Later):
                    self._writer.submit(item.op)
                    item = calls.send(None)
                else:
                    item = calls.send(await self._awrite(item))
        except StopIteration as stop:
            return stop.value

    def _call_facts(self, name: str) -> tuple[str, int, float, float]:
        now = self._clock.now()
        return name, self.claim.attempt, now, now

    def sleep_calls(self, name: str, seconds: float) -> Calls:
        """A durable sleep: the wake-up time is stored when the job first parks on it."""
        _not_in_step("sleep", name)
        done, parked = self._begin_step(name)
        if done:
            return None
        with self.trace.call("sleep", name):
            now = self._clock.now()
            until = float(parked["until"]) if parked else now + duration_s(seconds, "ctx.sleep's seconds")
            if until > now:
                raise Suspend(Park(WaitKind.SLEEP, name, until))
            yield self._save_step_op(name, "null", now)
        return None

    def wait_for_calls(self, name: str, timeout: float | None) -> Calls:
        """The payload of signal `name` (kept if it came early), or None once `timeout` passed."""
        _not_in_step("wait_for", name)
        done, stored = self._begin_step(signal_name(name))
        if done:
            return stored
        with self.trace.call("wait_for", name):
            claim, now = self.claim, self._clock.now()
            signals = yield Read(lambda: self._steps_store.signals(claim.job_id))
            if name in signals:  # a signal never changes: no need to wait for its step to be stored
                yield Later(self._save_step_op(name, orjson.dumps(signals[name]).decode(), now))
                return signals[name]
            if stored:
                until = None if stored["until"] is None else float(stored["until"])
            elif timeout is None or timeout == math.inf:  # no timeout
                until = None
            else:
                until = now + duration_s(timeout, "ctx.wait_for's timeout")
            got, value = yield self._steps_store.take_signal_op(
                claim.job_id, claim.run_seq, self._call_facts(name), until
            )
            if got:
                return value
            raise Suspend(Park(WaitKind.SIGNAL, name, until))

    def spawn_calls(
        self, name: str, task: str, many_args: Sequence[dict[str, Any]], options: dict[str, Any], one: bool
    ) -> Calls:
        """Submit children with the step that remembers their ids, in one transaction."""
        done, stored = self._begin_step(name)
        if done:
            return stored
        assert self._factory is not None, "spawning needs the job factory"
        factory = self._factory
        with self.trace.call("spawn", name) as span:
            claim, now = self.claim, self._clock.now()
            context = kept_context(span.headers())
            try:
                children = [
                    factory.child(claim.job_id, task, dict(a), options, now, context) for a in many_args
                ]
            except InvalidRequestError as exc:  # the same args would be refused at every attempt
                raise Fail(f"spawn {name!r}: {exc}") from exc
            ids = [c.id for c in children]
            span.set("jobserver.children", len(ids))
            result = ids[0] if one else ids
            step = (name, orjson.dumps(result).decode(), claim.attempt, now, now)
            records = yield self._steps_store.spawn_op(claim.job_id, claim.run_seq, step, children)
            self._on_spawned(records)
        return result

    def gather_calls(self, name: str, ids: Sequence[str], return_exceptions: bool) -> Calls:
        """The results of `ids` in order once all are finished; parks the job until then."""
        _not_in_step("gather", name)
        if isinstance(ids, str):  # one id: its characters would be gathered as ids of no job
            raise ValueError(
                f"ctx.gather({name!r}) takes a list of job ids, not one id (write [{ids!r:.80}])"
            )
        ids = list(ids)  # once: a generator read by the checks below would leave nothing to gather
        if not all(isinstance(i, str) for i in ids):
            raise ValueError(f"ctx.gather({name!r}) takes a list of job ids (strings), not {ids!r:.80}")
        done, ends = self._begin_step(name)
        if done:
            return self._gathered(ends, return_exceptions)
        with self.trace.call("gather", name):
            claim = self.claim
            if claim.job_id in ids:  # it would wait for its own end, which waits for it
                raise ValueError(f"ctx.gather({name!r}): a job cannot gather itself ({claim.job_id})")
            ends = yield self._steps_store.gather_op(
                claim.job_id, claim.run_seq, self._call_facts(name), list(ids)
            )
            if ends is None:
                raise Suspend(Park(WaitKind.CHILDREN, name, None, tuple(ids)))
            return self._gathered(ends, return_exceptions)

    @staticmethod
    def _gathered(ends: list[dict[str, Any]], return_exceptions: bool) -> list[Any]:
        """The children's results in order; a failed or cancelled one raises, or takes its place."""
        results: list[Any] = []
        for end in ends:
            if end["status"] == "completed":
                results.append(end["result"])
                continue
            failed = ChildFailed(end["id"], end["error"], end["status"])
            if not return_exceptions:
                raise failed
            results.append(failed)
        return results
