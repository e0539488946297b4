"""The SDK (`jobserver.client.sdk`) against the real app in-process (tests/inproc.py):
the SDK is handed Starlette's TestClient as its `httpx.Client`.

One app serves the whole module; tests that would disturb it (auth) open their
own. Waits are the SDK's own bounded waits, never sleeps. Submitting while the
server drains on SIGTERM is in test_client_e2e.py.
"""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import pickle
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

from jobserver.client.protocol import Call, events_request, request
from jobserver.client.sdk import Client, ClientError, Event, Job, UnauthorizedError, parse_sse
from jobserver.client.transport import Connection, EventResumer
from jobserver.core.errors import (
    IdempotencyMismatchError,
    InvalidRequestError,
    JobFinishedError,
    JobNotFinishedError,
    JobNotFoundError,
    JobNotRetryableError,
    JobServerError,
    ScheduleNotFoundError,
    ServerUnavailableError,
    SignalConflictError,
    TaskNotFoundError,
    WaitTimeoutError,
)
from tests.helpers import wait_until
from tests.inproc import RunningApp, running_app, served_app

ADD = "jobserver.examples.add"
FAIL = "jobserver.examples.fail"
NOOP = "jobserver.examples.noop"  # only test_list_pages_and_iter_jobs submits it
WAIT_S = 30.0


@pytest.fixture
def client(shared_app: RunningApp) -> Iterator[Client]:
    with Client(http_client=shared_app.client) as c:
        yield c


def test_submit_then_wait_returns_the_result(client: Client) -> None:
    job = client.submit(ADD, {"a": 2, "b": 3})

    assert isinstance(job, Job) and not job.replayed
    assert job["task"] == ADD and job["args"] == {"a": 2, "b": 3}
    done = client.wait(job["id"], timeout=WAIT_S)
    assert done["status"] == "completed"
    assert done["result"] == 5
    assert client.get(job["id"])["result"] == 5  # reads never consume


def test_same_idempotency_key_and_body_replays_the_first_job(client: Client) -> None:
    first = client.submit(ADD, {"a": 1, "b": 1}, idempotency_key="sdk-replay")
    again = client.submit(ADD, {"b": 1, "a": 1}, idempotency_key="sdk-replay")

    assert not first.replayed
    assert again.replayed
    assert again["id"] == first["id"]
    with pytest.raises(IdempotencyMismatchError) as info:
        client.submit(ADD, {"a": 1, "b": 2}, idempotency_key="sdk-replay")
    assert info.value.key == "sdk-replay"
    assert info.value.status_code == 422
    assert [j["id"] for j in client.list(idempotency_key="sdk-replay")["jobs"]] == [first["id"]]


def test_validation_problems_map_to_invalid_request_with_errors(client: Client) -> None:
    with pytest.raises(InvalidRequestError) as info:
        client.submit(ADD, {"a": "not a number"})
    assert {tuple(e["loc"][-1:]) for e in info.value.errors} == {("a",), ("b",)}
    assert info.value.problem is not None and info.value.problem["code"] == "validation-error"

    with pytest.raises(InvalidRequestError) as info:
        client.submit(ADD, {"a": 1, "b": 2}, delay=5, run_at=dt.datetime.now(dt.UTC))
    assert info.value.errors

    with pytest.raises(TaskNotFoundError) as unknown:
        client.submit("no.such.task")
    assert unknown.value.task == "no.such.task"

    with pytest.raises(ClientError) as too_large:
        client.submit(ADD, {"a": "x" * 1_100_000, "b": 1})
    assert too_large.value.problem is not None
    assert (too_large.value.status_code, too_large.value.problem["code"]) == (413, "body-too-large")


