"""The SDK's operator calls against the real app in-process (Starlette's TestClient as its
httpx.Client): schedules, pausing a task, bulk cancel and retry, stats, and their errors."""

from __future__ import annotations

import pytest

from jobserver.client.sdk import Client
from jobserver.core.errors import InvalidRequestError, ScheduleNotFoundError, TaskNotFoundError

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
