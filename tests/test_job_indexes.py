"""The jobs table's partial indexes: each search finds its rows in its own index, a job's
status changes touch only the indexes that concern it, and a file made before them is changed
at open."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from jobserver.core.lifecycle import Outcome
from jobserver.core.records import JobIds, NewJob
from jobserver.ops.retention import EXPIRED_JOBS_SQL
from jobserver.storage.models import JOB_INDEXES, REPLACED_JOB_INDEXES
from jobserver.storage.store import (
    CLAIM_SQL,
    CLAIM_TASK_SQL,
    NEXT_DUE_SQL,
    NOT_FINISHED,
    PROMOTE_SQL,
    RESCUE_EXPIRED_SQL,
    RESCUE_ORPHANS_SQL,
    WAKE_DUE_SQL,
)
from tests.storage import claim_one, end_attempt, open_store

IDS = JobIds()
NOW = 1_000_000.0
# the jobs table's indexes as the release before the partial ones made them
OLD_JOB_INDEXES = {
    "jobs_claim": "(status, priority DESC, run_at, id)",
    "jobs_claim_task": "(status, task, priority DESC, run_at, id)",
    "jobs_status_run_at": "(status, run_at)",
    "jobs_status_wake_at": "(status, wake_at)",
    "jobs_lease_expires_at": "(lease_expires_at)",
    "jobs_finished_at": "(finished_at)",
    "jobs_parent_id_id": "(parent_id, id)",
}

# each search of the jobs table by a column that most rows leave NULL or that only some
# statuses use, and the index it must read (the list filters build `parent_id = ?` the same way)
SEARCHES = [
    (PROMOTE_SQL, "jobs_scheduled"),
    (NEXT_DUE_SQL, "jobs_scheduled"),
    (NEXT_DUE_SQL, "jobs_waking"),
    (WAKE_DUE_SQL, "jobs_waking"),
    (CLAIM_SQL, "jobs_pending"),
    (CLAIM_TASK_SQL, "jobs_pending_task"),
    (RESCUE_EXPIRED_SQL, "jobs_leased"),
    (RESCUE_ORPHANS_SQL, "jobs_leased"),
    (EXPIRED_JOBS_SQL, "jobs_finished"),
    (f"SELECT id FROM jobs WHERE parent_id = ? AND {NOT_FINISHED}", "jobs_children"),
    ("SELECT id FROM jobs WHERE parent_id = ? ORDER BY id DESC LIMIT ?", "jobs_children"),
]


def _plan(conn: sqlite3.Connection, sql: str) -> list[str]:
    return [str(row[3]) for row in conn.execute("EXPLAIN QUERY PLAN " + sql, [0] * sql.count("?"))]


def _index_sql(conn: sqlite3.Connection) -> dict[str, str | None]:
    rows = conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'jobs'")
    return {str(name): sql for name, sql in rows}


@pytest.mark.parametrize(("sql", "index"), SEARCHES)
def test_each_search_reads_its_own_index(tmp_path: Path, sql: str, index: str) -> None:
    with open_store(tmp_path):
        pass
    with sqlite3.connect(tmp_path / "jobs.db") as conn:
        plan = _plan(conn, sql)
    assert any(
        f"USING INDEX {index} " in f"{step} " or f"COVERING INDEX {index} " in f"{step} " for step in plan
    ), plan
    # the claim reads its partial index in claim order: only pending jobs are in it
    assert not any(step.startswith("SCAN") and "INDEX jobs_pending" not in step for step in plan), plan
    assert not any("TEMP B-TREE" in step for step in plan), plan


def test_only_listing_indexes_hold_every_job(tmp_path: Path) -> None:
    """A finished job stays only in the primary key and the two listing indexes: every other
    index of the jobs table holds the rows of one status, or those a column names."""
    with open_store(tmp_path):
        pass
    with sqlite3.connect(tmp_path / "jobs.db") as conn:
        indexes = _index_sql(conn)
    whole = {name for name, sql in indexes.items() if sql is None or " WHERE " not in sql}
    assert whole == {"sqlite_autoindex_jobs_1", "jobs_task_id", "jobs_status_id"}
    assert {name for name, _ in JOB_INDEXES} <= set(indexes)


def test_a_job_leaves_the_claim_and_lease_indexes_as_it_runs_and_ends(tmp_path: Path) -> None:
    # what each index holds, read through the index itself
    where = {
        "jobs_pending": "status = 'pending'",
        "jobs_leased": "status = 'running'",
        "jobs_finished": "status = 'completed' AND finished_at > 0",
    }

    def held(conn: sqlite3.Connection) -> tuple[int, ...]:
        return tuple(
            conn.execute(f"SELECT COUNT(*) FROM jobs INDEXED BY {name} WHERE {w}").fetchone()[0]
            for name, w in where.items()
        )

    with open_store(tmp_path) as store, sqlite3.connect(tmp_path / "jobs.db") as conn:
        new = NewJob(IDS.new(), "t", "{}", 0, 1, None, None, None, NOW, NOW)
        store.enqueue(new, None, lambda: None).result(10)
        assert held(conn) == (1, 0, 0)
        claim = claim_one(store, "me", NOW + 1, 30)
        assert claim is not None
        assert held(conn) == (0, 1, 0)
        end_attempt(store, claim, Outcome.completed("1"), NOW + 2)
        assert held(conn) == (0, 0, 1)


def test_a_file_made_with_the_whole_table_indexes_gets_the_partial_ones(tmp_path: Path) -> None:
    with open_store(tmp_path) as store:
        new = NewJob(IDS.new(), "t", "{}", 0, 1, None, None, None, NOW, NOW)
        store.enqueue(new, None, lambda: None).result(10)
    old = OLD_JOB_INDEXES
    assert set(old) == set(REPLACED_JOB_INDEXES)
    with sqlite3.connect(tmp_path / "jobs.db") as conn:
        for name, _ in JOB_INDEXES:
            if name != "jobs_blocked":
                conn.execute(f"DROP INDEX {name}")
        for name, columns in old.items():
            conn.execute(f"CREATE INDEX {name} ON jobs {columns}")
    with open_store(tmp_path) as store:
        claim = claim_one(store, "me", NOW + 1, 30)
        assert claim is not None and claim.job_id == new.id  # the job is kept and claimed
    with sqlite3.connect(tmp_path / "jobs.db") as conn:
        indexes = _index_sql(conn)
        assert not set(old) & set(indexes)
        assert {name for name, _ in JOB_INDEXES} <= set(indexes)
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
