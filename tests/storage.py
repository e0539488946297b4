"""Real SQLite storage for unit tests: a fresh file per test, the real Writer and JobStore."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import peewee as pw

from jobserver.core.lifecycle import AttemptFacts, Outcome, Transition, decide
from jobserver.core.records import Claim, JobRecord
from jobserver.core.tasks import TaskOptions
from jobserver.runner.executor import facts
from jobserver.storage.limits import LimitStore
from jobserver.storage.models import create_schema, open_database
from jobserver.storage.store import JobStore, RescueDecider
from jobserver.storage.writer import Writer


@contextmanager
def open_store(
    tmp_path: Path,
    busy_timeout_s: float = 5.0,
    declared: dict[str, tuple[str, float, float | None]] | None = None,
    known: frozenset[str] | None = None,
) -> Iterator[JobStore]:
    db = open_database("sqlite:///x", tmp_path / "jobs.db", "normal", busy_timeout_s)
    create_schema(db)
    writer = Writer(db, pg=False)
    writer.start()
    try:
        limits = LimitStore(db, writer, False, 1.0, lambda: None, declared=declared, known=known)
        yield JobStore(db, writer, False, limits)
    finally:
        writer.stop()


def limit_store(db: pw.Database, writer: Writer, woken: Callable[[], None] = lambda: None) -> LimitStore:
    """The limits' SQL on a test's database (parked jobs looked at again every second)."""
    return LimitStore(db, writer, False, 1.0, woken)


def claim_one(store: JobStore, owner: str, now: float, lease_s: float) -> Claim | None:
    """Claim the next due job, as one worker with room for one job would; None if none is due."""
    claims = store.claim(owner, now, lease_s, lambda tx: (1, None), lambda tx, c: [i for i, _ in c]).result(
        10
    )
    return claims[0] if claims else None


def end_attempt(
    store: JobStore, claim: Claim, outcome: Outcome, now: float, options: TaskOptions | None = None
) -> JobRecord:
    """Decide and apply an attempt's ending, as the executor does (default: a task that retries)."""
    t = decide(outcome, facts(claim), options or TaskOptions(max_attempts=claim.max_attempts), now, 0.5)
    assert t is not None
    return store.apply(t, lambda rec: None).result(10)


def crash_decider(on_crash: Callable[[str], str]) -> RescueDecider:
    """A rescue decision with each task's `on_crash` given by `on_crash(task)`."""

    def decide_crash(job: AttemptFacts, task: str, cancel_requested: bool, now: float) -> Transition | None:
        options = TaskOptions(on_crash="fail" if on_crash(task) == "fail" else "retry")
        return decide(Outcome.crashed(cancel_requested), job, options, now, 0.5)

    return decide_crash


def rescued_records(pairs: list[tuple[Transition, JobRecord]]) -> list[JobRecord]:
    return [rec for _, rec in pairs]
