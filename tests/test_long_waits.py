"""Long waits over a real socket (the app served in-process): a long-poll whose client left
frees its watch, and an event stream's keep-alive comes whatever the job does meanwhile."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import jobserver.http.app
from tests.helpers import submit, wait_until
from tests.inproc import ServedApp, served_app

AWAIT = "jobserver.examples.await_signal"


@pytest.fixture
def served(tmp_path: Path) -> Iterator[ServedApp]:
    with served_app(tmp_path) as srv:
        yield srv


def test_a_long_poll_whose_client_left_frees_its_watch(served: ServedApp) -> None:
    c = served.client()
    job_id = submit(c, "jobserver.examples.add", {"a": 1, "b": 2}, delay=3600)
    hub = served.app.runtime.parts.hub
    host, port = served.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(f"GET /jobs/{job_id}?wait=60 HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        wait_until(lambda: hub.watching(job_id) == 1, 10, message="the long-poll to wait")
    # the client is gone 59 s before the wait's end: the server stops waiting for it
    wait_until(lambda: hub.watching(job_id) == 0, 5, message="the long-poll to notice its client left")


def test_a_stream_sends_its_keepalive_though_the_job_keeps_changing(
    served: ServedApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Signals of another name change the job and add no event: the keep-alive still comes."""
    monkeypatch.setattr(jobserver.http.app, "KEEPALIVE_S", 0.5)
    c, poker = served.client(), served.client()
    job_id = submit(c, AWAIT, {"name": "go"})
    wait_until(lambda: c.get(f"/jobs/{job_id}").json()["status"] == "waiting", 10, message="the job to wait")
    kept_alive = threading.Event()

    def listen() -> None:
        with c.stream("GET", f"/jobs/{job_id}/events", timeout=30) as r:
            for line in r.iter_lines():
                if line == ": keepalive":
                    kept_alive.set()
                    return

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    deadline = time.monotonic() + 10
    n = 0
    while not kept_alive.is_set() and time.monotonic() < deadline:  # a change every few ms
        assert poker.post(f"/jobs/{job_id}/signals/other-{n}", json=n).status_code == 202
        n += 1
    assert kept_alive.is_set(), f"no keep-alive in 10 s of {n} changes"
    assert poker.post(f"/jobs/{job_id}/signals/go", json={}).status_code == 202
    listener.join(10)
