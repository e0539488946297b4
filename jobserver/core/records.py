"""Typed records read from or written to the job table, and their API form.

Owns the column list, the row -> `JobRecord` mapping and the contract's job
object.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from jobserver.core.clock import rfc3339
from jobserver.core.lifecycle import FINISHED
from jobserver.core.schedules import schedule_of

JOB_COLUMNS = (
    "id, task, args, status, priority, attempts, max_attempts, timeout_s, run_seq, lease_owner, "
    "lease_expires_at, cancel_requested, logs_dropped, progress, result, error, idempotency_key, "
    "webhook_url, created_at, run_at, started_at, finished_at, parent_id, waiting_for, wake_at, "
    "resume, trace_context, limits, blocked_by"
)
# internal statuses of a job the API shows as pending: delayed, and held back by a limit
WAITING_TO_RUN = frozenset({"pending", "scheduled", "blocked"})


def _loads(text: str | None) -> Any:
    return None if text is None else orjson.loads(text)


def _fragment(text: str | None) -> Any:
    """Stored JSON, embedded as it is in a document orjson writes."""
    return None if text is None else orjson.Fragment(text)


@dataclass(slots=True, unsafe_hash=True)
class JobRecord:
    """One row of the job table. Never changed once made; not declared frozen only because a
    frozen dataclass sets each field through `object.__setattr__`, which made building one ten
    times slower (2.1 µs against 0.2), and a job makes three or four of them."""

    id: str
    task: str
    args: str
    status: str
    priority: int
    attempts: int
    max_attempts: int
    timeout_s: float | None
    run_seq: int
    lease_owner: str | None
    lease_expires_at: float | None
    cancel_requested: int
    logs_dropped: int
    progress: str | None
    result: str | None
    error: str | None
    idempotency_key: str | None
    webhook_url: str | None
    created_at: float
    run_at: float
    started_at: float | None
    finished_at: float | None
    parent_id: str | None
    waiting_for: str | None  # JSON {"kind", "name", "until"} while waiting
    wake_at: float | None  # a waiting job's wake-up time (sleep end, wait timeout)
    resume: int  # 1: the next claim resumes a parked run (not counted as an attempt)
    trace_context: str | None = None  # the submit's trace context (tracing), JSON
    limits: str | None = None  # the job's limits bound to its args (JSON), fixed at submit
    blocked_by: str | None = None  # the limit key that holds the job back, while it does
    # the job object as JSON, made once: a new job's status event and the submit's answer share it
    _json: bytes | None = field(default=None, init=False, repr=False, compare=False)

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> JobRecord:
        """Build from a row selected with JOB_COLUMNS."""
        return cls(*row)

    def _waiting_for(self) -> dict[str, Any] | None:
        """`{"kind", "name", "until"}` while waiting (until as RFC 3339), else None."""
        if self.status != "waiting" or self.waiting_for is None:
            return None
        data: dict[str, Any] = orjson.loads(self.waiting_for)
        return {**data, "until": rfc3339(data.get("until"))}

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    def to_api(self) -> dict[str, Any]:
        """The contract's job object."""
        return self._api(_loads)

    def summary(self) -> dict[str, Any]:
        """The job object for lists: without `args`, `result` and the error's traceback, which
        can be large and which a list does not show. The other stored JSON goes in unparsed."""
        data = self._api(_fragment)
        del data["args"], data["result"]
        error = _loads(self.error)
        data["error"] = (
            {k: v for k, v in error.items() if k != "traceback"} if isinstance(error, dict) else error
        )
        return data

    def api_json(self) -> bytes:
        """The job object as JSON, made once per record. The stored JSON columns (args,
        progress, result, error) go in as they are, never parsed and written again: each
        status event and each submit's answer is one of these."""
        if self._json is None:
            self._json = orjson.dumps(self._api(_fragment))
        return self._json

    def _api(self, loads: Callable[[str | None], Any]) -> dict[str, Any]:
        return {
            "id": self.id,
            "task": self.task,
            "args": loads(self.args),
            "status": "pending" if self.status in WAITING_TO_RUN else self.status,
            "priority": self.priority,
            "attempts": self.attempts,
            "max_attempts": self.max_attempts,
            "timeout": self.timeout_s,
            "progress": loads(self.progress),
            "result": loads(self.result),
            "error": loads(self.error),
            "cancel_requested": bool(self.cancel_requested),
            "logs_dropped": self.logs_dropped,
            "idempotency_key": self.idempotency_key,
            "schedule": schedule_of(self.idempotency_key),  # the schedule whose tick submitted it
            "webhook_url": self.webhook_url,
            "created_at": rfc3339(self.created_at),
            "run_at": rfc3339(self.run_at),
            "started_at": rfc3339(self.started_at),
            "finished_at": rfc3339(self.finished_at),
            "parent_id": self.parent_id,
            "waiting_for": self._waiting_for(),
            "blocked_by": self.blocked_by,
        }


