"""Schedules in the real server: a real tick's job survives SIGKILL restarts exactly once.

The schedule is yearly (`0 0 1 1 *`) and its stored next tick is set to this year's
1 January while the server is down, as if the server had been down across that tick:
each start then reaches it, which the test can time without waiting for a clock."""

from __future__ import annotations

import calendar
import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e import Server, start_server
from tests.helpers import finished, wait_until

pytestmark = pytest.mark.e2e
ADD = "jobserver.examples.add"
SCHEDULES = [
    {"name": "yearly", "task": ADD, "cron": "0 0 1 1 *", "args": {"a": 20, "b": 6}},
    {"name": "quiet", "task": ADD, "cron": "0 0 1 1 *", "args": {"a": 1, "b": 1}, "catch_up": False},
]


def owe_this_years_tick(db: Path) -> str:
    """Set every schedule's next tick back to 1 January (the server is down); its key time."""
    year = time.gmtime().tm_year
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE schedules SET next_run_at = ?", (float(calendar.timegm((year, 1, 1, 0, 0, 0))),))
    return f"{year}-01-01T00:00:00.000Z"


def scheduled(c: httpx.Client) -> list[dict[str, Any]]:
    jobs = c.get("/jobs", params={"limit": 500}).json()["jobs"]
    return [j for j in jobs if j["schedule"] is not None]


def test_a_missed_tick_runs_once_across_sigkill_restarts(tmp_path: Path) -> None:
    srv: Server = start_server(tmp_path, {"schedules": SCHEDULES})
    db = tmp_path / "jobs.db"
    c = srv.client()
    assert {s["name"] for s in c.get("/schedules").json()["schedules"]} == {"yearly", "quiet"}
    assert scheduled(c) == []
    for _ in range(2):  # kill as soon as it answers: the start's tick pass may or may not have committed
        srv.kill()
        key_time = owe_this_years_tick(db)
        srv.restart()
    wait_until(lambda: scheduled(c), message="the caught-up tick's job")
    srv.kill()
    srv.restart()
    jobs = scheduled(c)
    assert [j["idempotency_key"] for j in jobs] == [f"schedule:yearly:{key_time}"]
    assert finished(c, jobs[0]["id"])["result"] == 26
    # the last start found the tick owed again (a kill came after its job): its tick pass takes
    # it once the server answers, and the job's key holds
    yearly = wait_until(
        lambda: (
            (y := {s["name"]: s for s in c.get("/schedules").json()["schedules"]}["yearly"])["next_run_at"]
            > key_time
            and y
        ),
        message="the tick to be taken",
    )
    assert yearly["last_job_id"] == jobs[0]["id"]
    # the same tick owed again (a row moved back): its key still holds, no second job
    srv.kill()
    owe_this_years_tick(db)
    srv.restart()
    wait_until(
        lambda: all(s["next_run_at"] > key_time for s in c.get("/schedules").json()["schedules"]),
        message="the tick to be taken again",
    )
    assert [j["id"] for j in scheduled(c)] == [jobs[0]["id"]]


def test_an_on_time_tick_runs_once_with_restarts_before_and_after_it(tmp_path: Path) -> None:
    """A tick reached by the running server on time (its stored next tick set a few seconds
    ahead while the server is down), with SIGKILL restarts before and after it."""
    srv: Server = start_server(tmp_path, {"schedules": SCHEDULES[:1]})
    c = srv.client()
    srv.kill()
    at = int(time.time()) + 4
    with sqlite3.connect(tmp_path / "jobs.db") as conn:
        conn.execute("UPDATE schedules SET next_run_at = ?", (float(at),))
    srv.restart()
    srv.kill()  # a restart before the tick keeps it
    srv.restart()
    tick = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(at))
    key = f"schedule:yearly:{tick}"
    job = wait_until(
        lambda: next((j for j in scheduled(c) if j["idempotency_key"] == key), None),
        timeout=30,
        interval=0.1,
        message=f"the job of the tick at {tick}",
    )
    assert job["created_at"] >= tick  # taken when it came, not caught up early
    srv.kill()  # and one right after it
    srv.restart()
    assert [j["id"] for j in scheduled(c)] == [job["id"]]
    assert finished(c, job["id"])["result"] == 26
