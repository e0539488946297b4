"""OpenAPI 3.2: the document served at GET /openapi.json.

Owns the description of every route, its parameters and answers, the shared
schemas (job, job list, problem document), the submit body: a union
discriminated by `task`, one member per registered task whose `args` is that
task's pydantic JSON schema (its `$defs` hoisted into `components/schemas`),
and the event stream, described the way OpenAPI 3.2 describes Server-Sent
Events: an `itemSchema` for one event (`event`, `data`, `id`), a union
discriminated by `event` whose members say what each event's JSON `data` holds.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Collection
from typing import Any

from jobserver.core.bounds import (
    CURSOR_PATTERN,
    EVENT_ID_MAX,
    ID_SUFFIX_PATTERN,
    IDEMPOTENCY_KEY_MAX,
    MAX_BATCH,
    MAX_LIMIT,
    MAX_WAIT_S,
    RUN_AT_PATTERN,
    RUN_AT_YEARS,
    SIGNAL_NAME_MAX,
)
from jobserver.core.operations import CancelFilter, DeleteFilter, RetryFilter
from jobserver.core.schedules import NAME_PATTERN, ScheduleBody
from jobserver.core.schemas import SubmitBody
from jobserver.core.tasks import Registry, TaskDef
from jobserver.core.version import package_version
from jobserver.http.auth import is_open
from jobserver.http.problems import PROBLEM_TYPES
from jobserver.runner.pending import CODES as PENDING_CODES

VERSION = "3.2.0"
PROBLEM_JSON = "application/problem+json"
STATUSES = ["pending", "running", "waiting", "completed", "failed", "cancelled"]
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
UNSAFE_METHODS = ("post", "put", "patch", "delete")
WEBHOOK_URL_PATTERN = "^[Hh][Tt][Tt][Pp]([Ss])?://"  # the scheme is checked; the host when it resolves

Schema = dict[str, Any]
# an idempotency key, in the Idempotency-Key header and in a batch item alike: one rule
IDEMPOTENCY_KEY_SCHEMA: Schema = {
    "type": "string",
    "minLength": 1,
    "maxLength": IDEMPOTENCY_KEY_MAX,
    "pattern": "^[ -~]+$",
}


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: Schema) -> Schema:
    return {"anyOf": [schema, {"type": "null"}]}


def _timestamp(nullable: bool = False) -> Schema:
    stamp: Schema = {"type": "string", "format": "date-time"}
    return _nullable(stamp) if nullable else stamp


JOB_FIELDS: dict[str, Schema] = {
    "id": {"type": "string", "description": "Opaque id; ids sort by creation time."},
    "task": {"type": "string"},
    "args": {"type": "object", "description": "The validated args, defaults filled in."},
    "status": {"type": "string", "enum": STATUSES},
    "priority": {"type": "integer"},
    "attempts": {"type": "integer", "minimum": 0},
    "max_attempts": {"type": "integer", "minimum": 1},
    "timeout": {"type": ["number", "null"], "description": "Seconds an attempt may run."},
    "progress": _nullable(_ref("Progress")),
    "result": {"description": "The task's JSON return value once completed."},
    "error": _nullable(_ref("JobError")),
    "cancel_requested": {"type": "boolean"},
    "logs_dropped": {
        "type": "integer",
        "minimum": 0,
        "description": "Log lines dropped (oldest first) to keep events.max_log_lines.",
    },
    "idempotency_key": {"type": ["string", "null"]},
    "schedule": {"type": ["string", "null"], "description": "The schedule whose tick submitted the job."},
    "pending_reason": {
        "type": ["object", "null"],
        "description": "Why a pending job is not running yet (null otherwise): `code` is delayed (with "
        "`until`), blocked_by_limit, task_paused, unknown_task, no_free_worker (due, and every worker "
        "thread or async slot that could run it is busy) or queued (due, and about to be claimed); "
        "`detail` says it in words.",
        "properties": {
            "code": {"type": "string", "enum": list(PENDING_CODES)},
            "detail": {"type": "string"},
            "until": _timestamp(),
        },
        "required": ["code", "detail"],
    },
    "webhook_url": {"type": ["string", "null"]},
    "created_at": _timestamp(),
    "run_at": _timestamp(),
    "started_at": _timestamp(nullable=True),
    "finished_at": _timestamp(nullable=True),
    "parent_id": {"type": ["string", "null"], "description": "The job whose task spawned this one."},
    "waiting_for": _nullable(_ref("WaitingFor")),
    "blocked_by": {
        "type": ["string", "null"],
        "description": "The limit key that holds this pending job back, while one does.",
    },
}

JOB_REQUIRED = [
    "id",
    "task",
    "args",
    "status",
    "priority",
    "attempts",
    "max_attempts",
    "progress",
    "result",
    "error",
    "idempotency_key",
    "webhook_url",
    "created_at",
    "run_at",
    "started_at",
    "finished_at",
]
SUMMARY_OMITS = ("args", "result")  # and `error.traceback`, which JobError does not require

SHARED_SCHEMAS: dict[str, Schema] = {
    "Job": {"type": "object", "properties": JOB_FIELDS, "required": JOB_REQUIRED},
    "JobDetail": {
        "allOf": [
            _ref("Job"),
            {"type": "object", "properties": {"steps": {"type": "array", "items": _ref("Step")}}},
        ]
    },
    "Step": {
        "type": "object",
        "required": ["name", "status"],
        "properties": {
            "name": {"type": "string"},
            "status": {"type": "string"},
            "attempt": {"type": "integer"},
            "started_at": _timestamp(nullable=True),
            "finished_at": _timestamp(nullable=True),
        },
    },
    "WaitingFor": {
        "type": "object",
        "description": "What a waiting job waits for: the name given to the call that parked it.",
        "required": ["kind", "name", "until"],
        "properties": {
            "kind": {"type": "string", "enum": ["sleep", "signal", "children"]},
            "name": {"type": "string"},
            "until": {
                **_timestamp(nullable=True),
                "description": "When a sleep ends or a wait times out; null for no timeout and for children.",
            },
        },
    },
    "BatchAnswer": {
        "type": "object",
        "required": ["jobs", "replayed"],
        "properties": {
            "jobs": {"type": "array", "items": _ref("Job")},
            "replayed": {
                "type": "array",
                "items": {"type": "integer", "minimum": 0},
                "description": "Indexes of the items whose Idempotency-Key gave an earlier job back.",
            },
        },
    },
    "Progress": {
        "type": "object",
        "properties": {
            "current": {"type": ["number", "null"]},
            "total": {"type": ["number", "null"]},
            "message": {"type": ["string", "null"]},
        },
    },
    "JobError": {
        "type": "object",
        "required": ["type", "message"],
        "properties": {
            "type": {"type": "string"},
            "message": {"type": "string"},
            "traceback": {"type": ["string", "null"]},
        },
    },
    "JobSummary": {
        "type": "object",
        "description": "A job as `GET /jobs?fields=summary` lists it: without `args`, `result` and the "
        "error's `traceback`, which can be large (`GET /jobs/{id}` has them).",
        "properties": {k: v for k, v in JOB_FIELDS.items() if k not in SUMMARY_OMITS},
        "required": [k for k in JOB_REQUIRED if k not in SUMMARY_OMITS],
    },
    "JobList": {
        "type": "object",
        "required": ["jobs", "next_cursor"],
        "properties": {
            "jobs": {
                "type": "array",
                "items": {"anyOf": [_ref("Job"), _ref("JobSummary")]},
                "description": "Full jobs, or with `fields=summary` each a JobSummary.",
            },
            "next_cursor": {"type": ["string", "null"], "description": "Pass as `cursor` for the next page."},
        },
    },
    "WebhookDeliveries": {
        "type": "object",
        "required": ["deliveries", "pending"],
        "properties": {
            "deliveries": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "id": {"type": ["string", "integer"]},
                        "attempt": {"type": "integer"},
                        "at": _timestamp(nullable=True),
                        "status_code": {"type": ["integer", "null"]},
                        "error": {"type": ["string", "null"]},
                        "duration_ms": {"type": ["number", "null"]},
                        "type": {
                            "type": ["string", "null"],
                            "description": "The event it carried, e.g. `job.completed`.",
                        },
                    },
                },
            },
            "pending": {
                "type": "boolean",
                "description": (
                    "The list may still grow: the job has a webhook URL and has not finished, or a"
                    " delivery is queued or waiting for a retry. False once it is final (until a retry)."
                ),
            },
        },
    },
    "TaskList": {
        "type": "object",
        "required": ["tasks"],
        "properties": {
            "tasks": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["name", "args_schema", "options"],
                    "properties": {
                        "name": {"type": "string"},
                        "description": {"type": "string"},
                        "args_schema": {"type": "object"},
                        "options": {"type": "object"},
                        "is_async": {"type": "boolean"},
                        "paused": {"type": "boolean", "description": "Its pending jobs are held back."},
                    },
                },
            },
            "unknown_tasks": {
                "type": "array",
                "description": "Tasks that pending jobs name and this process does not know: they stay "
                "pending until a process that knows them claims them.",
                "items": {
                    "type": "object",
                    "required": ["name", "pending"],
                    "properties": {"name": {"type": "string"}, "pending": {"type": "integer", "minimum": 1}},
                },
            },
        },
    },
    "LimitList": {
        "type": "object",
        "required": ["limits"],
        "properties": {
            "limits": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["key", "kind", "limit", "in_use", "blocked"],
                    "properties": {
                        "key": {"type": "string"},
                        "kind": {"type": "string", "enum": ["concurrency", "rate"]},
                        "limit": {"type": "number", "description": "Jobs at once, or cost units per window."},
                        "per": {"type": ["number", "null"], "description": "A rate's window in seconds."},
                        "in_use": {
                            "type": "number",
                            "description": "Jobs holding the key now, or the costs charged within the last window.",
                        },
                        "blocked": {"type": "integer", "description": "Pending jobs this key holds back."},
                    },
                },
            }
        },
    },
    "Health": {"type": "object", "required": ["status"], "properties": {"status": {"type": "string"}}},
    "Readiness": {
        "type": "object",
        "required": ["status", "checks"],
        "properties": {
            "status": {"type": "string", "enum": ["ready", "not ready"]},
            "checks": {"type": "object", "additionalProperties": {"type": "string"}},
            "draining": {"type": "boolean"},
        },
    },
    "Problem": {
        "type": "object",
        "required": ["type", "title", "status"],
        "properties": {
            "type": {"type": "string"},
            "title": {"type": "string"},
            "status": {"type": "integer"},
            "detail": {"type": "string"},
            "code": {"type": "string"},
            "errors": {"type": "array", "items": _ref("FieldError")},
        },
    },
    "FieldError": {
        "type": "object",
        "required": ["loc", "msg", "type"],
        "properties": {
            "loc": {"type": "array", "items": {"type": ["string", "integer"]}},
            "msg": {"type": "string"},
            "type": {"type": "string"},
        },
    },
}


def digits_at_most(limit: int) -> str:
    """A pattern for the decimal strings (leading zeros allowed) of at most as many digits as
    `limit` has and a value of at most `limit`: exact where a length cap alone would not be."""
    top = str(limit)
    shorter = f"[0-9]{{1,{len(top) - 1}}}" if len(top) > 1 else None
    same_length = [
        f"{top[:i]}[0-{int(top[i]) - 1}][0-9]{{{len(top) - i - 1}}}" for i in range(len(top)) if top[i] != "0"
    ]
    return f"^({'|'.join(a for a in [shorter, *same_length, top] if a)})$"


def last_event_id_pattern() -> str:
    """An event id the stream resumes after, or empty: read from the first event, as without it."""
    return "^$|" + digits_at_most(EVENT_ID_MAX)


def _event(kind: str, description: str, data: Schema) -> Schema:
    """One kind of Server-Sent Event: its `event` name and what its JSON `data` holds."""
    return {
        "type": "object",
        "description": description,
        "required": ["event", "data", "id"],
        "properties": {
            "event": {"const": kind},
            "data": {"type": "string", "contentMediaType": "application/json", "contentSchema": data},
            "id": {
                "type": "string",
                "pattern": "^[0-9]+$",
                "description": "Resume after it with Last-Event-ID.",
            },
            "retry": {"type": "integer", "minimum": 0},
        },
    }


EVENT_SCHEMAS: dict[str, Schema] = {
    "StatusEvent": _event("status", "The job changed status; `data` is the job object.", _ref("Job")),
    "ProgressEvent": _event("progress", "The task reported progress.", _ref("Progress")),
    "LogEvent": _event(
        "log",
        "The task logged a line.",
        {
            "type": "object",
            "required": ["message", "at"],
            "properties": {"message": {"type": "string"}, "at": _timestamp()},
        },
    ),
}
EVENT_KINDS = {"status": "StatusEvent", "progress": "ProgressEvent", "log": "LogEvent"}


def event_item_schema() -> Schema:
    """One event of a job's stream, discriminated by its `event` field."""
    return {
        "oneOf": [_ref(name) for name in EVENT_KINDS.values()],
        "discriminator": {
            "propertyName": "event",
            "mapping": {kind: f"#/components/schemas/{name}" for kind, name in EVENT_KINDS.items()},
        },
    }