def test_unknown_job_raises_job_not_found_everywhere(client: Client) -> None:
    calls: list[Callable[[str], object]] = [
        client.get,
        client.cancel,
        client.retry,
        client.delete,
        lambda i: list(client.events(i)),
    ]
    for call in calls:
        with pytest.raises(JobNotFoundError) as info:
            call("no-such-job")
        assert info.value.job_id == "no-such-job"
        assert info.value.status_code == 404


def test_delayed_job_stays_pending_then_cancels(client: Client) -> None:
    job = client.submit(ADD, {"a": 1, "b": 2}, delay=3600)

    with pytest.raises(WaitTimeoutError) as gave_up:
        client.wait(job["id"], timeout=0.2)
    assert (gave_up.value.job_id, gave_up.value.job["status"]) == (job["id"], "pending")  # as last read
    with pytest.raises(JobNotFinishedError):
        client.delete(job["id"])
    assert client.cancel(job["id"])["status"] == "cancelled"
    with pytest.raises(JobFinishedError) as info:
        client.cancel(job["id"])
    assert (info.value.job_id, info.value.status) == (job["id"], "cancelled")
    client.delete(job["id"])
    with pytest.raises(JobNotFoundError):
        client.get(job["id"])


def test_failed_job_can_be_retried(client: Client) -> None:
    job = client.submit(FAIL, {"message": "sdk says no"})
    failed = client.wait(job["id"], timeout=WAIT_S)
    assert failed["status"] == "failed"
    assert failed["error"]["message"] == "sdk says no"

    again = client.retry(job["id"])
    assert again["status"] == "pending" and again["attempts"] == 0 and again["error"] is None
    assert client.wait(job["id"], timeout=WAIT_S)["status"] == "failed"

    done = client.wait(client.submit(ADD, {"a": 0, "b": 0})["id"], timeout=WAIT_S)
    with pytest.raises(JobNotRetryableError) as info:
        client.retry(done["id"])
    assert info.value.status == "completed"


def test_list_pages_and_iter_jobs(client: Client) -> None:
    ids = [client.submit(NOOP, delay=3600)["id"] for _ in range(5)]
    newest_first = ids[::-1]

    page = client.list(task=NOOP, limit=2)
    assert [j["id"] for j in page["jobs"]] == newest_first[:2]
    assert page["next_cursor"]
    second = client.list(task=NOOP, limit=2, cursor=page["next_cursor"])
    assert [j["id"] for j in second["jobs"]] == newest_first[2:4]

    summary = client.list(task=NOOP, limit=2, fields="summary")["jobs"]
    assert [j["id"] for j in summary] == newest_first[:2] and all("args" not in j for j in summary)
    assert all("args" in j for j in page["jobs"])
    assert [j["id"] for j in client.iter_jobs(task=NOOP, page_size=2)] == newest_first
    assert [j["id"] for j in client.iter_jobs(task=NOOP, status="completed")] == []
    with pytest.raises(InvalidRequestError):
        client.list(limit=501)
    for job_id in ids:
        client.cancel(job_id)


def test_tasks_lists_registered_tasks_with_their_schema(client: Client) -> None:
    tasks = {t["name"]: t for t in client.tasks()}

    assert set(tasks[ADD]["args_schema"]["properties"]) == {"a", "b"}
    assert "options" in tasks[ADD]


def test_events_of_a_finished_job_end_with_its_terminal_status(client: Client) -> None:
    job = client.submit(ADD, {"a": 20, "b": 22})
    client.wait(job["id"], timeout=WAIT_S)

    events = list(client.events(job["id"]))
    assert events and all(isinstance(e, Event) for e in events)
    last = events[-1]
    assert (last.event, last.data["status"], last.data["result"]) == ("status", "completed", 42)
    assert [int(e.id or 0) for e in events] == sorted({int(e.id or 0) for e in events})
    resumed = list(client.events(job["id"], last_event_id=events[0].id))
    assert resumed == events[1:]


