"""A small Python SDK for the jobserver HTTP API, on httpx.

    from jobserver.client.sdk import Client

    with Client("http://127.0.0.1:8000", api_key="k1") as client:
        job = client.submit("jobserver.examples.add", {"a": 2, "b": 3}, idempotency_key="order-42")
        done = client.wait(job["id"], timeout=30)
        print(done["status"], done["result"])

Jobs are plain dicts: the contract's job object. `submit` returns a `Job`, a dict
whose `replayed` attribute is True when the server answered with the job first
created under the same Idempotency-Key (200 + `Idempotent-Replayed: true`)
instead of queuing a new one (202).

Errors: the `code` of a problem document maps back to the server's exception
classes from `jobserver.core.errors` (JobNotFoundError, TaskNotFoundError,
InvalidRequestError with `.errors`, WebhookURLError, IdempotencyMismatchError,
the ConflictError subclasses, DrainingError, StorageError, ScheduleNotFoundError; an
unknown task in a pause or resume is TaskNotFoundError too). Every other error
answer (401, 400, 413, 415, an unknown route, a 5xx, a body that is not a problem
document) raises `ClientError`. Each of these exceptions carries `status_code`,
`problem` (the parsed document) and `retry_after` (seconds, or None). Network
failures stay httpx's own (`httpx.TransportError` and subclasses).

Owns nothing but HTTP.
"""

from __future__ import annotations

import builtins
import json
import re
import time
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import Any, NamedTuple
from urllib.parse import quote

import httpx

from jobserver.core.errors import (
    ConflictError,
    DrainingError,
    IdempotencyInFlightError,
    IdempotencyMismatchError,
    InvalidRequestError,
    JobFinishedError,
    JobNotFinishedError,
    JobNotFoundError,
    JobNotRetryableError,
    JobServerError,
    ScheduleNotFoundError,
    SignalConflictError,
    StorageError,
    TaskNotFoundError,
    WebhookURLError,
)
from jobserver.core.lifecycle import FINISHED
from jobserver.core.schemas import MAX_WAIT_S

DEFAULT_URL = "http://127.0.0.1:8000"
# a server sends a keepalive comment every 15 s on an idle event stream
EVENTS_READ_TIMEOUT_S = 45.0


class ClientError(JobServerError):
    """The server answered with an error that has no class of its own."""

    def __init__(self, status_code: int, problem: dict[str, Any], message: str | None = None) -> None:
        self.status_code = status_code
        self.problem = problem
        super().__init__(message or f"HTTP {status_code}")


class Job(dict[str, Any]):
    """A job object as the server sent it; `replayed` is True for an Idempotency-Key replay."""

    replayed: bool = False


class Event(NamedTuple):
    """One Server-Sent Event: `id` (to resume from), `event` name, `data` parsed as JSON when it is JSON."""

    id: str | None
    event: str
    data: Any


class _Call(NamedTuple):
    """What the client was doing: enough to rebuild the server's exception."""

    op: str
    job_id: str = ""
    task: str = ""
    key: str = ""
    webhook_url: str = ""
    name: str = ""  # a schedule's


# a 409 "conflict" says which call failed (our side) and, in its detail, the job's state
_CONFLICTS: dict[str, type[ConflictError]] = {
    "cancel": JobFinishedError,
    "signal": JobFinishedError,
    "retry": JobNotRetryableError,
    "delete": JobNotFinishedError,
}
_CONFLICT_STATUS = re.compile(r"^job \S+ is (\w+)")


def _conflict(call: _Call, detail: str) -> JobServerError:
    match = _CONFLICT_STATUS.match(detail)
    return _CONFLICTS.get(call.op, ConflictError)(call.job_id, match.group(1) if match else "unknown", detail)


def _field_reason(errors: builtins.list[Any], default: str) -> str:
    first = errors[0] if errors else None
    return str(first.get("msg", default)) if isinstance(first, dict) else default


