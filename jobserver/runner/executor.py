"""Executor: runs claimed attempts and records how they ended.

Owns the attempts running in this process: a sync task runs on the worker
thread that claimed it, an async one on the tasks' event loop. When an attempt
ends, the lifecycle decides what its outcome does to the job and the store applies the
transition with one fenced write, without the worker waiting for the commit
(its next claim joins the same group commit). Also owns stopping: cancel, time
limits, stale attempts (the heartbeat), the shutdown, and giving up a sync
thread stuck in a blocking call.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import orjson

from jobserver.core.clock import Clock
from jobserver.core.context import JobContext
from jobserver.core.errors import Cancelled, JobServerError, StaleAttemptError, StorageError, Timeout
from jobserver.core.hub import Hub
from jobserver.core.lifecycle import AttemptFacts, Outcome, Status, Suspend, Transition, decide
from jobserver.core.observers import JobObserver
from jobserver.core.records import Claim, JobRecord
from jobserver.core.tasks import Registry, TaskDef
from jobserver.core.tracing import NO_ATTEMPT_TRACE, NO_TRACING, Tracing
from jobserver.runner.attempt import (
    RECORD_RETRY_MAX_DELAY_S,
    RECORD_RETRY_MIN_DELAY_S,
    RECORD_RETRY_S,
    Attempt,
    StopReason,
    to_json,
)
from jobserver.runner.reporter import Reporter
from jobserver.runner.slots import Slots
from jobserver.runner.submission import JobFactory
from jobserver.runner.wakeup import Wakeup
from jobserver.storage.store import JobStore
from jobserver.storage.writer import WriteFuture, Writer

log = logging.getLogger(__name__)
STUCK_GRACE_S = 2.0  # a stopped sync task that ignores the interruption is given up after this


@dataclass
class _Unrecorded:
    """An attempt's outcome on its way to the database, with its retry state."""

    attempt: Attempt
    transition: Transition
    committed: Callable[[JobRecord], None]
    give_up_at: float | None = None
    next_at: float = 0.0
    delay_s: float = 0.0


def facts(claim: Claim) -> AttemptFacts:
    """What the lifecycle's decision needs to know of a claimed attempt."""
    return AttemptFacts(claim.job_id, claim.run_seq, claim.attempt, claim.max_attempts)


def outcome_word(t: Transition | None) -> str:
    """How an attempt ended, in one word (a span's outcome): completed, failed, cancelled,
    retrying (another attempt follows), released (put back, not counted), waiting (parked on a
    durable call) or stale (fenced off)."""
    if t is None:
        return "stale"
    if t.status == Status.PENDING:
        return "retrying" if t.counts_attempt else "released"
    return str(t.status)