PROBLEMS: dict[int, tuple[str, str]] = {
    400: ("BadRequest", "The body is not valid JSON, or a header is not what it must be (Last-Event-ID)."),
    401: ("Unauthorized", "Missing or wrong API key."),
    403: (
        "CrossSiteRequest",
        "A browser sent this change from another site's page (`Sec-Fetch-Site`, `Origin`).",
    ),
    404: ("NotFound", "No such job, schedule or task."),
    409: ("Conflict", "The job's state does not allow this (or the Idempotency-Key is in use)."),
    413: ("TooLarge", "The body is larger than `server.max_body_bytes`."),
    415: ("UnsupportedMediaType", "The body is not JSON."),
    422: ("ValidationError", "Invalid body, query or header; `errors` names each bad field."),
    503: ("Unavailable", "Draining for shutdown, or the database is unavailable."),
}

_HOST_NOT_ALLOWED = (
    "An open server (no API keys) answers only a `Host` that names this machine (`localhost`, "
    "`127.0.0.1`, `::1`) or one of `server.allowed_hosts`."
)
# the other 403 answers: an open server refuses any request for a Host not its own
FORBIDDEN: dict[str, str] = {
    "HostNotAllowed": _HOST_NOT_ALLOWED,
    "CrossSiteOrHostNotAllowed": f"{PROBLEMS[403][1]} Or: {_HOST_NOT_ALLOWED}",
}


