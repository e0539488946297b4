"""A due pending job says it waits for a free worker only while every worker that could run
it is busy, against the real app in-process (and a real server on PostgreSQL): sync tasks run on worker threads and async
ones on async slots, so one kind being full says nothing of the other.

To see a due job that no worker has claimed yet while one is free, time is a ManualClock
and the poll interval a minute: once every idle worker thread sleeps (their timeouts run
in real time), moving the clock past a delayed job's time makes it due, and the threads
take it at their next wake-up (a commit), not before the test has read its reason. The
async feeder claims only while an async slot is free, so it is never the one that could.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from jobserver.core.clock import ManualClock
from tests.e2e import start_server
from tests.helpers import finished, has_line, submit, wait_until
from tests.inproc import RunningApp, running_app

BLOCK = "tests.e2e_tasks.block_until_file"
ASYNC_BLOCK = "tests.e2e_tasks.async_wait_file"
NOOP = "jobserver.examples.noop"
HOUR = 3600
# one of each kind of worker; idle ones poll once a minute of real time (a commit wakes them sooner)
ONE_OF_EACH = {"workers": {"threads": 1, "async_concurrency": 1, "poll_interval": 60}}


def reason(c: httpx.Client, job_id: str) -> dict[str, Any]:
    job = c.get(f"/jobs/{job_id}").json()
    assert job["status"] == "pending", job
    listed = {
        j["id"]: j["pending_reason"] for j in c.get("/jobs", params={"status": "pending"}).json()["jobs"]
    }
    assert listed[job_id] == job["pending_reason"]  # the list says the same as the job
    return dict(job["pending_reason"])


def held(tmp_path: Path, name: str) -> dict[str, str]:
    """Args of a job that marks `name.started` and runs until the file `release` exists."""
    return {"started": str(tmp_path / f"{name}.started"), "release": str(tmp_path / "release")}


def due_while_the_threads_sleep(app: RunningApp, clock: ManualClock) -> None:
    """Move the clock past the delayed jobs' time once every worker thread sleeps out its poll
    interval (set before the move, in real time): none looks for work before the next commit."""
    wakeup = app.runtime.parts.wakeup
    threads = app.settings.workers.threads
    wait_until(lambda: wakeup.sleeping() == threads, message="every worker thread to sleep")
    clock.advance(HOUR + 1)


def test_with_every_thread_busy_a_due_job_waits_for_one_and_not_once_one_is_free(tmp_path: Path) -> None:
    clock = ManualClock()
    with running_app(tmp_path, ONE_OF_EACH, clock=clock) as app:
        c = app.client
        holder = submit(c, BLOCK, held(tmp_path, "holder"))
        wait_until(lambda: has_line(tmp_path / "holder.started"), message="the only thread to run the holder")
        waiting = submit(c, BLOCK, held(tmp_path, "waiting"))
        assert reason(c, waiting) == {
            "code": "no_free_worker",
            "detail": "waiting for a free worker thread: the only worker thread is busy",
        }
        (tmp_path / "release").touch()
        for job_id in (holder, waiting):
            job = finished(c, job_id)
            assert job["status"] == "completed" and job["pending_reason"] is None, job

        later = submit(c, BLOCK, held(tmp_path, "later"), delay=HOUR)
        assert reason(c, later)["code"] == "delayed"
        due_while_the_threads_sleep(app, clock)
        assert reason(c, later) == {"code": "queued", "detail": "due; a free worker thread takes it at once"}
        submit(c, NOOP)  # a commit wakes the sleeping thread, which claims the due job too
        assert finished(c, later)["status"] == "completed"


def test_with_every_async_slot_busy_an_async_job_waits_while_a_due_sync_job_does_not(tmp_path: Path) -> None:
    clock = ManualClock()
    with running_app(tmp_path, ONE_OF_EACH, clock=clock) as app:
        c = app.client
        holder = submit(c, ASYNC_BLOCK, held(tmp_path, "holder"))
        wait_until(
            lambda: has_line(tmp_path / "holder.started"), message="the only async slot to run the holder"
        )
        waiting = submit(c, ASYNC_BLOCK, held(tmp_path, "waiting"))
        assert reason(c, waiting) == {
            "code": "no_free_worker",
            "detail": "waiting for a free async slot: the only async slot is busy",
        }
        later = submit(c, BLOCK, held(tmp_path, "later"), delay=HOUR)
        due_while_the_threads_sleep(app, clock)  # the async slot is held: only the thread could claim
        assert reason(c, later) == {"code": "queued", "detail": "due; a free worker thread takes it at once"}
        assert reason(c, waiting)["code"] == "no_free_worker"

        (tmp_path / "release").touch()  # the freed slot wakes a claim, which takes both
        for job_id in (holder, waiting, later):
            assert finished(c, job_id)["status"] == "completed"


@pytest.mark.e2e
@pytest.mark.postgres
def test_on_postgres_a_busy_node_does_not_speak_for_the_other_nodes(tmp_path: Path, pg_url: str) -> None:
    server = start_server(tmp_path, config={"database": {"url": pg_url}, "workers": {"threads": 1}})
    with server.client() as c:
        holder = submit(c, BLOCK, held(tmp_path, "holder"))
        wait_until(lambda: has_line(tmp_path / "holder.started"), message="the node's only thread to run it")
        waiting = submit(c, BLOCK, held(tmp_path, "waiting"))
        assert reason(c, waiting) == {
            "code": "queued",
            "detail": "due; the only worker thread of this node is busy, and other nodes' are not seen "
            "from here: the first one free on any node takes it",
        }
        (tmp_path / "release").touch()
        for job_id in (holder, waiting):
            assert finished(c, job_id)["status"] == "completed"
