"""HTTP routes of operations: schedules, pausing a task, bulk cancel/retry/delete, and /stats.

    GET    /schedules                   {"schedules": [schedule, ...]}
    GET    /schedules/{name}            schedule; 404
    PUT    /schedules/{name}            create (201) or replace (200); 422 names the bad field
    DELETE /schedules/{name}            204; 404
    POST   /schedules/{name}/pause      200 schedule; 404
    POST   /schedules/{name}/resume     200 schedule; 404
    POST   /tasks/{name}/pause          200 {"name", "paused": true}; 404
    POST   /tasks/{name}/resume         200 {"name", "paused": false}; 404
    POST   /jobs/cancel                 200 {"count": n} for {"status"?, "task"?, "ids"?}
    POST   /jobs/retry                  200 {"count": n}
    POST   /jobs/delete                 200 {"count": n} (finished jobs only)
    GET    /stats[?task=]               counts by status and task; the last hour's throughput (of one task)

Reads run on the reader pool and writes through the writer, never on the event
loop. Added to the app beside the job routes (a POST to /jobs/cancel is this
route, not a job's). No SQL here.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import pydantic
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from jobserver.core.errors import (
    ScheduleNotFoundError,
    TaskNotFoundError,
)
from jobserver.core.operations import BulkFilter, CancelFilter, DeleteFilter, RetryFilter
from jobserver.core.schedules import NAME_PATTERN, ScheduleBody
from jobserver.core.schemas import StatsQuery
from jobserver.http.app import JSON, handled, parsed_query, read_json_body, refuse_query
from jobserver.http.problems import field_problem, problem, validation_problem
from jobserver.ops.scheduler import Scheduler
from jobserver.ops.stats import Stats
from jobserver.runner.bulk import BulkActions
from jobserver.runner.pausing import TaskControl
from jobserver.storage.readers import ReadPool
from jobserver.storage.schedules import ScheduleStore

T = TypeVar("T")
Handler = Callable[[Request], Awaitable[Response]]
_NAME = re.compile(NAME_PATTERN)


@dataclass
class OpsServices:
    """What the operator routes need."""

    scheduler: Scheduler
    schedules: ScheduleStore
    tasks: TaskControl
    bulk: BulkActions
    stats: Stats
    readers: ReadPool
    max_body_bytes: int
    max_json_depth: int


def ops_routes(svc: OpsServices) -> list[Route]:
    """The routes to add to the app."""

    async def read(fn: Callable[..., T], *args: Any) -> T:
        return await svc.readers.run(fn, *args)

    def guarded(handler: Handler) -> Handler:
        return handled(handler, svc.max_body_bytes)

    def schedule_name(request: Request) -> str:
        name: str = request.path_params["name"]
        if not _valid_name(name):
            raise ScheduleNotFoundError(name)
        return name

    async def list_schedules(request: Request) -> Response:
        refuse_query(request)
        states = await read(svc.schedules.all)
        return JSON({"schedules": [s.to_api() for s in states]})

    async def get_schedule(request: Request) -> Response:
        refuse_query(request)
        name = schedule_name(request)
        state = await read(svc.schedules.get, name)
        if state is None:
            raise ScheduleNotFoundError(name)
        return JSON(state.to_api())

    async def put_schedule(request: Request) -> Response:
        name: str = request.path_params["name"]
        if not _valid_name(name):
            return problem(
                422,
                "validation-error",
                "Invalid request",
                "a schedule name has 1 to 100 letters, digits, '.', '_' or '-', starting with a letter or digit",
                errors=[
                    {
                        "loc": ["path", "name"],
                        "msg": f"must match {NAME_PATTERN}",
                        "type": "string_pattern_mismatch",
                    }
                ],
            )
        parsed = await read_json_body(request, svc.max_body_bytes, svc.max_json_depth)
        try:
            body = ScheduleBody.model_validate(parsed)
        except pydantic.ValidationError as exc:
            return validation_problem(exc, "body")
        created, state = await svc.scheduler.put(name, body)
        return JSON(state.to_api(), status_code=201 if created else 200)

    async def delete_schedule(request: Request) -> Response:
        name = schedule_name(request)
        if not await svc.schedules.delete(name):
            raise ScheduleNotFoundError(name)
        return Response(status_code=204)

    def pause_schedule(paused: bool) -> Handler:
        async def handler(request: Request) -> Response:
            name = schedule_name(request)
            state = await svc.scheduler.set_paused(name, paused)
            if state is None:
                raise ScheduleNotFoundError(name)
            return JSON(state.to_api())

        return handler

    def pause_task(paused: bool) -> Handler:
        async def handler(request: Request) -> Response:
            name: str = request.path_params["name"]
            try:
                await svc.tasks.set_paused(name, paused)
            except TaskNotFoundError as exc:  # a path that names nothing: 404, not a 422 on a field
                return problem(404, "task-not-found", "Task not found", str(exc))
            return JSON({"name": name, "paused": paused})

        return handler

    def bulk(model: type[BulkFilter], action: Callable[[Any], Awaitable[int]]) -> Handler:
        async def handler(request: Request) -> Response:
            if "idempotency-key" in request.headers:  # refused, not ignored: a resend would act again
                return field_problem(
                    ["header", "Idempotency-Key"],
                    "a bulk action takes no Idempotency-Key",
                    "a bulk action takes no Idempotency-Key header: a resend acts again on the jobs "
                    "that match by then (retry one job with POST /jobs/{id}/retry, which takes one)",
                )
            parsed = await read_json_body(request, svc.max_body_bytes, svc.max_json_depth)
            try:
                f = model.model_validate(parsed)
            except pydantic.ValidationError as exc:
                return validation_problem(exc, "body")
            return JSON({"count": await action(f)})

        return handler

    async def stats(request: Request) -> Response:
        try:
            q = parsed_query(StatsQuery, request)
        except pydantic.ValidationError as exc:
            return validation_problem(exc, "query")
        return JSON(await read(svc.stats.read, q.task))

    return [
        Route("/jobs/cancel", guarded(bulk(CancelFilter, svc.bulk.cancel)), methods=["POST"]),
        Route("/jobs/retry", guarded(bulk(RetryFilter, svc.bulk.retry)), methods=["POST"]),
        Route("/jobs/delete", guarded(bulk(DeleteFilter, svc.bulk.delete)), methods=["POST"]),
        Route("/schedules", guarded(list_schedules), methods=["GET"]),
        Route("/schedules/{name}", guarded(get_schedule), methods=["GET"]),
        Route("/schedules/{name}", guarded(put_schedule), methods=["PUT"]),
        Route("/schedules/{name}", guarded(delete_schedule), methods=["DELETE"]),
        Route("/schedules/{name}/pause", guarded(pause_schedule(True)), methods=["POST"]),
        Route("/schedules/{name}/resume", guarded(pause_schedule(False)), methods=["POST"]),
        Route("/tasks/{name:path}/pause", guarded(pause_task(True)), methods=["POST"]),
        Route("/tasks/{name:path}/resume", guarded(pause_task(False)), methods=["POST"]),
        Route("/stats", guarded(stats), methods=["GET"]),
    ]


def _valid_name(name: str) -> bool:
    return _NAME.match(name) is not None
