"""The job lifecycle: its statuses, the ways an attempt can end, and `decide`.

Every change of a job's status made on behalf of an attempt is decided here and
nowhere else: retries and backoff, `Retry` and `Fail`, time limits, cancel,
crash recovery with `on_crash`, and the shutdown's put-back. `decide` is pure (no
clock, no database, no threads): the store applies the `Transition` it returns
with one fenced write, and observers (metrics, event hub, webhook outbox) are
told the transition instead of guessing from row fields.

    submit ──> pending ──claim──> running ──COMPLETED──────────────────> completed
                 ▲   ▲               │  ├─FAILED, no attempt left / Fail──> failed
                 │   │               │  ├─CRASHED, on_crash="fail" ───────> failed
                 │   │               │  ├─RELEASED, on_crash="fail" ──────> failed
                 │   │               │  └─CANCELLED ──────────────────────> cancelled
                 │   └─ FAILED / RETRY_LATER with attempts left (backoff),
                 │      CRASHED (counted), RELEASED (not counted)
                 ├── POST /retry ── failed | cancelled
                 ├── (pending | waiting) ── POST /cancel ──> cancelled
                 │
                 └── wake-up: the sleep ended, the signal came, the awaited jobs finished
                       ▲
    running ──SUSPENDED──> waiting  (not an attempt; holds no thread, lease or slot)

A task parks itself with `ctx.sleep`, `ctx.wait_for` or `ctx.gather` (the
`Suspend` raised inside it carries the `Park`). The run ends without counting
as an attempt; when the wait is over the job is pending again, flagged so that
its next claim resumes it instead of starting a new attempt, and its function
runs from the top, finding every finished call's stored result.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from jobserver.core.errors import Fail, Retry, Timeout

if TYPE_CHECKING:
    from jobserver.core.tasks import TaskOptions

MIN_CRASH_ATTEMPTS = 3  # a crash-looping job is given up after max(max_attempts, 3) attempts

ErrorInfo = dict[str, Any]  # the job's `error` object: {"type", "message", "traceback"}


class Status(StrEnum):
    """A job's status, as the API shows it."""

    PENDING = "pending"
    RUNNING = "running"
    WAITING = "waiting"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINISHED: frozenset[str] = frozenset({Status.COMPLETED, Status.FAILED, Status.CANCELLED})


class Ending(StrEnum):
    """How one attempt ended."""

    COMPLETED = "completed"  # the task returned a JSON value
    FAILED = "failed"  # the task raised (or returned what JSON cannot hold), or ran out of time
    RETRY_LATER = "retry_later"  # the task raised `Retry`
    CANCELLED = "cancelled"  # a cancel stopped it
    RELEASED = "released"  # the shutdown stopped it, or it never started before the shutdown
    CRASHED = "crashed"  # its process stopped heartbeating; found by the rescue
    STALE = "stale"  # it had already been given up: it may write nothing
    SUSPENDED = "suspended"  # the task parked itself (sleep, signal, children)


class WaitKind(StrEnum):
    """What a waiting job waits for (`waiting_for.kind`)."""

    SLEEP = "sleep"
    SIGNAL = "signal"
    CHILDREN = "children"


@dataclass(frozen=True, slots=True)
class Park:
    """What a parked run waits for: the call's kind and name, the wake-up time (a sleep's
    end or a wait's timeout; None for none), and for a gather the jobs it waits on."""

    kind: WaitKind
    name: str
    until: float | None = None
    job_ids: tuple[str, ...] = ()

    def waiting_for(self) -> dict[str, Any]:
        """The job's `waiting_for` object (times as epoch seconds; the API shows RFC 3339)."""
        return {"kind": str(self.kind), "name": self.name, "until": self.until}


class Suspend(BaseException):
    """Raised inside a task by a call that parks it; the executor turns it into a SUSPENDED
    outcome. A BaseException so `except Exception` in task code does not swallow it."""

    def __init__(self, park: Park) -> None:
        self.park = park
        super().__init__(f"parked: {park.kind} {park.name!r}")


