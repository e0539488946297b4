"""Engine: joins the store, the task registry and the worker threads.

Owns the decisions: what a submit inserts, which job a free worker may claim
(capacity: async slots and per-task `concurrency`), how an attempt runs (sync
on the worker thread, async on the engine's event loop), and what its outcome
does to the job (complete, retry with backoff, fail, cancel). Services call its
one-pass methods: `rescue_once`, `heartbeat_once`, `watchdog_once`.

Imports store, tasks, attempt, context, records, hub, reporter, netguard; never
Starlette; Huey only wakes it (see `queue.py`).
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import orjson

from jobserver.core.clock import Clock
from jobserver.core.config import Settings
from jobserver.core.context import JobContext
from jobserver.core.errors import (
    Cancelled,
    DrainingError,
    Fail,
    IdempotencyInFlightError,
    InvalidRequestError,
    JobServerError,
    Retry,
    StaleAttemptError,
    TaskNotFoundError,
    Timeout,
)
from jobserver.core.hub import Hub
from jobserver.core.records import Claim, HandOff, JobIds, JobRecord, NewJob
from jobserver.core.schemas import SubmitBody
from jobserver.core.tasks import Registry, TaskDef
from jobserver.runner.attempt import Attempt, to_json
from jobserver.runner.reporter import Reporter
from jobserver.runner.slots import Slots
from jobserver.runner.wakeup import Wakeup
from jobserver.storage.store import JobStore, body_hash
from jobserver.storage.writer import Tx, Writer
from jobserver.webhooks.netguard import check_webhook_url

log = logging.getLogger(__name__)
STUCK_GRACE_S = 2.0  # a stopped sync task that ignores the interruption is given up after this


@dataclass(frozen=True)
class Outcome:
    """How an attempt ended."""

    kind: str  # ok | error | cancelled | stale | shutdown
    value: Any = None
    exc: BaseException | None = None


def error_info(exc: BaseException, type_name: str | None = None) -> dict[str, Any]:
    """The job's `error` object for an exception."""
    return {
        "type": type_name or type(exc).__name__,
        "message": str(exc) or type(exc).__name__,
        "traceback": "".join(traceback.format_exception(exc)),
    }


