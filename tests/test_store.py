"""JobStore on a real SQLite file: claim order, fencing, rescue either side of the horizon."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import orjson
import pytest

from jobserver.core.errors import IdempotencyMismatchError, JobFinishedError, StaleAttemptError, StorageError
from jobserver.core.lifecycle import Outcome, Park, WaitKind
from jobserver.core.records import Claim, HandOff, JobIds, NewJob
from jobserver.core.tasks import TaskOptions
from jobserver.storage.store import JobStore
from jobserver.storage.writer import Tx
from tests.storage import claim_one, crash_decider, end_attempt, open_store, rescued_records

IDS = JobIds()
NOW = 1_700_000_000.0


def claim(
    store: JobStore, owner: str, now: float, lease_s: float, allowed: list[str] | None = None, limit: int = 1
) -> Claim | None:
    """One claim transaction taking at most `limit` jobs (of `allowed` tasks); the first or None."""
    claims = store.claim(
        owner, now, lease_s, lambda tx: (limit, allowed), lambda tx, cands: [i for i, _ in cands]
    ).result(10)
    return claims[0] if claims else None


def add(
    store: JobStore,
    *,
    priority: int = 0,
    run_at: float = NOW,
    task: str = "t",
    max_attempts: int = 1,
    idem: tuple[str, str, str] | None = None,
) -> str:
    job = NewJob(IDS.new(), task, "{}", priority, max_attempts, None, None, idem and idem[1], NOW, run_at)
    created, value = store.enqueue(job, idem, lambda: None).result(10)
    return job.id if created else str(value)


def test_claim_order_priority_then_due_time(tmp_path: Path) -> None:
    with open_store(tmp_path) as store:
        low = add(store, priority=0, run_at=NOW - 10)
        high = add(store, priority=5, run_at=NOW - 1)
        future = add(store, priority=9, run_at=NOW + 60)
        order = [claim(store, "me", NOW, 30) for _ in range(3)]
        assert [c.job_id if c else None for c in order] == [high, low, None]
        assert store.get(future).to_api()["status"] == "pending"
        last = claim(store, "me", NOW + 61, 30)
        assert last is not None and last.job_id == future


def test_claim_skips_excluded_tasks(tmp_path: Path) -> None:
    with open_store(tmp_path) as store:
        add(store, task="capped")
        other = add(store, task="free")
        taken = claim(store, "me", NOW, 30, ["free"])
        assert taken is not None and taken.job_id == other
        assert claim(store, "me", NOW, 30, ["free"]) is None
        assert claim(store, "me", NOW, 30, []) is None


def test_a_claim_is_taken_once(tmp_path: Path) -> None:
    with open_store(tmp_path) as store:
        add(store)
        futures = [
            store.claim(f"w{i}", NOW, 30, lambda tx: (1, None), lambda tx, c: [i for i, _ in c])
            for i in range(10)
        ]
        assert sum(len(f.result(10)) for f in futures) == 1


def test_stale_attempt_writes_are_refused(tmp_path: Path) -> None:
    with open_store(tmp_path) as store:
        job_id = add(store, max_attempts=3)
        first = claim(store, "old", NOW, 30)
        # the lease expires; the job is rescued and claimed again by another worker
        rescued = store.rescue(NOW + 31, "new", False, crash_decider(lambda t: "retry"), lambda: None).result(
            10
        )
        assert [r.id for r in rescued_records(rescued)] == [job_id]
        second = claim(store, "new", NOW + 31, 30)
        assert first is not None and second is not None
        assert second.run_seq == first.run_seq + 1
        with pytest.raises(StaleAttemptError):
            end_attempt(store, first, Outcome.completed('"old"'), NOW + 32)
        end_attempt(store, second, Outcome.completed('"new"'), NOW + 33)
        assert store.get(job_id).result == '"new"'


def test_rescue_only_past_the_horizon(tmp_path: Path) -> None:
    with open_store(tmp_path) as store:
        expired, fresh = add(store, run_at=NOW - 200), add(store, run_at=NOW - 200)
        claim(store, "a", NOW - 100, 30)  # lease ended at NOW - 70
        claim(store, "b", NOW - 10, 30)  # lease ends at NOW + 20
        rescued = store.rescue(NOW, "me", False, crash_decider(lambda t: "retry"), lambda: None).result(10)
        assert [r.id for r in rescued_records(rescued)] == [expired]
        assert store.get(expired).status == "pending"
        assert store.get(fresh).status == "running"


def test_rescue_per_on_crash_and_cap(tmp_path: Path) -> None:
    with open_store(tmp_path) as store:
        fail_fast = add(store, task="once")
        capped = add(store, task="again", max_attempts=1)
        for round_ in range(3):
            t = NOW + 10 * round_
            for _ in range(2):
                claim(store, "x", t, 1)
            store.rescue(
                t + 5, "me", False, crash_decider(lambda t: "fail" if t == "once" else "retry"), lambda: None
            ).result(10)
        assert store.get(fail_fast).status == "failed"
        crashed = store.get(capped)
        assert crashed.status == "failed" and crashed.attempts == 3 and "Crashed" in (crashed.error or "")


def test_cancel_and_idempotency(tmp_path: Path) -> None:
    with open_store(tmp_path) as store:
        job_id = add(store, idem=("s", "k", "h1"))
        assert add(store, idem=("s", "k", "h1")) == job_id
        with pytest.raises(IdempotencyMismatchError):
            add(store, idem=("s", "k", "h2"))
        assert add(store, idem=("other", "k", "h2")) != job_id
        assert store.cancel(job_id, NOW, lambda r: None).result(10).status == "cancelled"
        with pytest.raises(JobFinishedError):
            store.cancel(job_id, NOW, lambda r: None).result(10)


def test_one_claim_takes_several_in_order(tmp_path: Path) -> None:
    with open_store(tmp_path) as store:
        ids = [add(store, priority=p) for p in (0, 3, 1)]
        claims = store.claim("me", NOW, 30, lambda tx: (5, None), lambda tx, c: [i for i, _ in c]).result(10)
        assert [c.job_id for c in claims] == [ids[1], ids[2], ids[0]]
        assert all(store.get(i).status == "running" for i in ids)


def test_rolled_back_claim_undoes_its_reservation(tmp_path: Path) -> None:
    with open_store(tmp_path) as store:
        job_id = add(store)
        reserved: list[str] = []

        def accept(tx: Tx, cands: list[tuple[str, str]]) -> list[str]:
            reserved.extend(i for i, _ in cands)
            tx.on_rollback(reserved.clear)
            raise RuntimeError("after reserving")

        with pytest.raises(RuntimeError):
            store.claim("me", NOW, 30, lambda tx: (1, None), accept).result(10)
        assert reserved == []
        assert store.get(job_id).status == "pending"


# The jobs table as the release before agent workflows created it (no parent_id, waiting_for,
# wake_at, resume; no signals or awaits tables).
OLD_JOBS_DDL = (
    "CREATE TABLE jobs (id VARCHAR(36) NOT NULL PRIMARY KEY, task VARCHAR(200) NOT NULL, args TEXT NOT NULL, "
    "status VARCHAR(16) NOT NULL, priority INTEGER NOT NULL, attempts INTEGER NOT NULL, "
    "max_attempts INTEGER NOT NULL, timeout_s REAL, run_seq INTEGER NOT NULL, lease_owner VARCHAR(64), "
    "lease_expires_at REAL, cancel_requested INTEGER NOT NULL, logs_dropped INTEGER NOT NULL, progress TEXT, "
    "result TEXT, error TEXT, idempotency_key VARCHAR(255), webhook_url TEXT, created_at REAL NOT NULL, "
    "run_at REAL NOT NULL, started_at REAL, finished_at REAL)"
)


def test_a_database_from_before_workflows_opens_and_keeps_its_jobs(tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / "jobs.db") as conn:
        conn.execute(OLD_JOBS_DDL)
        conn.execute("CREATE INDEX jobs_status_run_at ON jobs (status, run_at)")
        conn.execute(
            "INSERT INTO jobs VALUES ('old-1', 'jobserver.examples.add', '{}', 'pending', 0, 1, 3, NULL, 1, "
            "NULL, NULL, 0, 0, NULL, NULL, NULL, NULL, NULL, 1.0, 1.0, NULL, NULL)"
        )
    with open_store(tmp_path) as store:
        rec = store.get("old-1")
        assert (rec.attempts, rec.resume, rec.parent_id, rec.waiting_for) == (1, 0, None, None)
        assert rec.to_api()["waiting_for"] is None
        claim = claim_one(store, "me", 2.0, 30)
        assert claim is not None and claim.attempt == 2  # an old job's next claim is an attempt
        assert store.signals("old-1") == {} and store.list_jobs(None, None, 10, None, "old-1") == ([], None)


def test_a_job_object_as_json_embeds_the_stored_json_as_it_is(tmp_path: Path) -> None:
    """The status event and the submit's answer carry the job object written from the stored
    columns without parsing them again: the same document the job object's dict gives."""
    with open_store(tmp_path) as store:
        job = NewJob(
            IDS.new(), "t", '{"n": [1, 2.5, "x"], "deep": {"a": null}}', 0, 1, None, None, None, NOW, NOW
        )
        created, rec = store.enqueue(job, None, lambda: None).result(10)
        assert created and not isinstance(rec, str)
        event = store._query("SELECT data FROM events WHERE job_id = ?", (job.id,))[0][0]
        assert event == rec.api_json().decode()
        assert orjson.loads(event) == rec.to_api() == store.get(job.id).to_api()
        assert orjson.loads(event)["args"] == {"n": [1, 2.5, "x"], "deep": {"a": None}}


