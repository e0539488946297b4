"""Webhooks through the app: the real app in-process (tests/inproc.py) delivering to a
real receiver on 127.0.0.1 (tests/receiver.py)."""

from __future__ import annotations

import base64
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from standardwebhooks.webhooks import Webhook

from tests.fakedns import fake_getaddrinfo
from tests.helpers import delivery_state, free_port, submit, wait_until, webhook_attempts
from tests.inproc import RunningApp, running_app
from tests.receiver import Receiver, Reply

SECRET = "whsec_" + base64.b64encode(os.urandom(24)).decode()
SCHEDULE = ["20ms", "40ms", "80ms"]  # three retries, as in the test config, only sooner
ADD = "jobserver.examples.add"


@pytest.fixture
def srv(tmp_path: Path) -> Iterator[RunningApp]:
    with running_app(tmp_path, config={"webhooks": {"secret": SECRET, "retry_schedule": SCHEDULE}}) as app:
        yield app


def test_completed_failed_and_cancelled_jobs_each_deliver_once(srv: RunningApp, receiver: Receiver) -> None:
    c = srv.client
    done = submit(c, "jobserver.examples.add", {"a": 2, "b": 3}, webhook_url=receiver.url("/completed"))
    failed = submit(c, "tests.e2e_tasks.fail_now", {}, webhook_url=receiver.url("/failed"))
    later = submit(
        c, "jobserver.examples.add", {"a": 1, "b": 1}, delay=3600, webhook_url=receiver.url("/cancelled")
    )
    assert c.post(f"/jobs/{later}/cancel").status_code == 202

    for job_id, path, event, status in [
        (done, "/completed", "job.completed", "completed"),
        (failed, "/failed", "job.failed", "failed"),
        (later, "/cancelled", "job.cancelled", "cancelled"),
    ]:
        [req] = receiver.wait_for(1, path)
        Webhook(SECRET).verify(req.body, req.headers)  # raises unless the signature is right
        body = orjson.loads(req.body)
        assert body["type"] == event
        assert body["data"]["id"] == job_id and body["data"]["status"] == status
        assert body["timestamp"].endswith("Z")
        [attempt] = webhook_attempts(c, job_id, 1)
        assert attempt["id"] == req.headers["webhook-id"]
        assert attempt["attempt"] == 1 and attempt["status_code"] == 200 and attempt["error"] is None
        assert delivery_state(srv.db_path, job_id) == ("delivered", 1)  # recorded: it is never sent again
        assert len(receiver.received(path)) == 1
    assert orjson.loads(receiver.received("/completed")[0].body)["data"]["result"] == 5


def test_failing_receiver_gets_the_same_webhook_id_until_it_succeeds(
    srv: RunningApp, receiver: Receiver
) -> None:
    receiver.script("/flaky", Reply(500), Reply(502))
    c = srv.client
    job_id = submit(c, "jobserver.examples.add", {"a": 1, "b": 2}, webhook_url=receiver.url("/flaky"))
    reqs = receiver.wait_for(3, "/flaky")
    assert len({r.headers["webhook-id"] for r in reqs}) == 1
    assert len({r.body for r in reqs}) == 1
    for req in reqs:
        Webhook(SECRET).verify(req.body, req.headers)
    listed = webhook_attempts(c, job_id, 3)
    assert [(a["attempt"], a["status_code"]) for a in listed] == [(1, 500), (2, 502), (3, 200)]
    assert {a["id"] for a in listed} == {reqs[0].headers["webhook-id"]}
    assert all(isinstance(a["duration_ms"], float) and a["duration_ms"] >= 0 for a in listed)
    assert [a["error"] for a in listed][2] is None and "500" in listed[0]["error"]
    assert delivery_state(srv.db_path, job_id) == ("delivered", 3)
    wanted = [
        'jobserver_webhook_deliveries_total{outcome="retrying"} 2.0',
        'jobserver_webhook_deliveries_total{outcome="delivered"} 1.0',
    ]
    wait_until(lambda: all(w in c.get("/metrics").text for w in wanted), 10, message="webhook metrics")


