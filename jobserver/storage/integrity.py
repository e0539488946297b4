"""The SQLite file's check at start: is it there, is it readable, is it whole.

A server must not start on a file whose pages are damaged: the first query that
reaches a bad page would fail in the middle of serving, or worse, the file would be
written further. `PRAGMA quick_check` walks every b-tree page (not the row contents
against their indexes, which `integrity_check` does at ten times the cost), so its
time grows with the file: about 1.5 s for 540 MB with the file in the page cache,
and 14 s when it must be read from a slow disk first. It therefore runs under a
time budget (`database.startup_check`); a file too large to check within it is
checked as far as the budget goes, and the log says so. An existing file of 0 bytes
is legal to SQLite (it becomes a new, empty database) but almost always means a
wrong path or a lost file, so it gets a WARNING.

Uses the sqlite3 driver directly, on its own connection, before the server's
database connections are opened.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from pathlib import Path

from jobserver.core.errors import StorageError

log = logging.getLogger(__name__)
PROGRESS_STEPS = 10_000  # SQLite VM instructions between two looks at the clock


def check_sqlite_file(path: Path, budget_s: float) -> None:
    """Warn about an empty file; raise StorageError when the file is damaged."""
    if not path.exists():
        return  # a new database: nothing to check
    if path.stat().st_size == 0:
        log.warning(
            "the database file %s exists but is empty (0 bytes): starting with no jobs; "
            "if jobs were expected, check database.url (wrong path?) and whether the file was replaced",
            path,
            extra={"action": "empty_database"},
        )
        return
    if budget_s <= 0:
        return
    started = time.monotonic()
    conn: sqlite3.Connection | None = None
    try:
        conn = sqlite3.connect(path, isolation_level=None)
        conn.set_progress_handler(lambda: time.monotonic() - started > budget_s, PROGRESS_STEPS)
        problems = [str(row[0]) for row in conn.execute("PRAGMA quick_check(5)").fetchall()]
    except sqlite3.DatabaseError as exc:
        _check_failed(path, budget_s, exc)
        return
    finally:
        if conn is not None:
            conn.close()
    if problems != ["ok"]:
        lines = [line for p in problems for line in p.splitlines() if line and not line.startswith("***")]
        raise StorageError(
            f"the database {path} is damaged (PRAGMA quick_check: {'; '.join(lines[:3])}); "
            "restore it from a backup"
        )
    log.info(
        "database check passed in %.2fs (%s, %d MiB)",
        time.monotonic() - started, path, path.stat().st_size >> 20,
        extra={"action": "database_check"},
    )  # fmt: skip


def _check_failed(path: Path, budget_s: float, exc: sqlite3.DatabaseError) -> None:
    """A damaged file stops the start; a check cut by its budget or one that cannot run does not
    (the server's own connections then meet the same condition and report it their way)."""
    name = getattr(exc, "sqlite_errorname", "")
    if name in ("SQLITE_CORRUPT", "SQLITE_NOTADB"):
        raise StorageError(f"the database {path} is damaged ({exc}); restore it from a backup") from exc
    if name == "SQLITE_INTERRUPT":
        log.info(
            "database check stopped after %.1fs (database.startup_check): %s was checked only in part",
            budget_s, path, extra={"action": "database_check"},
        )  # fmt: skip
        return
    log.warning("could not check the database %s at start: %s", path, exc, extra={"action": "database_check"})
