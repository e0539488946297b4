"""JobStore: every SQL statement about jobs, one transaction per transition.

Methods are transition verbs: insert, claim, apply a decided transition, cancel,
retry, rescue, delete. Each builds an op and hands it to the writer, returning a
future that resolves after commit; what an attempt's outcome does to its job is
decided by the lifecycle, not here. Writes made on behalf of an attempt are
fenced by its `run_seq`: when the row's `run_seq` moved on (the attempt was
rescued, cancelled or retried), the write changes nothing and raises
`StaleAttemptError`. Reads run on the calling thread's own connection (never
call them on the event loop).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Collection, Sequence
from functools import partial
from typing import Any

import orjson
import peewee as pw

from jobserver.core.clock import rfc3339
from jobserver.core.errors import (
    IdempotencyInFlightError,
    IdempotencyMismatchError,
    InvalidRequestError,
    JobFinishedError,
    JobNotFinishedError,
    JobNotFoundError,
    JobNotRetryableError,
    SignalConflictError,
    SignalNotAwaitedError,
    StaleAttemptError,
)
from jobserver.core.lifecycle import (
    FINISHED,
    AttemptFacts,
    Ending,
    Park,
    Status,
    Transition,
    WaitKind,
    cancelled_error,
    cancelled_instead,
)
from jobserver.core.records import JOB_COLUMNS, Claim, HandOff, JobRecord, NewJob
from jobserver.core.tasks import integral_numbers
from jobserver.storage.limits import DUE_NOTE, LimitStore
from jobserver.storage.models import read_rows
from jobserver.storage.writer import Tx, WriteFuture, Writer

# Internally a pending job whose run_at is still ahead is 'scheduled' (the API says "pending"),
# so the claim's index range holds only due jobs and an idle claim never scans future ones.
# A claim starts an attempt, or resumes a parked one: a resume keeps the attempt's start.
CANCELLED_ERROR_JSON = orjson.dumps(cancelled_error()).decode()
STARTED_AT = "started_at = CASE WHEN resume = 1 AND started_at IS NOT NULL THEN started_at ELSE ? END"
PROMOTE_SQL = "UPDATE jobs SET status = 'pending' WHERE status = 'scheduled' AND run_at <= ?"
# SQLite claim candidates, in claim order, from the claim indexes (never a sort of the backlog)
CLAIM_SQL = (
    "SELECT id, task, limits FROM jobs INDEXED BY jobs_pending WHERE status = 'pending' AND run_at <= ? "
    "ORDER BY priority DESC, run_at, id LIMIT ?"
)
CLAIM_TASK_SQL = (  # one per task that may be taken, joined with UNION ALL
    "SELECT * FROM (SELECT id, task, priority, run_at, limits FROM jobs INDEXED BY jobs_pending_task "
    "WHERE status = 'pending' AND task = ? AND run_at <= ? ORDER BY priority DESC, run_at, id LIMIT ?)"
)


# Waiting jobs whose sleep ended or whose wait timed out: pending again, from the jobs_waking index
WAKE_DUE_SQL = (
    "UPDATE jobs SET status = 'pending', run_at = wake_at, waiting_for = NULL, wake_at = NULL "
    "WHERE status = 'waiting' AND wake_at <= ?"
)
# When the earliest scheduled job or parked sleeper becomes due
NEXT_DUE_SQL = (
    "SELECT MIN(run_at) FROM jobs WHERE status = 'scheduled' UNION ALL "
    "SELECT MIN(wake_at) FROM jobs WHERE status = 'waiting' AND wake_at IS NOT NULL"
)
# Running jobs to recover: those whose lease expired, or (an SQLite start) every one not ours
_RESCUE_SQL = (
    "SELECT id, task, attempts, max_attempts, run_seq, cancel_requested, lease_owner FROM jobs "
    "WHERE status = 'running' AND ({}){} LIMIT 1000"
)
_EXPIRED = "lease_expires_at < ?"
_ORPHANS = "lease_owner <> ? OR lease_owner IS NULL"
RESCUE_EXPIRED_SQL = _RESCUE_SQL.format(_EXPIRED, "")
RESCUE_ORPHANS_SQL = _RESCUE_SQL.format(_ORPHANS, "")


def _rescue_sql(orphans: bool, known_tasks: int | None) -> str:
    """The rescue's read; with `known_tasks` marks, only jobs of those tasks or whose cancel was asked."""
    if known_tasks is None:
        return RESCUE_ORPHANS_SQL if orphans else RESCUE_EXPIRED_SQL
    marks = ", ".join("?" * known_tasks) or "NULL"
    return _RESCUE_SQL.format(
        _ORPHANS if orphans else _EXPIRED, f" AND (task IN ({marks}) OR cancel_requested = 1)"
    )


def _left_sql(orphans: bool, known_tasks: int) -> str:
    """The crashed jobs a rescue with `known_tasks` marks leaves running (of other tasks, no cancel
    asked) that still hold a concurrency slot, their rows locked (PostgreSQL: skipping any a
    rescue or claim elsewhere is changing)."""
    marks = ", ".join("?" * known_tasks)
    return (
        "SELECT id, limits, lease_owner FROM jobs WHERE status = 'running' AND ({}) AND cancel_requested = 0"
        "{} AND EXISTS (SELECT 1 FROM limit_holds h WHERE h.job_id = jobs.id) LIMIT 1000"
    ).format(_ORPHANS if orphans else _EXPIRED, f" AND task NOT IN ({marks})" if known_tasks else "")


IN_CHUNK = 500  # ids per `IN (...)` list
NOT_FINISHED = "status NOT IN ('completed', 'failed', 'cancelled')"
SAVE_STEP_SQL = (  # fenced: only while the attempt `run_seq` still runs; a parked call's row is completed
    "INSERT INTO steps (job_id, name, status, result, attempt, started_at, finished_at) "
    "SELECT ?, ?, 'completed', ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM jobs WHERE id = ? "
    "AND run_seq = ? AND status = 'running') ON CONFLICT (job_id, name) DO UPDATE SET "
    "status = 'completed', result = excluded.result, finished_at = excluded.finished_at"
)


REPLAY_SQL = (
    f"SELECT k.body_hash, {', '.join('j.' + column.strip() for column in JOB_COLUMNS.split(','))} "
    "FROM idempotency_keys k JOIN jobs j ON j.id = k.job_id WHERE k.scope = ? AND k.key = ?"
)
# Every row a finished job owns, the job's own last: deleting a job deletes them all.
JOB_ROWS = (
    ("events", "job_id"),
    ("steps", "job_id"),
    ("signals", "job_id"),
    ("webhook_attempts", "job_id"),
    ("webhook_deliveries", "job_id"),
    ("jobs", "id"),
)


def _chunks(ids: Sequence[str]) -> list[Sequence[str]]:
    return [ids[i : i + IN_CHUNK] for i in range(0, len(ids), IN_CHUNK)]


def waiting_status(run_at: float, now: float) -> str:
    """'pending' when due, 'scheduled' when run_at is still ahead."""
    return "scheduled" if run_at > now else "pending"