def test_410_stops_retrying(srv: RunningApp, receiver: Receiver) -> None:
    receiver.script("/gone", *[Reply(410)] * 5)
    c = srv.client
    job_id = submit(c, "jobserver.examples.add", {"a": 1, "b": 2}, webhook_url=receiver.url("/gone"))
    [attempt] = webhook_attempts(c, job_id, 1)
    assert attempt["status_code"] == 410
    assert delivery_state(srv.db_path, job_id) == ("failed", 1)
    assert len(receiver.received("/gone")) == 1


@pytest.mark.parametrize("location", ["/landing", "http://169.254.169.254/latest/meta-data/"])
def test_a_redirect_is_a_failure_and_is_not_followed(
    srv: RunningApp, receiver: Receiver, location: str
) -> None:
    target = receiver.url(location) if location.startswith("/") else location
    receiver.script("/moved", *[Reply(302, {"Location": target})] * 10)
    c = srv.client
    job_id = submit(c, "jobserver.examples.add", {"a": 1, "b": 2}, webhook_url=receiver.url("/moved"))
    listed = webhook_attempts(c, job_id, 4)  # the test schedule has 3 retries
    wait_until(
        lambda: delivery_state(srv.db_path, job_id) == ("failed", 4), 10, message="the delivery given up"
    )
    assert [a["status_code"] for a in listed] == [302] * 4
    assert all("redirect" in a["error"] and target in a["error"] for a in listed)
    assert len(receiver.received("/moved")) == 4
    assert receiver.received("/landing") == []  # nothing followed the Location, wherever it pointed


def test_a_slow_receiver_delays_neither_other_jobs_nor_the_api(srv: RunningApp, receiver: Receiver) -> None:
    gate = threading.Event()
    receiver.script("/slow", Reply(200, gate=gate))
    c = srv.new_client(timeout=5)
    try:
        slow = submit(c, "jobserver.examples.add", {"a": 1, "b": 1}, webhook_url=receiver.url("/slow"))
        receiver.wait_for(1, "/slow")  # now held by the receiver
        fast = submit(c, "jobserver.examples.add", {"a": 2, "b": 2}, webhook_url=receiver.url("/fast"))
        plain = submit(c, "jobserver.examples.add", {"a": 3, "b": 3})
        assert c.get(f"/jobs/{plain}", params={"wait": 5}).json()["status"] == "completed"
        receiver.wait_for(1, "/fast", timeout=5)
        assert webhook_attempts(c, fast, 1, timeout=5)[0]["status_code"] == 200
        assert c.get("/healthz").status_code == 200 and c.get("/jobs").status_code == 200
        assert c.get(f"/jobs/{slow}/webhooks").json()["deliveries"] == []  # still in flight
    finally:
        gate.set()
    assert webhook_attempts(c, slow, 1)[0]["status_code"] == 200


def test_the_list_says_whether_a_delivery_is_still_due(tmp_path: Path, receiver: Receiver) -> None:
    """`pending` holds while the job has not finished or a retry waits, and clears once every
    delivery is made or given up, so a reader can stop polling a list that will not change."""
    receiver.script("/later", Reply(500))
    receiver.script("/gone", Reply(410))
    config = {"webhooks": {"secret": SECRET, "retry_schedule": ["1h"]}}
    with running_app(tmp_path, config=config) as app:
        c = app.client
        waiting = submit(c, "jobserver.examples.add", {"a": 1, "b": 1}, webhook_url=receiver.url("/later"))
        done = submit(c, "jobserver.examples.add", {"a": 1, "b": 2}, webhook_url=receiver.url("/done"))
        gone = submit(c, "jobserver.examples.add", {"a": 1, "b": 3}, webhook_url=receiver.url("/gone"))
        plain = submit(c, "jobserver.examples.add", {"a": 1, "b": 4})
        later = submit(
            c, "jobserver.examples.add", {"a": 1, "b": 5}, delay=3600, webhook_url=receiver.url("/x")
        )
        for job_id in (waiting, done, gone):
            webhook_attempts(c, job_id, 1)
        assert delivery_state(app.db_path, waiting) == ("pending", 1)  # its retry is an hour away
        answers = {
            job_id: c.get(f"/jobs/{job_id}/webhooks").json() for job_id in (waiting, done, gone, plain, later)
        }
        assert answers[waiting]["pending"] is True
        assert answers[done]["pending"] is False and answers[done]["deliveries"][0]["status_code"] == 200
        assert answers[gone]["pending"] is False and answers[gone]["deliveries"][0]["status_code"] == 410
        assert answers[plain] == {"deliveries": [], "pending": False}
        assert answers[later] == {"deliveries": [], "pending": True}  # one is made when it finishes


