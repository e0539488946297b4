"""Agent-grade jobs through the API, in-process (tests/inproc.py): events, cancellation,
time limits, stuck threads, durable steps, async tasks and concurrency caps."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from jobserver.core.records import Claim
from jobserver.core.tracing import NO_TRACING, AttemptTrace
from tests.helpers import blocked_in_read, finished, has_line, read_events, submit, wait_until
from tests.inproc import RunningApp, running_app


def test_progress_is_coalesced_but_exact_and_logs_are_bounded(tmp_path: Path) -> None:
    with running_app(tmp_path, config={"events": {"max_log_lines": 50}}) as app:
        c = app.client
        release = tmp_path / "release"
        job_id = submit(c, "tests.e2e_tasks.chatty", {"updates": 20000, "logs": 120, "release": str(release)})
        wait_until(lambda: (c.get(f"/jobs/{job_id}").json()["progress"] or {}).get("current") == 20000)
        release.touch()
        job = finished(c, job_id)
        assert job["progress"] == {"current": 20000, "total": 20000, "message": "update 20000"}
        events = read_events(c, job_id)
        progress = [e for e in events if e[1] == "progress"]
        logs = [e for e in events if e[1] == "log"]
        assert 1 <= len(progress) < 200  # 20,000 calls, a handful of writes
        assert progress[-1][2]["current"] == 20000
        assert [e[2]["message"] for e in logs] == [f"line {i}" for i in range(70, 120)]  # oldest dropped
        assert job["logs_dropped"] == 70
        assert all(e[2]["at"].endswith("Z") for e in logs)


def test_events_in_order_with_resume(app: RunningApp, tmp_path: Path) -> None:
    c = app.client
    release = tmp_path / "release"
    job_id = submit(c, "tests.e2e_tasks.chatty", {"updates": 3, "logs": 3, "release": str(release)})
    collected: list[tuple[str, str, dict[str, Any]]] = []
    reader = threading.Thread(target=lambda: collected.extend(read_events(app.new_client(), job_id)))
    reader.start()
    wait_until(lambda: (c.get(f"/jobs/{job_id}").json()["progress"] or {}).get("current") == 3)
    release.touch()
    reader.join(timeout=30)
    assert not reader.is_alive()
    kinds = [k for _, k, _ in collected]
    assert kinds[0] == "status" and collected[0][2]["status"] in ("pending", "running")
    assert collected[-1][1] == "status" and collected[-1][2]["status"] == "completed"
    assert "progress" in kinds and kinds.count("log") == 3
    ids = [int(i) for i, _, _ in collected]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    # a late client gets the whole history and the terminal event, then the stream closes
    late = read_events(app.new_client(), job_id)
    assert late == collected
    # Last-Event-ID replays only what came after it
    middle = collected[2][0]
    resumed = read_events(app.new_client(), job_id, last_event_id=middle)
    assert resumed == collected[3:]
    assert app.client.get("/jobs/nope/events").status_code == 404


def test_get_wait_returns_when_job_finishes(app: RunningApp, tmp_path: Path) -> None:
    c = app.client
    release = tmp_path / "release"
    started = tmp_path / "started"
    job_id = submit(c, "tests.e2e_tasks.block_until_file", {"started": str(started), "release": str(release)})
    wait_until(lambda: has_line(started))
    t0 = time.monotonic()
    timer = threading.Timer(0.3, release.touch)
    timer.start()
    job = c.get(f"/jobs/{job_id}", params={"wait": 30}).json()
    assert job["status"] == "completed"
    assert time.monotonic() - t0 < 10  # woken by the notification, not the 30 s bound
    unfinished = submit(c, "jobserver.examples.add", {"a": 1, "b": 1}, delay=60)
    t0 = time.monotonic()
    assert c.get(f"/jobs/{unfinished}", params={"wait": 0.5}).json()["status"] == "pending"
    assert time.monotonic() - t0 >= 0.5


def test_cancel_running_async_task(app: RunningApp, tmp_path: Path) -> None:
    c = app.client
    started = tmp_path / "started"
    job_id = submit(c, "tests.e2e_tasks.async_forever", {"started": str(started)})
    wait_until(lambda: has_line(started))
    r = c.post(f"/jobs/{job_id}/cancel")
    assert r.status_code == 202
    t0 = time.monotonic()
    job = finished(c, job_id)
    assert job["status"] == "cancelled"
    assert time.monotonic() - t0 < 3  # well within a second when the machine is not loaded
    assert started.read_text().splitlines()[-1] == "cancelled"  # the coroutine saw CancelledError
    assert c.post(f"/jobs/{job_id}/cancel").status_code == 409


def test_a_sync_step_of_an_async_task_is_interrupted_by_cancel_and_time_limit(
    app: RunningApp, tmp_path: Path
) -> None:
    c = app.client
    started = tmp_path / "started"
    job_id = submit(c, "tests.e2e_tasks.async_spinning_step", {"started": str(started)})
    wait_until(lambda: has_line(started))
    assert c.post(f"/jobs/{job_id}/cancel").status_code == 202
    job = finished(c, job_id, 10)
    assert job["status"] == "cancelled"
    assert started.read_text().splitlines()[-1] == "step left"  # its thread was interrupted
    timed = tmp_path / "timed"
    job = finished(
        c, submit(c, "tests.e2e_tasks.async_spinning_step", {"started": str(timed)}, timeout=1.5), 10
    )
    assert job["status"] == "failed" and job["error"]["type"] == "Timeout", job
    assert timed.read_text().splitlines()[-1] == "step left"
    assert finished(c, submit(c, "jobserver.examples.add", {"a": 1, "b": 2}))["result"] == 3


def test_cancel_running_sync_task_that_checks(app: RunningApp, tmp_path: Path) -> None:
    c = app.client
    started, release = tmp_path / "started", tmp_path / "release"
    job_id = submit(c, "tests.e2e_tasks.block_until_file", {"started": str(started), "release": str(release)})
    wait_until(lambda: has_line(started))
    c.post(f"/jobs/{job_id}/cancel")
    job = finished(c, job_id, 5)
    assert job["status"] == "cancelled"


def test_cancel_interrupts_sync_task_that_never_checks(app: RunningApp, tmp_path: Path) -> None:
    c = app.client
    started = tmp_path / "started"
    job_id = submit(c, "tests.e2e_tasks.spin_forever", {"started": str(started)})
    wait_until(lambda: has_line(started))
    t0 = time.monotonic()
    c.post(f"/jobs/{job_id}/cancel")
    job = finished(c, job_id, 10)
    assert job["status"] == "cancelled"
    assert time.monotonic() - t0 < 4  # the 2 s bound, plus slack for a loaded machine
    # the slot is free again: all 4 threads still run jobs
    ids = [submit(c, "jobserver.examples.add", {"a": i, "b": 0}) for i in range(8)]
    assert all(finished(c, i)["status"] == "completed" for i in ids)


@pytest.mark.untraced
def test_blocking_c_call_is_given_up_and_its_slot_replaced(tmp_path: Path) -> None:
    with running_app(tmp_path, config={"workers": {"threads": 1}}) as app:
        c = app.client
        started, fifo = tmp_path / "started", tmp_path / "fifo"
        os.mkfifo(fifo)
        job_id = submit(c, "tests.e2e_tasks.read_fifo", {"started": str(started), "fifo": str(fifo)})
        wait_until(lambda: has_line(started))
        wait_until(
            lambda: blocked_in_read(int(started.read_text().split()[0])),
            message="the task to block in read(2)",
        )
        t0 = time.monotonic()
        c.post(f"/jobs/{job_id}/cancel")
        job = finished(c, job_id, 10)
        assert job["status"] == "cancelled"
        assert time.monotonic() - t0 < 6  # ends within 2 s of the cancel (plus slack for a loaded machine)
        # the only worker thread is stuck in read(2), yet new jobs run: its slot was replaced
        assert finished(c, submit(c, "jobserver.examples.add", {"a": 1, "b": 2}))["result"] == 3
        fifo.write_bytes(b"x")  # the blocking call returns; its late outcome is dropped
        assert finished(c, job_id)["status"] == "cancelled"


def test_sync_timeout_interrupts_retries_and_frees_the_slot(tmp_path: Path) -> None:
    with running_app(tmp_path, config={"workers": {"threads": 1}}) as app:
        c = app.client
        started = tmp_path / "started"
        t0 = time.monotonic()
        job_id = submit(c, "tests.e2e_tasks.spins_past_timeout", {"started": str(started)})
        job = finished(c, job_id, 20)
        assert job["status"] == "failed"
        assert job["error"]["type"] == "Timeout"
        assert job["attempts"] == 2  # retried once, then given up
        assert time.monotonic() - t0 < 2 * (0.5 + 2) + 3
        assert finished(c, submit(c, "jobserver.examples.add", {"a": 1, "b": 2}))["result"] == 3


def test_async_timeout_and_per_job_timeout(app: RunningApp, tmp_path: Path) -> None:
    c = app.client
    job = finished(c, submit(c, "tests.e2e_tasks.async_past_timeout"))
    assert job["status"] == "failed" and job["error"]["type"] == "Timeout"
    started = tmp_path / "started"
    per_job = finished(c, submit(c, "tests.e2e_tasks.spin_forever", {"started": str(started)}, timeout=0.3))
    assert per_job["status"] == "failed" and per_job["error"]["type"] == "Timeout"


def test_async_steps_and_retry_endpoint_resume(app: RunningApp, tmp_path: Path) -> None:
    c = app.client
    effects, hold = tmp_path / "effects", tmp_path / "hold"
    hold.touch()
    job_id = submit(c, "tests.e2e_tasks.async_stepped", {"path": str(effects), "hold": str(hold)})
    # cancelled once the first step is stored: a cancel while it still runs interrupts it (and
    # the retry would rightly run it again)
    wait_until(
        lambda: [s["status"] for s in c.get(f"/jobs/{job_id}").json()["steps"]] == ["completed"],
        message="the first step to be stored",
    )
    c.post(f"/jobs/{job_id}/cancel")
    assert finished(c, job_id)["status"] == "cancelled"
    hold.unlink()
    assert c.post(f"/jobs/{job_id}/retry").status_code == 202
    job = finished(c, job_id)
    assert job["status"] == "completed" and job["result"] == [10, 20]
    assert effects.read_text().splitlines() == ["step 1", "step 2"]


def test_a_steps_keyword_arguments_may_be_called_name_and_fn(app: RunningApp) -> None:
    c = app.client
    assert finished(c, submit(c, "tests.e2e_tasks.step_with_keywords"))["result"] == "hi bob"
    assert finished(c, submit(c, "tests.e2e_tasks.async_step_with_keywords"))["result"] == "hey ann"


def test_duplicate_step_name_is_an_error(app: RunningApp) -> None:
    c = app.client
    job = finished(c, submit(c, "tests.e2e_tasks.duplicate_step"))
    assert job["status"] == "failed" and "already used" in job["error"]["message"]


def test_concurrency_cap_across_jobs(app: RunningApp, tmp_path: Path) -> None:
    c = app.client
    started, release = tmp_path / "started", tmp_path / "release"
    ids = [
        submit(c, "tests.e2e_tasks.capped", {"started": str(started), "release": str(release)})
        for _ in range(5)
    ]
    wait_until(lambda: has_line(started) and len(started.read_text().splitlines()) == 2)
    # other work is not blocked by the waiting capped jobs
    assert finished(c, submit(c, "jobserver.examples.add", {"a": 1, "b": 1}))["status"] == "completed"
    running = [
        j
        for j in c.get("/jobs", params={"task": "tests.e2e_tasks.capped"}).json()["jobs"]
        if j["status"] == "running"
    ]
    assert len(running) == 2
    release.touch()
    assert all(finished(c, i)["status"] == "completed" for i in ids)


def test_many_async_jobs_run_concurrently(app: RunningApp) -> None:
    c = app.client
    ids = [submit(c, "tests.e2e_tasks.io_wait", {"seconds": 0.5}) for _ in range(100)]
    t0 = time.monotonic()
    assert all(finished(c, i, 60)["status"] == "completed" for i in ids)
    # 100 half-second waits on 4 threads would take 12.5 s serially; concurrently about one
    assert time.monotonic() - t0 < 8


def test_follow_false_ends_after_the_stored_events_and_the_query_is_checked(app: RunningApp) -> None:
    c = app.client
    job_id = submit(c, "jobserver.examples.add", {"a": 1, "b": 2}, delay=3600)
    for no in ("false", "0", "no", "off"):  # pydantic's spellings of false, as the schema's boolean
        r = c.get(f"/jobs/{job_id}/events", params={"follow": no}, timeout=5)
        assert r.status_code == 200 and r.text.count("event: status") == 1, (no, r.text)
    for query in ({"follow": "maybe"}, {"foo": "1"}):
        r = c.get(f"/jobs/{job_id}/events", params=query)
        assert r.status_code == 422 and r.json()["errors"][0]["loc"] == ["query", next(iter(query))], r.text


def test_resume_after_the_last_event_closes_at_once(app: RunningApp) -> None:
    c = app.client
    job_id = submit(c, "jobserver.examples.add", {"a": 1, "b": 2})
    finished(c, job_id)
    events = read_events(c, job_id)
    assert events[-1][2]["status"] == "completed"
    assert read_events(c, job_id, last_event_id=events[-1][0], timeout=5) == []


class HeldAtStart:
    """Tracing that holds a worker inside the start of a chosen task's attempt: after its claim
    committed and left the ready queue, before the attempt is on record as running."""

    enabled = False

    def __init__(self, task: str) -> None:
        self.task = task
        self.held = threading.Event()
        self.release = threading.Event()

    def request(self, name: str, headers: Any) -> Any:
        return NO_TRACING.request(name, headers)

    def carrier(self) -> str | None:
        return None

    def attempt(self, claim: Claim) -> AttemptTrace:
        if claim.task == self.task:
            self.held.set()
            assert self.release.wait(30), "the test never released the attempt"
        return NO_TRACING.attempt(claim)

    def delivery(self, name: str, trace_context: str | None) -> Any:
        return NO_TRACING.delivery(name, trace_context)

    def close(self) -> None:
        pass


def test_a_cancel_between_the_claim_and_the_start_stops_the_attempt(tmp_path: Path) -> None:
    """A cancel committed once a worker took the job, but before its attempt was on record as
    running, must still stop it: it used to be lost, and the job ran to `completed`."""
    held = HeldAtStart("tests.e2e_tasks.record")
    with running_app(tmp_path, tracing=held) as app:
        c = app.client
        ran = tmp_path / "ran"
        job_id = submit(c, "tests.e2e_tasks.record", {"path": str(ran), "value": "ran"})
        assert held.held.wait(30), "no worker started the job"
        r = c.post(f"/jobs/{job_id}/cancel")
        assert r.status_code == 202 and r.json()["cancel_requested"], r.text
        held.release.set()
        job = finished(c, job_id, 10)
        assert job["status"] == "cancelled", job
        assert not ran.exists()  # stopped before its first line


def test_a_cancelled_attempt_that_fails_its_own_way_is_not_retried(app: RunningApp, tmp_path: Path) -> None:
    """The cancel reached the task, which raised an error of its own (or failed on its own just
    as the cancel came): a retry would run a job its user cancelled."""
    c = app.client
    started = tmp_path / "started"
    job_id = submit(c, "tests.e2e_tasks.wraps_every_error", {"started": str(started)})
    wait_until(lambda: has_line(started), message="the job to start")
    assert c.post(f"/jobs/{job_id}/cancel").json()["cancel_requested"]
    job = finished(c, job_id, 10)
    assert job["status"] == "cancelled" and job["attempts"] == 1, job
    assert started.read_text().splitlines() == ["started"]  # never run again
