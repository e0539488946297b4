"""Reporter: coalesces progress and log writes of running attempts.

`ctx.progress` and `ctx.log` only touch memory; a flusher (`flush_once`, called
every `events.progress_flush_interval` and before an attempt finishes) writes
the latest progress and the new log lines of every dirty job in ONE transaction.
A task that reports progress 10,000 times a second costs a few writes a second,
and the final value is exact because the attempt flushes before it finishes.
Every write is fenced by the attempt's `run_seq`; a refused write tells the
attempt that it is stale. Log lines are bounded per job, oldest dropped first,
with the count of dropped lines kept on the job.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from jobserver.storage.writer import Tx, WriteFuture, Writer


@dataclass
class _Pending:
    run_seq: int
    on_stale: Callable[[], None]
    progress: dict[str, Any] | None = None
    logs: list[tuple[str, float]] = field(default_factory=list)


class Reporter:
    """Buffered progress/log writes, flushed in batches."""

    def __init__(self, writer: Writer, publish: Callable[[str], None], max_log_lines: int) -> None:
        self._writer = writer
        self._publish = publish
        self._max_logs = max_log_lines
        self._lock = threading.Lock()
        self._dirty: dict[str, _Pending] = {}

    def progress(
        self, job_id: str, run_seq: int, on_stale: Callable[[], None], value: dict[str, Any]
    ) -> None:
        """Remember the latest progress of an attempt."""
        with self._lock:
            self._entry(job_id, run_seq, on_stale).progress = value

    def log(self, job_id: str, run_seq: int, on_stale: Callable[[], None], message: str, at: float) -> None:
        """Queue one log line of an attempt."""
        with self._lock:
            self._entry(job_id, run_seq, on_stale).logs.append((message, at))

    def _entry(self, job_id: str, run_seq: int, on_stale: Callable[[], None]) -> _Pending:
        entry = self._dirty.get(job_id)
        if entry is None or entry.run_seq != run_seq:
            entry = self._dirty[job_id] = _Pending(run_seq, on_stale)
        return entry

    def flush_once(self, now: float, job_id: str | None = None) -> WriteFuture[int] | None:
        """Write what is pending (for one job, or all); None when nothing is."""
        with self._lock:
            if job_id is None:
                batch, self._dirty = self._dirty, {}
            else:
                one = self._dirty.pop(job_id, None)
                batch = {job_id: one} if one is not None else {}
        if not batch:
            return None
        return self._writer.submit(lambda tx: self._write(tx, batch, now))

    def _write(self, tx: Tx, batch: dict[str, _Pending], now: float) -> int:
        written = 0
        for job_id, pending in batch.items():
            fence = (job_id, pending.run_seq)
            # PostgreSQL: lock the row, so no other node's rescue or claim moves run_seq on between
            # this check and the writes below (SQLite's one writer serializes them anyway)
            lock = " FOR UPDATE" if tx.pg else ""
            live = tx.one(
                f"SELECT 1 FROM jobs WHERE id = ? AND run_seq = ? AND status = 'running'{lock}", fence
            )
            if live is None:
                tx.after_commit(pending.on_stale)
                continue
            if pending.progress is not None:
                data = orjson.dumps(pending.progress).decode()
                tx.execute("UPDATE jobs SET progress = ? WHERE id = ?", (data, job_id))
                tx.execute(
                    "INSERT INTO events (job_id, kind, data, at) VALUES (?, 'progress', ?, ?)",
                    (job_id, data, now),
                )
            unwritten = max(0, len(pending.logs) - self._max_logs)  # over the bound before a flush
            if unwritten:
                tx.execute(
                    "UPDATE jobs SET logs_dropped = logs_dropped + ? WHERE id = ?", (unwritten, job_id)
                )
            for message, at in pending.logs[-self._max_logs :]:
                tx.execute(
                    "INSERT INTO events (job_id, kind, data, at) VALUES (?, 'log', ?, ?)",
                    (job_id, orjson.dumps({"message": message, "at": _iso(at)}).decode(), at),
                )
            if pending.logs:
                self._trim_logs(tx, job_id)
            written += 1
            tx.after_commit(lambda j=job_id: self._publish(j))  # type: ignore[misc]
        return written

    def _trim_logs(self, tx: Tx, job_id: str) -> None:
        row = tx.one("SELECT COUNT(*) FROM events WHERE job_id = ? AND kind = 'log'", (job_id,))
        excess = int(row[0]) - self._max_logs if row else 0
        if excess > 0:
            tx.execute(
                "DELETE FROM events WHERE id IN (SELECT id FROM events WHERE job_id = ? "
                "AND kind = 'log' ORDER BY id LIMIT ?)",
                (job_id, excess),
            )
            tx.execute("UPDATE jobs SET logs_dropped = logs_dropped + ? WHERE id = ?", (excess, job_id))


def _iso(ts: float) -> str:
    from jobserver.core.clock import rfc3339

    return rfc3339(ts) or ""
