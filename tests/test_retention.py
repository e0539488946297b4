"""Pruner on a real SQLite file: seed rows either side of the horizon, run one pass, read back."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jobserver.core.clock import ManualClock
from jobserver.core.config import RetentionSettings
from jobserver.core.errors import Fail
from jobserver.core.lifecycle import Outcome
from jobserver.core.records import JobIds, NewJob
from jobserver.ops.retention import CHILD_TABLES, EXPIRED_JOBS_SQL, EXPIRED_KEYS_SQL, Pruner, child_delete_sql
from jobserver.storage.limits import IDLE_KEY_S, LimitStore
from jobserver.storage.models import create_schema, open_database
from jobserver.storage.store import JobStore
from jobserver.storage.writer import Tx, Writer
from jobserver.webhooks.outbox import Outbox
from tests.helpers import wait_until
from tests.inproc import running_app
from tests.storage import claim_one, end_attempt

NOW = 1_800_000_000.0
DAY = 86400.0
CHILDREN = ("events", "steps", "webhook_deliveries", "webhook_attempts")


class Seed:
    """Rows with chosen timestamps, written through the store and the writer."""

    def __init__(self, db: Any, writer: Writer, store: JobStore, limits: LimitStore) -> None:
        self.db, self.writer, self.store, self.limits = db, writer, store, limits
        self.ids = JobIds()

    def job(self, at: float, status: str, key: str | None = None, logs: int = 0) -> str:
        """A job that reached `status` at time `at`, with a step, `logs` extra events, a
        webhook delivery and an attempt of it when finished."""
        job_id = self.ids.new()
        run_at = NOW + 365 * DAY if status == "pending" else at  # never claimed by the seeds below
        new = NewJob(job_id, "tests.task", "{}", 0, 1, None, "http://example.com/hook", key, at, run_at)
        idem = None if key is None else ("public", key, "hash")
        self.store.enqueue(new, idem, lambda: None).result()
        if status == "pending":
            return job_id
        if status == "cancelled":
            self.store.cancel(job_id, at, lambda rec: None).result()
        else:
            claim = claim_one(self.store, "owner", at, 30.0)
            assert claim is not None and claim.job_id == job_id
            if status == "completed":
                end_attempt(self.store, claim, Outcome.completed("1"), at)
            elif status == "failed":
                end_attempt(self.store, claim, Outcome.raised(Fail("m")), at)

        def extras(tx: Tx) -> None:
            tx.execute(
                "INSERT INTO steps (job_id, name, status, result, attempt, started_at, finished_at) "
                "VALUES (?, 's1', 'completed', '1', 1, ?, ?)",
                (job_id, at, at),
            )
            for i in range(logs):
                tx.execute(
                    "INSERT INTO events (job_id, kind, data, at) VALUES (?, 'log', ?, ?)",
                    (job_id, f'{{"message": "line {i}"}}', at),
                )
            row = tx.one("SELECT id FROM webhook_deliveries WHERE job_id = ?", (job_id,))
            if row is not None:
                tx.execute(
                    "INSERT INTO webhook_attempts (delivery_id, job_id, attempt, at, status_code, "
                    "error, duration_ms) VALUES (?, ?, 1, ?, 200, NULL, 3.0)",
                    (row[0], job_id, at),
                )
                tx.execute(
                    "UPDATE webhook_deliveries SET state = 'delivered', attempts = 1, next_attempt_at = NULL "
                    "WHERE id = ?",
                    (row[0],),
                )

        self.writer.call(extras)
        return job_id

    def count(self, table: str, job_id: str | None = None) -> int:
        if job_id is None:
            return int(self.db.execute_sql(f"SELECT COUNT(*) FROM {table}").fetchone()[0])
        column = "id" if table == "jobs" else "job_id"
        return int(
            self.db.execute_sql(f"SELECT COUNT(*) FROM {table} WHERE {column} = ?", (job_id,)).fetchone()[0]
        )

    def rows_of(self, job_id: str) -> dict[str, int]:
        return {t: self.count(t, job_id) for t in ("jobs", *CHILDREN)}


@pytest.fixture
def seed(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Seed]:
    """On SQLite, or on PostgreSQL where a test asks for it (`indirect` "postgres")."""
    pg = getattr(request, "param", "sqlite") == "postgres"
    if pg:
        url = request.getfixturevalue("pg_url")
        db = open_database(url, None, "normal", 5.0)
    else:
        db = open_database("sqlite:///jobs.db", tmp_path / "jobs.db", "normal", 5.0)
    create_schema(db)
    writer = Writer(db, pg)
    writer.start()
    limits = LimitStore(db, writer, pg, 1.0, lambda: None)
    yield Seed(db, writer, JobStore(db, writer, pg, limits, Outbox(threading.Event()).record), limits)
    writer.stop()
    db.close()


def pruner(seed: Seed, **settings: Any) -> Pruner:
    options: dict[str, Any] = {"finished_jobs": 7 * DAY, "idempotency_keys": DAY, "batch_size": 500}
    options.update(settings)
    return Pruner(RetentionSettings(**options), seed.writer, seed.limits, ManualClock(NOW))


def test_finished_jobs_past_the_horizon_go_with_all_their_rows(seed: Seed) -> None:
    old = {s: seed.job(NOW - 8 * DAY, s, logs=3) for s in ("completed", "failed", "cancelled")}
    young = seed.job(NOW - 6 * DAY, "completed", logs=3)
    just_inside = seed.job(NOW - 7 * DAY + 1, "failed")
    unfinished = [seed.job(NOW - 30 * DAY, "pending"), seed.job(NOW - 30 * DAY, "running")]
    kept = {j: seed.rows_of(j) for j in (young, just_inside, *unfinished)}
    assert all(seed.rows_of(j)["webhook_attempts"] == 1 for j in old.values())

    result = pruner(seed).run_once(NOW)

    assert result.jobs == 3
    for job_id in old.values():
        assert seed.rows_of(job_id) == dict.fromkeys(("jobs", *CHILDREN), 0)
    assert {j: seed.rows_of(j) for j in kept} == kept
    assert pruner(seed).run_once(NOW).jobs == 0


def test_a_finished_child_stays_while_its_parent_has_not_finished(seed: Seed) -> None:
    """A waiting parent reads its children's ends again when it resumes: they must still be there."""
    parent = seed.job(NOW - 30 * DAY, "pending")
    child = seed.job(NOW - 8 * DAY, "completed", logs=1)
    orphan = seed.job(NOW - 8 * DAY, "completed")  # its parent is gone already
    seed.writer.call(lambda tx: tx.execute("UPDATE jobs SET parent_id = ? WHERE id = ?", (parent, child)))
    seed.writer.call(lambda tx: tx.execute("UPDATE jobs SET parent_id = 'gone' WHERE id = ?", (orphan,)))
    kept = seed.rows_of(child)

    assert pruner(seed).run_once(NOW).jobs == 1
    assert seed.rows_of(child) == kept and seed.count("jobs", orphan) == 0

    seed.store.cancel(parent, NOW, lambda rec: None).result()
    assert pruner(seed).run_once(NOW).jobs == 1  # the child; the parent finished just now
    assert seed.count("jobs", child) == 0 and seed.count("jobs", parent) == 1


