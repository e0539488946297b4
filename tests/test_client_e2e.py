"""The SDK against the server process while it drains on SIGTERM."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from jobserver.client.protocol import Event
from jobserver.client.sdk import Client
from jobserver.core.errors import DrainingError
from tests.e2e import start_server
from tests.helpers import has_line, wait_until

pytestmark = pytest.mark.e2e

ADD = "jobserver.examples.add"
WAIT_S = 30.0


def test_submit_while_draining_raises_draining_error(tmp_path: Path) -> None:
    srv = start_server(tmp_path)
    started, release = tmp_path / "started", tmp_path / "release"
    try:
        with Client(srv.url) as c:
            job = c.submit(
                "tests.e2e_tasks.block_until_file", {"started": str(started), "release": str(release)}
            )
            wait_until(lambda: has_line(started), WAIT_S, message="the job to start")
            srv.terminate()

            def refused() -> DrainingError | None:
                try:
                    c.submit(ADD, {"a": 1, "b": 1})
                except DrainingError as exc:
                    return exc
                return None

            exc = wait_until(refused, WAIT_S, message="submissions to be refused")
            assert exc.status_code == 503 and exc.retry_after is not None
            assert c.get(job["id"])["status"] == "running"  # reads still work while draining
            release.touch()
        assert srv.wait_exit(WAIT_S) == 0
    finally:
        srv.stop()


def test_a_watch_outlives_a_restart_and_resumes_without_a_gap_or_a_repeat(tmp_path: Path) -> None:
    srv = start_server(tmp_path)
    seen: list[Event] = []
    failed: list[BaseException] = []
    try:
        # no resends: only the watch's own reconnect window can carry it over the restart
        with Client(srv.url, retries=0) as c:
            job = c.submit("tests.e2e_tasks.wait_named", {"name": "go"})

            def watch() -> None:
                try:
                    for event in c.events(job["id"]):
                        seen.append(event)  # one at a time: the test reads them as they come
                except BaseException as exc:  # the test reads it below
                    failed.append(exc)

            watcher = threading.Thread(target=watch, daemon=True)
            watcher.start()
            wait_until(
                lambda: any(e.event == "status" and e.data["status"] == "waiting" for e in list(seen)),
                WAIT_S,
                message="the watch to see the job wait",
            )
            srv.terminate()  # the drain ends the stream; the watch meets a 503, then a closed port
            assert srv.wait_exit(WAIT_S) == 0
            srv.restart()
            c.signal(job["id"], "go", {"ok": True})
            watcher.join(WAIT_S)
        assert not watcher.is_alive() and not failed, failed
        ids = [int(e.id or 0) for e in seen]
        assert ids == sorted(set(ids)), ids  # resumed after the last event seen: none repeated
        statuses = [e.data["status"] for e in seen if e.event == "status"]
        assert statuses[0] == "pending" and "waiting" in statuses and statuses[-1] == "completed", statuses
    finally:
        srv.stop()
