"""The example research agent, offline, against pages served on 127.0.0.1: one child per
source, gathered, a draft that waits for an approval signal, then a published file.
In-process, and on a server process where a SIGKILL (while it gathers, while it waits)
is the point."""

from __future__ import annotations

import http.server
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

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
    def __init__(self, gate: threading.Event) -> None:
        self.hits: Counter[str] = Counter()
        site = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                site.hits[self.path] += 1
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

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture
def site() -> Iterator[tuple[Site, threading.Event]]:
    gate = threading.Event()
    s = Site(gate)
    yield s, gate
    gate.set()
    s.httpd.shutdown()
    s.httpd.server_close()  # joins the handler threads, closing their sockets


def waiting_for(c: httpx.Client, job_id: str, kind: str) -> dict[str, Any] | None:
    job: dict[str, Any] = c.get(f"/jobs/{job_id}").json()
    return job if job["status"] == "waiting" and job["waiting_for"]["kind"] == kind else None


def test_research_spawns_gathers_drafts_waits_for_approval_and_publishes(
    app: RunningApp, site: tuple[Site, threading.Event]
) -> None:
    s, _ = site
    c = app.client
    urls = [s.url + p for p in PAGES]
    reports = app.tmp_path / "reports"
    args = {"question": "why durable jobs?", "urls": urls, "sentences": 3, "publish_dir": str(reports)}
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
    assert published.parent == reports.resolve() and result["summary"] in published.read_text()
    assert all(n == 1 for n in s.hits.values())
    events = read_events(c, job_id)
    assert [e[2]["message"] for e in events if e[1] == "log"] == ["drafted a report from 6 pages"]
    assert {st["name"] for st in job["steps"]} == {"sources", "read", "draft", "approval", "publish"}


def test_research_without_approval_in_time_publishes_nothing(
    app: RunningApp, site: tuple[Site, threading.Event]
) -> None:
    s, _ = site
    c = app.client
    reports = app.tmp_path / "reports"
    args = {"question": "q", "urls": [s.url + "/page0"], "approval_timeout": 0.2, "publish_dir": str(reports)}
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
    srv = start_server(tmp_path)
    c = srv.client()
    fast = list(PAGES)[:4]
    urls = [s.url + p for p in fast] + [s.url + "/slow"]
    args = {"question": "crash?", "urls": urls, "publish_dir": str(tmp_path / "reports")}
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
    assert {ch["id"] for ch in c.get("/jobs", params={"parent": job_id}).json()["jobs"]} == children
    assert all(s.hits[p] == 1 for p in fast)  # finished fetches were not repeated
    logs = [e[2]["message"] for e in read_events(c, job_id) if e[1] == "log"]
    assert logs == ["drafted a report from 5 pages"]  # the draft ran once
    srv.stop()


def test_research_cancel_reaches_its_children(app: RunningApp, site: tuple[Site, threading.Event]) -> None:
    s, _gate = site
    c = app.client
    job_id = submit(c, "jobserver.examples.research", {"question": "q", "urls": [s.url + "/slow"]})
    wait_until(lambda: s.hits["/slow"] == 1)
    wait_until(lambda: waiting_for(c, job_id, "children"), message="the agent to gather")
    assert c.post(f"/jobs/{job_id}/cancel").json()["status"] == "cancelled"
    (child,) = c.get("/jobs", params={"parent": job_id}).json()["jobs"]
    assert finished(c, child["id"], 5)["status"] == "cancelled"
