"""RFC 9457 problem documents, the one table mapping errors to HTTP answers, and the page
that each problem `type` URI (`/problems/<code>`) answers, explaining the error."""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.responses import Response

from jobserver.core.errors import (
    ConflictError,
    DrainingError,
    IdempotencyInFlightError,
    IdempotencyMismatchError,
    InvalidRequestError,
    JobNotFoundError,
    JobServerError,
    MalformedRequestError,
    ScheduleNotFoundError,
    SignalConflictError,
    SignalNotAwaitedError,
    StorageError,
    TaskNotFoundError,
    WebhookURLError,
)

# exception class -> (status, code, title); the first matching class wins
ERROR_TABLE: list[tuple[type[JobServerError], int, str, str]] = [
    (JobNotFoundError, 404, "job-not-found", "Job not found"),
    (TaskNotFoundError, 422, "unknown-task", "Unknown task"),
    (ScheduleNotFoundError, 404, "schedule-not-found", "Schedule not found"),
    (InvalidRequestError, 422, "validation-error", "Invalid request"),
    (WebhookURLError, 422, "webhook-url-refused", "Webhook URL refused"),
    (IdempotencyMismatchError, 422, "idempotency-key-reused", "Idempotency-Key reused with another body"),
    (
        IdempotencyInFlightError,
        409,
        "idempotency-key-in-flight",
        "Request with this Idempotency-Key in progress",
    ),
    (SignalConflictError, 409, "signal-conflict", "Signal already sent with another body"),
    (SignalNotAwaitedError, 409, "signal-not-awaited", "The job no longer waits for this signal"),
    (ConflictError, 409, "conflict", "Conflict with the job's state"),
    (DrainingError, 503, "draining", "Server is shutting down"),
    (StorageError, 503, "storage-unavailable", "Database unavailable"),
]


@dataclass(frozen=True)
class ProblemType:
    """What a problem `type` URI's page says: the statuses it comes with, why, and what to do."""

    statuses: tuple[int, ...]
    title: str
    explanation: str
    remedy: str


