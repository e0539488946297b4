"""API keys and request limits, over real HTTP against the real server process."""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e import Server, start_server

pytestmark = pytest.mark.e2e

ADD = "jobserver.examples.add"
GIB = 1 << 30
MIB = 1 << 20


def assert_unauthorized(r: httpx.Response) -> None:
    assert r.status_code == 401, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert r.headers["www-authenticate"].startswith("Bearer")
    doc = r.json()
    assert doc["status"] == 401 and doc["title"] and doc["detail"] and doc["type"]


@pytest.fixture
def keyed(tmp_path: Path) -> Server:
    return start_server(tmp_path, config={"auth": {"api_keys": ["k1", "k2"]}})


def test_every_route_needs_a_key_but_health_and_the_dashboard(keyed: Server) -> None:
    anonymous, wrong = keyed.client(), keyed.client("nope")
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
    assert anonymous.get("/healthz").status_code == 200
    page = anonymous.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for key in ("k1", "k2"):
        c = keyed.client(key)
        assert c.get("/jobs").status_code == 200
        assert c.get("/readyz").status_code == 200
        assert c.get("/metrics").status_code == 200
        r = c.post("/jobs", json={"task": ADD, "args": {"a": 1, "b": 2}})
        assert r.status_code == 202, r.text
        assert c.get(f"/jobs/{r.json()['id']}", params={"wait": 20}).json()["result"] == 3


def test_event_stream_with_a_key(keyed: Server) -> None:
    c = keyed.client("k2")
    job_id = c.post("/jobs", json={"task": ADD, "args": {"a": 2, "b": 2}}).json()["id"]
    assert_unauthorized(keyed.client().get(f"/jobs/{job_id}/events"))
    with c.stream("GET", f"/jobs/{job_id}/events") as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        text = r.read().decode()  # the stream ends after the final status
    assert "event: status" in text and '"status":"completed"' in text


def test_idempotency_keys_are_scoped_per_api_key(keyed: Server) -> None:
    body = {"task": ADD, "args": {"a": 5, "b": 5}}
    headers = {"Idempotency-Key": "order-42"}
    first = keyed.client("k1").post("/jobs", json=body, headers=headers)
    again = keyed.client("k1").post("/jobs", json=body, headers=headers)
    other = keyed.client("k2").post("/jobs", json=body, headers=headers)
    assert first.status_code == 202 and other.status_code == 202
    assert again.status_code == 200 and again.headers["idempotent-replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    assert other.json()["id"] != first.json()["id"]
    assert len(keyed.client("k1").get("/jobs").json()["jobs"]) == 2


def test_keys_from_the_environment(tmp_path: Path) -> None:
    srv = start_server(tmp_path, env={"JOBSERVER_AUTH_API_KEYS": '["k3"]'})
    assert_unauthorized(srv.client().get("/jobs"))
    assert_unauthorized(srv.client("k1").get("/jobs"))
    assert srv.client("k3").get("/jobs").status_code == 200


# ------------------------------------------------------------------- limits
def vm_rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS line")


def chunked_frames(total: int, size: int = 256 * 1024) -> Iterator[bytes]:
    """A chunked-encoded body of `total` bytes, made one frame at a time (never held whole)."""
    frame = f"{size:x}\r\n".encode() + b" " * size + b"\r\n"
    for _ in range(total // size):
        yield frame
    yield b"0\r\n\r\n"


def http_head(server: Server, extra: str) -> bytes:
    return (
        f"POST /jobs HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
        f"Content-Type: application/json\r\n{extra}\r\n"
    ).encode()


def read_status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def test_a_huge_chunked_body_is_refused_early_and_memory_stays_flat(server: Server) -> None:
    """1 GiB of chunked body: 413 arrives after about max_body_bytes, and the server's
    memory does not grow while the client keeps sending the rest."""
    assert server.proc is not None
    pid = server.proc.pid
    baseline = vm_rss_bytes(pid)
    peak = baseline
    frames = chunked_frames(GIB)
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.setblocking(False)
    out, sent, answer = http_head(server, "Transfer-Encoding: chunked\r\n"), 0, b""
    sent_when_answered: int | None = None
    started = time.monotonic()
    deadline = started + 120
    try:
        while time.monotonic() < deadline:
            readable, writable, _ = select.select([sock], [sock] if out else [], [], 1.0)
            if readable:
                data = sock.recv(65536)
                if not data:
                    break  # the server closed the connection: fine, the body is refused
                answer += data
                if sent_when_answered is None and b"\r\n\r\n" in answer:
                    sent_when_answered = sent
                    answered_after_s = time.monotonic() - started
            if writable:
                try:
                    n = sock.send(out)
                except (BrokenPipeError, ConnectionResetError):
                    break
                sent += n
                out = out[n:] or next(frames, b"")
                if sent % (64 * MIB) < n:
                    peak = max(peak, vm_rss_bytes(pid))
            if not out and sent_when_answered is not None:
                break  # all of the 1 GiB went out (or was refused) and the answer is in
    finally:
        sock.close()
    peak = max(peak, vm_rss_bytes(pid))
    assert sent_when_answered is not None, f"no answer after sending {sent} bytes"
    assert read_status(answer) == 413, answer[:300]
    assert sent_when_answered < 64 * MIB, "the server read far past max_body_bytes before answering"
    assert answered_after_s < 10
    assert peak - baseline < 50 * MIB, f"RSS grew by {(peak - baseline) / MIB:.1f} MiB"
    assert server.client().get("/healthz").status_code == 200


def test_a_large_content_length_is_refused_before_reading(server: Server) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(http_head(server, f"Content-Length: {100 * GIB}\r\n"))  # and no body at all
        answer = b""
        while b"\r\n\r\n" not in answer:
            data = sock.recv(65536)
            assert data, "connection closed without an answer"
            answer += data
    assert read_status(answer) == 413, answer[:300]
    assert b"application/problem+json" in answer.lower()


def test_args_over_max_args_bytes_are_refused(tmp_path: Path) -> None:
    srv = start_server(tmp_path, config={"server": {"max_args_bytes": 1000}})
    c = srv.client()
    r = c.post(
        "/jobs", json={"task": "jobserver.examples.analyze_documents", "args": {"documents": ["x" * 2000]}}
    )
    assert r.status_code == 422, r.text
    assert r.json()["errors"][0]["loc"] == ["body", "args"]
    ok = c.post(
        "/jobs", json={"task": "jobserver.examples.analyze_documents", "args": {"documents": ["x" * 500]}}
    )
    assert ok.status_code == 202
    assert [j["id"] for j in c.get("/jobs").json()["jobs"]] == [ok.json()["id"]]


def test_limit_over_500_is_refused(server: Server) -> None:
    c = server.client()
    r = c.get("/jobs", params={"limit": 501})
    assert r.status_code == 422
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["errors"][0]["loc"] == ["query", "limit"]
    assert c.get("/jobs", params={"limit": 500}).status_code == 200
