"""The database: connection factory and schema (Peewee models).

Owns the tables and how a connection is opened (SQLite in WAL mode with a busy
timeout, or PostgreSQL). Peewee is used for the schema and connections; the hot
statements are plain SQL in the store. The job's statuses are the lifecycle's;
only storage knows that a pending job whose run_at is still ahead is stored as
'scheduled', so that claims read an index range of due jobs only.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
import urllib.parse
import weakref
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import peewee as pw
from playhouse.postgres_ext import Psycopg3Database

from jobserver.core.errors import ConfigError, StartStoppedError, StorageError
from jobserver.storage.failures import DRIVER_ERRORS, as_storage_error

log = logging.getLogger(__name__)
T = TypeVar("T")


class BaseModel(pw.Model):
    class Meta:
        legacy_table_names = False


class Job(BaseModel):
    """One submitted job; the source of truth (a queue message only carries its id)."""

    id = pw.CharField(primary_key=True, max_length=36)
    task = pw.CharField(max_length=200)
    args = pw.TextField()
    status = pw.CharField(max_length=16)
    priority = pw.IntegerField(default=0)
    attempts = pw.IntegerField(default=0)
    max_attempts = pw.IntegerField(default=1)
    timeout_s = pw.DoubleField(null=True)
    run_seq = pw.IntegerField(default=0)  # fencing token: grows with every claim, never reset
    lease_owner = pw.CharField(max_length=64, null=True)
    lease_expires_at = pw.DoubleField(null=True)
    cancel_requested = pw.IntegerField(default=0)
    logs_dropped = pw.IntegerField(default=0)
    progress = pw.TextField(null=True)
    result = pw.TextField(null=True)
    error = pw.TextField(null=True)
    idempotency_key = pw.CharField(max_length=255, null=True)
    webhook_url = pw.TextField(null=True)
    created_at = pw.DoubleField()
    run_at = pw.DoubleField()
    started_at = pw.DoubleField(null=True)
    finished_at = pw.DoubleField(null=True)
    # agent workflows: the parent that spawned it; what a waiting job waits for and until when;
    # 1 while the next claim resumes a parked run (a resume is not an attempt)
    parent_id = pw.CharField(max_length=36, null=True)
    waiting_for = pw.TextField(null=True)
    wake_at = pw.DoubleField(null=True)
    resume = pw.IntegerField(default=0, constraints=[pw.SQL("DEFAULT 0")])
    trace_context = pw.TextField(null=True)  # the submit's trace context (tracing on), JSON
    limits = pw.TextField(null=True)  # the job's limits bound to its args, JSON; NULL: none
    blocked_by = pw.CharField(max_length=200, null=True)  # the limit key that holds it back

    class Meta:
        table_name = "jobs"
        indexes = (
            (("task", "id"), False),  # list by task
            (("status", "id"), False),  # list by status
        )  # and the partial indexes of JOB_INDEXES


class IdempotencyKey(BaseModel):
    """An Idempotency-Key seen on POST /jobs, scoped per API key."""

    scope = pw.CharField(max_length=64)
    key = pw.CharField(max_length=255)
    body_hash = pw.CharField(max_length=64)
    job_id = pw.CharField(max_length=36)
    created_at = pw.DoubleField(index=True)

    class Meta:
        table_name = "idempotency_keys"
        primary_key = pw.CompositeKey("scope", "key")


class LimitRow(BaseModel):
    """One limit key: its latest declared size, and when its held-back jobs are looked at next.
    On PostgreSQL a claim locks this row while it checks the key."""

    key = pw.CharField(primary_key=True, max_length=200)
    kind = pw.CharField(max_length=16)  # concurrency | rate
    n = pw.DoubleField()
    per_s = pw.DoubleField(null=True)
    wake_at = pw.DoubleField(null=True, index=True)  # held-back jobs are looked at again then

    class Meta:
        table_name = "limits"


class LimitHold(BaseModel):
    """A running job holding a concurrency key; deleted in the transaction that ends the attempt."""

    key = pw.CharField(max_length=200)
    job_id = pw.CharField(max_length=36, index=True)

    class Meta:
        table_name = "limit_holds"
        primary_key = pw.CompositeKey("key", "job_id")


class LimitCharge(BaseModel):
    """What one attempt's start cost a rate key; `ctx.report_usage` settles `units`."""

    key = pw.CharField(max_length=200)
    job_id = pw.CharField(max_length=36)
    run_seq = pw.IntegerField()
    at = pw.DoubleField()
    units = pw.DoubleField()

    class Meta:
        table_name = "limit_charges"
        primary_key = pw.CompositeKey("key", "job_id", "run_seq")
        indexes = ((("key", "at"), False),)


