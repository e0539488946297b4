"""A small Python SDK for the jobserver HTTP API, on httpx: `Client` (sync) and `AsyncClient`.

    from jobserver.client.sdk import Client

    with Client("http://127.0.0.1:8000", api_key="k1") as client:
        job = client.submit("jobserver.examples.add", {"a": 2, "b": 3}, idempotency_key="order-42")
        done = client.wait(job["id"], timeout=30)
        print(done["status"], done["result"])

    async with AsyncClient("http://127.0.0.1:8000") as client:
        job = await client.submit("jobserver.examples.add", {"a": 2, "b": 3})
        async for event in client.events(job["id"]):
            print(event.event, event.data)

Both clients have the same methods, with the same arguments; each call is written once in
`jobserver.client.protocol` and driven here over a blocking or an async httpx client.

Jobs are plain dicts: the contract's job object. `submit` returns a `Job`, a dict
whose `replayed` attribute is True when the server answered with the job first
created under the same Idempotency-Key (200 + `Idempotent-Replayed: true`)
instead of queuing a new one (202).

Errors: the `code` of a problem document maps back to the server's exception
classes from `jobserver.core.errors` (JobNotFoundError, TaskNotFoundError,
InvalidRequestError with `.errors`, WebhookURLError, IdempotencyMismatchError,
the ConflictError subclasses, DrainingError, StorageError, ScheduleNotFoundError; an
unknown task in a pause or resume is TaskNotFoundError too). A 401 raises
`UnauthorizedError`, whose message and `key_sent` tell a missing key from a refused one.
Every other error answer (400, 413, 415, an unknown route, a 5xx, a body that is not a
problem document) raises `ClientError`. Each of these carries `status_code`, `problem`
(the parsed document) and `retry_after` (seconds, or None). A server that cannot be
reached or stops answering raises `ServerUnavailableError` (the httpx error is its
`__cause__`; for an event stream refused by a server shutting down, its DrainingError),
after a few short retries where sending twice is safe: GETs, submits
with an Idempotency-Key, and any request whose connection could not be made. The watches
(`events()`, `wait()`) of a server that answered before try for longer: a restart drains,
stops and starts it again. `wait(id, timeout=...)` raises `WaitTimeoutError` (with the job
as last read in `.job`) when the job is not finished in time.

Owns nothing but HTTP.
"""

from __future__ import annotations

import builtins
import time
from collections.abc import Iterable, Iterator
from types import TracebackType
from typing import Any, Literal, TypeVar

import httpx

from jobserver.client import protocol
from jobserver.client.aio import AsyncClient
from jobserver.client.protocol import (
    DEFAULT_RECONNECT_FOR_S,
    ClientError,
    Event,
    Exchange,
    Job,
    Request,
    UnauthorizedError,
    error_for,
    parse_sse,
)
from jobserver.client.transport import (
    DEFAULT_RETRIES,
    DEFAULT_URL,
    HTTP_LIMITS,
    Connection,
    EventResumer,
)
from jobserver.core.errors import DrainingError

__all__ = [
    "DEFAULT_URL",
    "AsyncClient",
    "Client",
    "ClientError",
    "Event",
    "Job",
    "UnauthorizedError",
    "error_for",
    "parse_sse",
]

T = TypeVar("T")