def test_events_of_a_retried_job_follow_the_rerun(client: Client) -> None:
    job = client.submit(FAIL, {"message": "twice"})
    client.wait(job["id"], timeout=WAIT_S)
    client.retry(job["id"])
    client.wait(job["id"], timeout=WAIT_S)

    statuses = [e.data["status"] for e in client.events(job["id"]) if e.event == "status"]
    assert statuses == ["pending", "running", "failed", "pending", "running", "failed"]


def test_a_given_http_client_is_used_and_left_open(shared_app: RunningApp) -> None:
    with TestClient(shared_app.asgi_app) as http:
        with Client("http://unused.invalid", http_client=http) as c:
            assert c.tasks()
        assert http.get("/healthz").status_code == 200


def test_api_keys_are_sent_as_bearer_tokens(tmp_path: Path) -> None:
    with running_app(tmp_path, config={"auth": {"api_keys": ["k1"]}}) as app:
        messages = set()
        for key in (None, "wrong"):
            with Client(api_key=key, http_client=app.client) as c, pytest.raises(UnauthorizedError) as info:
                c.submit(ADD, {"a": 1, "b": 1})
            assert info.value.status_code == 401 and isinstance(info.value, ClientError)
            assert info.value.problem is not None and info.value.problem["code"] == "unauthorized"
            assert info.value.key_sent is (key is not None)
            messages.add(str(info.value))
        assert any("needs an API key" in m for m in messages)
        assert any("refused the API key" in m for m in messages)
        with Client(api_key="k1", http_client=app.client) as c:
            job = c.submit(ADD, {"a": 1, "b": 1})
            assert c.wait(job["id"], timeout=WAIT_S)["result"] == 2


def test_parse_sse_joins_data_lines_and_skips_comments() -> None:
    lines = [
        ": keepalive",
        "",
        "id: 7",
        "event: log",
        'data: {"message":',
        'data: "hi"}',
        "",
        "data: plain text",
        "",
        "id: 9",
        "event: status",
    ]
    assert list(parse_sse(lines)) == [
        Event("7", "log", {"message": "hi"}),
        Event("7", "message", "plain text"),  # the last id carries over, per the SSE spec
    ]


def test_errors_without_a_problem_document_raise_client_error() -> None:
    def gateway(request: httpx.Request) -> httpx.Response:
        return httpx.Response(502, text="<html>bad gateway</html>", headers={"content-type": "text/html"})

    with (
        Client("http://jobs.example", transport=httpx.MockTransport(gateway)) as c,
        pytest.raises(ClientError) as info,
    ):
        c.get("x")
    assert info.value.status_code == 502
    assert "bad gateway" in str(info.value)
    assert isinstance(info.value, JobServerError)


def test_a_url_ending_with_a_path_of_the_api_is_named_as_the_cause_not_an_empty_job_id(
    shared_app: RunningApp,
) -> None:
    """`http://host:8000/jobs` (copied from a browser) sends GET /jobs/stats, which the server
    reads as the job `stats`: the error said "no job with id ''" of a call that names no job."""
    with (
        TestClient(shared_app.asgi_app, base_url="http://testserver/jobs") as http,
        Client(http_client=http) as c,
    ):
        for call in (c.stats, c.limits, c.schedules, c.task_overview):
            with pytest.raises(ClientError) as misrouted:
                call()
            said = str(misrouted.value)
            assert not isinstance(misrouted.value, JobNotFoundError) and "''" not in said, said
            assert "names no job" in said and "URL end with a path of the API" in said, said
            assert (
                misrouted.value.status_code == 404
                and (misrouted.value.problem or {}).get("code") == "job-not-found"
            )
        # `list` sends GET /jobs/jobs?limit=50: the job route refuses its query before its id
        with pytest.raises(ClientError) as refused:
            c.list()
        said = str(refused.value)
        assert not isinstance(refused.value, InvalidRequestError) and refused.value.status_code == 422, said
        assert "invalid query: limit" in said and "URL end with a path of the API" in said, said