PROBLEM_TYPES: dict[str, ProblemType] = {
    "validation-error": ProblemType(
        (422,),
        "Invalid request",
        "The body, the query string or a header does not match what the route accepts: a missing or "
        "unknown field, a value of the wrong type or out of range, args that the task's parameters do not "
        "accept, `delay` together with `run_at`, or an idempotency key (the `Idempotency-Key` header or "
        "a batch item's `idempotency_key`) that is empty, too long or not printable ASCII. "
        "Nothing was queued or changed.",
        'Read the `errors` list: each entry names the field (`loc`, e.g. `["body", "args", "a"]`), '
        "what is wrong with it (`msg`) and a machine-readable `type`. `GET /tasks` lists each task's args "
        "schema and `GET /openapi.json` describes every route.",
    ),
    "unknown-task": ProblemType(
        (422,),
        "Unknown task",
        "The `task` of the submit names no task registered on this server.",
        "`GET /tasks` lists the registered tasks; a task is registered when its module is in "
        "`tasks.modules` (`JOBSERVER_TASKS_MODULES`).",
    ),
    "webhook-url-refused": ProblemType(
        (422,),
        "Webhook URL refused",
        "The `webhook_url` is not an http(s) URL, or its host resolves to a loopback, private, "
        "link-local or otherwise internal address, which the server does not send webhooks to "
        "(a guard against server-side request forgery), or it is the server's own API (its "
        "`server.host` and `server.port`), which no webhook may call.",
        "Use a public http(s) URL, or allow the host on the server with `webhooks.allow_hosts` "
        "(or `webhooks.allow_private` for every internal address); a receiver on the server's "
        "machine listens on another port than the API.",
    ),
    "idempotency-key-reused": ProblemType(
        (422,),
        "Idempotency-Key reused with another body",
        "A job was already submitted with this `Idempotency-Key` and a different body (or the key was "
        "used to retry a job, or for another job's retry). A key names one request: sending it again "
        "with the same body returns the first job, with another body it is refused.",
        "Use a fresh key for a different job, or resend the original body. Keys are kept for "
        "`retention.idempotency_keys` and are scoped per API key.",
    ),
    "signal-conflict": ProblemType(
        (409,),
        "Signal already sent with another body",
        "A signal with this name was already delivered to the job with a different JSON body. A signal "
        "is delivered once: sending it again with the same body is answered 200 and changes nothing.",
        "Send the same body again to confirm it, or use another signal name for a different message.",
    ),
    "signal-not-awaited": ProblemType(
        (409,),
        "The job no longer waits for this signal",
        "The job's call that waited for this signal name is over: a `ctx.wait_for` whose timeout "
        "passed before the signal came (it returned `None`, and the job went on), or another call of "
        "the job by that name. Names are unique per job and a finished call is never run again, so "
        "the signal would be kept and never read; nothing was kept.",
        "Read the job (`GET /jobs/{id}`): `waiting_for` names the signal it waits for now, if any. "
        "A task that waits again after a timeout waits under a new name (`approval-2`).",
    ),
    "idempotency-key-in-flight": ProblemType(
        (409,),
        "Request with this Idempotency-Key in progress",
        "Another request with the same `Idempotency-Key` is still being handled.",
        "Retry after a moment: once the first request is answered, the same key and body return its job.",
    ),
    "conflict": ProblemType(
        (409,),
        "Conflict with the job's state",
        "The job's status does not allow this action: cancelling a finished job, retrying a job that is "
        "neither failed nor cancelled, or deleting a job that has not finished.",
        "Read the job (`GET /jobs/{id}`) to see its status; `detail` says which status refused the action.",
    ),
    "job-not-found": ProblemType(
        (404,),
        "Job not found",
        "No job has this id: it never existed, was deleted, or was pruned after `retention.finished_jobs`.",
        "Check the id; `GET /jobs` lists the jobs the server keeps.",
    ),
    "schedule-not-found": ProblemType(
        (404,),
        "Schedule not found",
        "No schedule has this name: it was never made, or it was deleted.",
        "`GET /schedules` lists the schedules; `PUT /schedules/{name}` makes one.",
    ),
    "task-not-found": ProblemType(
        (404,),
        "Task not found",
        "No task with this name is registered on this server, so it cannot be paused or resumed.",
        "`GET /tasks` lists the registered tasks.",
    ),
    "not-found": ProblemType(
        (404,),
        "Not found",
        "No route answers this path (or no problem type has this name).",
        "`GET /openapi.json` lists every route.",
    ),
    "method-not-allowed": ProblemType(
        (405,),
        "Method not allowed",
        "The route exists but does not answer this HTTP method.",
        "The `Allow` header of the answer lists the methods the route answers.",
    ),
    "malformed-json": ProblemType(
        (400,),
        "Malformed JSON",
        "The body is not valid JSON.",
        "Send a JSON object with `Content-Type: application/json`; `detail` says where parsing stopped.",
    ),
    "invalid-last-event-id": ProblemType(
        (400,),
        "Invalid Last-Event-ID",
        "An event stream was asked to resume after an event id (`Last-Event-ID`, or `?last_event_id`) "
        "that cannot be one: event ids are digits, at most 9223372036854775807. Resuming after it "
        "would skip events without saying so.",
        "Send back the `id` of the last event received, as it was sent, or leave the header out to "
        "read the stream from its first event.",
    ),
    "unsupported-media-type": ProblemType(
        (415,),
        "Unsupported media type",
        "The body was not sent as JSON.",
        "Send `Content-Type: application/json` (or another `+json` type) with a JSON body.",
    ),
    "body-too-large": ProblemType(
        (413,),
        "Request body too large",
        "The body is larger than `server.max_body_bytes`; the server stopped reading it.",
        "Send less: keep large inputs elsewhere (object storage, a database) and pass their location "
        "in `args`, or raise `server.max_body_bytes`.",
    ),
    "unauthorized": ProblemType(
        (401,),
        "Unauthorized",
        "The server has API keys configured and the request carried none, or a wrong one.",
        "Send `Authorization: Bearer <key>` with one of the keys in `auth.api_keys`.",
    ),
    "host-not-allowed": ProblemType(
        (403,),
        "Host not allowed",
        "The server has no API keys, and this request's `Host` names neither this machine "
        "(`localhost`, a name ending in `.localhost`, 127.0.0.1 to 127.255.255.255, `::1`) nor a "
        "name in `server.allowed_hosts`. A web page can point a name of its own at 127.0.0.1 "
        "(DNS rebinding) and then read and change an open server's jobs from its visitors' "
        "browsers; the name it used is what gives it away. Nothing was read or changed.",
        "Reach the server as `localhost` or 127.0.0.1, add the name you use to `server.allowed_hosts` "
        '(`["*"]` takes any), or set API keys (`auth.api_keys`), which make the check needless.',
    ),
    "cross-site-request": ProblemType(
        (403,),
        "Cross-site request refused",
        "A browser sent this POST, PUT, PATCH or DELETE from another site's page: its "
        "`Sec-Fetch-Site` header says `cross-site` or `same-site`, or (from a browser that sends no "
        "`Sec-Fetch-Site`) its `Origin` is `null` or names another host than the request's `Host`. "
        "Any web page can make its visitors' browsers send such requests, so the server takes "
        "changes only from its own pages (the dashboard) and from clients that are not browsers "
        "(the SDK, the CLI, curl, which send neither header). Nothing was changed.",
        "Call the API from a program rather than from another site's page, or use the dashboard. "
        "Behind a reverse proxy, pass the browser's `Host` header on (nginx: "
        "`proxy_set_header Host $host;`), which older browsers' `Origin` is compared with.",
    ),
    "draining": ProblemType(
        (503,),
        "Server is shutting down",
        "The server received SIGTERM and is draining: it lets running jobs finish and accepts no new "
        "ones. Reads still work.",
        "Retry after `Retry-After` seconds, against this server once it is back or another node.",
    ),
    "storage-unavailable": ProblemType(
        (503,),
        "Database unavailable",
        "The database could not be read or written (locked, read-only, full or unreachable). "
        "Nothing was changed by this request.",
        "Retry after `Retry-After` seconds; `GET /readyz` says when the database answers again.",
    ),
    "request-timeout": ProblemType(
        (408,),
        "Request Timeout",
        "The client sent its request head or body too slowly: the whole head must arrive within "
        "`server.header_timeout` of the connection (or of the first byte of the next request), and "
        "the body within `server.body_timeout` of the end of the head. The connection is closed and "
        "nothing of the request was done.",
        "Send the request again at once; behind a slow link or proxy, raise the timeouts.",
    ),
    "malformed-request": ProblemType(
        (400,),
        "Malformed request",
        "The bytes sent are not an HTTP/1.1 request: a request line, header or `Content-Length` that "
        "does not parse. The connection is closed and nothing of the request was done.",
        "Send a well-formed HTTP/1.1 request; an HTTP client library does.",
    ),
    "request-header-fields-too-large": ProblemType(
        (431,),
        "Request Header Fields Too Large",
        "The request head is larger than `server.max_header_bytes` or has more header lines than "
        "`server.max_header_lines`. The connection is closed and nothing of the request was done.",
        "Send fewer or smaller headers (large cookies are the usual cause).",
    ),
    "too-many-connections": ProblemType(
        (503,),
        "Too many connections",
        "The server has `server.max_connections` connections open and every one is busy with a "
        "request (event streams and `?wait` hold theirs), so it refused this one.",
        "Retry after `Retry-After` seconds; close connections you no longer use.",
    ),
    "client-disconnected": ProblemType(
        (400,),
        "Client disconnected",
        "The connection ended before the whole request body arrived (the client went away, or was "
        "closed for sending it too slowly). Nothing of the request was done; this answer is only "
        "what the server's log records, no client receives it.",
        "Send the request again.",
    ),
    "internal-error": ProblemType(
        (500,),
        "Internal error",
        "The server failed in a way it did not expect; the server's log has the traceback.",
        "Retry later, and report it with the time of the request: no input should cause this.",
    ),
}


