"""Crash safety: SIGKILL the real server process and start it again on the same file."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e import STARTED, Server, start_server
from tests.helpers import finished, free_port, has_line, submit, wait_until

pytestmark = pytest.mark.e2e
FINISHED = {"completed", "failed", "cancelled"}


def all_jobs(c: httpx.Client) -> list[dict[str, Any]]:
    jobs, cursor = [], None
    while True:
        params = {"limit": 500, **({"cursor": cursor} if cursor else {})}
        page = c.get("/jobs", params=params).json()
        jobs += page["jobs"]
        cursor = page["next_cursor"]
        if not cursor:
            return jobs


def test_sigkill_while_jobs_flow_loses_nothing(tmp_path: Path) -> None:
    """Submit 300 jobs from a client thread while killing the server 3 times;
    every job that got a 202 ends completed, and re-runs are bounded by what was in flight."""
    marks = tmp_path / "marks.txt"
    srv = start_server(tmp_path)
    accepted: list[str] = []
    stop = threading.Event()

    def submitter() -> None:
        i = 0
        while i < 300 and not stop.is_set():
            try:
                with httpx.Client(base_url=srv.url, timeout=5) as c:
                    while i < 300 and not stop.is_set():
                        r = c.post(
                            "/jobs",
                            json={
                                "task": "tests.e2e_tasks.record",
                                "args": {"path": str(marks), "value": f"v{i}"},
                            },
                        )
                        if r.status_code == 202:
                            accepted.append(r.json()["id"])
                            i += 1
            except httpx.HTTPError:
                wait_until(lambda: stop.is_set() or _up(srv), 30, 0.02, "the server to come back")

    t = threading.Thread(target=submitter)
    t.start()
    kills = 0
    try:
        for target in (60, 140, 220):
            wait_until(lambda: len(accepted) >= target, 60, 0.005, f"{target} accepted jobs")  # noqa: B023
            srv.kill()
            kills += 1
            srv.restart()
        t.join(timeout=120)
    finally:
        stop.set()
        t.join(timeout=10)
    assert len(accepted) == 300
    c = srv.client()
    wait_until(lambda: all(j["status"] in FINISHED for j in all_jobs(c)), 60, 0.1, "every job to finish")
    jobs = {j["id"]: j for j in all_jobs(c)}
    assert set(accepted) <= set(jobs)
    assert all(jobs[i]["status"] == "completed" for i in accepted), [
        jobs[i] for i in accepted if jobs[i]["status"] != "completed"
    ]
    lines = marks.read_text().split()
    values = {j["args"]["value"] for j in jobs.values()}
    assert set(lines) == values  # every job ran
    duplicates = len(lines) - len(set(lines))
    assert duplicates <= kills * 4  # at most the jobs in flight (4 threads) at each kill re-ran
    srv.stop()


def _up(srv: Server) -> bool:
    try:
        return httpx.get(srv.url + "/healthz", timeout=0.5).status_code == 200
    except httpx.HTTPError:
        return False


def test_cut_off_attempt_runs_again(tmp_path: Path) -> None:
    srv = start_server(tmp_path)
    c = srv.client()
    started, release = tmp_path / "started", tmp_path / "release"
    job_id = submit(c, "tests.e2e_tasks.block_until_file", {"started": str(started), "release": str(release)})
    wait_until(lambda: has_line(started), message="the attempt to start")
    srv.kill()
    release.touch()
    srv.restart()
    job = c.get(f"/jobs/{job_id}", params={"wait": 20}).json()
    assert job["status"] == "completed"
    assert job["attempts"] == 2
    assert started.read_text().split("\n")[:2] == [f"{job_id} 1", f"{job_id} 2"]
    srv.stop()


def test_on_crash_fail_is_at_most_once(tmp_path: Path) -> None:
    srv = start_server(tmp_path)
    c = srv.client()
    started, release = tmp_path / "started", tmp_path / "release"
    job_id = submit(c, "tests.e2e_tasks.at_most_once", {"started": str(started), "release": str(release)})
    wait_until(lambda: has_line(started), message="the attempt to start")
    srv.kill()
    release.touch()
    srv.restart()
    job = c.get(f"/jobs/{job_id}", params={"wait": 20}).json()
    assert job["status"] == "failed"
    assert job["error"]["type"] == "Crashed"
    assert "the server running it stopped" in job["error"]["message"]  # found at the start, not by a lease
    assert started.read_text().splitlines() == [f"{job_id} 1"]
    srv.stop()


def test_poison_job_stops_after_crash_cap(tmp_path: Path) -> None:
    """A job that is cut off every time ends failed (Crashed) instead of crash-looping."""
    srv = start_server(tmp_path)
    c = srv.client()
    started, release = tmp_path / "started", tmp_path / "never"
    job_id = submit(c, "tests.e2e_tasks.block_until_file", {"started": str(started), "release": str(release)})
    for n in (1, 2, 3):
        wait_until(
            lambda: has_line(started) and len(started.read_text().splitlines()) == n,  # noqa: B023
            message=f"attempt {n}",
        )
        srv.kill()
        srv.restart()
    job = c.get(f"/jobs/{job_id}", params={"wait": 20}).json()
    assert job["status"] == "failed" and job["error"]["type"] == "Crashed"
    assert job["attempts"] == 3
    srv.stop()


def test_steps_survive_sigkill_between_steps(tmp_path: Path) -> None:
    srv = start_server(tmp_path)
    c = srv.client()
    effects, hold = tmp_path / "effects", tmp_path / "hold"
    hold.touch()
    job_id = submit(c, "tests.e2e_tasks.stepped", {"path": str(effects), "steps": 3, "hold": str(hold)})
    wait_until(lambda: len(c.get(f"/jobs/{job_id}").json()["steps"]) == 2, message="two committed steps")
    srv.kill()
    hold.unlink()
    srv.restart()
    job = finished(c, job_id)
    assert job["status"] == "completed" and job["result"] == [0, 10, 20]
    assert job["attempts"] == 2
    assert effects.read_text().splitlines() == ["step 0", "step 1", "step 2"]  # no step ran twice
    assert [s["name"] for s in job["steps"]] == ["s0", "s1", "s2"]
    assert all(s["status"] == "completed" and s["finished_at"] for s in job["steps"])
    srv.stop()


def test_second_server_on_same_file_is_refused(server: Server, tmp_path: Path) -> None:
    other = tmp_path / "second"
    other.mkdir()
    config = {**server.config, "server": {**server.config["server"], "port": free_port()}}
    second = Server(other, config, None)  # same database file, another directory and port
    STARTED.append(second)
    second.start(wait=False)
    assert second.wait_exit(30) != 0
    assert "already using" in second.log()
    assert server.client().get("/healthz").status_code == 200

    linked = tmp_path / "linked"  # the same file through a symlink: the same lock
    linked.mkdir()
    (linked / "jobs.db").symlink_to(Path(server.config["database"]["url"].removeprefix("sqlite:///")))
    config["database"] = {**config["database"], "url": f"sqlite:///{linked / 'jobs.db'}"}
    third = Server(linked, config, None)
    STARTED.append(third)
    third.start(wait=False)
    assert third.wait_exit(30) != 0 and "already using" in third.log()

    hard = tmp_path / "hard"  # a hard link, with every other file beside the database deleted:
    hard.mkdir()  # the lock is the file's own, so nothing can be removed to lift it
    db = Path(server.config["database"]["url"].removeprefix("sqlite:///"))
    os.link(db, hard / "jobs.db")
    assert not [p for p in db.parent.iterdir() if p.name.endswith(".lock")]
    config["database"] = {**config["database"], "url": f"sqlite:///{hard / 'jobs.db'}"}
    fourth = Server(hard, config, None)
    STARTED.append(fourth)
    fourth.start(wait=False)
    assert fourth.wait_exit(30) != 0 and "already using" in fourth.log()
    assert server.client().get("/healthz").status_code == 200


def test_restart_right_after_sigkill_starts_normally(server: Server) -> None:
    c = server.client()
    job_id = submit(c, "jobserver.examples.add", {"a": 1, "b": 2})
    server.kill()
    server.restart()
    assert c.get(f"/jobs/{job_id}", params={"wait": 10}).json()["result"] == 3


def test_sigterm_drains_running_jobs_and_exits_zero(tmp_path: Path) -> None:
    srv = start_server(tmp_path, config={"workers": {"shutdown_grace_seconds": 10}})
    c = srv.client()
    started, release = tmp_path / "started", tmp_path / "release"
    running = submit(
        c, "tests.e2e_tasks.block_until_file", {"started": str(started), "release": str(release)}
    )
    wait_until(lambda: has_line(started), message="the job to start")
    later = submit(c, "jobserver.examples.add", {"a": 1, "b": 1}, delay=0.5)
    srv.terminate()

    # while draining: new jobs are refused with 503 + Retry-After, reads still work
    def refused() -> bool:
        r = c.post("/jobs", json={"task": "jobserver.examples.add", "args": {"a": 1, "b": 1}})
        return r.status_code == 503 and "retry-after" in r.headers

    wait_until(refused, message="submits to be refused while draining")
    assert c.get(f"/jobs/{running}").json()["status"] == "running"
    # a job that comes due now is not said to be taken at once: nothing starts while draining
    wait_until(
        lambda: (c.get(f"/jobs/{later}").json()["pending_reason"] or {}).get("code") == "draining",
        message="the due job's reason to say the server is shutting down",
    )
    release.touch()
    assert srv.wait_exit(30) == 0
    srv.restart()
    assert c.get(f"/jobs/{running}").json()["status"] == "completed"
    assert c.get(f"/jobs/{later}", params={"wait": 30}).json()["status"] == "completed"
    srv.stop()


def test_sigterm_grace_expiry_puts_jobs_back(tmp_path: Path) -> None:
    srv = start_server(tmp_path, config={"workers": {"shutdown_grace_seconds": 0.5}})
    c = srv.client()
    started, release = tmp_path / "started", tmp_path / "release"
    job_id = submit(c, "tests.e2e_tasks.block_until_file", {"started": str(started), "release": str(release)})
    delayed = c.post(
        "/jobs", json={"task": "jobserver.examples.add", "args": {"a": 1, "b": 1}, "delay": 1}
    ).json()["id"]
    wait_until(lambda: has_line(started), message="the job to start")
    srv.terminate()
    assert srv.wait_exit(30) == 0
    release.touch()
    srv.restart()
    job = c.get(f"/jobs/{job_id}", params={"wait": 20}).json()
    assert job["status"] == "completed"
    assert job["attempts"] == 1  # the put-back attempt was not counted
    assert c.get(f"/jobs/{delayed}", params={"wait": 20}).json()["status"] == "completed"
    srv.stop()


def test_second_signal_exits_at_once_and_loses_nothing(tmp_path: Path) -> None:
    srv = start_server(tmp_path, config={"workers": {"shutdown_grace_seconds": 60}})
    c = srv.client()
    started, release = tmp_path / "started", tmp_path / "release"
    job_id = submit(c, "tests.e2e_tasks.block_until_file", {"started": str(started), "release": str(release)})
    wait_until(lambda: has_line(started), message="the job to start")
    assert srv.proc is not None
    srv.proc.send_signal(signal.SIGINT)
    wait_until(
        lambda: c.post("/jobs", json={"task": "jobserver.examples.noop", "args": {}}).status_code == 503
    )
    t0 = time.monotonic()
    srv.proc.send_signal(signal.SIGINT)
    srv.wait_exit(10)
    assert time.monotonic() - t0 < 5
    release.touch()
    srv.restart()
    assert c.get(f"/jobs/{job_id}", params={"wait": 20}).json()["status"] == "completed"
    srv.stop()


def test_a_bad_config_value_names_the_key_and_exits_before_starting(tmp_path: Path) -> None:
    srv = start_server(tmp_path, env={"JOBSERVER_WORKERS_THREADS": "0"}, wait=False)
    assert srv.wait_exit(30) == 2
    assert "workers.threads" in srv.log()
    assert not (tmp_path / "jobs.db").exists()  # nothing started
