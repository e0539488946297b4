"""The HTTP API: a Starlette app factory, its handlers and the request guards.

Handlers parse and validate input, call the job commands or the store, and shape
answers; errors become RFC 9457 problem documents through `problems.py`. Reads
run in a worker thread (never on the event loop); writes go through the writer
and are awaited. No Huey, no Peewee, no SQL here.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import logging
import re
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any, TypeVar

import orjson
import pydantic
from starlette.applications import Starlette
from starlette.datastructures import QueryParams
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, Response, StreamingResponse
from starlette.routing import Match, Route

from jobserver.core.bounds import EVENT_ID_MAX, ID_PATTERN, signal_name
from jobserver.core.config import Settings
from jobserver.core.errors import (
    DrainingError,
    InvalidRequestError,
    JobNotFoundError,
    JobServerError,
    MalformedRequestError,
)
from jobserver.core.hub import Hub
from jobserver.core.lifecycle import FINISHED
from jobserver.core.records import JobRecord
from jobserver.core.schemas import (
    IDEMPOTENCY_KEY_RULE,
    BatchBody,
    EventsQuery,
    GetQuery,
    ListQuery,
    SubmitBody,
    idempotency_key,
    json_text_too_deep,
    json_violations,
)
from jobserver.core.tasks import Registry
from jobserver.core.tracing import NO_TRACING, Tracing
from jobserver.http.auth import AuthMiddleware
from jobserver.http.crosssite import CrossSiteGuard
from jobserver.http.openapi import build_openapi
from jobserver.http.problems import (
    PROBLEM_TYPES,
    field_problem,
    problem,
    problem_for,
    problem_page_html,
    problem_page_markdown,
    validation_problem,
)
from jobserver.ops.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from jobserver.ops.metrics import Metrics
from jobserver.runner.commands import JobCommands
from jobserver.runner.pending import PendingReasons
from jobserver.storage.limits import LimitStore
from jobserver.storage.readers import ReadPool
from jobserver.storage.store import JobStore

log = logging.getLogger(__name__)
Handler = Callable[[Request], Awaitable[Response]]
# The dashboard's policy, sent as a header (a <meta> policy cannot say frame-ancestors): its own
# inline script and styles, requests to this server only, and no page may frame it (clickjacking)
DASHBOARD_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
}
KEEPALIVE_S = 15.0
GONE_CHECK_S = 1.0  # how often a long-poll (`GET ?wait`) looks whether its client is still there
READ_THREADS = 8  # the reader pool's size: each keeps its own read connection
T = TypeVar("T")
EVENT_PAGE = 500
READY_WRITE_TIMEOUT_S = 2.0
JOB_ID = re.compile(ID_PATTERN)
LONG_NUMBER = re.compile(rb"\d{19}")  # 19 digits or more: may not fit in 64 bits


class JSON(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


@dataclass
class Services:
    """What the handlers need, passed explicitly (no globals)."""

    settings: Settings
    commands: JobCommands
    store: JobStore
    limits: LimitStore
    registry: Registry
    hub: Hub
    workers_alive: Callable[[], bool]
    extra_routes: list[Route]
    readers: ReadPool  # database reads run here, never on the event loop
    reasons: PendingReasons  # why a pending job waits
    metrics: Metrics | None = None
    now: Callable[[], float] = time.time  # the server's clock (rate windows end relative to it)
    tracing: Tracing = NO_TRACING
    paused_tasks: Callable[[], frozenset[str]] = frozenset  # tasks whose jobs are held back
    pending_by_task: Callable[[], dict[str, int]] = dict  # jobs waiting to run, per task name


HELD = ("pending", "scheduled", "blocked")  # stored statuses of a pending job


class BodyTooLarge(Exception):
    pass


class UnsupportedMediaType(Exception):
    """A body that is not UTF-8 JSON; the message says what to send instead."""

    def __init__(self, detail: str = "send JSON with 'Content-Type: application/json'") -> None:
        super().__init__(detail)
        self.detail = detail


def last_event_id(request: Request) -> int:
    """The event id a stream resumes after: the Last-Event-ID header or `?last_event_id`,
    ASCII digits within 64 bits, else a 400 (a stream that skipped events would look whole)."""
    # whitespace around a header's value is not part of it (RFC 9110)
    text = (request.headers.get("last-event-id") or request.query_params.get("last_event_id") or "0").strip(
        " \t"
    )
    if not (text.isascii() and text.isdigit() and len(text) <= 19 and int(text) <= EVENT_ID_MAX):
        raise MalformedRequestError(
            "invalid-last-event-id",
            "Invalid Last-Event-ID",
            f"Last-Event-ID (or last_event_id) must be the id of an event: digits, at most {EVENT_ID_MAX}",
        )
    return int(text)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused as soon as it passes `limit` bytes (never read whole)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge()
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge()
        chunks.append(chunk)
    return b"".join(chunks)


async def read_json_body(request: Request, limit: int, max_depth: int) -> Any:
    """The parsed JSON body, refused before any model sees it: not JSON (415, 400), larger than
    `limit` (413), nested deeper than `max_depth`, or holding integers beyond 64 bits (422)."""
    ctype, *params = request.headers.get("content-type", "").lower().split(";")
    ctype = ctype.strip()
    if ctype != "application/json" and not ctype.endswith("+json"):
        raise UnsupportedMediaType()
    for param in params:
        name, _, value = param.partition("=")
        charset = value.strip().strip('"')
        if name.strip() == "charset" and charset not in ("utf-8", "utf8"):
            # JSON is UTF-8 (RFC 8259): a body in another charset would be read wrongly, never refused
            raise UnsupportedMediaType(
                f"JSON bodies are UTF-8: send 'charset=utf-8' or no charset, not {charset!r}"
            )
    raw = await read_body(request, limit)
    try:
        parsed = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        # valid JSON nested past the parser's own limit (1024 levels) is past ours as well
        too_deep = json_text_too_deep(raw, max_depth, ["body"]) if "depth" in exc.msg else []
        if too_deep:
            raise InvalidRequestError(
                f"the body is nested deeper than {max_depth} levels", too_deep
            ) from None
        raise MalformedRequestError(
            "malformed-json", "Malformed JSON", f"the body is not valid JSON: {exc}"
        ) from None
    long_number = LONG_NUMBER.search(raw)
    if not long_number and raw.count(b"{") + raw.count(b"[") < max_depth:
        # orjson refuses non-finite numbers, an integer beyond 64 bits needs 19 digits, and fewer
        # brackets than the limit cannot nest past it: nothing to look for (most bodies)
        return parsed
    errors = json_violations(parsed, max_depth, ["body"])
    if not errors and long_number:
        # the fast parser reads integers beyond 64 bits as floats: read them exactly to refuse them
        errors = json_violations(json.loads(raw), max_depth, ["body"])
    if errors:
        too_deep = errors[-1]["type"] == "too_deep"  # the walk stops at the first one, last in the list
        message = (
            f"the body is nested deeper than {max_depth} levels"
            if too_deep
            else "the body holds values that cannot be stored exactly"
        )
        raise InvalidRequestError(message, errors)
    return parsed


def refuse_query(request: Request) -> None:
    """A route that takes no query parameters refuses any, as /jobs refuses one it does not
    know: a misspelt filter is a 422, never a silent no-op."""
    if request.scope["query_string"]:
        names = list(dict.fromkeys(request.query_params.keys()))
        errors = [
            {"loc": ["query", n], "msg": "Extra inputs are not permitted", "type": "extra_forbidden"}
            for n in names
        ]
        raise InvalidRequestError(f"invalid query: {', '.join(names)}", errors)


# Headers a request carries at most once (RFC 9110 allows a repeat only of list-valued ones):
# with two, which one counts would be a guess, and a proxy or the caller may have acted on the
# other one (two Idempotency-Keys: the key a resend carries may not be the key kept)
SINGLE_HEADERS = {
    b"content-type": "Content-Type",
    b"idempotency-key": "Idempotency-Key",
    b"last-event-id": "Last-Event-ID",
}


def refuse_repeated_headers(request: Request) -> None:
    """A header of SINGLE_HEADERS given more than once is a 422 naming it, as a repeated query
    parameter is, rather than the first one silently counting."""
    seen = [name for name, _ in request.scope["headers"] if name in SINGLE_HEADERS]
    if len(seen) != len(set(seen)):
        names = [SINGLE_HEADERS[n] for n, count in Counter(seen).items() if count > 1]
        errors = [{"loc": ["header", n], "msg": "given more than once", "type": "repeated"} for n in names]
        raise InvalidRequestError(f"invalid headers: {', '.join(names)} given more than once", errors)


def _count(value: float) -> float | int:
    """A whole number as an integer (a concurrency key's slots: `8`, not `8.0`)."""
    return int(value) if value.is_integer() else value


def handled(handler: Handler, max_body_bytes: int) -> Handler:
    """`handler` with the errors it raises answered as problem documents. A change (any method
    but GET and HEAD) refuses query parameters first: no such route takes any, and a filter
    written in the query (`POST /jobs/cancel?status=running`) must not be dropped silently
    while the body's filter, or the lack of one, acts on every job."""

    async def wrapper(request: Request) -> Response:
        try:
            refuse_repeated_headers(request)
            if request.method not in ("GET", "HEAD"):
                refuse_query(request)
            return await handler(request)
        except JobServerError as exc:
            return problem_for(exc)
        except BodyTooLarge:
            detail = f"the body may take at most {max_body_bytes} bytes"
            return problem(413, "body-too-large", "Request body too large", detail)
        except UnsupportedMediaType as exc:
            return problem(415, "unsupported-media-type", "Unsupported media type", exc.detail)

    return wrapper


def key_scope(request: Request) -> str:
    """Idempotency keys are scoped per API key (a hash of it), or global when auth is off."""
    key: str | None = request.scope.get("jobserver.api_key")
    return "public" if key is None else hashlib.sha256(key.encode()).hexdigest()[:32]


def parsed_query(model: type[pydantic.BaseModel], request: Request) -> Any:
    """The request's query string validated by `model` (a pydantic ValidationError if not)."""
    return _parsed_query(model, request.scope["query_string"])


@functools.lru_cache(maxsize=256)
def _parsed_query(model: type[pydantic.BaseModel], query_string: bytes) -> Any:
    """A query string validated by `model`, remembered (a refused one is not): pollers and
    waiters send the same few query strings over and over. The models are never changed.
    A name given twice is refused: which one counts would be a guess (`?limit=1&limit=500`)."""
    params = QueryParams(query_string)
    items = params.multi_items()
    if len(params) != len(items):
        names = [n for n, count in Counter(n for n, _ in items).items() if count > 1]
        errors = [{"loc": ["query", n], "msg": "given more than once", "type": "repeated"} for n in names]
        raise InvalidRequestError(f"invalid query: {', '.join(names)} given more than once", errors)
    return model.model_validate(dict(params))


def create_app(svc: Services) -> Starlette:
    """Build the ASGI app."""
    settings, commands, store = svc.settings, svc.commands, svc.store
    readers = svc.readers

    async def read(fn: Callable[..., T], *args: Any) -> T:
        """Run a database read on a reader thread (never on the event loop)."""
        return await readers.run(fn, *args)

    # In-process notices cover changes made by this process; on PostgreSQL other nodes
    # change jobs too, so waits and streams also re-read every poll interval.
    recheck_s = settings.workers.poll_interval if settings.is_postgres else KEEPALIVE_S * 4

    literal_paths: set[str] = set()  # /jobs/batch and the bulk actions: never a job's id

    def guarded(handler: Handler) -> Handler:
        answered = handled(handler, settings.server.max_body_bytes)

        async def wrapper(request: Request) -> Response:
            job_id = request.path_params.get("job_id")
            if job_id is not None:
                if request.scope["path"] in literal_paths:  # GET /jobs/batch: the wrong method, not a job
                    return await _not_allowed(request, None)
                if not JOB_ID.fullmatch(job_id):
                    return problem_for(JobNotFoundError(job_id[:64]))  # no job has such an id
            return await answered(request)

        return wrapper

    async def read_json(request: Request) -> Any:
        return await read_json_body(request, settings.server.max_body_bytes, settings.server.max_json_depth)

    def header_key(request: Request) -> str | None:
        """The request's Idempotency-Key as kept (`key ` and `key` are one key, `ü` none);
        InvalidRequestError naming the header when it has not IDEMPOTENCY_KEY_RULE."""
        idem_key = request.headers.get("idempotency-key")
        if idem_key is None:
            return None
        try:
            return idempotency_key(idem_key)
        except ValueError:
            msg = f"Idempotency-Key must have {IDEMPOTENCY_KEY_RULE}"
            loc = ["header", "Idempotency-Key"]
            raise InvalidRequestError(
                msg, [{"loc": loc, "msg": IDEMPOTENCY_KEY_RULE, "type": "value_error"}]
            ) from None

    async def submit(request: Request) -> Response:
        parsed = await read_json(request)
        try:
            body = SubmitBody.model_validate(parsed)
        except pydantic.ValidationError as exc:
            return validation_problem(exc, "body")
        idem_key = header_key(request)
        record, replayed = await commands.submit(
            body, idem_key, key_scope(request), parsed, svc.tracing.carrier()
        )
        headers = {"Location": f"/jobs/{record.id}"}
        if replayed:
            headers["Idempotent-Replayed"] = "true"
        return Response(record.api_json(), 200 if replayed else 202, headers, JSON.media_type)

    async def submit_batch(request: Request) -> Response:
        if "idempotency-key" in request.headers:  # refused, not ignored: a resent batch would run twice
            return field_problem(
                ["header", "Idempotency-Key"],
                "use each item's idempotency_key",
                "a batch takes no Idempotency-Key header: give each job its own idempotency_key",
            )
        parsed = await read_json(request)
        try:
            body = BatchBody.model_validate(parsed)
        except pydantic.ValidationError as exc:
            return validation_problem(exc, "body")
        raws = [{k: v for k, v in item.items() if k != "idempotency_key"} for item in parsed["jobs"]]
        items = [(item, item.idempotency_key) for item in body.jobs]
        results = await commands.submit_many(items, key_scope(request), raws)
        replayed = [i for i, (_, was_replayed) in enumerate(results) if was_replayed]
        jobs = [orjson.Fragment(rec.api_json()) for rec, _ in results]
        return JSON({"jobs": jobs, "replayed": replayed}, status_code=202)

    async def signal(request: Request) -> Response:
        parsed = await read_json(request)
        name = request.path_params["name"]
        try:
            signal_name(name)  # the names a task can wait for: any other would be kept unread
        except ValueError as exc:
            return field_problem(["path", "name"], str(exc), str(exc))
        record, repeated = await commands.signal(request.path_params["job_id"], name, parsed)
        return JSON(record.to_api(), status_code=200 if repeated else 202)

    def traced(route: str, handler: Handler) -> Handler:
        """A server span around the handler, continuing the trace the request's `traceparent` names."""
        if not svc.tracing.enabled:
            return handler

        async def wrapper(request: Request) -> Response:
            with svc.tracing.request(f"{request.method} {route}", request.headers) as span:
                span.set("http.request.method", request.method)
                span.set("http.route", route)
                response = await handler(request)
                span.set("http.response.status_code", response.status_code)
                location = response.headers.get("location")
                if location is not None:
                    span.set("jobserver.job.id", location.rsplit("/", 1)[-1])
                return response

        return wrapper

    async def get_job(request: Request) -> Response:
        job_id = request.path_params["job_id"]
        try:
            wait = parsed_query(GetQuery, request).wait
        except pydantic.ValidationError as exc:
            return validation_problem(exc, "query")
        if wait <= 0:
            return JSON(await read(job_with_steps, job_id))
        deadline = time.monotonic() + wait
        with svc.hub.watch(job_id) as watch:  # watch before reading: no change slips between
            while True:
                watch.clear()
                data = await read(job_with_steps, job_id)
                now = time.monotonic()
                if data["status"] in FINISHED or now >= deadline or svc.hub.closed:
                    return JSON(data)  # closed: the server is stopping, the job as it is now
                # a wait is not cut short by a client that leaves (only a stream's is): look every
                # GONE_CHECK_S, so a client that drops its long-poll frees it within about that
                recheck_at = min(deadline, now + recheck_s)
                while not await watch.wait(max(0.0, min(recheck_at - time.monotonic(), GONE_CHECK_S))):
                    if await request.is_disconnected():
                        return Response(status_code=204)  # the client left: nobody to answer
                    if time.monotonic() >= recheck_at:
                        break

    def job_with_steps(job_id: str) -> dict[str, Any]:
        """The job object with its steps: both reads in one thread hop."""
        record = store.get(job_id)
        data = with_reason(record, svc.paused_tasks() if record.status in HELD else frozenset())
        data["steps"] = store.steps(job_id)
        return data

    def with_reason(record: JobRecord, paused: frozenset[str], summary: bool = False) -> dict[str, Any]:
        data = record.summary() if summary else record.to_api()
        data["pending_reason"] = svc.reasons.of(record, paused)
        return data

    def listed(
        status: str | None,
        task: str | None,
        limit: int,
        cursor: str | None,
        parent: str | None,
        key: str | None,
        scope: str,
        summary: bool,
        id_suffix: str | None,
    ) -> dict[str, Any]:
        idempotency = (scope, key) if key else None
        jobs, next_cursor = store.list_jobs(status, task, limit, cursor, parent, idempotency, id_suffix)
        paused = svc.paused_tasks() if any(j.status in HELD for j in jobs) else frozenset()
        return {"jobs": [with_reason(j, paused, summary) for j in jobs], "next_cursor": next_cursor}

    async def list_jobs(request: Request) -> Response:
        try:
            q = parsed_query(ListQuery, request)
        except pydantic.ValidationError as exc:
            return validation_problem(exc, "query")
        return JSON(
            await read(
                listed,
                q.status,
                q.task,
                q.limit,
                q.cursor,
                q.parent,
                q.idempotency_key,
                key_scope(request),
                q.fields == "summary",
                q.id_suffix,
            )
        )

    async def cancel(request: Request) -> Response:
        record = await commands.cancel(request.path_params["job_id"])
        return JSON(record.to_api(), status_code=202)

    async def retry(request: Request) -> Response:
        idem_key = header_key(request)  # a resent retry must not start another round
        record, replayed = await commands.retry(request.path_params["job_id"], idem_key, key_scope(request))
        if replayed:
            return JSON(record.to_api(), status_code=200, headers={"Idempotent-Replayed": "true"})
        return JSON(record.to_api(), status_code=202)

    async def delete(request: Request) -> Response:
        await commands.delete(request.path_params["job_id"])
        return Response(status_code=204)

    async def events(request: Request) -> Response:
        job_id = request.path_params["job_id"]
        try:
            follow = parsed_query(EventsQuery, request).follow
        except pydantic.ValidationError as exc:
            return validation_problem(exc, "query")
        record = await read(store.get, job_id)  # 404 before the stream starts
        if follow and svc.hub.closed and not record.finished:
            # stopping: a stream would end at once with nothing, which a client cannot tell from
            # the end of the job; a 503 with Retry-After says to come back (here or elsewhere)
            raise DrainingError(
                "The server is shutting down: watch again (with Last-Event-ID) once it is back, or on another node."
            )
        after = last_event_id(request)
        return StreamingResponse(
            event_stream(job_id, after, follow),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    async def event_stream(job_id: str, after: int, follow: bool) -> AsyncIterator[bytes]:
        last_sent = time.monotonic()
        finishing = False
        with svc.hub.watch(job_id) as watch:
            while True:
                watch.clear()
                rows = await read(store.events_after, job_id, after, EVENT_PAGE)
                ended = False
                for event_id, kind, data in rows:
                    after = event_id
                    yield f"id: {event_id}\nevent: {kind}\ndata: {data}\n\n".encode()
                    last_sent = time.monotonic()
                    ended = kind == "status" and orjson.loads(data).get("status") in FINISHED
                if ended and len(rows) < EVENT_PAGE:
                    return  # the newest event is a terminal status (a retried job's old end is not)
                if rows:
                    continue
                if finishing or not follow or svc.hub.closed:
                    return  # nothing after the cursor and the job is over, or the server is stopping
                if await read(_gone_or_finished, job_id):
                    finishing = True  # it may have finished between the two reads: read its events once more
                    continue
                quiet = time.monotonic() - last_sent
                if quiet >= KEEPALIVE_S:  # whatever changed meanwhile, nothing was sent for that long
                    last_sent, quiet = time.monotonic(), 0.0
                    yield b": keepalive\n\n"
                await watch.wait(min(KEEPALIVE_S - quiet, recheck_s))

    def _gone_or_finished(job_id: str) -> bool:
        try:
            return store.get(job_id).finished
        except JobNotFoundError:
            return True

    async def list_tasks(request: Request) -> Response:
        refuse_query(request)
        paused, pending = await read(lambda: (svc.paused_tasks(), svc.pending_by_task()))
        return JSON(
            {
                "unknown_tasks": [  # jobs that wait for a task no process here knows: another node's, or a typo's
                    {"name": name, "pending": n}
                    for name, n in sorted(pending.items())
                    if name not in svc.registry
                ],
                "tasks": [
                    {
                        "name": t.name,
                        "description": t.description,
                        "args_schema": t.schema,
                        # `concurrency=n` is held as Concurrency(<task name>, n): listed with the others
                        "options": {**t.options.public(), "limits": [limit.public() for limit in t.limits]},
                        "is_async": t.is_async,
                        "paused": t.name in paused,
                    }
                    for t in svc.registry.all()
                ],
            }
        )

    async def list_limits(request: Request) -> Response:
        refuse_query(request)
        keys = await read(svc.limits.usage, svc.now())
        return JSON(
            {
                "limits": [
                    {
                        "key": k.key,
                        "kind": k.kind,
                        "limit": _count(k.limit),
                        "per": k.per_s,
                        "in_use": _count(k.in_use),
                        "blocked": k.blocked,
                    }
                    for k in keys
                ]
            }
        )

    async def healthz(request: Request) -> Response:
        return JSON({"status": "ok"})

    async def readyz(request: Request) -> Response:
        checks = {"database": "ok", "workers": "ok"}
        late = "a read did not answer"
        try:
            # the read is bounded too: on a disk that stops answering (frozen, a stalled network
            # volume) it waits with the disk, and a probe that never answers says nothing
            await asyncio.wait_for(read(store.ping), READY_WRITE_TIMEOUT_S)
            late = "a write did not commit"
            await asyncio.wait_for(asyncio.wrap_future(store.writable()), READY_WRITE_TIMEOUT_S)
        except TimeoutError:
            checks["database"] = f"error: {late} within {READY_WRITE_TIMEOUT_S}s"
        except Exception as exc:
            checks["database"] = f"error: {exc}"
        if not svc.workers_alive():
            checks["workers"] = "not running"
        ok = all(v == "ok" for v in checks.values()) and not commands.draining
        return JSON(
            {"status": "ready" if ok else "not ready", "checks": checks, "draining": commands.draining},
            status_code=200 if ok else 503,
        )

    async def metrics(request: Request) -> Response:
        body = await read(svc.metrics.render) if svc.metrics is not None else b""
        return Response(body, media_type=METRICS_CONTENT_TYPE)

    openapi_doc: list[bytes] = []  # built on first use: every task module is imported by then

    # an open server answers only this machine's names and `server.allowed_hosts` (CrossSiteGuard,
    # below), unless told "*"; with API keys no Host is checked
    open_hosts = None if settings.auth.api_keys else frozenset(settings.server.allowed_hosts)
    host_checked = open_hosts is not None and "*" not in open_hosts

    async def openapi(request: Request) -> Response:
        if not openapi_doc:
            doc = build_openapi(
                svc.registry, bool(settings.auth.api_keys), settings.auth.open_paths, host_checked
            )
            openapi_doc.append(orjson.dumps(doc))
        return Response(openapi_doc[0], media_type="application/json")

    async def problem_page(request: Request) -> Response:
        code = request.path_params["code"]
        kind = PROBLEM_TYPES.get(code)
        if kind is None:
            return problem(404, "not-found", "Not found", f"no problem type is named {code!r}")
        if "text/markdown" in request.headers.get("accept", ""):
            return Response(problem_page_markdown(code, kind), media_type="text/markdown")
        return HTMLResponse(problem_page_html(code, kind))

    page = resources.files("jobserver.http").joinpath("static/index.html")

    async def dashboard(request: Request) -> Response:
        body = page.read_bytes() if page.is_file() else b"<h1>jobserver</h1>"
        return HTMLResponse(body, headers=DASHBOARD_HEADERS)

    routes = [
        Route("/jobs", traced("/jobs", guarded(submit)), methods=["POST"]),
        Route("/jobs", guarded(list_jobs), methods=["GET"]),
        Route("/jobs/batch", guarded(submit_batch), methods=["POST"]),
        Route("/jobs/{job_id}/signals/{name:path}", guarded(signal), methods=["POST"]),  # a name may hold "/"
        Route("/jobs/{job_id}", guarded(get_job), methods=["GET"]),
        Route("/jobs/{job_id}", guarded(delete), methods=["DELETE"]),
        Route("/jobs/{job_id}/cancel", guarded(cancel), methods=["POST"]),
        Route("/jobs/{job_id}/retry", guarded(retry), methods=["POST"]),
        Route("/jobs/{job_id}/events", guarded(events), methods=["GET"]),
        Route("/tasks", guarded(list_tasks), methods=["GET"]),
        Route("/limits", guarded(list_limits), methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
        Route("/", dashboard, methods=["GET"]),
        Route("/problems/{code}", problem_page, methods=["GET"]),
        *svc.extra_routes,
    ]
    literal_paths.update(r.path for r in routes if isinstance(r, Route) and not r.param_convertors)
    app = Starlette(
        routes=routes,
        exception_handlers={
            404: _not_found,
            405: _not_allowed,
            ClientDisconnect: _client_disconnected,
            Exception: _internal_error,
        },
    )
    # The API never redirects (Starlette's router sends /jobs/ to /jobs with a 307, and its
    # constructor has no say in it): a client that follows resends a POST elsewhere, one that
    # does not sees an empty answer. /jobs/ is a 404 problem like any unknown path.
    app.router.redirect_slashes = False
    if settings.auth.api_keys:  # open servers skip the layer entirely
        app.add_middleware(
            AuthMiddleware, api_keys=tuple(settings.auth.api_keys), open_paths=settings.auth.open_paths
        )
    # outermost: a forged request is refused, keys or not; an open server checks each Host too
    app.add_middleware(CrossSiteGuard, open_hosts=open_hosts)
    return app


async def _internal_error(request: Request, exc: Exception) -> Response:
    log.error(
        "unhandled error on %s %s",
        request.method,
        request.url.path,
        exc_info=exc,
        extra={"action": "internal_error"},
    )
    return problem(500, "internal-error", "Internal error", "an unexpected error occurred")


async def _client_disconnected(request: Request, exc: Exception) -> Response:
    """The body never came whole (the client left, or was closed for sending it too slowly):
    nothing was done, and nobody reads the answer; not an error of the server's."""
    log.debug(
        "client left during %s %s", request.method, request.url.path, extra={"action": "client_disconnected"}
    )
    return problem(400, "client-disconnected", "Client disconnected", "the request body did not arrive whole")


async def _not_found(request: Request, exc: Exception) -> Response:
    return problem(404, "not-found", "Not found", f"no route for {request.url.path}")


async def _not_allowed(request: Request, exc: Exception | None) -> Response:
    response = problem(
        405,
        "method-not-allowed",
        "Method not allowed",
        f"{request.method} is not allowed on {request.url.path}",
    )
    response.headers["Allow"] = ", ".join(allowed_methods(request))
    return response


def allowed_methods(request: Request) -> list[str]:
    """Every method some route answers on the request's path (RFC 9110: a 405 lists them in Allow)."""
    matching = [
        route
        for route in request.app.routes
        if isinstance(route, Route)
        and route.methods
        and route.matches({**request.scope, "method": "GET"})[0] != Match.NONE
    ]
    # a literal path (/jobs/cancel) is its own resource, not an id of /jobs/{job_id}
    literal = [route for route in matching if not route.param_convertors]
    return sorted({method for route in literal or matching for method in route.methods or ()})
