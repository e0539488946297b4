"""The jobs table as the bench writes it directly with sqlite3.

Owns the one place that knows jobserver's row layout (`jobserver/models.py`,
table `jobs`): creating the schema in a file, building a job row, seeding many
rows before a server starts on the file, the raw insert rate of such rows
(a machine limit), and the query plans SQLite picks for the claim and the read
paths (their SQL copied from `jobserver/store.py`). A seeded file gets no
ANALYZE statistics, because the server never gathers any: the plans and figures
are those of a file the server grew itself. Imports only `jobserver.storage.models`
(for the schema) and `jobserver.core.records` (for the job columns).
"""

from __future__ import annotations

import os
import sqlite3
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

# Column order of the rows built here; the table may have more (with defaults).
COLUMNS = (
    "id",
    "task",
    "args",
    "status",
    "priority",
    "attempts",
    "max_attempts",
    "timeout_s",
    "run_seq",
    "lease_owner",
    "lease_expires_at",
    "cancel_requested",
    "logs_dropped",
    "progress",
    "result",
    "error",
    "idempotency_key",
    "webhook_url",
    "created_at",
    "run_at",
    "started_at",
    "finished_at",
)
INSERT_SQL = f"INSERT INTO jobs ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
NOOP_TASK = "jobserver.examples.noop"


def create_schema(db_path: Path) -> None:
    """Create jobserver's tables and indexes in `db_path` (WAL, synchronous=NORMAL)."""
    from jobserver.storage import models

    db = models.open_database(f"sqlite:///{db_path}", db_path, "normal", 5.0)
    models.create_schema(db)
    db.close()


def connect(db_path: Path, synchronous: str = "NORMAL") -> sqlite3.Connection:
    """A raw connection with the server's durability settings (its default synchronous level)."""
    conn = sqlite3.connect(db_path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    return conn


def job_id(created_at: float) -> str:
    """A UUIDv7-shaped id: sorts by its creation time, like the server's ids."""
    ms = int(created_at * 1000) & ((1 << 48) - 1)
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms << 80) | (0x7 << 76) | ((rand >> 64) & 0xFFF) << 64 | (0b10 << 62) | (rand & ((1 << 62) - 1))
    return str(uuid.UUID(int=value))


def job_row(status: str, created_at: float, run_at: float | None = None) -> tuple[object, ...]:
    """One no-op job row in `status`; finished rows took 1 ms and returned null.

    A pending row due after its creation is stored 'scheduled', as the server stores a delayed job."""
    if status == "pending" and run_at is not None and run_at > created_at:
        status = "scheduled"
    finished = status in ("completed", "failed", "cancelled")
    started = created_at + 0.001 if status != "pending" else None
    return (
        job_id(created_at),
        NOOP_TASK,
        "{}",
        status,
        0,
        1 if started else 0,
        1,
        None,
        1 if started else 0,
        None,
        None,
        0,
        0,
        None,
        "null" if status == "completed" else None,
        None,
        None,
        None,
        created_at,
        created_at if run_at is None else run_at,
        started,
        created_at + 0.002 if finished else None,
    )


def _rows(
    count: int, status: str, first_at: float, step_s: float, run_at: float | None
) -> Iterator[tuple[object, ...]]:
    for i in range(count):
        yield job_row(status, first_at + i * step_s, run_at)


def seed_jobs(
    db_path: Path, count: int, status: str, run_at: float | None = None, batch: int = 20_000
) -> float:
    """Insert `count` no-op jobs in `status`, created over the last day; return seconds taken.

    Pending rows are due at `run_at` (default: when created). The server must not
    be running on the file.
    """
    now = time.time()
    first_at, step_s = now - 86_400.0, 86_000.0 / max(count, 1)
    rows = _rows(count, status, first_at, step_s, run_at)
    t0 = time.perf_counter()
    conn = connect(db_path)
    try:
        for start in range(0, count, batch):
            conn.execute("BEGIN")
            conn.executemany(INSERT_SQL, (next(rows) for _ in range(min(batch, count - start))))
            conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # no ANALYZE: the server never runs one
    finally:
        conn.close()
    return time.perf_counter() - t0


def insert_rate(
    db_path: Path, rows_per_txn: int, duration_s: float, synchronous: str = "NORMAL"
) -> dict[str, float]:
    """Insert pending job rows, `rows_per_txn` per transaction, for `duration_s`; rows/s and txns/s."""
    conn = connect(db_path, synchronous)
    txns = rows = 0
    t0 = time.perf_counter()
    deadline = t0 + duration_s
    try:
        while time.perf_counter() < deadline and txns < 10_000_000:
            now = time.time()
            batch = [job_row("pending", now) for _ in range(rows_per_txn)]
            conn.execute("BEGIN")
            conn.executemany(INSERT_SQL, batch) if rows_per_txn > 1 else conn.execute(INSERT_SQL, batch[0])
            conn.execute("COMMIT")
            txns += 1
            rows += rows_per_txn
    finally:
        conn.close()
    elapsed = time.perf_counter() - t0
    return {"rows_per_s": rows / elapsed, "txns_per_s": txns / elapsed, "rows": rows}


def count_by_status(db_path: Path) -> dict[str, int]:
    """How many jobs are in each status (read-only)."""
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        return dict(conn.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status").fetchall())
    finally:
        conn.close()


def _queries() -> dict[str, str]:
    from jobserver.core.records import JOB_COLUMNS
    from jobserver.storage.store import CLAIM_SQL, CLAIM_TASK_SQL, PROMOTE_SQL

    return {  # the claim statements are jobserver's own; the reads as JobStore.list()/get() build them
        "claim SELECT": CLAIM_SQL,
        "claim SELECT, some tasks at capacity (per task)": CLAIM_TASK_SQL,
        "claim promote": PROMOTE_SQL,
        "GET /jobs?status=completed": f"SELECT {JOB_COLUMNS} FROM jobs WHERE status = ? ORDER BY id DESC LIMIT ?",
        "GET /jobs?status=pending (pending and scheduled, each)": f"SELECT {JOB_COLUMNS} FROM jobs WHERE status = ? ORDER BY id DESC LIMIT ?",
        "GET /jobs?task=...": f"SELECT {JOB_COLUMNS} FROM jobs WHERE task = ? ORDER BY id DESC LIMIT ?",
        "GET /jobs/{id}": f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?",
    }


def query_plans(db_path: Path) -> dict[str, str]:
    """EXPLAIN QUERY PLAN of each claim/read query on `db_path`, one line each ("A / B" for several steps)."""
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        return {
            name: " / ".join(
                str(row[3]) for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", ["x"] * sql.count("?"))
            )
            for name, sql in _queries().items()
        }
    finally:
        conn.close()
