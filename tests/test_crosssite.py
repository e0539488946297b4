"""The cross-site request guard on the real app in-process: what a browser sends for another
site's page (`fetch(url, {method: "POST", mode: "no-cors"})`) changes nothing, on an open
server too; the server's own pages and clients that are not browsers are unaffected; the
dashboard cannot be framed."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobserver.http.crosssite import cross_site
from tests.helpers import submit
from tests.inproc import RunningApp, running_app

ADD = "jobserver.examples.add"
FORGED = [  # what a browser sends with a request another site's page makes
    {"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site", "Content-Type": "text/plain"},
    {"Sec-Fetch-Site": "same-site"},  # a sibling subdomain's page
    {"Origin": "https://evil.example"},  # a browser that sends no Sec-Fetch-Site
    {"Origin": "null"},  # a sandboxed frame or a file: page
    {"Origin": "http://testserver.evil.example"},
]
OWN = [  # the server's own pages, and clients that are not browsers
    {},
    {"Origin": "http://testserver", "Sec-Fetch-Site": "same-origin"},
    {"Origin": "http://testserver"},
    {"Origin": "https://testserver"},  # behind a proxy that terminates TLS
    {"Origin": "https://jobs.example.com", "Sec-Fetch-Site": "same-origin"},  # behind a proxy that sets Host
    {"Sec-Fetch-Site": "none"},  # typed by the user
]


@pytest.mark.parametrize("headers", FORGED)
def test_a_forged_change_is_refused_and_changes_nothing(
    shared_app: RunningApp, headers: dict[str, str]
) -> None:
    c = shared_app.client
    job_id = submit(c, ADD, {"a": 1, "b": 2}, delay=3600)
    changes = [
        ("POST", f"/tasks/{ADD}/pause"),
        ("POST", f"/jobs/{job_id}/cancel"),
        ("DELETE", f"/jobs/{job_id}"),
        ("PUT", "/schedules/forged"),
        ("POST", "/jobs/cancel"),
        ("POST", "/jobs"),
    ]
    for method, path in changes:
        r = c.request(method, path, headers=headers, content=b"{}")
        assert r.status_code == 403, (method, path, r.text)
        assert r.headers["content-type"] == "application/problem+json"
        doc = r.json()
        assert doc["code"] == "cross-site-request" and doc["type"] == "/problems/cross-site-request", doc
        assert method in doc["detail"], doc
    assert c.get(f"/jobs/{job_id}").json()["status"] == "pending"
    assert not any(t["paused"] for t in c.get("/tasks").json()["tasks"])
    assert c.get("/schedules/forged").status_code == 404
    assert c.get("/jobs", headers=headers).status_code == 200  # a read changes nothing: not refused
    assert c.get("/problems/cross-site-request").status_code == 200


@pytest.mark.parametrize("headers", OWN)
def test_the_servers_own_pages_and_programs_still_change_things(
    shared_app: RunningApp, headers: dict[str, str]
) -> None:
    c = shared_app.client
    job_id = submit(c, ADD, {"a": 1, "b": 2}, delay=3600)
    assert c.post(f"/tasks/{ADD}/pause", headers=headers).status_code == 200
    assert c.post(f"/tasks/{ADD}/resume", headers=headers).status_code == 200
    assert c.post(f"/jobs/{job_id}/cancel", headers=headers).status_code == 202
    assert c.delete(f"/jobs/{job_id}", headers=headers).status_code == 204


def test_the_rule_reads_only_the_headers_it_names() -> None:
    assert cross_site([(b"sec-fetch-site", b"Cross-Site")]) is not None
    assert cross_site([(b"origin", b"http://a:8000"), (b"host", b"A:8000")]) is None
    assert cross_site([(b"origin", b"http://a:8000"), (b"host", b"a:8001")]) is not None
    assert cross_site([(b"origin", b"http://a")]) is not None  # no Host to match
    assert cross_site([(b"origin", b"garbage"), (b"host", b"garbage")]) is not None
    assert cross_site([(b"referer", b"https://evil.example/"), (b"host", b"a")]) is None


def test_the_dashboard_cannot_be_framed_and_keeps_its_policy(shared_app: RunningApp) -> None:
    r = shared_app.client.get("/")
    assert r.status_code == 200 and r.headers["x-frame-options"] == "DENY"
    policy = [d.strip() for d in r.headers["content-security-policy"].split(";")]
    assert "frame-ancestors 'none'" in policy
    assert {
        "default-src 'none'",
        "connect-src 'self'",
        "script-src 'unsafe-inline'",
        "form-action 'none'",
    } <= set(policy)
    assert "unsafe-eval" not in r.headers["content-security-policy"]


def forbidden_answers(
    app: RunningApp, headers: dict[str, str] | None = None
) -> dict[tuple[str, str], str | None]:
    """(path, method) -> the response its 403 refers to in /openapi.json, or None."""
    paths = app.client.get("/openapi.json", headers=headers).json()["paths"]
    return {
        (path, method): op["responses"].get("403", {}).get("$ref", "").rpartition("/")[2] or None
        for path, item in paths.items()
        for method, op in item.items()
    }


def test_openapi_lists_a_403_on_every_route_of_an_open_server(shared_app: RunningApp) -> None:
    """An open server refuses any request for a Host not its own, and changes from other sites."""
    answers = forbidden_answers(shared_app)
    for (path, method), name in answers.items():
        unsafe = method in ("post", "put", "patch", "delete")
        assert name == ("CrossSiteOrHostNotAllowed" if unsafe else "HostNotAllowed"), (path, method)
    responses = shared_app.client.get("/openapi.json").json()["components"]["responses"]
    assert "server.allowed_hosts" in responses["HostNotAllowed"]["description"]


REBOUND = "attacker.example"  # a page's own name, pointed at 127.0.0.1 (DNS rebinding)


@pytest.mark.parametrize(
    "host", ["localhost:8000", "127.0.0.1", "127.9.9.9:80", "[::1]:8000", "app.localhost", "testserver"]
)
def test_an_open_server_answers_the_names_of_this_machine(app: RunningApp, host: str) -> None:
    assert app.client.get("/jobs", headers={"Host": host}).status_code == 200


def test_an_open_server_answers_no_other_host_and_changes_nothing(app: RunningApp) -> None:
    """A page that rebinds its own name to this machine is same-origin to the browser: the
    cross-site rules above do not stop it, the name it used does."""
    c = app.client
    job = submit(c, ADD, {"a": 1, "b": 2}, delay=3600)
    for method, path, body in [
        ("GET", "/jobs", None),
        ("GET", "/", None),
        ("POST", f"/jobs/{job}/cancel", None),
    ]:
        r = c.request(method, path, headers={"Host": f"{REBOUND}:8000"}, json=body)
        assert r.status_code == 403 and r.json()["code"] == "host-not-allowed", (method, path, r.text)
        assert REBOUND in r.json()["detail"]
    assert c.get(f"/jobs/{job}").json()["status"] == "pending"


def test_the_host_is_not_checked_with_api_keys_and_a_listed_name_is_answered(tmp_path: Path) -> None:
    for name in ("keys", "listed", "any"):
        (tmp_path / name).mkdir()
    with running_app(tmp_path / "keys", config={"auth": {"api_keys": ["k1"]}}) as keyed:
        r = keyed.client.get("/jobs", headers={"Host": REBOUND, "Authorization": "Bearer k1"})
        assert r.status_code == 200  # the key proves the caller; the page has none
        only_changes_refused(forbidden_answers(keyed, {"Authorization": "Bearer k1"}))
    listed = {"server": {"allowed_hosts": ["testserver", "jobs.internal"]}}
    with running_app(tmp_path / "listed", config=listed) as app:
        assert app.client.get("/jobs", headers={"Host": "JOBS.internal:8000"}).status_code == 200
        assert app.client.get("/jobs", headers={"Host": REBOUND}).status_code == 403
    with running_app(tmp_path / "any", config={"server": {"allowed_hosts": ["*"]}}) as app:
        assert app.client.get("/jobs", headers={"Host": REBOUND}).status_code == 200
        only_changes_refused(forbidden_answers(app))


def only_changes_refused(answers: dict[tuple[str, str], str | None]) -> None:
    """Where no Host is refused, only a change may answer 403: from another site's page."""
    for (path, method), name in answers.items():
        unsafe = method in ("post", "put", "patch", "delete")
        assert name == ("CrossSiteRequest" if unsafe else None), (path, method)