# Called inside a transaction that changed a job (the webhook outbox): it may write in `tx`.
InTxObserver = Callable[[Tx, JobRecord, float], None]
# Decides a rescued job's transition: (facts, task, cancel_requested, now) -> Transition | None
RescueDecider = Callable[[AttemptFacts, str, bool, float], Transition | None]


def body_hash(body: Any) -> str:
    """Hash of parsed JSON with sorted keys: key order, spacing and how a number is written
    (`1` or `1.0`) do not matter."""
    return hashlib.sha256(orjson.dumps(integral_numbers(body), option=orjson.OPT_SORT_KEYS)).hexdigest()


def idempotency_lock_id(scope: str, key: str) -> int:
    """The PostgreSQL advisory lock that a submit with this key holds until it commits."""
    return int.from_bytes(hashlib.sha256(f"{scope}\0{key}".encode()).digest()[:8], "big", signed=True)


def _loads_or_none(text: str | None) -> Any:
    return None if text is None else orjson.loads(text)


def all_completed(ends: Sequence[dict[str, Any]]) -> bool:
    """Every job a gather waited on completed (its result may be stored for good)."""
    return all(end["status"] == "completed" for end in ends)


def _ends(ids: Sequence[str], found: dict[str, tuple[Any, ...]]) -> list[dict[str, Any]] | None:
    """The ends (id, status, result, error) of `ids` from their rows (id, status, result, error);
    None while one is unfinished. A job that is gone counts as failed."""
    ends = []
    for job_id in ids:
        row = found.get(job_id)
        if row is None:
            error = {"type": "JobNotFound", "message": f"no job with id {job_id!r}", "traceback": None}
            ends.append({"id": job_id, "status": "failed", "result": None, "error": error})
        elif row[1] not in FINISHED:
            return None
        else:
            result, error = _loads_or_none(row[2]), _loads_or_none(row[3])
            ends.append({"id": job_id, "status": row[1], "result": result, "error": error})
    return ends


def _job_event(tx: Tx, rec: JobRecord, now: float) -> None:
    tx.notify(f"c{rec.id}")  # watchers on other nodes read it again
    tx.execute(
        "INSERT INTO events (job_id, kind, data, at) VALUES (?, 'status', ?, ?)",
        (rec.id, rec.api_json().decode(), now),
    )


def _insert_job(tx: Tx, new: NewJob) -> JobRecord:
    tx.execute(
        "INSERT INTO jobs (id, task, args, status, priority, attempts, max_attempts, timeout_s, "
        "run_seq, cancel_requested, logs_dropped, idempotency_key, webhook_url, created_at, run_at, "
        "parent_id, resume, trace_context, limits) "
        "VALUES (?, ?, ?, ?, ?, 0, ?, ?, 0, 0, 0, ?, ?, ?, ?, ?, 0, ?, ?)",
        (
            new.id,
            new.task,
            new.args_json,
            new.status,
            new.priority,
            new.max_attempts,
            new.timeout_s,
            new.idempotency_key,
            new.webhook_url,
            new.created_at,
            new.run_at,
            new.parent_id,
            new.trace_context,
            new.limits,
        ),
    )
    record = new.record()
    _job_event(tx, record, new.created_at)
    return record


def _used_key(tx: Tx, idem: tuple[str, str, str]) -> str | None:
    """The job an idempotency key was used for with this body; None when the key is unused or
    its job is gone (pruned or deleted: the key starts afresh). IdempotencyMismatchError when
    it was used with another body."""
    scope, key, digest = idem
    row = tx.one("SELECT body_hash, job_id FROM idempotency_keys WHERE scope = ? AND key = ?", (scope, key))
    if row is not None and tx.one("SELECT 1 FROM jobs WHERE id = ?", (row[1],)) is None:
        tx.execute("DELETE FROM idempotency_keys WHERE scope = ? AND key = ?", (scope, key))
        row = None
    if row is None:
        return None
    if row[0] != digest:
        raise IdempotencyMismatchError(key)
    return str(row[1])


def _use_key(tx: Tx, idem: tuple[str, str, str], new: NewJob) -> str | None:
    """Record the idempotency key for `new`; the first job's id when the key was used with
    this body already (IdempotencyMismatchError when with another)."""
    first = _used_key(tx, idem)
    if first is not None:
        return first
    _keep_key(tx, idem, new.id, new.created_at)
    return None


def _keep_key(tx: Tx, idem: tuple[str, str, str], job_id: str, at: float) -> None:
    """Record that the idempotency key (scope, key, body_hash) was used for `job_id`."""
    tx.execute(
        "INSERT INTO idempotency_keys (scope, key, body_hash, job_id, created_at) VALUES (?, ?, ?, ?, ?)",
        (*idem, job_id, at),
    )


def _returning(tx: Tx, sql: str, params: Sequence[Any]) -> JobRecord | None:
    row = tx.one(sql + f" RETURNING {JOB_COLUMNS}", params)
    return None if row is None else JobRecord.from_row(row)