def _problem_responses() -> dict[str, Schema]:
    out: dict[str, Schema] = {}
    for status, (name, description) in PROBLEMS.items():
        response: Schema = {
            "description": description,
            "content": {PROBLEM_JSON: {"schema": _ref("Problem")}},
        }
        if status == 401:
            response["headers"] = {"WWW-Authenticate": {"schema": {"type": "string"}}}
        if status == 503:
            response["headers"] = {"Retry-After": {"schema": {"type": "string"}}}
        out[name] = response
    for name, description in FORBIDDEN.items():
        out[name] = {"description": description, "content": {PROBLEM_JSON: {"schema": _ref("Problem")}}}
    return out


def _json(description: str, schema: Schema, headers: dict[str, Schema] | None = None) -> Schema:
    response: Schema = {"description": description, "content": {"application/json": {"schema": schema}}}
    if headers:
        response["headers"] = {k: {"schema": v} for k, v in headers.items()}
    return response


def _answers(ok: dict[int, Schema], problems: tuple[int, ...], secured: bool) -> dict[str, Schema]:
    answers = {str(status): response for status, response in ok.items()}
    for status in sorted((*problems, 401) if secured else problems):
        answers[str(status)] = {"$ref": f"#/components/responses/{PROBLEMS[status][0]}"}
    return answers


