"""Pruner: deletes finished jobs and idempotency keys past their retention.

Owns the `[retention]` rules: a completed, failed or cancelled job whose
`finished_at` is older than `retention.finished_jobs` goes (a child once its parent has
finished too, and a job with a webhook once no delivery of it is still pending), together with its
events, steps, webhook deliveries and webhook attempts; an idempotency key goes
once it is older than `retention.idempotency_keys`; a limit key goes once nothing has used it
for an hour past its window (`LimitStore.prune_idle_op`).

Deletes happen in small writer ops (each removes at most `batch_size` rows of
the child tables plus at most `batch_size` jobs, or `batch_size` keys), so the
write lock is never held long and submits interleave with a big prune. A job's
row goes last, after all its children, so an interrupted prune leaves nothing
orphaned: the job is still past its horizon and the next pass finishes it.
The maintenance thread starts a pass every `retention.interval` (`start_pass`)
on a thread of its own, so a long prune never delays its other passes. On PostgreSQL
every node runs passes, one batch at a time across them (`LOCK_KEY`).
Every statement is served by an index (see `tests/test_retention.py`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from jobserver.core.clock import Clock
from jobserver.core.config import RetentionSettings
from jobserver.core.errors import StorageError
from jobserver.storage.limits import LimitStore
from jobserver.storage.writer import Tx, Writer

log = logging.getLogger(__name__)

MAX_BATCHES_PER_PASS = 100  # a pass stops after this many ops; the next pass goes on
# PostgreSQL: the advisory lock each batch holds until its commit, so the nodes' passes never
# delete at once. Two batches at once would each find the same expired jobs and delete their
# rows under each other: one that found the children it meant to delete gone already deleted
# the jobs with children still left (past its LIMIT), and those rows stayed for ever.
LOCK_KEY = 7_311_002

# A finished child of an unfinished parent stays: the parent's gather reads its end again on
# every resume, and a child gone would read as a failure. A job whose webhook is still being
# delivered (retries run for about three days) stays until the delivery is made or given up:
# with a horizon shorter than the retries, pruning it would drop the delivery without a word.
EXPIRED_JOBS_SQL = (
    "SELECT j.id FROM jobs j WHERE j.status IN ('completed', 'failed', 'cancelled') AND j.finished_at < ? "
    "AND NOT EXISTS (SELECT 1 FROM jobs p WHERE p.id = j.parent_id "
    "AND p.status NOT IN ('completed', 'failed', 'cancelled')) "
    "AND NOT EXISTS (SELECT 1 FROM webhook_deliveries d WHERE d.job_id = j.id AND d.state = 'pending') "
    "LIMIT ?"
)
# (table, the columns that name one row); children first, the job row last.
CHILD_TABLES = (
    ("webhook_attempts", "id"),
    ("webhook_deliveries", "id"),
    ("steps", "job_id, name"),
    ("signals", "job_id, name"),
    ("events", "id"),
)
EXPIRED_KEYS_SQL = (
    "DELETE FROM idempotency_keys WHERE (scope, key) IN "
    "(SELECT scope, key FROM idempotency_keys WHERE created_at < ? LIMIT ?)"
)


def child_delete_sql(table: str, key: str, n_jobs: int) -> str:
    """Delete up to `?` rows of `table` that belong to `n_jobs` jobs."""
    marks = ", ".join("?" * n_jobs)
    return (
        f"DELETE FROM {table} WHERE ({key}) IN (SELECT {key} FROM {table} WHERE job_id IN ({marks}) LIMIT ?)"
    )


@dataclass(frozen=True)
class Batch:
    """What one writer op deleted, and whether more may be waiting."""

    jobs: int
    rows: int  # every row, the jobs' included
    more: bool
    busy: bool = False  # another node is pruning (PostgreSQL): this pass stops and leaves it to it


BUSY = Batch(0, 0, False, busy=True)


def _alone(tx: Tx) -> bool:
    """Whether this batch may prune: always on SQLite (one process), on PostgreSQL when no other
    node's batch holds the retention lock (held until this batch commits)."""
    if not tx.pg:
        return True
    row = tx.one("SELECT pg_try_advisory_xact_lock(?)", (LOCK_KEY,))
    return row is not None and bool(row[0])