class JobStore:
    """All job SQL. Writes go through the writer; reads use the caller's connection."""

    def __init__(
        self,
        db: pw.Database,
        writer: Writer,
        pg: bool,
        limits: LimitStore,
        outbox: InTxObserver | None = None,
        on_woken: Callable[[JobRecord], None] | None = None,
    ) -> None:
        self.db = db
        self.writer = writer
        self.pg = pg
        self.limits = limits
        self._skip_locked = " FOR UPDATE SKIP LOCKED" if pg else ""
        self._for_update = " FOR UPDATE" if pg else ""  # SQLite: the one writer serializes anyway
        self._outbox: InTxObserver = outbox or (lambda tx, rec, now: None)
        # after the commit that made a waiting job pending again (wake its worker, tell watchers)
        self._on_woken: Callable[[JobRecord], None] = on_woken or (lambda rec: None)

    # ---------------------------------------------------------------- reads
    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return read_rows(self.db, self.pg, sql, params)

    def get(self, job_id: str) -> JobRecord:
        """One job, or JobNotFoundError."""
        rows = self._query(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,))
        if not rows:
            raise JobNotFoundError(job_id)
        return JobRecord.from_row(rows[0])

    def replay(self, scope: str, key: str, digest: str) -> JobRecord | None:
        """The job an idempotency key was first used for, when it was with this body (read when
        a resend's checks refuse it: it gets its job though the task, the config or a webhook
        host's address changed since). IdempotencyMismatchError with another body; None when
        the key is unused, or its job is gone."""
        rows = self._query(REPLAY_SQL, (scope, key))
        if not rows:
            return None
        if rows[0][0] != digest:
            raise IdempotencyMismatchError(key)
        return JobRecord.from_row(rows[0][1:])

    def list_jobs(
        self,
        status: str | None,
        task: str | None,
        limit: int,
        cursor: str | None,
        parent: str | None = None,
        idempotency: tuple[str, str] | None = None,
        id_suffix: str | None = None,
    ) -> tuple[list[JobRecord], str | None]:
        """Newest first; `cursor` is the last id of the previous page; `idempotency` (scope,
        key) keeps the job submitted under that Idempotency-Key; `id_suffix` keeps the jobs
        whose id ends with it (hex digits and dashes: a scan of the ids, newest first, that
        stops at the page's end; no index serves it, so submits pay nothing for it)."""
        if status == "pending":  # the API's "pending" covers jobs waiting for their run_at
            statuses = ("pending", "scheduled", "blocked")
            pages = [self._list(s, task, limit, cursor, parent, idempotency, id_suffix) for s in statuses]
            merged = sorted([r for page, _ in pages for r in page], key=lambda r: r.id, reverse=True)
            more = len(merged) > limit or any(next_cursor for _, next_cursor in pages)
            return merged[:limit], (merged[limit - 1].id if more else None)
        return self._list(status, task, limit, cursor, parent, idempotency, id_suffix)

    def _list(
        self,
        status: str | None,
        task: str | None,
        limit: int,
        cursor: str | None,
        parent: str | None = None,
        idempotency: tuple[str, str] | None = None,
        id_suffix: str | None = None,
    ) -> tuple[list[JobRecord], str | None]:
        where: list[str] = []
        params: list[Any] = []
        if parent is not None:
            where.append("parent_id = ?")
            params.append(parent)
        if idempotency is not None:
            where.append("id IN (SELECT job_id FROM idempotency_keys WHERE scope = ? AND key = ?)")
            params.extend(idempotency)
        if status is not None:
            where.append("status = ?")
            params.append(status)
        if task is not None:
            where.append("task = ?")
            params.append(task)
        if cursor:
            where.append("id < ?")
            params.append(cursor)
        if id_suffix is not None:  # ids are lower-case hex: PostgreSQL's LIKE tells cases apart
            where.append("id LIKE ?")
            params.append(f"%{id_suffix.lower()}")
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        rows = self._query(
            f"SELECT {JOB_COLUMNS} FROM jobs {clause} ORDER BY id DESC LIMIT ?", (*params, limit + 1)
        )
        jobs = [JobRecord.from_row(r) for r in rows[:limit]]
        return jobs, (jobs[-1].id if len(rows) > limit else None)

    def steps(self, job_id: str) -> list[dict[str, Any]]:
        """The job's stored steps, in the order they started."""
        rows = self._query(
            "SELECT name, status, attempt, started_at, finished_at FROM steps "
            "WHERE job_id = ? ORDER BY started_at",
            (job_id,),
        )
        return [
            {"name": n, "status": s, "attempt": a, "started_at": rfc3339(b), "finished_at": rfc3339(f)}
            for n, s, a, b, f in rows
        ]

    def step_results(self, job_id: str) -> dict[str, Any]:
        """name -> stored JSON result of every finished step."""
        rows = self._query(
            "SELECT name, result FROM steps WHERE job_id = ? AND status = 'completed'", (job_id,)
        )
        return {name: orjson.loads(result) for name, result in rows}

    def signals(self, job_id: str) -> dict[str, Any]:
        """name -> JSON payload of every signal the job got."""
        rows = self._query("SELECT name, payload FROM signals WHERE job_id = ?", (job_id,))
        return {str(name): orjson.loads(payload) for name, payload in rows}

    def ends(self, ids: Sequence[str]) -> list[dict[str, Any]] | None:
        """How the jobs `ids` ended, in order, or None while one of them is unfinished."""
        found: dict[str, tuple[Any, ...]] = {}
        for chunk in _chunks(ids):
            marks = ", ".join("?" * len(chunk))
            for row in self._query(
                f"SELECT id, status, result, error FROM jobs WHERE id IN ({marks})", chunk
            ):
                found[str(row[0])] = row
        return _ends(ids, found)

    def step_rows(self, job_id: str) -> dict[str, tuple[str, Any]]:
        """name -> (status, stored JSON) of every step row: a finished call's result, or a
        parked call's wake-up facts (`{"until": ...}`)."""
        rows = self._query("SELECT name, status, result FROM steps WHERE job_id = ?", (job_id,))
        return {name: (str(status), _loads_or_none(result)) for name, status, result in rows}

    def events_after(self, job_id: str, after_id: int, limit: int = 500) -> list[tuple[int, str, str]]:
        """Stored events (id, kind, data) of a job after `after_id`."""
        rows = self._query(
            "SELECT id, kind, data FROM events WHERE job_id = ? AND id > ? ORDER BY id LIMIT ?",
            (job_id, after_id, limit),
        )
        return [(int(i), k, d) for i, k, d in rows]

    def count_in(self, statuses: Sequence[str]) -> dict[str, int]:
        """How many jobs are in each of `statuses` (index ranges, not a table scan)."""
        wanted = list(statuses) + (["scheduled", "blocked"] if "pending" in statuses else [])
        marks = ", ".join("?" * len(wanted))
        rows = self._query(
            f"SELECT status, COUNT(*) FROM jobs WHERE status IN ({marks}) GROUP BY status", tuple(wanted)
        )
        out: dict[str, int] = {}
        for status, n in rows:
            key = "pending" if status in ("scheduled", "blocked") else str(status)
            out[key] = out.get(key, 0) + int(n)
        return out

    def writable(self, stuck_s: float = 1.0) -> WriteFuture[None]:
        """Resolves when writes work: at once while the last write committed and no write has
        been in hand for `stuck_s` or more (a disk that stops answering holds it), else after a
        probe write (a StorageError when that fails too)."""
        since = self.writer.busy_since
        if self.writer.health.ok and (since is None or time.monotonic() - since < stuck_s):
            done: WriteFuture[None] = WriteFuture()
            done.set_result(None)
            return done
        return self.writer.probe()

    def ping(self) -> None:
        """Raise if the database cannot answer."""
        self._query("SELECT 1")

    # --------------------------------------------------------------- writes
    def enqueue(
        self,
        new: NewJob,
        idem: tuple[str, str, str] | None,
        on_commit: Callable[[], None],
        handoff: HandOff | None = None,
    ) -> WriteFuture[tuple[bool, JobRecord | str]]:
        """Insert a job (and its idempotency key) in one transaction.

        Resolves to (True, record) for a new job, or (False, job_id) when the
        idempotency key (scope, key, body_hash) was already used with this body.
        With `handoff`, a due job that an idle worker can take is claimed in the
        same transaction and delivered to that worker after the commit.
        """

        def op(tx: Tx) -> tuple[bool, JobRecord | str]:
            if idem is not None:
                self._lock_key(tx, idem)
            created, record = self.insert(tx, new, idem)
            if not isinstance(record, JobRecord):
                return created, record
            # a job with limits is claimed the usual way, where its keys are checked
            if (
                handoff is not None
                and record.status == "pending"
                and new.limits is None
                and handoff.accept(tx, new.id, new.task)
            ):
                self._hand_off(tx, record, handoff)  # the answer still shows the job as accepted
            else:
                if record.status == "pending":
                    tx.notify(DUE_NOTE)
                tx.after_commit(on_commit)
            return True, record

        return self.writer.submit(op)

    def _lock_key(self, tx: Tx, idem: tuple[str, str, str]) -> None:
        """PostgreSQL: hold the key's advisory lock until the commit; IdempotencyInFlightError when
        another node's submit with this key is still in its transaction."""
        if self.pg:
            locked = tx.one("SELECT pg_try_advisory_xact_lock(?)", (idempotency_lock_id(idem[0], idem[1]),))
            if locked is None or not locked[0]:
                raise IdempotencyInFlightError(idem[1])

    def enqueue_many(
        self, items: Sequence[tuple[NewJob, tuple[str, str, str] | None]], on_commit: Callable[[], None]
    ) -> WriteFuture[list[tuple[bool, JobRecord]]]:
        """Insert many jobs in one transaction, all or none; each item as `enqueue` does
        (an item whose key was used with its body gives the first job, not created).
        A key used with another body is a 422 naming the item's index."""

        def op(tx: Tx) -> list[tuple[bool, JobRecord]]:
            out: list[tuple[bool, JobRecord]] = []
            for i, (new, idem) in enumerate(items):
                first = None
                if idem is not None:
                    self._lock_key(tx, idem)
                    try:
                        first = _use_key(tx, idem, new)
                    except IdempotencyMismatchError as exc:
                        loc = ["body", "jobs", i, "idempotency_key"]
                        raise InvalidRequestError(
                            f"jobs.{i}: {exc}",
                            [{"loc": loc, "msg": str(exc), "type": "idempotency_key_reused"}],
                        ) from None
                if first is None:
                    out.append((True, _insert_job(tx, new)))
                else:
                    rec = self._locked(tx, first)
                    assert rec is not None
                    out.append((False, rec))
            if any(created and rec.status == "pending" for created, rec in out):
                tx.notify(DUE_NOTE)
            tx.after_commit(on_commit)
            return out

        return self.writer.submit(op)

    def spawn_op(
        self, job_id: str, run_seq: int, step: tuple[str, str, int, float, float], children: Sequence[NewJob]
    ) -> Callable[[Tx], list[JobRecord]]:
        """An op that inserts a running job's children and the step that remembers their ids,
        together: a rerun finds the step and never submits them twice. Fenced by `run_seq`.
        A parent whose cancel was committed first (an async task sees it only at its next await)
        gets its children cancelled with them: the cancel's own transaction could not reach them."""

        def op(tx: Tx) -> list[JobRecord]:
            name, result_json, attempt, started, now = step
            cur = tx.execute(
                SAVE_STEP_SQL, (job_id, name, result_json, attempt, started, now, job_id, run_seq)
            )
            if cur.rowcount != 1:
                raise StaleAttemptError(job_id, run_seq)
            records = [_insert_job(tx, new) for new in children]
            if tx.one("SELECT 1 FROM jobs WHERE id = ? AND cancel_requested = 1", (job_id,)):
                records = [self._cancel_one(tx, rec.id, now) or rec for rec in records]
            if any(rec.status == "pending" for rec in records):
                tx.notify(DUE_NOTE)
            return records

        return op

    def save_step_op(
        self, job_id: str, run_seq: int, step: tuple[str, str, int, float, float]
    ) -> Callable[[Tx], None]:
        """An op that stores a step's JSON result (fenced by `run_seq`)."""

        def op(tx: Tx) -> None:
            name, result_json, attempt, started, now = step
            cur = tx.execute(
                SAVE_STEP_SQL, (job_id, name, result_json, attempt, started, now, job_id, run_seq)
            )
            if cur.rowcount != 1:
                raise StaleAttemptError(job_id, run_seq)

        return op

    def take_signal_op(
        self, job_id: str, run_seq: int, step: tuple[str, int, float, float], until: float | None
    ) -> Callable[[Tx], tuple[bool, Any]]:
        """An op for `ctx.wait_for`: (True, payload) when the signal is there, (True, None)
        when the wait timed out (either stored as the call's result), else (False, None)."""

        def op(tx: Tx) -> tuple[bool, Any]:
            name, attempt, started, now = step
            row = tx.one("SELECT payload FROM signals WHERE job_id = ? AND name = ?", (job_id, name))
            if row is not None:
                value_json = str(row[0])
            elif until is not None and now >= until:
                value_json = "null"
            else:
                return False, None
            self.save_step_op(job_id, run_seq, (name, value_json, attempt, started, now))(tx)
            return True, orjson.loads(value_json)

        return op

    def gather_op(
        self, job_id: str, run_seq: int, step: tuple[str, int, float, float], ids: Sequence[str]
    ) -> Callable[[Tx], list[dict[str, Any]] | None]:
        """An op for `ctx.gather`: the ends of `ids` in order once every one is finished, else
        None. Stored as the call's result only when all completed: a gather with a failed or
        cancelled job reads them again on every run, so retrying that job and then the
        parent picks up the new result."""

        def op(tx: Tx) -> list[dict[str, Any]] | None:
            found: dict[str, tuple[Any, ...]] = {}
            for chunk in _chunks(ids):
                marks = ", ".join("?" * len(chunk))
                for row in tx.all(f"SELECT id, status, result, error FROM jobs WHERE id IN ({marks})", chunk):
                    found[str(row[0])] = row
            ends = _ends(ids, found)
            if ends is not None and all_completed(ends):
                name, attempt, started, now = step
                result_json = orjson.dumps(ends).decode()
                self.save_step_op(job_id, run_seq, (name, result_json, attempt, started, now))(tx)
            return ends

        return op

    def signal(
        self,
        job_id: str,
        name: str,
        payload_json: str,
        digest: str,
        now: float,
        handoff: HandOff | None = None,
    ) -> WriteFuture[tuple[bool, JobRecord]]:
        """Keep a signal for a job; (True, job) when new, (False, job) for a repeat with an
        equal body; SignalNotAwaitedError when the job's wait for it is over (timed out). A job waiting for it is pending again in the same transaction, and with
        `handoff` claimed there for an idle worker (the answer shows it as it was woken)."""

        def op(tx: Tx) -> tuple[bool, JobRecord]:
            rec = self._locked(tx, job_id)
            if rec is None:
                raise JobNotFoundError(job_id)
            row = tx.one("SELECT body_hash FROM signals WHERE job_id = ? AND name = ?", (job_id, name))
            if row is not None:
                if row[0] != digest:
                    raise SignalConflictError(job_id, rec.status, name)
                return False, rec
            if rec.finished:
                raise JobFinishedError(job_id, rec.status)
            # a call of that name that finished (a wait_for that timed out) is never run again:
            # a signal kept for it would be answered 202 and never read
            if tx.one(
                "SELECT 1 FROM steps WHERE job_id = ? AND name = ? AND status = 'completed'", (job_id, name)
            ):
                raise SignalNotAwaitedError(job_id, rec.status, name)
            tx.execute(
                "INSERT INTO signals (job_id, name, payload, body_hash, received_at) VALUES (?, ?, ?, ?, ?)",
                (job_id, name, payload_json, digest, now),
            )
            waiting = _loads_or_none(rec.waiting_for) if rec.status == Status.WAITING else None
            if waiting is not None and waiting.get("kind") == WaitKind.SIGNAL and waiting.get("name") == name:
                woken = self._wake(tx, job_id, now)
                if woken is not None:
                    rec = woken
                    # a job with limits is claimed the usual way, where its keys are checked
                    if (
                        handoff is not None
                        and woken.limits is None
                        and handoff.accept(tx, job_id, woken.task)
                    ):
                        self._hand_off(tx, woken, handoff, now)
            return True, rec

        return self.writer.submit(op)

    def insert(self, tx: Tx, new: NewJob, idem: tuple[str, str, str] | None) -> tuple[bool, JobRecord | str]:
        """Insert a job and its idempotency key inside `tx` (the submit's, or a schedule tick's).

        (True, record) for a new job; (False, job_id) when the key (scope, key, body_hash)
        already named a job that still exists."""
        if idem is not None:
            first = _use_key(tx, idem, new)
            if first is not None:
                return False, first
        return True, _insert_job(tx, new)

    def _candidates(self, tx: Tx, now: float, limit: int, allowed: list[str] | None) -> list[tuple[Any, ...]]:
        """The next due (id, task) rows in claim order, from an index range, never a scan
        of the backlog: with a task list, one index probe per task (SQLite) or IN (PostgreSQL)."""
        if self.pg:
            where = f" AND task IN ({', '.join('?' * len(allowed))})" if allowed else ""
            return tx.all(
                f"SELECT id, task, limits FROM jobs WHERE status = 'pending' AND run_at <= ?{where} "
                f"ORDER BY priority DESC, run_at, id LIMIT ?{self._skip_locked}",
                (now, *(allowed or ()), limit),
            )
        if allowed is None:
            return tx.all(CLAIM_SQL, (now, limit))
        rows = tx.all(
            " UNION ALL ".join([CLAIM_TASK_SQL] * len(allowed)),
            [v for task in allowed for v in (task, now, limit)],
        )
        rows.sort(key=lambda r: (-r[2], r[3], r[0]))
        return [(r[0], r[1], r[4]) for r in rows[:limit]]

    def _hand_off(self, tx: Tx, record: JobRecord, handoff: HandOff, now: float | None = None) -> None:
        """Claim a due job in the transaction that made it due (a new job, a resumed one)."""
        now = record.created_at if now is None else now
        rec = _returning(
            tx,
            # `resume` is kept, as a claim keeps it: the run's end decides what it counted
            "UPDATE jobs SET status = 'running', attempts = attempts + 1 - resume, run_seq = run_seq + 1, "
            f"lease_owner = ?, lease_expires_at = ?, {STARTED_AT} WHERE id = ?",
            (handoff.owner, now + handoff.lease_s, now, record.id),
        )
        assert rec is not None
        _job_event(tx, rec, now)
        claim = Claim.of(rec, now)
        tx.after_commit(lambda: handoff.deliver(claim))

    def claim(
        self,
        owner: str,
        now: float,
        lease_s: float,
        plan: Callable[[Tx], tuple[int, list[str] | None]],
        accept: Callable[[Tx, list[tuple[str, str]]], list[str]],
        give_back: Callable[[Tx, list[tuple[str, str]]], None] = lambda tx, taken: None,
    ) -> WriteFuture[list[Claim]]:
        """Take due jobs (highest priority, then oldest) for one attempt each.

        Runs on the writer thread: `plan` says how many candidates to read and which
        tasks may be taken (None: any; per-process capacity, decided now, not when the
        op was queued);
        `accept` picks the ids to take from the (id, task) candidates and reserves
        their slots (undone with `tx.on_rollback` if the transaction rolls back); then
        the limits of those that have some are checked (a job that does not fit is parked)
        and `give_back` returns the slots of the jobs not taken after all."""

        def op(tx: Tx) -> list[Claim]:
            tx.execute(PROMOTE_SQL, (now,))
            self._wake_due(tx, now)
            limit, allowed = plan(tx)
            if limit <= 0 or allowed == []:
                return []
            candidates = self._candidates(tx, now, limit, allowed)
            ids = accept(tx, [(str(i), str(t)) for i, t, _ in candidates]) if candidates else []
            limited = {str(i): (str(t), str(lim)) for i, t, lim in candidates if lim is not None}
            if any(i in limited for i in ids):
                ids = self._admit(tx, now, ids, limited, give_back)
            if not ids:
                return []
            rows = tx.all(
                "UPDATE jobs SET status = 'running', attempts = attempts + 1 - resume, run_seq = run_seq + 1, "
                f"lease_owner = ?, lease_expires_at = ?, {STARTED_AT} WHERE id IN ({', '.join('?' * len(ids))}) "
                f"AND status = 'pending' RETURNING {JOB_COLUMNS}",
                (owner, now + lease_s, now, *ids),
            )
            by_id = {rec.id: rec for rec in map(JobRecord.from_row, rows)}
            held = [(r.id, r.run_seq, r.limits) for r in by_id.values() if r.limits is not None]
            if held:
                self.limits.take(tx, now, held)
            claims = []
            for job_id in ids:  # keep the claim order
                rec = by_id[job_id]
                _job_event(tx, rec, now)
                claims.append(Claim.of(rec, now))
            return claims

        return self.writer.submit(op)

    def _admit(
        self,
        tx: Tx,
        now: float,
        ids: list[str],
        limited: dict[str, tuple[str, str]],
        give_back: Callable[[Tx, list[tuple[str, str]]], None],
    ) -> list[str]:
        """The accepted ids whose limits let them start now; the slots of the others go back."""
        admitted = self.limits.admit(tx, now, [(i, limited[i][1]) for i in ids if i in limited])
        keep = set(admitted)
        returned = [(i, limited[i][0]) for i in ids if i in limited and i not in keep]
        if returned:
            give_back(tx, returned)
        return [i for i in ids if i not in limited or i in keep]

    def next_run_at(self) -> float | None:
        """When the earliest scheduled job or parked sleeper becomes due (an idle worker's wait)."""
        rows = self._query(NEXT_DUE_SQL)
        due = [float(r[0]) for r in rows if r[0] is not None]
        return min(due) if due else None

    def heartbeat(self, owner: str, now: float, lease_s: float) -> WriteFuture[dict[str, tuple[int, bool]]]:
        """Extend the lease of every job this process runs (one statement for all).

        Resolves to {job_id: (run_seq, cancel_requested)} of the jobs still leased to us,
        so the executor can stop attempts that lost their lease or were cancelled elsewhere."""

        def op(tx: Tx) -> dict[str, tuple[int, bool]]:
            rows = tx.all(
                "UPDATE jobs SET lease_expires_at = ? WHERE lease_owner = ? AND status = 'running' "
                "RETURNING id, run_seq, cancel_requested",
                (now + lease_s, owner),
            )
            return {str(i): (int(seq), bool(c)) for i, seq, c in rows}

        return self.writer.submit(op)

    def _locked(self, tx: Tx, job_id: str) -> JobRecord | None:
        """Read a job in `tx`, locking its row (PostgreSQL) against concurrent changes."""
        row = tx.one(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?{self._for_update}", (job_id,))
        return None if row is None else JobRecord.from_row(row)

    def _apply(self, tx: Tx, t: Transition) -> JobRecord:
        """One fenced UPDATE: it changes the row only while the attempt `t.run_seq` still runs."""
        if t.status == Status.WAITING:
            return self._park(tx, t)
        # no retry, no put-back and no "Interrupted" failure: the run's user cancelled it
        if (t.status == Status.PENDING or t.ending == Ending.RELEASED) and self._cancel_asked(tx, t):
            return self._apply(tx, cancelled_instead(t))
        sets = ["status = ?", "lease_owner = NULL", "lease_expires_at = NULL"]
        params: list[Any] = [
            waiting_status(t.run_at, t.at) if t.status == Status.PENDING and t.run_at else t.status
        ]
        if t.status == Status.PENDING:
            sets.append("run_at = ?")
            params.append(t.run_at if t.run_at is not None else t.at)
        if t.finished:
            sets.append("finished_at = ?")
            params.append(t.at)
        if t.status == Status.COMPLETED:
            sets += ["result = ?", "error = NULL"]
            params.append(t.result_json)
        elif t.error is not None:
            sets.append("error = ?")
            params.append(orjson.dumps(t.error).decode())
        # A run given back is not counted; a resumed run was not counted when claimed, so it
        # keeps its `resume` flag instead. Any other ending makes the next claim an attempt.
        sets.append("attempts = attempts - 1 + resume" if not t.counts_attempt else "resume = 0")
        rec = _returning(
            tx,
            f"UPDATE jobs SET {', '.join(sets)} WHERE id = ? AND run_seq = ? AND status = 'running'",
            (*params, t.job_id, t.run_seq),
        )
        if rec is None:
            raise StaleAttemptError(t.job_id, t.run_seq)
        if rec.limits is not None:
            self.limits.release(tx, rec.id, rec.limits)
        if rec.status == "pending":
            tx.notify(DUE_NOTE)
        _job_event(tx, rec, t.at)
        self._outbox(tx, rec, t.at)
        if rec.finished:
            self._finished(tx, rec, t.at)
        return rec

    def _cancel_asked(self, tx: Tx, t: Transition) -> bool:
        """Whether a cancel was asked while the attempt ran (on this node or another): a run that
        ends by waiting again or by going back to pending then ends cancelled instead."""
        row = tx.one(
            "SELECT cancel_requested FROM jobs WHERE id = ? AND run_seq = ? AND status = 'running'"
            + self._for_update,  # PostgreSQL: a cancel from another node waits for this outcome
            (t.job_id, t.run_seq),
        )
        if row is None:
            raise StaleAttemptError(t.job_id, t.run_seq)
        return bool(row[0])

    def _park(self, tx: Tx, t: Transition) -> JobRecord:
        """A run parks its job: waiting (no lease, no slot) until its wait is over, or pending
        at once when it already is (the signal came, the awaited jobs finished meanwhile)."""
        park = t.park
        assert park is not None
        if park.kind == WaitKind.CHILDREN and self.pg:
            for chunk in _chunks(park.job_ids):  # an awaited job that ends now waits for this commit
                tx.all(f"SELECT id FROM jobs WHERE id IN ({', '.join('?' * len(chunk))}) FOR SHARE", chunk)
        if self._cancel_asked(tx, t):
            return self._apply(tx, cancelled_instead(t))
        rec = _returning(
            tx,
            "UPDATE jobs SET status = 'waiting', lease_owner = NULL, lease_expires_at = NULL, resume = 1, "
            "waiting_for = ?, wake_at = ? WHERE id = ?",
            (orjson.dumps(park.waiting_for()).decode(), park.until, t.job_id),
        )
        assert rec is not None
        if rec.limits is not None:  # a parked run holds no slot; its resume takes them again
            self.limits.release(tx, rec.id, rec.limits)
        _job_event(tx, rec, t.at)
        if park.until is not None:  # the wake-up time of the call, kept for its reruns
            tx.execute(
                "INSERT INTO steps (job_id, name, status, result, attempt, started_at) "
                "VALUES (?, ?, 'waiting', ?, ?, ?) ON CONFLICT (job_id, name) DO NOTHING",
                (t.job_id, park.name, orjson.dumps({"until": park.until}).decode(), rec.attempts, t.at),
            )
        if not self._still_waits(tx, t.job_id, park, t.at):
            woken = self._wake(tx, t.job_id, t.at)
            assert woken is not None
            return woken
        self._outbox(tx, rec, t.at)
        return rec

    def _still_waits(self, tx: Tx, job_id: str, park: Park, now: float) -> bool:
        """Is the park's wait still ahead? (For a gather: record each unfinished job awaited.)"""
        if park.until is not None and park.until <= now:
            return False
        if park.kind == WaitKind.SIGNAL:
            found = tx.one("SELECT 1 FROM signals WHERE job_id = ? AND name = ?", (job_id, park.name))
            return found is None
        if park.kind == WaitKind.CHILDREN:
            waits = False
            for chunk in _chunks(park.job_ids):
                marks = ", ".join("?" * len(chunk))
                for (other,) in tx.all(
                    f"SELECT id FROM jobs WHERE id IN ({marks}) AND {NOT_FINISHED}", chunk
                ):
                    tx.execute(
                        "INSERT INTO awaits (waiter_id, job_id) VALUES (?, ?) ON CONFLICT DO NOTHING",
                        (job_id, other),
                    )
                    waits = True
            return waits
        return True

    def _wake(self, tx: Tx, job_id: str, now: float) -> JobRecord | None:
        """A waiting job is pending again (its next claim resumes it)."""
        rec = _returning(
            tx,
            "UPDATE jobs SET status = 'pending', run_at = ?, waiting_for = NULL, wake_at = NULL "
            "WHERE id = ? AND status = 'waiting'",
            (now, job_id),
        )
        if rec is not None:
            tx.notify(DUE_NOTE)
            _job_event(tx, rec, now)
            woken = rec
            tx.after_commit(lambda: self._on_woken(woken))
        return rec

    def _wake_due(self, tx: Tx, now: float) -> None:
        """Wake the waiting jobs whose sleep ended or whose wait timed out."""
        for row in tx.all(WAKE_DUE_SQL + f" RETURNING {JOB_COLUMNS}", (now,)):
            rec = JobRecord.from_row(row)
            tx.notify(DUE_NOTE)
            _job_event(tx, rec, now)
            tx.after_commit(lambda rec=rec: self._on_woken(rec))  # type: ignore[misc]

    def wake_due(self, now: float) -> WriteFuture[None]:
        """Wake due sleepers and timed-out waits (also done by every claim)."""
        return self.writer.submit(lambda tx: self._wake_due(tx, now))

    def _finished(self, tx: Tx, rec: JobRecord, now: float) -> None:
        """A job ended: a gather waiting for it as its last unfinished job resumes."""
        for (waiter,) in tx.all("DELETE FROM awaits WHERE job_id = ? RETURNING waiter_id", (rec.id,)):
            if self.pg:  # two ends of one gather on two nodes: the second sees the first's delete
                tx.one("SELECT id FROM jobs WHERE id = ? FOR UPDATE", (waiter,))
            if tx.one("SELECT 1 FROM awaits WHERE waiter_id = ? LIMIT 1", (waiter,)) is None:
                self._wake(tx, str(waiter), now)

    def apply(self, transition: Transition, on_commit: Callable[[JobRecord], None]) -> WriteFuture[JobRecord]:
        """Apply a decided transition of a running job (StaleAttemptError when fenced off)."""

        def op(tx: Tx) -> JobRecord:
            rec = self._apply(tx, transition)
            tx.after_commit(lambda: on_commit(rec))
            return rec

        return self.writer.submit(op)

    def _cancel_one(self, tx: Tx, job_id: str, now: float) -> JobRecord | None:
        """Pending (delayed, blocked) or waiting: cancelled now. Running: cancel_requested. Finished: None."""
        rec = _returning(
            tx,
            "UPDATE jobs SET status = 'cancelled', finished_at = ?, error = ?, lease_owner = NULL, "
            "lease_expires_at = NULL, waiting_for = NULL, wake_at = NULL, resume = 0, blocked_by = NULL "
            "WHERE id = ? AND status IN ('pending', 'scheduled', 'blocked', 'waiting')",
            (now, CANCELLED_ERROR_JSON, job_id),
        )
        if rec is not None:
            _job_event(tx, rec, now)
            self._outbox(tx, rec, now)
            tx.execute("DELETE FROM awaits WHERE waiter_id = ?", (job_id,))
            self._finished(tx, rec, now)
            return rec
        rec = _returning(
            tx, "UPDATE jobs SET cancel_requested = 1 WHERE id = ? AND status = 'running'", (job_id,)
        )
        if rec is not None:
            tx.notify(f"x{job_id}")  # the node running it stops the attempt at once
        return rec

    def _cancel_descendants(self, tx: Tx, roots: list[str], now: float) -> list[JobRecord]:
        """Cancel the unfinished descendants of `roots` as `_cancel_one` does; the changed ones."""
        changed: list[JobRecord] = []
        parents = list(roots)
        while parents:
            children = tx.all(f"SELECT id FROM jobs WHERE parent_id = ? AND {NOT_FINISHED}", (parents.pop(),))
            for (child,) in children:
                child_rec = self._cancel_one(tx, str(child), now)
                if child_rec is not None:
                    changed.append(child_rec)
                    parents.append(child_rec.id)
        return changed

    def cancel(
        self, job_id: str, now: float, on_commit: Callable[[JobRecord], None]
    ) -> WriteFuture[JobRecord]:
        """Pending or waiting: cancelled at once. Running: cancel_requested, the attempt stops
        itself. Its unfinished descendants are cancelled the same way, in the same transaction."""

        def op(tx: Tx) -> JobRecord:
            rec = self._cancel_one(tx, job_id, now)
            if rec is None:
                row = tx.one("SELECT status FROM jobs WHERE id = ?", (job_id,))
                if row is None:
                    raise JobNotFoundError(job_id)
                raise JobFinishedError(job_id, str(row[0]))
            changed = [rec, *self._cancel_descendants(tx, [job_id], now)]

            def committed() -> None:
                for r in changed:
                    on_commit(r)

            tx.after_commit(committed)
            return rec

        return self.writer.submit(op)

    def retry(
        self,
        job_id: str,
        now: float,
        on_commit: Callable[[JobRecord], None],
        idem: tuple[str, str, str] | None = None,
    ) -> WriteFuture[tuple[bool, JobRecord]]:
        """A failed or cancelled job gets a fresh round of attempts; its steps are kept.
        (True, record) when retried; (False, record as it is now) when `idem` (scope, key,
        body_hash) already retried it: a resent retry never starts another round."""

        def op(tx: Tx) -> tuple[bool, JobRecord]:
            if idem is not None:
                self._lock_key(tx, idem)
                first = _used_key(tx, idem)
                if first is not None:
                    if first != job_id:  # the digest names the job: only a stale row can differ
                        raise IdempotencyMismatchError(idem[1])
                    rec = self._locked(tx, job_id)
                    if rec is None:
                        raise JobNotFoundError(job_id)
                    return False, rec
            rec = _returning(
                tx,
                "UPDATE jobs SET status = 'pending', attempts = 0, error = NULL, result = NULL, "
                "run_at = ?, started_at = NULL, finished_at = NULL, cancel_requested = 0, resume = 0 "
                "WHERE id = ? AND status IN ('failed', 'cancelled')",
                (now, job_id),
            )
            if rec is None:
                row = tx.one("SELECT status FROM jobs WHERE id = ?", (job_id,))
                if row is None:
                    raise JobNotFoundError(job_id)
                raise JobNotRetryableError(job_id, str(row[0]))
            if idem is not None:
                _keep_key(tx, idem, job_id, now)
            tx.notify(DUE_NOTE)
            _job_event(tx, rec, now)
            tx.after_commit(partial(on_commit, rec))
            return True, rec

        return self.writer.submit(op)

    def delete(self, job_id: str) -> WriteFuture[None]:
        """Forget a finished job with its events, steps and deliveries."""

        def op(tx: Tx) -> None:
            row = tx.one("SELECT status FROM jobs WHERE id = ?", (job_id,))
            if row is None:
                raise JobNotFoundError(job_id)
            if row[0] not in FINISHED:
                raise JobNotFinishedError(job_id, str(row[0]))
            for table, column in JOB_ROWS:
                tx.execute(f"DELETE FROM {table} WHERE {column} = ?", (job_id,))

        return self.writer.submit(op)

    def rescue(
        self,
        now: float,
        owner: str,
        everyone_else: bool,
        decide: RescueDecider,
        on_commit: Callable[[], None],
        alive: Collection[str] = (),
        known: Collection[str] | None = None,
        on_freed: Callable[[list[str]], None] = lambda ids: None,
    ) -> WriteFuture[list[tuple[Transition, JobRecord]]]:
        """Recover running jobs whose lease expired (or, at an SQLite start, every job
        not ours: the file lock proves their owner is dead), each as `decide` says. Our own
        jobs in `alive` still run here (their lease lapsed while writes failed): they are kept.
        With `known`, only jobs of those tasks, or whose cancel was asked, are read: the others
        are left for a process that knows their task, and must not fill the page read. Those
        left give back their concurrency slots now (`on_freed` gets their ids after the commit)."""
        sql = _rescue_sql(everyone_else, None if known is None else len(known))
        args: list[Any] = [owner if everyone_else else now, *sorted(known or ())]

        def op(tx: Tx) -> list[tuple[Transition, JobRecord]]:
            # PostgreSQL: a row another node's rescue, cancel or heartbeat is changing is skipped,
            # not waited for; if it is still to be rescued, the next pass finds it
            rows = tx.all(sql + self._skip_locked, args)
            out = []
            for job_id, task, attempts, max_attempts, run_seq, cancel, lease_owner in rows:
                if lease_owner == owner and job_id in alive:
                    continue
                facts = AttemptFacts(str(job_id), int(run_seq), int(attempts), int(max_attempts))
                transition = decide(facts, str(task), bool(cancel), now)
                if transition is not None:
                    out.append((transition, self._apply(tx, transition)))
            if known is not None:
                freed = self._free_left(tx, _left_sql(everyone_else, len(known)), args, owner, alive)
                if freed:
                    tx.after_commit(partial(on_freed, freed))
            if out:
                tx.after_commit(on_commit)
            return out

        return self.writer.submit(op)

    def _free_left(
        self, tx: Tx, sql: str, args: Sequence[Any], owner: str, alive: Collection[str]
    ) -> list[str]:
        """Free the concurrency slots of the crashed jobs a rescue leaves running for a process
        that knows their task: a key shared with deployed tasks would otherwise be a slot short
        for as long as no process knows it. The job keeps its status, `run_seq` and expired lease
        (any later rescue still finds it); its lease owner goes, so if that process lives after
        all, its heartbeat stops the attempt rather than run on without the slot. What is freed
        is the job's rows in `limit_holds`, deleted once: the rescue that later ends the job, its
        cancel, frees nothing more, and its next claim takes its keys again like any claim."""
        rows = [
            (str(job_id), str(limits))
            for job_id, limits, lease_owner in tx.all(sql + self._skip_locked, args)
            if not (lease_owner == owner and job_id in alive)
        ]
        if not rows:
            return []
        for chunk in _chunks([job_id for job_id, _ in rows]):
            tx.execute(
                f"UPDATE jobs SET lease_owner = NULL WHERE id IN ({', '.join('?' * len(chunk))})", chunk
            )
        for job_id, limits in rows:
            self.limits.release(tx, job_id, limits)
        return [job_id for job_id, _ in rows]

    # ---------------------------------------------------------- bulk actions
    def _bulk_ids(
        self, tx: Tx, status: str, task: str | None, ids: Sequence[str] | None, after: str, limit: int
    ) -> list[str]:
        """The next ids in `status` after `after`, in id order, from the (status, id) index."""
        where, params = ["status = ?", "id > ?"], [status, after]
        if task is not None:
            where.append("task = ?")
            params.append(task)
        if ids is not None:
            where.append(f"id IN ({', '.join('?' * len(ids))})")
            params.extend(ids)
        rows = tx.all(
            f"SELECT id FROM jobs WHERE {' AND '.join(where)} ORDER BY id LIMIT ?", (*params, limit)
        )
        return [str(r[0]) for r in rows]

    def cancel_batch(
        self, status: str, task: str | None, ids: Sequence[str] | None, after: str, limit: int, now: float
    ) -> WriteFuture[tuple[list[JobRecord], str | None]]:
        """Cancel the next `limit` jobs in `status` after id `after` (a running one is asked to
        stop), with their unfinished descendants as `cancel` does; resolves to (changed jobs,
        id to continue after, or None when none are left)."""

        def op(tx: Tx) -> tuple[list[JobRecord], str | None]:
            found = self._bulk_ids(tx, status, task, ids, after, limit)
            if not found:
                return [], None
            marks = ", ".join("?" * len(found))
            if status == "running":
                sql = f"UPDATE jobs SET cancel_requested = 1 WHERE id IN ({marks}) AND status = ? AND cancel_requested = 0"
                rows = tx.all(f"{sql} RETURNING {JOB_COLUMNS}", (*found, status))
                for row in rows:
                    tx.notify(f"x{row[0]}")  # the node running it stops the attempt at once
                asked = [JobRecord.from_row(r) for r in rows]
                return [*asked, *self._cancel_descendants(tx, [r.id for r in asked], now)], found[-1]
            rows = tx.all(
                "UPDATE jobs SET status = 'cancelled', finished_at = ?, error = ?, lease_owner = NULL, "
                f"lease_expires_at = NULL, waiting_for = NULL, wake_at = NULL, resume = 0, blocked_by = NULL "
                f"WHERE id IN ({marks}) AND status = ? RETURNING {JOB_COLUMNS}",
                (now, CANCELLED_ERROR_JSON, *found, status),
            )
            records = [JobRecord.from_row(r) for r in rows]
            for rec in records:
                _job_event(tx, rec, now)
                self._outbox(tx, rec, now)
                if status == Status.WAITING:
                    tx.execute("DELETE FROM awaits WHERE waiter_id = ?", (rec.id,))
                self._finished(tx, rec, now)  # a gather waiting for it resumes
            return [*records, *self._cancel_descendants(tx, [r.id for r in records], now)], found[-1]

        return self.writer.submit(op)

    def delete_batch(
        self, status: str, task: str | None, ids: Sequence[str] | None, after: str, limit: int, now: float
    ) -> WriteFuture[tuple[list[JobRecord], str | None]]:
        """Forget the next `limit` finished jobs in `status` after id `after`, as `delete` does
        one; resolves to (deleted jobs as they were, id to continue after, or None when done)."""

        def op(tx: Tx) -> tuple[list[JobRecord], str | None]:
            found = self._bulk_ids(tx, status, task, ids, after, limit)
            if not found:
                return [], None
            marks = ", ".join("?" * len(found))
            rows = tx.all(
                f"SELECT {JOB_COLUMNS} FROM jobs WHERE id IN ({marks}) AND status = ?", (*found, status)
            )
            records = [JobRecord.from_row(r) for r in rows]
            gone = [rec.id for rec in records]
            if gone:
                gone_marks = ", ".join("?" * len(gone))
                for table, column in JOB_ROWS:
                    tx.execute(f"DELETE FROM {table} WHERE {column} IN ({gone_marks})", tuple(gone))
            return records, found[-1]

        return self.writer.submit(op)

    def retry_batch(
        self, status: str, task: str | None, ids: Sequence[str] | None, after: str, limit: int, now: float
    ) -> WriteFuture[tuple[list[JobRecord], str | None]]:
        """Retry the next `limit` failed or cancelled jobs in `status` after id `after`, as
        `retry` does one; resolves to (retried jobs, id to continue after, or None when done)."""

        def op(tx: Tx) -> tuple[list[JobRecord], str | None]:
            found = self._bulk_ids(tx, status, task, ids, after, limit)
            if not found:
                return [], None
            rows = tx.all(
                "UPDATE jobs SET status = 'pending', attempts = 0, error = NULL, result = NULL, "
                "run_at = ?, started_at = NULL, finished_at = NULL, cancel_requested = 0, resume = 0 "
                f"WHERE id IN ({', '.join('?' * len(found))}) AND status = ? RETURNING {JOB_COLUMNS}",
                (now, *found, status),
            )
            records = [JobRecord.from_row(r) for r in rows]
            if records:
                tx.notify(DUE_NOTE)
            for rec in records:
                _job_event(tx, rec, now)
            return records, found[-1]

        return self.writer.submit(op)
