"""JobContext: what a running task sees of its job (progress, log, cancel, steps,
and the durable calls of agent workflows: sleep, wait_for, spawn, gather).

The context is a thin face over the runner's attempt, which owns the fencing
token and the cancel flag; `AttemptHandle` is what the context needs of it.
A durable call is a generator of writes the attempt drives: on the worker
thread in a sync task, awaited in an async one; the same code serves both.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import Awaitable, Callable, Generator, Iterable, Sequence
from typing import Any, Protocol

from jobserver.core.bounds import MAX_BATCH
from jobserver.core.errors import Cancelled, Fail
from jobserver.core.records import Claim

Calls = Generator[Any, Any, Any]


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

    def drive_sync(self, calls: Calls) -> Any: ...

    def drive_async(self, calls: Calls) -> Awaitable[Any]: ...

    def sleep_calls(self, name: str, seconds: float) -> Calls: ...

    def wait_for_calls(self, name: str, timeout: float | None) -> Calls: ...

    def spawn_calls(
        self, name: str, task: str, many_args: Sequence[dict[str, Any]], options: dict[str, Any], one: bool
    ) -> Calls: ...

    def gather_calls(self, name: str, ids: Sequence[str], return_exceptions: bool) -> Calls: ...


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

    def step(self, name: str, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Run `fn` once per job and return its JSON result; later attempts get the stored value.
        `name` and `fn` are positional, so `fn`'s own keywords may use those names.

        In an async task, await it: `await ctx.step(...)`."""
        if self._attempt.is_async:
            return self._attempt.step_async(name, fn, args, kwargs)
        if inspect.iscoroutinefunction(fn):
            return self._attempt.step_sync(name, lambda *a, **k: asyncio.run(fn(*a, **k)), args, kwargs)
        return self._attempt.step_sync(name, fn, args, kwargs)

    # ------------------------------------------------------- agent workflows
    def _drive(self, calls: Calls) -> Any:
        if self._attempt.is_async:
            return self._attempt.drive_async(calls)
        return self._attempt.drive_sync(calls)

    def sleep(self, name: str, seconds: float) -> Any:
        """Sleep durably: the job parks (no thread, lease or slot) and runs again from the top
        once `seconds` have passed, even across restarts. Returns None."""
        return self._drive(self._attempt.sleep_calls(name, seconds))

    def wait_for(self, name: str, timeout: float | None = None) -> Any:
        """The JSON payload of the signal `name` sent to this job (parking until it comes), or
        None when `timeout` seconds pass first. A signal sent earlier is returned at once."""
        return self._drive(self._attempt.wait_for_calls(name, timeout))

    def spawn(self, name: str, task: str, args: dict[str, Any] | None = None, **options: Any) -> Any:
        """Submit a child job (options: priority, max_attempts, timeout, delay); its id.
        A rerun returns the same id and submits nothing."""
        return self._drive(self._attempt.spawn_calls(name, task, [args or {}], options, True))

    def spawn_many(self, name: str, task: str, list_of_args: Iterable[dict[str, Any]], **options: Any) -> Any:
        """Submit one child per args (a list, or any iterable: a generator too) in one
        transaction; their ids, in order.

        At most MAX_BATCH children a call, as a batch submit: one transaction holds the
        writer, and every submit waits behind it. More fail the job at once (no retry)."""
        many_args = list(list_of_args)
        if len(many_args) > MAX_BATCH:
            raise Fail(
                f"spawn_many {name!r} of {len(many_args)} children: at most {MAX_BATCH} in one call; "
                "split them over several calls with names of their own"
            )
        return self._drive(self._attempt.spawn_calls(name, task, many_args, options, False))

    def gather(self, name: str, ids: Sequence[str], return_exceptions: bool = False) -> Any:
        """The results of the jobs `ids`, in order, once every one is finished (the job parks
        until then). A failed or cancelled one raises `ChildFailed`, or with
        `return_exceptions=True` takes its place in the list."""
        return self._drive(self._attempt.gather_calls(name, ids, return_exceptions))