# ------------------------------------------------------------------ submit body
def _rewrite_refs(node: Any, prefix: str) -> Any:
    """Point pydantic's local `#/$defs/X` references at the hoisted components."""
    if isinstance(node, dict):
        out = {k: _rewrite_refs(v, prefix) for k, v in node.items()}
        ref = out.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            out["$ref"] = f"#/components/schemas/{prefix}{_UNSAFE.sub('_', ref[len('#/$defs/') :])}"
        return out
    if isinstance(node, list):
        return [_rewrite_refs(v, prefix) for v in node]
    return node


def task_args_component(taskdef: TaskDef) -> tuple[str, dict[str, Schema]]:
    """(component name of the task's args schema, every component it needs)."""
    base = _UNSAFE.sub("_", taskdef.name)
    prefix = f"{base}.defs."
    schema = copy.deepcopy(taskdef.schema)
    defs = schema.pop("$defs", {})
    components = {f"{prefix}{_UNSAFE.sub('_', k)}": _rewrite_refs(v, prefix) for k, v in defs.items()}
    name = f"{base}.args"
    components[name] = _rewrite_refs(schema, prefix)
    return name, components


def _common_submit_fields() -> dict[str, Schema]:
    props = copy.deepcopy(SubmitBody.model_json_schema()["properties"])
    for key in ("task", "args"):
        props.pop(key, None)
    props["delay"]["description"] = "Seconds to wait before the first attempt (not with run_at)."
    props["run_at"]["description"] = (
        f"When the first attempt may run, with an offset or Z (not with delay); a date from "
        f"{RUN_AT_YEARS[0]} to {RUN_AT_YEARS[1]}."
    )
    for member in props["run_at"]["anyOf"]:
        if member.get("type") == "string":
            member["pattern"] = RUN_AT_PATTERN
    props["webhook_url"]["description"] = (
        "An http(s) URL, POSTed to when the job finishes. Refused (422, webhook-url-refused) when "
        "its host does not resolve or resolves to an internal address the server does not allow."
    )
    for member in props["webhook_url"]["anyOf"]:
        if member.get("type") == "string":
            member["pattern"] = WEBHOOK_URL_PATTERN
    return dict(props)


# delay and run_at are two ways to say when: a body gives at most one of them
ONE_SCHEDULE: Schema = {
    "not": {
        "required": ["delay", "run_at"],
        "properties": {"delay": {"type": "number"}, "run_at": {"type": "string"}},
    }
}


def submit_schemas(registry: Registry, batch_item: bool = False) -> tuple[Schema, dict[str, Schema]]:
    """The submit body (a `task`-discriminated union) and the components it refers to;
    with `batch_item`, an item of POST /jobs/batch (which may carry its `idempotency_key`)."""
    common = _common_submit_fields()
    if batch_item:
        common["idempotency_key"] = {
            "anyOf": [dict(IDEMPOTENCY_KEY_SCHEMA), {"type": "null"}],
            "description": "This item's Idempotency-Key: same key and body give the first job again. "
            "The header's rule: printable ASCII; spaces around it are not part of it.",
        }
    components: dict[str, Schema] = {}
    members, mapping = [], {}
    for taskdef in registry.all():
        args_name, args_components = task_args_component(taskdef)
        components.update(args_components)
        member = f"{_UNSAFE.sub('_', taskdef.name)}.{'batch-item' if batch_item else 'submit'}"
        required = ["task", "args"] if taskdef.schema.get("required") else ["task"]
        components[member] = {
            "type": "object",
            "title": f"Submit {taskdef.name}",
            "description": taskdef.description or f"Run {taskdef.name}.",
            "properties": {
                "task": {"type": "string", "const": taskdef.name},
                "args": _ref(args_name),
                **common,
            },
            "required": required,
            "additionalProperties": False,
            **ONE_SCHEDULE,
        }
        members.append(_ref(member))
        mapping[taskdef.name] = f"#/components/schemas/{member}"
    if not members:
        fallback = {
            "type": "object",
            "required": ["task"],
            "additionalProperties": False,
            "properties": {"task": {"type": "string"}, "args": {"type": "object"}, **common},
            **ONE_SCHEDULE,
        }
        return fallback, components
    return {"oneOf": members, "discriminator": {"propertyName": "task", "mapping": mapping}}, components


