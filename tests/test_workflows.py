"""Agent workflows in-process on a real SQLite file: durable sleep, signals, children,
gather and the batch submit, driven through the API."""

from __future__ import annotations

import os
import sqlite3
from functools import partial
from pathlib import Path
from typing import Any

import orjson
import pytest

from jobserver.client import Client
from jobserver.core.bounds import MAX_BATCH
from jobserver.core.clock import ManualClock
from jobserver.core.errors import (
    DrainingError,
    InvalidRequestError,
    ServerUnavailableError,
    SignalNotAwaitedError,
)
from tests.helpers import finished, submit, wait_until
from tests.inproc import RunningApp, running_app
from tests.receiver import Receiver


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def status_of(app: RunningApp, job_id: str) -> dict[str, Any]:
    job: dict[str, Any] = app.client.get(f"/jobs/{job_id}").json()
    return job


def waiting(app: RunningApp, job_id: str) -> dict[str, Any] | None:
    job = status_of(app, job_id)
    return job if job["status"] == "waiting" else None


def test_durable_sleep_parks_without_a_thread_and_resumes_once_due(tmp_path: Path) -> None:
    clock = ManualClock()
    with running_app(tmp_path, {"workers": {"threads": 1}}, clock=clock) as app:
        marks = tmp_path / "marks"
        job_id = submit(app.client, "tests.e2e_tasks.nap", {"path": str(marks), "seconds": 3600})
        job = parked = wait_until(lambda: waiting(app, job_id), message="the job to park")
        assert job["waiting_for"]["kind"] == "sleep" and job["waiting_for"]["name"] == "nap"
        assert job["waiting_for"]["until"].startswith("2023-11-14T23:13:20")  # clock start + 1 h
        assert job["attempts"] == 1 and job["started_at"] is not None
        # the one worker thread is free: another job runs while this one sleeps
        other = submit(app.client, "jobserver.examples.add", {"a": 1, "b": 2})
        assert finished(app.client, other)["result"] == 3
        # the attempt leaves the executor's count just after its outcome is committed
        wait_until(lambda: app.runtime.parts.executor.running_count() == 0, message="no attempt running")
        clock.advance(3601)
        job = finished(app.client, job_id)
        assert job["status"] == "completed" and job["attempts"] == 1, job
        assert job["started_at"] == parked["started_at"]  # a resume is not a new attempt: its start stays
        assert job["result"] == "awake after attempt 1"
        assert lines(marks) == ["step 1", "step 2"]
        assert [s["name"] for s in job["steps"]] == ["before", "nap", "after"]
        assert job["waiting_for"] is None


@pytest.mark.parametrize("path_name", ["step/1", "step%2F1"])
def test_a_signal_name_with_a_slash_reaches_its_waiting_job(app: RunningApp, path_name: str) -> None:
    job_id = submit(app.client, "tests.e2e_tasks.wait_named", {"name": "step/1"})
    wait_until(lambda: waiting(app, job_id), message="the job to wait for its signal")
    assert app.client.post(f"/jobs/{job_id}/signals/{path_name}", json={"n": 1}).status_code == 202
    assert finished(app.client, job_id)["result"] == {"n": 1}


def test_a_repeated_signal_is_equal_when_its_numbers_are_written_otherwise(app: RunningApp) -> None:
    job_id = submit(app.client, "tests.e2e_tasks.wait_named", {"name": "go"})
    url = f"/jobs/{job_id}/signals/go"
    assert app.client.post(url, json={"n": 1}).status_code == 202
    for same in (b'{"n": 1.0}', b'{"n": 1e0}'):
        assert (
            app.client.post(url, content=same, headers={"content-type": "application/json"}).status_code
            == 200
        )
    assert app.client.post(url, json={"n": 1.5}).status_code == 409
    assert app.client.post(url, json={"n": True}).status_code == 409  # JSON's true is not 1
    assert finished(app.client, job_id)["result"] == {"n": 1}