# problem `code` -> builder of the matching exception from (call, detail, errors)
_BUILDERS: dict[str, Callable[[_Call, str, builtins.list[Any]], JobServerError]] = {
    "job-not-found": lambda call, detail, errors: JobNotFoundError(call.job_id),
    "unknown-task": lambda call, detail, errors: TaskNotFoundError(call.task),
    "validation-error": lambda call, detail, errors: InvalidRequestError(detail, errors),
    "webhook-url-refused": lambda call, detail, errors: WebhookURLError(
        call.webhook_url, _field_reason(errors, detail)
    ),
    "idempotency-key-reused": lambda call, detail, errors: IdempotencyMismatchError(call.key),
    "idempotency-key-in-flight": lambda call, detail, errors: IdempotencyInFlightError(call.key),
    "conflict": lambda call, detail, errors: _conflict(call, detail),
    "signal-conflict": lambda call, detail, errors: SignalConflictError(call.job_id, "unknown", call.key),
    "draining": lambda call, detail, errors: DrainingError(detail),
    "storage-unavailable": lambda call, detail, errors: StorageError(detail),
    "schedule-not-found": lambda call, detail, errors: ScheduleNotFoundError(call.name),
    "task-not-found": lambda call, detail, errors: TaskNotFoundError(call.task),
}


def _problem_document(response: httpx.Response) -> dict[str, Any]:
    """The answer's problem document, or one made up from the status when it sent none."""
    if "json" in response.headers.get("content-type", ""):
        try:
            doc = response.json()
        except ValueError:
            doc = None
        if isinstance(doc, dict):
            return doc
    text = response.text.strip()
    return {
        "status": response.status_code,
        "title": response.reason_phrase,
        "detail": text[:500] or response.reason_phrase,
    }


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after", "")
    try:
        return float(value)
    except ValueError:
        return None


def error_for(response: httpx.Response, call: _Call) -> JobServerError:
    """The exception for an error answer (status >= 400)."""
    doc = _problem_document(response)
    detail = str(doc.get("detail") or doc.get("title") or f"HTTP {response.status_code}")
    errors = doc.get("errors")
    errors = errors if isinstance(errors, builtins.list) else []
    builder = _BUILDERS.get(str(doc.get("code", "")))
    exc = builder(call, detail, errors) if builder else ClientError(response.status_code, doc, detail)
    # every error answer exposes the same three fields, whatever its class
    exc.status_code = response.status_code
    exc.problem = doc
    exc.retry_after = _retry_after(response)
    return exc


def parse_sse(lines: Iterable[str]) -> Iterator[Event]:
    """Events from the lines of a text/event-stream (comments skipped, `data` lines joined)."""
    last_id: str | None = None
    kind = ""
    data: builtins.list[str] = []
    for line in lines:
        if not line:
            if data:
                yield Event(last_id, kind or "message", _json_or_text("\n".join(data)))
            kind, data = "", []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data":
            data.append(value)
        elif name == "event":
            kind = value
        elif name == "id":
            last_id = value


