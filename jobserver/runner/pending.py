"""Pending reasons: why a pending job is not running yet, said to people (the dashboard,
`GET /jobs/{id}`, the list).

Every reason must be true when it is read. A job is said to wait for a free worker only
when it is due, nothing holds it back (a limit, a pause, a task no server here knows) and
every unit of the capacity its task runs on (worker threads for sync tasks, async slots
for async ones) is in use. Only one process runs jobs from a SQLite file, so there its own
count is the whole truth. On PostgreSQL other nodes run jobs too, and their threads are not
seen from here: a busy node says its own are busy and that another node may take the job
first, rather than claiming that no worker anywhere is free.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from jobserver.core.clock import rfc3339
from jobserver.core.records import WAITING_TO_RUN, JobRecord
from jobserver.core.tasks import Registry
from jobserver.runner.slots import Capacity

CODES = ("delayed", "blocked_by_limit", "task_paused", "unknown_task", "draining", "no_free_worker", "queued")


class PendingReasons:
    """Says why a pending job waits, from its row and this process's capacity now."""

    def __init__(
        self,
        registry: Registry,
        capacity_for: Callable[[str], Capacity],
        now: Callable[[], float],
        shared: bool,
        draining: Callable[[], bool],
    ) -> None:
        self.registry = registry
        self.capacity_for = capacity_for
        self.now = now
        self.shared = shared  # other processes claim from the same database (PostgreSQL)
        self.draining = draining  # this process has stopped claiming (a shutdown)

    def of(self, record: JobRecord, paused: frozenset[str]) -> dict[str, Any] | None:
        """`code`, `detail` in words, and `until` when delayed; None for a job that is not pending."""
        if record.status not in WAITING_TO_RUN:
            return None
        if record.status == "blocked" and record.task not in paused:  # a free slot would not run a paused one
            return {"code": "blocked_by_limit", "detail": f"held back by the limit {record.blocked_by}"}
        if record.run_at > self.now():  # a due job stays 'scheduled' until the next claim reads it
            until = rfc3339(record.run_at)
            return {"code": "delayed", "detail": f"delayed until {until}", "until": until}
        if record.task in paused:
            return {"code": "task_paused", "detail": f"task {record.task} is paused"}
        if self.registry.find(record.task) is None:
            return {"code": "unknown_task", "detail": f"no task {record.task} is registered on this server"}
        if self.draining():
            detail = (
                "this node is shutting down: another node takes it"
                if self.shared
                else "the server is shutting down: it runs once the server is started again"
            )
            return {"code": "draining", "detail": detail}
        capacity = self.capacity_for(record.task)
        if capacity.free > 0:
            return {"code": "queued", "detail": f"due; a free {capacity.kind} takes it at once"}
        one = capacity.size == 1
        busy = f"the only {capacity.kind}" if one else f"all {capacity.size} {capacity.kind}s"
        verb = "is" if one else "are"
        if self.shared:
            return {
                "code": "queued",
                "detail": f"due; {busy} of this node {verb} busy, and other nodes' are not seen "
                "from here: the first one free on any node takes it",
            }
        return {"code": "no_free_worker", "detail": f"waiting for a free {capacity.kind}: {busy} {verb} busy"}