class Client:
    """A synchronous client for one jobserver.

    `transport` is passed to the httpx.Client this creates (for example an
    `httpx.MockTransport`). Pass `http_client` to use your own httpx.Client
    instead (a Starlette TestClient works): when it has a base_url that wins
    over `url`, and `close()` leaves it open. `retries` bounds the resends after a
    connection failure (only where a resend is safe).
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        api_key: str | None = None,
        timeout: float = 30,
        transport: httpx.BaseTransport | None = None,
        http_client: httpx.Client | None = None,
        retries: int = DEFAULT_RETRIES,
    ) -> None:
        self._conn = Connection(url, api_key, timeout, retries)
        self.url, self.api_key, self.timeout_s = self._conn.url, api_key, self._conn.timeout_s
        self._owns_http = http_client is None
        if http_client is None:
            http_client = httpx.Client(
                base_url=self.url, timeout=self.timeout_s, transport=transport, limits=HTTP_LIMITS
            )
        self._http = http_client
        self._prefix = "" if str(http_client.base_url) else self.url

    # ------------------------------------------------------------ plumbing
    def _send(self, req: Request) -> httpx.Response:
        failures, waited_s, failing_since = 0, 0.0, 0.0
        while True:
            try:
                response = self._http.request(
                    req.method,
                    self._prefix + req.path,
                    timeout=self._conn.timeout(req),
                    **self._conn.kwargs(req),
                )
            except httpx.TransportError as exc:
                failures += 1
                if failures == 1:
                    failing_since = time.monotonic()
                time.sleep(self._conn.retry_delay_s(req, failures, exc, time.monotonic() - failing_since))
                continue
            wait_s = self._conn.in_flight_wait_s(req, response, waited_s)
            if wait_s is not None:
                waited_s += wait_s
                time.sleep(wait_s)
                continue
            return self._conn.checked(response, req.call)

    def _run(self, exchange: Exchange[T]) -> T:
        req = next(exchange)
        while True:
            try:
                req = exchange.send(self._send(req))
            except StopIteration as done:
                result: T = done.value
                return result

    # ------------------------------------------------------------ jobs
    def submit(
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
        return self._run(protocol.submit(task, args, options, idempotency_key))

    def submit_many(self, jobs: Iterable[dict[str, Any]]) -> builtins.list[Job]:
        """Submit up to 1,000 jobs in one transaction, all or none (`POST /jobs/batch`).

        Each item is a submit body (`task`, `args`, options) and may carry its own
        `idempotency_key` (a key used before with the same body gives the first job, marked
        `replayed`). A bad
        item raises InvalidRequestError whose `errors` name it by index
        (`["body", "jobs", 3, "args", "x"]`), and nothing is queued."""
        return self._run(protocol.submit_many(jobs))

    def signal(self, job_id: str, name: str, payload: Any = None) -> Job:
        """Send the signal `name` with a JSON payload to a job; a job waiting for it runs again.

        The same name again with an equal payload is accepted (`replayed` True); with another
        payload it raises SignalConflictError, on a finished job JobFinishedError, and when
        the job's wait for it is over (timed out) SignalNotAwaitedError."""
        return self._run(protocol.signal(job_id, name, payload))

    def get(self, job_id: str, wait: float | None = None) -> dict[str, Any]:
        """Read a job; with `wait` (at most 60 s) the server holds the answer until it is finished."""
        return self._run(protocol.get(job_id, wait, self.timeout_s))

    def wait(self, job_id: str, timeout: float | None = None) -> dict[str, Any]:
        """Block until the job is finished (the job); WaitTimeoutError after `timeout` seconds (None: no limit).

        Once this client has had an answer from the server, a restart of the server meanwhile
        is waited for (up to 30 s of refused polls, within `timeout`)."""
        return self._run(protocol.wait(job_id, timeout, self.timeout_s))

    def list(
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
        return self._run(protocol.list_jobs(query))

    def iter_jobs(
        self,
        status: str | None = None,
        task: str | None = None,
        page_size: int = 50,
        cursor: str | None = None,
        parent: str | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Every matching job, newest first, fetching pages of `page_size` as needed."""
        while True:
            page = self.list(status=status, task=task, limit=page_size, cursor=cursor, parent=parent)
            yield from page["jobs"]
            cursor = page.get("next_cursor")
            if not cursor:
                return

    def cancel(self, job_id: str) -> dict[str, Any]:
        """Cancel a pending job at once, or ask a running one to stop; JobFinishedError when finished."""
        return self._run(protocol.job_action("cancel", job_id))

    def retry(self, job_id: str, idempotency_key: str | None = None) -> Job:
        """Run a failed or cancelled job again; JobNotRetryableError otherwise. With
        `idempotency_key`, a resend (after a lost answer) starts no second round: the job comes
        back as it is, `replayed`."""
        return self._run(protocol.retry(job_id, idempotency_key))

    def delete(self, job_id: str) -> None:
        """Forget a finished job; JobNotFinishedError otherwise."""
        self._run(protocol.delete(job_id))

    def tasks(self) -> builtins.list[dict[str, Any]]:
        """The registered tasks: name, description, args_schema, options, paused."""
        return self._run(protocol.tasks())

    def task_overview(self) -> dict[str, Any]:
        """`{"tasks": [...], "unknown_tasks": [{"name", "pending"}]}`: the registered tasks, and
        the tasks that jobs wait for though the server registers none of that name."""
        return self._run(protocol.task_overview())

    def webhooks(self, job_id: str) -> builtins.list[dict[str, Any]]:
        """The job's webhook delivery attempts, oldest first: attempt, at, status_code, error, duration_ms."""
        return self._run(protocol.webhooks(job_id))

    def limits(self) -> builtins.list[dict[str, Any]]:
        """Every limit key: its kind, limit, `per` window, current use and the jobs it holds back."""
        return self._run(protocol.limits())

    def events(
        self,
        job_id: str,
        last_event_id: str | int | None = None,
        *,
        follow: bool = True,
        reconnect_for: float = DEFAULT_RECONNECT_FOR_S,
    ) -> Iterator[Event]:
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
                yield from self._stream(req, resumer)
            except (httpx.TransportError, DrainingError) as exc:
                time.sleep(resumer.dropped(req, exc))
                continue
            if resumer.over():
                return

    def _stream(self, req: Request, resumer: EventResumer) -> Iterator[Event]:
        url = self._prefix + req.path
        kwargs = self._conn.kwargs(req)
        with self._http.stream("GET", url, timeout=self._conn.stream_timeout(), **kwargs) as response:
            if not response.is_success:
                response.read()
                raise error_for(response, req.call)
            decoder = protocol.SSEDecoder()
            for line in response.iter_lines():
                event = decoder.feed(line)
                if event is not None:
                    resumer.seen(event)
                    yield event

    # ------------------------------------------------------------ operations
    def schedules(self) -> builtins.list[dict[str, Any]]:
        """Every schedule: name, task, cron, timezone, args, catch_up, paused, next/last run."""
        return self._run(protocol.schedules())

    def schedule(self, name: str) -> dict[str, Any]:
        """One schedule; ScheduleNotFoundError when there is none."""
        return self._run(protocol.schedule(name))

    def put_schedule(
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
        return self._run(protocol.put_schedule(name, body))

    def delete_schedule(self, name: str) -> None:
        """Remove a schedule (its jobs stay); ScheduleNotFoundError when there is none."""
        self._run(protocol.delete_schedule(name))

    def pause_schedule(self, name: str) -> dict[str, Any]:
        """Stop a schedule's ticks."""
        return self._run(protocol.schedule_action("pause", name))

    def resume_schedule(self, name: str) -> dict[str, Any]:
        """Tick again, from the next tick after now."""
        return self._run(protocol.schedule_action("resume", name))

    def pause_task(self, task: str) -> dict[str, Any]:
        """Hold the task's pending jobs back (running ones finish); TaskNotFoundError for an unknown task."""
        return self._run(protocol.task_action("pause", task))

    def resume_task(self, task: str) -> dict[str, Any]:
        """Let the task's jobs run again."""
        return self._run(protocol.task_action("resume", task))

    def cancel_many(
        self,
        status: str | None = None,
        task: str | None = None,
        ids: Iterable[str] | None = None,
        *,
        all_jobs: bool = False,
    ) -> int:
        """Cancel every matching job (pending at once, running asked to stop); how many.

        Without a filter, `all_jobs=True` says every job is meant."""
        return self._run(protocol.bulk("cancel", status, task, ids, all_jobs))

    def retry_many(
        self,
        status: str | None = None,
        task: str | None = None,
        ids: Iterable[str] | None = None,
        *,
        all_jobs: bool = False,
    ) -> int:
        """Retry every matching failed or cancelled job; how many.

        Without a filter, `all_jobs=True` says every job is meant."""
        return self._run(protocol.bulk("retry", status, task, ids, all_jobs))

    def delete_many(
        self,
        status: str | None = None,
        task: str | None = None,
        ids: Iterable[str] | None = None,
        *,
        all_jobs: bool = False,
    ) -> int:
        """Delete every matching finished job (unfinished ones are left alone); how many.

        Without a filter, `all_jobs=True` says every job is meant."""
        return self._run(protocol.bulk("delete", status, task, ids, all_jobs))

    def stats(self, task: str | None = None) -> dict[str, Any]:
        """Counts by status and task, and the last hour's throughput and failure rate (with
        `task`, the last hour of that task's jobs alone)."""
        return self._run(protocol.stats(task))

    # ------------------------------------------------------------ lifetime
    def close(self) -> None:
        """Close the connection pool (not an `http_client` that was passed in)."""
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
