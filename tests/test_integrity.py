"""The SQLite file's check at start, on real files: whole, damaged, not a database, empty,
and larger than the check's time budget."""

from __future__ import annotations

import logging
import os
import sqlite3
from pathlib import Path

import pytest

from jobserver.core.errors import StorageError
from jobserver.storage.integrity import check_sqlite_file


def make_db(path: Path, rows: int = 2000) -> int:
    """A WAL database with an indexed table over many pages, all in the main file; its page size."""
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        conn.execute("CREATE INDEX t_v ON t (v)")
        conn.executemany("INSERT INTO t (v) VALUES (?)", ((f"value {i}" * 10,) for i in range(rows)))
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return int(conn.execute("PRAGMA page_size").fetchone()[0])


def test_a_whole_file_passes_and_says_how_long_it_took(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "jobs.db"
    make_db(db)
    with caplog.at_level(logging.INFO, logger="jobserver.storage.integrity"):
        check_sqlite_file(db, budget_s=30)
    assert any("database check passed" in r.getMessage() for r in caplog.records)


def test_damaged_pages_stop_the_start(tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    page_size = make_db(db)
    with open(db, "r+b") as f:
        f.seek(3 * page_size)
        f.write(os.urandom(4 * page_size))
    with pytest.raises(StorageError, match="is damaged") as info:
        check_sqlite_file(db, budget_s=30)
    assert "\n" not in str(info.value)


def test_a_file_that_is_not_a_database_stops_the_start(tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    db.write_bytes(os.urandom(8192))
    with pytest.raises(StorageError, match="is damaged"):
        check_sqlite_file(db, budget_s=30)


def test_a_file_larger_than_the_budget_is_checked_in_part(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "jobs.db"
    make_db(db, rows=20_000)
    with caplog.at_level(logging.INFO, logger="jobserver.storage.integrity"):
        check_sqlite_file(db, budget_s=1e-9)
    assert any("checked only in part" in r.getMessage() for r in caplog.records)


def test_an_empty_file_is_warned_about_and_a_missing_one_is_not(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="jobserver.storage.integrity"):
        check_sqlite_file(tmp_path / "new.db", budget_s=30)
        assert caplog.records == []
        (tmp_path / "empty.db").touch()
        check_sqlite_file(tmp_path / "empty.db", budget_s=30)
    assert "exists but is empty (0 bytes)" in caplog.records[0].getMessage()