class Step(BaseModel):
    """A finished `ctx.step` of a job: its JSON result is replayed on later attempts."""

    job_id = pw.CharField(max_length=36)
    name = pw.CharField(max_length=200)
    status = pw.CharField(max_length=16)
    result = pw.TextField(null=True)
    attempt = pw.IntegerField()
    started_at = pw.DoubleField()
    finished_at = pw.DoubleField(null=True)

    class Meta:
        table_name = "steps"
        primary_key = pw.CompositeKey("job_id", "name")


class Signal(BaseModel):
    """A signal sent to a job (`POST /jobs/{id}/signals/{name}`), kept until the job reads it."""

    job_id = pw.CharField(max_length=36)
    name = pw.CharField(max_length=200)
    payload = pw.TextField()
    body_hash = pw.CharField(max_length=64)
    received_at = pw.DoubleField()

    class Meta:
        table_name = "signals"
        primary_key = pw.CompositeKey("job_id", "name")


class Await(BaseModel):
    """A parked gather's unfinished job: the waiter resumes when its last row is gone."""

    waiter_id = pw.CharField(max_length=36)
    job_id = pw.CharField(max_length=36, index=True)

    class Meta:
        table_name = "awaits"
        primary_key = pw.CompositeKey("waiter_id", "job_id")


class Event(BaseModel):
    """A job's stored event (status, progress or log), replayed to new watchers."""

    id = pw.BigAutoField()
    job_id = pw.CharField(max_length=36)
    kind = pw.CharField(max_length=16)
    data = pw.TextField()
    at = pw.DoubleField()

    class Meta:
        table_name = "events"
        indexes = ((("job_id", "id"), False),)


class WebhookDelivery(BaseModel):
    """The webhook outbox: one row per job with a webhook_url, written with its final status."""

    id = pw.CharField(primary_key=True, max_length=64)  # the webhook-id, same on every retry
    job_id = pw.CharField(max_length=36, index=True)
    url = pw.TextField()
    event_type = pw.CharField(max_length=32)
    payload = pw.TextField()
    state = pw.CharField(max_length=16)  # pending | delivered | failed
    attempts = pw.IntegerField(default=0)
    next_attempt_at = pw.DoubleField(null=True)
    created_at = pw.DoubleField()

    class Meta:
        table_name = "webhook_deliveries"
        indexes = ((("state", "next_attempt_at"), False),)


class WebhookAttempt(BaseModel):
    """One HTTP attempt of a webhook delivery."""

    id = pw.BigAutoField()
    delivery_id = pw.CharField(max_length=64)
    job_id = pw.CharField(max_length=36, index=True)
    attempt = pw.IntegerField()
    at = pw.DoubleField()
    status_code = pw.IntegerField(null=True)
    error = pw.TextField(null=True)
    duration_ms = pw.DoubleField()

    class Meta:
        table_name = "webhook_attempts"


class MetaValue(BaseModel):
    """Small key/value facts about this database (e.g. the generated webhook secret)."""

    key = pw.CharField(primary_key=True, max_length=64)
    value = pw.TextField()

    class Meta:
        table_name = "meta"