def test_a_finished_job_stays_while_its_webhook_is_still_being_delivered(seed: Seed) -> None:
    """Retries run for about three days: a shorter horizon must not drop a delivery still pending."""
    retrying = seed.job(NOW - 2 * DAY, "failed")
    given_up = seed.job(NOW - 2 * DAY, "completed")
    seed.writer.call(
        lambda tx: tx.execute(
            "UPDATE webhook_deliveries SET state = 'pending', attempts = 3, next_attempt_at = ? WHERE job_id = ?",
            (NOW + 3600, retrying),
        )
    )
    seed.writer.call(
        lambda tx: tx.execute("UPDATE webhook_deliveries SET state = 'failed' WHERE job_id = ?", (given_up,))
    )
    kept = seed.rows_of(retrying)

    assert pruner(seed, finished_jobs=DAY).run_once(NOW).jobs == 1
    assert seed.rows_of(retrying) == kept and seed.count("jobs", given_up) == 0

    seed.writer.call(
        lambda tx: tx.execute(
            "UPDATE webhook_deliveries SET state = 'delivered' WHERE job_id = ?", (retrying,)
        )
    )
    assert pruner(seed, finished_jobs=DAY).run_once(NOW).jobs == 1
    assert seed.rows_of(retrying) == dict.fromkeys(("jobs", *CHILDREN), 0)


