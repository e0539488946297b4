"""The dispatcher in-process, on a real SQLite file: async jobs never wait for a sync
thread, and a job of a task this process does not know stays pending."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

from jobserver.core.records import JobIds, NewJob
from tests.helpers import wait_until
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
    with caplog.at_level(logging.INFO, logger="jobserver"), running_app(tmp_path) as app:
        assert app.client.get(f"/jobs/{unknown}").json()["status"] == "pending"
    messages = [r.getMessage() for r in caplog.records]
    assert any("tasks registered:" in m and "jobserver.examples.add" in m for m in messages)
    assert any("do" in m and "not know" in m and "elsewhere.task" in m for m in messages)