class ScheduleRow(BaseModel):
    """A periodic job: its definition, its pause, and the next tick it owes (one job per tick)."""

    name = pw.CharField(primary_key=True, max_length=100)
    task = pw.CharField(max_length=200)
    cron = pw.CharField(max_length=200)
    timezone = pw.CharField(max_length=64)
    args = pw.TextField()
    catch_up = pw.IntegerField(default=1)
    paused = pw.IntegerField(default=0)
    source = pw.CharField(max_length=16)  # "config" (kept in step with config.toml at start) or "api"
    next_run_at = pw.DoubleField()
    last_run_at = pw.DoubleField(null=True)
    last_job_id = pw.CharField(max_length=36, null=True)
    created_at = pw.DoubleField()
    updated_at = pw.DoubleField()

    class Meta:
        table_name = "schedules"
        indexes = ((("paused", "next_run_at"), False),)  # the tick pass reads due ones only


class TaskPause(BaseModel):
    """A paused task: its jobs stay pending (the claim leaves them) until it is resumed."""

    task = pw.CharField(primary_key=True, max_length=200)
    paused_at = pw.DoubleField()

    class Meta:
        table_name = "task_pauses"


ALL_MODELS: list[type[BaseModel]] = [
    Job,
    IdempotencyKey,
    LimitRow,
    LimitHold,
    LimitCharge,
    Step,
    Signal,
    Await,
    Event,
    WebhookDelivery,
    WebhookAttempt,
    MetaValue,
    ScheduleRow,
    TaskPause,
]


