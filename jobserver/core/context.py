"""JobContext: what a running task sees of its job (progress, log, cancel, steps).

The context is a thin face over the runner's attempt, which owns the fencing
token and the cancel flag; `AttemptHandle` is what the context needs of it.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from jobserver.core.errors import Cancelled
from jobserver.core.records import Claim


class AttemptHandle(Protocol):
    """The running attempt behind a context."""

    claim: Claim
    is_async: bool
    stop_requested: threading.Event

    @property
    def stop_reason(self) -> str | None: ...

    def report_progress(self, current: float, total: float | None, message: str | None) -> None: ...

    def report_log(self, message: str) -> None: ...

    def report_usage(self, key: str, units: float) -> None: ...

    def step_sync(
        self, name: str, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any: ...

    def step_async(
        self, name: str, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Awaitable[Any]: ...


class JobContext:
    """Passed to a task's parameter annotated `JobContext`."""

    def __init__(self, attempt: AttemptHandle) -> None:
        self._attempt = attempt

    @property
    def job_id(self) -> str:
        """The job's id."""
        return self._attempt.claim.job_id

    @property
    def attempt(self) -> int:
        """This attempt's number, starting at 1."""
        return self._attempt.claim.attempt

    @property
    def cancelled(self) -> bool:
        """True once cancellation was asked (or the time limit passed)."""
        return self._attempt.stop_requested.is_set()

    def check_cancelled(self) -> None:
        """Raise `Cancelled` if the job should stop."""
        if self._attempt.stop_requested.is_set():
            raise Cancelled(self._attempt.stop_reason or "cancelled")

    def progress(self, current: float, total: float | None = None, message: str | None = None) -> None:
        """Report progress; coalesced, so calling it often is cheap."""
        self._attempt.report_progress(current, total, message)

    def log(self, message: str) -> None:
        """Append a log line, streamed to watchers of the job's events."""
        self._attempt.report_log(str(message))

    def report_usage(self, key: str, units: float) -> None:
        """Settle a rate limit's charge for this attempt with the real usage once known (the
        difference to the estimated cost is charged or given back)."""
        self._attempt.report_usage(key, units)

    def step(self, name: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run `fn` once per job and return its JSON result; later attempts get the stored value.

        In an async task, await it: `await ctx.step(...)`."""
        if self._attempt.is_async:
            return self._attempt.step_async(name, fn, args, kwargs)
        if inspect.iscoroutinefunction(fn):
            return self._attempt.step_sync(name, lambda *a, **k: asyncio.run(fn(*a, **k)), args, kwargs)
        return self._attempt.step_sync(name, fn, args, kwargs)