@pytest.mark.parametrize(
    ("name", "says"),
    [("n" * 201, "1 to 200 characters"), ("..", "no '.' or '..'"), ("a/./b", "no '.' or '..'")],
)
def test_waiting_for_a_name_no_signal_can_carry_fails_the_call(app: RunningApp, name: str, says: str) -> None:
    job_id = submit(app.client, "tests.e2e_tasks.wait_named", {"name": name})
    job = finished(app.client, job_id)
    assert job["status"] == "failed" and job["waiting_for"] is None
    assert job["error"]["type"] == "ValueError" and says in job["error"]["message"]


@pytest.mark.parametrize("path_name", ["x%2F..%2Fy", "a%2F.%2Fb", "..%2Fgo"])
def test_a_signal_name_no_task_can_wait_for_is_refused(app: RunningApp, path_name: str) -> None:
    job_id = submit(app.client, "tests.e2e_tasks.wait_named", {"name": "y"})
    wait_until(lambda: waiting(app, job_id), message="the job to wait for its signal")
    r = app.client.post(f"/jobs/{job_id}/signals/{path_name}", json={"from": "dots"})
    assert r.status_code == 422 and r.json()["errors"][0]["loc"] == ["path", "name"], r.text
    assert "no '.' or '..'" in r.json()["detail"]
    assert app.client.post(f"/jobs/{job_id}/signals/y", json=1).status_code == 202  # nothing kept before
    assert finished(app.client, job_id)["result"] == 1


def test_signal_sent_while_waiting_resumes_the_job(app: RunningApp) -> None:
    marks = app.tmp_path / "marks"
    c = app.client
    job_id = submit(c, "tests.e2e_tasks.approval", {"path": str(marks)})
    job = wait_until(lambda: waiting(app, job_id), message="the job to wait for its signal")
    assert job["waiting_for"] == {"kind": "signal", "name": "approve", "until": None}
    assert "jobserver_jobs_waiting 1.0" in c.get("/metrics").text
    assert [j["id"] for j in c.get("/jobs", params={"status": "waiting"}).json()["jobs"]] == [job_id]
    r = c.post(f"/jobs/{job_id}/signals/approve", json={"ok": True, "by": "ann"})
    assert r.status_code == 202, r.text
    job = finished(c, job_id)
    assert job["status"] == "completed" and job["result"] == {
        "answer": {"ok": True, "by": "ann"},
        "attempt": 1,
    }
    assert lines(marks) == ["step 1", "step 2"]
    # repeats: an equal body is idempotent, another body conflicts, the job is finished anyway
    assert c.post(f"/jobs/{job_id}/signals/approve", json={"by": "ann", "ok": True}).status_code == 200
    assert c.post(f"/jobs/{job_id}/signals/approve", json={"ok": False}).status_code == 409
    assert c.post(f"/jobs/{job_id}/signals/other", json=1).status_code == 409
    assert c.post("/jobs/nope/signals/approve", json=1).status_code == 404


def test_early_signal_is_kept_and_timeout_returns_none(app: RunningApp) -> None:
    c = app.client
    marks = app.tmp_path / "marks"
    job_id = submit(c, "tests.e2e_tasks.approval", {"path": str(marks)}, delay=3600)
    assert c.post(f"/jobs/{job_id}/signals/approve", json="yes").status_code == 202
    assert status_of(app, job_id)["status"] == "pending"
    job_id2 = submit(c, "tests.e2e_tasks.approval", {"path": str(marks), "timeout": 0.2})
    done = finished(c, job_id2)
    assert done["result"] == {"answer": None, "attempt": 1}
    # it did park until its timeout (read from its stored events: the wait lasts 0.2 s)
    with Client(http_client=c) as sdk:
        parked = [
            e.data for e in sdk.events(job_id2) if e.event == "status" and e.data["status"] == "waiting"
        ]
    assert [p["waiting_for"]["name"] for p in parked] == ["approve"] and parked[0]["waiting_for"]["until"]
    # a signal after the timeout changes nothing: the job is finished
    assert c.post(f"/jobs/{job_id2}/signals/approve", json="late").status_code == 409


