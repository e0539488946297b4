"""Finding a job by the end of its id (`GET /jobs?id_suffix=`), and the last hour of one task
(`GET /stats?task=`): the real app in-process, on a real SQLite file or a real PostgreSQL
database."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from jobserver.client import Client
from tests.e2e import start_server
from tests.helpers import finished, submit, wait_until
from tests.inproc import RunningApp, running_app

ADD = "jobserver.examples.add"
FAIL = "jobserver.examples.fail"
NOOP = "jobserver.examples.noop"
BACKENDS = ["sqlite", pytest.param("postgres", marks=[pytest.mark.postgres, pytest.mark.e2e])]


@dataclass
class Backend:
    """A server on one database: its client, statements run beside it, and its compaction."""

    client: httpx.Client
    run_sql: Callable[[list[str]], None]
    compact: Callable[[], None]


@pytest.fixture(params=BACKENDS)
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """The app in-process on SQLite; for the `postgres` run, the server process on PostgreSQL,
    as the other PostgreSQL tests run it."""
    if request.param == "sqlite":
        with running_app(tmp_path) as app:
            yield Backend(app.client, lambda sql: sqlite_sql(app.db_path, sql), app_compaction(app))
        return
    url = request.getfixturevalue("pg_url")
    server = start_server(tmp_path, config={"database": {"url": url}})
    yield Backend(server.client(), lambda sql: pg_sql(url, sql), lambda: pg_compacted(url))


def sqlite_sql(path: Path, statements: list[str]) -> None:
    with sqlite3.connect(path, isolation_level=None) as conn:
        for sql in statements:
            conn.execute(sql)


def pg_sql(url: str, statements: list[str]) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        for sql in statements:
            conn.execute(sql.encode())


def app_compaction(app: RunningApp) -> Callable[[], None]:
    return lambda: app.runtime.parts.stats.compact_once().result(10)


def pg_compacted(url: str) -> None:
    """Wait for a maintenance pass of the server to fold the finish counts' delta rows."""

    def folded() -> bool:
        with psycopg.connect(url, autocommit=True) as conn:
            row = conn.execute(
                "SELECT COUNT(*) FROM (SELECT 1 FROM job_finishes GROUP BY minute, task, status "
                "HAVING COUNT(*) > 1) AS unfolded"
            ).fetchone()
        return row is not None and row[0] == 0

    wait_until(folded, 30, message="the finish counts to be folded")


def copies_ending_with(db: Backend, job_id: str, ends: list[str]) -> list[str]:
    """Copies of a job's row, each with `job_id` whose end is replaced by one of `ends`: jobs
    whose ids share an end, which random ids would not give."""
    ids = [job_id[: -len(end)] + end for end in ends]
    statements = [f"CREATE TEMP TABLE copied AS SELECT * FROM jobs WHERE id = '{job_id}'"]
    for new in ids:
        statements += [f"UPDATE copied SET id = '{new}'", "INSERT INTO jobs SELECT * FROM copied"]
    db.run_sql([*statements, "DROP TABLE copied"])
    return ids


def listed(c: httpx.Client, **params: Any) -> dict[str, Any]:
    r = c.get("/jobs", params=params)
    assert r.status_code == 200, r.text
    page: dict[str, Any] = r.json()
    return page


def ids_of(page: dict[str, Any]) -> list[str]:
    return [j["id"] for j in page["jobs"]]


# ------------------------------------------------------------ GET /jobs?id_suffix=
def test_a_short_id_finds_its_job_however_far_down_the_list(db: Backend) -> None:
    c = db.client
    assert c.post(f"/tasks/{NOOP}/pause").status_code == 200  # the jobs stay pending
    batch = c.post("/jobs/batch", json={"jobs": [{"task": NOOP} for _ in range(60)]})
    assert batch.status_code == 202, batch.text
    oldest = batch.json()["jobs"][0]["id"]
    assert oldest not in ids_of(listed(c, limit=50))  # not on the list's first page

    short = oldest[-8:]  # what the dashboard shows
    assert ids_of(listed(c, id_suffix=short)) == [oldest]
    assert ids_of(listed(c, id_suffix=short.upper())) == [oldest]  # hex digits in either case
    assert ids_of(listed(c, id_suffix=oldest)) == [oldest]  # a whole id ends with itself
    assert ids_of(listed(c, id_suffix=oldest[-13:])) == [oldest]  # a dash in it
    assert ids_of(listed(c, id_suffix=short, status="pending", fields="summary")) == [oldest]
    assert ids_of(listed(c, id_suffix=short, status="completed")) == []  # the filters still apply
    assert ids_of(listed(c, id_suffix=short, task=ADD)) == []
    absent = "0" * 12 if not oldest.endswith("0" * 12) else "1" * 12
    assert listed(c, id_suffix=absent) == {"jobs": [], "next_cursor": None}