def test_an_error_page_from_another_server_reads_as_words_and_asks_whether_it_is_a_jobserver() -> None:
    """`--url` naming another HTTP server (`python -m http.server`): its error page's words,
    not its markup, and a hint that the URL may name something else than a jobserver."""
    page = (
        "<!DOCTYPE HTML>\n<html><head><style>p {color: red}</style><title>Error response</title></head>"
        "<body><h1>Error response</h1><p>Message: File not found.</p></body></html>"
    )

    def other(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, text=page, headers={"content-type": "text/html;charset=utf-8"})

    with (
        Client("http://127.0.0.1:9", transport=httpx.MockTransport(other), retries=0) as c,
        pytest.raises(ClientError) as info,
    ):
        c.get("x")
    message = str(info.value)
    assert "<" not in message and "color" not in message and "Message: File not found." in message
    assert "is http://127.0.0.1:9 a jobserver?" in message and info.value.status_code == 404


def test_signal_resumes_a_waiting_job_and_repeats_are_idempotent(
    client: Client, shared_app: RunningApp
) -> None:
    marks = shared_app.tmp_path / "signal-marks"
    job = client.submit("tests.e2e_tasks.approval", {"path": str(marks)})

    def parked() -> bool:
        return bool(client.get(job["id"])["status"] == "waiting")

    wait_until(parked, WAIT_S, message="the job to wait for its signal")
    sent = client.signal(job["id"], "approve", {"ok": True})
    assert not sent.replayed and sent["id"] == job["id"]
    assert client.signal(job["id"], "approve", {"ok": True}).replayed
    with pytest.raises(SignalConflictError) as conflict:
        client.signal(job["id"], "approve", {"ok": False})
    assert conflict.value.status_code == 409 and conflict.value.name == "approve"
    done = client.wait(job["id"], timeout=WAIT_S)
    assert done["result"] == {"answer": {"ok": True}, "attempt": 1}
    with pytest.raises(JobFinishedError):
        client.signal(job["id"], "other", 1)


def test_a_signal_without_a_payload_sends_null(client: Client, shared_app: RunningApp) -> None:
    job = client.submit("tests.e2e_tasks.approval", {"path": str(shared_app.tmp_path / "null-marks")})
    wait_until(lambda: client.get(job["id"])["status"] == "waiting", WAIT_S, message="the wait")
    assert not client.signal(job["id"], "approve").replayed
    assert client.wait(job["id"], timeout=WAIT_S)["result"] == {"answer": None, "attempt": 1}
    with pytest.raises(JobNotFoundError):
        client.signal("no-such-job", "approve")  # the job is looked up, not the body refused


@pytest.mark.parametrize("name", [".", "..", "a/../b"])
def test_a_signal_name_no_task_can_wait_for_is_refused_as_the_server_refuses_it(
    client: Client, shared_app: RunningApp, name: str
) -> None:
    """Sent as is, `.` and `..` would be taken out of the path (`/jobs/ID/signals/..` is
    `/jobs/ID`): the caller would read "POST is not allowed" about another route."""
    job = client.submit("tests.e2e_tasks.wait_named", {"name": "go"})
    with pytest.raises(InvalidRequestError) as refused:
        client.signal(job["id"], name, 1)
    assert "no '.' or '..'" in str(refused.value) and refused.value.errors[0]["loc"] == ["path", "name"]
    assert not client.signal(job["id"], "go", 1).replayed  # nothing was kept before
    assert client.wait(job["id"], timeout=WAIT_S)["result"] == 1