# ------------------------------------------------------------------------ paths
# `/jobs/batch`, `/jobs/cancel`, `/jobs/retry` and `/jobs/delete` are routes of their own (another
# method on them is a 405), so those words never name a job here
JOB_ID_PATTERN = "^(?!(batch|cancel|retry|delete)$)[A-Za-z0-9_-]{1,64}$"


def _job_id() -> Schema:
    return {
        "name": "job_id",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "pattern": JOB_ID_PATTERN},
    }


def _paths(secured: bool) -> dict[str, Schema]:
    def op(
        op_id: str,
        summary: str,
        ok: dict[int, Schema],
        problems: tuple[int, ...] = (),
        params: list[Schema] | None = None,
        **extra: Any,
    ) -> Schema:
        doc: Schema = {
            "operationId": op_id,
            "summary": summary,
            **extra,
            "responses": _answers(ok, problems, secured),
        }
        if params:
            doc["parameters"] = params
        return doc

    job = _json("The job.", _ref("Job"))
    return {
        "/jobs": {
            "post": op(
                "submitJob",
                "Submit a job",
                {
                    202: _json("Accepted.", _ref("Job"), {"Location": {"type": "string"}}),
                    200: _json(
                        "Idempotent replay: the job first made with this Idempotency-Key.",
                        _ref("Job"),
                        {"Location": {"type": "string"}, "Idempotent-Replayed": {"type": "string"}},
                    ),
                },
                (400, 409, 413, 415, 422, 503),
                params=[
                    {
                        "name": "Idempotency-Key",
                        "in": "header",
                        "required": False,
                        "description": "Same key and body: the first job again (scoped per API key). "
                        "Printable ASCII; whitespace around it is not part of it.",
                        "schema": dict(IDEMPOTENCY_KEY_SCHEMA),
                    }
                ],
                requestBody={
                    "required": True,
                    "content": {"application/json": {"schema": _ref("SubmitBody")}},
                },
            ),
            "get": op(
                "listJobs",
                "List jobs, newest first",
                {200: _json("A page of jobs.", _ref("JobList"))},
                (422,),
                params=[
                    {"name": "status", "in": "query", "schema": {"type": "string", "enum": STATUSES}},
                    {"name": "task", "in": "query", "schema": {"type": "string", "maxLength": 200}},
                    {
                        "name": "parent",
                        "in": "query",
                        "description": "Only the children of this job.",
                        "schema": {"type": "string", "maxLength": 64},
                    },
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": 50},
                    },
                    {
                        "name": "cursor",
                        "in": "query",
                        "schema": {"type": "string", "pattern": CURSOR_PATTERN},
                    },
                    {
                        "name": "idempotency_key",
                        "in": "query",
                        "description": "Only the job submitted with this Idempotency-Key (under the caller's API key).",
                        "schema": {"type": "string", "minLength": 1, "maxLength": 255},
                    },
                    {
                        "name": "id_suffix",
                        "in": "query",
                        "description": "Only the jobs whose id ends with this (the short id a list shows), newest "
                        "first. A scan of the ids that stops once the page is full: the fewer jobs match, "
                        "the more ids it reads (every one when none matches).",
                        "schema": {"type": "string", "pattern": ID_SUFFIX_PATTERN},
                    },
                    {
                        "name": "fields",
                        "in": "query",
                        "description": "`summary`: each job without `args`, `result` and the error's `traceback` "
                        "(a list view's rows, however large those are); `full` (the default): whole jobs.",
                        "schema": {"type": "string", "enum": ["full", "summary"], "default": "full"},
                    },
                ],
            ),
        },
        "/jobs/batch": {
            "post": op(
                "submitJobs",
                "Submit up to 1,000 jobs in one transaction",
                {
                    202: _json(
                        "Accepted, in the order sent (replayed items give their first job).",
                        _ref("BatchAnswer"),
                    )
                },
                (400, 413, 415, 422, 503),
                description="All or nothing: a bad item is a 422 naming it by index (`jobs.3.args.x`).",
                requestBody={
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["jobs"],
                                "additionalProperties": False,
                                "properties": {
                                    "jobs": {
                                        "type": "array",
                                        "minItems": 1,
                                        "maxItems": MAX_BATCH,
                                        "items": _ref("BatchItem"),
                                    }
                                },
                            }
                        }
                    },
                },
            )
        },
        "/jobs/{job_id}/signals/{name}": {
            "post": op(
                "signalJob",
                "Send a signal (any JSON body) to a job",
                {
                    202: _json("Kept; a job waiting for it runs again.", _ref("Job")),
                    200: _json("The same signal with an equal body was already sent.", _ref("Job")),
                },
                (400, 404, 409, 413, 415, 422),
                description=(
                    "409 when the signal was sent with another body (`signal-conflict`), the job is"
                    " finished (`conflict`), or its wait for this name is over, timed out"
                    " (`signal-not-awaited`)."
                ),
                params=[
                    _job_id(),
                    {
                        "name": "name",
                        "in": "path",
                        "required": True,
                        "description": (
                            "The name the task waits for (`ctx.wait_for(name)`); it may hold `/`,"
                            " sent as is or as `%2F`."
                        ),
                        "schema": {"type": "string", "minLength": 1, "maxLength": SIGNAL_NAME_MAX},
                    },
                ],
                requestBody={"required": True, "content": {"application/json": {"schema": {}}}},
            )
        },
        "/jobs/{job_id}": {
            "get": op(
                "getJob",
                "Read a job (optionally wait until it finishes)",
                {200: _json("The job and its steps.", _ref("JobDetail"))},
                (404, 422),
                params=[
                    _job_id(),
                    {
                        "name": "wait",
                        "in": "query",
                        "description": "Hold the answer up to this many seconds.",
                        "schema": {"type": "number", "minimum": 0, "maximum": MAX_WAIT_S},
                    },
                ],
            ),
            "delete": op(
                "deleteJob",
                "Forget a finished job",
                {204: {"description": "Deleted."}},
                (404, 409),
                params=[_job_id()],
            ),
        },
        "/jobs/{job_id}/cancel": {
            "post": op("cancelJob", "Cancel a job", {202: job}, (404, 409), params=[_job_id()])
        },
        "/jobs/{job_id}/retry": {
            "post": op(
                "retryJob",
                "Run a failed or cancelled job again",
                {
                    202: job,
                    200: _json(
                        "Idempotent replay: this retry was already made with this Idempotency-Key; "
                        "the job as it is now, no new round started.",
                        _ref("Job"),
                        {"Idempotent-Replayed": {"type": "string"}},
                    ),
                },
                (404, 409, 422),
                params=[
                    _job_id(),
                    {
                        "name": "Idempotency-Key",
                        "in": "header",
                        "required": False,
                        "description": "A resend with the same key retries nothing again: the job as "
                        "it is now (scoped per API key; a key names one request, of any route).",
                        "schema": dict(IDEMPOTENCY_KEY_SCHEMA),
                    },
                ],
            )
        },
        "/jobs/{job_id}/events": {
            "get": op(
                "streamJobEvents",
                "Server-Sent Events of a job",
                {
                    200: {
                        "description": "`status`, `progress` and `log` events; ends after the final status.",
                        "content": {"text/event-stream": {"itemSchema": _ref("JobEvent")}},
                    }
                },
                (400, 404, 422, 503),
                params=[
                    _job_id(),
                    {
                        "name": "Last-Event-ID",
                        "in": "header",
                        "description": "Resume after this event id (digits, at most 2^63 - 1; empty: from the "
                        "first event); anything else is a 400.",
                        "schema": {"type": "string", "pattern": last_event_id_pattern()},
                    },
                    {
                        "name": "follow",
                        "in": "query",
                        "description": "false: send the stored events and end, without waiting for more.",
                        "schema": {"type": "boolean", "default": True},
                    },
                    {
                        "name": "last_event_id",
                        "in": "query",
                        "description": "As the Last-Event-ID header, for clients that cannot set one "
                        "(the header wins when both are sent).",
                        "schema": {"type": "string", "pattern": last_event_id_pattern()},
                    },
                ],
            )
        },
        "/jobs/{job_id}/webhooks": {
            "get": op(
                "listJobWebhooks",
                "The job's webhook delivery attempts",
                {200: _json("Deliveries.", _ref("WebhookDeliveries"))},
                (404, 422),
                params=[_job_id()],
            )
        },
        "/tasks": {
            "get": op("listTasks", "Registered tasks", {200: _json("The tasks.", _ref("TaskList"))}, (422,))
        },
        "/limits": {
            "get": op(
                "listLimits",
                "Every limit key with its limit and current use",
                {200: _json("The limit keys.", _ref("LimitList"))},
                (422,),
            )
        },
        "/healthz": {"get": op("healthz", "The process answers", {200: _json("Alive.", _ref("Health"))})},
        "/readyz": {
            "get": op(
                "readyz",
                "Database reachable and workers alive",
                {
                    200: _json("Ready.", _ref("Readiness")),
                    503: _json("Not ready (or draining).", _ref("Readiness")),
                },
            )
        },
        "/metrics": {
            "get": op(
                "metrics",
                "Prometheus metrics",
                {
                    200: {
                        "description": "Prometheus text format 0.0.4.",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            )
        },
        "/openapi.json": {
            "get": op("openapi", "This document", {200: _json("OpenAPI 3.2.", {"type": "object"})})
        },
        "/": {
            "get": op(
                "dashboard",
                "The dashboard",
                {
                    200: {
                        "description": "HTML page.",
                        "content": {"text/html": {"schema": {"type": "string"}}},
                    }
                },
            )
        },
        "/problems/{code}": {
            "get": op(
                "problemType",
                "The page explaining a problem type (the `type` of an error answer)",
                {
                    200: {
                        "description": "HTML, or Markdown when the request accepts text/markdown.",
                        "content": {
                            "text/html": {"schema": {"type": "string"}},
                            "text/markdown": {"schema": {"type": "string"}},
                        },
                    }
                },
                (404,),
                params=[
                    {
                        "name": "code",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "enum": sorted(PROBLEM_TYPES)},
                    }
                ],
            )
        },
    }


