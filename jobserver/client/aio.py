"""The async twin of `jobserver.client.sdk.Client`: the same methods with the same
arguments, awaited, over an `httpx.AsyncClient`; `events()` is an async iterator.

    async with AsyncClient("http://127.0.0.1:8000") as client:
        job = await client.submit("jobserver.examples.add", {"a": 2, "b": 3})
        done = await client.wait(job["id"], timeout=30)

Each call is the same generator from `jobserver.client.protocol` the sync client drives,
so the two cannot drift apart; errors, retries and event resumption are the same too
(see the `jobserver.client.sdk` docstring).
"""

from __future__ import annotations

import asyncio
import builtins
import time
import weakref
from collections.abc import AsyncIterator, Iterable
from types import TracebackType
from typing import Any, Literal, TypeVar

import httpx

from jobserver.client import protocol
from jobserver.client.protocol import DEFAULT_RECONNECT_FOR_S, Event, Exchange, Job, Request, error_for
from jobserver.client.transport import (
    DEFAULT_RETRIES,
    DEFAULT_URL,
    HTTP_LIMITS,
    Connection,
    EventResumer,
)
from jobserver.core.errors import DrainingError

T = TypeVar("T")


class AsyncClient:
    """An asyncio client for one jobserver.

    `transport` is passed to the httpx.AsyncClient this creates (for example an
    `httpx.ASGITransport` on an app in the same process). Pass `http_client` to use your
    own httpx.AsyncClient instead: when it has a base_url that wins over `url`, and
    `aclose()` leaves it open. `retries` bounds the resends after a connection failure
    (only where a resend is safe).
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        api_key: str | None = None,
        timeout: float = 30,
        transport: httpx.AsyncBaseTransport | None = None,
        http_client: httpx.AsyncClient | None = None,
        retries: int = DEFAULT_RETRIES,
    ) -> None:
        self._conn = Connection(url, api_key, timeout, retries)
        self.url, self.api_key, self.timeout_s = self._conn.url, api_key, self._conn.timeout_s
        self._transport = transport
        self._given_http = http_client
        self._pools: dict[asyncio.AbstractEventLoop, httpx.AsyncClient] = {}
        # loops in which aclose() ran: a watch still open there must not reopen a pool
        self._closed_in: weakref.WeakSet[asyncio.AbstractEventLoop] = weakref.WeakSet()
        self._prefix = "" if http_client is None or str(http_client.base_url) else self.url

    # ------------------------------------------------------------ plumbing
    def _new_http(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.url, timeout=self.timeout_s, transport=self._transport, limits=HTTP_LIMITS
        )

    def _loop_http(self) -> httpx.AsyncClient:
        """The httpx client for the running event loop. Pooled connections belong to the loop
        that opened them, so each loop gets a pool of its own: a client made at module level
        serves one `asyncio.run` after another, and threads that each run a loop at the same
        time. A closed loop's pool is dropped (its sockets went with it). An `http_client`
        passed in is the caller's to manage."""
        if self._given_http is not None:
            return self._given_http
        loop = asyncio.get_running_loop()
        if loop in self._closed_in:
            raise RuntimeError("this AsyncClient was closed (aclose) in this event loop")
        pool = self._pools.get(loop)
        if pool is None:
            for closed in [other for other in self._pools if other.is_closed()]:
                self._pools.pop(closed, None)
            pool = self._pools[loop] = self._new_http()
        return pool

    async def _send(self, req: Request) -> httpx.Response:
        failures, waited_s, failing_since = 0, 0.0, 0.0
        while True:
            try:
                response = await self._loop_http().request(
                    req.method,
                    self._prefix + req.path,
                    timeout=self._conn.timeout(req),
                    **self._conn.kwargs(req),
                )
            except httpx.TransportError as exc:
                failures += 1
                if failures == 1:
                    failing_since = time.monotonic()
                await asyncio.sleep(
                    self._conn.retry_delay_s(req, failures, exc, time.monotonic() - failing_since)
                )
                continue
            wait_s = self._conn.in_flight_wait_s(req, response, waited_s)
            if wait_s is not None:
                waited_s += wait_s
                await asyncio.sleep(wait_s)
                continue
            return self._conn.checked(response, req.call)

    async def _run(self, exchange: Exchange[T]) -> T:
        req = next(exchange)
        while True:
            try:
                req = exchange.send(await self._send(req))
            except StopIteration as done:
                result: T = done.value
                return result

    # ------------------------------------------------------------ jobs
    async def submit(
        self,
        task: str,
        args: dict[str, Any] | None = None,
        *,
        priority: int | None = None,
        delay: float | None = None,
        run_at: Any = None,
        max_attempts: int | None = None,
        timeout: float | None = None,
        webhook_url: str | None = None,
        idempotency_key: str | None = None,
    ) -> Job:
        """Submit a job; the returned `Job` has `replayed` True for an Idempotency-Key replay.

        `run_at` is an aware datetime or an RFC 3339 string; give it or `delay`, not both.
        Resent after a dropped connection only when it carries an `idempotency_key`.
        """
        options = {"priority": priority, "delay": delay, "run_at": run_at, "max_attempts": max_attempts}
        options.update(timeout=timeout, webhook_url=webhook_url)
        return await self._run(protocol.submit(task, args, options, idempotency_key))

    async def submit_many(self, jobs: Iterable[dict[str, Any]]) -> builtins.list[Job]:
        """Submit up to 1,000 jobs in one transaction, all or none (`POST /jobs/batch`).

        Each item is a submit body (`task`, `args`, options) and may carry its own
        `idempotency_key` (a key used before with the same body gives the first job, marked
        `replayed`). A bad
        item raises InvalidRequestError whose `errors` name it by index
        (`["body", "jobs", 3, "args", "x"]`), and nothing is queued."""
        return await self._run(protocol.submit_many(jobs))

    async def signal(self, job_id: str, name: str, payload: Any = None) -> Job:
        """Send the signal `name` with a JSON payload to a job; a job waiting for it runs again.

        The same name again with an equal payload is accepted (`replayed` True); with another
        payload it raises SignalConflictError, on a finished job JobFinishedError, and when
        the job's wait for it is over (timed out) SignalNotAwaitedError."""
        return await self._run(protocol.signal(job_id, name, payload))

    async def get(self, job_id: str, wait: float | None = None) -> dict[str, Any]:
        """Read a job; with `wait` (at most 60 s) the server holds the answer until it is finished."""
        return await self._run(protocol.get(job_id, wait, self.timeout_s))

    async def wait(self, job_id: str, timeout: float | None = None) -> dict[str, Any]:
        """Block until the job is finished (the job); WaitTimeoutError after `timeout` seconds (None: no limit).

        Once this client has had an answer from the server, a restart of the server meanwhile
        is waited for (up to 30 s of refused polls, within `timeout`)."""
        return await self._run(protocol.wait(job_id, timeout, self.timeout_s))

    async def list(
        self,
        status: str | None = None,
        task: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
        parent: str | None = None,
        idempotency_key: str | None = None,
        fields: Literal["full", "summary"] | None = None,
    ) -> dict[str, Any]:
        """One page, newest first: `{"jobs": [...], "next_cursor": str | None}`; `parent` lists
        the children of that job, `idempotency_key` the job submitted under that key (with this
        client's API key); `fields="summary"` leaves out each job's args, result and traceback."""
        query = {
            "status": status,
            "task": task,
            "limit": limit,
            "cursor": cursor,
            "parent": parent,
            "idempotency_key": idempotency_key,
            "fields": fields,
        }
        return await self._run(protocol.list_jobs(query))

    async def cancel(self, job_id: str) -> dict[str, Any]:
        """Cancel a pending job at once, or ask a running one to stop; JobFinishedError when finished."""
        return await self._run(protocol.job_action("cancel", job_id))

    async def retry(self, job_id: str, idempotency_key: str | None = None) -> Job:
        """Run a failed or cancelled job again; JobNotRetryableError otherwise. With
        `idempotency_key`, a resend (after a lost answer) starts no second round: the job comes
        back as it is, `replayed`."""
        return await self._run(protocol.retry(job_id, idempotency_key))

    async def delete(self, job_id: str) -> None:
        """Forget a finished job; JobNotFinishedError otherwise."""
        await self._run(protocol.delete(job_id))

    async def tasks(self) -> builtins.list[dict[str, Any]]:
        """The registered tasks: name, description, args_schema, options, paused."""
        return await self._run(protocol.tasks())

    async def task_overview(self) -> dict[str, Any]:
        """`{"tasks": [...], "unknown_tasks": [{"name", "pending"}]}`: the registered tasks, and
        the tasks that jobs wait for though the server registers none of that name."""
        return await self._run(protocol.task_overview())

    async def webhooks(self, job_id: str) -> builtins.list[dict[str, Any]]:
        """The job's webhook delivery attempts, oldest first: attempt, at, status_code, error, duration_ms."""
        return await self._run(protocol.webhooks(job_id))

    async def limits(self) -> builtins.list[dict[str, Any]]:
        """Every limit key: its kind, limit, `per` window, current use and the jobs it holds back."""
        return await self._run(protocol.limits())

    async def schedules(self) -> builtins.list[dict[str, Any]]:
        """Every schedule: name, task, cron, timezone, args, catch_up, paused, next/last run."""
        return await self._run(protocol.schedules())

    async def schedule(self, name: str) -> dict[str, Any]:
        """One schedule; ScheduleNotFoundError when there is none."""
        return await self._run(protocol.schedule(name))

    async def put_schedule(
        self,
        name: str,
        task: str,
        cron: str,
        args: dict[str, Any] | None = None,
        *,
        timezone: str = "UTC",
        catch_up: bool = True,
    ) -> dict[str, Any]:
        """Create or replace a schedule (five-field cron in an IANA time zone); the stored schedule."""
        body = {"task": task, "cron": cron, "timezone": timezone, "args": args or {}, "catch_up": catch_up}
        return await self._run(protocol.put_schedule(name, body))

    async def delete_schedule(self, name: str) -> None:
        """Remove a schedule (its jobs stay); ScheduleNotFoundError when there is none."""
        await self._run(protocol.delete_schedule(name))

    async def pause_schedule(self, name: str) -> dict[str, Any]:
        """Stop a schedule's ticks."""
        return await self._run(protocol.schedule_action("pause", name))

    async def resume_schedule(self, name: str) -> dict[str, Any]:
        """Tick again, from the next tick after now."""
        return await self._run(protocol.schedule_action("resume", name))

    async def pause_task(self, task: str) -> dict[str, Any]:
        """Hold the task's pending jobs back (running ones finish); TaskNotFoundError for an unknown task."""
        return await self._run(protocol.task_action("pause", task))

    async def resume_task(self, task: str) -> dict[str, Any]:
        """Let the task's jobs run again."""
        return await self._run(protocol.task_action("resume", task))

    async def cancel_many(
        self,
        status: str | None = None,
        task: str | None = None,
        ids: Iterable[str] | None = None,
        *,
        all_jobs: bool = False,
    ) -> int:
        """Cancel every matching job (pending at once, running asked to stop); how many.

        Without a filter, `all_jobs=True` says every job is meant."""
        return await self._run(protocol.bulk("cancel", status, task, ids, all_jobs))

    async def retry_many(
        self,
        status: str | None = None,
        task: str | None = None,
        ids: Iterable[str] | None = None,
        *,
        all_jobs: bool = False,
    ) -> int:
        """Retry every matching failed or cancelled job; how many.

        Without a filter, `all_jobs=True` says every job is meant."""
        return await self._run(protocol.bulk("retry", status, task, ids, all_jobs))

    async def delete_many(
        self,
        status: str | None = None,
        task: str | None = None,
        ids: Iterable[str] | None = None,
        *,
        all_jobs: bool = False,
    ) -> int:
        """Delete every matching finished job (unfinished ones are left alone); how many.

        Without a filter, `all_jobs=True` says every job is meant."""
        return await self._run(protocol.bulk("delete", status, task, ids, all_jobs))

    async def stats(self, task: str | None = None) -> dict[str, Any]:
        """Counts by status and task, and the last hour's throughput and failure rate (with
        `task`, the last hour of that task's jobs alone)."""
        return await self._run(protocol.stats(task))

    async def iter_jobs(
        self,
        status: str | None = None,
        task: str | None = None,
        page_size: int = 50,
        cursor: str | None = None,
        parent: str | None = None,
    ) -> AsyncIterator[dict[str, Any]]:
        """Every matching job, newest first, fetching pages of `page_size` as needed."""
        while True:
            page = await self.list(status=status, task=task, limit=page_size, cursor=cursor, parent=parent)
            for job in page["jobs"]:
                yield job
            cursor = page.get("next_cursor")
            if not cursor:
                return

    async def events(
        self,
        job_id: str,
        last_event_id: str | int | None = None,
        *,
        follow: bool = True,
        reconnect_for: float = DEFAULT_RECONNECT_FOR_S,
    ) -> AsyncIterator[Event]:
        """The job's events (stored ones first, then live) until its terminal `status` event.

        A dropped connection is resumed with `Last-Event-ID`, so no event is lost or repeated;
        pass the last `Event.id` seen to resume a stream of your own. `follow=False` gives the
        stored events only, without waiting for more. Once it has had an event, a server that
        drains, stops and starts again is waited for: reconnecting goes on for `reconnect_for`
        seconds from the first failed try (and the client's `retries` after that) before
        ServerUnavailableError.
        """
        resumer = EventResumer(self._conn, job_id, last_event_id, follow, reconnect_for)
        while True:
            req = resumer.request()
            try:
                async for event in self._stream(req, resumer):
                    yield event
            except (httpx.TransportError, DrainingError) as exc:
                await asyncio.sleep(resumer.dropped(req, exc))
                continue
            if resumer.over():
                return

    async def _stream(self, req: Request, resumer: EventResumer) -> AsyncIterator[Event]:
        url = self._prefix + req.path
        kwargs = self._conn.kwargs(req)
        async with self._loop_http().stream(
            "GET", url, timeout=self._conn.stream_timeout(), **kwargs
        ) as response:
            if not response.is_success:
                await response.aread()
                raise error_for(response, req.call)
            decoder = protocol.SSEDecoder()
            async for line in response.aiter_lines():
                event = decoder.feed(line)
                if event is not None:
                    resumer.seen(event)
                    yield event

    # ------------------------------------------------------------ lifetime
    async def aclose(self) -> None:
        """Close the running loop's connection pool (not an `http_client` that was passed in).
        Calls in this loop then raise RuntimeError, as httpx's do, a watch still open among
        them: reconnecting would open a pool that nothing closes. Another loop gets a new one."""
        if self._given_http is None:
            loop = asyncio.get_running_loop()
            self._closed_in.add(loop)
            pool = self._pools.pop(loop, None)
            if pool is not None:
                await pool.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()