def test_what_cannot_be_sent_is_refused_before_sending(client: Client) -> None:
    """Each is an InvalidRequestError raised by the client, never a traceback from the HTTP
    library or a request that names another resource."""
    refused: list[Callable[[], object]] = [
        lambda: client.submit(ADD, {"a": float("nan"), "b": 1}),  # not JSON
        lambda: client.submit(ADD, {"a": 1, "b": 1}, idempotency_key="ключ"),  # not ASCII
        lambda: client.delete(""),  # /jobs/ would be the list
        lambda: client.get(""),
        lambda: client.wait("x", timeout=float("nan")),  # would poll without pause
        lambda: client.get("x", wait=-1),
        lambda: Client("127.0.0.1:8000"),  # no scheme
        lambda: Client("http://127.0.0.1:8000/?page=2"),  # each call's path would go after it
        lambda: Client("http://127.0.0.1:8000#top"),
        lambda: Client("http://127.0.0.1:99999"),  # no such port: not "cannot reach"
        lambda: Client("http://127.0.0.1:1", api_key="line\nbreak"),
        lambda: client.cancel_many(ids="abc"),  # would be the ids a, b and c
    ]
    for call in refused:
        with pytest.raises(InvalidRequestError):
            call()


def test_an_answer_from_something_else_than_the_api_is_an_error() -> None:
    """A redirect (the URL names a page, not the API) or a success that is not JSON (another
    server): a ClientError, never a success nor a JSON decoding traceback."""
    answers = {
        "/jobs/x": httpx.Response(301, headers={"location": "https://elsewhere/jobs/x"}),
        "/jobs": httpx.Response(
            200, text="<html>a proxy's page</html>", headers={"content-type": "text/html"}
        ),
    }
    transport = httpx.MockTransport(lambda request: answers[request.url.path])
    with Client("http://127.0.0.1:9", transport=transport, retries=0) as c:
        with pytest.raises(ClientError) as moved:
            c.delete("x")
        assert moved.value.status_code == 301 and "redirect to 'https://elsewhere/jobs/x'" in str(moved.value)
        with pytest.raises(ClientError) as foreign:
            c.list()
        assert "not JSON (text/html)" in str(foreign.value)


def test_submit_many_queues_all_or_nothing(client: Client) -> None:
    jobs = client.submit_many(
        [{"task": ADD, "args": {"a": i, "b": i}, "idempotency_key": f"many-{i}"} for i in range(3)]
    )
    assert [client.wait(j["id"], timeout=WAIT_S)["result"] for j in jobs] == [0, 2, 4]
    again = client.submit_many([{"task": ADD, "args": {"a": 0, "b": 0}, "idempotency_key": "many-0"}])
    assert again[0]["id"] == jobs[0]["id"]
    with pytest.raises(InvalidRequestError) as bad:
        client.submit_many(
            [{"task": ADD, "args": {"a": 1, "b": 1}}, {"task": ADD, "args": {"a": "x", "b": 1}}]
        )
    assert bad.value.errors[0]["loc"] == ["body", "jobs", 1, "args", "a"]


def test_every_error_a_client_raises_is_importable_from_the_client_package() -> None:
    import jobserver.client as sdk
    from jobserver.core import errors

    for name in ("WaitTimeoutError", "ServerUnavailableError", "InvalidRequestError", "JobNotFoundError"):
        assert getattr(sdk, name) is getattr(errors, name)  # the server's own classes: one to catch
    assert sdk.UnauthorizedError is UnauthorizedError and sdk.ClientError is ClientError
    assert set(sdk.__all__) <= set(dir(sdk))


def test_an_event_stream_that_ends_empty_once_is_asked_again_before_it_counts_as_over() -> None:
    """A stopping server ends its streams with nothing: the SDK must not take that for the job's
    end (the next connection meets the drain's 503, or the server back again)."""
    resumer = EventResumer(Connection("http://127.0.0.1:1", None, 5, 3), "job-1", "7", True)
    resumer.request()
    assert not resumer.over()  # ended with nothing: once is not enough
    resumer.request()
    resumer.seen(Event("8", "progress", {"current": 1}))
    assert not resumer.over()  # events, but not the end: go on
    resumer.request()
    assert not resumer.over()
    resumer.request()
    assert resumer.over()  # twice in a row with nothing: the job was over before the cursor
    done = EventResumer(Connection("http://127.0.0.1:1", None, 5, 3), "job-1", None, True)
    done.request()
    done.seen(Event("9", "status", {"status": "completed"}))
    assert done.over()