class Executor:
    """Runs attempts, records their endings, and stops them when asked."""

    def __init__(
        self,
        store: JobStore,
        writer: Writer,
        registry: Registry,
        clock: Clock,
        hub: Hub,
        slots: Slots,
        wakeup: Wakeup,
        reporter: Reporter,
        observers: Sequence[JobObserver],
        loop: asyncio.AbstractEventLoop,
        factory: JobFactory | None = None,
        rng: random.Random | None = None,
        tracing: Tracing = NO_TRACING,
    ) -> None:
        self.factory = factory
        self.store = store
        self.tracing = tracing
        self.writer = writer
        self.registry = registry
        self.clock = clock
        self.hub = hub
        self.slots = slots
        self.wakeup = wakeup
        self.reporter = reporter
        self.observers = observers
        self.loop = loop
        self.rng = rng or random.Random()
        self._lock = threading.Lock()
        self._running: dict[str, Attempt] = {}
        self._stop_before_start: dict[str, StopReason] = {}  # stops asked for jobs claimed, not started
        self._unrecorded: dict[str, _Unrecorded] = {}  # outcomes the database refused, to write again

    def _attempt(self, claim: Claim, is_async: bool, traced: bool = False) -> Attempt:
        """The handle of an attempt; `traced` for one whose task runs (not a put-back)."""
        trace = self.tracing.attempt(claim) if traced else NO_ATTEMPT_TRACE
        return Attempt(
            claim,
            is_async,
            self.store,
            self.writer,
            self.reporter,
            self.clock,
            self.factory,
            self.children_added,
            trace,
        )

    def children_added(self, records: list[JobRecord]) -> None:
        """A running task spawned jobs (committed): count them and wake workers for them
        (those of a parent cancelled meanwhile come already cancelled)."""
        queued = [rec for rec in records if rec.status != Status.CANCELLED]
        for rec in records:
            for observer in self.observers:
                observer.submitted(rec)
                if rec.status == Status.CANCELLED:
                    observer.cancelled(rec)
        if queued:
            self.wakeup.notify(len(queued))
        if any(self.slots.is_async(rec.task) for rec in queued):
            self.slots.async_work.set()

    # ------------------------------------------------------------------- run
    def execute(self, claim: Claim) -> bool:
        """Run a claimed job. Sync tasks run here; async ones go to the event loop.

        Returns False when this thread was abandoned (stuck) and must exit."""
        taskdef = self.registry.find(claim.task)
        if taskdef is None:  # claims only take known tasks; a reload could still drop one
            self._put_back(claim)
            return True
        attempt = self._attempt(claim, taskdef.is_async, traced=True)
        if claim.timeout_s is not None:
            attempt.deadline = self.clock.monotonic() + claim.timeout_s
        with self._lock:
            self._running[claim.job_id] = attempt
            stop = self._stop_before_start.pop(claim.job_id, None)
            self.slots.claim_settled(claim.job_id)  # a stop asked from now on finds it running
        if stop is not None:
            attempt.request_stop(stop)
        if taskdef.is_async:
            run = self._run_async(attempt, taskdef)
            try:
                asyncio.run_coroutine_threadsafe(run, self.loop)
            except RuntimeError:  # the loop closed at a stop this thread outlived: the lease ends
                run.close()  # and the job is rescued; never started, the coroutine is not awaited
            return True
        began = time.perf_counter()
        outcome = self._run_sync(attempt, taskdef)
        self.slots.ran(claim.task, time.perf_counter() - began)
        if attempt.take_end():
            self.finish(attempt, outcome)
            return True
        return False  # the watchdog gave this attempt up and replaced this thread

    def _call_args(self, attempt: Attempt, taskdef: TaskDef) -> dict[str, Any]:
        kwargs = taskdef.call_kwargs(orjson.loads(attempt.claim.args_json))
        if taskdef.ctx_param:
            kwargs[taskdef.ctx_param] = JobContext(attempt)
        return kwargs

    def _value(self, value: Any) -> Outcome:
        try:
            return Outcome.completed(to_json(value, "the task's return value"))
        except JobServerError as exc:
            return Outcome.raised(exc)

    def _unless_stopped(self, attempt: Attempt, outcome: Outcome) -> Outcome:
        """A task that caught its interruption and went on to return, raise or wait ends as the
        stop says: a timeout is a `Timeout` and a cancel a cancel, whatever it did after."""
        if attempt.stop_requested.is_set():
            return self._stopped(attempt, None)
        return outcome

    def _run_sync(self, attempt: Attempt, taskdef: TaskDef) -> Outcome:
        try:
            try:
                kwargs = self._call_args(attempt, taskdef)
                with attempt.trace.current():  # entered and left outside the interruptible window
                    attempt.arm()
                    try:
                        value = taskdef.fn(**kwargs)
                    finally:
                        attempt.disarm()
                return self._unless_stopped(attempt, self._value(value))
            except (Cancelled, Timeout) as exc:
                return self._stopped(attempt, exc)
            except Suspend as parked:
                return self._unless_stopped(attempt, Outcome.suspended(parked.park))
            except StaleAttemptError:
                return Outcome.stale()
            except Exception as exc:
                return self._unless_stopped(attempt, Outcome.raised(exc))
        except (Cancelled, Timeout) as exc:  # an interruption that landed in our own code
            return self._stopped(attempt, exc)

    def _stopped(self, attempt: Attempt, exc: BaseException | None) -> Outcome:
        """The outcome of an attempt that stopped because it was asked to."""
        reason = attempt.stop_reason
        if reason == "timeout" or (isinstance(exc, Timeout) and reason is None):
            return Outcome.raised(Timeout(f"attempt ran past its time limit of {attempt.claim.timeout_s}s"))
        if reason == "stale":
            return Outcome.stale()
        if reason == "shutdown":
            return Outcome.released(started=True)
        return Outcome.cancelled()

    async def _run_async(self, attempt: Attempt, taskdef: TaskDef) -> None:
        attempt.loop = asyncio.get_running_loop()
        attempt.async_task = asyncio.current_task()
        try:
            kwargs = self._call_args(attempt, taskdef)
            if attempt.stop_requested.is_set():
                raise asyncio.CancelledError()
            with attempt.trace.current():
                value = await taskdef.fn(**kwargs)
            outcome = self._unless_stopped(attempt, self._value(value))
        except (asyncio.CancelledError, Cancelled, Timeout) as exc:
            outcome = self._stopped(attempt, exc)
        except Suspend as parked:
            outcome = await self._settled(attempt, Outcome.suspended(parked.park))
        except StaleAttemptError:
            outcome = Outcome.stale()
        except Exception as exc:
            outcome = await self._settled(attempt, Outcome.raised(exc))
        attempt.async_task = None
        if attempt.take_end():
            self.finish(attempt, outcome)  # queues the writes; does not block the loop

    async def _settled(self, attempt: Attempt, outcome: Outcome) -> Outcome:
        """The outcome of an async run that parks or raised, once the steps its other branches
        still run are stored (a stop meanwhile wins, as it does while the task runs)."""
        try:
            await attempt.settle()
        except (asyncio.CancelledError, Cancelled, Timeout) as exc:
            return self._stopped(attempt, exc)
        return self._unless_stopped(attempt, outcome)

    # ---------------------------------------------------------------- finish
    def finish(self, attempt: Attempt, outcome: Outcome) -> WriteFuture[JobRecord] | None:
        """Record an attempt's outcome without waiting for the commit; the slot is freed
        once it committed. None when nothing is written (a stale attempt)."""
        claim = attempt.claim
        transition = decide(
            outcome, facts(claim), self.registry.options(claim.task), self.clock.now(), self.rng.random()
        )
        attempt.trace.end(outcome_word(transition), outcome.exc)
        if transition is None:
            self._free(attempt)
            self.hub.publish(claim.job_id)
            return None
        self.reporter.flush_once(self.clock.now(), claim.job_id)  # queued first: the writer is FIFO
        self._log(transition, claim, outcome)

        def committed(rec: JobRecord) -> None:  # writer thread, after commit, before answers
            for observer in self.observers:
                observer.transitioned(transition, rec, claim)
            self.hub.publish(claim.job_id)

        return self._record(_Unrecorded(attempt, transition, committed))

    def _record(self, pending: _Unrecorded) -> WriteFuture[JobRecord]:
        try:
            future = self.store.apply(pending.transition, pending.committed)
        except Exception:
            self._free(pending.attempt)
            raise
        future.add_done_callback(lambda f: self._recorded(f, pending))
        return future

    def _log(self, t: Transition, claim: Claim, outcome: Outcome) -> None:
        """Per-job lines at DEBUG (a periodic INFO summary counts them); WARNING for a retry,
        ERROR with the traceback when a job is given up."""
        if t.status == Status.FAILED:
            extra = {"job_id": claim.job_id, "action": "fail"}
            if outcome.exc is not None:
                log.error(
                    "failed %s after %d attempts",
                    claim.job_id,
                    claim.attempt,
                    exc_info=outcome.exc,
                    extra=extra,
                )
            else:
                log.error("failed %s: %s", claim.job_id, (t.error or {}).get("message"), extra=extra)
        elif t.status == Status.PENDING and t.counts_attempt:
            error_type = (t.error or {}).get("type")
            extra = {"job_id": claim.job_id, "action": "retry"}
            log.warning(
                "attempt %d of %s failed (%s); retrying", claim.attempt, claim.job_id, error_type, extra=extra
            )
        else:
            actions = {Status.COMPLETED: "complete", Status.CANCELLED: "cancel", Status.WAITING: "park"}
            action = actions.get(t.status, "release")
            log.debug("%s %s", t.status, claim.job_id, extra={"job_id": claim.job_id, "action": action})

    def _recorded(self, future: Future[JobRecord], pending: _Unrecorded) -> None:
        attempt = pending.attempt
        claim = attempt.claim
        exc = future.exception()
        if isinstance(exc, StorageError) and self._retry_later(pending, exc):
            return  # still running as far as the database knows: the slot and the lease are kept
        if isinstance(exc, StaleAttemptError):
            log.warning(
                "attempt %d of %s was given up; its outcome is dropped",
                claim.attempt,
                claim.job_id,
                extra={"job_id": claim.job_id, "action": "stale"},
            )
        elif exc is not None:
            log.error(
                "could not record the outcome of %s",
                claim.job_id,
                exc_info=exc,
                extra={"job_id": claim.job_id, "action": "record_failed"},
            )
        self._free(attempt)

    def _retry_later(self, pending: _Unrecorded, exc: StorageError) -> bool:
        """Keep an outcome the database refused (disk full, locked) to write again soon, so a
        finished job is not run a second time once its lease expires; False once it is given up."""
        now = time.monotonic()
        claim = pending.attempt.claim
        if pending.give_up_at is None:
            pending.give_up_at = now + RECORD_RETRY_S
            log.warning(
                "could not record the outcome of %s (%s); retrying for up to %ds",
                claim.job_id,
                exc,
                RECORD_RETRY_S,
                extra={"job_id": claim.job_id, "action": "record_retry"},
            )
        if now >= pending.give_up_at:
            return False
        pending.delay_s = min(RECORD_RETRY_MAX_DELAY_S, max(RECORD_RETRY_MIN_DELAY_S, pending.delay_s * 2))
        pending.next_at = now + pending.delay_s
        with self._lock:
            self._unrecorded[claim.job_id] = pending
        return True

    def record_retries_once(self) -> int:
        """Write again the outcomes whose retry is due; how many were sent."""
        now = time.monotonic()
        with self._lock:
            due = [p for p in self._unrecorded.values() if p.next_at <= now]
            for pending in due:
                del self._unrecorded[pending.attempt.claim.job_id]
        for pending in due:
            self._record(pending)
        return len(due)

    def _free(self, attempt: Attempt) -> None:
        with self._lock:
            if self._running.get(attempt.claim.job_id) is attempt:
                del self._running[attempt.claim.job_id]
        self.slots.release(attempt.claim.task)
        self.wakeup.notify()

    def release_unstarted(self, claims: Sequence[Claim]) -> list[WriteFuture[JobRecord]]:
        """Put back jobs claimed for this process that never started (shutdown)."""
        futures = []
        for claim in claims:
            future = self._put_back(claim)
            if future is not None:
                futures.append(future)
        return futures

    def _put_back(self, claim: Claim) -> WriteFuture[JobRecord] | None:
        """Record a claimed job as never started (pending again)."""
        with self._lock:
            self._stop_before_start.pop(claim.job_id, None)
            self.slots.claim_settled(claim.job_id)
        return self.finish(self._attempt(claim, self.slots.is_async(claim.task)), Outcome.released(False))

    # -------------------------------------------------------------- controls
    def request_stop(self, job_id: str, reason: StopReason) -> None:
        """Stop the local attempt of a job, if this process runs it, or has claimed it and not
        started it yet (then its start stops it)."""
        with self._lock:
            attempt = self._running.get(job_id)
            if attempt is None and self.slots.is_claimed(job_id):
                self._stop_before_start[job_id] = reason
        if attempt is not None:
            attempt.request_stop(reason)

    def running(self) -> list[Attempt]:
        """The attempts running in this process now."""
        with self._lock:
            return list(self._running.values())

    def running_ids(self) -> set[str]:
        """The ids of the jobs whose attempts run in this process now."""
        with self._lock:
            return set(self._running)

    def running_count(self) -> int:
        """How many attempts run in this process now."""
        with self._lock:
            return len(self._running)

    def heartbeat_once(self, owner: str, lease_s: float) -> None:
        """Extend this process's leases and pick up cancels asked on other nodes."""
        attempts = self.running()  # only attempts claimed (committed) before the heartbeat is sent
        if not attempts:
            return
        leased = self.store.heartbeat(owner, self.clock.now(), lease_s).result()
        for attempt in attempts:
            lease = leased.get(attempt.claim.job_id)
            if lease is None or lease[0] != attempt.claim.run_seq:
                if self._still_running(attempt):
                    attempt.request_stop("stale")  # recovered by another node: stop writing
            elif lease[1]:
                attempt.request_stop("cancel")

    def _still_running(self, attempt: Attempt) -> bool:
        with self._lock:
            return self._running.get(attempt.claim.job_id) is attempt and not attempt.abandoned

    def watchdog_once(self) -> int:
        """Enforce time limits, and give up attempts still running past the grace period after
        their stop; returns how many worker threads were given up (to be replaced). An async
        task that swallows its cancellation is given up too: its end is recorded and its slot
        freed, and whatever it does later is fenced."""
        now = self.clock.monotonic()
        abandoned = 0
        for attempt in self.running():
            if (
                attempt.deadline is not None
                and now >= attempt.deadline
                and not attempt.stop_requested.is_set()
            ):
                attempt.request_stop("timeout")
            if (
                attempt.stop_at is not None
                and not attempt.abandoned
                and now - attempt.stop_at >= STUCK_GRACE_S
            ):
                self.abandon(attempt)
                abandoned += attempt.abandoned and not attempt.is_async  # its thread exits when it can
        return abandoned

    def abandon(self, attempt: Attempt) -> WriteFuture[JobRecord] | None:
        """A task ignored its interruption (a sync one in a blocking C call, an async one that
        caught its cancellation): record its end without it and free its slot, a sync one's
        by giving it to a new thread. Its late writes are fenced."""
        if not attempt.take_end():
            return None
        attempt.abandoned = True
        claim = attempt.claim
        log.warning(
            "attempt %d of %s does not stop; giving it up",
            claim.attempt,
            claim.job_id,
            extra={"job_id": claim.job_id, "action": "abandon"},
        )
        reason = attempt.stop_reason
        outcome: Outcome
        if reason == "timeout":
            outcome = Outcome.raised(Timeout(f"attempt ran past its time limit of {claim.timeout_s}s"))
        elif reason == "shutdown":
            outcome = Outcome.released(True, " and did not stop within the shutdown grace period")
        elif reason == "stale":
            outcome = Outcome.stale()
        else:
            outcome = Outcome.cancelled()
        return self.finish(attempt, outcome)

    def stop_all(self, reason: StopReason) -> None:
        """Ask every running attempt to stop (end of the shutdown grace period)."""
        for attempt in self.running():
            attempt.request_stop(reason)