def test_children_spawned_after_their_parents_cancel_are_cancelled_with_it(tmp_path: Path) -> None:
    """An async parent sees a cancel only at its next await, so its spawn can reach the writer
    after the cancel's transaction: the children it adds then must not be left to run."""
    with open_store(tmp_path) as store:
        parent_id = add(store)
        running = claim(store, "w", NOW, 30)
        assert running is not None and running.job_id == parent_id
        assert store.cancel(parent_id, NOW + 1, lambda r: None).result(10).status == "running"
        children = [
            NewJob(IDS.new(), "t", "{}", 0, 1, None, None, None, NOW + 2, run_at, parent_id)
            for run_at in (NOW + 2, NOW + 60)  # one due now, one delayed
        ]
        ids = orjson.dumps([c.id for c in children]).decode()
        op = store.spawn_op(parent_id, running.run_seq, ("kids", ids, 1, NOW + 2, NOW + 2), children)
        records = store.writer.call(op)
        assert [r.status for r in records] == ["cancelled", "cancelled"]
        assert [store.get(c.id).status for c in children] == ["cancelled", "cancelled"]
        assert claim(store, "w", NOW + 61, 30) is None  # nothing left to run


def test_a_run_woken_by_a_signal_and_handed_to_a_worker_is_still_a_resume(tmp_path: Path) -> None:
    """A signal's transaction may hand the woken job straight to an idle worker; that run is a
    resume like one claimed the usual way: given back by a shutdown, it leaves the attempt
    count and the attempt's start as they were."""
    with open_store(tmp_path) as store:
        job_id = add(store, max_attempts=3)
        first = claim(store, "w", NOW, 30)
        assert first is not None
        parked = end_attempt(store, first, Outcome.suspended(Park(WaitKind.SIGNAL, "go", None)), NOW + 1)
        assert parked.status == "waiting" and parked.attempts == 1
        handed: list[Claim] = []
        handoff = HandOff("w", 30, lambda tx, job, task: True, handed.append)
        store.signal(job_id, "go", "1", "digest", NOW + 2, handoff).result(10)
        assert len(handed) == 1 and store.get(job_id).attempts == 1
        put_back = end_attempt(store, handed[0], Outcome.released(started=True), NOW + 3)
        assert put_back.status == "pending" and put_back.attempts == 1
        again = claim(store, "w", NOW + 4, 30)
        assert again is not None and again.attempt == 1
        assert store.get(job_id).started_at == first.started_at == NOW


