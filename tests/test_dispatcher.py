"""The dispatcher in-process, on a real SQLite file: async jobs never wait for a sync
thread, a job of a task this process does not know stays pending, and the async feeder
does not spin while every async slot is taken."""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

import pytest

from jobserver.core.clock import ManualClock
from jobserver.core.records import JobIds, NewJob
from tests.helpers import has_line, submit, wait_until
from tests.inproc import running_app


def test_async_jobs_run_while_the_only_sync_thread_is_busy(tmp_path: Path) -> None:
    started, release = tmp_path / "started", tmp_path / "release"
    with running_app(tmp_path, {"workers": {"threads": 1}}) as app:
        c = app.client
        sync = c.post(
            "/jobs",
            json={
                "task": "tests.e2e_tasks.block_until_file",
                "args": {"started": str(started), "release": str(release)},
            },
        ).json()
        wait_until(started.exists, 30, message="the sync job to start")
        began = time.monotonic()
        ids = [
            c.post("/jobs", json={"task": "jobserver.examples.async_sleep", "args": {"seconds": 0.3}}).json()[
                "id"
            ]
            for _ in range(10)
        ]
        for job_id in ids:
            assert c.get(f"/jobs/{job_id}", params={"wait": 30}).json()["status"] == "completed"
        took = time.monotonic() - began
        assert c.get(f"/jobs/{sync['id']}").json()["status"] == "running"  # the sync thread is still busy
        assert took < 3.0, took  # side by side, not one after another (10 x 0.3 s)
        release.write_text("go")
        assert c.get(f"/jobs/{sync['id']}", params={"wait": 30}).json()["status"] == "completed"


def test_a_job_of_an_unknown_task_stays_pending(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with running_app(tmp_path) as app:
        c = app.client
        now = time.time()
        unknown = JobIds().new()
        app.runtime.parts.store.enqueue(
            NewJob(unknown, "elsewhere.task", "{}", 5, 1, None, None, None, now, now), None, lambda: None
        ).result(10)
        for _ in range(3):  # known jobs behind it (lower priority) still run
            known = c.post("/jobs", json={"task": "jobserver.examples.add", "args": {"a": 1, "b": 2}}).json()
            assert c.get(f"/jobs/{known['id']}", params={"wait": 30}).json()["status"] == "completed"
        job = c.get(f"/jobs/{unknown}").json()
        assert (job["status"], job["attempts"], job["error"]) == ("pending", 0, None)
        assert c.get("/tasks").json()["unknown_tasks"] == [{"name": "elsewhere.task", "pending": 1}]
    with caplog.at_level(logging.INFO, logger="jobserver"), running_app(tmp_path) as app:
        assert app.client.get(f"/jobs/{unknown}").json()["status"] == "pending"
        app.client.post(f"/jobs/{unknown}/cancel")
        assert app.client.get("/tasks").json()["unknown_tasks"] == []  # none of its jobs waits any more
    messages = [r.getMessage() for r in caplog.records]
    assert any("tasks registered:" in m and "jobserver.examples.add" in m for m in messages)
    assert any("do" in m and "not know" in m and "elsewhere.task" in m for m in messages)
    caplog.clear()
    (tmp_path / "none").mkdir()
    with running_app(tmp_path / "none", environ={"JOBSERVER_TASKS_MODULES": ""}) as app:
        assert app.client.get("/tasks").json()["tasks"] == []
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("no tasks registered" in m and "JOBSERVER_TASKS_MODULES" in m for m in warned), warned


def thread_cpu_s(name: str) -> float:
    """CPU seconds the named thread of this process has used (from /proc)."""
    thread = next(t for t in threading.enumerate() if t.name == name)
    fields = Path(f"/proc/self/task/{thread.native_id}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def test_the_async_feeder_rests_while_every_slot_is_taken_and_a_delayed_job_is_overdue(
    tmp_path: Path,
) -> None:
    clock = ManualClock()
    config = {"workers": {"threads": 1, "async_concurrency": 1, "poll_interval": 60}}
    with running_app(tmp_path, config, clock=clock) as app:
        c = app.client
        args = {"started": str(tmp_path / "started"), "release": str(tmp_path / "release")}
        holder = submit(c, "tests.e2e_tasks.async_wait_file", args)
        wait_until(lambda: has_line(tmp_path / "started"), message="the only async slot to be taken")
        later = submit(c, "jobserver.examples.noop", delay=3600)
        blocker = submit(c, "tests.e2e_tasks.block_until_file", {**args, "started": str(tmp_path / "s2")})
        wait_until(lambda: has_line(tmp_path / "s2"), message="the only thread to be taken")
        clock.advance(3601)  # the delayed job is overdue, and no worker is free to claim it
        queued = submit(c, "tests.e2e_tasks.async_wait_file", {**args, "started": str(tmp_path / "s3")})
        # (its commit wakes the feeder, which finds every slot taken)
        before, began = thread_cpu_s("jobserver-async-feeder"), time.monotonic()
        threading.Event().wait(1.0)  # a window to measure the feeder's CPU over
        used = thread_cpu_s("jobserver-async-feeder") - before
        assert used < 0.2 * (time.monotonic() - began), f"the feeder used {used:.2f} s of CPU in its wait"
        (tmp_path / "release").touch()
        for job_id in (holder, blocker, later, queued):
            assert c.get(f"/jobs/{job_id}", params={"wait": 30}).json()["status"] == "completed"
