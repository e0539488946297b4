"""Schedules, pauses and counters with two server processes sharing one real PostgreSQL database."""

from __future__ import annotations

import calendar
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from tests.e2e import Server, all_ready, start_server
from tests.helpers import finished, submit, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]
ADD = "jobserver.examples.add"
NOOP = "jobserver.examples.noop"


def node(tmp_path: Path, name: str, url: str, wait: bool = True) -> Server:
    d = tmp_path / name
    d.mkdir()
    return start_server(d, config={"database": {"url": url}, "workers": {"poll_interval": 0.2}}, wait=wait)


def schedule_keys(c: httpx.Client) -> list[str]:
    jobs: list[dict[str, Any]] = c.get("/jobs", params={"limit": 500}).json()["jobs"]
    return [str(j["idempotency_key"]) for j in jobs if j["schedule"] is not None]


def test_each_tick_is_one_job_while_two_nodes_race_for_it(tmp_path: Path, pg_url: str) -> None:
    a, b = node(tmp_path, "a", pg_url, wait=False), node(tmp_path, "b", pg_url, wait=False)
    all_ready(a, b)
    ca, cb = a.client(), b.client()
    names = [f"s{i}" for i in range(20)]
    for name in names:
        r = ca.put(f"/schedules/{name}", json={"task": ADD, "cron": "0 0 1 1 *", "args": {"a": 1, "b": 1}})
        assert r.status_code == 201
    year = time.gmtime().tm_year  # the yearly tick that has passed: a missed tick, caught up
    tick = calendar.timegm((year, 1, 1, 0, 0, 0))
    key_time = f"{year}-01-01T00:00:00.000Z"
    wanted = {f"schedule:{name}:{key_time}" for name in names}

    def all_moved_on() -> bool:
        return all(s["next_run_at"] > key_time for s in cb.get("/schedules").json()["schedules"])

    for _ in range(2):  # the second round finds each tick's job already there: nothing new
        with psycopg.connect(pg_url, autocommit=True) as conn:  # every schedule owes that tick now
            conn.execute("UPDATE schedules SET next_run_at = %s", (float(tick),))
        wait_until(all_moved_on, 30, message="both nodes to take every tick")
        keys = schedule_keys(ca)
        assert sorted(keys) == sorted(wanted)
    by_id = {s["name"]: s["last_job_id"] for s in ca.get("/schedules").json()["schedules"]}
    for job_id in by_id.values():
        assert finished(cb, job_id)["status"] == "completed"


def test_a_pause_on_one_node_holds_on_the_other(tmp_path: Path, pg_url: str) -> None:
    a, b = node(tmp_path, "a", pg_url, wait=False), node(tmp_path, "b", pg_url, wait=False)
    all_ready(a, b)
    ca, cb = a.client(), b.client()
    assert ca.post(f"/tasks/{ADD}/pause").json()["paused"] is True
    assert {t["name"]: t["paused"] for t in cb.get("/tasks").json()["tasks"]}[ADD] is True
    held = [submit(node_client, ADD, {"a": i, "b": 0}) for i, node_client in enumerate([ca, cb] * 3)]
    for c in (ca, cb):
        for _ in range(3):
            assert finished(c, submit(c, NOOP))["status"] == "completed"
    assert {cb.get(f"/jobs/{j}").json()["status"] for j in held} == {"pending"}
    with psycopg.connect(pg_url, autocommit=True) as listening:
        listening.execute("LISTEN jobserver")
        cb.post(f"/tasks/{ADD}/resume")
        # the resume tells every node its jobs are due, not each node's next poll
        notes = [n.payload.partition(" ")[2].split(",") for n in listening.notifies(timeout=5, stop_after=1)]
    assert notes and "d" in notes[0]
    assert [finished(ca, j)["result"] for j in held] == [0, 1, 2, 3, 4, 5]


def test_stats_count_the_jobs_of_both_nodes(tmp_path: Path, pg_url: str) -> None:
    a, b = node(tmp_path, "a", pg_url, wait=False), node(tmp_path, "b", pg_url, wait=False)
    all_ready(a, b)
    ca, cb = a.client(), b.client()
    ids = [submit(c, ADD, {"a": 1, "b": 1}) for c in (ca, cb) for _ in range(15)]
    for job_id in ids:
        finished(ca, job_id)
    submit(cb, NOOP, delay=3600)
    stats = ca.get("/stats").json()
    assert stats["counts"]["completed"] == 30 and stats["counts"]["pending"] == 1
    assert stats["last_hour"]["completed"] == 30

    def compacted() -> bool:  # the maintenance pass folds the delta rows on one of the nodes
        with psycopg.connect(pg_url, autocommit=True) as conn:
            row = conn.execute("SELECT COUNT(*) FROM job_counts").fetchone()
        return row is not None and row[0] <= 3

    wait_until(compacted, 30, message="the counters to be compacted")
    assert cb.get("/stats").json()["counts"] == stats["counts"]