class Engine:
    """Submit, claim, run, finish; and the per-pass maintenance steps."""

    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        writer: Writer,
        registry: Registry,
        clock: Clock,
        hub: Hub,
        wakeup: Wakeup,
        owner: str,
    ) -> None:
        self.settings = settings
        self.store = store
        self.writer = writer
        self.registry = registry
        self.clock = clock
        self.hub = hub
        self.wakeup = wakeup
        self.owner = owner
        self.ids = JobIds()
        self.reporter = Reporter(writer, hub.publish, settings.events.max_log_lines)
        self.draining = False
        self.rng = random.Random()
        self._lock = threading.Lock()
        self._running: dict[str, Attempt] = {}
        self.slots = Slots(registry.all(), settings.workers.threads, settings.workers.async_concurrency)
        self._stop_before_start: dict[str, str] = {}  # stops asked for jobs taken ahead
        self._handoff = HandOff(
            owner, settings.workers.lease_seconds, self._handoff_accept, self._handoff_deliver
        )
        self._inflight_keys: set[tuple[str, str]] = set()
        self.loop: asyncio.AbstractEventLoop | None = None  # the async tasks' loop
        self.on_thread_abandoned: Callable[[], None] = lambda: None
        self.on_finished: Callable[[JobRecord, Claim], None] = lambda rec, claim: None
        # observers (metrics): called after the change committed; they must not raise or block
        self.on_submitted: Callable[[JobRecord], None] = lambda rec: None
        self.on_claimed: Callable[[Claim], None] = lambda claim: None
        self.on_cancelled: Callable[[JobRecord], None] = lambda rec: None
        self.on_rescued: Callable[[list[JobRecord]], None] = lambda recs: None

    # ---------------------------------------------------------------- submit
    async def submit(
        self, body: SubmitBody, idem_key: str | None, scope: str, raw_body: Any
    ) -> tuple[JobRecord, bool]:
        """Validate and insert a job; (record, replayed). Runs on the API's event loop."""
        if self.draining:
            raise DrainingError()
        taskdef = self.registry.get(body.task)
        args = taskdef.validate_args(body.args)
        args_json = orjson.dumps(args).decode()
        if len(args_json) > self.settings.server.max_args_bytes:
            raise InvalidRequestError(
                "args are too large",
                [
                    {
                        "loc": ["body", "args"],
                        "type": "too_large",
                        "msg": f"args take {len(args_json)} bytes, at most {self.settings.server.max_args_bytes}",
                    }
                ],
            )
        if body.webhook_url is not None:
            await asyncio.to_thread(
                check_webhook_url,
                body.webhook_url,
                self.settings.webhooks.allow_private,
                self.settings.webhooks.allow_hosts,
            )
        now = self.clock.now()
        run_at = now + (body.delay or 0.0)
        if body.run_at is not None:
            run_at = body.run_at.timestamp()
        opts = taskdef.options
        new = NewJob(
            self.ids.new(),
            taskdef.name,
            args_json,
            body.priority if body.priority is not None else opts.priority,
            body.max_attempts or opts.max_attempts,
            body.timeout if body.timeout is not None else opts.timeout,
            body.webhook_url,
            idem_key,
            now,
            run_at,
        )
        idem = None
        if idem_key is not None:
            idem = (scope, idem_key, body_hash(raw_body))
            if (scope, idem_key) in self._inflight_keys:
                raise IdempotencyInFlightError(idem_key)
            self._inflight_keys.add((scope, idem_key))
        try:
            created, value = await asyncio.wrap_future(
                self.store.enqueue(new, idem, self.wakeup.notify, self._handoff)
            )
        finally:
            if idem_key is not None:
                self._inflight_keys.discard((scope, idem_key))
        if created:
            assert isinstance(value, JobRecord)
            self.on_submitted(value)
            return value, False
        record = await asyncio.to_thread(self.store.get, str(value))
        return record, True

    # ----------------------------------------------------------------- claim
    def claim_next(self) -> Claim | None:
        """The next job this process has room for (on a worker thread): one claimed
        earlier for this thread, or a fresh claim transaction."""
        ready = self.slots.pop_ready()
        if ready is not None:
            return ready
        if self.draining:
            return None
        claims = self.store.claim(
            self.owner,
            self.clock.now(),
            self.settings.workers.lease_seconds,
            self.slots.plan,
            self.slots.accept,
        ).result()
        if not claims:
            return None
        for claim in claims:
            log.info(
                "claimed %s attempt %d",
                claim.job_id,
                claim.attempt,
                extra={"job_id": claim.job_id, "action": "claim"},
            )
            self.on_claimed(claim)
        if len(claims) > 1:
            self.slots.push_ready(claims[1:])
            self.wakeup.notify(len(claims) - 1)
        return claims[0]

    def _handoff_accept(self, tx: Tx, job_id: str, task: str) -> bool:
        """May a new due job go straight to an idle worker? (writer thread)"""
        if self.draining:
            return False
        if self.slots.ready_count() >= self.wakeup.waiting:
            return False  # every idle worker already has a job waiting for it
        return bool(self.slots.accept(tx, [(job_id, task)]))

    def _handoff_deliver(self, claim: Claim) -> None:
        log.info(
            "claimed %s attempt %d",
            claim.job_id,
            claim.attempt,
            extra={"job_id": claim.job_id, "action": "claim"},
        )
        self.on_claimed(claim)
        self.slots.push_ready([claim])
        self.wakeup.notify()

    def release_ready(self) -> None:
        """Put back the jobs claimed for workers that will not take them (shutdown)."""
        for claim in self.slots.take_ready():
            taskdef = self.registry.get(claim.task) if claim.task in self.registry else None
            self._end(Attempt(self, claim, self.slots.is_async(claim.task)), taskdef, Outcome("shutdown"))

    def next_due_in(self) -> float | None:
        """Seconds until the earliest pending job is due (None: no pending job)."""
        due = self.store.next_run_at()
        return None if due is None else max(0.0, due - self.clock.now())

    # ------------------------------------------------------------------- run
    def execute(self, claim: Claim) -> bool:
        """Run a claimed job. Sync tasks run here; async ones go to the event loop.

        Returns False when this thread was abandoned (stuck) and must exit."""
        try:
            taskdef = self.registry.get(claim.task)
        except TaskNotFoundError as exc:
            self._end(Attempt(self, claim, False), None, Outcome("error", exc=Fail(str(exc))))
            return True
        attempt = Attempt(self, claim, taskdef.is_async)
        timeout = claim.timeout_s
        if timeout is not None:
            attempt.deadline = time.monotonic() + timeout
        with self._lock:
            self._running[claim.job_id] = attempt
            stop = self._stop_before_start.pop(claim.job_id, None)
        if stop is not None:
            attempt.request_stop(stop)
        if taskdef.is_async:
            assert self.loop is not None
            asyncio.run_coroutine_threadsafe(self._run_async(attempt, taskdef), self.loop)
            return True
        began = time.perf_counter()
        outcome = self._run_sync(attempt, taskdef)
        took = time.perf_counter() - began
        self.slots.ran(claim.task, took)
        if attempt.take_end():
            self._end(attempt, taskdef, outcome)
            return True
        return False  # the watchdog gave this attempt up and replaced this thread

    def _call_args(self, attempt: Attempt, taskdef: TaskDef) -> dict[str, Any]:
        kwargs = taskdef.call_kwargs(orjson.loads(attempt.claim.args_json))
        if taskdef.ctx_param:
            kwargs[taskdef.ctx_param] = JobContext(attempt)
        return kwargs

    def _run_sync(self, attempt: Attempt, taskdef: TaskDef) -> Outcome:
        try:
            try:
                kwargs = self._call_args(attempt, taskdef)
                attempt.arm()
                try:
                    value = taskdef.fn(**kwargs)
                finally:
                    attempt.disarm()
                return Outcome("ok", value=value)
            except (Cancelled, Timeout) as exc:
                return self._stopped(attempt, exc)
            except StaleAttemptError as exc:
                return Outcome("stale", exc=exc)
            except Exception as exc:
                return Outcome("error", exc=exc)
        except (Cancelled, Timeout) as exc:  # an interruption that landed in our own code
            return self._stopped(attempt, exc)

    def _stopped(self, attempt: Attempt, exc: BaseException) -> Outcome:
        reason = attempt.stop_reason
        if reason == "timeout" or (isinstance(exc, Timeout) and reason is None):
            return Outcome(
                "error", exc=Timeout(f"attempt ran past its time limit of {attempt.claim.timeout_s}s")
            )
        if reason == "stale":
            return Outcome("stale", exc=exc)
        if reason == "shutdown":
            return Outcome("shutdown")
        return Outcome("cancelled", exc=exc)

    async def _run_async(self, attempt: Attempt, taskdef: TaskDef) -> None:
        attempt.loop = asyncio.get_running_loop()
        attempt.async_task = asyncio.current_task()
        try:
            kwargs = self._call_args(attempt, taskdef)
            if attempt.stop_requested.is_set():
                raise asyncio.CancelledError()
            value = await taskdef.fn(**kwargs)
            outcome = Outcome("ok", value=value)
        except asyncio.CancelledError as exc:
            outcome = self._stopped(attempt, exc)
        except (Cancelled, Timeout) as exc:
            outcome = self._stopped(attempt, exc)
        except StaleAttemptError as exc:
            outcome = Outcome("stale", exc=exc)
        except Exception as exc:
            outcome = Outcome("error", exc=exc)
        attempt.async_task = None
        self._end(attempt, taskdef, outcome)  # queues the writes; does not block the loop

    # ---------------------------------------------------------------- finish
    def _end(self, attempt: Attempt, taskdef: TaskDef | None, outcome: Outcome) -> None:
        """Record the outcome (unless the attempt is stale) without waiting for the commit.

        The worker goes straight on to claim its next job; that claim joins the same
        group commit as this outcome. The slot is freed once the outcome committed."""
        claim = attempt.claim
        if outcome.kind == "stale":
            self._free(attempt, taskdef)
            self.hub.publish(claim.job_id)
            return
        self.reporter.flush_once(self.clock.now(), claim.job_id)  # queued first: the writer is FIFO

        def committed(rec: JobRecord) -> None:  # writer thread, after commit, before answers
            self.on_finished(rec, claim)
            self.hub.publish(claim.job_id)

        try:
            future = self._record_outcome(attempt, taskdef, outcome, committed)
        except Exception:
            self._free(attempt, taskdef)
            raise
        future.add_done_callback(lambda f: self._recorded(f, attempt, taskdef))

    def _recorded(self, future: Future[JobRecord], attempt: Attempt, taskdef: TaskDef | None) -> None:
        claim = attempt.claim
        exc = future.exception()
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
        self._free(attempt, taskdef)

    def _free(self, attempt: Attempt, taskdef: TaskDef | None) -> None:
        with self._lock:
            if self._running.get(attempt.claim.job_id) is attempt:
                del self._running[attempt.claim.job_id]
        self.slots.release(attempt.claim.task)
        self.wakeup.notify()

    def _record_outcome(
        self, attempt: Attempt, taskdef: TaskDef | None, outcome: Outcome, done: Callable[[JobRecord], None]
    ) -> Future[JobRecord]:
        claim, now = attempt.claim, self.clock.now()
        if outcome.kind == "ok":
            try:
                result = to_json(outcome.value, "the task's return value")
            except JobServerError as exc:
                outcome = Outcome("error", exc=exc)
            else:
                log.info("completed %s", claim.job_id, extra={"job_id": claim.job_id, "action": "complete"})
                return self.store.complete(claim, result, now, done)
        if outcome.kind == "shutdown":
            return self.store.release(claim, now, done)
        if outcome.kind == "cancelled":
            log.info("cancelled %s", claim.job_id, extra={"job_id": claim.job_id, "action": "cancel"})
            error = {"type": "Cancelled", "message": "the job was cancelled", "traceback": None}
            return self.store.fail(claim, error, now, None, "cancelled", done)
        failure = outcome.exc
        assert failure is not None
        retry_at = self._retry_at(claim, taskdef, failure, now)
        if retry_at is None:
            log.error(
                "failed %s after %d attempts",
                claim.job_id,
                claim.attempt,
                exc_info=failure,
                extra={"job_id": claim.job_id, "action": "fail"},
            )
        else:
            log.warning(
                "attempt %d of %s failed (%s); retrying",
                claim.attempt,
                claim.job_id,
                type(failure).__name__,
                extra={"job_id": claim.job_id, "action": "retry"},
            )
        return self.store.fail(claim, error_info(failure), now, retry_at, "failed", done)

    def _retry_at(
        self, claim: Claim, taskdef: TaskDef | None, exc: BaseException, now: float
    ) -> float | None:
        """When the next attempt runs, or None when the job has failed for good."""
        if taskdef is None or isinstance(exc, Fail) or claim.attempt >= claim.max_attempts:
            return None
        if isinstance(exc, Retry):
            if exc.delay is not None:
                return now + max(0.0, exc.delay)
        elif not isinstance(exc, (Timeout, *taskdef.options.retry_on)):
            return None
        base, cap = taskdef.options.backoff
        return now + self.rng.uniform(0, min(cap, base * 2 ** (claim.attempt - 1)))

    # -------------------------------------------------------------- controls
    def request_stop(self, job_id: str, reason: str) -> None:
        """Stop the local attempt of a job, if this process runs it."""
        with self._lock:
            attempt = self._running.get(job_id)
            if attempt is None and self.slots.is_ready(job_id):
                self._stop_before_start[job_id] = reason  # taken ahead, not started yet
        if attempt is not None:
            attempt.request_stop(reason)

    async def cancel(self, job_id: str) -> JobRecord:
        """Cancel a job (pending: at once; running: ask the attempt to stop)."""

        def after(rec: JobRecord) -> None:
            self.hub.publish(job_id)
            if rec.status == "running":
                self.request_stop(job_id, "cancel")
            else:
                self.on_cancelled(rec)

        return await asyncio.wrap_future(self.store.cancel(job_id, self.clock.now(), after))

    async def retry(self, job_id: str) -> JobRecord:
        """Run a failed or cancelled job again with a fresh round of attempts."""

        def after() -> None:
            self.hub.publish(job_id)
            self.wakeup.notify()

        return await asyncio.wrap_future(self.store.retry(job_id, self.clock.now(), after))

    async def delete(self, job_id: str) -> None:
        """Forget a finished job."""
        await asyncio.wrap_future(self.store.delete(job_id))

    # ----------------------------------------------------------- maintenance
    def rescue_once(self, at_start: bool = False) -> list[JobRecord]:
        """Recover running jobs whose owner is gone (one pass)."""
        everyone_else = at_start and not self.settings.is_postgres

        def on_crash(task: str) -> str:
            return self.registry.get(task).options.on_crash if task in self.registry else "retry"

        rescued = self.store.rescue(
            self.clock.now(), self.owner, everyone_else, on_crash, self.wakeup.notify
        ).result()
        for rec in rescued:
            log.warning(
                "rescued %s: now %s", rec.id, rec.status, extra={"job_id": rec.id, "action": "rescue"}
            )
            self.hub.publish(rec.id)
        if rescued:
            self.on_rescued(rescued)
        return rescued

    def heartbeat_once(self) -> None:
        """Extend this process's leases and pick up cancels asked on other nodes."""
        with self._lock:  # only attempts claimed (committed) before the heartbeat is sent
            attempts = list(self._running.values())
        if not attempts:
            return
        leased = self.store.heartbeat(
            self.owner, self.clock.now(), self.settings.workers.lease_seconds
        ).result()
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

    def watchdog_once(self) -> None:
        """Enforce time limits, and give up sync attempts stuck past the grace period."""
        now = time.monotonic()
        with self._lock:
            attempts = list(self._running.values())
        for attempt in attempts:
            if (
                attempt.deadline is not None
                and now >= attempt.deadline
                and not attempt.stop_requested.is_set()
            ):
                attempt.request_stop("timeout")
            if (
                not attempt.is_async
                and attempt.stop_at is not None
                and not attempt.abandoned
                and now - attempt.stop_at >= STUCK_GRACE_S
            ):
                self._abandon(attempt)

    def _abandon(self, attempt: Attempt) -> None:
        """A sync task ignored its interruption (a blocking C call): end the job without
        it and give its worker slot to a new thread."""
        attempt.abandoned = True
        log.warning(
            "attempt %d of %s does not stop; giving it up",
            attempt.claim.attempt,
            attempt.claim.job_id,
            extra={"job_id": attempt.claim.job_id, "action": "abandon"},
        )
        taskdef = self.registry.get(attempt.claim.task) if attempt.claim.task in self.registry else None
        reason = attempt.stop_reason
        exc: BaseException = Timeout(f"attempt ran past its time limit of {attempt.claim.timeout_s}s")
        outcome = Outcome("error", exc=exc) if reason == "timeout" else Outcome("cancelled")
        if reason in ("stale", "shutdown"):
            outcome = Outcome("stale")
        if attempt.take_end():
            threading.Thread(target=self._end, args=(attempt, taskdef, outcome), daemon=True).start()
            self.on_thread_abandoned()

    def running_count(self) -> int:
        """Attempts running in this process now."""
        with self._lock:
            return len(self._running)

    def stop_all(self, reason: str) -> None:
        """Ask every running attempt to stop (end of the shutdown grace period)."""
        with self._lock:
            attempts = list(self._running.values())
        for attempt in attempts:
            attempt.request_stop(reason)