class SqliteFile(pw.SqliteDatabase):
    """A SQLite database whose connections, in every thread, can be reopened.

    A connection that saw its database read-only (a file system remounted read-only,
    `PRAGMA query_only`) stays so; when writes fail that way, every thread closes its
    connection at its next use and opens a new one. A connection is only ever closed
    by its own thread: the driver is not safe otherwise."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, factory=_Connection, **kwargs)
        self._generation = 0
        self._file_id: tuple[int, int] | None = None  # (device, inode) of the file first opened
        # (device, inode) of the -wal and -shm files, as first seen while a connection is open:
        # SQLite removes them only when the last connection closes, so until then they stay
        self._log_ids: list[tuple[int, int] | None] = [None, None]
        self._open = 0  # this process's connections open now, as last settled
        self._open_lock = threading.Lock()
        # one entry per connection gone since the count was last settled (see connection_gone)
        self._gone: deque[None] = deque()

    def _connect(self) -> sqlite3.Connection:
        self.check_file()  # a new connection must not make a new, empty file where it was
        conn: sqlite3.Connection
        if self._file_id is None:  # the first: it may make the file
            conn = super()._connect()  # type: ignore[misc]
            self._file_id = _file_id(self.database)
        else:
            conn = self._open_existing()
        with self._open_lock:
            self._settle_gone()
            self._open += 1
        # counted until the connection is gone, closed or dropped with the thread that had it; the
        # finalizer holds this object weakly, or it would keep it and its connections alive
        weakref.finalize(conn, _connection_gone, weakref.ref(self))
        self._thread_state().generation = self._generation
        return conn

    def _open_existing(self) -> sqlite3.Connection:
        """A connection to the file opened first, never a new one: the file may be removed
        between the check and the open, and SQLite would make an empty one in its place
        (read-write, not create: "unable to open database file" instead)."""
        uri = f"file:{urllib.parse.quote(self.database)}?mode=rw"
        conn = sqlite3.connect(
            uri,
            timeout=self._timeout,  # type: ignore[attr-defined]
            isolation_level=None,
            uri=True,
            **self.connect_params,
        )
        try:
            self._add_conn_hooks(conn)  # type: ignore[attr-defined]
        except Exception:
            conn.close()
            raise
        return conn

    def connection_gone(self) -> None:
        """One of this process's connections is gone.

        A finalizer calls this, in whichever thread dropped the connection or ran the garbage
        collector, between any two bytecodes: the lock's holder among them, which would wait
        on itself forever. So it only leaves a note (a deque's append takes no lock that Python
        code holds), and the count is settled under the lock at the next open or check."""
        self._gone.append(None)

    def _settle_gone(self) -> None:
        """Count the connections gone since the last settling; the caller holds the lock."""
        while self._gone:
            self._gone.popleft()
            self._open = max(self._open - 1, 0)
            if self._open == 0:  # the last close may remove the log files: new ones are no harm
                self._log_ids = [None, None]

    def check_file(self) -> None:
        """Raise sqlite3.OperationalError once the file at the database's path is no longer the
        one the server opened (deleted, or replaced): connections already open would go on
        writing to the deleted file, and a job accepted there would be lost at the next start."""
        if self._file_id is None:
            return
        try:
            now: tuple[int, int] | None = _file_id(self.database)
        except FileNotFoundError:
            now = None
        if now != self._file_id:
            raise sqlite3.OperationalError(
                f"the database file {self.database} was removed or replaced while the server ran"
            )
        self._check_log_files()

    def _check_log_files(self) -> None:
        """Raise sqlite3.OperationalError once the -wal or -shm file is no longer the one this
        process's open connections use (deleted, or replaced). Commits would go on landing in
        the deleted log, answered as committed, and be lost at a crash; a new connection would
        make an empty log beside it, and another process a new -shm that does not see ours."""
        with self._open_lock:
            self._settle_gone()
            if self._open == 0:
                return
            for i, suffix in enumerate(("-wal", "-shm")):
                path = self.database + suffix
                try:
                    now: tuple[int, int] | None = _file_id(path)
                except FileNotFoundError:
                    now = None
                known = self._log_ids[i]
                if known is None:
                    self._log_ids[i] = now  # made by the first write of a new database
                elif now != known:
                    raise sqlite3.OperationalError(
                        f"the database's log file {path} was removed or replaced while the server ran"
                    )

    def connection(self) -> sqlite3.Connection:
        self.refresh()
        conn: sqlite3.Connection = super().connection()
        return conn

    def refresh(self) -> None:
        """Close this thread's connection if every connection was asked to reopen since it opened."""
        state = self._thread_state()
        if not state.closed and getattr(state, "generation", self._generation) != self._generation:
            try:
                self._close(state.conn)  # type: ignore[attr-defined]
            except sqlite3.Error:
                pass
            state.reset()

    def reopen_all(self) -> None:
        """Ask every thread to open a new connection at its next use."""
        self._generation += 1

    def checkpoint(self) -> None:
        """Copy the write-ahead log into the database file on this thread's connection, as far
        as readers allow, without waiting for them or for the writer (a PASSIVE checkpoint);
        a failure is a StorageError."""
        try:
            self.connection().execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except DRIVER_ERRORS as exc:
            raise as_storage_error(exc, "checkpoint") from exc

    def _thread_state(self) -> Any:
        """Peewee's per-thread connection state."""
        return self.__dict__["_state"]


def _connection_gone(db: weakref.ref[SqliteFile]) -> None:
    alive = db()
    if alive is not None:
        alive.connection_gone()


class _Connection(sqlite3.Connection):
    """sqlite3's connection, which a weak reference can follow (the base class's cannot)."""


def _file_id(path: str) -> tuple[int, int]:
    stat = os.stat(path)
    return stat.st_dev, stat.st_ino


