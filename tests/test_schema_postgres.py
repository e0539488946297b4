"""Nodes started at once on a new PostgreSQL database: each creates the schema, none fails.

Each node is a process of its own, as in production. They start together: each first waits
for a shared advisory lock that the test holds until all of them wait on it."""

from __future__ import annotations

import subprocess
import sys
import threading

import psycopg
import pytest

from jobserver.storage.models import JOB_INDEXES, create_schema, open_database
from tests.helpers import wait_until
from tests.test_job_indexes import OLD_JOB_INDEXES

pytestmark = pytest.mark.postgres
NODES = 5
GATE = 4242

NODE = """
import sys
import psycopg
from jobserver.storage.models import create_schema, open_database
url = sys.argv[1]
with psycopg.connect(url, autocommit=True) as gate:
    gate.execute("SELECT pg_advisory_lock_shared(%s)", (int(sys.argv[2]),))
    db = open_database(url, None, "normal", 5.0)
    create_schema(db)
    db.close()
"""


def waiting_on_the_gate(url: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT COUNT(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = %s AND NOT granted",
            (GATE,),
        ).fetchone()
    return int(row[0]) if row else 0


def test_nodes_creating_the_schema_at_once_all_succeed(pg_url: str) -> None:
    with psycopg.connect(pg_url, autocommit=True) as gate:
        gate.execute("SELECT pg_advisory_lock(%s)", (GATE,))
        nodes = [
            subprocess.Popen(
                [sys.executable, "-c", NODE, pg_url, str(GATE)],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
            for _ in range(NODES)
        ]
        try:
            wait_until(lambda: waiting_on_the_gate(pg_url) == NODES, timeout=60)
        finally:
            gate.execute("SELECT pg_advisory_unlock(%s)", (GATE,))
    outputs = [node.communicate(timeout=60)[0].decode() for node in nodes]
    assert [node.returncode for node in nodes] == [0] * NODES, outputs
    db = open_database(pg_url, None, "normal", 5.0)
    try:
        assert {"jobs", "idempotency_keys", "awaits"} <= set(db.get_tables())
    finally:
        db.close()


def blocked_on_a_lock(url: str, besides: int) -> bool:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT COUNT(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND pid <> %s "
            "AND datname = current_database()",
            (besides,),
        ).fetchone()
    return bool(row and row[0])


def test_a_node_restarted_beside_running_ones_creates_the_schema_without_a_deadlock(pg_url: str) -> None:
    """A running node's transaction writes one table, then another. A restarted node checks
    every table's indexes; it must not hold one table while it waits for the next."""
    db = open_database(pg_url, None, "normal", 5.0)
    create_schema(db)  # the running nodes' schema
    failures: list[BaseException] = []

    def restart() -> None:
        try:
            create_schema(db)
        except BaseException as exc:  # the test's verdict, raised below
            failures.append(exc)

    with psycopg.connect(pg_url) as running:
        # the last table (in creation order) that has an index: the restart waits for it
        running.execute("UPDATE webhook_deliveries SET id = id WHERE false")
        creator = threading.Thread(target=restart)
        creator.start()
        try:
            wait_until(lambda: blocked_on_a_lock(pg_url, running.info.backend_pid), timeout=30)
            # then writes tables the restart went through before it
            running.execute("UPDATE jobs SET id = id WHERE false")
            running.execute("UPDATE awaits SET job_id = job_id WHERE false")
            running.commit()
        finally:
            creator.join(60)
    db.close()
    assert not creator.is_alive()
    assert failures == []


def test_a_database_made_with_the_whole_table_indexes_gets_the_partial_ones(pg_url: str) -> None:
    db = open_database(pg_url, None, "normal", 5.0)
    try:
        create_schema(db)
        with psycopg.connect(pg_url, autocommit=True) as conn:  # as the release before made them
            for name, _ in JOB_INDEXES:
                if name != "jobs_blocked":
                    conn.execute(f"DROP INDEX {name}")
            for name, columns in OLD_JOB_INDEXES.items():
                conn.execute(f"CREATE INDEX {name} ON jobs {columns}")
        create_schema(db)
        with psycopg.connect(pg_url, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'jobs'"
            ).fetchall()
    finally:
        db.close()
    indexes: dict[str, str] = dict(rows)
    assert not set(OLD_JOB_INDEXES) & set(indexes)
    for name, _ in JOB_INDEXES:
        assert " WHERE " in indexes[name], indexes
