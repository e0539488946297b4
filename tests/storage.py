"""Real SQLite storage for unit tests: a fresh file per test, the real Writer and JobStore."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from jobserver.models import create_schema, open_database
from jobserver.store import JobStore
from jobserver.writer import Writer


@contextmanager
def open_store(tmp_path: Path) -> Iterator[JobStore]:
    db = open_database("sqlite:///x", tmp_path / "jobs.db", "normal", 5.0)
    create_schema(db)
    writer = Writer(db, pg=False)
    writer.start()
    try:
        yield JobStore(db, writer, pg=False)
    finally:
        writer.stop()
