"""What a database failure is, and how long writes have been failing.

A driver error (SQLite's or psycopg's, raw or wrapped by Peewee) is the
database's failure, never the caller's: it becomes `StorageError`, which the
API answers with 503 and the workers wait out. `WriteHealth` remembers whether
the last write committed, so readiness can tell the truth and an outage is
logged when it starts, now and then while it lasts, and when it ends, instead
of once per failed write.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time

import peewee as pw
import psycopg

from jobserver.core.errors import JobServerError, StorageError

log = logging.getLogger(__name__)
DRIVER_ERRORS: tuple[type[Exception], ...] = (sqlite3.Error, psycopg.Error, pw.DatabaseError)
STILL_FAILING_LOG_S = 60.0


def as_storage_error(exc: BaseException, doing: str) -> BaseException:
    """`exc` as a StorageError when the database raised it; anything else unchanged."""
    if isinstance(exc, JobServerError) or not isinstance(exc, DRIVER_ERRORS):
        return exc
    error = StorageError(f"database {doing} failed: {exc}")
    error.__cause__ = exc
    return error


def needs_new_connection(exc: BaseException) -> bool:
    """A connection that saw the file read-only stays read-only: only a new one sees it writable again."""
    return isinstance(exc, sqlite3.OperationalError) and "readonly" in str(exc)


class WriteHealth:
    """Whether the last write committed, and since when writes fail."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.failing_since: float | None = None
        self.last_error = ""
        self._logged_at = 0.0

    @property
    def ok(self) -> bool:
        return self.failing_since is None

    def succeeded(self) -> None:
        if self.failing_since is None:
            return
        with self._lock:
            since, self.failing_since = self.failing_since, None
        if since is not None:
            log.warning(
                "database writes work again after %.1fs",
                time.monotonic() - since,
                extra={"action": "write_ok"},
            )

    def failed(self, exc: BaseException) -> None:
        now = time.monotonic()
        with self._lock:
            first = self.failing_since is None
            if first:
                self.failing_since = now
            self.last_error = str(exc)
            due = first or now - self._logged_at >= STILL_FAILING_LOG_S
            if due:
                self._logged_at = now
        if first:
            log.error("database writes fail: %s", exc, extra={"action": "write_failed"})
        elif due:
            log.error(
                "database writes still fail after %.0fs: %s",
                now - (self.failing_since or now),
                exc,
                extra={"action": "write_failed"},
            )