def test_unknown_job_has_no_webhooks(srv: RunningApp) -> None:
    r = srv.client.get("/jobs/nope/webhooks")
    assert r.status_code == 404
    assert r.headers["content-type"] == "application/problem+json"


FORBIDDEN_URLS = [
    "http://127.0.0.1/hook",
    "http://localhost/hook",
    "http://[::1]/hook",
    "http://10.0.0.1/hook",
    "http://172.16.0.1/hook",
    "http://192.168.1.1/hook",
    "http://169.254.169.254/latest/meta-data/",
    "http://0.0.0.0/hook",
    "http://[::ffff:127.0.0.1]/hook",
    "http://2130706433/",
]


def test_forbidden_webhook_urls_are_refused_at_submit(tmp_path: Path) -> None:
    with running_app(tmp_path, config={"webhooks": {"allow_hosts": []}}) as app:  # the shipped defaults
        c = app.client
        for url in FORBIDDEN_URLS:
            r = c.post(
                "/jobs", json={"task": "jobserver.examples.add", "args": {"a": 1, "b": 2}, "webhook_url": url}
            )
            assert r.status_code == 422, (url, r.text)
            assert r.headers["content-type"] == "application/problem+json"
            assert any("webhook_url" in e["loc"] for e in r.json()["errors"]), (url, r.json())
        assert c.get("/jobs").json()["jobs"] == []


def test_refusal_at_submit_does_not_reveal_the_resolved_address(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(socket, "getaddrinfo", fake_getaddrinfo({"rel-internal.test": ["10.1.2.3"]}))
    with running_app(tmp_path, config={"webhooks": {"allow_hosts": []}}) as app:
        r = app.client.post(
            "/jobs",
            json={
                "task": "jobserver.examples.add",
                "args": {"a": 1, "b": 2},
                "webhook_url": "http://rel-internal.test/hook",
            },
        )
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert "rel-internal.test" in r.json()["detail"]
    assert "10.1.2.3" not in r.text


def test_a_webhook_may_not_call_the_servers_own_api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Loopback is allowed (the test config's allow_hosts), yet a webhook_url at the server's own
    listening address is refused at submit, naming only the host given; a name that resolved
    elsewhere at submit and resolves to it at delivery gets no request either."""
    names = {"flip.test": ["93.184.216.34"]}
    monkeypatch.setattr(socket, "getaddrinfo", fake_getaddrinfo(names, localhost=True))
    port = free_port()
    config = {"server": {"port": port}, "webhooks": {"retry_schedule": SCHEDULE}}
    with running_app(tmp_path, config=config) as app:
        c = app.client
        target = submit(c, ADD, {"a": 1, "b": 2}, delay=3600)
        for host in ("127.0.0.1", "localhost"):
            url = f"http://{host}:{port}/jobs/{target}/cancel"
            job = {"task": ADD, "args": {"a": 1, "b": 2}, "webhook_url": url}
            r = c.post("/jobs", json=job)
            assert r.status_code == 422 and r.json()["code"] == "webhook-url-refused", r.text
            assert f"{host}:{port} is this server's own API" in r.json()["errors"][0]["msg"], r.text
            r = c.post("/jobs/batch", json={"jobs": [job]})
            assert r.status_code == 422 and r.json()["errors"][0]["loc"] == ["body", "jobs", 0, "webhook_url"]
        assert c.post(f"/tasks/{ADD}/pause").status_code == 200
        rebound = submit(
            c, ADD, {"a": 1, "b": 2}, webhook_url=f"http://flip.test:{port}/jobs/{target}/cancel"
        )
        names["flip.test"] = ["127.0.0.1"]
        assert c.post(f"/tasks/{ADD}/resume").status_code == 200
        attempt = webhook_attempts(c, rebound, 1)[0]
        assert attempt["status_code"] is None and "flip.test" in attempt["error"], attempt
        assert "is this server's own API" in attempt["error"], attempt
        assert c.get(f"/jobs/{target}").json()["status"] == "pending"