def test_a_signal_after_its_wait_timed_out_is_refused_not_kept_unread(tmp_path: Path) -> None:
    clock = ManualClock()
    with running_app(tmp_path, clock=clock) as app:
        c = app.client
        args = {"timeout": 60, "then_sleep": 3600}
        job_id = submit(c, "tests.e2e_tasks.approval_or_reminder", args)
        wait_until(lambda: waiting(app, job_id), message="the job to wait for its signal")
        clock.advance(61)  # the wait times out: the job goes on and sleeps
        job = wait_until(
            lambda: (j := waiting(app, job_id)) and j["waiting_for"]["kind"] == "sleep" and j,
            message="the job to sleep after its timeout",
        )
        r = c.post(f"/jobs/{job_id}/signals/approve", json={"approved": True})
        assert r.status_code == 409, r.text
        problem = r.json()
        assert problem["type"] == "/problems/signal-not-awaited", problem
        assert problem["detail"].startswith(
            f"job {job_id} is waiting: it no longer waits for signal 'approve'"
        )
        assert status_of(app, job_id)["waiting_for"] == job["waiting_for"]  # nothing changed
        with Client(http_client=c) as sdk, pytest.raises(SignalNotAwaitedError) as refused:
            sdk.signal(job_id, "approve", {"approved": True})
        assert refused.value.status == "waiting" and refused.value.name == "approve"
        with sqlite3.connect(app.db_path) as db:
            assert db.execute("SELECT COUNT(*) FROM signals").fetchone() == (0,)
        # a signal of a name the job has not waited for is kept, as before
        assert c.post(f"/jobs/{job_id}/signals/later", json=1).status_code == 202
        clock.advance(3601)
        assert finished(c, job_id)["result"] is None


@pytest.mark.parametrize("on_thread", [False, True], ids=["coroutine", "thread"])
@pytest.mark.parametrize("then", ["wait", "raise"])
def test_a_step_still_running_beside_a_branch_that_parks_or_raises_is_stored_not_paid_again(
    app: RunningApp, on_thread: bool, then: str
) -> None:
    started, release = app.tmp_path / "started", app.tmp_path / "release"
    args = {"started": str(started), "release": str(release), "on_thread": on_thread, "then": then}
    job_id = submit(app.client, "tests.e2e_tasks.pays_beside_a_wait", args)
    other = app.tmp_path / "started.other"
    wait_until(lambda: lines(other), message="the other branch to park or raise while the call runs")
    release.touch()
    if then == "wait":
        wait_until(lambda: waiting(app, job_id), message="the job to wait for its signal")
        assert [s["name"] for s in status_of(app, job_id)["steps"]] == ["pay"]  # stored before it parked
        assert app.client.post(f"/jobs/{job_id}/signals/go", json=1).status_code == 202
    job = finished(app.client, job_id)
    assert job["status"] == "completed", job
    assert job["result"] == ["released", 1 if then == "wait" else "done"]
    assert lines(started) == [job_id]  # the call was made once


def test_async_task_waits_and_sleeps_durably(app: RunningApp) -> None:
    c = app.client
    job_id = submit(c, "tests.e2e_tasks.async_approval", {"path": str(app.tmp_path / "m")})
    wait_until(lambda: waiting(app, job_id), message="the async job to wait")
    assert c.post(f"/jobs/{job_id}/signals/approve", json=[1, 2]).status_code == 202
    job = finished(c, job_id)
    assert job["result"] == {"answer": [1, 2], "attempt": 1}, job


