"""The job lifecycle through the HTTP API: the real app and its worker threads,
in-process on a fresh SQLite file (tests/inproc.py)."""

from __future__ import annotations

import concurrent.futures
import sqlite3
from pathlib import Path
from typing import Any

import httpx
import pytest

from jobserver.client import Client
from tests.helpers import has_line, wait_until
from tests.inproc import RunningApp, running_app


def submit(c: httpx.Client, task: str, args: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    r = c.post("/jobs", json={"task": task, "args": args or {}, **extra})
    assert r.status_code == 202, r.text
    assert r.headers["location"] == f"/jobs/{r.json()['id']}"
    job: dict[str, Any] = r.json()
    return job


def wait_done(c: httpx.Client, job_id: str, timeout: float = 20) -> dict[str, Any]:
    r = c.get(f"/jobs/{job_id}", params={"wait": timeout})
    assert r.status_code == 200
    job: dict[str, Any] = r.json()
    assert job["status"] in ("completed", "failed", "cancelled"), job
    return job


JSON_TYPE = {"content-type": "application/json"}


def test_submit_poll_result(app: RunningApp) -> None:
    c = app.client
    job = submit(c, "jobserver.examples.add", {"a": 2, "b": 3})
    assert job["status"] == "pending" and job["attempts"] == 0
    done = wait_done(c, job["id"])
    assert done["status"] == "completed"
    assert done["result"] == 5
    assert done["attempts"] == 1
    assert done["started_at"] and done["finished_at"]
    # reads never consume
    assert c.get(f"/jobs/{job['id']}").json()["result"] == 5


def test_stored_args_are_validated_with_defaults(app: RunningApp) -> None:
    c = app.client
    job = submit(c, "jobserver.examples.sleep", {"seconds": 0})
    assert job["args"] == {"seconds": 0.0, "steps": 10}
    assert isinstance(job["args"]["seconds"], float)


@pytest.mark.parametrize(
    ("args", "field"),
    [
        ({"a": "2", "b": 1}, "a"),  # a string is not an integer, however it reads
        ({"a": True, "b": 1}, "a"),
        ({"a": 2.5, "b": 1}, "a"),
    ],
)
def test_args_are_taken_as_their_json_schema_says(app: RunningApp, args: dict[str, Any], field: str) -> None:
    r = app.client.post("/jobs", json={"task": "jobserver.examples.add", "args": args})
    assert r.status_code == 422, r.text
    assert r.json()["errors"][0]["loc"] == ["body", "args", field]


def test_a_number_whose_fraction_is_zero_is_an_integer(app: RunningApp) -> None:
    job = submit(app.client, "jobserver.examples.add", {"a": 2.0, "b": 3})
    assert job["args"] == {"a": 2, "b": 3}


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"task": "nope.nothing", "args": {}}, 422, "task"),
        ({"task": "jobserver.examples.add", "args": {"a": "x", "b": 1}}, 422, "a"),
        ({"task": "jobserver.examples.add", "args": {"a": 1}}, 422, "b"),
        ({"task": "jobserver.examples.add", "args": {"a": 1, "b": 2, "c": 3}}, 422, "c"),
        ({"task": "jobserver.examples.add", "args": {"a": 1, "b": 2}, "bogus": 1}, 422, "bogus"),
        ({"task": "jobserver.examples.add", "args": {"a": 1, "b": 2}, "delay": -1}, 422, "delay"),
        (
            {
                "task": "jobserver.examples.add",
                "args": {"a": 1, "b": 2},
                "delay": 1,
                "run_at": "2030-01-01T00:00:00Z",
            },
            422,
            None,
        ),
        ({"args": {}}, 422, "task"),
        ({"task": "jobserver.examples.add", "args": {}, "run_at": "9999-01-01T00:00:00Z"}, 422, "run_at"),
        ({"task": "jobserver.examples.add", "args": {}, "run_at": "2030-01-01T00:00:00"}, 422, "run_at"),
    ],
)
def test_bad_submissions_are_refused_and_change_nothing(
    app: RunningApp, body: dict[str, Any], status: int, field: str | None
) -> None:
    c = app.client
    r = c.post("/jobs", json=body)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    doc = r.json()
    assert doc["status"] == status and doc["title"] and doc["detail"] and doc["type"]
    if field:
        assert any(field in [str(p) for p in e["loc"]] for e in doc["errors"]), doc
    assert c.get("/jobs").json()["jobs"] == []