@dataclass(frozen=True, slots=True)
class Outcome:
    """An attempt's ending with what `decide` needs to know about it."""

    ending: Ending
    result_json: str | None = None
    exc: BaseException | None = None  # FAILED / RETRY_LATER: what the task raised
    error: ErrorInfo | None = None
    started: bool = True  # RELEASED: False when the task's code never ran
    cancel_requested: bool = False  # CRASHED: a cancel was asked before the crash
    note: str = ""  # CRASHED / RELEASED: why, for the error message
    park: Park | None = None  # SUSPENDED: what the job waits for

    @classmethod
    def completed(cls, result_json: str) -> Outcome:
        return cls(Ending.COMPLETED, result_json=result_json)

    @classmethod
    def raised(cls, exc: BaseException) -> Outcome:
        """The task raised `exc` (FAILED, or RETRY_LATER for `Retry`)."""
        ending = Ending.RETRY_LATER if isinstance(exc, Retry) else Ending.FAILED
        return cls(ending, exc=exc, error=error_info(exc))

    @classmethod
    def cancelled(cls) -> Outcome:
        return cls(Ending.CANCELLED)

    @classmethod
    def released(cls, started: bool, note: str = "") -> Outcome:
        return cls(Ending.RELEASED, started=started, note=note)

    @classmethod
    def crashed(cls, cancel_requested: bool, note: str = "its worker stopped heartbeating") -> Outcome:
        return cls(Ending.CRASHED, cancel_requested=cancel_requested, note=note)

    @classmethod
    def stale(cls) -> Outcome:
        return cls(Ending.STALE)

    @classmethod
    def suspended(cls, park: Park) -> Outcome:
        return cls(Ending.SUSPENDED, park=park)


@dataclass(frozen=True, slots=True)
class AttemptFacts:
    """What `decide` reads about the job whose attempt ended."""

    job_id: str
    run_seq: int  # the fencing token of the attempt
    attempt: int  # this attempt's number, from 1
    max_attempts: int


@dataclass(frozen=True, slots=True)
class Transition:
    """A decided change of one running job; the store applies it only while the row
    still carries `run_seq` and is running (fencing)."""

    job_id: str
    run_seq: int
    ending: Ending
    status: Status
    at: float
    run_at: float | None = None  # PENDING: when the next attempt is due
    result_json: str | None = None
    error: ErrorInfo | None = None  # None keeps the stored error (a put-back changes none)
    counts_attempt: bool = True  # False: the cut attempt is given back
    park: Park | None = None  # WAITING: what for

    @property
    def finished(self) -> bool:
        return self.status in FINISHED


def cancelled_error() -> ErrorInfo:
    """The `error` of every cancelled job, running or not when the cancel came: one check of
    `error.type` tells a client (or a gathering parent) why it ended."""
    return _error("Cancelled", "the job was cancelled")


def cancelled_instead(t: Transition) -> Transition:
    """A run that would park its job, retry it or put it back, and finds a cancel asked while it
    ran (one the task did not stop for, or raised its own error at), ends the job cancelled."""
    return Transition(
        t.job_id, t.run_seq, Ending.CANCELLED, Status.CANCELLED, t.at,
        error=cancelled_error(),
    )  # fmt: skip


def error_info(exc: BaseException, type_name: str | None = None) -> ErrorInfo:
    """The job's `error` object for an exception."""
    return {
        "type": type_name or type(exc).__name__,
        "message": str(exc) or type(exc).__name__,
        "traceback": formatted_traceback(exc),
    }


def formatted_traceback(exc: BaseException) -> str:
    """The exception's traceback as Python prints it.

    CPython 3.11 marks each frame's columns by parsing its line, and `ast` there can fail with
    SystemError ("AST constructor recursion depth mismatch", CPython gh-106905) when threads
    parse at once: the frames are then printed without the marks, which parse nothing."""
    try:
        return "".join(traceback.format_exception(exc))
    except SystemError:
        frames = traceback.StackSummary.extract(traceback.walk_tb(exc.__traceback__))
        for frame in frames:
            frame.colno = frame.end_colno = None
        return "".join(
            ["Traceback (most recent call last):\n", *frames.format(), *traceback.format_exception_only(exc)]
        )


