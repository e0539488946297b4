"""The SDK's calls, written once without I/O: each is a generator that yields the `Request`s
it needs and receives the successful `httpx.Response` to each, returning the parsed result.

The sync `Client` and the `AsyncClient` drive the same generators over their own httpx
client; they alone send, retry and turn transport failures into `ServerUnavailableError`.
An error answer never reaches a generator: the driver raises `error_for(...)` instead, so
a problem document's `code` maps back to the server's exception classes in one place.

Owns the wire format of the API (paths, bodies, headers, Server-Sent Events); no sockets.
"""

from __future__ import annotations

import builtins
import json
import math
import re
import time
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypeVar
from urllib.parse import quote

import httpx

from jobserver.core.bounds import EVENT_ID_MAX, ID_PATTERN, MAX_WAIT_S, signal_name
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
    SignalNotAwaitedError,
    StorageError,
    TaskNotFoundError,
    WaitTimeoutError,
    WebhookURLError,
)
from jobserver.core.lifecycle import FINISHED

T = TypeVar("T")
JOB_ID = re.compile(ID_PATTERN)
_HTML_MARKUP = re.compile(r"<!--.*?-->|<(script|style)\b.*?</\1\s*>|<[^>]*>", re.DOTALL | re.IGNORECASE)
# how long a watch (events(), wait()) that has reached the server keeps trying when it goes
# away: a restart drains, stops and starts again
DEFAULT_RECONNECT_FOR_S = 30.0


class ClientError(JobServerError):
    """The server answered with an error that has no class of its own."""

    def __init__(self, status_code: int, problem: dict[str, Any], message: str | None = None) -> None:
        self.status_code = status_code
        self.problem = problem
        super().__init__(message or f"HTTP {status_code}")


class UnauthorizedError(ClientError):
    """401: no API key was sent (`key_sent` False) or the one sent is not accepted (True)."""

    def __init__(self, problem: dict[str, Any], key_sent: bool) -> None:
        self.key_sent = key_sent
        if key_sent:
            message = "the server refused the API key (check JOBSERVER_API_KEY, --api-key or api_key=)"
        else:
            message = "the server needs an API key: set JOBSERVER_API_KEY (or pass --api-key, or api_key=)"
        super().__init__(401, problem, message)


class Job(dict[str, Any]):
    """A job object as the server sent it; `replayed` is True for an Idempotency-Key replay."""

    replayed: bool = False


class Event(NamedTuple):
    """One Server-Sent Event: `id` (to resume from), `event` name, `data` parsed as JSON when it is JSON."""

    id: str | None
    event: str
    data: Any


class Call(NamedTuple):
    """What the client was doing: enough to rebuild the server's exception."""

    op: str
    job_id: str = ""
    task: str = ""
    key: str = ""
    webhook_url: str = ""
    name: str = ""  # a schedule's


@dataclass(frozen=True)
class Request:
    """One HTTP request of a call; `retry_safe` when sending it twice cannot do anything twice."""

    method: str
    path: str
    call: Call
    params: dict[str, Any] | None = None
    body: Any = None
    has_body: bool = False
    headers: dict[str, str] = field(default_factory=dict)
    read_timeout_s: float | None = None
    retry_safe: bool = False
    # a watch's later polls: sent again for this long after failures in a row (a restart)
    reconnect_for_s: float = 0.0


def request(
    method: str,
    path: str,
    call: Call,
    *,
    json: Any = None,
    params: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
    read_timeout_s: float | None = None,
    retry_safe: bool | None = None,
    has_body: bool | None = None,
    reconnect_for_s: float = 0.0,
) -> Request:
    """A Request; GETs are safe to retry unless told otherwise. A `json` of None sends no body,
    unless `has_body` says that None is the body (JSON `null`)."""
    return Request(
        method,
        path,
        call,
        params=params,
        body=json,
        has_body=json is not None if has_body is None else has_body,
        headers=headers or {},
        read_timeout_s=read_timeout_s,
        retry_safe=method == "GET" if retry_safe is None else retry_safe,
        reconnect_for_s=reconnect_for_s,
    )


# A call: yields requests, receives their successful responses, returns its result.
Exchange = Generator[Request, httpx.Response, T]

# ------------------------------------------------------------------ errors

# a 409 "conflict" says which call failed (our side) and, in its detail, the job's state
_CONFLICTS: dict[str, type[ConflictError]] = {
    "cancel": JobFinishedError,
    "signal": JobFinishedError,
    "retry": JobNotRetryableError,
    "delete": JobNotFinishedError,
}
_CONFLICT_STATUS = re.compile(r"^job \S+ is (\w+)")


