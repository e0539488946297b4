"""The example research agent, offline, against pages served on 127.0.0.1: in-process,
and on a server process where a SIGKILL is the point."""

from __future__ import annotations

import http.server
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

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


def test_research_fetches_summarizes_and_reports(app: RunningApp, site: tuple[Site, threading.Event]) -> None:
    s, _ = site
    c = app.client
    urls = [s.url + p for p in PAGES]
    job_id = submit(
        c, "jobserver.examples.research", {"question": "why durable jobs?", "urls": urls, "sentences": 3}
    )
    job = finished(c, job_id, 30)
    assert job["status"] == "completed", job
    result = job["result"]
    assert result["pages"] == 6 and result["summary"]
    assert "var x" not in result["summary"]
    assert set(result["sources"]) <= set(urls)
    assert job["progress"]["current"] == 6 and job["progress"]["total"] == 6
    events = read_events(c, job_id)
    assert sum(1 for e in events if e[1] == "log") == 6
    assert {st["name"] for st in job["steps"]} >= {f"fetch:{i}:{u}" for i, u in enumerate(urls)}
    assert all(n == 1 for n in s.hits.values())


@pytest.mark.e2e
def test_research_resumes_without_refetching_after_sigkill(
    tmp_path: Path, site: tuple[Site, threading.Event]
) -> None:
    s, gate = site
    srv = start_server(tmp_path)
    c = srv.client()
    urls = [s.url + p for p in list(PAGES)[:4]] + [s.url + "/slow"]
    job_id = submit(c, "jobserver.examples.research", {"question": "crash?", "urls": urls, "concurrency": 5})
    wait_until(lambda: len(c.get(f"/jobs/{job_id}").json()["steps"]) == 4, message="four fetch steps")
    srv.kill()
    gate.set()
    srv.restart()
    job = finished(c, job_id, 30)
    assert job["status"] == "completed" and job["attempts"] == 2
    assert all(s.hits[p] == 1 for p in list(PAGES)[:4])  # finished fetches were not repeated
    srv.stop()


def test_research_honours_cancel(app: RunningApp, site: tuple[Site, threading.Event]) -> None:
    s, _gate = site
    c = app.client
    job_id = submit(c, "jobserver.examples.research", {"question": "q", "urls": [s.url + "/slow"]})
    wait_until(lambda: s.hits["/slow"] == 1)
    c.post(f"/jobs/{job_id}/cancel")
    assert finished(c, job_id, 5)["status"] == "cancelled"