# ------------------------------------------------------------------- operations
def _count_schema() -> Schema:
    return {
        "type": "object",
        "required": ["count"],
        "properties": {"count": {"type": "integer", "minimum": 0}},
    }


def _finish_counts() -> Schema:
    return {
        "type": "object",
        "properties": {
            "completed": {"type": "integer"},
            "failed": {"type": "integer"},
            "cancelled": {"type": "integer"},
            "throughput_per_minute": {"type": "number", "description": "Jobs finished per minute."},
            "failure_rate": {
                "type": ["number", "null"],
                "description": "failed / (completed + failed); null when none ended.",
            },
        },
    }


OPS_SCHEMAS: dict[str, Schema] = {
    "Schedule": {
        "type": "object",
        "required": [
            "name",
            "task",
            "cron",
            "timezone",
            "args",
            "catch_up",
            "paused",
            "next_run_at",
            "last_run_at",
            "last_job_id",
        ],
        "properties": {
            "name": {"type": "string"},
            "task": {"type": "string"},
            "cron": {"type": "string", "description": "Five-field cron."},
            "timezone": {"type": "string", "description": "IANA time zone of the cron."},
            "args": {"type": "object"},
            "catch_up": {"type": "boolean", "description": "Run the latest tick missed while no server ran."},
            "paused": {"type": "boolean"},
            "next_run_at": _timestamp(nullable=True),
            "last_run_at": _timestamp(nullable=True),
            "last_job_id": {"type": ["string", "null"]},
        },
    },
    "ScheduleList": {
        "type": "object",
        "required": ["schedules"],
        "properties": {"schedules": {"type": "array", "items": _ref("Schedule")}},
    },
    "ScheduleBody": ScheduleBody.model_json_schema(),
    "CancelFilter": CancelFilter.model_json_schema(),
    "RetryFilter": RetryFilter.model_json_schema(),
    "DeleteFilter": DeleteFilter.model_json_schema(),
    "Count": _count_schema(),
    "TaskPause": {
        "type": "object",
        "required": ["name", "paused"],
        "properties": {"name": {"type": "string"}, "paused": {"type": "boolean"}},
    },
    "Stats": {
        "type": "object",
        "required": ["at", "counts", "tasks", "last_hour"],
        "properties": {
            "at": _timestamp(),
            "counts": {"type": "object", "additionalProperties": {"type": "integer"}},
            "tasks": {
                "type": "object",
                "additionalProperties": {"type": "object", "additionalProperties": {"type": "integer"}},
            },
            "last_hour": {
                "allOf": [
                    _finish_counts(),
                    {
                        "properties": {
                            "tasks": {"type": "object", "additionalProperties": _finish_counts()},
                            "minutes": {
                                "type": "array",
                                "description": "The 60 minutes of the window, oldest first: finishes per minute.",
                                "items": {
                                    "type": "object",
                                    "required": ["at", "completed", "failed", "cancelled"],
                                    "properties": {
                                        "at": _timestamp(),
                                        "completed": {"type": "integer"},
                                        "failed": {"type": "integer"},
                                        "cancelled": {"type": "integer"},
                                    },
                                },
                            },
                        }
                    },
                ]
            },
        },
    },
}


