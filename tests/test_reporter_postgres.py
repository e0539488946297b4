"""Progress and log writes on PostgreSQL, where another node can move an attempt on between a
fence's check and the writes it guards: the real writer and store on a real database."""

from __future__ import annotations

import threading

import psycopg
import pytest

from jobserver.core.records import JobIds, NewJob
from jobserver.runner.reporter import Reporter
from jobserver.storage.limits import LimitStore
from jobserver.storage.models import create_schema, open_database
from jobserver.storage.store import JobStore
from jobserver.storage.writer import Writer
from tests.helpers import wait_until

pytestmark = pytest.mark.postgres
NOW = 1_700_000_000.0


def waiting_on_a_row_lock(url: str) -> bool:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        ).fetchone()
    return bool(row and row[0])


def test_a_stale_attempts_progress_waits_for_a_rival_claim_and_is_refused(pg_url: str) -> None:
    db = open_database(pg_url, None, "normal", 5.0)
    create_schema(db)
    writer = Writer(db, pg=True)
    writer.start()
    try:
        store = JobStore(db, writer, True, LimitStore(db, writer, True, 1.0, lambda: None))
        job = NewJob(JobIds().new(), "t", "{}", 0, 3, None, None, None, NOW, NOW)
        store.enqueue(job, None, lambda: None).result(10)
        claims = store.claim("a", NOW, 30, lambda tx: (1, None), lambda tx, c: [i for i, _ in c]).result(10)
        assert [c.job_id for c in claims] == [job.id]
        reporter = Reporter(writer, lambda job_id: None, max_log_lines=10)
        stale = threading.Event()
        with psycopg.connect(pg_url) as rival:  # another node rescues and claims it, not yet committed
            rival.execute("UPDATE jobs SET run_seq = run_seq + 1 WHERE id = %s", (job.id,))
            reporter.progress(job.id, claims[0].run_seq, stale.set, {"current": 1})
            reporter.log(job.id, claims[0].run_seq, stale.set, "from the old attempt", NOW)
            flushed = reporter.flush_once(NOW)
            assert flushed is not None
            wait_until(
                lambda: waiting_on_a_row_lock(pg_url), message="the flush to wait for the rival's lock"
            )
            rival.commit()
        assert flushed.result(10) == 0
        assert stale.is_set()
        record = store.get(job.id)
        assert record.progress is None and record.run_seq == claims[0].run_seq + 1
        assert [kind for _, kind, _ in store.events_after(job.id, 0, 100)] == ["status", "status"]
    finally:
        writer.stop()
        db.close()