@dataclass(frozen=True, slots=True)
class NewJob:
    """A validated submission, ready to insert."""

    id: str
    task: str
    args_json: str
    priority: int
    max_attempts: int
    timeout_s: float | None
    webhook_url: str | None
    idempotency_key: str | None
    created_at: float
    run_at: float
    parent_id: str | None = None
    trace_context: str | None = None
    limits: str | None = None

    @property
    def status(self) -> str:
        """'scheduled' (internal) when run_at is ahead of the submit, else 'pending'."""
        return "scheduled" if self.run_at > self.created_at else "pending"

    def record(self) -> JobRecord:
        """The row as inserted (saves reading it back)."""
        return JobRecord(
            self.id,
            self.task,
            self.args_json,
            self.status,
            self.priority,
            0,
            self.max_attempts,
            self.timeout_s,
            0,
            None,
            None,
            0,
            0,
            None,
            None,
            None,
            self.idempotency_key,
            self.webhook_url,
            self.created_at,
            self.run_at,
            None,
            None,
            self.parent_id,
            None,
            None,
            0,
            self.trace_context,
            self.limits,
        )


@dataclass(frozen=True, slots=True)
class Claim:
    """A job taken by a worker for one attempt; `run_seq` fences its writes."""

    job_id: str
    task: str
    args_json: str
    attempt: int
    max_attempts: int
    run_seq: int
    timeout_s: float | None
    started_at: float
    run_at: float | None = None  # when the attempt was due (queue-wait metric)
    trace_context: str | None = None  # the submit's trace context, continued by the attempt's span
    limits: str | None = None  # the limits the attempt holds (for ctx.report_usage)

    @classmethod
    def of(cls, rec: JobRecord, started_at: float) -> Claim:
        """The claim of a row just marked running (its `attempts` and `run_seq` already moved on)."""
        return cls(
            rec.id, rec.task, rec.args, rec.attempts, rec.max_attempts, rec.run_seq, rec.timeout_s,
            started_at, rec.run_at, rec.trace_context, rec.limits,
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class HandOff:
    """Lets a submit's own transaction claim the new job for an idle worker (saves a round trip)."""

    owner: str
    lease_s: float
    accept: Any  # (tx, job_id, task) -> bool, on the writer thread; reserves the slot
    deliver: Any  # (claim) -> None, after the commit


class JobIds:
    """Opaque ids that sort by creation time: UUIDv7 layout, strictly increasing per process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last = 0

    def new(self) -> str:
        """A fresh id."""
        with self._lock:
            ms = int(time.time() * 1000) << 12
            self._last = ms if ms > self._last else self._last + 1
            stamp = self._last
        ts_ms, seq = stamp >> 12, stamp & 0xFFF
        rand = int.from_bytes(os.urandom(8), "big") & 0x3FFFFFFFFFFFFFFF
        value = (ts_ms << 80) | (0x7 << 76) | (seq << 64) | (0b10 << 62) | rand
        h = f"{value:032x}"
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