def test_a_watch_reconnects_for_its_window_only_once_it_has_had_events() -> None:
    """A watch that has had events rides a restart (the window); one that never reached the
    server fails as any request does, after the client's retries."""
    refused = httpx.ConnectError("refused")
    request = events_request("job-1", None)
    never = EventResumer(Connection("http://127.0.0.1:1", None, 5, 0), "job-1", None, True, 30.0)
    with pytest.raises(ServerUnavailableError):
        never.dropped(request, refused)
    watching = EventResumer(Connection("http://127.0.0.1:1", None, 5, 0), "job-1", None, True, 30.0)
    watching.seen(Event("3", "status", {"status": "waiting"}))
    pauses = [watching.dropped(request, refused) for _ in range(8)]
    assert pauses[:4] == [0.1, 0.2, 0.4, 0.8] and max(pauses) == 1.0  # doubling, at most 1 s apart
    over = EventResumer(Connection("http://127.0.0.1:1", None, 5, 0), "job-1", "3", True, 0.0)
    with pytest.raises(ServerUnavailableError):
        over.dropped(request, refused)  # no window: the client's retries alone


def test_a_wait_poll_is_sent_again_through_a_restart_once_the_server_has_answered() -> None:
    """wait()'s polls ride a restart, within their window; a client that never reached the
    server, and any other request, fail after the client's retries (none here)."""
    conn = Connection("http://127.0.0.1:1", None, 5, 0)
    refused = httpx.ConnectError("refused")
    poll = request("GET", "/jobs/j", Call("get", "j"), reconnect_for_s=30.0)
    with pytest.raises(ServerUnavailableError):
        conn.retry_delay_s(poll, 1, refused, 0.0)  # never reached: a wrong URL, not a restart
    conn.checked(httpx.Response(200, json={}), Call("get", "j"))
    assert conn.retry_delay_s(poll, 1, refused, 0.0) == 0.1
    assert conn.retry_delay_s(poll, 9, refused, 29.5) == 0.5  # no pause past the window
    with pytest.raises(ServerUnavailableError):
        conn.retry_delay_s(poll, 40, refused, 30.0)
    with pytest.raises(ServerUnavailableError):
        conn.retry_delay_s(request("GET", "/jobs/j", Call("get", "j")), 1, refused, 0.0)


def test_a_keyed_submit_waits_for_the_first_request_with_its_key_and_gets_its_job(app: RunningApp) -> None:
    """A double click, or the SDK's own resend after a timeout, meets the first request still in
    flight (409): the SDK waits for it and answers with its job, as the key promises."""
    body: dict[str, Any] = {"task": "jobserver.examples.add", "args": {"a": 1, "b": 2}}
    answers: list[int] = []
    app.client.event_hooks["response"].append(lambda r: answers.append(r.status_code))
    lock = sqlite3.connect(app.db_path, isolation_level=None)
    lock.execute("BEGIN IMMEDIATE")  # the first submit's commit waits behind it
    try:
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            first = pool.submit(app.client.post, "/jobs", json=body, headers={"Idempotency-Key": "click"})
            inflight = app.runtime.parts.commands._inflight_keys  # the key the first request holds
            wait_until(lambda: len(inflight) == 1, message="the first submit to be in flight")
            answers.clear()
            with Client(http_client=app.client) as c:
                second = pool.submit(c.submit, body["task"], body["args"], idempotency_key="click")
                wait_until(lambda: 409 in answers, message="the SDK's submit to meet the first one")
                lock.execute("COMMIT")
                job = second.result(10)
            assert first.result(10).status_code == 202
    finally:
        if lock.in_transaction:
            lock.execute("COMMIT")
        lock.close()
    assert job.replayed
    assert job["id"] == first.result(10).json()["id"]


