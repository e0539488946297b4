"""ScheduleStore: the schedules table, and a tick's job submitted in the same transaction
that moves the schedule on to its next tick.

Exactly one job per tick, however many nodes share the database: a tick is
taken by a compare-and-set on the schedule's `next_run_at` (one UPDATE; on
PostgreSQL a second node waits on the row lock and then finds the value moved
on), and its job carries the idempotency key `schedule:<name>:<tick>`, so even
a schedule whose row was moved back (deleted and made again) cannot submit a
tick twice while the key is kept. Reads run on the calling thread's connection.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import peewee as pw

from jobserver.core.clock import rfc3339
from jobserver.core.records import JobRecord, NewJob
from jobserver.core.schedules import Schedule
from jobserver.storage.limits import DUE_NOTE
from jobserver.storage.models import read_rows
from jobserver.storage.store import JobStore
from jobserver.storage.writer import Tx, WriteFuture, Writer

COLUMNS = "name, task, cron, timezone, args, catch_up, paused, source, next_run_at, last_run_at, last_job_id"


@dataclass(frozen=True, slots=True)
class ScheduleState:
    """One row of the schedules table."""

    name: str
    task: str
    cron: str
    timezone: str
    args: str
    catch_up: bool
    paused: bool
    source: str
    next_run_at: float
    last_run_at: float | None
    last_job_id: str | None

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> ScheduleState:
        n, t, c, tz, a, cu, p, src, nxt, last, job = row
        return cls(
            str(n), str(t), str(c), str(tz), str(a), bool(cu), bool(p), str(src), float(nxt), last, job
        )

    def to_api(self) -> dict[str, Any]:
        """The contract's schedule object."""
        return {
            "name": self.name,
            "task": self.task,
            "cron": self.cron,
            "timezone": self.timezone,
            "args": orjson.loads(self.args),
            "catch_up": self.catch_up,
            "paused": self.paused,
            "next_run_at": None if self.paused else rfc3339(self.next_run_at),
            "last_run_at": rfc3339(self.last_run_at),
            "last_job_id": self.last_job_id,
        }