def test_malformed_json_wrong_type_and_too_large(app: RunningApp) -> None:
    c = app.client
    r = c.post("/jobs", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["status"] == 400
    for body in (b"[1]", b'{"jobs": [1]}'):  # not an object: said in JSON's words, not our classes'
        r = c.post("/jobs/batch" if b"jobs" in body else "/jobs", content=body, headers=JSON_TYPE)
        assert r.status_code == 422 and r.json()["errors"][0]["msg"] == "Input should be a JSON object", (
            r.text
        )
    r = c.post("/jobs", content=b"task=x", headers={"content-type": "application/x-www-form-urlencoded"})
    assert r.status_code == 415
    big = b'{"task": "jobserver.examples.add", "args": {"a": 1, "b": 2}, "x": "' + b"a" * 1_100_000 + b'"}'
    r = c.post("/jobs", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert c.get("/jobs").json()["jobs"] == []


def test_the_args_limit_counts_utf8_bytes_not_characters(app: RunningApp) -> None:
    c = app.client
    wide = "\u20ac" * 25_000  # 25,000 characters, 75,000 bytes: over the default 65,536
    r = c.post("/jobs", json={"task": "tests.e2e_tasks.wait_named", "args": {"name": wide}})
    assert r.status_code == 422 and r.json()["errors"][0]["msg"] == "75011 bytes, at most 65536", r.text
    assert r.json()["detail"] == "too large: args" and r.json()["errors"][0]["loc"] == ["body", "args"]
    job = submit(c, "tests.e2e_tasks.wait_named", {"name": "go"})
    r = c.post(f"/jobs/{job['id']}/signals/go", json={"text": wide})
    assert r.status_code == 422 and "bytes, at most 65536" in r.json()["errors"][0]["msg"], r.text
    assert c.post(f"/jobs/{job['id']}/signals/go", json={"text": "a" * 25_000}).status_code == 202


def test_query_validation(app: RunningApp) -> None:
    c = app.client
    assert c.get("/jobs", params={"limit": 501}).status_code == 422
    assert c.get("/jobs", params={"status": "nope"}).status_code == 422
    job = submit(c, "jobserver.examples.add", {"a": 1, "b": 1})
    assert c.get(f"/jobs/{job['id']}", params={"wait": 61}).status_code == 422
    r = c.get("/jobs/does-not-exist")
    assert r.status_code == 404 and r.json()["code"] == "job-not-found"
    # a misspelt parameter is refused on every route that reads one, and on those that read none
    for path in (
        "/jobs",
        f"/jobs/{job['id']}",
        "/tasks",
        "/limits",
        "/stats",
        "/schedules",
        f"/jobs/{job['id']}/webhooks",
    ):
        r = c.get(path, params={"stauts": "failed"})
        assert r.status_code == 422 and r.json()["errors"][0]["loc"] == ["query", "stauts"], (path, r.text)
    assert c.get("/tasks").status_code == c.get("/stats").status_code == 200


def test_a_change_refuses_a_query_and_changes_nothing(app: RunningApp) -> None:
    """`POST /jobs/cancel?status=running` with `{}` would otherwise cancel every job."""
    c = app.client
    waiting = [submit(c, "jobserver.examples.add", {"a": 1, "b": 1}, delay=3600)["id"] for _ in range(2)]
    schedule = {"task": "jobserver.examples.add", "cron": "0 3 * * *", "args": {"a": 1, "b": 1}}
    assert c.put("/schedules/nightly", json=schedule).status_code == 201
    changes = [
        ("POST", "/jobs/cancel", {}),
        ("POST", "/jobs/retry", {}),
        ("POST", "/jobs/delete", {}),
        ("POST", f"/jobs/{waiting[0]}/cancel", None),
        ("DELETE", f"/jobs/{waiting[0]}", None),
        ("POST", "/jobs", {"task": "jobserver.examples.add", "args": {"a": 1, "b": 1}}),
        ("POST", "/jobs/batch", {"jobs": [{"task": "jobserver.examples.add", "args": {"a": 1, "b": 1}}]}),
        ("POST", "/tasks/jobserver.examples.add/pause", None),
        ("PUT", "/schedules/nightly", {**schedule, "cron": "0 4 * * *"}),
        ("POST", "/schedules/nightly/pause", None),
        ("DELETE", "/schedules/nightly", None),
    ]
    for method, path, body in changes:
        r = c.request(method, path, params={"status": "running"}, json=body)
        assert r.status_code == 422 and r.json()["errors"][0]["loc"] == ["query", "status"], (path, r.text)
    listed = c.get("/jobs").json()["jobs"]
    assert sorted(j["id"] for j in listed) == sorted(waiting) and {j["status"] for j in listed} == {"pending"}
    [kept] = c.get("/schedules").json()["schedules"]
    assert (kept["cron"], kept["paused"]) == ("0 3 * * *", False)
    assert not any(t["paused"] for t in c.get("/tasks").json()["tasks"])
    assert c.post("/jobs/cancel", json={}).json()["count"] == 2  # the same change without a query


def test_a_query_names_each_parameter_once_with_plain_numbers(app: RunningApp) -> None:
    c = app.client
    for _ in range(3):
        submit(c, "jobserver.examples.add", {"a": 1, "b": 1})
    r = c.get("/jobs?limit=1&limit=2")
    assert r.status_code == 422, r.text
    assert r.json()["errors"] == [
        {"loc": ["query", "limit"], "msg": "given more than once", "type": "repeated"}
    ]
    assert c.get("/jobs?status=failed&task=x&status=completed").status_code == 422
    for odd in ("1_0", " 2", "2 ", "+2", "0x2"):
        r = c.get(f"/jobs?limit={odd}")
        assert r.status_code == 422 and r.json()["errors"][0]["loc"] == ["query", "limit"], (odd, r.text)
    job_id = c.get("/jobs?limit=1").json()["jobs"][0]["id"]
    for odd in ("1_0", "inf", "nan", "1 "):
        assert c.get(f"/jobs/{job_id}?wait={odd}").status_code == 422, odd
    assert len(c.get("/jobs?limit=2").json()["jobs"]) == 2
    assert c.get(f"/jobs/{job_id}?wait=1e-3").status_code == 200


def test_a_header_that_is_sent_once_is_refused_when_repeated_and_changes_nothing(app: RunningApp) -> None:
    """Two Idempotency-Keys (a proxy added one), two Content-Types or two Last-Event-IDs: a 422
    naming the header, as for a repeated query parameter, not the first silently counting."""
    c = app.client
    body = b'{"task": "jobserver.examples.add", "args": {"a": 1, "b": 2}}'
    before = len(c.get("/jobs").json()["jobs"])
    for headers in (
        [("Content-Type", "application/json"), ("Idempotency-Key", "k-a"), ("Idempotency-Key", "k-b")],
        [("Content-Type", "application/json"), ("Content-Type", "text/plain")],
    ):
        r = c.post("/jobs", content=body, headers=headers)
        assert r.status_code == 422, r.text
        assert r.json()["errors"][0]["msg"] == "given more than once", r.text
    assert len(c.get("/jobs").json()["jobs"]) == before
    job = wait_done(c, submit(c, "jobserver.examples.add", {"a": 1, "b": 2})["id"])
    r = c.get(
        f"/jobs/{job['id']}/events?follow=false", headers=[("Last-Event-ID", "1"), ("Last-Event-ID", "9")]
    )
    assert r.status_code == 422 and r.json()["errors"][0]["loc"] == ["header", "Last-Event-ID"], r.text


def test_a_body_in_a_charset_other_than_utf8_is_refused(app: RunningApp) -> None:
    c = app.client
    body = {"task": "jobserver.examples.add", "args": {"a": 1, "b": 2}}
    before = len(c.get("/jobs").json()["jobs"])
    for charset in ("latin-1", '"utf-16"', "ISO-8859-1"):
        r = c.post("/jobs", json=body, headers={"content-type": f"application/json; charset={charset}"})
        assert r.status_code == 415 and "UTF-8" in r.json()["detail"], (charset, r.text)
    assert len(c.get("/jobs").json()["jobs"]) == before
    for charset in ("utf-8", "UTF-8", '"utf-8"'):
        r = c.post("/jobs", json=body, headers={"content-type": f"application/json; charset={charset}"})
        assert r.status_code == 202, (charset, r.text)


def test_a_last_event_id_may_have_whitespace_around_it(app: RunningApp) -> None:
    c = app.client
    job = wait_done(c, submit(c, "jobserver.examples.add", {"a": 1, "b": 2})["id"])
    whole = c.get(f"/jobs/{job['id']}/events", params={"follow": "false"})
    first_id = int(whole.text.split("id: ")[1].split("\n")[0])
    after = c.get(f"/jobs/{job['id']}/events?follow=false", headers={"Last-Event-ID": f" {first_id} "})
    assert after.status_code == 200, after.text
    assert f"id: {first_id}\n" not in after.text and after.text in whole.text and after.text != whole.text


def test_an_idempotency_key_is_the_headers_value_without_surrounding_whitespace(app: RunningApp) -> None:
    c = app.client
    body = {"task": "jobserver.examples.add", "args": {"a": 1, "b": 2}}
    first = c.post("/jobs", json=body, headers={"Idempotency-Key": "key-x  "})
    assert first.status_code == 202
    again = c.post("/jobs", json=body, headers={"Idempotency-Key": "key-x"})
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"], again.text
    assert first.json()["idempotency_key"] == "key-x"
    before = len(c.get("/jobs").json()["jobs"])
    refused = c.post("/jobs", json=body, headers=[(b"Idempotency-Key", "ü-1".encode())])
    assert refused.status_code == 422 and refused.json()["errors"][0]["loc"] == ["header", "Idempotency-Key"]
    assert len(c.get("/jobs").json()["jobs"]) == before  # refused: nothing queued


def test_a_batch_items_idempotency_key_follows_the_headers_rule(app: RunningApp) -> None:
    """The header and a batch item share one key space, so one rule: trimmed, then 1 to 255
    printable ASCII characters; a refused item is named by its index and nothing is queued."""
    c = app.client
    body = {"task": "jobserver.examples.add", "args": {"a": 1, "b": 2}}
    first = c.post("/jobs/batch", json={"jobs": [{**body, "idempotency_key": " \tbatch-key "}]})
    assert first.status_code == 202, first.text
    assert first.json()["jobs"][0]["idempotency_key"] == "batch-key"
    again = c.post("/jobs", json=body, headers={"Idempotency-Key": "batch-key"})
    assert again.status_code == 200 and again.json()["id"] == first.json()["jobs"][0]["id"], again.text
    before = len(c.get("/jobs").json()["jobs"])
    # a schedule's jobs have keys of their own: a client's job must not pass for one of them
    for key in (
        "a\u0000b",
        "a\u202eb",
        "\u00fc-1",
        "   ",
        "k" * 256,
        "a\nb",
        "schedule:nightly:2026-01-01T03:00:00Z",
    ):
        items = [{**body, "idempotency_key": "fine"}, {**body, "idempotency_key": key}]
        r = c.post("/jobs/batch", json={"jobs": items})
        assert r.status_code == 422 and r.json()["code"] == "validation-error", (key, r.text)
        assert [e["loc"] for e in r.json()["errors"]] == [["body", "jobs", "1", "idempotency_key"]], r.text
        assert "printable ASCII" in r.json()["errors"][0]["msg"]
        assert c.post("/jobs", json=body, headers=[(b"Idempotency-Key", key.encode())]).status_code == 422
    assert len(c.get("/jobs").json()["jobs"]) == before


def test_idempotency_replay_mismatch(app: RunningApp) -> None:
    c = app.client
    body = {"task": "jobserver.examples.add", "args": {"a": 1, "b": 2}}
    first = c.post("/jobs", json=body, headers={"Idempotency-Key": "abc"})
    assert first.status_code == 202
    # same parsed JSON, other key order and spacing
    again = c.post(
        "/jobs",
        content=b'{ "args": {"b": 2, "a": 1},   "task": "jobserver.examples.add"}',
        headers={"Idempotency-Key": "abc", "content-type": "application/json"},
    )
    assert again.status_code == 200
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    # the same numbers written otherwise: 1.0 and 2e0 are 1 and 2
    same = c.post(
        "/jobs",
        content=b'{"task": "jobserver.examples.add", "args": {"a": 1.0, "b": 2e0}}',
        headers={"Idempotency-Key": "abc", "content-type": "application/json"},
    )
    assert same.status_code == 200 and same.json()["id"] == first.json()["id"], same.text
    other = c.post("/jobs", json={**body, "args": {"a": 1, "b": 3}}, headers={"Idempotency-Key": "abc"})
    assert other.status_code == 422
    assert len(c.get("/jobs").json()["jobs"]) == 1


def test_a_resend_gets_its_job_though_a_check_of_it_would_now_refuse_it(tmp_path: Path) -> None:
    """The webhook host was allowed when the job was accepted and no longer is: the resend is
    told about its job (200, replayed), not that it was refused, as a single submit and as a batch."""
    hook = "http://127.0.0.1:9/hook"
    single = {"task": "jobserver.examples.add", "args": {"a": 1, "b": 2}, "webhook_url": hook}
    batch = {
        "jobs": [
            {**single, "idempotency_key": "b-1"},
            {**single, "args": {"a": 2, "b": 2}, "idempotency_key": "b-2"},
        ]
    }
    with running_app(tmp_path, config={"webhooks": {"allow_hosts": ["127.0.0.1"]}}) as app:
        first = app.client.post("/jobs", json=single, headers={"Idempotency-Key": "k-1"})
        assert first.status_code == 202, first.text
        firsts = app.client.post("/jobs/batch", json=batch)
        assert firsts.status_code == 202, firsts.text
    with running_app(tmp_path, config={"webhooks": {"allow_hosts": []}}) as app:
        c = app.client
        assert c.post("/jobs", json={**single, "args": {"a": 5, "b": 5}}).status_code == 422  # refused now
        again = c.post("/jobs", json=single, headers={"Idempotency-Key": "k-1"})
        assert again.status_code == 200, again.text
        assert again.headers["idempotent-replayed"] == "true" and again.json()["id"] == first.json()["id"]
        resent = c.post("/jobs/batch", json=batch)
        assert resent.status_code == 202 and resent.json()["replayed"] == [0, 1], resent.text
        assert [j["id"] for j in resent.json()["jobs"]] == [j["id"] for j in firsts.json()["jobs"]]
        other = c.post("/jobs", json={**single, "args": {"a": 9, "b": 9}}, headers={"Idempotency-Key": "k-1"})
        assert other.status_code == 422 and other.json()["code"] == "idempotency-key-reused", other.text
        assert len(c.get("/jobs").json()["jobs"]) == 3


def test_twenty_concurrent_submits_with_one_key_make_one_job(app: RunningApp) -> None:
    body = {"task": "jobserver.examples.add", "args": {"a": 5, "b": 5}}

    def post(_: int) -> httpx.Response:
        answer: httpx.Response = app.client.post("/jobs", json=body, headers={"Idempotency-Key": "same"})
        return answer

    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(post, range(20)))
    codes = sorted(r.status_code for r in answers)
    assert set(codes) <= {200, 202, 409}, codes
    assert codes.count(202) == 1, codes
    ids = {r.json()["id"] for r in answers if r.status_code in (200, 202)}
    assert len(ids) == 1
    assert len(app.client.get("/jobs").json()["jobs"]) == 1


def test_retries_with_backoff_then_success(app: RunningApp, tmp_path: Path) -> None:
    c = app.client
    log = tmp_path / "attempts.txt"
    job = submit(c, "tests.e2e_tasks.fail_then_succeed", {"path": str(log), "failures": 2})
    done = wait_done(c, job["id"])
    assert done["status"] == "completed" and done["result"] == 3 and done["attempts"] == 3
    assert log.read_text().split("\n")[:3] == ["attempt 1", "attempt 2", "attempt 3"]


def test_failure_keeps_last_error_with_traceback(app: RunningApp, tmp_path: Path) -> None:
    c = app.client
    log = tmp_path / "attempts.txt"
    job = submit(c, "tests.e2e_tasks.fail_then_succeed", {"path": str(log), "failures": 5})
    done = wait_done(c, job["id"])
    assert done["status"] == "failed" and done["attempts"] == 3
    assert done["error"]["type"] == "ValueError"
    assert done["error"]["message"] == "boom 3"
    assert "Traceback" in done["error"]["traceback"]


def test_retry_on_fail_and_retry_signal(app: RunningApp) -> None:
    c = app.client
    not_retried = wait_done(c, submit(c, "tests.e2e_tasks.only_keyerror_retried", {"exc": "value"})["id"])
    assert not_retried["status"] == "failed" and not_retried["attempts"] == 1
    retried = wait_done(c, submit(c, "tests.e2e_tasks.only_keyerror_retried", {"exc": "key"})["id"])
    assert retried["status"] == "failed" and retried["attempts"] == 5
    failed_now = wait_done(c, submit(c, "tests.e2e_tasks.fail_now")["id"])
    assert failed_now["attempts"] == 1 and failed_now["error"]["type"] == "Fail"
    later = wait_done(c, submit(c, "tests.e2e_tasks.retry_later", {"delay": 0.3})["id"])
    assert later["status"] == "completed" and later["result"] == 2


def test_non_json_result_fails_clearly(app: RunningApp) -> None:
    c = app.client
    done = wait_done(c, submit(c, "tests.e2e_tasks.not_json")["id"])
    assert done["status"] == "failed"
    assert done["error"]["type"] == "NotJSONSerializableError"
    assert "JSON" in done["error"]["message"]


def test_delay_priority_and_run_at(app: RunningApp) -> None:
    c = app.client
    delayed = submit(c, "jobserver.examples.add", {"a": 1, "b": 1}, delay=30)
    assert delayed["status"] == "pending" and delayed["run_at"] > delayed["created_at"]
    quick = wait_done(c, submit(c, "jobserver.examples.add", {"a": 1, "b": 2})["id"])
    assert quick["status"] == "completed"
    assert c.get(f"/jobs/{delayed['id']}").json()["status"] == "pending"
    soon = submit(c, "jobserver.examples.add", {"a": 2, "b": 2}, delay=0.3)
    assert wait_done(c, soon["id"])["result"] == 4
    high = submit(c, "jobserver.examples.add", {"a": 1, "b": 1}, priority=7)
    assert high["priority"] == 7


def test_list_filters_and_cursor(app: RunningApp) -> None:
    c = app.client
    ids = [submit(c, "jobserver.examples.add", {"a": i, "b": 0})["id"] for i in range(7)]
    wait_done(c, ids[-1])
    seen, cursor = [], None
    while True:
        page = c.get("/jobs", params={"limit": 3, **({"cursor": cursor} if cursor else {})}).json()
        seen += [j["id"] for j in page["jobs"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(ids))
    # a cursor is a job's id: other text would start the listing again without a word
    bad = c.get("/jobs", params={"limit": 3, "cursor": "bogus"})
    assert bad.status_code == 422 and bad.json()["errors"][0]["loc"] == ["query", "cursor"], bad.text
    assert all(
        j["task"] == "jobserver.examples.add"
        for j in c.get("/jobs", params={"task": "jobserver.examples.add"}).json()["jobs"]
    )
    assert c.get("/jobs", params={"task": "jobserver.examples.noop"}).json()["jobs"] == []
    wait_until(lambda: len(c.get("/jobs", params={"status": "completed"}).json()["jobs"]) == 7)
    # "pending" covers due and delayed jobs, newest first, with a working cursor
    later = [submit(c, "jobserver.examples.add", {"a": i, "b": 0}, delay=60 + i)["id"] for i in range(3)]
    page = c.get("/jobs", params={"status": "pending", "limit": 2}).json()
    assert [j["id"] for j in page["jobs"]] == [later[2], later[1]] and page["next_cursor"]
    rest = c.get("/jobs", params={"status": "pending", "cursor": page["next_cursor"]}).json()
    assert [j["id"] for j in rest["jobs"]] == [later[0]] and rest["next_cursor"] is None
    assert c.delete(f"/jobs/{ids[3]}").status_code == 204  # a cursor whose job is gone still pages on
    after_gone = c.get("/jobs", params={"task": "jobserver.examples.add", "cursor": ids[3]}).json()
    assert [j["id"] for j in after_gone["jobs"]] == [ids[2], ids[1], ids[0]]


def test_delete_and_retry_endpoints(app: RunningApp) -> None:
    c = app.client
    failed = wait_done(c, submit(c, "jobserver.examples.fail")["id"])
    assert failed["status"] == "failed"
    r = c.post(f"/jobs/{failed['id']}/retry")
    assert r.status_code == 202
    assert r.json()["attempts"] == 0 and r.json()["error"] is None
    again = wait_done(c, failed["id"])
    assert again["status"] == "failed" and again["attempts"] == 1
    done = wait_done(c, submit(c, "jobserver.examples.add", {"a": 1, "b": 1})["id"])
    assert c.post(f"/jobs/{done['id']}/retry").status_code == 409
    assert c.post(f"/jobs/{done['id']}/cancel").status_code == 409
    pending = submit(c, "jobserver.examples.add", {"a": 1, "b": 1}, delay=60)
    refused = c.delete(f"/jobs/{pending['id']}")
    assert refused.status_code == 409 and " is pending: " in refused.json()["detail"], (
        refused.text
    )  # as the API names it
    assert c.delete(f"/jobs/{done['id']}").status_code == 204
    assert c.get(f"/jobs/{done['id']}").status_code == 404
    assert c.delete(f"/jobs/{done['id']}").status_code == 404


def test_a_resent_retry_with_an_idempotency_key_starts_no_second_round(app: RunningApp) -> None:
    c = app.client
    job_id = wait_done(c, submit(c, "jobserver.examples.fail")["id"])["id"]
    key = {"Idempotency-Key": "retry-7"}
    assert c.post(f"/jobs/{job_id}/retry", headers=key).status_code == 202
    assert wait_done(c, job_id)["status"] == "failed"  # the rerun failed again before the resend
    resent = c.post(f"/jobs/{job_id}/retry", headers=key)
    assert resent.status_code == 200 and resent.headers["idempotent-replayed"] == "true", resent.text
    assert resent.json()["status"] == "failed" and c.get(f"/jobs/{job_id}").json()["status"] == "failed"
    other = wait_done(c, submit(c, "jobserver.examples.fail")["id"])["id"]
    reused = c.post(f"/jobs/{other}/retry", headers=key)  # one key names one request
    assert reused.status_code == 422 and reused.json()["code"] == "idempotency-key-reused", reused.text
    bad = c.post(f"/jobs/{other}/retry", headers={"Idempotency-Key": " "})
    assert bad.status_code == 422 and bad.json()["errors"][0]["loc"] == ["header", "Idempotency-Key"]
    assert c.get(f"/jobs/{other}").json()["status"] == "failed"  # refused: nothing changed
    with Client(http_client=c) as sdk:  # the SDK sends the key and marks the resend
        first = sdk.retry(other, idempotency_key="retry-8")
        assert first["status"] == "pending" and not first.replayed
        assert wait_done(c, other)["status"] == "failed"
        again = sdk.retry(other, idempotency_key="retry-8")
        assert again.replayed and again["status"] == "failed"


@pytest.mark.parametrize("how", ["one", "bulk"])
def test_deleting_a_job_deletes_the_signals_sent_to_it(app: RunningApp, how: str) -> None:
    c = app.client
    job = submit(c, "jobserver.examples.add", {"a": 1, "b": 1}, delay=3600)
    assert c.post(f"/jobs/{job['id']}/signals/approve", json={"card": "4242"}).status_code == 202
    assert c.post(f"/jobs/{job['id']}/cancel").status_code == 202
    if how == "one":
        assert c.delete(f"/jobs/{job['id']}").status_code == 204
    else:
        r = c.post("/jobs/delete", json={"ids": [job["id"]]})
        assert r.status_code == 200 and r.json()["count"] == 1, r.text
    with sqlite3.connect(f"file:{app.db_path}?mode=ro", uri=True) as db:
        assert db.execute("SELECT COUNT(*) FROM signals WHERE job_id = ?", (job["id"],)).fetchone() == (0,)


def test_a_retried_async_job_starts_while_every_worker_thread_is_busy(tmp_path: Path) -> None:
    """The async feeder claims it at once; the thread that could wake it is busy, and the next
    poll is half a minute away."""
    started, release = tmp_path / "started", tmp_path / "release"
    with running_app(tmp_path, config={"workers": {"threads": 1, "poll_interval": "30s"}}) as app:
        c = app.client
        later = submit(c, "jobserver.examples.async_sleep", {"seconds": 0}, delay=3600)
        assert c.post(f"/jobs/{later['id']}/cancel").status_code == 202
        submit(c, "tests.e2e_tasks.block_until_file", {"started": str(started), "release": str(release)})
        wait_until(started.exists, 10, message="the one worker thread busy")
        try:
            assert c.post(f"/jobs/{later['id']}/retry").status_code == 202
            assert c.get(f"/jobs/{later['id']}", params={"wait": 10}).json()["status"] == "completed"
        finally:
            release.touch()


def test_cancel_pending_never_runs(app: RunningApp, tmp_path: Path) -> None:
    c = app.client
    marker = tmp_path / "ran.txt"
    job = submit(c, "tests.e2e_tasks.record", {"path": str(marker), "value": "x"}, delay=0.5)
    r = c.post(f"/jobs/{job['id']}/cancel")
    assert r.status_code == 202 and r.json()["status"] == "cancelled"
    # a later job that runs after the delayed one was due proves the cancelled one was skipped
    after = submit(c, "jobserver.examples.add", {"a": 1, "b": 1}, delay=0.8)
    wait_done(c, after["id"])
    assert not marker.exists()


def test_tasks_health_ready(app: RunningApp) -> None:
    c = app.client
    tasks = {t["name"]: t for t in c.get("/tasks").json()["tasks"]}
    add = tasks["jobserver.examples.add"]
    assert set(add["args_schema"]["properties"]) == {"a", "b"}
    assert "ctx" not in tasks["jobserver.examples.sleep"]["args_schema"]["properties"]
    assert tasks["jobserver.examples.flaky"]["options"]["max_attempts"] == 3
    assert c.get("/healthz").status_code == 200
    ready = c.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"]["database"] == "ok"


def test_healthz_answers_while_every_worker_is_busy(app: RunningApp, tmp_path: Path) -> None:
    c = app.client
    started, release = tmp_path / "started", tmp_path / "release"
    for _ in range(4):
        submit(c, "tests.e2e_tasks.block_until_file", {"started": str(started), "release": str(release)})
    wait_until(lambda: has_line(started) and len(started.read_text().splitlines()) == 4)
    for _ in range(20):
        assert c.get("/healthz", timeout=1).status_code == 200
    job = submit(c, "jobserver.examples.add", {"a": 1, "b": 1})
    assert c.get(f"/jobs/{job['id']}", timeout=1).json()["status"] == "pending"
    release.touch()
    assert wait_done(c, job["id"])["status"] == "completed"


def test_the_server_checkpoints_its_log_into_the_file_while_it_runs(app: RunningApp) -> None:
    """The maintenance pass copies the write-ahead log into the database file soon after
    writes (the commits no longer do it themselves, and a log is otherwise copied only once it
    holds 16 MiB)."""
    c = app.client
    db_file = app.db_path
    before = db_file.stat().st_size
    answer = c.post("/jobs/batch", json={"jobs": [{"task": "jobserver.examples.noop"}] * 500})
    assert answer.status_code == 202
    wait_until(lambda: db_file.stat().st_size > before + 200_000, 10, message="a checkpoint into the file")


def test_every_cancelled_job_says_cancelled_in_its_error(app: RunningApp) -> None:
    """Running or not when the cancel came, one, a tree's or a bulk action's: `error.type` is
    `Cancelled`, never null and never an earlier attempt's error."""
    c = app.client
    delayed = submit(c, "jobserver.examples.add", {"a": 1, "b": 1}, delay=60)
    retrying = submit(c, "tests.e2e_tasks.retry_later", {"delay": 60})
    # pending again, its next attempt a minute away, with the first attempt's error
    wait_until(lambda: c.get(f"/jobs/{retrying['id']}").json()["error"] is not None)
    assert c.get(f"/jobs/{retrying['id']}").json()["status"] == "pending"
    in_bulk = submit(c, "jobserver.examples.add", {"a": 2, "b": 2}, delay=60)
    assert c.post(f"/jobs/{delayed['id']}/cancel").status_code == 202
    assert c.post(f"/jobs/{retrying['id']}/cancel").status_code == 202
    r = c.post("/jobs/cancel", json={"ids": [in_bulk["id"]]})
    assert r.status_code == 200 and r.json()["count"] == 1, r.text
    for job in (delayed, retrying, in_bulk):
        done = wait_done(c, job["id"])
        assert done["status"] == "cancelled"
        assert done["error"]["type"] == "Cancelled" and done["error"]["message"] == "the job was cancelled"


def test_a_summary_list_leaves_out_args_result_and_traceback(app: RunningApp) -> None:
    """`GET /jobs?fields=summary`: the rows a list view shows, without the fields that can be
    large; the default answer is unchanged, and an unknown value is refused like any filter."""
    c = app.client
    done = submit(c, "jobserver.examples.add", {"a": 2, "b": 3})
    broken = submit(c, "jobserver.examples.fail", {"message": "boom"})
    full = {j["id"]: j for j in (wait_done(c, done["id"]), wait_done(c, broken["id"]))}
    assert full[broken["id"]]["error"]["traceback"]

    listed = c.get("/jobs", params={"fields": "summary"})
    assert listed.status_code == 200, listed.text
    rows = {j["id"]: j for j in listed.json()["jobs"]}
    assert set(rows) == set(full)
    for job_id, row in rows.items():
        assert "args" not in row and "result" not in row, row
        assert row == {
            k: v for k, v in full[job_id].items() if k not in ("args", "result", "error", "steps")
        } | {"error": row["error"]}
    assert rows[broken["id"]]["error"] == {"type": "RuntimeError", "message": "boom"}
    assert rows[done["id"]]["error"] is None

    for params in ({}, {"fields": "full"}):
        whole = {j["id"]: j for j in c.get("/jobs", params=params).json()["jobs"]}
        assert whole[done["id"]]["result"] == 5 and whole[done["id"]]["args"] == {"a": 2, "b": 3}
        assert whole[broken["id"]]["error"]["traceback"] == full[broken["id"]]["error"]["traceback"]

    refused = c.get("/jobs", params={"fields": "tiny"})
    assert refused.status_code == 422, refused.text
    assert "fields" in refused.text
    doc = c.get("/openapi.json").json()
    param = {p["name"]: p for p in doc["paths"]["/jobs"]["get"]["parameters"]}["fields"]
    assert param["schema"]["enum"] == ["full", "summary"]
