"""Stats: the answer of GET /stats, read from the job counters (never from the jobs).

Counts by status and by task come from the maintained counters; throughput and
failure rate over the last hour from the per-minute finish counts (the current
minute and the 59 before it). Its maintenance pass folds
PostgreSQL's delta rows and drops old minutes.
"""

from __future__ import annotations

from typing import Any

from jobserver.core.clock import Clock, rfc3339
from jobserver.storage.counters import KEEP_MINUTES, Counters
from jobserver.storage.writer import WriteFuture, Writer

STATUSES = ("pending", "running", "waiting", "completed", "failed", "cancelled")
WINDOW_MINUTES = 60
COMPACT_INTERVAL_S = 5.0


class Stats:
    """Reads the counters; compacts them."""

    def __init__(self, counters: Counters, writer: Writer, clock: Clock) -> None:
        self.counters = counters
        self.writer = writer
        self.clock = clock

    def pending_by_task(self) -> dict[str, int]:
        """task -> how many of its jobs wait to run (pending, delayed or between attempts), from the
        counters: no scan of the jobs table, however long the queue (call on a reader thread)."""
        return {task: n["pending"] for task, n in self.counters.by_task().items() if n.get("pending", 0) > 0}

    def read(self, task: str | None = None) -> dict[str, Any]:
        """The /stats document (call on a reader thread); with `task`, the last hour (its
        totals and its minutes) counts that task's finishes only, and the counts stay whole."""
        now = self.clock.now()
        by_task = self.counters.by_task()
        first_minute = int(now // 60) - (WINDOW_MINUTES - 1)
        finished = self.counters.finished_since(first_minute, task)
        per_minute = self.counters.finishes_by_minute(first_minute, task)
        totals = dict.fromkeys(STATUSES, 0)
        for per_status in by_task.values():
            for status, n in per_status.items():
                totals[status] = totals.get(status, 0) + n
        tasks = {task: {**dict.fromkeys(STATUSES, 0), **per} for task, per in sorted(by_task.items())}
        return {
            "at": rfc3339(now),
            "counts": totals,
            "tasks": tasks,
            "last_hour": {**_window(finished), "minutes": _minutes(first_minute, per_minute)},
        }

    def compact_once(self) -> WriteFuture[None]:
        """Fold delta rows (PostgreSQL, one node at a time) and drop minutes older than a day."""
        oldest = int(self.clock.now() // 60) - KEEP_MINUTES
        return self.writer.submit(lambda tx: self.counters.compact(tx, oldest))


def _minutes(first: int, per_minute: dict[int, dict[str, int]]) -> list[dict[str, Any]]:
    """One entry per minute of the window, oldest first, zeros included: a chart's series."""
    return [
        {
            "at": rfc3339(minute * 60.0),
            **{s: per_minute.get(minute, {}).get(s, 0) for s in ("completed", "failed", "cancelled")},
        }
        for minute in range(first, first + WINDOW_MINUTES)
    ]


def _window(finished: dict[str, dict[str, int]]) -> dict[str, Any]:
    """Throughput and failure rate of the finishes in the window, overall and per task."""

    def summary(per: dict[str, int]) -> dict[str, Any]:
        completed, failed, cancelled = (per.get(s, 0) for s in ("completed", "failed", "cancelled"))
        ended = completed + failed
        return {
            "completed": completed,
            "failed": failed,
            "cancelled": cancelled,
            "throughput_per_minute": round((completed + failed + cancelled) / WINDOW_MINUTES, 3),
            "failure_rate": round(failed / ended, 4) if ended else None,
        }

    total: dict[str, int] = {}
    for per in finished.values():
        for status, n in per.items():
            total[status] = total.get(status, 0) + n
    return {**summary(total), "tasks": {task: summary(per) for task, per in sorted(finished.items())}}
