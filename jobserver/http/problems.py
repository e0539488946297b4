"""RFC 9457 problem documents and the one table mapping errors to HTTP answers."""

from __future__ import annotations

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
    (ConflictError, 409, "conflict", "Conflict with the job's state"),
    (DrainingError, 503, "draining", "Server is shutting down"),
    (StorageError, 503, "storage-unavailable", "Database unavailable"),
]


def problem(status: int, code: str, title: str, detail: str, **extra: Any) -> Response:
    """An application/problem+json response."""
    body = {"type": f"/problems/{code}", "title": title, "status": status, "detail": detail, "code": code}
    body.update(extra)
    headers = {"Retry-After": "5"} if status == 503 else None
    return Response(
        orjson.dumps(body), status_code=status, media_type="application/problem+json", headers=headers
    )


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


def validation_problem(exc: Any, prefix: str) -> Response:
    """422 from a pydantic ValidationError, naming each bad field."""
    errors = [
        {"loc": [prefix, *[str(p) for p in e["loc"]]], "msg": e["msg"], "type": e["type"]}
        for e in exc.errors()
    ]
    names = ", ".join(".".join(e["loc"][1:]) or prefix for e in errors)
    return problem(422, "validation-error", "Invalid request", f"invalid {prefix}: {names}", errors=errors)