def test_idempotency_keys_past_their_horizon_go(seed: Seed) -> None:
    seed.job(NOW - 2 * DAY, "completed", key="old")
    seed.job(NOW - DAY + 60, "completed", key="young")
    result = pruner(seed).run_once(NOW)
    assert result.keys == 1 and result.jobs == 0
    keys = [r[0] for r in seed.db.execute_sql("SELECT key FROM idempotency_keys").fetchall()]
    assert keys == ["young"]


def test_each_batch_deletes_at_most_batch_size_rows(seed: Seed) -> None:
    batch = 4
    jobs = [seed.job(NOW - 10 * DAY, "completed", logs=2) for _ in range(7)]
    p = pruner(seed, batch_size=batch)
    horizon = NOW - 7 * DAY
    ops = 0
    while True:
        before = {t: seed.count(t) for t in ("jobs", *CHILDREN)}
        result = seed.writer.call(p.jobs_op(horizon))
        after = {t: seed.count(t) for t in ("jobs", *CHILDREN)}
        ops += 1
        assert sum(before[t] - after[t] for t in CHILDREN) <= batch
        assert before["jobs"] - after["jobs"] == result.jobs <= batch
        # a job row never goes before its children
        orphans = seed.db.execute_sql(
            "SELECT COUNT(*) FROM events WHERE job_id NOT IN (SELECT id FROM jobs)"
        ).fetchone()[0]
        assert orphans == 0
        if not result.more:
            break
        assert ops < 100
    assert all(seed.count("jobs", j) == 0 for j in jobs)
    assert {t: seed.count(t) for t in CHILDREN} == dict.fromkeys(CHILDREN, 0)
    assert ops > 7 * 6 // batch  # 7 jobs x (4 events, 1 step, 1 delivery, 1 attempt) needed many ops


def test_a_pass_stops_after_max_batches_and_the_next_goes_on(seed: Seed) -> None:
    for _ in range(6):
        seed.job(NOW - 10 * DAY, "completed")
    keys = [seed.job(NOW - 10 * DAY, "pending", key=f"k{i}") for i in range(5)]
    p = Pruner(RetentionSettings(batch_size=2), seed.writer, seed.limits, ManualClock(NOW), max_batches=3)
    tables = ("jobs", "idempotency_keys", *CHILDREN)
    before = sum(seed.count(t) for t in tables)
    first = p.run_once(NOW)
    assert first.batches == 3
    assert sum(seed.count(t) for t in tables) == before - first.rows
    assert 0 < first.rows <= 3 * 2 * 2  # three ops, each at most 2 child rows + 2 jobs (or 2 keys)
    passes = 1
    while p.run_once(NOW).rows:
        passes += 1
    assert passes > 2
    assert seed.count("jobs") == len(keys) and seed.count("idempotency_keys") == 0


def test_a_job_with_many_events_is_pruned_over_several_batches(seed: Seed) -> None:
    job_id = seed.job(NOW - 10 * DAY, "completed", logs=25)
    p = pruner(seed, batch_size=10)
    first = seed.writer.call(p.jobs_op(NOW - 7 * DAY))
    assert first.more and first.jobs == 0 and seed.count("jobs", job_id) == 1
    assert p.run_once(NOW).jobs == 1
    assert seed.rows_of(job_id) == dict.fromkeys(("jobs", *CHILDREN), 0)


@pytest.mark.parametrize(
    "seed", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)