def _conflict_status(detail: str) -> str:
    match = _CONFLICT_STATUS.match(detail)
    return match.group(1) if match else "unknown"


def _conflict(call: Call, detail: str) -> JobServerError:
    return _CONFLICTS.get(call.op, ConflictError)(call.job_id, _conflict_status(detail), detail)


def _field_reason(errors: builtins.list[Any], default: str) -> str:
    first = errors[0] if errors else None
    return str(first.get("msg", default)) if isinstance(first, dict) else default


def _misrouted(detail: str, what: str, status: int = 404) -> ClientError:
    """A "not found" about a job, task or schedule the call did not name: the request met
    another route than the one meant, as when the server's URL ends with a path of the API."""
    return ClientError(
        status,
        {},
        f"{detail}, though this call names no {what}: does the server's URL end with a path of "
        "the API (such as /jobs)? Give it as http(s)://host[:port], with only a proxy's prefix",
    )


def _refused_its_own_query(call: Call, errors: builtins.list[Any]) -> bool:
    """Query parameters that the client sends refused as unknown (`list` on `/jobs/jobs`, a
    job's route): only a request that met another route than its own gets that answer."""
    return (
        not call.job_id
        and bool(errors)
        and all(
            isinstance(e, dict)
            and e.get("type") == "extra_forbidden"
            and (e.get("loc") or [""])[0] == "query"
            for e in errors
        )
    )


