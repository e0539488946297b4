"""API keys and request limits through the HTTP API; the real app in-process (tests/inproc.py),
and one event-stream test against the server process.

What the HTTP server itself does with huge bodies is in test_http_limits_e2e.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from jobserver.core.errors import ConfigError
from tests.inproc import RunningApp, running_app, settings_for

ADD = "jobserver.examples.add"


def assert_unauthorized(r: httpx.Response) -> None:
    assert r.status_code == 401, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert r.headers["www-authenticate"].startswith("Bearer")
    doc = r.json()
    assert doc["status"] == 401 and doc["title"] and doc["detail"] and doc["type"]


@pytest.fixture
def keyed(tmp_path: Path) -> Iterator[RunningApp]:
    with running_app(tmp_path, config={"auth": {"api_keys": ["k1", "k2"]}}) as app:
        yield app


def test_every_route_needs_a_key_but_health_and_the_dashboard(keyed: RunningApp) -> None:
    anonymous, wrong = keyed.new_client(), keyed.new_client("nope")
    for method, path in [
        ("GET", "/jobs"),
        ("POST", "/jobs"),
        ("GET", "/jobs/x"),
        ("DELETE", "/jobs/x"),
        ("POST", "/jobs/x/cancel"),
        ("POST", "/jobs/x/retry"),
        ("GET", "/jobs/x/events"),
        ("GET", "/jobs/x/webhooks"),
        ("GET", "/tasks"),
        ("GET", "/readyz"),
        ("GET", "/metrics"),
        ("GET", "/openapi.json"),
    ]:
        assert_unauthorized(anonymous.request(method, path))
        assert_unauthorized(wrong.request(method, path))
    assert_unauthorized(anonymous.get("/jobs", headers={"Authorization": "k1"}))  # not a Bearer credential
    assert_unauthorized(anonymous.get("/jobs", headers={"Authorization": "Basic azE6"}))
    assert_unauthorized(anonymous.get("/jobs", headers={"Authorization": "Bearer k1x"}))
    for pair in (["Bearer k1", "Bearer wrong"], ["Bearer wrong", "Bearer k1"]):  # never the last one wins
        assert_unauthorized(anonymous.get("/jobs", headers=[("Authorization", v) for v in pair]))
    assert anonymous.get("/healthz").status_code == 200
    page = anonymous.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for key in ("k1", "k2"):
        c = keyed.new_client(key)
        assert c.get("/jobs").status_code == 200
        assert c.get("/readyz").status_code == 200
        assert c.get("/metrics").status_code == 200
        r = c.post("/jobs", json={"task": ADD, "args": {"a": 1, "b": 2}})
        assert r.status_code == 202, r.text
        assert c.get(f"/jobs/{r.json()['id']}", params={"wait": 20}).json()["result"] == 3


def test_event_stream_with_a_key(keyed: RunningApp) -> None:
    c = keyed.new_client("k2")
    job_id = c.post("/jobs", json={"task": ADD, "args": {"a": 2, "b": 2}}).json()["id"]
    assert_unauthorized(keyed.new_client().get(f"/jobs/{job_id}/events"))
    with c.stream("GET", f"/jobs/{job_id}/events") as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        text = r.read().decode()  # the stream ends after the final status
    assert "event: status" in text and '"status":"completed"' in text


def test_idempotency_keys_are_scoped_per_api_key(keyed: RunningApp) -> None:
    body = {"task": ADD, "args": {"a": 5, "b": 5}}
    headers = {"Idempotency-Key": "order-42"}
    first = keyed.new_client("k1").post("/jobs", json=body, headers=headers)
    again = keyed.new_client("k1").post("/jobs", json=body, headers=headers)
    other = keyed.new_client("k2").post("/jobs", json=body, headers=headers)
    assert first.status_code == 202 and other.status_code == 202
    assert again.status_code == 200 and again.headers["idempotent-replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    assert other.json()["id"] != first.json()["id"]
    assert len(keyed.new_client("k1").get("/jobs").json()["jobs"]) == 2


def test_keys_from_the_environment(tmp_path: Path) -> None:
    with running_app(tmp_path, environ={"JOBSERVER_AUTH_API_KEYS": '["k3"]'}) as app:
        assert_unauthorized(app.new_client().get("/jobs"))
        assert_unauthorized(app.new_client("k1").get("/jobs"))
        assert app.new_client("k3").get("/jobs").status_code == 200


def test_args_over_max_args_bytes_are_refused(tmp_path: Path) -> None:
    with running_app(tmp_path, config={"server": {"max_args_bytes": 1000}}) as app:
        c = app.client
        r = c.post(
            "/jobs",
            json={"task": "jobserver.examples.analyze_documents", "args": {"documents": ["x" * 2000]}},
        )
        assert r.status_code == 422, r.text
        assert r.json()["errors"][0]["loc"] == ["body", "args"]
        ok = c.post(
            "/jobs", json={"task": "jobserver.examples.analyze_documents", "args": {"documents": ["x" * 500]}}
        )
        assert ok.status_code == 202
        assert [j["id"] for j in c.get("/jobs").json()["jobs"]] == [ok.json()["id"]]


def test_limit_over_500_is_refused(app: RunningApp) -> None:
    c = app.client
    r = c.get("/jobs", params={"limit": 501})
    assert r.status_code == 422
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["errors"][0]["loc"] == ["query", "limit"]
    assert c.get("/jobs", params={"limit": 500}).status_code == 200


def test_open_paths_open_probes_and_scrapers_on_purpose(tmp_path: Path) -> None:
    config = {"auth": {"api_keys": ["k1"], "open_paths": ["/healthz", "/readyz", "/metrics"]}}
    with running_app(tmp_path, config) as app:
        anonymous = app.new_client()
        assert anonymous.get("/readyz").status_code == 200
        assert anonymous.get("/metrics").status_code == 200
        assert anonymous.get("/healthz").status_code == 200
        assert_unauthorized(anonymous.get("/jobs"))  # everything else still needs the key
        assert_unauthorized(anonymous.get("/readyz/"))  # a path is open exactly, not as a prefix


def test_open_paths_must_be_route_paths(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="open_paths"):
        settings_for(tmp_path, {"auth": {"open_paths": ["readyz"]}})