class ScheduleStore:
    """All schedule SQL. Writes go through the writer."""

    def __init__(self, db: pw.Database, writer: Writer, jobs: JobStore, pg: bool) -> None:
        self.db = db
        self.writer = writer
        self.jobs = jobs
        self.pg = pg

    # ---------------------------------------------------------------- reads
    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return read_rows(self.db, self.pg, sql, params)

    def all(self) -> list[ScheduleState]:
        """Every schedule, by name."""
        return [
            ScheduleState.from_row(r) for r in self._query(f"SELECT {COLUMNS} FROM schedules ORDER BY name")
        ]

    def get(self, name: str) -> ScheduleState | None:
        rows = self._query(f"SELECT {COLUMNS} FROM schedules WHERE name = ?", (name,))
        return ScheduleState.from_row(rows[0]) if rows else None

    def due(self, now: float) -> list[ScheduleState]:
        """Schedules not paused whose next tick has come."""
        rows = self._query(
            f"SELECT {COLUMNS} FROM schedules WHERE paused = 0 AND next_run_at <= ? ORDER BY next_run_at",
            (now,),
        )
        return [ScheduleState.from_row(r) for r in rows]

    # --------------------------------------------------------------- writes
    @staticmethod
    def _upsert(tx: Tx, s: Schedule, source: str, now: float) -> tuple[bool, ScheduleState]:
        """Create or replace one schedule; its next tick is kept unless its cron or time zone changed."""
        row = tx.one(f"SELECT {COLUMNS} FROM schedules WHERE name = ?", (s.name,))
        old = ScheduleState.from_row(row) if row is not None else None
        same_times = old is not None and (old.cron, old.timezone) == (s.cron, s.timezone)
        next_run_at = old.next_run_at if old is not None and same_times else s.next_tick(now)
        if old is None:
            tx.execute(
                "INSERT INTO schedules (name, task, cron, timezone, args, catch_up, paused, source, "
                "next_run_at, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, 0, ?, ?, ?, ?) "
                "ON CONFLICT (name) DO NOTHING",
                (
                    s.name,
                    s.task,
                    s.cron,
                    s.timezone,
                    s.args_json,
                    int(s.catch_up),
                    source,
                    next_run_at,
                    now,
                    now,
                ),
            )
        else:
            tx.execute(
                "UPDATE schedules SET task = ?, cron = ?, timezone = ?, args = ?, catch_up = ?, source = ?, "
                "next_run_at = ?, updated_at = ? WHERE name = ?",
                (s.task, s.cron, s.timezone, s.args_json, int(s.catch_up), source, next_run_at, now, s.name),
            )
        row = tx.one(f"SELECT {COLUMNS} FROM schedules WHERE name = ?", (s.name,))
        assert row is not None
        return old is None, ScheduleState.from_row(row)

    def put(self, schedule: Schedule, source: str, now: float) -> WriteFuture[tuple[bool, ScheduleState]]:
        """Create or replace a schedule; resolves to (created, the stored schedule)."""
        return self.writer.submit(lambda tx: self._upsert(tx, schedule, source, now))

    def sync_configured(self, schedules: Sequence[Schedule], now: float) -> WriteFuture[list[str]]:
        """Make the config's schedules stored ones (created or updated) and remove those that
        came from the config but left it; resolves to the names removed."""

        def op(tx: Tx) -> list[str]:
            for s in schedules:
                self._upsert(tx, s, "config", now)
            keep = [s.name for s in schedules]
            where = f" AND name NOT IN ({', '.join('?' * len(keep))})" if keep else ""
            rows = tx.all(f"DELETE FROM schedules WHERE source = 'config'{where} RETURNING name", keep)
            return sorted(str(r[0]) for r in rows)

        return self.writer.submit(op)

    def delete(self, name: str) -> WriteFuture[bool]:
        """Remove a schedule (its jobs stay); resolves to False when there was none."""
        return self.writer.submit(
            lambda tx: tx.one("DELETE FROM schedules WHERE name = ? RETURNING name", (name,)) is not None
        )

    def set_paused(
        self, name: str, paused: bool, next_tick: Callable[[ScheduleState], float], now: float
    ) -> WriteFuture[ScheduleState | None]:
        """Pause or resume; a resume starts from the next tick after now (paused ticks are not run)."""

        def op(tx: Tx) -> ScheduleState | None:
            row = tx.one(f"SELECT {COLUMNS} FROM schedules WHERE name = ?", (name,))
            if row is None:
                return None
            state = ScheduleState.from_row(row)
            if state.paused != paused:
                nxt = state.next_run_at if paused else next_tick(state)
                tx.execute(
                    "UPDATE schedules SET paused = ?, next_run_at = ?, updated_at = ? WHERE name = ?",
                    (int(paused), nxt, now, name),
                )
            row = tx.one(f"SELECT {COLUMNS} FROM schedules WHERE name = ?", (name,))
            assert row is not None
            return ScheduleState.from_row(row)

        return self.writer.submit(op)

    def fire(
        self,
        name: str,
        expected_next: float,
        tick: float,
        next_run_at: float,
        job: tuple[NewJob, tuple[str, str, str]] | None,
        on_commit: Callable[[JobRecord], None],
    ) -> WriteFuture[JobRecord | str | None]:
        """Take the tick `expected_next` of schedule `name`: move it on to `next_run_at` and,
        unless `job` is None (a missed tick skipped), submit the tick's job. Resolves to
        the new job, the id of the job the tick already had, or None when another
        process took this tick first (or the tick was skipped)."""

        def op(tx: Tx) -> JobRecord | str | None:
            taken = tx.one(
                "UPDATE schedules SET next_run_at = ? WHERE name = ? AND next_run_at = ? AND paused = 0 "
                "RETURNING name",
                (next_run_at, name, expected_next),
            )
            if taken is None or job is None:
                return None
            new, idem = job
            _, value = self.jobs.insert(tx, new, idem)
            job_id = value.id if isinstance(value, JobRecord) else value
            tx.execute(
                "UPDATE schedules SET last_run_at = ?, last_job_id = ? WHERE name = ?", (tick, job_id, name)
            )
            if isinstance(value, JobRecord):
                record = value
                tx.notify(DUE_NOTE)  # any node may run it
                tx.after_commit(lambda: on_commit(record))
            return value

        return self.writer.submit(op)