def _name_param(what: str, pattern: str | None) -> Schema:
    schema: Schema = {"type": "string", "minLength": 1, "maxLength": 200}
    if pattern:
        schema["pattern"] = pattern
    return {"name": "name", "in": "path", "required": True, "description": what, "schema": schema}


def ops_paths(secured: bool) -> dict[str, Schema]:
    """Schedules, pausing a task, bulk actions and /stats."""

    def op(
        op_id: str, summary: str, ok: dict[int, Schema], problems: tuple[int, ...], **extra: Any
    ) -> Schema:
        return {
            "operationId": op_id,
            "summary": summary,
            **extra,
            "responses": _answers(ok, problems, secured),
        }

    schedule = _name_param("The schedule's name.", NAME_PATTERN)
    task = _name_param("The task's name.", None)

    def body(name: str) -> Schema:
        return {"required": True, "content": {"application/json": {"schema": _ref(name)}}}

    one = _json("The schedule.", _ref("Schedule"))
    bulk_problems = (400, 413, 415, 422)
    return {
        "/schedules": {"get": op("listSchedules", "Every schedule", {200: _json("Schedules.", _ref("ScheduleList"))}, (422,))},
        "/schedules/{name}": {
            "get": op("getSchedule", "Read a schedule", {200: one}, (404, 422), parameters=[schedule]),
            "put": op(
                "putSchedule",
                "Create or replace a schedule (a field left out takes its default)",
                {201: _json("Created.", _ref("Schedule")), 200: _json("Replaced.", _ref("Schedule"))},
                (400, 413, 415, 422),
                parameters=[schedule],
                requestBody=body("ScheduleBody"),
            ),
            "delete": op("deleteSchedule", "Remove a schedule (its jobs stay)", {204: {"description": "Removed."}}, (404,), parameters=[schedule]),
        },
        "/schedules/{name}/pause": {
            "post": op("pauseSchedule", "Stop a schedule's ticks", {200: one}, (404,), parameters=[schedule])
        },
        "/schedules/{name}/resume": {
            "post": op("resumeSchedule", "Tick again from the next tick after now", {200: one}, (404,), parameters=[schedule])
        },
        "/tasks/{name}/pause": {
            "post": op(
                "pauseTask", "Hold a task's pending jobs back (running ones finish)",
                {200: _json("Paused.", _ref("TaskPause"))}, (404,), parameters=[task],
            )
        },
        "/tasks/{name}/resume": {
            "post": op("resumeTask", "Let a task's jobs run again", {200: _json("Resumed.", _ref("TaskPause"))}, (404,), parameters=[task])
        },
        "/jobs/cancel": {
            "post": op(
                "cancelJobs", "Cancel every matching pending or waiting job, ask matching running ones to stop",
                {200: _json("How many jobs were cancelled or asked to stop.", _ref("Count"))},
                bulk_problems, requestBody=body("CancelFilter"),
            )
        },
        "/jobs/retry": {
            "post": op(
                "retryJobs", "Retry every matching failed or cancelled job",
                {200: _json("How many jobs were retried.", _ref("Count"))},
                bulk_problems, requestBody=body("RetryFilter"),
            )
        },
        "/jobs/delete": {
            "post": op(
                "deleteJobs", "Delete every matching finished job (unfinished ones are left alone)",
                {200: _json("How many jobs were deleted.", _ref("Count"))},
                bulk_problems, requestBody=body("DeleteFilter"),
            )
        },
        "/stats": {
            "get": op(
                "getStats", "Counts by status and task; the last hour's throughput and failure rate",
                {200: _json("Stats.", _ref("Stats"))}, (422,),
                parameters=[{
                    "name": "task", "in": "query",
                    "description": "The last hour (its totals and its minutes) of this task's jobs only; "
                    "`counts` and `tasks` stay every task's.",
                    "schema": {"type": "string", "minLength": 1, "maxLength": 200},
                }],
            )
        },
    }  # fmt: skip


