"""The operator subcommands (`schedules`, `pause`, `resume`, `stats`, `limits`, and
`cancel`/`retry` with filters) as subprocesses against the real app, served on a socket by
uvicorn on a thread of the test process (tests/inproc.py's `served_app`): the command is the
process under test, not the server."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import finished, submit, wait_until
from tests.inproc import ServedApp
from tests.test_cli_client import cli, ok_json, one_line

pytestmark = pytest.mark.e2e
ADD = "jobserver.examples.add"
NOOP = "jobserver.examples.noop"


@pytest.fixture(scope="module")
def server(shared_served: ServedApp) -> ServedApp:
    """One app for the module's commands."""
    return shared_served


def test_pause_and_resume_a_task(server: ServedApp) -> None:
    c = server.client()
    assert ok_json(cli("--json", "pause", ADD, url=server.url)) == {"name": ADD, "paused": True}
    job_id = submit(c, ADD, {"a": 2, "b": 3})
    assert finished(c, submit(c, NOOP))["status"] == "completed"
    assert c.get(f"/jobs/{job_id}").json()["status"] == "pending"
    assert ok_json(cli("--json", "resume", ADD, url=server.url)) == {"name": ADD, "paused": False}
    assert finished(c, job_id)["result"] == 5
    unknown = cli("pause", "no.such.task", url=server.url)
    assert unknown.returncode == 2 and "no task named 'no.such.task'" in one_line(unknown)


def test_bulk_cancel_and_retry_with_filters(server: ServedApp) -> None:
    c = server.client()
    ids = [submit(c, NOOP, delay=3600) for _ in range(3)]
    assert ok_json(cli("--json", "cancel", "--task", NOOP, "--status", "pending", url=server.url)) == {
        "count": 3
    }
    assert {c.get(f"/jobs/{j}").json()["status"] for j in ids} == {"cancelled"}
    assert ok_json(cli("--json", "retry", "--id", ids[0], "--id", ids[1], url=server.url)) == {"count": 2}
    assert [finished(c, j)["status"] for j in ids] == ["completed", "completed", "cancelled"]
    assert ok_json(cli("--json", "retry", ids[2], url=server.url))["status"] == "pending"
    nothing = cli("cancel", url=server.url)
    assert nothing.returncode == 2 and "give a job ID, filters" in one_line(nothing)
    bad = cli("retry", "--status", "running", url=server.url)
    assert bad.returncode == 2
    assert ok_json(cli("--json", "cancel", "--status", "waiting", url=server.url)) == {"count": 0}


def test_schedules_and_stats(server: ServedApp) -> None:
    c = server.client()
    for name, cron in (("nightly", "0 3 * * *"), ("hourly", "0 * * * *")):
        r = c.put(f"/schedules/{name}", json={"task": ADD, "cron": cron, "args": {"a": 1, "b": 1}})
        assert r.status_code in (200, 201)
    listed = ok_json(cli("--json", "schedules", url=server.url))["schedules"]
    assert sorted(s["name"] for s in listed) == ["hourly", "nightly"]
    listed = ok_json(cli("--json", "schedules", "list", "nightly", url=server.url))["schedules"]
    assert [(s["name"], s["cron"], s["paused"]) for s in listed] == [("nightly", "0 3 * * *", False)]
    assert ok_json(cli("--json", "schedules", "nightly", url=server.url))["schedules"] == listed
    unknown = cli("schedules", "list", "weekly", url=server.url)
    assert unknown.returncode == 1 and "no schedule named 'weekly'" in one_line(unknown)
    assert ok_json(cli("--json", "schedules", "pause", "nightly", url=server.url))["paused"] is True
    assert ok_json(cli("--json", "schedules", "resume", "nightly", url=server.url))["paused"] is False
    deleted = ok_json(cli("--json", "schedules", "delete", "nightly", url=server.url))
    assert deleted == {"name": "nightly", "deleted": True}
    again = cli("schedules", "delete", "nightly", url=server.url)
    assert again.returncode == 1 and "no schedule named 'nightly'" in one_line(again)
    stats = ok_json(cli("--json", "stats", url=server.url))
    assert set(stats) == {"at", "counts", "tasks", "last_hour"}
    assert set(stats["counts"]) == {"pending", "running", "waiting", "completed", "failed", "cancelled"}


def test_limits_shows_each_key_its_use_and_the_jobs_it_holds_back(server: ServedApp, tmp_path: Path) -> None:
    c = server.client()
    release = tmp_path / "release"
    args = {"path": str(tmp_path / "spans"), "model": "cli", "hold_s": 0, "release": str(release)}
    ids = [submit(c, "tests.e2e_tasks.held_key", args) for _ in range(4)]  # the key allows 3 at once
    wait_until(
        lambda: [c.get(f"/jobs/{i}").json()["blocked_by"] for i in ids].count("llm:cli") == 1,
        message="one job held back by the key",
    )
    keys = {k["key"]: k for k in ok_json(cli("--json", "limits", url=server.url))["limits"]}
    assert (keys["llm:cli"]["in_use"], keys["llm:cli"]["blocked"]) == (3, 1)
    table = cli("limits", url=server.url)
    assert table.returncode == 0, table.stderr
    header, *rows = table.stdout.splitlines()
    assert header.split() == ["KEY", "KIND", "LIMIT", "IN", "USE", "HELD", "BACK"]
    assert any(row.split() == ["llm:cli", "concurrency", "3", "3", "1"] for row in rows), rows
    release.touch()
    assert all(finished(c, i)["status"] == "completed" for i in ids)