def _json_or_text(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _job_path(job_id: str, suffix: str = "") -> str:
    return f"/jobs/{quote(str(job_id), safe='')}{suffix}"


def _schedule_path(name: str, suffix: str = "") -> str:
    return f"/schedules/{quote(name, safe='')}{suffix}"


def _filter(status: str | None, task: str | None, ids: Iterable[str] | None) -> dict[str, Any]:
    """A bulk action's filter body: only the fields given."""
    body: dict[str, Any] = {
        "status": status,
        "task": task,
        "ids": None if ids is None else builtins.list(ids),
    }
    return {k: v for k, v in body.items() if v is not None}


class Client:
    """A synchronous client for one jobserver.

    `transport` is passed to the httpx.Client this creates (for example an
    `httpx.MockTransport`). Pass `http_client` to use your own httpx.Client
    instead (a Starlette TestClient works): when it has a base_url that wins
    over `url`, and `close()` leaves it open.
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        api_key: str | None = None,
        timeout: float = 30,
        transport: httpx.BaseTransport | None = None,
        http_client: httpx.Client | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.api_key = api_key
        self.timeout_s = float(timeout)
        self._owns_http = http_client is None
        if http_client is None:
            http_client = httpx.Client(base_url=self.url, timeout=self.timeout_s, transport=transport)
        self._http = http_client
        self._prefix = "" if str(http_client.base_url) else self.url

    # ------------------------------------------------------------ plumbing
    def _headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        headers.update(extra or {})
        return headers

    def _request(
        self,
        method: str,
        path: str,
        call: _Call,
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        read_timeout_s: float | None = None,
    ) -> httpx.Response:
        timeout: Any = httpx.USE_CLIENT_DEFAULT
        if read_timeout_s is not None:
            timeout = httpx.Timeout(self.timeout_s, read=read_timeout_s)
        response = self._http.request(
            method,
            self._prefix + path,
            json=json,
            params=params,
            headers=self._headers(headers),
            timeout=timeout,
        )
        if response.is_error:
            raise error_for(response, call)
        return response

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
        """
        body: dict[str, Any] = {"task": task, "args": args or {}}
        options = {
            "priority": priority,
            "delay": delay,
            "max_attempts": max_attempts,
            "timeout": timeout,
            "webhook_url": webhook_url,
            "run_at": run_at.isoformat() if hasattr(run_at, "isoformat") else run_at,
        }
        body.update({k: v for k, v in options.items() if v is not None})
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key is not None else None
        call = _Call("submit", task=task, key=idempotency_key or "", webhook_url=webhook_url or "")
        response = self._request("POST", "/jobs", call, json=body, headers=headers)
        job = Job(response.json())
        job.replayed = response.headers.get("idempotent-replayed", "").lower() == "true"
        return job

    def submit_many(self, jobs: Iterable[dict[str, Any]]) -> builtins.list[Job]:
        """Submit up to 1,000 jobs in one transaction, all or none (`POST /jobs/batch`).

        Each item is a submit body (`task`, `args`, options) and may carry its own
        `idempotency_key` (a key used before with the same body gives the first job). A bad
        item raises InvalidRequestError whose `errors` name it by index
        (`["body", "jobs", 3, "args", "x"]`), and nothing is queued."""
        items = [dict(job) for job in jobs]
        response = self._request("POST", "/jobs/batch", _Call("submit_many"), json={"jobs": items})
        return [Job(data) for data in response.json()["jobs"]]

    def signal(self, job_id: str, name: str, payload: Any = None) -> Job:
        """Send the signal `name` with a JSON payload to a job; a job waiting for it runs again.

        The same name again with an equal payload is accepted (`replayed` True); with another
        payload it raises SignalConflictError, and on a finished job JobFinishedError."""
        path = _job_path(job_id, f"/signals/{quote(name, safe='')}")
        response = self._request("POST", path, _Call("signal", job_id, key=name), json=payload)
        job = Job(response.json())
        job.replayed = response.status_code == 200
        return job

    def get(self, job_id: str, wait: float | None = None) -> dict[str, Any]:
        """Read a job; with `wait` (at most 60 s) the server holds the answer until it is finished."""
        params = {"wait": wait} if wait is not None else None
        read = self.timeout_s + wait if wait else None
        response = self._request(
            "GET", _job_path(job_id), _Call("get", job_id), params=params, read_timeout_s=read
        )
        data: dict[str, Any] = response.json()
        return data

    def wait(self, job_id: str, timeout: float | None = None) -> dict[str, Any]:
        """Block until the job is finished or `timeout` seconds passed (None: no limit); the job as last read."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining = MAX_WAIT_S if deadline is None else max(0.0, deadline - time.monotonic())
            job = self.get(job_id, wait=round(min(float(MAX_WAIT_S), remaining), 3))
            if job["status"] in FINISHED or (deadline is not None and time.monotonic() >= deadline):
                return job

    def list(
        self,
        status: str | None = None,
        task: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
        parent: str | None = None,
    ) -> dict[str, Any]:
        """One page, newest first: `{"jobs": [...], "next_cursor": str | None}`; `parent` lists
        the children of that job."""
        pairs = (("status", status), ("task", task), ("limit", limit), ("cursor", cursor), ("parent", parent))
        params = {k: v for k, v in pairs if v is not None}
        data: dict[str, Any] = self._request("GET", "/jobs", _Call("list"), params=params).json()
        return data

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
        data: dict[str, Any] = self._request(
            "POST", _job_path(job_id, "/cancel"), _Call("cancel", job_id)
        ).json()
        return data

    def retry(self, job_id: str) -> dict[str, Any]:
        """Run a failed or cancelled job again; JobNotRetryableError otherwise."""
        data: dict[str, Any] = self._request(
            "POST", _job_path(job_id, "/retry"), _Call("retry", job_id)
        ).json()
        return data

    def delete(self, job_id: str) -> None:
        """Forget a finished job; JobNotFinishedError otherwise."""
        self._request("DELETE", _job_path(job_id), _Call("delete", job_id))

    def tasks(self) -> builtins.list[dict[str, Any]]:
        """The registered tasks: name, description, args_schema, options."""
        tasks: builtins.list[dict[str, Any]] = self._request("GET", "/tasks", _Call("tasks")).json()["tasks"]
        return tasks

    def limits(self) -> builtins.list[dict[str, Any]]:
        """Every limit key: its kind, limit, `per` window, current use and the jobs it holds back."""
        keys: builtins.list[dict[str, Any]] = self._request("GET", "/limits", _Call("limits")).json()[
            "limits"
        ]
        return keys

    def events(self, job_id: str, last_event_id: str | int | None = None) -> Iterator[Event]:
        """The job's events (stored ones first, then live) until its terminal `status` event.

        Resume after a dropped connection by passing the last `Event.id` seen.
        """
        headers = {"Accept": "text/event-stream"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = str(last_event_id)
        timeout = httpx.Timeout(self.timeout_s, read=max(self.timeout_s, EVENTS_READ_TIMEOUT_S))
        with self._http.stream(
            "GET",
            self._prefix + _job_path(job_id, "/events"),
            headers=self._headers(headers),
            timeout=timeout,
        ) as response:
            if response.is_error:
                response.read()
                raise error_for(response, _Call("events", job_id))
            yield from parse_sse(response.iter_lines())

    # ------------------------------------------------------------ operations
    def schedules(self) -> builtins.list[dict[str, Any]]:
        """Every schedule: name, task, cron, timezone, args, catch_up, paused, next/last run."""
        data: builtins.list[dict[str, Any]] = self._request("GET", "/schedules", _Call("schedules")).json()[
            "schedules"
        ]
        return data

    def schedule(self, name: str) -> dict[str, Any]:
        """One schedule; ScheduleNotFoundError when there is none."""
        return self._json("GET", _schedule_path(name), _Call("schedule", name=name))

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
        return self._json("PUT", _schedule_path(name), _Call("put_schedule", task=task, name=name), json=body)

    def delete_schedule(self, name: str) -> None:
        """Remove a schedule (its jobs stay); ScheduleNotFoundError when there is none."""
        self._request("DELETE", _schedule_path(name), _Call("delete_schedule", name=name))

    def pause_schedule(self, name: str) -> dict[str, Any]:
        """Stop a schedule's ticks."""
        return self._json("POST", _schedule_path(name, "/pause"), _Call("pause_schedule", name=name))

    def resume_schedule(self, name: str) -> dict[str, Any]:
        """Tick again, from the next tick after now."""
        return self._json("POST", _schedule_path(name, "/resume"), _Call("resume_schedule", name=name))

    def pause_task(self, task: str) -> dict[str, Any]:
        """Hold the task's pending jobs back (running ones finish); TaskNotFoundError for an unknown task."""
        return self._json("POST", f"/tasks/{quote(task, safe='')}/pause", _Call("pause_task", task=task))

    def resume_task(self, task: str) -> dict[str, Any]:
        """Let the task's jobs run again."""
        return self._json("POST", f"/tasks/{quote(task, safe='')}/resume", _Call("resume_task", task=task))

    def cancel_many(
        self, status: str | None = None, task: str | None = None, ids: Iterable[str] | None = None
    ) -> int:
        """Cancel every matching job (pending at once, running asked to stop); how many."""
        body = _filter(status, task, ids)
        return int(
            self._json("POST", "/jobs/cancel", _Call("cancel_many", task=task or ""), json=body)["count"]
        )

    def retry_many(
        self, status: str | None = None, task: str | None = None, ids: Iterable[str] | None = None
    ) -> int:
        """Retry every matching failed or cancelled job; how many."""
        body = _filter(status, task, ids)
        return int(
            self._json("POST", "/jobs/retry", _Call("retry_many", task=task or ""), json=body)["count"]
        )

    def stats(self) -> dict[str, Any]:
        """Counts by status and task, and the last hour's throughput and failure rate."""
        return self._json("GET", "/stats", _Call("stats"))

    def _json(self, method: str, path: str, call: _Call, json: Any = None) -> dict[str, Any]:
        data: dict[str, Any] = self._request(method, path, call, json=json).json()
        return data

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
