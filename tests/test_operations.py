"""Operator routes in-process on real SQLite: pausing a task, bulk cancel and retry, /stats."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from jobserver.core.clock import ManualClock
from jobserver.runner import bulk
from tests.helpers import finished, submit, wait_until
from tests.inproc import RunningApp, running_app

ADD = "jobserver.examples.add"
FAIL = "jobserver.examples.fail"
NOOP = "jobserver.examples.noop"


def status(app: RunningApp, job_id: str) -> str:
    return str(app.client.get(f"/jobs/{job_id}").json()["status"])


def paused_flags(app: RunningApp) -> dict[str, bool]:
    return {t["name"]: t["paused"] for t in app.client.get("/tasks").json()["tasks"]}


# ---------------------------------------------------------------- pausing
def test_paused_task_keeps_its_jobs_pending_while_others_run(tmp_path: Path) -> None:
    with running_app(tmp_path) as app:
        c = app.client
        r = c.post(f"/tasks/{ADD}/pause")
        assert r.status_code == 200 and r.json() == {"name": ADD, "paused": True}
        assert paused_flags(app)[ADD] is True and paused_flags(app)[NOOP] is False
        held = [submit(c, ADD, {"a": i, "b": 1}) for i in range(5)]  # idle workers: no hand-off either
        others = [submit(c, NOOP) for _ in range(5)]
        for job_id in others:
            assert finished(c, job_id)["status"] == "completed"
        assert [status(app, j) for j in held] == ["pending"] * 5
        r = c.post(f"/tasks/{ADD}/resume")
        assert r.status_code == 200 and r.json() == {"name": ADD, "paused": False}
        assert [finished(c, j)["result"] for j in held] == [1, 2, 3, 4, 5]
        assert paused_flags(app)[ADD] is False


def test_pause_survives_a_restart(tmp_path: Path) -> None:
    with running_app(tmp_path) as app:
        app.client.post(f"/tasks/{ADD}/pause")
        job_id = submit(app.client, ADD, {"a": 1, "b": 1})
    with running_app(tmp_path) as app:
        assert paused_flags(app)[ADD] is True
        done = submit(app.client, NOOP)
        assert finished(app.client, done)["status"] == "completed"
        assert status(app, job_id) == "pending"
        app.client.post(f"/tasks/{ADD}/resume")
        assert finished(app.client, job_id)["result"] == 2


def test_pause_of_an_unknown_task_is_404_and_pausing_twice_is_fine(tmp_path: Path) -> None:
    with running_app(tmp_path) as app:
        r = app.client.post("/tasks/no.such.task/pause")
        assert r.status_code == 404 and r.json()["code"] == "task-not-found"
        assert app.client.post(f"/tasks/{ADD}/pause").status_code == 200
        assert app.client.post(f"/tasks/{ADD}/pause").status_code == 200
        assert app.client.post(f"/tasks/{ADD}/resume").status_code == 200
        assert app.client.post(f"/tasks/{ADD}/resume").status_code == 200


# ------------------------------------------------------------------ bulk
def test_bulk_retry_by_task_and_status(tmp_path: Path) -> None:
    with running_app(tmp_path) as app:
        c = app.client
        failed = [submit(c, FAIL) for _ in range(4)]
        ok = [submit(c, ADD, {"a": 1, "b": 1}) for _ in range(2)]
        for job_id in failed + ok:
            finished(c, job_id)
        c.post(f"/tasks/{FAIL}/pause")  # so the retried jobs stay visible as pending
        r = c.post("/jobs/retry", json={"status": "failed", "task": FAIL})
        assert r.status_code == 200 and r.json() == {"count": 4}
        assert {status(app, j) for j in failed} == {"pending"}
        assert {status(app, j) for j in ok} == {"completed"}
        assert c.post("/jobs/retry", json={"status": "failed"}).json() == {"count": 0}
        c.post(f"/tasks/{FAIL}/resume")
        assert {finished(c, j)["status"] for j in failed} == {"failed"}
        assert {finished(c, j)["attempts"] for j in failed} == {1}  # a fresh round, not a 2nd attempt


def test_bulk_cancel_by_ids_touches_only_those(tmp_path: Path) -> None:
    with running_app(tmp_path) as app:
        c = app.client
        ids = [submit(c, ADD, {"a": 1, "b": 1}, delay=3600) for _ in range(6)]
        r = c.post("/jobs/cancel", json={"ids": [*ids[:3], "no-such-id"]})
        assert r.status_code == 200 and r.json() == {"count": 3}
        assert [status(app, j) for j in ids] == ["cancelled"] * 3 + ["pending"] * 3
        # cancelled jobs can then be retried by id, by the same filter shape
        assert c.post("/jobs/retry", json={"ids": ids[:2], "status": "cancelled"}).json() == {"count": 2}
        assert [finished(c, j)["status"] for j in ids[:3]] == ["completed", "completed", "cancelled"]


def test_bulk_cancel_runs_in_batches_and_asks_running_jobs_to_stop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bulk, "BATCH_SIZE", 7)  # many batches from a few jobs
    with running_app(tmp_path) as app:
        c = app.client
        release = tmp_path / "release"
        started = tmp_path / "started"
        running = submit(
            c, "tests.e2e_tasks.block_until_file", {"started": str(started), "release": str(release)}
        )
        wait_until(started.exists, message="the blocking job to start")
        pending = [submit(c, ADD, {"a": 1, "b": 1}, delay=3600) for _ in range(30)]
        r = c.post("/jobs/cancel", json={})
        assert r.status_code == 200 and r.json() == {"count": 31}
        assert {status(app, j) for j in pending} == {"cancelled"}
        assert finished(c, running)["status"] == "cancelled"
        assert c.post("/jobs/cancel", json={}).json() == {"count": 0}


@pytest.mark.parametrize(
    ("path", "body", "loc"),
    [
        ("/jobs/cancel", {"status": "completed"}, ["body", "status"]),
        ("/jobs/retry", {"status": "pending"}, ["body", "status"]),
        ("/jobs/retry", {"ids": "abc"}, ["body", "ids"]),
        ("/jobs/cancel", {"everything": True}, ["body", "everything"]),
        # null is not "left out": a selection that came out null must not cancel every job
        ("/jobs/cancel", {"ids": None}, ["body", "ids"]),
        ("/jobs/cancel", {"task": None}, ["body", "task"]),
        ("/jobs/delete", {"status": None, "task": ADD}, ["body", "status"]),
    ],
)
def test_bad_bulk_filter_is_422_and_changes_nothing(
    tmp_path: Path, path: str, body: dict[str, Any], loc: list[str]
) -> None:
    with running_app(tmp_path) as app:
        job_id = submit(app.client, ADD, {"a": 1, "b": 1}, delay=3600)
        r = app.client.post(path, json=body)
        assert r.status_code == 422 and r.json()["errors"][0]["loc"] == loc
        assert status(app, job_id) == "pending"


def test_a_bulk_action_refuses_an_idempotency_key_and_changes_nothing(tmp_path: Path) -> None:
    """A resent bulk action acts again on whatever matches by then: a key it would ignore is refused."""
    with running_app(tmp_path) as app:
        job_id = submit(app.client, FAIL, {})
        assert finished(app.client, job_id)["status"] == "failed"
        for path in ("/jobs/retry", "/jobs/cancel", "/jobs/delete"):
            r = app.client.post(path, json={}, headers={"Idempotency-Key": "k1"})
            assert r.status_code == 422 and r.json()["errors"][0]["loc"] == ["header", "Idempotency-Key"], (
                r.text
            )
        assert status(app, job_id) == "failed"


def test_bulk_routes_do_not_collide_with_a_jobs_own(tmp_path: Path) -> None:
    with running_app(tmp_path) as app:
        job_id = submit(app.client, ADD, {"a": 1, "b": 1}, delay=3600)
        r = app.client.post(f"/jobs/{job_id}/cancel")
        assert r.status_code == 202 and r.json()["status"] == "cancelled"
        r = app.client.get("/jobs/cancel")  # the bulk route's path, not a job id
        assert r.status_code == 405 and r.headers["allow"] == "POST"
        r = app.client.post("/jobs/retry", content=b"", headers={"content-type": "application/json"})
        assert r.status_code == 400  # matching every job takes an explicit {}
        assert status(app, job_id) == "cancelled"
        r = app.client.post("/jobs/retry", json={})
        assert r.status_code == 200 and r.json() == {"count": 1}  # every failed or cancelled job


# ----------------------------------------------------------------- stats
def test_stats_counts_by_status_and_task_and_the_last_hour(tmp_path: Path) -> None:
    clock = ManualClock()
    with running_app(tmp_path, clock=clock) as app:
        c = app.client
        for _ in range(3):
            finished(c, submit(c, ADD, {"a": 1, "b": 1}))
        finished(c, submit(c, FAIL))
        cancelled = submit(c, NOOP, delay=3600)
        c.post(f"/jobs/{cancelled}/cancel")
        submit(c, NOOP, delay=86400)  # still pending after the clock's hour below
        stats = c.get("/stats").json()
        assert stats["counts"] == {
            "pending": 1, "running": 0, "waiting": 0, "completed": 3, "failed": 1, "cancelled": 1,
        }  # fmt: skip
        assert stats["tasks"][ADD]["completed"] == 3
        assert stats["tasks"][NOOP]["pending"] == 1 and stats["tasks"][NOOP]["cancelled"] == 1
        hour = stats["last_hour"]
        assert (hour["completed"], hour["failed"], hour["cancelled"]) == (3, 1, 1)
        assert hour["failure_rate"] == 0.25
        assert hour["throughput_per_minute"] == round(5 / 60, 3)
        assert hour["tasks"][FAIL]["failure_rate"] == 1.0
        # retry and delete move the counts too (the task paused: the retried job is not run meanwhile)
        assert c.post(f"/tasks/{NOOP}/pause").status_code == 200
        assert c.post("/jobs/retry", json={"ids": [cancelled]}).json() == {"count": 1}
        assert c.get("/stats").json()["counts"]["pending"] == 2
        c.post(f"/jobs/{cancelled}/cancel")
        c.delete(f"/jobs/{cancelled}")
        assert c.get("/stats").json()["counts"]["cancelled"] == 0
        clock.advance(3601)  # an hour later the window is empty; the counts stay
        later = c.get("/stats").json()
        assert later["last_hour"]["completed"] == 0 and later["last_hour"]["failure_rate"] is None
        assert later["counts"]["completed"] == 3


def test_counters_start_from_the_jobs_of_an_older_database(tmp_path: Path) -> None:
    with running_app(tmp_path) as app:
        for _ in range(4):
            finished(app.client, submit(app.client, ADD, {"a": 1, "b": 1}))
        submit(app.client, NOOP, delay=3600)
        db_path = app.db_path
    with sqlite3.connect(db_path) as conn:  # as a database made before the counters existed
        for trigger in ("insert", "delete", "update", "finish"):
            conn.execute(f"DROP TRIGGER jobs_counted_{trigger}")
        conn.execute("DROP TABLE job_counts")
        conn.execute("DROP TABLE job_finishes")
    with running_app(tmp_path) as app:
        stats = app.client.get("/stats").json()
        assert stats["counts"]["completed"] == 4 and stats["counts"]["pending"] == 1
        assert stats["last_hour"]["completed"] == 4
        finished(app.client, submit(app.client, ADD, {"a": 1, "b": 1}))
        assert app.client.get("/stats").json()["counts"]["completed"] == 5


def test_a_task_whose_name_holds_a_slash_can_be_paused_and_resumed(tmp_path: Path) -> None:
    with running_app(tmp_path) as app:
        assert app.client.post("/tasks/tests%2Fslashed/pause").json() == {
            "name": "tests/slashed",
            "paused": True,
        }
        assert paused_flags(app)["tests/slashed"] is True
        assert app.client.post("/tasks/tests/slashed/resume").json() == {
            "name": "tests/slashed",
            "paused": False,
        }
        assert paused_flags(app)["tests/slashed"] is False