class PostgresDatabase(Psycopg3Database):
    """PostgreSQL, where a connection the server dropped is replaced at its thread's next
    statement outside a transaction.

    A restart, a failover, an idle timeout or `pg_terminate_backend` ends every connection;
    psycopg marks each closed at its next use, and Peewee would hand that dead connection to
    every later statement of its thread (the reader threads, the maintenance thread), for the
    life of the process. A transaction in flight still fails: its caller rolls it back."""

    def cursor(self, named_cursor: Any = None) -> Any:
        self._forget_dropped()
        return super().cursor(named_cursor)

    def connection(self) -> Any:
        self._forget_dropped()
        return super().connection()

    def _forget_dropped(self) -> None:
        if self.dropped():
            self.__dict__["_state"].reset()  # nothing to close: the server ended it

    def dropped(self) -> bool:
        """Whether this thread's connection was ended by the server, outside a transaction."""
        state = self.__dict__["_state"]
        return not state.closed and state.conn is not None and state.conn.closed and not self.in_transaction()


class Checkpoints:
    """The maintenance pass that checkpoints a SQLite file, when the writer has committed since
    the last one (an idle server does nothing)."""

    INTERVAL_S = 0.25  # at most this much of the log is copied at once, off the writer's thread

    def __init__(self, db: SqliteFile, commits: Callable[[], int]) -> None:
        self._db = db
        self._commits = commits
        self._seen = -1

    def run_once(self) -> None:
        commits = self._commits()
        if commits != self._seen:
            self._db.checkpoint()
            self._seen = commits


