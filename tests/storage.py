"""Real SQLite storage for unit tests: a fresh file per test, the real Writer and JobStore."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from jobserver.storage.models import create_schema, open_database
from jobserver.storage.store import JobStore
from jobserver.storage.writer import Writer


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


def claim_one(store: JobStore, owner: str, now: float, lease_s: float):  # type: ignore[no-untyped-def]
    """Claim the next due job, as one worker with room for one job would; None if none is due."""
    claims = store.claim(owner, now, lease_s, lambda tx: (1, None), lambda tx, c: [i for i, _ in c]).result(
        10
    )
    return claims[0] if claims else None
