"""The example research agent, offline, against pages served on 127.0.0.1: one child per
source, gathered, a draft that waits for an approval signal, then a published file.
In-process, and on a server process where a SIGKILL (while it gathers, while it waits)
is the point.

A client's URLs may only reach public addresses, so these pages are served from a host the
server's EXAMPLES_ALLOW_HOSTS lists (`loopback_allowed`); without it, or past a redirect to
another loopback address, nothing is fetched. Reports go under data/reports in the server's
working directory, a temp dir here (`reports`)."""

from __future__ import annotations

import asyncio
import http.server
import threading
import urllib.parse
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from jobserver import AddressRefused
from jobserver.examples import webpages
from tests.e2e import start_server
from tests.helpers import finished, read_events, submit, wait_until
from tests.inproc import RunningApp

PAGES = {
    f"/page{i}": f"<html><head><title>Page {i}</title><script>var x = 1;</script></head><body>"
    f"<h1>Durable jobs {i}</h1><p>Durable job queues keep work safe when a process crashes. "
    f"A job server with retries saves paid model calls number {i}. Celery needs a broker to run. "
    f"SQLite in WAL mode commits quickly and survives a process crash.</p></body></html>"
    for i in range(6)
}


class Site:
    def __init__(self, gate: threading.Event, host: str = "127.0.0.1") -> None:
        self.hits: Counter[str] = Counter()
        site = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                site.hits[self.path] += 1
                if self.path.startswith("/redirect?to="):  # a 302 to the URL in `to`
                    location = urllib.parse.unquote(self.path.removeprefix("/redirect?to="))
                    self.send_response(302)
                    self.send_header("location", location)
                    self.send_header("content-length", "0")
                    self.end_headers()
                    return
                if self.path == "/slow":
                    gate.wait(30)
                body = PAGES.get(self.path, "<p>slow page here now.</p>").encode()
                try:
                    self.send_response(200)
                    self.send_header("content-type", "text/html")
                    self.send_header("content-length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:  # the fetching server was killed mid-request
                    self.close_connection = True

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer((host, 0), Handler)
        self.url = f"http://{host}:{self.httpd.server_address[1]}"
        # polled every 50 ms, not the default 0.5 s: shutdown() waits for the next poll
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()  # joins the handler threads, closing their sockets


@pytest.fixture
def site() -> Iterator[tuple[Site, threading.Event]]:
    gate = threading.Event()
    s = Site(gate)
    yield s, gate
    gate.set()
    s.close()


@pytest.fixture
def other_site() -> Iterator[Site]:
    """Pages on another loopback address, 127.0.0.2, which the allow list does not name."""
    s = Site(threading.Event(), host="127.0.0.2")
    yield s
    s.close()


@pytest.fixture
def loopback_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    """The examples may fetch from 127.0.0.1, as a developer allows pages on their own machine."""
    monkeypatch.setenv(webpages.ALLOW_HOSTS_VARIABLE, "127.0.0.1")


@pytest.fixture
def reports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Where the in-process server publishes: data/reports under its working directory."""
    monkeypatch.chdir(tmp_path)
    return tmp_path / "data" / "reports"


def waiting_for(c: httpx.Client, job_id: str, kind: str) -> dict[str, Any] | None:
    job: dict[str, Any] = c.get(f"/jobs/{job_id}").json()
    return job if job["status"] == "waiting" and job["waiting_for"]["kind"] == kind else None


@pytest.mark.usefixtures("loopback_allowed")
def test_research_spawns_gathers_drafts_waits_for_approval_and_publishes(
    app: RunningApp, site: tuple[Site, threading.Event], reports: Path
) -> None:
    s, _ = site
    c = app.client
    urls = [s.url + p for p in PAGES]
    args = {"question": "why durable jobs?", "urls": urls, "sentences": 3, "publish_dir": "weekly"}
    job_id = submit(c, "jobserver.examples.research", args)
    job = wait_until(lambda: waiting_for(c, job_id, "signal"), 30, message="the draft to wait for approval")
    assert job["waiting_for"] == {"kind": "signal", "name": "approval", "until": job["waiting_for"]["until"]}
    assert job["waiting_for"]["until"] is not None  # the approval times out after a day
    children = c.get("/jobs", params={"parent": job_id, "limit": 50}).json()["jobs"]
    assert len(children) == 6 and {ch["status"] for ch in children} == {"completed"}
    assert sorted(ch["args"]["url"] for ch in children) == sorted(urls)
    assert not reports.exists()  # nothing is published before the approval
    r = c.post(f"/jobs/{job_id}/signals/approval", json={"approved": True, "by": "editor"})
    assert r.status_code == 202
    job = finished(c, job_id, 30)
    assert job["status"] == "completed" and job["attempts"] == 1, job
    result = job["result"]
    assert result["outcome"] == "published" and result["pages"] == 6 and result["summary"]
    assert "var x" not in result["summary"] and set(result["sources"]) <= set(urls)
    published = Path(result["published"])
    assert published == (reports / "weekly" / f"{job_id}.md").resolve()
    assert result["summary"] in published.read_text()
    assert all(n == 1 for n in s.hits.values())
    events = read_events(c, job_id)
    assert [e[2]["message"] for e in events if e[1] == "log"] == ["drafted a report from 6 pages"]
    assert {st["name"] for st in job["steps"]} == {"sources", "read", "draft", "approval", "publish"}


@pytest.mark.usefixtures("loopback_allowed")
def test_research_without_approval_in_time_publishes_nothing(
    app: RunningApp, site: tuple[Site, threading.Event], reports: Path
) -> None:
    s, _ = site
    c = app.client
    args = {"question": "q", "urls": [s.url + "/page0"], "approval_timeout": 0.2}
    job = finished(c, submit(c, "jobserver.examples.research", args), 30)
    assert job["status"] == "completed" and job["result"]["outcome"] == "approval timed out"
    assert job["result"]["published"] is None and not reports.exists()
    rejected = submit(c, "jobserver.examples.research", {**args, "approval_timeout": 3600})
    wait_until(lambda: waiting_for(c, rejected, "signal"), 30, message="the draft to wait")
    assert c.post(f"/jobs/{rejected}/signals/approval", json={"approved": False}).status_code == 202
    job = finished(c, rejected, 30)
    assert job["result"]["outcome"] == "rejected" and not reports.exists()


@pytest.mark.e2e
def test_research_survives_sigkills_while_it_gathers_and_while_it_waits(
    tmp_path: Path, site: tuple[Site, threading.Event]
) -> None:
    s, gate = site
    srv = start_server(tmp_path, env={webpages.ALLOW_HOSTS_VARIABLE: "127.0.0.1"})
    c = srv.client()
    fast = list(PAGES)[:4]
    urls = [s.url + p for p in fast] + [s.url + "/slow"]
    args = {"question": "crash?", "urls": urls}
    job_id = submit(c, "jobserver.examples.research", args)
    wait_until(lambda: waiting_for(c, job_id, "children"), 30, message="the agent to gather")

    def fast_ones_done() -> bool:
        kids = c.get("/jobs", params={"parent": job_id}).json()["jobs"]
        done = [k for k in kids if k["status"] == "completed"]
        return s.hits["/slow"] == 1 and len(kids) == 5 and len(done) == 4

    wait_until(fast_ones_done, 30, message="four sources read and the slow one fetching")
    children = {ch["id"] for ch in c.get("/jobs", params={"parent": job_id}).json()["jobs"]}
    srv.kill()  # while it gathers: four children done, one still fetching
    gate.set()
    srv.restart()
    job = wait_until(lambda: waiting_for(c, job_id, "signal"), 30, message="the draft to wait for approval")
    assert job["attempts"] == 1
    srv.kill()  # while it waits for the approval
    srv.restart()
    assert waiting_for(c, job_id, "signal") is not None
    assert c.post(f"/jobs/{job_id}/signals/approval", json={"approved": True}).status_code == 202
    job = finished(c, job_id, 30)
    assert job["status"] == "completed" and job["attempts"] == 1, job
    assert job["result"]["outcome"] == "published" and Path(job["result"]["published"]).exists()
    assert Path(job["result"]["published"]).parent == (tmp_path / "data" / "reports").resolve()
    assert {ch["id"] for ch in c.get("/jobs", params={"parent": job_id}).json()["jobs"]} == children
    assert all(s.hits[p] == 1 for p in fast)  # finished fetches were not repeated
    logs = [e[2]["message"] for e in read_events(c, job_id) if e[1] == "log"]
    assert logs == ["drafted a report from 5 pages"]  # the draft ran once
    srv.stop()


@pytest.mark.usefixtures("loopback_allowed")
def test_research_cancel_reaches_its_children(app: RunningApp, site: tuple[Site, threading.Event]) -> None:
    s, _gate = site
    c = app.client
    job_id = submit(c, "jobserver.examples.research", {"question": "q", "urls": [s.url + "/slow"]})
    wait_until(lambda: s.hits["/slow"] == 1)
    wait_until(lambda: waiting_for(c, job_id, "children"), message="the agent to gather")
    assert c.post(f"/jobs/{job_id}/cancel").json()["status"] == "cancelled"
    (child,) = c.get("/jobs", params={"parent": job_id}).json()["jobs"]
    assert finished(c, child["id"], 5)["status"] == "cancelled"


def refusal(job: dict[str, Any]) -> str:
    """The message of a job that failed at once on a refused address (no retry)."""
    assert job["status"] == "failed" and job["attempts"] == 1, job
    assert job["error"]["type"] == "AddressRefused", job["error"]
    message: str = job["error"]["message"]
    assert webpages.ALLOW_HOSTS_VARIABLE in message  # says how to allow it for local testing
    return message


def test_sources_on_loopback_are_refused_without_the_allow_list(
    app: RunningApp, site: tuple[Site, threading.Event], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(webpages.ALLOW_HOSTS_VARIABLE, raising=False)
    s, _ = site
    c = app.client
    port = s.httpd.server_address[1]
    job = finished(c, submit(c, "jobserver.examples.read_source", {"question": "q", "url": s.url + "/page0"}))
    assert "127.0.0.1 is not a public address" in refusal(job)
    by_name = f"http://localhost:{port}/page2"
    args = {"question": "q", "urls": [s.url + "/page1", by_name], "approval_timeout": 0.2}
    job = finished(c, submit(c, "jobserver.examples.research", args), 30)
    assert job["status"] == "completed" and job["result"]["pages"] == 0, job
    children = c.get("/jobs", params={"parent": job["id"]}).json()["jobs"]
    assert sorted(job["result"]["failed_sources"]) == sorted(ch["id"] for ch in children)
    (named,) = [ch for ch in children if ch["args"]["url"] == by_name]
    message = refusal(named)
    assert "localhost is not a public address" in message
    assert "127.0.0.1" not in message  # names the host, never the address it resolved to
    assert all(refusal(ch) for ch in children)
    assert s.hits == Counter()  # nothing was fetched


@pytest.mark.usefixtures("loopback_allowed")
def test_a_redirect_to_a_refused_address_is_not_followed(
    app: RunningApp, site: tuple[Site, threading.Event], other_site: Site
) -> None:
    s, _ = site
    c = app.client
    within = s.url + "/redirect?to=" + urllib.parse.quote("/page3", safe="")
    job = finished(c, submit(c, "jobserver.examples.read_source", {"question": "q", "url": within}))
    assert job["status"] == "completed" and job["result"]["title"] == "Page 3", job  # redirects work
    away = s.url + "/redirect?to=" + urllib.parse.quote(other_site.url + "/page0", safe="")
    job = finished(c, submit(c, "jobserver.examples.read_source", {"question": "q", "url": away}))
    assert "127.0.0.2 is not a public address" in refusal(job)
    assert s.hits[away.removeprefix(s.url)] == 1
    assert other_site.hits == Counter()  # the redirect's target saw no request


def test_a_connection_that_reached_a_refused_address_sends_nothing(
    site: tuple[Site, threading.Event], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A name screened as public can resolve to another address when the connection is made
    (DNS rebinding): the address connected to is checked before the request is sent."""
    s, _ = site
    monkeypatch.delenv(webpages.ALLOW_HOSTS_VARIABLE, raising=False)
    monkeypatch.setattr(webpages, "public_addresses", lambda host, port, allow: [])  # the screen says yes
    with pytest.raises(AddressRefused, match=r"^127\.0\.0\.1 is not a public address"):
        asyncio.run(webpages.fetch_page(s.url + "/page0"))
    assert s.hits == Counter()


@pytest.mark.parametrize("folder", ["/tmp/x", "../x", "..", ".", "a/b", "a\\b", ".hidden", "x" * 65])
def test_publish_dir_outside_the_reports_folder_is_refused_at_submit(
    app: RunningApp, site: tuple[Site, threading.Event], folder: str
) -> None:
    s, _ = site
    c = app.client
    args = {"question": "q", "urls": [s.url + "/page0"], "publish_dir": folder}
    r = c.post("/jobs", json={"task": "jobserver.examples.research", "args": args})
    assert r.status_code == 422, r.text
    assert [e["loc"] for e in r.json()["errors"]] == [["body", "args", "publish_dir"]]
    assert c.get("/jobs").json()["jobs"] == []  # nothing was queued
    assert s.hits == Counter()
