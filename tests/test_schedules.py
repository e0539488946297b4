"""Schedules in-process, on real SQLite with the manual clock: cron in a time zone (DST
pinned), one job per tick, catch-up, the config's schedules, and the /schedules routes."""

from __future__ import annotations

import logging
import sqlite3
import threading
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from jobserver import Concurrency, JobContext, task
from jobserver.core.clock import ManualClock
from jobserver.core.config import load_settings
from jobserver.core.errors import ConfigError
from jobserver.core.schedules import ScheduleBody, check_configured, latest_tick, next_tick
from jobserver.core.tasks import Registry, build_taskdef
from tests.helpers import FINISHED, wait_until
from tests.inproc import RunningApp, driven_parts, running_app, settings_for

ADD = "jobserver.examples.add"
BERLIN = ZoneInfo("Europe/Berlin")


def at(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0, *, tz: tzinfo = UTC
) -> float:
    return datetime(year, month, day, hour, minute, second, tzinfo=tz).timestamp()


def utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def jobs_of(app: RunningApp, name: str) -> list[dict[str, Any]]:
    jobs: list[dict[str, Any]] = app.client.get("/jobs", params={"limit": 500}).json()["jobs"]
    return [j for j in jobs if j["schedule"] == name]


def put(app: RunningApp, name: str, **body: Any) -> Any:
    return app.client.put(f"/schedules/{name}", json={"task": ADD, "args": {"a": 1, "b": 2}, **body})


def tick(app: RunningApp) -> int:
    """One scheduler pass; how many jobs it submitted. (The maintenance thread runs passes too
    once the manual clock moves, so tests count jobs rather than trust one pass's number.)"""
    return app.runtime.parts.scheduler.tick_once()


# ------------------------------------------------------------------ cron
def test_dst_spring_forward_runs_a_skipped_time_once_right_after_the_jump() -> None:
    # Europe/Berlin, 2026-03-29: 02:00 CET jumps to 03:00 CEST; 02:30 does not exist that day
    first = next_tick("30 2 * * *", "Europe/Berlin", at(2026, 3, 28, 12, tz=BERLIN))
    assert utc(first) == datetime(2026, 3, 29, 1, 0, tzinfo=UTC)  # 03:00 CEST, right after the jump
    second = next_tick("30 2 * * *", "Europe/Berlin", first)
    assert utc(second) == datetime(2026, 3, 30, 0, 30, tzinfo=UTC)  # 02:30 CEST again the next day
    # an hourly cron just has no 02:00 that day: 01:00 CET is followed by 03:00 CEST
    hourly = next_tick("0 * * * *", "Europe/Berlin", at(2026, 3, 29, 0, 0, 30, tz=BERLIN) + 3600)
    assert utc(hourly) == datetime(2026, 3, 29, 1, 0, tzinfo=UTC)


def test_dst_fall_back_runs_a_repeated_time_once() -> None:
    # Europe/Berlin, 2026-10-25: 03:00 CEST falls back to 02:00 CET; 02:30 happens twice
    first = next_tick("30 2 * * *", "Europe/Berlin", at(2026, 10, 24, 12, tz=BERLIN))
    assert utc(first) == datetime(2026, 10, 25, 0, 30, tzinfo=UTC)  # the first 02:30 (CEST)
    second = next_tick("30 2 * * *", "Europe/Berlin", first)
    assert utc(second) == datetime(2026, 10, 26, 1, 30, tzinfo=UTC)  # not the second 02:30 (CET)


def test_a_start_in_the_repeated_hours_second_pass_is_read_as_the_instant_it_is() -> None:
    # 2026-10-25T01:10Z is 02:10 CET, the second pass of Berlin's 02:00-03:00; 02:30 CEST (00:30Z)
    # already passed, 02:30 CET is the repeat that does not run again
    second_pass = datetime(2026, 10, 25, 1, 10, tzinfo=UTC).timestamp()
    assert utc(next_tick("30 2 * * *", "Europe/Berlin", second_pass)) == datetime(
        2026, 10, 26, 1, 30, tzinfo=UTC
    )
    assert utc(latest_tick("30 2 * * *", "Europe/Berlin", second_pass)) == datetime(
        2026, 10, 25, 0, 30, tzinfo=UTC
    )
    # every minute: the next one, and the last one, are a minute apart around the instant
    assert next_tick("* * * * *", "Europe/Berlin", second_pass) == second_pass + 60
    assert latest_tick("* * * * *", "Europe/Berlin", second_pass) == second_pass