def read_rows(db: pw.Database, pg: bool, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    """A read (`?` placeholders) on the calling thread's own connection; a database failure
    is a StorageError."""
    if pg:
        sql = sql.replace("?", "%s")
    try:
        rows: list[tuple[Any, ...]] = once_more_if_dropped(db, lambda: db.execute_sql(sql, params).fetchall())
    except DRIVER_ERRORS as exc:
        raise as_storage_error(exc, "read") from exc
    return rows


def once_more_if_dropped(db: pw.Database, attempt: Callable[[], T]) -> T:
    """`attempt()`, and on PostgreSQL once more on a new connection when it failed because the
    server had ended this thread's connection before it (so nothing of it ran): a read, or the
    BEGIN of a write batch."""
    try:
        return attempt()
    except DRIVER_ERRORS:
        if not (isinstance(db, PostgresDatabase) and db.dropped()):
            raise
    return attempt()


def check_writable(sqlite_path: Path) -> None:
    """Refuse a database file (or its WAL files) this process cannot write: SQLite would open
    it read-only without a word, and keep it so for the life of the process."""
    for path in (sqlite_path, *(sqlite_path.with_name(sqlite_path.name + s) for s in ("-wal", "-shm"))):
        try:
            os.close(os.open(path, os.O_RDWR))
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise StorageError(f"the database file {path} is not writable: {exc.strerror}") from exc


WAL_BACKSTOP_PAGES = 4096  # 16 MiB of 4 KiB pages: the writer checkpoints itself only past this


def open_database(url: str, sqlite_path: Path | None, synchronous: str, busy_timeout_s: float) -> pw.Database:
    """Open (not yet connect) the database named by `url`, with our pragmas."""
    if sqlite_path is not None:
        sqlite_path.parent.mkdir(parents=True, exist_ok=True)
        check_writable(sqlite_path)
        return SqliteFile(
            str(sqlite_path),
            pragmas={
                "journal_mode": "wal",
                "synchronous": synchronous.upper(),
                "busy_timeout": int(busy_timeout_s * 1000),
                "foreign_keys": 0,
                "cache_size": -16000,
                "temp_store": "memory",
                # Checkpoints run on the maintenance thread (SqliteFile.checkpoint), not inside
                # the writer's commits: a commit that crossed SQLite's default 1,000 pages
                # copied the log into the file and synced it first, holding up every job in
                # that commit for about 3 ms. This bound is only a backstop for a log that
                # grows faster than the maintenance passes copy it.
                "wal_autocheckpoint": WAL_BACKSTOP_PAGES,
            },
            timeout=busy_timeout_s,
            check_same_thread=False,
        )
    return PostgresDatabase(url.replace("postgres://", "postgresql://", 1), autorollback=False)


def wait_for_database(db: pw.Database, wait_s: float, stop: threading.Event) -> None:
    """Connect to a PostgreSQL server, trying again with doubling pauses for up to `wait_s`.

    Nodes are often started together with their database (compose, a reboot): a node that
    gave up at once would need its supervisor to start it again. StorageError with the
    last error once `wait_s` has passed; the first failure is logged once, never the URL.
    StartStoppedError as soon as `stop` is set (a signal came: the wait is given up)."""
    deadline = time.monotonic() + wait_s
    pause, said = 0.25, False
    while True:
        try:
            db.connect(reuse_if_open=True)
            db.close()
        except DRIVER_ERRORS as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            # not a failure to connect but the URL itself (an option's value): no wait mends it
            if not reason.startswith("connection failed"):
                raise ConfigError("database.url", f"PostgreSQL cannot use it: {reason}") from exc
            if time.monotonic() + pause > deadline:
                raise StorageError(f"cannot connect to PostgreSQL: {reason}") from exc
            if not said:  # a server not up yet, or a role or database an init job has yet to make
                log.warning(
                    "cannot connect to PostgreSQL yet (%s); trying again for up to %gs (database.startup_wait)",
                    reason, wait_s, extra={"action": "database_wait"},
                )  # fmt: skip
                said = True
            if stop.wait(pause):
                raise StartStoppedError("stopped while waiting for PostgreSQL") from exc
            pause = min(pause * 2, 2.0)
        else:
            if said:
                log.info("PostgreSQL answers", extra={"action": "database_wait"})
            return


# Columns added to existing tables after their first release: (table, column, DDL type).
# A database made by an older version gets them at open, before any index on them is made.
ADDED_COLUMNS = (
    ("jobs", "parent_id", "VARCHAR(36)"),
    ("jobs", "waiting_for", "TEXT"),
    ("jobs", "wake_at", "DOUBLE PRECISION"),
    ("jobs", "resume", "INTEGER NOT NULL DEFAULT 0"),
    ("jobs", "trace_context", "TEXT"),
    ("jobs", "limits", "TEXT"),  # NULL in old rows: no limits
    ("jobs", "blocked_by", "VARCHAR(200)"),
)


def _add_missing_columns(db: pw.Database) -> None:
    tables = set(db.get_tables())
    for table, column, ddl in ADDED_COLUMNS:
        if table in tables and column not in {c.name for c in db.get_columns(table)}:
            exists = " IF NOT EXISTS" if isinstance(db, pw.PostgresqlDatabase) else ""  # nodes start at once
            db.execute_sql(f"ALTER TABLE {table} ADD COLUMN{exists} {column} {ddl}")


# The jobs table's partial indexes: each holds only the rows its searches look for, so a job's
# insert and each change of its status touch the few indexes that concern it (a finished job
# is in none of the claim, due-time, lease or children indexes). The queries that use one
# repeat its WHERE condition as it is written here, with literals (a bound parameter cannot
# prove it), or a comparison that implies `IS NOT NULL`.
JOB_INDEXES = (
    # claims, in claim order; the mixed-direction order needs an index of its own
    ("jobs_pending", "(priority DESC, run_at, id) WHERE status = 'pending'"),
    # a claim limited to some tasks (others at capacity) probes per task
    ("jobs_pending_task", "(task, priority DESC, run_at, id) WHERE status = 'pending'"),
    # jobs held back by a limit, per key in claim order
    ("jobs_blocked", "(blocked_by, priority DESC, run_at, id) WHERE status = 'blocked'"),
    # The status leads where a query's range needs it: without statistics, SQLite prefers an
    # equality on (status, id) to a range on a column alone.
    ("jobs_scheduled", "(status, run_at) WHERE status = 'scheduled'"),  # promotion, next due time
    ("jobs_waking", "(status, wake_at) WHERE status = 'waiting'"),  # due sleepers, wait timeouts
    ("jobs_leased", "(status, lease_expires_at) WHERE status = 'running'"),  # rescue
    ("jobs_finished", "(status, finished_at) WHERE finished_at IS NOT NULL"),  # retention
    ("jobs_children", "(parent_id, id) WHERE parent_id IS NOT NULL"),  # a parent's children
)
# The whole-table indexes that JOB_INDEXES replaced; a database made before is changed at open.
REPLACED_JOB_INDEXES = (
    "jobs_claim",
    "jobs_claim_task",
    "jobs_status_run_at",
    "jobs_status_wake_at",
    "jobs_lease_expires_at",
    "jobs_finished_at",
    "jobs_parent_id_id",
)


# The schema this code writes. A release that changes the tables in a way an older one cannot
# use raises it; an older server then refuses such a database instead of failing every write.
SCHEMA_VERSION = 1
SCHEMA_VERSION_KEY = "schema_version"
SCHEMA_LOCK = 0x6A6F6273  # the advisory lock that serializes the schema's creation on PostgreSQL


@contextmanager
def _one_creator(db: pw.Database) -> Iterator[None]:
    """PostgreSQL: one node at a time creates the schema, each statement in its own transaction.

    `IF NOT EXISTS` does not guard two concurrent creations of one table (the loser hits a
    unique violation in the catalog), so a session advisory lock makes the second node wait,
    then find everything there. The statements must not share one transaction: a node
    restarted beside running ones would hold each table's index lock while waiting for the
    next table, which a running node's write holds while it waits for the first (a deadlock
    that stopped the restart). SQLite: one transaction, one process, which takes the write lock
    at once: one that read first could not wait for another process's lock (SQLite fails the
    upgrade at once rather than wait in the busy handler) and the start failed at once."""
    if not isinstance(db, pw.PostgresqlDatabase):
        with db.atomic("IMMEDIATE"):
            yield
        return
    db.execute_sql("SELECT pg_advisory_lock(%s)", (SCHEMA_LOCK,))
    try:
        yield
    finally:
        db.execute_sql("SELECT pg_advisory_unlock(%s)", (SCHEMA_LOCK,))


def _refuse_a_newer_schema(db: pw.Database) -> None:
    if not db.table_exists(MetaValue._meta.table_name):
        return
    row = MetaValue.get_or_none(MetaValue.key == SCHEMA_VERSION_KEY)
    stored = int(row.value) if row is not None and str(row.value).isdigit() else 0
    if stored > SCHEMA_VERSION:
        raise StorageError(
            f"the database was made by a newer jobserver (schema version {stored}; this one knows up to "
            f"{SCHEMA_VERSION}): run that version or newer on it, or restore a backup"
        )


def create_schema(db: pw.Database) -> None:
    """Create every table, column and index that does not exist yet."""
    try:
        with db.bind_ctx(ALL_MODELS), db.connection_context(), _one_creator(db):
            _refuse_a_newer_schema(db)
            _add_missing_columns(db)
            db.create_tables(ALL_MODELS, safe=True)
            MetaValue.insert(key=SCHEMA_VERSION_KEY, value=str(SCHEMA_VERSION)).on_conflict(
                conflict_target=[MetaValue.key], update={MetaValue.value: str(SCHEMA_VERSION)}
            ).execute()
            for name in REPLACED_JOB_INDEXES:
                db.execute_sql(f"DROP INDEX IF EXISTS {name}")
            for name, definition in JOB_INDEXES:
                db.execute_sql(f"CREATE INDEX IF NOT EXISTS {name} ON jobs {definition}")
    except pw.DatabaseError as exc:
        held = (
            " (another process held its write lock longer than database.busy_timeout)"
            if "locked" in str(exc)
            else ""
        )
        raise StorageError(f"cannot create the schema: {exc}{held}") from exc