def test_jobs_sharing_an_end_come_newest_first_a_page_at_a_time(db: Backend) -> None:
    c = db.client
    assert c.post(f"/tasks/{NOOP}/pause").status_code == 200
    first = submit(c, NOOP)
    twins = copies_ending_with(db, first, ["0000abcde", "1111abcde", "2222abcde"])
    other = copies_ending_with(db, first, ["3333abcdf"])
    newest_first = sorted(twins, reverse=True)

    page = listed(c, id_suffix="abcde", limit=2)
    assert ids_of(page) == newest_first[:2] and page["next_cursor"] == newest_first[1]
    rest = listed(c, id_suffix="abcde", limit=2, cursor=page["next_cursor"])
    assert ids_of(rest) == newest_first[2:] and rest["next_cursor"] is None
    assert ids_of(listed(c, id_suffix="3abcdf")) == other
    assert first not in ids_of(listed(c, id_suffix="abcde"))


@pytest.mark.parametrize(
    "value",
    [
        "abc",  # too short: it would match a sixteenth of the jobs per character missing
        "a" * 37,  # longer than an id
        "xyz123",  # not hex
        "%abcd",  # no wildcards
        "ab_cd",
        "",
    ],
)
def test_an_id_suffix_that_no_id_can_end_with_is_a_422(app: RunningApp, value: str) -> None:
    r = app.client.get("/jobs", params={"id_suffix": value})
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body = r.json()
    assert body["code"] == "validation-error" and body["detail"] == "invalid query: id_suffix"
    assert [e["loc"] for e in body["errors"]] == [["query", "id_suffix"]]


# ------------------------------------------------------------ GET /stats?task=
def test_the_last_hour_of_one_task(db: Backend) -> None:
    c = db.client
    for _ in range(3):
        finished(c, submit(c, ADD, {"a": 1, "b": 1}))
    for _ in range(2):
        finished(c, submit(c, FAIL))

    def hour(**params: str) -> dict[str, Any]:
        r = c.get("/stats", params=params)
        assert r.status_code == 200, r.text
        stats: dict[str, Any] = r.json()
        assert stats["counts"]["completed"] == 3 and stats["counts"]["failed"] == 2  # every task's
        assert set(stats["tasks"]) >= {ADD, FAIL}
        last: dict[str, Any] = stats["last_hour"]
        assert len(last["minutes"]) == 60
        return last

    def per_minute(last: dict[str, Any]) -> tuple[int, int, int]:
        return tuple(sum(m[s] for m in last["minutes"]) for s in ("completed", "failed", "cancelled"))

    every = hour()
    assert (every["completed"], every["failed"]) == (3, 2) and per_minute(every) == (3, 2, 0)
    failing = hour(task=FAIL)
    assert (failing["completed"], failing["failed"], failing["failure_rate"]) == (0, 2, 1.0)
    assert per_minute(failing) == (0, 2, 0) and list(failing["tasks"]) == [FAIL]
    adding = hour(task=ADD)
    assert (adding["completed"], adding["failed"], adding["failure_rate"]) == (3, 0, 0.0)
    assert per_minute(adding) == (3, 0, 0) and adding["throughput_per_minute"] == round(3 / 60, 3)
    nobody = hour(task="no.such.task")  # a task no job has: an empty hour, as GET /jobs?task= lists none
    assert (nobody["completed"], nobody["failed"], nobody["failure_rate"]) == (0, 0, None)
    assert per_minute(nobody) == (0, 0, 0) and nobody["tasks"] == {}

    with Client(http_client=c) as sdk:  # the SDK asks the same
        assert per_minute(sdk.stats(task=FAIL)["last_hour"]) == (0, 2, 0)
        assert per_minute(sdk.stats()["last_hour"]) == (3, 2, 0)

    db.compact()  # PostgreSQL's delta rows folded: the same
    assert per_minute(hour(task=FAIL)) == (0, 2, 0) and per_minute(hour()) == (3, 2, 0)


@pytest.mark.parametrize(
    ("query", "name", "kind"),
    [
        ("tasks=x", "tasks", "extra_forbidden"),  # misspelt: refused, never ignored
        ("task=", "task", "string_too_short"),
        (f"task={'t' * 201}", "task", "string_too_long"),
        ("task=a&task=b", "task", "repeated"),
    ],
)
def test_a_stats_query_it_does_not_take_is_a_422(app: RunningApp, query: str, name: str, kind: str) -> None:
    r = app.client.get(f"/stats?{query}")
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert [(e["loc"], e["type"]) for e in r.json()["errors"]] == [(["query", name], kind)]
