"""Job counters: how many jobs each task has in each status, and how many finished each minute.

Kept by database triggers on the job table, so every write path (submit, claim,
an attempt's end, cancel, retry, rescue, delete, retention) keeps them right in
its own transaction, and `GET /stats` reads a few small rows instead of scanning
the jobs. SQLite (one writer) adds to one row per (task, status). On PostgreSQL,
where nodes write at once, a trigger only appends a delta row (no row lock, so
no waits or deadlocks between claims); a maintenance pass folds the deltas, under an
advisory lock that one node holds at a time. The tables are created once, with
counts taken from the jobs already there, so an existing database opens as
before.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import peewee as pw

from jobserver.storage.models import read_rows
from jobserver.storage.writer import Tx

FINISHED_SQL = "('completed', 'failed', 'cancelled')"
KEEP_MINUTES = 24 * 60  # per-minute finish counts kept this long
LOCK_KEY = 7_311_001  # PostgreSQL advisory lock: table creation and compaction, one node at a time

_SQLITE_DDL = [
    "CREATE TABLE job_counts (task TEXT NOT NULL, status TEXT NOT NULL, n INTEGER NOT NULL, "
    "PRIMARY KEY (task, status))",
    "CREATE TABLE job_finishes (minute INTEGER NOT NULL, task TEXT NOT NULL, status TEXT NOT NULL, "
    "n INTEGER NOT NULL, PRIMARY KEY (minute, task, status))",
    "CREATE TRIGGER jobs_counted_insert AFTER INSERT ON jobs BEGIN "
    "INSERT INTO job_counts (task, status, n) VALUES (NEW.task, NEW.status, 1) "
    "ON CONFLICT (task, status) DO UPDATE SET n = n + 1; END",
    "CREATE TRIGGER jobs_counted_delete AFTER DELETE ON jobs BEGIN "
    "UPDATE job_counts SET n = n - 1 WHERE task = OLD.task AND status = OLD.status; END",
    "CREATE TRIGGER jobs_counted_update AFTER UPDATE OF status ON jobs WHEN OLD.status <> NEW.status BEGIN "
    "UPDATE job_counts SET n = n - 1 WHERE task = OLD.task AND status = OLD.status; "
    "INSERT INTO job_counts (task, status, n) VALUES (NEW.task, NEW.status, 1) "
    "ON CONFLICT (task, status) DO UPDATE SET n = n + 1; END",
    "CREATE TRIGGER jobs_counted_finish AFTER UPDATE OF status ON jobs "
    f"WHEN OLD.status <> NEW.status AND NEW.status IN {FINISHED_SQL} BEGIN "
    "INSERT INTO job_finishes (minute, task, status, n) "
    "VALUES (CAST(COALESCE(NEW.finished_at, 0) / 60 AS INTEGER), NEW.task, NEW.status, 1) "
    "ON CONFLICT (minute, task, status) DO UPDATE SET n = n + 1; END",
]

_PG_DDL = [
    "CREATE TABLE job_counts (id BIGSERIAL PRIMARY KEY, task TEXT NOT NULL, status TEXT NOT NULL, "
    "n BIGINT NOT NULL)",
    "CREATE TABLE job_finishes (id BIGSERIAL PRIMARY KEY, minute BIGINT NOT NULL, task TEXT NOT NULL, "
    "status TEXT NOT NULL, n BIGINT NOT NULL)",
    "CREATE INDEX job_finishes_minute ON job_finishes (minute)",
    """CREATE OR REPLACE FUNCTION jobserver_count_jobs() RETURNS trigger AS $$
BEGIN
  IF TG_OP IN ('UPDATE', 'DELETE') THEN
    INSERT INTO job_counts (task, status, n) VALUES (OLD.task, OLD.status, -1);
  END IF;
  IF TG_OP IN ('INSERT', 'UPDATE') THEN
    INSERT INTO job_counts (task, status, n) VALUES (NEW.task, NEW.status, 1);
  END IF;
  IF TG_OP = 'UPDATE' AND NEW.status IN ('completed', 'failed', 'cancelled') THEN
    INSERT INTO job_finishes (minute, task, status, n)
    VALUES (FLOOR(COALESCE(NEW.finished_at, 0) / 60), NEW.task, NEW.status, 1);
  END IF;
  RETURN NULL;