def test_a_database_a_newer_release_changed_is_refused_untouched(tmp_path: Path) -> None:
    with open_store(tmp_path) as store:
        add(store)
    with sqlite3.connect(tmp_path / "jobs.db") as conn:
        assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == ("1",)
        conn.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
        tables = conn.execute("SELECT sql FROM sqlite_master ORDER BY name").fetchall()
    refused = r"newer jobserver \(schema version 2; this one knows up to 1\)"
    with pytest.raises(StorageError, match=refused), open_store(tmp_path):
        pass
    with sqlite3.connect(tmp_path / "jobs.db") as conn:
        assert conn.execute("SELECT sql FROM sqlite_master ORDER BY name").fetchall() == tables
        assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == ("2",)


def test_a_start_waits_for_another_process_s_write_lock_before_it_gives_up(tmp_path: Path) -> None:
    """The sqlite3 shell or a script holding the write lock as the server starts: the schema's
    transaction read before it wrote, and SQLite refused it at once instead of waiting
    busy_timeout for the lock (so a start beside a short write failed)."""
    with open_store(tmp_path) as store:
        add(store)
    other = sqlite3.connect(tmp_path / "jobs.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        began = time.monotonic()
        held = r"locked \(another process held its write lock"
        with pytest.raises(StorageError, match=held), open_store(tmp_path, busy_timeout_s=0.5):
            pass
        assert time.monotonic() - began >= 0.45  # it waited for the lock
    finally:
        other.execute("ROLLBACK")
        other.close()
    with open_store(tmp_path) as store:
        assert store.writer.health.ok


@pytest.mark.parametrize("on_crash", ["retry", "fail"])
def test_a_run_the_shutdown_cut_off_after_a_cancel_ends_cancelled(tmp_path: Path, on_crash: str) -> None:
    """The shutdown stopped the attempt first, then a cancel came while it was being given up:
    neither a put-back (on_crash="retry") nor an "Interrupted" failure (on_crash="fail") may
    outlive a cancel its user asked for."""
    with open_store(tmp_path) as store:
        job_id = add(store, max_attempts=3)
        running = claim(store, "w", NOW, 30)
        assert running is not None
        assert store.cancel(job_id, NOW + 1, lambda r: None).result(10).cancel_requested
        options = TaskOptions(max_attempts=3, on_crash="fail" if on_crash == "fail" else "retry")
        ended = end_attempt(store, running, Outcome.released(started=True), NOW + 2, options)
        assert ended.status == "cancelled" and orjson.loads(ended.error or "{}")["type"] == "Cancelled", ended
        assert claim(store, "w", NOW + 3, 30) is None