def test_children_are_spawned_once_and_gathered_with_one_thread(tmp_path: Path) -> None:
    with running_app(tmp_path, {"workers": {"threads": 1}}) as app:
        c = app.client
        marks = tmp_path / "marks"
        job_id = submit(c, "tests.e2e_tasks.fan_out", {"path": str(marks), "n": 5})
        job = finished(c, job_id)
        assert job["status"] == "completed", job
        assert job["result"]["results"] == [0, 1, 4, 9, 16] and job["result"]["tail"] == 25
        assert job["attempts"] == 1 and job["result"]["attempt"] == 1
        assert sorted(lines(marks)) == [f"child {i}" for i in range(5)]
        children = c.get("/jobs", params={"parent": job_id}).json()["jobs"]
        assert len(children) == 6 and all(ch["parent_id"] == job_id for ch in children)
        assert {ch["id"] for ch in children} >= set(job["result"]["ids"])


def test_a_failed_child_raises_child_failed_or_is_returned(app: RunningApp) -> None:
    c = app.client
    job_id = submit(c, "tests.e2e_tasks.fan_out", {"path": "", "n": 3, "fail": [1]})
    job = finished(c, job_id)
    assert job["status"] == "failed" and job["error"]["type"] == "ChildFailed", job
    assert "failed on purpose" in job["error"]["message"]
    job_id = submit(
        c, "tests.e2e_tasks.fan_out", {"path": "", "n": 3, "fail": [1], "return_exceptions": True}
    )
    job = finished(c, job_id)
    failed_id = job["result"]["ids"][1]
    assert job["result"]["results"] == [0, {"failed": failed_id, "error": "Fail"}, 4], job


def test_retrying_a_failed_child_then_its_parent_gathers_the_new_result(app: RunningApp) -> None:
    c = app.client
    broken = app.tmp_path / "broken"
    broken.touch()
    job_id = submit(c, "tests.e2e_tasks.fan_out", {"path": "", "n": 2, "fail_while": str(broken)})
    job = finished(c, job_id)
    assert job["status"] == "failed" and job["error"]["type"] == "ChildFailed"
    broken.unlink()
    children = c.get("/jobs", params={"parent": job_id}).json()["jobs"]
    assert len(children) == 2
    for child in children:
        assert c.post(f"/jobs/{child['id']}/retry").status_code == 202
    assert c.post(f"/jobs/{job_id}/retry").status_code == 202
    job = finished(c, job_id)
    assert job["status"] == "completed" and job["result"]["results"] == [0, 1], job
    assert len(c.get("/jobs", params={"parent": job_id}).json()["jobs"]) == 3  # the same two, and the tail


def test_spawn_many_beyond_a_batch_fails_the_job_at_once_and_spawns_nothing(app: RunningApp) -> None:
    job = finished(app.client, submit(app.client, "tests.e2e_tasks.async_fan_out", {"n": MAX_BATCH + 1}))
    assert job["status"] == "failed" and job["attempts"] == 1, job
    assert f"at most {MAX_BATCH} in one call" in job["error"]["message"]
    assert app.client.get("/jobs", params={"parent": job["id"]}).json()["jobs"] == []


@pytest.mark.parametrize(
    ("args", "options", "named"),
    [({"path": "", "i": "seven"}, {}, "i"), ({"path": "", "i": 7}, {"priorty": 1}, "priorty")],
    ids=["bad args", "unknown option"],
)
def test_a_spawn_the_server_refuses_fails_the_job_at_once(
    app: RunningApp, args: dict[str, Any], options: dict[str, Any], named: str
) -> None:
    """The same children would be refused at every attempt: no retry, and the error names why."""
    body = {"task": "tests.e2e_tasks.square", "args": args, "options": options}
    job = finished(app.client, submit(app.client, "tests.e2e_tasks.spawn_one", body))
    assert job["status"] == "failed" and job["attempts"] == 1, job
    assert job["error"]["message"].startswith("spawn 'child': ") and named in job["error"]["message"]
    assert app.client.get("/jobs", params={"parent": job["id"]}).json()["jobs"] == []