def test_limit_keys_nothing_uses_go_and_keys_in_use_stay(seed: Seed) -> None:
    parked_job = seed.job(NOW - DAY, "pending")
    old = NOW - 60 - IDLE_KEY_S - 10  # before the idle horizon of a key with a 60 s window
    recent = NOW - 60 - IDLE_KEY_S + 10

    def keys(tx: Tx) -> None:
        for key, kind, per_s, wake_at in [
            ("idle", "concurrency", None, None),
            ("held", "concurrency", None, None),
            ("parked", "concurrency", None, None),
            ("looked-at", "concurrency", None, NOW + 5),
            ("rate-old", "rate", 60.0, None),
            ("rate-recent", "rate", 60.0, None),
        ]:
            tx.execute(
                "INSERT INTO limits (key, kind, n, per_s, wake_at) VALUES (?, ?, 1, ?, ?)",
                (key, kind, per_s, wake_at),
            )
        tx.execute("INSERT INTO limit_holds (key, job_id) VALUES ('held', 'j1')")
        tx.execute("UPDATE jobs SET status = 'blocked', blocked_by = 'parked' WHERE id = ?", (parked_job,))
        for key, at in [("rate-old", old), ("rate-recent", recent)]:
            tx.execute(
                "INSERT INTO limit_charges (key, job_id, run_seq, at, units) VALUES (?, 'j2', 1, ?, 1)",
                (key, at),
            )

    seed.writer.call(keys)
    result = pruner(seed).run_once(NOW)

    assert result.limit_keys == 2
    left = [r[0] for r in seed.db.execute_sql("SELECT key FROM limits ORDER BY key").fetchall()]
    assert left == ["held", "looked-at", "parked", "rate-recent"]
    charges = [r[0] for r in seed.db.execute_sql("SELECT key FROM limit_charges").fetchall()]
    assert charges == ["rate-recent"]
    assert pruner(seed).run_once(NOW).limit_keys == 0


@pytest.mark.postgres
def test_nodes_pruning_at_once_leave_no_row_of_a_deleted_job(tmp_path: Path, pg_url: str) -> None:
    """Every node runs its retention pass on the shared database: passes that meet take turns,
    and no event, step or delivery outlives its job (nothing would ever delete it then)."""
    nodes: list[Seed] = []
    try:
        for _ in range(3):
            db = open_database(pg_url, None, "normal", 5.0)
            create_schema(db)
            writer = Writer(db, True)
            writer.start()
            limits = LimitStore(db, writer, True, 1.0, lambda: None)
            nodes.append(
                Seed(db, writer, JobStore(db, writer, True, limits, Outbox(threading.Event()).record), limits)
            )
        for _ in range(150):
            nodes[0].job(NOW - 30 * DAY, "completed", logs=5)
        start = threading.Barrier(len(nodes))
        passes: list[int] = []

        def prune(node: Seed) -> None:
            start.wait(10)
            passes.append(pruner(node, batch_size=40).run_once(NOW).jobs)

        threads = [threading.Thread(target=prune, args=(node,)) for node in nodes]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)

        def all_pruned() -> bool:  # a pass that met another's batch left the rest to a later pass
            pruner(nodes[0], batch_size=40).run_once(NOW)
            return nodes[0].count("jobs") == 0

        wait_until(all_pruned, 30, message="every expired job to be pruned")
        assert sum(passes) <= 150
        assert {table: nodes[0].count(table) for table in CHILDREN} == dict.fromkeys(CHILDREN, 0)
    finally:
        for node in nodes:
            node.writer.stop()
            node.db.close()


@pytest.mark.parametrize(
    "sql",
    [
        EXPIRED_JOBS_SQL,
        EXPIRED_KEYS_SQL,
        "DELETE FROM jobs WHERE id IN (?, ?)",
        *[child_delete_sql(table, key, 2) for table, key in CHILD_TABLES],
    ],
)
def test_pruning_statements_use_indexes(seed: Seed, sql: str) -> None:
    plan = [str(row[-1]) for row in seed.db.execute_sql("EXPLAIN QUERY PLAN " + sql, [0] * sql.count("?"))]
    assert not any(step.startswith("SCAN") for step in plan), plan
    assert not any("TEMP B-TREE" in step for step in plan), plan


def test_the_server_prunes_on_its_own(tmp_path: Path) -> None:
    with running_app(tmp_path, config={"retention": {"finished_jobs": "300ms", "interval": "100ms"}}) as app:
        c = app.client
        r = c.post("/jobs", json={"task": "jobserver.examples.add", "args": {"a": 1, "b": 2}})
        assert r.status_code == 202
        job_id = r.json()["id"]
        assert c.get(f"/jobs/{job_id}", params={"wait": 10}).json()["status"] == "completed"
        wait_until(
            lambda: c.get(f"/jobs/{job_id}").status_code == 404, 10, message="the finished job to be pruned"
        )
