"""The SDK against the server process while it drains on SIGTERM."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from jobserver.client import commands
from jobserver.client.protocol import Event
from jobserver.client.sdk import Client
from jobserver.core.errors import DrainingError
from tests.e2e import start_server
from tests.helpers import has_line, wait_until

pytestmark = pytest.mark.e2e

ADD = "jobserver.examples.add"
WAIT_S = 30.0


def test_submit_while_draining_raises_draining_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
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
            # the CLI says "try again later" with the exit code of a server out of reach
            refused_by_cli = commands.main(["submit", ADD, "-a", "a=1", "-a", "b=1", "--url", srv.url], {})
            assert refused_by_cli == commands.EXIT_UNREACHABLE
            assert "shutting down" in capsys.readouterr().err
            assert c.get(job["id"])["status"] == "running"  # reads still work while draining
            release.touch()
        assert srv.wait_exit(WAIT_S) == 0
    finally:
        srv.stop()


class CountingTransport(httpx.HTTPTransport):
    """Counts the job reads (wait()'s polls, not event streams) refused while the server is down."""

    refused = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        try:
            return super().handle_request(request)
        except httpx.ConnectError:
            if not request.url.path.endswith("/events"):
                self.refused += 1
            raise


def test_a_watch_and_a_wait_outlive_a_restart(tmp_path: Path) -> None:
    """events() resumes without a gap or a repeat; wait() keeps polling until the server is back."""
    srv = start_server(tmp_path)
    seen: list[Event] = []
    waited: list[dict[str, Any]] = []
    failed: list[BaseException] = []
    transport = CountingTransport()
    try:
        # no resends: only the watches' own reconnect window can carry them over the restart
        http = httpx.Client(base_url=srv.url, transport=transport, timeout=30)
        with http, Client(srv.url, http_client=http, retries=0) as c:
            job = c.submit("tests.e2e_tasks.wait_named", {"name": "go"})

            def watch() -> None:
                try:
                    for event in c.events(job["id"]):
                        seen.append(event)  # one at a time: the test reads them as they come
                except BaseException as exc:  # the test reads it below
                    failed.append(exc)

            def wait() -> None:
                try:
                    waited.append(c.wait(job["id"], timeout=WAIT_S * 2))
                except BaseException as exc:
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
            waiter = threading.Thread(target=wait, daemon=True)
            waiter.start()  # while the server is down: its polls are refused until it is back
            wait_until(lambda: transport.refused >= 2, WAIT_S, message="wait()'s polls to be refused")
            srv.restart()
            c.signal(job["id"], "go", {"ok": True})
            watcher.join(WAIT_S)
            waiter.join(WAIT_S)
        assert not watcher.is_alive() and not waiter.is_alive() and not failed, failed
        ids = [int(e.id or 0) for e in seen]
        assert ids == sorted(set(ids)), ids  # resumed after the last event seen: none repeated
        statuses = [e.data["status"] for e in seen if e.event == "status"]
        assert statuses[0] == "pending" and "waiting" in statuses and statuses[-1] == "completed", statuses
        assert waited[0]["status"] == "completed" and waited[0]["result"] == {"ok": True}, waited
    finally:
        srv.stop()
