"""What the dashboard and the CLI read from the API, against the real app in-process: why a
pending job waits, finding a job by its Idempotency-Key, bulk delete, the per-minute series
of /stats, and an event stream that ends after the stored events (`follow=false`)."""

from __future__ import annotations

import sqlite3

import pytest

from jobserver.client.sdk import Client
from jobserver.core.errors import InvalidRequestError
from tests.inproc import RunningApp

ADD = "jobserver.examples.add"
NOOP = "jobserver.examples.noop"
WAIT_S = 30.0


def test_a_pending_job_says_why_it_waits(app: RunningApp, client: Client) -> None:
    delayed = client.submit(NOOP, delay=3600)
    reason = client.get(delayed["id"])["pending_reason"]
    assert reason["code"] == "delayed" and reason["until"] == delayed["run_at"]
    assert reason["detail"] == f"delayed until {delayed['run_at']}"

    client.pause_task(NOOP)
    held = client.submit(NOOP)
    assert client.get(held["id"])["pending_reason"]["code"] == "task_paused"
    listed = {j["id"]: j["pending_reason"] for j in client.list(task=NOOP)["jobs"]}
    assert listed[held["id"]]["code"] == "task_paused" and listed[delayed["id"]]["code"] == "delayed"
    client.resume_task(NOOP)
    done = client.wait(held["id"], timeout=WAIT_S)
    assert done["pending_reason"] is None

    # a due job of a task this server does not know (submitted by a newer deploy), made in the file
    unknown = client.submit(NOOP, delay=3600)["id"]
    with sqlite3.connect(app.db_path, timeout=WAIT_S) as db:
        db.execute(
            "UPDATE jobs SET task = 'newer.task', status = 'pending', run_at = created_at WHERE id = ?",
            (unknown,),
        )
    reason = client.get(unknown)["pending_reason"]
    assert reason["code"] == "unknown_task" and "newer.task" in reason["detail"]


def test_find_a_job_by_its_idempotency_key(client: Client, app: RunningApp) -> None:
    first = client.submit(ADD, {"a": 1, "b": 2}, idempotency_key="order-7")
    client.submit(ADD, {"a": 1, "b": 3}, idempotency_key="order-8")
    found = app.client.get("/jobs", params={"idempotency_key": "order-7"}).json()["jobs"]
    assert [j["id"] for j in found] == [first["id"]]
    assert app.client.get("/jobs", params={"idempotency_key": "nope"}).json()["jobs"] == []
    bad = app.client.get("/jobs", params={"idempotency_key": ""})
    assert bad.status_code == 422 and bad.json()["code"] == "validation-error"


def test_bulk_delete_takes_only_finished_jobs(client: Client) -> None:
    done = [client.submit(ADD, {"a": i, "b": 0})["id"] for i in range(3)]
    for job_id in done:
        client.wait(job_id, timeout=WAIT_S)
    waiting = client.submit(NOOP, delay=3600)["id"]
    assert client.delete_many(ids=[*done[:2], waiting]) == 2
    assert {j["id"] for j in client.list()["jobs"]} == {done[2], waiting}
    assert client.delete_many(status="completed") == 1
    assert [j["id"] for j in client.list()["jobs"]] == [waiting]
    with pytest.raises(InvalidRequestError):
        client.delete_many(status="pending")


def test_stats_give_sixty_minutes_oldest_first(client: Client) -> None:
    client.wait(client.submit(ADD, {"a": 1, "b": 1})["id"], timeout=WAIT_S)
    minutes = client.stats()["last_hour"]["minutes"]
    assert len(minutes) == 60
    assert [m["at"] for m in minutes] == sorted(m["at"] for m in minutes)
    assert sum(m["completed"] for m in minutes) == 1 and minutes[-1]["completed"] == 1


def test_events_without_follow_end_after_the_stored_ones(client: Client) -> None:
    held = client.submit(NOOP, delay=3600)
    stored = list(client.events(held["id"], follow=False))  # returns although the job is not finished
    assert [e.event for e in stored] == ["status"] and stored[0].data["status"] == "pending"