def test_spawn_many_takes_a_generator_of_args(app: RunningApp) -> None:
    job = finished(app.client, submit(app.client, "tests.e2e_tasks.squares_of_a_generator", {"n": 4}))
    assert (job["status"], job["result"]) == ("completed", [0, 1, 4, 9]), job


def test_slow_sync_steps_of_async_jobs_do_not_hold_up_the_steps_of_others(tmp_path: Path) -> None:
    """More blocked steps than asyncio's own default executor has threads, and a quick step still runs."""
    held = min(32, (os.cpu_count() or 1) + 4)  # that executor's size on this machine
    started, release = tmp_path / "started", tmp_path / "release"
    config = {"workers": {"async_concurrency": held + 4}}
    with running_app(tmp_path, config=config) as app:
        c = app.client
        try:
            for _ in range(held):
                submit(
                    c,
                    "tests.e2e_tasks.async_blocking_step",
                    {"started": str(started), "release": str(release)},
                )
            wait_until(lambda: len(started.read_text().split()) == held if started.exists() else False, 10)
            quick = submit(
                c,
                "tests.e2e_tasks.async_stepped",
                {"path": str(tmp_path / "q"), "hold": str(tmp_path / "no")},
            )
            assert c.get(f"/jobs/{quick}", params={"wait": 10}).json()["status"] == "completed"
        finally:
            release.touch()