def _forbidden(paths: dict[str, Schema], host_checked: bool) -> dict[str, Schema]:
    """Every operation that changes something may answer 403: a browser sent it from another
    site; with `host_checked` (an open server), every operation may, for a Host not its own."""
    for item in paths.values():
        for method, op in item.items():
            unsafe = method in UNSAFE_METHODS
            if unsafe or host_checked:
                name = (
                    PROBLEMS[403][0]
                    if not host_checked
                    else "CrossSiteOrHostNotAllowed"
                    if unsafe
                    else "HostNotAllowed"
                )
                op["responses"]["403"] = {"$ref": f"#/components/responses/{name}"}
    return paths


def _open_without_a_key(paths: dict[str, Schema], open_paths: Collection[str]) -> None:
    """The routes the auth layer lets through without a key (`auth.open_paths`, the dashboard,
    the problem pages): `security: []` and no 401. A path with a parameter is one only by the
    rule's prefixes: `open_paths` name requests' paths exactly, never a whole template."""
    for path, item in paths.items():
        if is_open(() if "{" in path else open_paths, path):
            for op in item.values():
                op["security"] = []
                op["responses"].pop("401")


def build_openapi(
    registry: Registry, secured: bool, open_paths: Collection[str] = (), host_checked: bool = False
) -> dict[str, Any]:
    """The whole OpenAPI document; `secured` adds the bearer scheme and 401 answers, but for the
    routes open without a key (`open_paths`, as `auth.open_paths`, and those always open);
    `host_checked` (an open server that answers only its own Host names) a 403 on every route."""
    body, task_components = submit_schemas(registry)
    item, item_components = submit_schemas(registry, batch_item=True)
    schemas = {
        **copy.deepcopy(SHARED_SCHEMAS),
        **copy.deepcopy(EVENT_SCHEMAS),
        "JobEvent": event_item_schema(),
        **copy.deepcopy(OPS_SCHEMAS),
        **task_components,
        **item_components,
        "SubmitBody": body,
        "BatchItem": item,
    }
    components: dict[str, Any] = {"schemas": schemas, "responses": _problem_responses()}
    doc: dict[str, Any] = {
        "openapi": VERSION,
        "info": {
            "title": "jobserver",
            "version": package_version(),
            "description": "A durable job server: submit jobs, watch them, read their results.",
        },
        "paths": _forbidden({**_paths(secured), **ops_paths(secured)}, host_checked),
        "components": components,
    }
    if secured:
        components["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer", "description": "Authorization: Bearer <API key>"}
        }
        doc["security"] = [{"bearer": []}]
        _open_without_a_key(doc["paths"], open_paths)
    return doc
