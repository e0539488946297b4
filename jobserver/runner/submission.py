"""JobFactory: a validated submission turned into a job row, the same way for every source.

`POST /jobs`, each item of `POST /jobs/batch` and a task's `ctx.spawn` all build
their jobs here: the task must be known, its args valid (defaults filled in)
and not too large, its limits bound to its args, and the options resolved
against the task's. Pure apart from the id generator: nothing here writes.
"""

from __future__ import annotations

from typing import Any

import pydantic

from jobserver.core.config import Settings
from jobserver.core.errors import InvalidRequestError, field_errors_text
from jobserver.core.records import JobIds, NewJob
from jobserver.core.schemas import SubmitBody, json_within
from jobserver.core.tasks import Registry

SPAWN_OPTIONS = frozenset({"priority", "max_attempts", "timeout", "delay"})


class JobFactory:
    """Builds `NewJob`s from submit bodies."""

    def __init__(self, settings: Settings, registry: Registry) -> None:
        self.settings = settings
        self.registry = registry
        self.ids = JobIds()

    def new(
        self,
        body: SubmitBody,
        now: float,
        idem_key: str | None = None,
        parent_id: str | None = None,
        trace_context: str | None = None,
    ) -> NewJob:
        """The job a valid body asks for (TaskNotFoundError, InvalidRequestError when not);
        `trace_context` is the submit's, kept so the job's attempts join that trace."""
        taskdef = self.registry.get(body.task)
        args = taskdef.validate_args(body.args)
        args_json = json_within(args, self.settings.server.max_args_bytes, ["body", "args"], "args")
        run_at = body.run_at.timestamp() if body.run_at is not None else now + (body.delay or 0.0)
        opts = taskdef.options
        return NewJob(
            self.ids.new(),
            taskdef.name,
            args_json,
            body.priority if body.priority is not None else opts.priority,
            body.max_attempts or opts.max_attempts,
            body.timeout if body.timeout is not None else opts.timeout,
            body.webhook_url,
            idem_key,
            now,
            run_at,
            parent_id,
            trace_context,
            taskdef.bind_limits(args),
        )

    def child(
        self,
        parent_id: str,
        task: str,
        args: dict[str, Any],
        options: dict[str, Any],
        now: float,
        trace_context: str | None = None,
    ) -> NewJob:
        """A job spawned by a running task (options: priority, max_attempts, timeout, delay);
        `trace_context` is its spawn's, so its attempts join the parent's trace."""
        unknown = sorted(set(options) - SPAWN_OPTIONS)
        if unknown:
            raise InvalidRequestError(
                f"unknown spawn options {unknown}; use {sorted(SPAWN_OPTIONS)}",
                [
                    {"loc": ["options", k], "msg": "unknown option", "type": "extra_forbidden"}
                    for k in unknown
                ],
            )
        try:
            body = SubmitBody(task=task, args=args, **options)
        except pydantic.ValidationError as exc:
            errors = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
            fields = ", ".join(".".join(str(p) for p in e["loc"]) or "options" for e in errors)
            raise InvalidRequestError(
                f"cannot spawn {task}: invalid {fields} ({field_errors_text(errors)})", errors
            ) from None
        try:
            return self.new(body, now, parent_id=parent_id, trace_context=trace_context)
        except InvalidRequestError as exc:  # the parent's error is all its author sees: name each field
            listed = field_errors_text(exc.errors)
            raise InvalidRequestError(
                f"cannot spawn {task}: {exc}" + (f" ({listed})" if listed else ""), exc.errors
            ) from None