def test_latest_tick_is_at_or_before() -> None:
    three = at(2026, 1, 1, 3)
    assert latest_tick("0 3 * * *", "UTC", three) == three
    assert latest_tick("0 3 * * *", "UTC", three - 1) == three - 86400


# -------------------------------------------------------------- ticking
def test_each_tick_submits_exactly_one_job(tmp_path: Path) -> None:
    clock = ManualClock(at(2026, 1, 1, 2, 59, 30))
    with running_app(tmp_path, clock=clock) as app:
        assert put(app, "nightly", cron="0 3 * * *").status_code == 201
        assert tick(app) == 0  # not yet
        clock.advance(30)
        tick(app)
        assert tick(app) == 0  # the same tick again: nothing
        [job] = jobs_of(app, "nightly")
        assert job["idempotency_key"] == "schedule:nightly:2026-01-01T03:00:00.000Z"
        assert job["args"] == {"a": 1, "b": 2}
        done = app.client.get(f"/jobs/{job['id']}", params={"wait": 20}).json()
        assert done["status"] == "completed" and done["result"] == 3
        listed = app.client.get("/schedules/nightly").json()
        assert listed["last_job_id"] == job["id"]
        assert listed["last_run_at"] == "2026-01-01T03:00:00.000Z"
        assert listed["next_run_at"] == "2026-01-02T03:00:00.000Z"
        clock.advance(86400)
        tick(app)
        assert len(jobs_of(app, "nightly")) == 2