def problem_page_markdown(code: str, kind: ProblemType) -> str:
    """The page of one problem type, as Markdown."""
    statuses = ", ".join(str(s) for s in kind.statuses)
    return (
        f"# {kind.title}\n\n"
        f"`type`: `/problems/{code}` · HTTP status: {statuses}\n\n"
        f"{kind.explanation}\n\n## What to do\n\n{kind.remedy}\n"
    )


def problem_page_html(code: str, kind: ProblemType) -> str:
    """The page of one problem type, as HTML (code spans kept as <code>)."""

    def text(value: str) -> str:
        parts = html.escape(value, quote=False).split("`")
        return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))

    statuses = ", ".join(str(s) for s in kind.statuses)
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(kind.title)} · jobserver</title></head><body>"
        f"<h1>{html.escape(kind.title)}</h1>"
        f"<p><code>type</code>: <code>/problems/{html.escape(code)}</code> · HTTP status: {statuses}</p>"
        f"<p>{text(kind.explanation)}</p><h2>What to do</h2><p>{text(kind.remedy)}</p>"
        "</body></html>"
    )


def problem(status: int, code: str, title: str, detail: str, **extra: Any) -> Response:
    """An application/problem+json response."""
    body = {"type": f"/problems/{code}", "title": title, "status": status, "detail": detail, "code": code}
    body.update(extra)
    headers = {"Retry-After": "5"} if status == 503 else None
    return Response(
        orjson.dumps(body), status_code=status, media_type="application/problem+json", headers=headers
    )