def test_what_no_job_id_or_event_id_can_be_is_refused_before_it_is_sent(client: Client) -> None:
    job = client.submit(ADD, {"a": 1, "b": 1})
    sent: list[str] = []
    client._http.event_hooks["request"].append(lambda r: sent.append(str(r.url)))
    for odd in (job["id"] + "/webhooks", f"{job['id']}/../{job['id']}", "..", "a b"):
        with pytest.raises(JobNotFoundError):
            client.get(odd)
    for bad in ("abc", "-1", "9" * 5000, "1.5"):
        with pytest.raises(InvalidRequestError):
            list(client.events(job["id"], last_event_id=bad))
    # a dot segment leaves the path before the server sees it, and a "/" (sent as %2F) is
    # decoded before routing: `a/b` would reach the route of /schedules/a/b
    for odd in (".", "..", "nightly/pause", "a/b"):
        with pytest.raises(ScheduleNotFoundError):
            client.schedule(odd)
        with pytest.raises(ScheduleNotFoundError):
            client.pause_schedule(odd)
        with pytest.raises(ScheduleNotFoundError):
            client.delete_schedule(odd)
        with pytest.raises(InvalidRequestError, match=r"dot segment|holds a '/'"):
            client.put_schedule(odd, ADD, "* * * * *", {"a": 1, "b": 1})
    for dots in (".", ".."):  # a task's name may hold a "/": the server's route takes the rest
        with pytest.raises(TaskNotFoundError):
            client.pause_task(dots)
    assert sent == []
    assert client.get(job["id"])["id"] == job["id"]
    assert next(e.event for e in client.events(job["id"], last_event_id=" 0 ", follow=False)) == "status"


def test_keys_with_spaces_around_them_are_sent_trimmed_as_the_server_reads_them(tmp_path: Path) -> None:
    """An API key or Idempotency-Key read with a space or tab around it (a file, a form) is the
    key the server compares once trimmed; HTTP cannot carry the space, and a refused header was
    reported as the server being unreachable, after resends. Over a socket: the TestClient
    would carry it."""
    with (
        served_app(tmp_path, {"auth": {"api_keys": ["k1"]}}) as served,
        Client(served.url, api_key="k1 \t", retries=0) as c,
    ):
        first = c.submit(ADD, {"a": 1, "b": 2}, idempotency_key=" order-7\t")
        again = c.submit(ADD, {"a": 1, "b": 2}, idempotency_key="order-7")
        assert again.replayed and again["id"] == first["id"]
        assert first["idempotency_key"] == "order-7"


def test_errors_survive_pickling_with_their_class_and_fields(client: Client) -> None:
    """An error raised in a worker process (multiprocessing, ProcessPoolExecutor) reaches the
    parent pickled: each class takes other `__init__` arguments, and unpickling one called it
    with the message alone (a TypeError, or the message nested in itself)."""
    caught: list[JobServerError] = []
    calls: list[Callable[[], object]] = [
        lambda: client.get("0000"),
        lambda: client.submit(ADD, {"a": "two", "b": 1}),
        lambda: client.wait(delayed["id"], timeout=0),
    ]
    delayed = client.submit(ADD, {"a": 1, "b": 1}, delay=3600)
    for call in calls:
        with pytest.raises(JobServerError) as info:
            call()
        caught.append(info.value)
    client.cancel(delayed["id"])
    caught.append(UnauthorizedError({"status": 401}, key_sent=True))
    for exc in caught:
        copy = pickle.loads(pickle.dumps(exc))
        assert type(copy) is type(exc) and str(copy) == str(exc) and copy.__dict__ == exc.__dict__
    assert [type(e) for e in caught] == [
        JobNotFoundError,
        InvalidRequestError,
        WaitTimeoutError,
        UnauthorizedError,
    ]