END $$ LANGUAGE plpgsql""",
    "CREATE TRIGGER jobs_counted_insert AFTER INSERT OR DELETE ON jobs "
    "FOR EACH ROW EXECUTE FUNCTION jobserver_count_jobs()",
    "CREATE TRIGGER jobs_counted_update AFTER UPDATE OF status ON jobs "
    "FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status) EXECUTE FUNCTION jobserver_count_jobs()",
]

_BACKFILL = [
    "INSERT INTO job_counts (task, status, n) SELECT task, status, COUNT(*) FROM jobs GROUP BY task, status",
    "INSERT INTO job_finishes (minute, task, status, n) "
    "SELECT CAST(finished_at / 60 AS INTEGER), task, status, COUNT(*) FROM jobs "
    f"WHERE status IN {FINISHED_SQL} AND finished_at >= ? "
    "GROUP BY CAST(finished_at / 60 AS INTEGER), task, status",
]


def install_counters(db: pw.Database, pg: bool, now: float) -> None:
    """Create the counter tables and triggers once, counting the jobs already stored."""
    with db.connection_context(), db.atomic():
        if pg:
            db.execute_sql("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))
        if "job_counts" in db.get_tables():
            return
        for ddl in _PG_DDL if pg else _SQLITE_DDL:
            db.execute_sql(ddl)
        since = (now // 60 - KEEP_MINUTES) * 60
        db.execute_sql(_BACKFILL[0])
        db.execute_sql(_BACKFILL[1].replace("?", "%s" if pg else "?"), (since,))


def counts(rows: Sequence[tuple[Any, ...]]) -> dict[str, dict[str, int]]:
    """task -> status -> n from (task, status, n) rows; the stored 'scheduled' and 'blocked' are
    the API's 'pending'."""
    out: dict[str, dict[str, int]] = {}
    for task, status, n in rows:
        key = "pending" if status in ("scheduled", "blocked") else str(status)
        per_task = out.setdefault(str(task), {})
        per_task[key] = per_task.get(key, 0) + int(n)
    return out


class Counters:
    """Reads of the counters (on the calling thread's connection) and their compaction."""

    def __init__(self, db: pw.Database, pg: bool) -> None:
        self.db = db
        self.pg = pg

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return read_rows(self.db, self.pg, sql, params)

    def by_task(self) -> dict[str, dict[str, int]]:
        """task -> status -> how many jobs."""
        return counts(self._query(COUNTS_SQL))

    def finished_since(self, minute: int, task: str | None = None) -> dict[str, dict[str, int]]:
        """task -> finished status -> how many jobs finished from epoch minute `minute` on (of
        `task` alone, if given)."""
        if task is None:
            return counts(self._query(FINISHES_SQL, (minute,)))
        return counts(self._query(TASK_FINISHES_SQL, (minute, task)))

    def finishes_by_minute(self, minute: int, task: str | None = None) -> dict[int, dict[str, int]]:
        """epoch minute -> finished status -> how many jobs finished in it, from `minute` on (of
        `task` alone, if given). PostgreSQL's delta rows not yet folded are summed in."""
        per_minute: dict[int, dict[str, int]] = {}
        rows = (
            self._query(MINUTES_SQL, (minute,))
            if task is None
            else self._query(TASK_MINUTES_SQL, (minute, task))
        )
        for at, status, n in rows:
            per_minute.setdefault(int(at), {})[str(status)] = int(n)
        return per_minute

    def compact(self, tx: Tx, oldest_minute: int) -> None:
        """Fold delta rows (PostgreSQL, one node at a time) and drop minutes before `oldest_minute`."""
        if self.pg:
            row = tx.one("SELECT pg_try_advisory_xact_lock(?)", (LOCK_KEY,))
            if row is None or not row[0]:
                return  # another node is compacting
        statements = compact_sql(self.pg)
        for sql in statements[:-1]:
            tx.execute(sql)
        tx.execute(statements[-1], (oldest_minute,))


COUNTS_SQL = "SELECT task, status, SUM(n) FROM job_counts GROUP BY task, status HAVING SUM(n) <> 0"
FINISHES_SQL = "SELECT task, status, SUM(n) FROM job_finishes WHERE minute >= ? GROUP BY task, status"
MINUTES_SQL = "SELECT minute, status, SUM(n) FROM job_finishes WHERE minute >= ? GROUP BY minute, status"
TASK_FINISHES_SQL = (
    "SELECT task, status, SUM(n) FROM job_finishes WHERE minute >= ? AND task = ? GROUP BY task, status"
)
TASK_MINUTES_SQL = (
    "SELECT minute, status, SUM(n) FROM job_finishes WHERE minute >= ? AND task = ? GROUP BY minute, status"
)


def compact_sql(pg: bool) -> list[str]:
    """Statements that fold delta rows into one row per key (PostgreSQL) and drop old minutes."""
    prune = "DELETE FROM job_finishes WHERE minute < ?"
    if not pg:
        return [prune]
    return [
        "WITH gone AS (DELETE FROM job_counts RETURNING task, status, n) "
        "INSERT INTO job_counts (task, status, n) SELECT task, status, SUM(n) FROM gone "
        "GROUP BY task, status HAVING SUM(n) <> 0",
        "WITH gone AS (DELETE FROM job_finishes RETURNING minute, task, status, n) "
        "INSERT INTO job_finishes (minute, task, status, n) SELECT minute, task, status, SUM(n) FROM gone "
        "GROUP BY minute, task, status",
        prune,
    ]