def test_ticks_racing_from_many_threads_submit_once(tmp_path: Path) -> None:
    clock = ManualClock(at(2026, 1, 1, 2, 59, 59))
    with running_app(tmp_path, clock=clock) as app:
        for i in range(5):
            assert put(app, f"s{i}", cron="0 3 * * *").status_code == 201
        clock.advance(1)
        scheduler = app.runtime.parts.scheduler
        counts: list[int] = []
        threads = [threading.Thread(target=lambda: counts.append(scheduler.tick_once())) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert sum(counts) <= 5  # the maintenance thread may have taken some ticks
        for i in range(5):
            assert len(jobs_of(app, f"s{i}")) == 1


def test_a_restart_does_not_submit_a_tick_again(tmp_path: Path) -> None:
    clock = ManualClock(at(2026, 1, 1, 3, 0, 0))
    config = {"schedules": [{"name": "nightly", "task": ADD, "cron": "0 3 * * *", "args": {"a": 1, "b": 1}}]}
    with running_app(tmp_path, config, clock=clock) as app:  # created at 03:00: its first tick is tomorrow
        clock.advance(86400)
        tick(app)
        assert len(jobs_of(app, "nightly")) == 1
    with running_app(tmp_path, config, clock=clock) as app:  # the start's own pass already ran
        assert tick(app) == 0
        assert len(jobs_of(app, "nightly")) == 1


def test_catch_up_runs_only_the_latest_missed_tick(tmp_path: Path) -> None:
    clock = ManualClock(at(2026, 1, 1, 12))
    schedules = [
        {"name": "hourly", "task": ADD, "cron": "0 * * * *", "args": {"a": 1, "b": 1}},
        {"name": "quiet", "task": ADD, "cron": "0 * * * *", "args": {"a": 1, "b": 1}, "catch_up": False},
    ]
    with running_app(tmp_path, {"schedules": schedules}, clock=clock) as app:
        assert jobs_of(app, "hourly") == []
    clock.advance(3 * 86400 + 1800)  # no server for three days and a half hour: 72 ticks missed
    with running_app(tmp_path, {"schedules": schedules}, clock=clock) as app:
        # the start's first maintenance pass caught up; a later pass finds nothing due
        wait_until(lambda: jobs_of(app, "hourly"), message="the caught-up tick")
        assert tick(app) == 0
        [job] = jobs_of(app, "hourly")
        assert job["idempotency_key"] == "schedule:hourly:2026-01-04T12:00:00.000Z"
        assert jobs_of(app, "quiet") == []  # catch_up = false: skipped
        quiet = app.client.get("/schedules/quiet").json()
        assert quiet["next_run_at"] == "2026-01-04T13:00:00.000Z" and quiet["last_job_id"] is None
        clock.advance(1800)  # on time again: both run
        tick(app)
        assert len(jobs_of(app, "hourly")) == 2 and len(jobs_of(app, "quiet")) == 1


def test_a_tick_reached_within_the_grace_is_on_time_even_without_catch_up(tmp_path: Path) -> None:
    clock = ManualClock(at(2026, 1, 1, 2, 59))
    with running_app(tmp_path, clock=clock) as app:
        put(app, "late", cron="0 3 * * *", catch_up=False)
        clock.advance(60 + 30)  # the pass came 30 s late (a busy server), not a missed tick
        tick(app)
        assert len(jobs_of(app, "late")) == 1


def test_paused_schedule_does_not_tick_and_resumes_from_the_next_tick(tmp_path: Path) -> None:
    clock = ManualClock(at(2026, 1, 1, 2, 0))
    with running_app(tmp_path, clock=clock) as app:
        put(app, "nightly", cron="0 3 * * *")
        r = app.client.post("/schedules/nightly/pause")
        assert r.status_code == 200 and r.json()["paused"] is True and r.json()["next_run_at"] is None
        clock.advance(2 * 86400)
        tick(app)
        assert jobs_of(app, "nightly") == []
        r = app.client.post("/schedules/nightly/resume")
        assert r.status_code == 200 and r.json()["paused"] is False
        assert r.json()["next_run_at"] == "2026-01-03T03:00:00.000Z"  # paused ticks are not made up
        tick(app)
        assert jobs_of(app, "nightly") == []
        assert app.client.post("/schedules/nope/pause").status_code == 404


# --------------------------------------------------------------- routes
def test_put_creates_then_replaces_and_delete_removes(tmp_path: Path) -> None:
    clock = ManualClock(at(2026, 1, 1, 0, 0))
    with running_app(tmp_path, clock=clock) as app:
        r = put(app, "digest", cron="0 3 * * *", timezone="Europe/Berlin")
        assert r.status_code == 201
        assert r.json() == {
            "name": "digest",
            "task": ADD,
            "cron": "0 3 * * *",
            "timezone": "Europe/Berlin",
            "args": {"a": 1, "b": 2},
            "catch_up": True,
            "paused": False,
            "next_run_at": "2026-01-01T02:00:00.000Z",  # 03:00 in Berlin (CET)
            "last_run_at": None,
            "last_job_id": None,
        }
        r = app.client.put(
            "/schedules/digest", json={"task": ADD, "cron": "*/5 * * * *", "args": {"a": 2, "b": 2}}
        )
        assert r.status_code == 200
        assert r.json()["timezone"] == "UTC"  # left out: back to the default
        assert r.json()["next_run_at"] == "2026-01-01T00:05:00.000Z"
        assert [s["name"] for s in app.client.get("/schedules").json()["schedules"]] == ["digest"]
        assert app.client.delete("/schedules/digest").status_code == 204
        assert app.client.delete("/schedules/digest").status_code == 404
        assert app.client.get("/schedules/digest").status_code == 404
        assert app.client.get("/schedules").json() == {"schedules": []}


@pytest.mark.parametrize(
    ("body", "loc", "code"),
    [
        ({"task": ADD, "cron": "0 3 * *"}, ["body", "cron"], "validation-error"),
        ({"task": ADD, "cron": "0 3 * * * *"}, ["body", "cron"], "validation-error"),
        ({"task": ADD, "cron": "61 3 * * *"}, ["body", "cron"], "validation-error"),
        (
            {"task": ADD, "cron": "0 3 * * *", "timezone": "Mars/Olympus"},
            ["body", "timezone"],
            "validation-error",
        ),
        (
            {"task": ADD, "cron": "0 3 * * *", "timezone": "localtime"},  # the host's, not a zone
            ["body", "timezone"],
            "validation-error",
        ),
        (
            {"task": ADD, "cron": "0 3 * * *", "timezone": "Europe"},  # a folder of the zone data
            ["body", "timezone"],
            "validation-error",
        ),
        ({"task": "no.such.task", "cron": "0 3 * * *"}, ["body", "task"], "unknown-task"),
        (
            {"task": ADD, "cron": "0 3 * * *", "args": {"a": "x", "b": 1}},
            ["body", "args", "a"],
            "validation-error",
        ),
        ({"task": ADD, "cron": "0 3 * * *", "args": {"a": 1}}, ["body", "args", "b"], "validation-error"),
        ({"task": ADD, "cron": "0 3 * * *", "every": 5}, ["body", "every"], "validation-error"),
        # JSON's booleans only, as everywhere in the API: "no" is not false
        ({"task": ADD, "cron": "0 3 * * *", "catch_up": "no"}, ["body", "catch_up"], "validation-error"),
        ({"task": ADD, "cron": "0 3 * * *", "catch_up": 0}, ["body", "catch_up"], "validation-error"),
    ],
)
def test_bad_schedule_is_422_naming_the_field_and_changes_nothing(
    tmp_path: Path, body: dict[str, Any], loc: list[str], code: str
) -> None:
    with running_app(tmp_path) as app:
        r = app.client.put("/schedules/bad", json=body)
        assert r.status_code == 422, r.text
        problem = r.json()
        assert problem["code"] == code
        assert problem["errors"][0]["loc"] == loc
        assert app.client.get("/schedules").json() == {"schedules": []}


def test_bad_schedule_bodies_and_names(tmp_path: Path) -> None:
    with running_app(tmp_path) as app:
        c = app.client
        assert c.put("/schedules/bad name!", json={"task": ADD, "cron": "0 3 * * *"}).status_code == 422
        r = c.put("/schedules/x", content=b"{not json", headers={"content-type": "application/json"})
        assert r.status_code == 400
        assert (
            c.put("/schedules/x", content=b"task=a", headers={"content-type": "text/plain"}).status_code
            == 415
        )
        assert c.get("/schedules").json() == {"schedules": []}


@pytest.mark.parametrize(
    "task, args",
    [
        ("tests.e2e_tasks.spends_tokens", {"path": "p", "tokens": 100}),  # a cost over its rate's limit
        ("tests.e2e_tasks.record", {"path": "x" * 70_000, "value": "v"}),  # over server.max_args_bytes
    ],
)
def test_a_schedule_is_refused_what_a_submit_of_its_job_would_be(
    tmp_path: Path, task: str, args: dict[str, Any]
) -> None:
    with running_app(tmp_path) as app:
        c = app.client
        submitted = c.post("/jobs", json={"task": task, "args": args})
        assert submitted.status_code == 422, submitted.text
        r = c.put("/schedules/over", json={"task": task, "cron": "* * * * *", "args": args})
        assert r.status_code == 422, r.text
        assert r.json()["errors"][0]["type"] == submitted.json()["errors"][0]["type"]
        assert c.get("/schedules").json() == {"schedules": []}


# --------------------------------------------------------------- config
def test_config_schedules_are_created_updated_and_removed_at_start(tmp_path: Path) -> None:
    clock = ManualClock(at(2026, 1, 1, 0, 0))
    first = [
        {"name": "a", "task": ADD, "cron": "0 3 * * *", "args": {"a": 1, "b": 1}},
        {"name": "b", "task": ADD, "cron": "0 4 * * *", "args": {"a": 1, "b": 1}},
    ]
    with running_app(tmp_path, {"schedules": first}, clock=clock) as app:
        assert [s["name"] for s in app.client.get("/schedules").json()["schedules"]] == ["a", "b"]
        put(app, "made-over-http", cron="0 5 * * *")
    second = [{"name": "a", "task": ADD, "cron": "0 3 * * *", "args": {"a": 5, "b": 5}}]
    with running_app(tmp_path, {"schedules": second}, clock=clock) as app:
        listed = {s["name"]: s for s in app.client.get("/schedules").json()["schedules"]}
        assert set(listed) == {"a", "made-over-http"}  # b left the config; the HTTP one stays
        assert listed["a"]["args"] == {"a": 5, "b": 5}


def test_bad_config_schedule_is_a_config_error_naming_it(tmp_path: Path) -> None:
    def load(text: str) -> Any:
        path = tmp_path / "config.toml"
        path.write_text(text)
        return load_settings(path, environ={}, cwd=tmp_path)

    head = '[[schedules]]\nname = "nightly"\ntask = "jobserver.examples.add"\n'
    with pytest.raises(ConfigError, match=r"schedules\.nightly\.cron"):
        load(head + 'cron = "0 3 * *"\n')
    with pytest.raises(ConfigError, match=r"schedules\.nightly\.timezone: .*unknown time zone"):
        load(head + 'cron = "0 3 * * *"\ntimezone = "Nowhere/Land"\n')
    with pytest.raises(ConfigError, match=r"schedules\.nightly\.timezone: .*unknown time zone 'America'"):
        load(head + 'cron = "0 3 * * *"\ntimezone = "America"\n')  # a folder of the zone data
    with pytest.raises(ConfigError, match=r"schedules\.nightly: two schedules"):
        load(head + 'cron = "0 3 * * *"\n' + head + 'cron = "0 4 * * *"\n')
    registry = Registry.from_modules(["jobserver.examples"])
    settings = load(head + 'cron = "0 3 * * *"\nargs = {a = "x", b = 2}\n')
    with pytest.raises(ConfigError, match=r"schedules\.nightly\.args: a: Input should be a valid integer"):
        check_configured(settings.schedules, registry, settings.server.max_args_bytes)
    registry = Registry.from_modules(["jobserver.examples", "tests.e2e_tasks"])
    costly = head.replace("jobserver.examples.add", "tests.e2e_tasks.spends_tokens")
    settings = load(costly + 'cron = "0 3 * * *"\nargs = {path = "p", tokens = 100}\n')
    with pytest.raises(
        ConfigError,
        match=r"schedules\.nightly\.args: ValueError: the cost 100 of 'tokens' is more than its limit",
    ):
        check_configured(settings.schedules, registry, settings.server.max_args_bytes)
    settings = load(head.replace("examples.add", "examples.nope") + 'cron = "0 3 * * *"\n')
    with pytest.raises(ConfigError, match=r"schedules\.nightly\.task"):
        check_configured(settings.schedules, registry, settings.server.max_args_bytes)


def test_schedule_jobs_finish_like_any_other(tmp_path: Path) -> None:
    clock = ManualClock(at(2026, 1, 1, 2, 59, 59))
    with running_app(tmp_path, clock=clock) as app:
        put(app, "n", cron="0 3 * * *")
        clock.advance(1)
        tick(app)
        [job] = jobs_of(app, "n")
        done = app.client.get(f"/jobs/{job['id']}", params={"wait": 20}).json()
        assert done["status"] in FINISHED and done["schedule"] == "n"
        plain = app.client.post("/jobs", json={"task": ADD, "args": {"a": 1, "b": 1}}).json()
        assert plain["schedule"] is None


# ------------------------------------------------- several nodes, rolling deploy
@task(name="deploy.report", priority=7, max_attempts=4, limits=[Concurrency("reports", 1)])
def report(ctx: JobContext) -> str:
    """A task that a newer deploy adds: options and a limit its schedule's jobs must carry."""
    return "reported"


@pytest.mark.postgres
def test_a_node_that_does_not_know_a_schedules_task_leaves_its_ticks_to_one_that_does(
    tmp_path: Path, pg_url: str
) -> None:
    """A rolling deploy: the new node adds a task and its schedule, a node still on the old code
    is up beside it. The tick's job gets the task's options and limits, whichever node is first."""
    clock = ManualClock(at(2026, 1, 1, 2, 59, 30))
    settings = settings_for(tmp_path, {"database": {"url": pg_url}})
    with (
        driven_parts(settings, clock, Registry([build_taskdef(report)])) as new,
        driven_parts(settings, clock, Registry([])) as old,
    ):
        new.scheduler.put("nightly", ScheduleBody(task="deploy.report", cron="0 3 * * *")).result(10)
        clock.advance(30)
        assert old.scheduler.tick_once() == 0  # not its task: it submits nothing
        assert old.scheduler.tick_once() == 0
        assert new.scheduler.tick_once() == 1
        (job,) = new.store.list_jobs(None, "deploy.report", 10, None)[0]
        assert (job.priority, job.max_attempts) == (7, 4)
        assert job.limits is not None and "reports" in job.limits
        # a day on which only old nodes run: the tick is missed; a new node catches it up at start
        clock.advance(86400 + 120)
        assert old.scheduler.tick_once() == 0
        assert new.scheduler.tick_once() == 1
        keys = sorted(
            j.idempotency_key or "" for j in new.store.list_jobs(None, "deploy.report", 10, None)[0]
        )
        assert keys == [
            "schedule:nightly:2026-01-01T03:00:00.000Z",
            "schedule:nightly:2026-01-02T03:00:00.000Z",
        ]


def test_a_start_warns_of_a_stored_schedule_whose_args_its_task_now_refuses(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A schedule made over HTTP was checked against its task as deployed then; after a deploy
    that changed the task's parameters, every tick's job would fail, so the start says so."""
    with running_app(tmp_path) as app:
        assert put(app, "fine", cron="0 3 * * *").status_code == 201
        assert put(app, "stale", cron="0 3 * * *").status_code == 201
        db_path = app.db_path
    with sqlite3.connect(db_path) as db:  # as the task was before: its `b` was called `c`
        db.execute("UPDATE schedules SET args = ? WHERE name = 'stale'", ('{"a": 1, "c": 2}',))
    with caplog.at_level(logging.WARNING, logger="jobserver.ops.scheduler"), running_app(tmp_path):
        warned = [r.getMessage() for r in caplog.records if r.name == "jobserver.ops.scheduler"]
    assert len(warned) == 1 and warned[0].startswith("schedule stale: task jobserver.examples.add"), warned
    assert "PUT /schedules/stale" in warned[0] and "args.b" in warned[0]