@pytest.mark.parametrize("task", ["tests.e2e_tasks.blocking_step", "tests.e2e_tasks.async_blocking_step"])
def test_a_step_whose_result_the_database_refuses_for_a_while_is_stored_once_it_takes_it(
    tmp_path: Path, task: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The step's call returned while another process held the write lock: its result waits
    for the lock, the call is not made again, and the job's one attempt completes."""
    started, release = tmp_path / "started", tmp_path / "release"
    with running_app(tmp_path, config={"database": {"busy_timeout": "50ms"}}) as app:
        c = app.client
        job_id = submit(c, task, {"started": str(started), "release": str(release)})
        wait_until(started.exists, 10, message="the step's call to start")
        other = sqlite3.connect(app.db_path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # another process takes the write lock and keeps it
        try:
            release.touch()  # the call returns; its result cannot be written yet
            wait_until(lambda: f"a write of {job_id} failed" in caplog.text, 10, message="a refused write")
        finally:
            other.execute("ROLLBACK")
            other.close()
        done = c.get(f"/jobs/{job_id}", params={"wait": 10}).json()
        assert (done["status"], done["attempts"], done["result"]) == ("completed", 1, "released"), done
        assert started.read_text().split() == [job_id]  # the call was made once


def test_async_fan_out_gathers(app: RunningApp) -> None:
    job = finished(app.client, submit(app.client, "tests.e2e_tasks.async_fan_out", {"n": 20}))
    assert job["result"] == [i * i for i in range(20)], job


@pytest.mark.parametrize("how", ["one", "bulk by id", "bulk by status"])
def test_cancelling_a_waiting_parent_cancels_its_children(app: RunningApp, how: str) -> None:
    c = app.client
    hold = app.tmp_path / "hold"
    hold.touch()
    job_id = submit(c, "tests.e2e_tasks.fan_out", {"path": "", "n": 3, "hold": str(hold)})
    job = wait_until(lambda: waiting(app, job_id), message="the parent to gather")
    assert job["waiting_for"] == {"kind": "children", "name": "all", "until": None}
    if how == "one":
        r = c.post(f"/jobs/{job_id}/cancel")
        assert r.status_code == 202 and r.json()["status"] == "cancelled"
    else:  # a bulk cancel does to each job what the one-job cancel does: the children too
        r = c.post("/jobs/cancel", json={"ids": [job_id]} if how == "bulk by id" else {"status": "waiting"})
        assert r.status_code == 200 and r.json() == {"count": 4}, r.text
    hold.unlink()
    for child in c.get("/jobs", params={"parent": job_id}).json()["jobs"]:
        assert finished(c, child["id"])["status"] == "cancelled"


def test_batch_submits_all_or_nothing(app: RunningApp) -> None:
    c = app.client
    items = [
        {"task": "jobserver.examples.add", "args": {"a": i, "b": 1}, "idempotency_key": f"k{i}"}
        for i in range(3)
    ]
    r = c.post("/jobs/batch", json={"jobs": items})
    assert r.status_code == 202, r.text
    ids = [j["id"] for j in r.json()["jobs"]]
    assert r.json()["replayed"] == []
    assert [finished(c, i)["result"] for i in ids] == [1, 2, 3]
    fresh = {"task": "jobserver.examples.noop", "idempotency_key": "k-new"}
    again = c.post("/jobs/batch", json={"jobs": [items[0], fresh, items[2]]}).json()
    assert [j["id"] for j in again["jobs"]][::2] == ids[::2] and again["replayed"] == [0, 2]
    with Client(http_client=c) as sdk:  # the SDK marks the replayed ones
        jobs = sdk.submit_many([fresh, items[1]])
        assert [(j["id"], j.replayed) for j in jobs] == [(again["jobs"][1]["id"], True), (ids[1], True)]
    before = len(c.get("/jobs", params={"limit": 500}).json()["jobs"])
    bad = [*items[:1], {"task": "jobserver.examples.add", "args": {"a": "x", "b": 1}}]
    r = c.post("/jobs/batch", json={"jobs": [{"task": "jobserver.examples.noop"}, *bad]})
    assert r.status_code == 422
    assert r.json()["errors"][0]["loc"] == ["body", "jobs", 2, "args", "a"], r.json()
    r = c.post("/jobs/batch", json={"jobs": [{"task": "jobserver.examples.noop"}, {"task": "nope"}]})
    assert r.status_code == 422 and r.json()["errors"][0]["loc"] == ["body", "jobs", 1, "task"]
    other_body = {**items[0], "args": {"a": 9, "b": 9}}
    r = c.post("/jobs/batch", json={"jobs": [{"task": "jobserver.examples.noop"}, other_body]})
    assert r.status_code == 422 and r.json()["errors"][0]["loc"] == ["body", "jobs", 1, "idempotency_key"]
    assert (
        c.post("/jobs/batch", json={"jobs": [{"task": "jobserver.examples.noop"}] * 1001}).status_code == 422
    )
    # a key for the whole batch would be ignored by a resend: refused, each item takes its own
    r = c.post(
        "/jobs/batch", json={"jobs": [{"task": "jobserver.examples.noop"}]}, headers={"Idempotency-Key": "b"}
    )
    assert r.status_code == 422 and r.json()["errors"][0]["loc"] == ["header", "Idempotency-Key"], r.text
    assert len(c.get("/jobs", params={"limit": 500}).json()["jobs"]) == before  # nothing queued


def test_waiting_for_a_signal_sends_a_job_waiting_webhook(app: RunningApp, receiver: Receiver) -> None:
    c = app.client
    marks = app.tmp_path / "marks"
    job_id = submit(c, "tests.e2e_tasks.approval", {"path": str(marks)}, webhook_url=receiver.url("/hook"))
    [req] = receiver.wait_for(1, "/hook")
    body = orjson.loads(req.body)
    assert body["type"] == "job.waiting"
    assert body["data"]["waiting_for"] == {"kind": "signal", "name": "approve", "until": None}
    assert c.post(f"/jobs/{job_id}/signals/approve", json=True).status_code == 202
    assert finished(c, job_id)["status"] == "completed"
    types = [orjson.loads(r.body)["type"] for r in receiver.wait_for(2, "/hook")]
    assert types == ["job.waiting", "job.completed"]
    # a sleep is not waiting for a person: no job.waiting for it
    sleeper = submit(
        c, "tests.e2e_tasks.nap", {"path": str(marks), "seconds": 0.05}, webhook_url=receiver.url("/nap")
    )
    assert finished(c, sleeper)["status"] == "completed"
    assert [orjson.loads(r.body)["type"] for r in receiver.wait_for(1, "/nap")] == ["job.completed"]


def test_bulk_cancel_reaches_waiting_jobs(app: RunningApp) -> None:
    c = app.client
    marks = app.tmp_path / "marks"
    parked = [submit(c, "tests.e2e_tasks.approval", {"path": str(marks)}) for _ in range(2)]
    for job_id in parked:
        wait_until(partial(waiting, app, job_id), message="the job to wait")
    r = c.post("/jobs/cancel", json={"status": "waiting", "ids": parked})
    assert r.status_code == 200 and r.json() == {"count": 2}, r.text
    assert {finished(c, j)["status"] for j in parked} == {"cancelled"}
    assert "jobserver_jobs_waiting 0.0" in c.get("/metrics").text


def test_a_wait_too_long_to_store_fails_the_call_not_the_server(app: RunningApp) -> None:
    """Ten years at most: a sleep, a signal timeout or a Retry delay past it (or NaN) is a
    ValueError in the task's own call, never a wake-up time the writer cannot store."""
    c, path = app.client, str(app.tmp_path / "marks")
    napping = submit(c, "tests.e2e_tasks.nap", {"path": path, "seconds": 1e300})
    job = finished(c, napping)
    assert job["status"] == "failed" and job["error"]["type"] == "ValueError", job
    assert "ctx.sleep's seconds" in job["error"]["message"]
    waiting = submit(c, "tests.e2e_tasks.approval", {"path": path, "timeout": 9.223372036854776e18})
    job = finished(c, waiting)
    assert job["status"] == "failed" and "ctx.wait_for's timeout" in job["error"]["message"], job
    retried = submit(c, "tests.e2e_tasks.retry_later", {"delay": 1e300})  # attempt 2 returns
    job = finished(c, retried)
    assert (job["status"], job["attempts"], job["result"]) == ("completed", 2, 2), job
    forever = submit(c, "tests.e2e_tasks.approval", {"path": path, "timeout": None})
    assert wait_until(lambda: waiting_for(app, forever))["until"] is None  # None: no timeout at all


def waiting_for(app: RunningApp, job_id: str) -> dict[str, Any] | None:
    job = waiting(app, job_id)
    return None if job is None else job["waiting_for"]


def test_a_child_with_bad_options_names_them(app: RunningApp) -> None:
    factory = app.runtime.parts.commands.factory
    with pytest.raises(InvalidRequestError) as refused:
        factory.child(
            "parent", "jobserver.examples.add", {"a": 1, "b": 2}, {"delay": -100, "priority": "x"}, 0.0
        )
    message = str(refused.value)  # what the parent's error says: each field and why
    assert message.startswith("cannot spawn jobserver.examples.add: invalid priority, delay ("), message
    assert "priority: Value error, must be a JSON number" in message, message
    assert "delay: Input should be greater than or equal to 0" in message, message
    assert [e["loc"] for e in refused.value.errors] == [["priority"], ["delay"]]


def test_a_child_with_bad_args_names_each_field(app: RunningApp) -> None:
    factory = app.runtime.parts.commands.factory
    with pytest.raises(InvalidRequestError) as refused:
        factory.child("parent", "jobserver.examples.add", {"a": "x"}, {}, 0.0)
    message = str(refused.value)  # what the parent's error says
    assert message.startswith("cannot spawn jobserver.examples.add: invalid args"), message
    assert "args.a: Input should be a valid integer" in message and "args.b: Field required" in message


def test_a_job_that_gathers_itself_fails_at_once(app: RunningApp) -> None:
    job = finished(app.client, submit(app.client, "tests.e2e_tasks.gathers_itself", {}))
    assert job["status"] == "failed" and "cannot gather itself" in job["error"]["message"], job


def test_a_stream_asked_for_once_the_server_stops_is_a_503_not_an_empty_end(app: RunningApp) -> None:
    waiting_id = submit(app.client, "tests.e2e_tasks.wait_named", {"name": "go"})
    wait_until(lambda: waiting(app, waiting_id), message="the job to wait for its signal")
    done_id = submit(app.client, "jobserver.examples.noop")
    finished(app.client, done_id)
    app.runtime.parts.hub.close()  # the end of a drain: open streams end, the server stops next
    r = app.client.get(f"/jobs/{waiting_id}/events")
    assert r.status_code == 503 and r.json()["code"] == "draining" and "retry-after" in r.headers, r.text
    assert "watch again" in r.json()["detail"], r.text  # not "accepts no new jobs": nothing was submitted
    # the SDK's events() tries again, then says the server is unavailable, as for one it cannot reach
    with Client(http_client=app.client, retries=1) as sdk, pytest.raises(ServerUnavailableError) as gone:
        list(sdk.events(waiting_id))
    assert "shutting down" in str(gone.value) and isinstance(gone.value.__cause__, DrainingError)
    assert app.client.get(f"/jobs/{waiting_id}/events", params={"follow": "false"}).status_code == 200
    replay = app.client.get(f"/jobs/{done_id}/events")  # a finished job's stream is whole: served
    assert replay.status_code == 200 and '"status":"completed"' in replay.text


@pytest.mark.parametrize("task", ["parks_inside_a_step", "async_parks_inside_a_step"])
def test_a_call_that_parks_inside_a_step_is_refused_not_a_repeated_call(app: RunningApp, task: str) -> None:
    # parked there, the job's resume would run the step's function, and its paid call, again
    marks = app.tmp_path / "marks"
    job_id = submit(app.client, f"tests.e2e_tasks.{task}", {"path": str(marks)})
    job = wait_until(
        lambda: (j := status_of(app, job_id))["status"] in ("waiting", "failed", "completed") and j,
        message="the job to end or park",
    )
    assert job["status"] == "failed" and job["error"]["type"] == "ValueError", job
    assert "inside the function of step 'pay'" in job["error"]["message"], job
    assert lines(marks) == ["paid"]


@pytest.mark.parametrize("name", [1, "", "x" * 201])
def test_a_step_name_that_cannot_be_stored_as_given_is_refused_before_its_call(
    app: RunningApp, name: Any
) -> None:
    # an int name was stored as "1" and not found by the resume, which made the call again; a
    # name longer than the column was refused by PostgreSQL only after the call was made
    marks = app.tmp_path / "marks"
    job = finished(
        app.client, submit(app.client, "tests.e2e_tasks.names_a_step", {"path": str(marks), "name": name})
    )
    assert job["status"] == "failed" and job["error"]["type"] == "ValueError", job
    assert "a step name is a string of 1 to 200 characters" in job["error"]["message"], job
    assert lines(marks) == []
    ok = finished(
        app.client,
        submit(app.client, "tests.e2e_tasks.names_a_step", {"path": str(marks), "name": "x" * 200}),
    )
    assert ok["status"] == "completed" and lines(marks) == ["paid"], ok


def test_a_gather_given_a_generator_waits_for_every_job_in_it(app: RunningApp) -> None:
    # the generator was read by a check before the gather: it gathered nothing and returned []
    job = finished(app.client, submit(app.client, "tests.e2e_tasks.gathers_as_given", {"how": "generator"}))
    assert (job["status"], job["result"]) == ("completed", [2, 4]), job


@pytest.mark.parametrize(
    ("how", "says"), [("one id", "job ids, not one id (write ["), ("numbers", "job ids (strings)")]
)
def test_a_gather_of_what_is_not_a_list_of_ids_says_so(app: RunningApp, how: str, says: str) -> None:
    # one id was read as a list of its characters: "job 0 failed: no job with id '0'"
    job = finished(app.client, submit(app.client, "tests.e2e_tasks.gathers_as_given", {"how": how}))
    assert job["status"] == "failed" and job["error"]["type"] == "ValueError", job
    assert f"ctx.gather('kids-done') takes a list of {says}" in job["error"]["message"], job
