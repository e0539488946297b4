"""Scheduler: turns each tick of every schedule into exactly one job.

One pass looks for due ticks (the maintenance thread runs one every second; tests
run them with a manual clock). A due schedule's tick is the latest one at or before
now: ticks missed while no server ran collapse into that one, which runs
unless the schedule says `catch_up = false`. A tick counts as missed when no
server reached it within `MISSED_AFTER_S`. Which process submits a tick is
settled in the store (one transaction takes the tick and inserts its job).
Also owns the schedules' life: the config's at start, and those made over HTTP.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import orjson

from jobserver.core.clock import Clock
from jobserver.core.errors import InvalidRequestError, field_errors_text
from jobserver.core.observers import JobObserver
from jobserver.core.records import JobIds, JobRecord, NewJob
from jobserver.core.schedules import (
    IDEMPOTENCY_SCOPE,
    Schedule,
    ScheduleBody,
    check_schedule,
    idempotency_key,
    latest_tick,
    next_tick,
)
from jobserver.core.tasks import Registry, TaskDef
from jobserver.storage.schedules import ScheduleState, ScheduleStore
from jobserver.storage.store import body_hash
from jobserver.storage.writer import WriteFuture

log = logging.getLogger(__name__)
MISSED_AFTER_S = 60.0  # a tick first reached later than this after its time was missed (no server ran)


class Scheduler:
    """Submits schedules' ticks and keeps the schedules."""

    def __init__(
        self,
        store: ScheduleStore,
        registry: Registry,
        clock: Clock,
        observers: Sequence[JobObserver],
        job_added: Callable[[str], None],
        max_args_bytes: int,
    ) -> None:
        self.store = store
        self.max_args_bytes = max_args_bytes  # a schedule's args are held to a submit's bound
        self.registry = registry
        self.clock = clock
        self.observers = observers
        self.job_added = job_added  # wakes whoever claims a new due job of this task
        self.ids = JobIds()
        self._left: set[str] = set()  # schedules of tasks not registered here, warned about once

    # ------------------------------------------------------------- ticking
    def tick_once(self) -> int:
        """Submit the job of every schedule whose tick has come; how many jobs were submitted."""
        now = self.clock.now()
        submitted = 0
        for state in self.store.due(now):
            taskdef = self.registry.find(state.task)
            if taskdef is None:
                self._leave(state)
                continue
            tick = max(latest_tick(state.cron, state.timezone, now), state.next_run_at)
            missed = now - tick > MISSED_AFTER_S
            job = None if missed and not state.catch_up else self._job(state, taskdef, tick, now)
            upcoming = next_tick(state.cron, state.timezone, now)
            result = self.store.fire(
                state.name, state.next_run_at, tick, upcoming, job, self._submitted
            ).result()
            if isinstance(result, JobRecord):
                submitted += 1
                log.info(
                    "schedule %s: tick %s submitted job %s%s",
                    state.name,
                    result.idempotency_key,
                    result.id,
                    " (a missed tick, caught up)" if missed else "",
                    extra={"job_id": result.id, "action": "schedule_tick"},
                )
            elif job is None and missed:
                log.info(
                    "schedule %s: missed tick skipped (catch_up = false)",
                    state.name,
                    extra={"action": "schedule_skip"},
                )
        return submitted

    def _leave(self, state: ScheduleState) -> None:
        """A schedule of a task this process does not register (a rolling deploy: a newer node
        added it, or an older one still runs): its ticks are left to a process that knows it,
        whose job carries the task's options and limits. Were this process to submit the tick,
        the job would have none of them (one attempt, no limit held). While no process knows
        the task, its ticks go unreached, as while no server runs: missed ticks, caught up
        by the first process that knows it (`catch_up`)."""
        if state.name not in self._left:
            self._left.add(state.name)
            log.warning(
                "schedule %s: task %s is not registered here; its ticks are left to a process that knows it",
                state.name,
                state.task,
                extra={"action": "schedule_unknown_task"},
            )

    def _job(
        self, state: ScheduleState, taskdef: TaskDef, tick: float, now: float
    ) -> tuple[NewJob, tuple[str, str, str]]:
        """The tick's job: the schedule's args, the task's options, the tick's idempotency key."""
        key = idempotency_key(state.name, tick)
        o = taskdef.options
        new = NewJob(
            self.ids.new(), state.task, state.args, o.priority, o.max_attempts, o.timeout, None, key, now, now,
            limits=self._limits(taskdef, state),
        )  # fmt: skip
        return new, (IDEMPOTENCY_SCOPE, key, body_hash({"schedule": state.name, "tick": tick}))

    def _limits(self, taskdef: TaskDef, state: ScheduleState) -> str | None:
        """The tick's job's limits, bound to the schedule's args like a submit's."""
        try:
            return taskdef.bind_limits(orjson.loads(state.args))
        except InvalidRequestError as exc:
            log.warning(
                "schedule %s: the task's limits cannot apply to its args (%s); the job runs without them",
                state.name,
                exc.errors,
                extra={"action": "schedule_limits"},
            )
            return None

    def _submitted(self, record: JobRecord) -> None:
        """After the tick's commit (writer thread): tell the observers, wake a worker."""
        for observer in self.observers:
            observer.submitted(record)
        self.job_added(record.task)

    # ------------------------------------------------------------ keeping
    def sync_configured(self, schedules: Sequence[Schedule]) -> None:
        """Store the config's (checked) schedules; drop the ones that left the config; warn of
        a stored schedule whose args the task, as deployed now, refuses."""
        removed = self.store.sync_configured(schedules, self.clock.now()).result()
        for state in self.store.all():
            self._check_args(state)
        if schedules:
            log.info(
                "schedules from the config: %s",
                ", ".join(s.name for s in schedules),
                extra={"action": "schedules"},
            )
        if removed:
            log.info(
                "schedules no longer in the config removed: %s",
                ", ".join(removed),
                extra={"action": "schedules"},
            )

    def _check_args(self, state: ScheduleState) -> None:
        """A schedule made over HTTP was checked against its task as it was then; a deploy may
        have changed the task's parameters since, and every tick's job would fail."""
        taskdef = self.registry.find(state.task)
        if taskdef is None:  # ticks left to a process that knows it (said at the first tick)
            return
        try:
            taskdef.validate_args(orjson.loads(state.args))
        except InvalidRequestError as exc:
            log.warning(
                "schedule %s: task %s as deployed now refuses its args (%s); each tick's job will "
                "fail until PUT /schedules/%s gives args it accepts",
                state.name, state.task, field_errors_text(exc.errors), state.name,
                extra={"action": "schedule_args"},
            )  # fmt: skip

    def put(self, name: str, body: ScheduleBody) -> WriteFuture[tuple[bool, ScheduleState]]:
        """Create or replace a schedule (checked first: TaskNotFoundError / InvalidRequestError)."""
        schedule = check_schedule(name, body, self.registry, self.max_args_bytes)
        return self.store.put(schedule, "api", self.clock.now())

    def set_paused(self, name: str, paused: bool) -> WriteFuture[ScheduleState | None]:
        """Pause, or resume from the next tick after now."""
        now = self.clock.now()
        return self.store.set_paused(name, paused, lambda s: next_tick(s.cron, s.timezone, now), now)