@dataclass(frozen=True)
class Pruned:
    """What one pass deleted."""

    jobs: int
    keys: int
    rows: int
    batches: int
    limit_keys: int = 0


class Pruner:
    """Deletes what is past retention; `run_once(now)` is one pass."""

    def __init__(
        self,
        settings: RetentionSettings,
        writer: Writer,
        limits: LimitStore,
        clock: Clock,
        max_batches: int = MAX_BATCHES_PER_PASS,
    ) -> None:
        self.settings = settings
        self.writer = writer
        self.limits = limits
        self.clock = clock
        self.max_batches = max_batches
        self._lock = threading.Lock()
        self._running: threading.Thread | None = None

    def run_once(self, now: float) -> Pruned:
        """Prune in batches until nothing is left or the pass used `max_batches` ops."""
        jobs = keys = rows = batches = 0
        more_jobs = more_keys = True
        busy = False
        while (more_jobs or more_keys) and batches < self.max_batches and not busy:
            if more_jobs:  # jobs and keys take turns, so a big backlog of one never starves the other
                batch = self.writer.call(self.jobs_op(now - self.settings.finished_jobs))
                jobs, rows, more_jobs, busy = jobs + batch.jobs, rows + batch.rows, batch.more, batch.busy
                batches += 1
            if more_keys and batches < self.max_batches and not busy:
                batch = self.writer.call(self.keys_op(now - self.settings.idempotency_keys))
                keys, rows, more_keys, busy = keys + batch.rows, rows + batch.rows, batch.more, batch.busy
                batches += 1
        limit_keys = 0
        while batches < self.max_batches and not busy:
            gone = self.writer.call(self.limits.prune_idle_op(now, self.settings.batch_size))
            limit_keys, rows, batches = limit_keys + gone, rows + gone, batches + 1
            if gone < self.settings.batch_size:
                break
        if rows:
            log.info(
                "pruned %d finished jobs, %d idempotency keys and %d idle limit keys (%d rows)",
                jobs,
                keys,
                limit_keys,
                rows,
                extra={"action": "prune"},
            )
        return Pruned(jobs, keys, rows, batches, limit_keys)

    def start_pass(self) -> None:
        """Start one pass at the clock's time on its own thread, unless one is still running.

        The maintenance thread calls this: a long prune must not hold up its
        other passes (watchdog, heartbeats)."""
        with self._lock:
            if self._running is not None and self._running.is_alive():
                return
            self._running = threading.Thread(target=self._pass, name="jobserver-prune", daemon=True)
            self._running.start()

    def _pass(self) -> None:
        try:
            self.run_once(self.clock.now())
        except StorageError as exc:  # the writer logs the outage once
            log.debug("pruning failed: %s; the next pass tries again", exc, extra={"action": "prune_failed"})
        except Exception:
            log.exception("pruning failed; the next pass tries again", extra={"action": "prune_failed"})

    def jobs_op(self, horizon: float) -> Callable[[Tx], Batch]:
        """One batch: up to batch_size child rows of expired jobs, then the jobs left bare."""
        limit = self.settings.batch_size

        def op(tx: Tx) -> Batch:
            if not _alone(tx):
                return BUSY
            ids = [str(row[0]) for row in tx.all(EXPIRED_JOBS_SQL, (horizon, limit))]
            if not ids:
                return Batch(0, 0, False)
            budget = limit
            for table, key in CHILD_TABLES:
                budget -= tx.execute(child_delete_sql(table, key, len(ids)), (*ids, budget)).rowcount
                if budget == 0:  # children may be left: their jobs go in a later batch
                    return Batch(0, limit, True)
            marks = ", ".join("?" * len(ids))
            gone = tx.execute(f"DELETE FROM jobs WHERE id IN ({marks})", ids).rowcount
            return Batch(gone, limit - budget + gone, len(ids) == limit)

        return op

    def keys_op(self, horizon: float) -> Callable[[Tx], Batch]:
        """One batch: up to batch_size idempotency keys created before `horizon`."""
        limit = self.settings.batch_size

        def op(tx: Tx) -> Batch:
            if not _alone(tx):
                return BUSY
            gone = tx.execute(EXPIRED_KEYS_SQL, (horizon, limit)).rowcount
            return Batch(0, gone, gone == limit)

        return op