# problem `code` -> builder of the matching exception from (call, detail, errors)
_BUILDERS: dict[str, Callable[[Call, str, builtins.list[Any]], JobServerError]] = {
    "job-not-found": lambda call, detail, errors: (
        JobNotFoundError(call.job_id) if call.job_id else _misrouted(detail, "job")
    ),
    "unknown-task": lambda call, detail, errors: TaskNotFoundError(call.task),
    "validation-error": lambda call, detail, errors: (
        _misrouted(detail, "job", 422)
        if _refused_its_own_query(call, errors)
        else InvalidRequestError(detail, errors)
    ),
    "webhook-url-refused": lambda call, detail, errors: WebhookURLError(
        call.webhook_url, _field_reason(errors, detail)
    ),
    "idempotency-key-reused": lambda call, detail, errors: IdempotencyMismatchError(call.key),
    "idempotency-key-in-flight": lambda call, detail, errors: IdempotencyInFlightError(call.key),
    "conflict": lambda call, detail, errors: _conflict(call, detail),
    "signal-conflict": lambda call, detail, errors: SignalConflictError(call.job_id, "unknown", call.key),
    "signal-not-awaited": lambda call, detail, errors: SignalNotAwaitedError(
        call.job_id, _conflict_status(detail), call.key
    ),
    "draining": lambda call, detail, errors: DrainingError(detail),
    "storage-unavailable": lambda call, detail, errors: StorageError(detail),
    "schedule-not-found": lambda call, detail, errors: (
        ScheduleNotFoundError(call.name) if call.name else _misrouted(detail, "schedule")
    ),
    "task-not-found": lambda call, detail, errors: (
        TaskNotFoundError(call.task) if call.task else _misrouted(detail, "task")
    ),
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
    text = response.text
    if "html" in response.headers.get("content-type", ""):  # a page's words, not its markup
        text = _HTML_MARKUP.sub(" ", text)
    text = " ".join(text.split())
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


def error_for(response: httpx.Response, call: Call) -> JobServerError:
    """The exception for an answer that is not a success (not 2xx); the response must have been read."""
    doc = _problem_document(response)
    detail = str(doc.get("detail") or doc.get("title") or f"HTTP {response.status_code}")
    if response.is_redirect:  # the API never redirects: the URL points elsewhere than the API
        where = response.headers.get("location", "")
        detail = f"HTTP {response.status_code}, a redirect to {where!r}: check the server's URL"
    errors = doc.get("errors")
    errors = errors if isinstance(errors, builtins.list) else []
    builder = _BUILDERS.get(str(doc.get("code", "")))
    exc: JobServerError
    if builder:
        exc = builder(call, detail, errors)
    elif response.status_code == 401:
        exc = UnauthorizedError(doc, key_sent="authorization" in response.request.headers)
    else:
        ctype = response.headers.get("content-type", "")
        if "json" not in ctype and not response.is_redirect:  # no problem document: another server?
            origin = f"{response.request.url.scheme}://{response.request.url.netloc.decode()}"
            detail += f" (the answer is not JSON ({ctype or 'no content type'}): is {origin} a jobserver?)"
        exc = ClientError(response.status_code, doc, detail)
    # every error answer exposes the same three fields, whatever its class
    exc.status_code = response.status_code
    exc.problem = doc
    exc.retry_after = _retry_after(response)
    return exc


# ------------------------------------------------------------------ Server-Sent Events


class SSEDecoder:
    """Events from the lines of a text/event-stream, fed one line at a time (comments skipped)."""

    def __init__(self) -> None:
        self.last_id: str | None = None
        self._kind = ""
        self._data: builtins.list[str] = []

    def feed(self, line: str) -> Event | None:
        """The event this line completes (a blank line ends one), else None."""
        if not line:
            event = None
            if self._data:
                event = Event(self.last_id, self._kind or "message", _json_or_text("\n".join(self._data)))
            self._kind, self._data = "", []
            return event
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._kind = value
        elif name == "id":
            self.last_id = value
        return None


def parse_sse(lines: Iterable[str]) -> Iterator[Event]:
    """Events from the lines of a text/event-stream (comments skipped, `data` lines joined)."""
    decoder = SSEDecoder()
    for line in lines:
        event = decoder.feed(line)
        if event is not None:
            yield event


def _json_or_text(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def is_terminal(event: Event) -> bool:
    """A `status` event of a finished job: the stream ends after it."""
    return event.event == "status" and isinstance(event.data, dict) and event.data.get("status") in FINISHED


def events_request(job_id: str, last_event_id: str | int | None, follow: bool = True) -> Request:
    """The GET of a job's event stream, resuming after `last_event_id`."""
    headers = {"Accept": "text/event-stream"}
    if last_event_id is not None:
        text = str(last_event_id).strip()
        if not (text.isascii() and text.isdigit() and len(text) <= 19 and int(text) <= EVENT_ID_MAX):
            raise InvalidRequestError(f"last_event_id is an event's id (digits), not {last_event_id!r:.80}")
        headers["Last-Event-ID"] = text
    params = None if follow else {"follow": "false"}
    return request("GET", job_path(job_id, "/events"), Call("events", job_id), headers=headers, params=params)


# ------------------------------------------------------------------ paths and bodies


def job_path(job_id: str, suffix: str = "") -> str:
    """The path of a job (or one of its sub-resources). A text no job id can be is not sent:
    the server decodes `%2F` before routing, so `id + "/webhooks"` would read another route."""
    text = _segment(str(job_id), "a job id")
    if not JOB_ID.fullmatch(str(job_id)):
        raise JobNotFoundError(str(job_id)[:64])  # as the server answers it
    return f"/jobs/{text}{suffix}"


# A path segment of "." or ".." is taken out of the path before it reaches the server (RFC 3986's
# dot segments), so `/schedules/..` would read another route: such a name is answered here.
DOT_SEGMENTS = frozenset({".", ".."})


def _schedule_path(name: str, suffix: str = "", making: bool = False) -> str:
    """A schedule's path. A name with a "/" is answered here, as one that is a dot segment: no
    schedule can have it, and the server decodes `%2F` before routing, so `a/b` would reach
    the route of `/schedules/a/b` (no route, or the wrong method of another)."""
    if name in DOT_SEGMENTS or "/" in name:
        if making:
            why = "it is a dot segment of a path" if name in DOT_SEGMENTS else "it holds a '/'"
            raise InvalidRequestError(f"{name!r} cannot be a schedule's name: {why}")
        raise ScheduleNotFoundError(name)
    return f"/schedules/{_segment(name, 'a schedule name')}{suffix}"


def _task_path(task: str, suffix: str) -> str:
    if task in DOT_SEGMENTS:
        raise TaskNotFoundError(task)
    return f"/tasks/{_segment(task, 'a task name')}{suffix}"


def _segment(value: str, what: str) -> str:
    """One path segment: an empty one would name another resource (`/jobs/` is the list)."""
    if not value:
        raise InvalidRequestError(f"{what} cannot be empty")
    return quote(value, safe="")


def _filter(status: str | None, task: str | None, ids: Iterable[str] | None) -> dict[str, Any]:
    """A bulk action's filter body: only the fields given."""
    if isinstance(ids, str):  # a string is an iterable of one-letter "ids"
        raise InvalidRequestError(f"ids is a list of job ids, not one string: [{ids!r}]?")
    body: dict[str, Any] = {
        "status": status,
        "task": task,
        "ids": None if ids is None else builtins.list(ids),
    }
    return {k: v for k, v in body.items() if v is not None}


def _dict(response: httpx.Response) -> dict[str, Any]:
    data: dict[str, Any] = response.json()
    return data


def _json_call(method: str, path: str, call: Call, body: Any = None) -> Exchange[dict[str, Any]]:
    return _dict((yield request(method, path, call, json=body)))


# ------------------------------------------------------------------ the calls


def submit(task: str, args: dict[str, Any] | None, options: dict[str, Any], key: str | None) -> Exchange[Job]:
    """POST /jobs; retried after a dropped connection only with an Idempotency-Key."""
    body: dict[str, Any] = {"task": task, "args": args or {}}
    run_at: Any = options.get("run_at")
    options = {**options, "run_at": run_at.isoformat() if hasattr(run_at, "isoformat") else run_at}
    body.update({k: v for k, v in options.items() if v is not None})
    headers = {"Idempotency-Key": key} if key is not None else None
    call = Call("submit", task=task, key=key or "", webhook_url=str(options.get("webhook_url") or ""))
    response = yield request("POST", "/jobs", call, json=body, headers=headers, retry_safe=key is not None)
    job = Job(response.json())
    job.replayed = response.headers.get("idempotent-replayed", "").lower() == "true"
    return job


def submit_many(jobs: Iterable[dict[str, Any]]) -> Exchange[builtins.list[Job]]:
    """POST /jobs/batch: all or none; never resent (items need not carry keys). An item whose
    key gave an earlier job back is `replayed`."""
    body = {"jobs": [dict(job) for job in jobs]}
    response = yield request("POST", "/jobs/batch", Call("submit_many"), json=body)
    answer = response.json()
    accepted = [Job(data) for data in answer["jobs"]]
    for i in answer.get("replayed", ()):
        accepted[i].replayed = True
    return accepted


def signal(job_id: str, name: str, payload: Any) -> Exchange[Job]:
    """POST /jobs/{id}/signals/{name}; `replayed` when the same signal was already sent.
    A name no task can wait for is answered here as the server answers it: sent, `.` or `..`
    would be taken out of the path as a dot segment and reach another route."""
    try:
        signal_name(name)
    except ValueError as exc:
        raise InvalidRequestError(
            str(exc), [{"loc": ["path", "name"], "msg": str(exc), "type": "value_error"}]
        ) from None
    path = job_path(job_id, f"/signals/{quote(name, safe='')}")
    response = yield request("POST", path, Call("signal", job_id, key=name), json=payload, has_body=True)
    job = Job(response.json())
    job.replayed = response.status_code == 200
    return job


def get(
    job_id: str, wait: float | None, timeout_s: float, reconnect_for_s: float = 0.0
) -> Exchange[dict[str, Any]]:
    """GET /jobs/{id}, held up to `wait` seconds until the job is finished."""
    _check_seconds(wait, "wait")
    params = {"wait": wait} if wait is not None else None
    read = timeout_s + wait if wait else None
    call = Call("get", job_id)
    return _dict(
        (
            yield request(
                "GET",
                job_path(job_id),
                call,
                params=params,
                read_timeout_s=read,
                reconnect_for_s=reconnect_for_s,
            )
        )
    )


def _check_seconds(value: float | None, what: str) -> None:
    """None, or a finite number of seconds, 0 or more (a NaN would poll without pause)."""
    if value is not None and not 0 <= value < math.inf:
        raise InvalidRequestError(f"{what} must be a finite number of seconds, 0 or more, not {value!r}")


def wait(
    job_id: str, timeout: float | None, timeout_s: float, clock: Callable[[], float] = time.monotonic
) -> Exchange[dict[str, Any]]:
    """Long-polls until the job is finished; WaitTimeoutError once `timeout` seconds passed.
    A server that restarts meanwhile is waited for, within the timeout (a client that never
    reached it fails at once: see `Connection.retry_delay_s`)."""
    _check_seconds(timeout, "timeout")
    deadline = None if timeout is None else clock() + timeout
    while True:
        remaining = MAX_WAIT_S if deadline is None else max(0.0, deadline - clock())
        patience = DEFAULT_RECONNECT_FOR_S if deadline is None else min(DEFAULT_RECONNECT_FOR_S, remaining)
        job = yield from get(job_id, round(min(float(MAX_WAIT_S), remaining), 3), timeout_s, patience)
        if job["status"] in FINISHED:
            return job
        if deadline is not None and clock() >= deadline:
            raise WaitTimeoutError(job, float(timeout or 0))


def list_jobs(params: dict[str, Any]) -> Exchange[dict[str, Any]]:
    """GET /jobs with the filters given (None values left out)."""
    given = {k: v for k, v in params.items() if v is not None}
    return _dict((yield request("GET", "/jobs", Call("list"), params=given)))


def job_action(op: str, job_id: str) -> Exchange[dict[str, Any]]:
    """POST /jobs/{id}/cancel or /retry."""
    return (yield from _json_call("POST", job_path(job_id, f"/{op}"), Call(op, job_id)))


def retry(job_id: str, key: str | None) -> Exchange[Job]:
    """POST /jobs/{id}/retry; with an Idempotency-Key, resent after a dropped connection (the
    server starts one round however often it comes) and `replayed` when it was a resend."""
    if key is None:
        return Job((yield from job_action("retry", job_id)))
    headers = {"Idempotency-Key": key}
    path = job_path(job_id, "/retry")
    response = yield request("POST", path, Call("retry", job_id), headers=headers, retry_safe=True)
    job = Job(response.json())
    job.replayed = response.headers.get("idempotent-replayed", "").lower() == "true"
    return job


def delete(job_id: str) -> Exchange[None]:
    """DELETE /jobs/{id}."""
    yield request("DELETE", job_path(job_id), Call("delete", job_id))


def tasks() -> Exchange[builtins.list[dict[str, Any]]]:
    """GET /tasks: the registered tasks."""
    found: builtins.list[dict[str, Any]] = (yield from task_overview())["tasks"]
    return found


def task_overview() -> Exchange[dict[str, Any]]:
    """GET /tasks as it is: `tasks`, and `unknown_tasks` (jobs waiting for a task no process
    there registers)."""
    body: dict[str, Any] = (yield request("GET", "/tasks", Call("tasks"))).json()
    return body


def webhooks(job_id: str) -> Exchange[builtins.list[dict[str, Any]]]:
    """GET /jobs/{id}/webhooks."""
    response = yield request("GET", job_path(job_id, "/webhooks"), Call("webhooks", job_id))
    found: builtins.list[dict[str, Any]] = response.json()["deliveries"]
    return found


def limits() -> Exchange[builtins.list[dict[str, Any]]]:
    """GET /limits."""
    found: builtins.list[dict[str, Any]] = (yield request("GET", "/limits", Call("limits"))).json()["limits"]
    return found


def schedules() -> Exchange[builtins.list[dict[str, Any]]]:
    """GET /schedules."""
    found: builtins.list[dict[str, Any]] = (yield request("GET", "/schedules", Call("schedules"))).json()[
        "schedules"
    ]
    return found


def schedule(name: str) -> Exchange[dict[str, Any]]:
    """GET /schedules/{name}."""
    return _dict((yield request("GET", _schedule_path(name), Call("schedule", name=name))))


def put_schedule(name: str, body: dict[str, Any]) -> Exchange[dict[str, Any]]:
    """PUT /schedules/{name}."""
    call = Call("put_schedule", task=str(body.get("task", "")), name=name)
    return (yield from _json_call("PUT", _schedule_path(name, making=True), call, body))


def delete_schedule(name: str) -> Exchange[None]:
    """DELETE /schedules/{name}."""
    yield request("DELETE", _schedule_path(name), Call("delete_schedule", name=name))


def schedule_action(op: str, name: str) -> Exchange[dict[str, Any]]:
    """POST /schedules/{name}/pause or /resume."""
    return (yield from _json_call("POST", _schedule_path(name, f"/{op}"), Call(f"{op}_schedule", name=name)))


def task_action(op: str, task: str) -> Exchange[dict[str, Any]]:
    """POST /tasks/{name}/pause or /resume."""
    return (yield from _json_call("POST", _task_path(task, f"/{op}"), Call(f"{op}_task", task=task)))


def bulk(
    op: str, status: str | None, task: str | None, ids: Iterable[str] | None, all_jobs: bool = False
) -> Exchange[int]:
    """POST /jobs/cancel, /retry or /delete with a filter body; how many jobs it changed. No
    filter acts on every job: only with `all_jobs`, as the CLI asks for `--all`."""
    body = _filter(status, task, ids)
    if not body and not all_jobs:
        raise InvalidRequestError(
            f"{op}_many() without status, task or ids acts on every job: pass all_jobs=True to mean it"
        )
    data = yield from _json_call("POST", f"/jobs/{op}", Call(f"{op}_many", task=task or ""), body)
    return int(data["count"])


def stats(task: str | None = None) -> Exchange[dict[str, Any]]:
    """GET /stats; with `task`, the last hour is that task's alone."""
    params = None if task is None else {"task": task}
    return _dict((yield request("GET", "/stats", Call("stats"), params=params)))