def _error(type_name: str, message: str) -> ErrorInfo:
    return {"type": type_name, "message": message, "traceback": None}


def backoff_s(options: TaskOptions, attempt: int, jitter: float) -> float:
    """Full jitter: a wait up to min(cap, base * 2**(attempt-1)); `jitter` is in [0, 1)."""
    base, cap = options.backoff
    return float(jitter * min(cap, base * 2 ** (attempt - 1)))


def _covers_all(options: TaskOptions) -> bool:
    """A `retry_on` that takes every exception also takes a `Timeout`: that one is a BaseException
    only so that a task's `except Exception` cannot swallow it. A narrower `retry_on` retries a
    timed-out attempt only when it names `Timeout` (a paid call cut off may have been charged)."""
    return any(issubclass(Exception, kind) for kind in options.retry_on)


def _retry_at(
    outcome: Outcome, job: AttemptFacts, options: TaskOptions | None, now: float, jitter: float
) -> float | None:
    """When the next attempt after a failure runs, or None when the job has failed for good."""
    exc = outcome.exc
    if options is None or isinstance(exc, Fail) or job.attempt >= job.max_attempts:
        return None
    if isinstance(exc, Retry):
        if exc.delay is not None:
            return now + max(0.0, exc.delay)
    elif not isinstance(exc, options.retry_on) and not (isinstance(exc, Timeout) and _covers_all(options)):
        return None
    return now + backoff_s(options, job.attempt, jitter)


def decide(
    outcome: Outcome, job: AttemptFacts, options: TaskOptions | None, now: float, jitter: float
) -> Transition | None:
    """The next state of a job whose attempt ended; None when nothing may be written.

    `options` is None for a task this process does not know; `jitter` is a random
    number in [0, 1) for the backoff."""

    def to(status: Status, **fields: Any) -> Transition:
        return Transition(job.job_id, job.run_seq, outcome.ending, status, now, **fields)

    match outcome.ending:
        case Ending.STALE:
            return None
        case Ending.COMPLETED:
            return to(Status.COMPLETED, result_json=outcome.result_json)
        case Ending.CANCELLED:
            return to(Status.CANCELLED, error=cancelled_error())
        case Ending.SUSPENDED:
            return to(Status.WAITING, park=outcome.park, counts_attempt=False)
        case Ending.RELEASED:
            at_most_once = options is not None and options.on_crash == "fail"
            if outcome.started and at_most_once:
                message = f"the server shut down while attempt {job.attempt} ran{outcome.note}; the task runs at most once"
                return to(Status.FAILED, error=_error("Interrupted", message))
            return to(Status.PENDING, run_at=now, counts_attempt=False)
        case Ending.CRASHED:
            if outcome.cancel_requested:
                return to(Status.CANCELLED, error=cancelled_error())
            crash = _error("Crashed", f"attempt {job.attempt} was cut off ({outcome.note})")
            at_most_once = options is not None and options.on_crash == "fail"
            if at_most_once or job.attempt >= max(job.max_attempts, MIN_CRASH_ATTEMPTS):
                return to(Status.FAILED, error=crash)
            return to(Status.PENDING, run_at=now, error=crash)
        case Ending.FAILED | Ending.RETRY_LATER:
            retry_at = _retry_at(outcome, job, options, now, jitter)
            if retry_at is None and isinstance(outcome.exc, Retry) and outcome.error is not None:
                # say why the asked-for attempt never comes (the default is one attempt)
                spent = f"; no attempt is left (attempt {job.attempt} of max_attempts {job.max_attempts})"
                return to(Status.FAILED, error={**outcome.error, "message": outcome.error["message"] + spent})
            if retry_at is None:
                return to(Status.FAILED, error=outcome.error)
            return to(Status.PENDING, run_at=retry_at, error=outcome.error)