def field_problem(loc: list[str], msg: str, detail: str) -> Response:
    """A 422 naming one field outside the body (a header or a path segment) and what it must be."""
    error = {"loc": loc, "msg": msg, "type": "value_error"}
    return problem(422, "validation-error", "Invalid request", detail, errors=[error])


def problem_for(exc: JobServerError) -> Response:
    """The problem document for one of our errors."""
    if isinstance(exc, MalformedRequestError):
        return problem(400, exc.code, exc.title, str(exc))
    for cls, status, code, title in ERROR_TABLE:
        if isinstance(exc, cls):
            extra: dict[str, Any] = {}
            if isinstance(exc, InvalidRequestError):
                extra["errors"] = exc.errors
            if isinstance(exc, TaskNotFoundError):
                extra["errors"] = [{"loc": ["body", "task"], "msg": str(exc), "type": "unknown_task"}]
            if isinstance(exc, WebhookURLError):
                extra["errors"] = [{"loc": ["body", "webhook_url"], "msg": exc.reason, "type": "refused"}]
            return problem(status, code, title, str(exc), **extra)
    return problem(500, "internal-error", "Internal error", "an unexpected error occurred")


def _message(error: Any) -> str:
    """pydantic's message, without the names of our model classes (a client sent JSON, not them)."""
    return "Input should be a JSON object" if error["type"] == "model_type" else str(error["msg"])


def validation_problem(exc: Any, prefix: str) -> Response:
    """422 from a pydantic ValidationError, naming each bad field."""
    errors = [
        {"loc": [prefix, *[str(p) for p in e["loc"]]], "msg": _message(e), "type": e["type"]}
        for e in exc.errors()
    ]
    names = ", ".join(".".join(e["loc"][1:]) or prefix for e in errors)
    return problem(422, "validation-error", "Invalid request", f"invalid {prefix}: {names}", errors=errors)
