"""Start-up and shutdown of the real process: what a server that cannot serve, or a
SIGTERM that finds a task stuck in a blocking call, leaves behind."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import orjson
import pytest

from jobserver.core.records import JobIds, NewJob
from jobserver.storage.store import JobStore
from tests.e2e import start_server
from tests.helpers import has_line, wait_until
from tests.storage import open_store
from tests.test_http_protocol_e2e import read_until_closed

pytestmark = pytest.mark.e2e


def _seed(tmp_path: Path, task: str, args: dict[str, object]) -> str:
    """A due job in the server's database file before the server starts."""
    job_id = JobIds().new()
    with open_store(tmp_path) as store:
        now = 1_700_000_000.0
        store.enqueue(
            NewJob(job_id, task, orjson.dumps(args).decode(), 0, 3, None, None, None, now, now),
            None,
            lambda: None,
        ).result(10)
    return job_id


def _read(tmp_path: Path, job_id: str) -> dict[str, object]:
    with open_store(tmp_path) as store:
        return _api(store, job_id)


def _api(store: JobStore, job_id: str) -> dict[str, object]:
    return store.get(job_id).to_api()


def test_a_server_that_cannot_bind_its_port_claims_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "ran.txt"
    job_id = _seed(tmp_path, "tests.e2e_tasks.record", {"path": str(marker), "value": "x"})
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        srv = start_server(tmp_path, {"server": {"port": port}}, wait=False)
        assert srv.wait_exit(60) == 1
    assert "cannot listen on 127.0.0.1:" in srv.log()
    assert "serving on" not in srv.log()
    assert not marker.exists()
    job = _read(tmp_path, job_id)
    assert (job["status"], job["attempts"]) == ("pending", 0)


def test_sigterm_records_the_jobs_its_grace_period_cut_off(tmp_path: Path) -> None:
    srv = start_server(tmp_path, {"workers": {"threads": 2, "shutdown_grace_seconds": 1}})
    c = srv.client()
    retried_marker, once_marker = tmp_path / "retry.txt", tmp_path / "once.txt"
    retried = c.post(
        "/jobs",
        json={"task": "tests.e2e_tasks.sleep_in_c", "args": {"started": str(retried_marker), "seconds": 60}},
    ).json()
    once = c.post(
        "/jobs",
        json={
            "task": "tests.e2e_tasks.at_most_once_in_c",
            "args": {"started": str(once_marker), "seconds": 60},
        },
    ).json()
    wait_until(lambda: has_line(retried_marker) and has_line(once_marker), 30, message="both tasks to start")
    srv.terminate()
    assert srv.wait_exit(30) == 0
    assert "2 running jobs cut off by the grace period" in srv.log(), srv.log()
    after_retry, after_once = _read(tmp_path, retried["id"]), _read(tmp_path, once["id"])
    # on_crash="retry": put back, and the cut run is not counted
    assert (after_retry["status"], after_retry["attempts"]) == ("pending", 0)
    # on_crash="fail": failed at once, saying the shutdown cut it off
    assert after_once["status"] == "failed"
    error = after_once["error"]
    assert isinstance(error, dict) and error["type"] == "Interrupted" and "shut down" in error["message"]
    # the next start does not treat either as a crash, and never runs the at-most-once job again
    srv.restart()
    wait_until(
        lambda: len(retried_marker.read_text().splitlines()) == 2, 30, message="the put-back job to run again"
    )
    job = c.get(f"/jobs/{once['id']}").json()
    assert job["status"] == "failed" and job["error"]["type"] == "Interrupted"
    assert once_marker.read_text().splitlines() == [once["id"]]


def test_waits_and_streams_open_at_the_end_of_a_drain_are_answered_not_cut_off(tmp_path: Path) -> None:
    """Reads go on while a SIGTERM drains; when the server then stops, a `GET ?wait` still held
    gets the job as it is (200) and an event stream ends cleanly, rather than a 500 and a cut
    connection once uvicorn's shutdown gives up on them."""
    srv = start_server(tmp_path, {"workers": {"shutdown_grace_seconds": 1}})
    c = srv.client()
    started = tmp_path / "started"
    job = c.post(
        "/jobs", json={"task": "tests.e2e_tasks.sleep_in_c", "args": {"started": str(started), "seconds": 60}}
    ).json()
    wait_until(lambda: has_line(started), 30, message="the job to start")
    held = socket.create_connection(("127.0.0.1", srv.port), timeout=30)
    held.sendall(
        f"GET /jobs/{job['id']}?wait=60 HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode()
    )
    answer: list[bytes] = []
    reader = threading.Thread(target=lambda: answer.append(read_until_closed(held, 30)[0]))
    reader.start()
    events: list[str] = []
    streamer = srv.client()
    with streamer.stream("GET", f"/jobs/{job['id']}/events") as stream:
        lines = stream.iter_lines()
        events.append(next(lines))  # the stream is open (and the wait was sent before it)
        srv.terminate()
        events.extend(lines)  # ends without an error when the server stops
    reader.join(30)
    held.close()
    assert srv.wait_exit(30) == 0
    head, _, body = answer[0].partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK") and orjson.loads(body)["id"] == job["id"], answer[0][:300]
    assert any(line.startswith("event: status") for line in events)
    assert "Exception in ASGI application" not in srv.log() and "Cancel" not in srv.log()
