"""The SDK's operator calls against the real app in-process (Starlette's TestClient as its
httpx.Client): schedules, pausing a task, bulk cancel and retry, stats, and their errors."""

from __future__ import annotations

import json
import time

import pytest

from jobserver.client.commands import Output, build_parser, run
from jobserver.client.sdk import Client
from jobserver.core.errors import InvalidRequestError, ScheduleNotFoundError, TaskNotFoundError
from jobserver.core.records import JobIds, NewJob
from tests.inproc import RunningApp

ADD = "jobserver.examples.add"
NOOP = "jobserver.examples.noop"


def test_schedules_through_the_sdk(client: Client) -> None:
    made = client.put_schedule("digest", ADD, "0 3 * * *", {"a": 1, "b": 2}, timezone="Europe/Berlin")
    assert (made["name"], made["timezone"], made["paused"]) == ("digest", "Europe/Berlin", False)
    assert [s["name"] for s in client.schedules()] == ["digest"]
    assert client.schedule("digest")["args"] == {"a": 1, "b": 2}
    assert client.pause_schedule("digest")["paused"] is True
    assert client.resume_schedule("digest")["paused"] is False
    client.delete_schedule("digest")
    assert client.schedules() == []
    with pytest.raises(ScheduleNotFoundError) as info:
        client.delete_schedule("digest")
    assert info.value.name == "digest" and info.value.status_code == 404
    with pytest.raises(InvalidRequestError) as bad:
        client.put_schedule("digest", ADD, "0 3 * *", {"a": 1, "b": 2})
    assert bad.value.errors[0]["loc"] == ["body", "cron"]
    with pytest.raises(TaskNotFoundError):
        client.put_schedule("digest", "no.such.task", "0 3 * * *")


def test_pause_bulk_actions_and_stats_through_the_sdk(client: Client) -> None:
    assert client.pause_task(ADD) == {"name": ADD, "paused": True}
    assert {t["name"]: t["paused"] for t in client.tasks()}[ADD] is True
    held = [client.submit(ADD, {"a": i, "b": 0})["id"] for i in range(3)]
    delayed = [client.submit(NOOP, delay=3600)["id"] for _ in range(2)]
    assert client.cancel_many(task=NOOP) == 2
    assert client.cancel_many(ids=held[:1]) == 1
    assert client.retry_many(status="cancelled", task=NOOP) == 2
    assert client.retry_many(ids=held) == 1
    assert client.resume_task(ADD) == {"name": ADD, "paused": False}
    assert [client.wait(j, timeout=20)["result"] for j in held] == [0, 1, 2]
    assert {client.wait(j, timeout=20)["status"] for j in delayed} == {"completed"}
    stats = client.stats()
    assert stats["counts"]["completed"] == 5 and stats["tasks"][ADD]["completed"] == 3
    with pytest.raises(TaskNotFoundError) as info:
        client.pause_task("no.such.task")
    assert info.value.task == "no.such.task" and info.value.status_code == 404
    with pytest.raises(InvalidRequestError):
        client.retry_many(status="pending")
    # no filter means every job: only when said, as the CLI's --all
    for unfiltered in (client.cancel_many, client.retry_many, client.delete_many):
        with pytest.raises(InvalidRequestError, match="all_jobs=True"):
            unfiltered()
    assert client.stats()["counts"]["completed"] == 5  # nothing was deleted
    assert client.delete_many(all_jobs=True) == 5


def test_the_tasks_command_shows_tasks_that_jobs_wait_for_but_no_process_registers(
    app: RunningApp, client: Client, capsys: pytest.CaptureFixture[str]
) -> None:
    now = time.time()
    app.runtime.parts.store.enqueue(
        NewJob(JobIds().new(), "elsewhere.task", "{}", 0, 1, None, None, None, now, now), None, lambda: None
    ).result(10)
    overview = client.task_overview()
    assert overview["unknown_tasks"] == [{"name": "elsewhere.task", "pending": 1}]
    assert ADD in {t["name"] for t in overview["tasks"]}
    parser = build_parser()
    assert run(client, parser.parse_args(["tasks"]), Output(as_json=True)) == 0
    assert json.loads(capsys.readouterr().out)["unknown_tasks"] == overview["unknown_tasks"]
    assert run(client, parser.parse_args(["tasks"]), Output(as_json=False)) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if "elsewhere.task" in x)
    assert "unknown" in line and "1 job waits for it" in line


def test_the_stats_command_counts_cancelled_jobs_in_its_last_hour_line(
    client: Client, capsys: pytest.CaptureFixture[str]
) -> None:
    for _ in range(2):
        client.cancel(client.submit(NOOP, delay=3600)["id"])
    assert run(client, build_parser().parse_args(["stats"]), Output(as_json=False)) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("last hour"))
    assert "0 completed, 0 failed, 2 cancelled" in line and "finished/min" in line, line
