"""Several server processes sharing one real PostgreSQL database."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from tests.e2e import Server, all_ready, start_server
from tests.helpers import has_line, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]


def node(tmp_path: Path, name: str, url: str, *, wait: bool = True, **workers: object) -> Server:
    d = tmp_path / name
    d.mkdir()
    config = {"database": {"url": url}, "workers": {"lease_seconds": 2, **workers}}
    return start_server(d, config=config, wait=wait)


def submit(c: httpx.Client, task: str, args: dict[str, Any]) -> str:
    r = c.post("/jobs", json={"task": task, "args": args})
    assert r.status_code == 202, r.text
    return str(r.json()["id"])


def test_two_nodes_share_the_work(tmp_path: Path, pg_url: str) -> None:
    a, b = node(tmp_path, "a", pg_url, wait=False), node(tmp_path, "b", pg_url, wait=False)
    all_ready(a, b)
    ca, cb = a.client(), b.client()
    marks = tmp_path / "marks"
    ids = [
        submit(ca if i % 2 else cb, "tests.e2e_tasks.record", {"path": str(marks), "value": f"v{i}"})
        for i in range(200)
    ]
    for job_id in ids:
        assert ca.get(f"/jobs/{job_id}", params={"wait": 30}).json()["status"] == "completed"
    lines = marks.read_text().split()
    assert sorted(lines) == sorted(f"v{i}" for i in range(200))  # each ran exactly once
    assert cb.get(f"/jobs/{ids[0]}").json()["result"] == "v0"  # every node reads every job


def test_node_killed_mid_job_is_recovered_by_the_other(tmp_path: Path, pg_url: str) -> None:
    a = node(tmp_path, "a", pg_url)
    ca = a.client()
    started, release = tmp_path / "started", tmp_path / "release"
    job_id = submit(
        ca, "tests.e2e_tasks.block_until_file", {"started": str(started), "release": str(release)}
    )
    wait_until(lambda: has_line(started), message="the job to start on node a")
    b = node(tmp_path, "b", pg_url)
    a.kill()
    release.touch()
    job = b.client().get(f"/jobs/{job_id}", params={"wait": 30}).json()
    assert job["status"] == "completed" and job["attempts"] == 2


def test_cancel_on_one_node_stops_the_attempt_on_another(tmp_path: Path, pg_url: str) -> None:
    a = node(tmp_path, "a", pg_url)
    started, release = tmp_path / "started", tmp_path / "release"
    job_id = submit(
        a.client(), "tests.e2e_tasks.block_until_file", {"started": str(started), "release": str(release)}
    )
    wait_until(lambda: has_line(started))
    b = node(tmp_path, "b", pg_url, threads=1)
    r = b.client().post(f"/jobs/{job_id}/cancel")
    assert r.status_code == 202
    job = b.client().get(f"/jobs/{job_id}", params={"wait": 20}).json()
    assert job["status"] == "cancelled"


def test_waits_and_streams_see_changes_made_on_another_node(tmp_path: Path, pg_url: str) -> None:
    a, b = node(tmp_path, "a", pg_url, wait=False), node(tmp_path, "b", pg_url, threads=1, wait=False)
    all_ready(a, b)
    started, release = tmp_path / "started", tmp_path / "release"
    job_id = submit(
        a.client(), "tests.e2e_tasks.block_until_file", {"started": str(started), "release": str(release)}
    )
    wait_until(lambda: has_line(started))
    seen: list[str] = []

    def watch() -> None:
        with httpx.stream("GET", f"{b.url}/jobs/{job_id}/events", timeout=30) as r:
            for line in r.iter_lines():
                if line.startswith("data: "):
                    seen.append(line)

    t = threading.Thread(target=watch)
    t.start()
    t0 = time.monotonic()
    release.touch()
    job = b.client().get(f"/jobs/{job_id}", params={"wait": 30}).json()
    assert job["status"] == "completed"
    assert time.monotonic() - t0 < 10  # a re-read every poll interval, not the 30 s bound
    t.join(timeout=10)
    assert not t.is_alive() and '"completed"' in seen[-1]


def test_workflows_across_nodes_signal_sleep_and_gather(tmp_path: Path, pg_url: str) -> None:
    # A lease long enough not to lapse on a loaded machine: a rescued attempt would count,
    # and this test asserts that a resume after a signal, a sleep or a gather does not.
    a, b = (
        node(tmp_path, "a", pg_url, lease_seconds=30, wait=False),
        node(tmp_path, "b", pg_url, lease_seconds=30, wait=False),
    )
    all_ready(a, b)
    ca, cb = a.client(), b.client()
    marks = tmp_path / "marks"
    waiting = submit(ca, "tests.e2e_tasks.approval", {"path": str(marks)})
    wait_until(lambda: cb.get(f"/jobs/{waiting}").json()["status"] == "waiting")
    assert cb.post(f"/jobs/{waiting}/signals/approve", json={"via": "b"}).status_code == 202
    assert ca.post(f"/jobs/{waiting}/signals/approve", json={"via": "b"}).status_code == 200
    assert ca.get(f"/jobs/{waiting}", params={"wait": 30}).json()["result"]["answer"] == {"via": "b"}

    sleeper = submit(cb, "tests.e2e_tasks.nap", {"path": str(tmp_path / "nap"), "seconds": 0.5})
    fan = submit(ca, "tests.e2e_tasks.fan_out", {"path": str(tmp_path / "kids"), "n": 40})
    job = cb.get(f"/jobs/{fan}", params={"wait": 30}).json()
    assert job["status"] == "completed" and job["attempts"] == 1, job
    assert job["result"]["results"] == [i * i for i in range(40)]
    assert sorted((tmp_path / "kids").read_text().split("\n")[:-1]) == sorted(f"child {i}" for i in range(40))
    assert ca.get(f"/jobs/{sleeper}", params={"wait": 30}).json()["status"] == "completed"
    assert (tmp_path / "nap").read_text().split() == ["step", "1", "step", "2"]


def not_there_yet(pg_url: str) -> tuple[str, str]:
    """Drop the test's database, as if its server were still starting: (server URL, name)."""
    server, name = pg_url.rsplit("/", 1)
    with psycopg.connect(f"{server}/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE "{name}"')
    return server, name


def test_a_start_waits_for_postgresql_to_answer(tmp_path: Path, pg_url: str) -> None:
    server, name = not_there_yet(pg_url)
    srv = start_server(tmp_path, {"database": {"url": pg_url}}, wait=False)
    wait_until(lambda: "cannot connect to PostgreSQL yet" in srv.log(), 30, message="the start to wait")
    assert srv.proc is not None and srv.proc.poll() is None
    with psycopg.connect(f"{server}/postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    srv.wait_ready()
    c = srv.client()
    job_id = submit(c, "jobserver.examples.add", {"a": 1, "b": 2})
    assert c.get(f"/jobs/{job_id}", params={"wait": 30}).json()["result"] == 3
    assert srv.log().count("cannot connect to PostgreSQL yet") == 1 and "PostgreSQL answers" in srv.log()


def test_a_start_gives_up_on_postgresql_after_its_wait(tmp_path: Path, pg_url: str) -> None:
    not_there_yet(pg_url)
    srv = start_server(tmp_path, {"database": {"url": pg_url, "startup_wait": "1s"}}, wait=False)
    assert srv.wait_exit() == 1
    refusal = [line for line in srv.log().splitlines() if line.startswith("jobserver:")]
    assert len(refusal) == 1 and refusal[0].startswith(
        "jobserver: cannot start: cannot connect to PostgreSQL"
    )
    assert "Traceback" not in srv.log()


def test_sigterm_while_a_start_waits_for_postgresql_stops_it_at_once_with_a_log_line(
    tmp_path: Path, pg_url: str
) -> None:
    not_there_yet(pg_url)
    srv = start_server(tmp_path, {"database": {"url": pg_url, "startup_wait": "60s"}}, wait=False)
    wait_until(lambda: "cannot connect to PostgreSQL yet" in srv.log(), 30, message="the start to wait")
    started = time.monotonic()
    srv.terminate()
    assert srv.wait_exit(20) == 0  # not killed by the signal (143), nor after the whole wait
    assert time.monotonic() - started < 10
    assert "stopped while waiting for PostgreSQL: not started" in srv.log()
    assert "Traceback" not in srv.log()


def test_a_url_postgresql_cannot_use_refuses_the_start_at_once(tmp_path: Path, pg_url: str) -> None:
    """An option's bad value is no server still starting: no wait mends it (exit 2, as a config error)."""
    srv = start_server(tmp_path, {"database": {"url": f"{pg_url}?sslmode=bogus"}}, wait=False)
    assert srv.wait_exit(10) == 2
    refusal = [line for line in srv.log().splitlines() if line.startswith("jobserver:")]
    assert refusal == [
        'jobserver: config database.url: PostgreSQL cannot use it: connection is bad: invalid sslmode value: "bogus"'
    ]
    assert "cannot connect to PostgreSQL yet" not in srv.log()


def test_a_node_recovers_when_postgresql_ends_its_connections(tmp_path: Path, pg_url: str) -> None:
    """A PostgreSQL restart, a failover or an idle timeout ends every connection: the node's
    reads, readiness and schedules go on with new ones, without a restart of the node."""
    srv = node(tmp_path, "a", pg_url, poll_interval=0.2)
    c = srv.client()
    assert (
        c.put("/schedules/yearly", json={"task": "jobserver.examples.noop", "cron": "0 0 1 1 *"}).status_code
        == 201
    )
    reads = ["/jobs", "/stats", "/schedules", "/limits", "/tasks", "/readyz"]
    for _ in range(3):  # several reader threads hold connections
        assert [c.get(path).status_code for path in reads] == [200] * len(reads)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        ended = conn.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchone()
        assert ended is not None and ended[0] >= 2
        # a read on a connection the server ended is tried once more on a new one
        for _ in range(3):
            assert [c.get(path).status_code for path in reads] == [200] * len(reads)
        assert submit(c, "jobserver.examples.add", {"a": 1, "b": 2})  # writes too
        # the maintenance thread's connection was ended as well: the schedule still fires
        conn.execute("UPDATE schedules SET next_run_at = %s WHERE name = 'yearly'", (time.time() - 1,))
    fired = wait_until(
        lambda: [j for j in c.get("/jobs").json()["jobs"] if j["schedule"] == "yearly"], timeout=30
    )
    assert len(fired) == 1
